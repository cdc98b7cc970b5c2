// oneDNN's sgemm for the products, when libdnnl is installed (Debian and Ubuntu: `apt-get install libdnnl2`).
//
// oneDNN's JIT kernels multiply faster than OpenBLAS's on one thread, most of all on the 16-row products
// (bench/README.md). The C kernels call it (c/products.c, seemore_bind_dnnl): every product is cut into
// one slice per thread on our own helper threads, each slice one single-threaded dnnl_sgemm. OpenBLAS
// stays in use for the attention's per-head products (too small for oneDNN to pay) and for generation's
// one-row products, and does all the products when oneDNN is absent or turned off.

import { ffiAllowed, firstLine, readEnv } from "./ffi.ts";
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

/** Whether oneDNN is wanted and where it loads, asked without the C kernels (setup and doctor ask this). */
export type OnednnProbe =
  | { ok: true; path: string; version: string }
  | { ok: false; off: boolean; reason: string };

let found: OnednnProbe | null = null;

/**
 * Opens oneDNN from $SEEMORE_ONEDNN or the usual paths and reads its version. Remembered once it loads
 * (the library stays open: the C kernels open the same file); a failure is asked again next time.
 * `off`: SEEMORE_ONEDNN=off turned it off, so it is not missing.
 */
export function probeOnednn(): OnednnProbe {
  if (found?.ok) return found;
  const fromEnv = readEnv("SEEMORE_ONEDNN");
  if (fromEnv === "off") return { ok: false, off: true, reason: "oneDNN turned off by SEEMORE_ONEDNN=off" };
  if (!ffiAllowed()) return { ok: false, off: false, reason: "oneDNN not probed: run Deno with --allow-ffi" };
  const candidates = fromEnv ? [fromEnv] : ONEDNN_CANDIDATES;
  const errors: string[] = [];
  for (const path of candidates) {
    try {
      const lib = Deno.dlopen(path, {
        dnnl_sgemm: { parameters: [], result: "void" }, // only looked up, never called from JS
        dnnl_version: { parameters: [], result: "pointer" },
      });
      const v = lib.symbols.dnnl_version();
      const view = v ? new Deno.UnsafePointerView(v) : null;
      const version = view ? `${view.getInt32(0)}.${view.getInt32(4)}.${view.getInt32(8)}` : "unknown";
      found = { ok: true, path, version };
      return found;
    } catch (err) {
      errors.push(`${path}: ${firstLine(err)}`);
    }
  }
  const tried = fromEnv ? `SEEMORE_ONEDNN=${fromEnv}` : `${candidates.length} usual paths`;
  // A file that is there but does not load says more than the names that are simply absent.
  const error = errors.find((e) => !e.includes("No such file")) ?? errors[0];
  return { ok: false, off: false, reason: `oneDNN not found (tried ${tried}; ${error}): ${ONEDNN_HINT}` };
}
