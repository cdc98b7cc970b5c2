// OpenBLAS through Deno's FFI: finds libopenblas.so.0, opens it once, and exposes a checked
// row-major `sgemm` on Float32Array views (which may be views of the wasm heap).
//
// Deno's FFI does no bounds check on "buffer" arguments, so `sgemm` validates every size and
// leading dimension against the views it is given before the call; a wrong shape throws instead
// of reading or writing past the end of a buffer.

/** How to get the library, repeated in every error message. */
export const INSTALL_HINT =
  "install OpenBLAS with `apt-get install libopenblas0-pthread` (or set SEEMORE_OPENBLAS=/path/to/libopenblas.so.0)";

/** Places to look, in order; the first that opens and exports cblas_sgemm wins. */
export const LIBRARY_CANDIDATES: readonly string[] = [
  "libopenblas.so.0",
  "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
  "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
  "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
  "/usr/lib/x86_64-linux-gnu/openblas-serial/libopenblas.so.0",
  "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
  "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
  "/usr/lib64/libopenblas.so.0",
  "/usr/lib64/libopenblasp.so.0",
  "/usr/local/lib/libopenblas.so.0",
  "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
  "/usr/local/opt/openblas/lib/libopenblas.dylib",
  "libopenblas.so",
];

// CBLAS enums (cblas.h).
const ROW_MAJOR = 101;
const NO_TRANS = 111;
const TRANS = 112;

const SYMBOLS = {
  cblas_sgemm: {
    // order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "void",
  },
} as const;

const OPTIONAL_SYMBOLS = {
  openblas_get_config: { parameters: [], result: "pointer", optional: true },
  openblas_get_num_threads: { parameters: [], result: "i32", optional: true },
  openblas_set_num_threads: { parameters: ["i32"], result: "void", optional: true },
} as const;

type BlasLibrary = Deno.DynamicLibrary<typeof SYMBOLS & typeof OPTIONAL_SYMBOLS>;

/** A loaded OpenBLAS. */
export interface Blas {
  /** The path that was opened. */
  path: string;
  /** OpenBLAS's own build description (version, core, threading), when it exports one. */
  config: string;
  /** Threads OpenBLAS may use for large products (0 if unknown). */
  numThreads(): number;
  setNumThreads(n: number): void;
  /**
   * Sets the threads OpenBLAS uses from now on without changing numThreads() (kernels.ts runs small
   * products on one thread); a no-op when that many are already in use.
   */
  useThreads(n: number): void;
  /**
   * C = alpha * op(A) @ op(B) + beta * C, row-major; op(A) is (M, K), op(B) is (K, N), C is (M, N).
   * A is (M, K) or, with transA, (K, M), stored with row stride lda; likewise B and ldb; C with ldc.
   */
  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: number,
    c: Float32Array,
    ldc: number,
  ): void;
}

export type LoadResult = { ok: true; blas: Blas } | { ok: false; reason: string };

let cached: LoadResult | null = null;

/** Whether this process may use FFI, asked without prompting. */
export function ffiAllowed(): boolean {
  try {
    return Deno.permissions.querySync({ name: "ffi" }).state === "granted";
  } catch {
    return false;
  }
}

/**
 * Opens OpenBLAS once per process (later calls return the same result), searching
 * $SEEMORE_OPENBLAS or the usual paths. With `path`, tries exactly that file, uncached. Never throws.
 */
export function loadBlas(path?: string): LoadResult {
  if (path) return openBlas([path], path);
  if (cached) return cached;
  const fromEnv = readEnv("SEEMORE_OPENBLAS");
  cached = fromEnv ? openBlas([fromEnv], `SEEMORE_OPENBLAS=${fromEnv}`) : openBlas(LIBRARY_CANDIDATES, "");
  return cached;
}

/** Forgets a failed loadBlas(), so the next call searches again (after setup installed the library). */
export function forgetFailedBlas(): void {
  if (cached && !cached.ok) cached = null;
}

function openBlas(candidates: readonly string[], label: string): LoadResult {
  if (!ffiAllowed()) {
    return { ok: false, reason: `OpenBLAS not loaded: run Deno with --allow-ffi, and ${INSTALL_HINT}` };
  }
  shortThreadSpin();
  const errors: string[] = [];
  for (const path of candidates) {
    let lib: BlasLibrary;
    try {
      lib = Deno.dlopen(path, { ...SYMBOLS, ...OPTIONAL_SYMBOLS });
    } catch (err) {
      errors.push(`${path}: ${firstLine(err)}`);
      continue;
    }
    return { ok: true, blas: wrap(path, lib) };
  }
  const tried = label || `${candidates.length} usual paths`;
  return {
    ok: false,
    reason: `OpenBLAS not found (tried ${tried}; first error: ${errors[0] ?? "none"}): ${INSTALL_HINT}`,
  };
}

function wrap(path: string, lib: BlasLibrary): Blas {
  const s = lib.symbols;
  const configPtr = s.openblas_get_config ? s.openblas_get_config() : null;
  const config = configPtr ? new Deno.UnsafePointerView(configPtr).getCString() : "unknown";
  let configured = s.openblas_get_num_threads ? s.openblas_get_num_threads() : 0;
  // Asked each time, not remembered: the C kernels (c/products.c) set it too.
  const useThreads = (n: number) => {
    if (!s.openblas_set_num_threads || !s.openblas_get_num_threads) return;
    if (s.openblas_get_num_threads() !== n) s.openblas_set_num_threads(n);
  };
  return {
    path,
    config,
    numThreads: () => configured,
    setNumThreads(n: number) {
      if (!Number.isInteger(n) || n < 1) throw new Error(`lib/blas/ffi.ts: threads must be >= 1, got ${n}`);
      useThreads(n);
      configured = n;
    },
    useThreads,
    sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) {
      checkGemm(transA, transB, m, n, k, a, lda, b, ldb, c, ldc);
      if (m === 0 || n === 0) return;
      s.cblas_sgemm(
        ROW_MAJOR,
        transA ? TRANS : NO_TRANS,
        transB ? TRANS : NO_TRANS,
        m,
        n,
        k,
        alpha,
        a,
        lda,
        b,
        ldb,
        beta,
        c,
        ldc,
      );
    },
  };
}

/**
 * Throws unless every element sgemm will touch lies inside its view. A stored matrix of `rows` rows
 * with row stride `ld` and `cols` used columns needs (rows - 1) * ld + cols elements.
 */
export function checkGemm(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  a: Float32Array,
  lda: number,
  b: Float32Array,
  ldb: number,
  c: Float32Array,
  ldc: number,
): void {
  for (const [name, v] of [["m", m], ["n", n], ["k", k], ["lda", lda], ["ldb", ldb], ["ldc", ldc]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) {
      throw new Error(`lib/blas/ffi.ts: sgemm ${name}=${v} is not a valid int32 size`);
    }
  }
  const [aRows, aCols] = transA ? [k, m] : [m, k];
  const [bRows, bCols] = transB ? [n, k] : [k, n];
  checkMatrix("A", a, aRows, aCols, lda);
  checkMatrix("B", b, bRows, bCols, ldb);
  checkMatrix("C", c, m, n, ldc);
}

function checkMatrix(name: string, view: Float32Array, rows: number, cols: number, ld: number): void {
  if (ld < Math.max(1, cols)) {
    throw new Error(`lib/blas/ffi.ts: sgemm ${name}: leading dimension ${ld} < ${cols} columns`);
  }
  const needed = rows === 0 || cols === 0 ? 0 : (rows - 1) * ld + cols;
  if (needed > view.length) {
    throw new Error(
      `lib/blas/ffi.ts: sgemm ${name}: needs ${needed} elements (${rows}x${cols}, ld ${ld}) but the view has ${view.length}`,
    );
  }
}

/**
 * After each product, OpenBLAS's idle worker threads spin (sched_yield) for about 2^28 cycles before
 * sleeping, holding a core that our C kernels' helper threads then wait for — on a 2-core machine half
 * the CPU. OPENBLAS_THREAD_TIMEOUT=4 (2^4 cycles) makes them sleep at once; waking them costs a few
 * microseconds per product, much less than the spinning cost (bench/README.md). Read when the library
 * loads; a value the user set is kept.
 */
function shortThreadSpin(): void {
  try {
    if (Deno.env.get("OPENBLAS_THREAD_TIMEOUT") === undefined) Deno.env.set("OPENBLAS_THREAD_TIMEOUT", "4");
  } catch { /* no --allow-env: OpenBLAS keeps its default */ }
}

/** An environment variable, or undefined when unset, empty or not permitted (--allow-env). */
export function readEnv(name: string): string | undefined {
  try {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") return undefined;
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

/** The first line of an error's message. */
export function firstLine(err: unknown): string {
  return String(err instanceof Error ? err.message : err).split("\n")[0];
}
