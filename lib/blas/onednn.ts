// oneDNN's sgemm for the products, when libdnnl is installed (Debian and Ubuntu: `apt-get install libdnnl2`).
//
// oneDNN's JIT kernels multiply faster than OpenBLAS's on one thread, most of all on the 16-row products
// (bench/README.md). The C kernels call it (c/products.c, seemore_bind_dnnl): every product is cut into
// one slice per thread on our own helper threads, each slice one single-threaded dnnl_sgemm. OpenBLAS
// stays in use for the attention's per-head products (too small for oneDNN to pay) and for generation's
// one-row products, and does all the products when oneDNN is absent or turned off.

import { readEnv } from "./ffi.ts";
import type { Native } from "./native.ts";

/** How to get oneDNN, in the note when it is absent. */
export const ONEDNN_HINT = "apt-get install libdnnl2 for oneDNN's faster products";

/** Places to look, in order; the first that opens and exports dnnl_sgemm wins. */
export const ONEDNN_CANDIDATES: readonly string[] = [
  "libdnnl.so.3",
  "libdnnl.so.2",
  "/usr/lib/x86_64-linux-gnu/libdnnl.so.2",
  "/usr/lib/aarch64-linux-gnu/libdnnl.so.2",
  "/usr/local/lib/libdnnl.so.3",
  "/usr/local/lib/libdnnl.so.2",
];

/** Which library runs the products, and a one-line note saying so (or why not oneDNN). */
export interface GemmChoice {
  /** The oneDNN library in use, or null: OpenBLAS. */
  onednn: string | null;
  note: string;
}

/**
 * Binds oneDNN for the C kernels' products. `want`: true (default) searches $SEEMORE_ONEDNN or the usual
 * paths, a string tries exactly that file, false (or SEEMORE_ONEDNN=off) keeps OpenBLAS. Never throws.
 */
export function chooseGemm(native: Native, want: boolean | string = true): GemmChoice {
  const fromEnv = readEnv("SEEMORE_ONEDNN");
  if (want === false || (want === true && fromEnv === "off")) {
    native.useDnnl(false);
    return {
      onednn: null,
      note: `products on OpenBLAS (oneDNN turned off${want ? " by SEEMORE_ONEDNN" : ""})`,
    };
  }
  const candidates = typeof want === "string" ? [want] : fromEnv ? [fromEnv] : ONEDNN_CANDIDATES;
  const errors: string[] = [];
  for (const path of candidates) {
    const rc = native.bindDnnl(path);
    if (rc === 0) return { onednn: path, note: `products on oneDNN (${path})` };
    errors.push(rc === -2 ? `${path} lacks dnnl_sgemm or omp_set_num_threads` : `${path} does not open`);
  }
  native.useDnnl(false);
  const why = candidates === ONEDNN_CANDIDATES ? "oneDNN not found" : errors.join("; ");
  return { onednn: null, note: `products on OpenBLAS (${why}; ${ONEDNN_HINT})` };
}
