// The products (c/products.c): OpenBLAS's or oneDNN's sgemm, cut into slices on the kernels' threads.

import { checkGemm } from "../ffi.ts";
import { B, checksFor, F, I, type Shared, type Symbols } from "./common.ts";

const check = checksFor("lib/blas/native/products.ts");

export const PRODUCT_SYMBOLS = {
  seemore_bind_sgemm: { parameters: [B], result: I }, // library path (NUL-terminated) -> 0 on success
  seemore_bind_dnnl: { parameters: [B], result: I }, // library path -> 0, -1 (no library), -2 (no symbol)
  seemore_use_dnnl: { parameters: [I], result: I }, // 1 on, 0 off, -1 ask -> whether oneDNN is in use
  // transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads -> 0 on success
  seemore_sgemm: { parameters: [I, I, I, I, I, F, B, I, B, I, F, B, I, I], result: I },
  // transA, transB, m, n, k, a, aIndex (i32), b, bIndex (i32), beta, c, batch -> 0 on success
  seemore_sgemm_batch: { parameters: [I, I, I, I, I, B, B, B, B, F, B, I], result: I },
} as const;

export interface ProductKernels {
  /**
   * Lets the C kernels call cblas_sgemm of the OpenBLAS at `libraryPath` (already opened by ffi.ts).
   * Returns false if it cannot be found; the kernels that multiply need it.
   */
  bindSgemm(libraryPath: string): boolean;
  /** Whether bindSgemm succeeded. */
  hasSgemm(): boolean;
  /**
   * Lets the products (sgemm, the blocks', the CLS attention's and the experts') run on oneDNN's
   * dnnl_sgemm from the library at `libraryPath` (libdnnl.so): 0 when it is in use, -1 when the library
   * does not open, -2 when it lacks dnnl_sgemm or its OpenMP runtime's omp_set_num_threads.
   */
  bindDnnl(libraryPath: string): number;
  /** Products through oneDNN (when bound) or OpenBLAS; returns whether oneDNN is now in use. */
  useDnnl(on: boolean): boolean;
  /** Whether the products run on oneDNN. */
  usingDnnl(): boolean;
  /**
   * c = op(a) @ op(b) + beta * c, row-major (as Blas.sgemm, alpha 1) on `threads` threads. With oneDNN
   * every product is cut into one slice per thread, run on our spinning helper threads; with OpenBLAS
   * only those up to 64 Mi multiply-adds are, and the bigger ones go to OpenBLAS's threads (c/products.c,
   * seemore_sgemm). Needs bindSgemm.
   */
  sgemm(
    transA: boolean,
    transB: boolean,
    dims: { m: number; n: number; k: number },
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: 0 | 1,
    c: Float32Array,
    ldc: number,
    threads: number,
  ): void;
  /**
   * c[i] = op(a[aIndex[i]]) @ op(b[bIndex[i]]) + beta * c[i] for every i, row-major, op(a) m×k and
   * op(b) k×n, the matrices packed one after another: a batched matmul in one call (needs bindSgemm).
   */
  sgemmBatch(
    transA: boolean,
    transB: boolean,
    dims: { m: number; n: number; k: number },
    a: Float32Array,
    aIndex: Int32Array,
    b: Float32Array,
    bIndex: Int32Array,
    beta: 0 | 1,
    c: Float32Array,
  ): void;
}

const cString = (text: string) => new TextEncoder().encode(text + "\0");

export function productKernels(s: Symbols<typeof PRODUCT_SYMBOLS>, shared: Shared): ProductKernels {
  return {
    bindSgemm(libraryPath) {
      if (!shared.sgemmBound) shared.sgemmBound = s.seemore_bind_sgemm(cString(libraryPath)) === 0;
      return shared.sgemmBound;
    },
    hasSgemm: () => shared.sgemmBound,
    bindDnnl: (libraryPath) => s.seemore_bind_dnnl(cString(libraryPath)),
    useDnnl: (on) => s.seemore_use_dnnl(on ? 1 : 0) === 1,
    usingDnnl: () => s.seemore_use_dnnl(-1) === 1,
    sgemm(transA, transB, { m, n, k }, a, lda, b, ldb, beta, c, ldc, threads) {
      check.needSgemm(shared, "sgemm");
      checkGemm(transA, transB, m, n, k, a, lda, b, ldb, c, ldc);
      if (!Number.isInteger(threads) || threads < 1) check.fail(`sgemm threads must be >= 1, got ${threads}`);
      if (m === 0 || n === 0) return;
      const [ta, tb] = [transA ? 1 : 0, transB ? 1 : 0];
      check.ok("seemore_sgemm", s.seemore_sgemm(ta, tb, m, n, k, 1, a, lda, b, ldb, beta, c, ldc, threads));
    },
    sgemmBatch(transA, transB, { m, n, k }, a, aIndex, b, bIndex, beta, c) {
      check.needSgemm(shared, "sgemmBatch");
      const batch = aIndex.length;
      if (bIndex.length !== batch) {
        check.fail(`sgemmBatch has ${batch} A indices but ${bIndex.length} B indices`);
      }
      check.sameLength("sgemmBatch", batch * m * n, { c });
      checkIndices("sgemmBatch A", aIndex, a.length, m * k);
      checkIndices("sgemmBatch B", bIndex, b.length, k * n);
      const [ta, tb] = [transA ? 1 : 0, transB ? 1 : 0];
      check.ok(
        "seemore_sgemm_batch",
        s.seemore_sgemm_batch(ta, tb, m, n, k, a, aIndex, b, bIndex, beta, c, batch),
      );
    },
  };
}

/** Every index must pick a whole matrix of `size` floats inside an array of `length`. */
function checkIndices(what: string, index: Int32Array, length: number, size: number): void {
  const count = size > 0 ? Math.floor(length / size) : 0;
  check.range(`${what} index`, index, 0, count, `its ${count} matrices`);
}
