// Memory-bound kernels (c/memory.c): transpose, gather, sums, im2col and its adjoint, bias rows; and
// handing freed host memory back to the system.

import { B, checksFor, I, type Symbols, VOID } from "./common.ts";

const check = checksFor("lib/blas/native/memory.ts");

/** The most axes transpose32 and sum take (c/memory.c's MAX_RANK). */
const MAX_RANK = 8;

export const MEMORY_SYMBOLS = {
  seemore_transpose32: { parameters: [B, B, I, B, B], result: VOID }, // src, dst, rank, shape, perm (i32)
  // src, dst, outer, dim, inner, index (i32), n_index
  seemore_gather32: { parameters: [B, B, I, I, I, B, I], result: VOID },
  // src, dst, groups, sizes (i32[groups]), reduced flags (i32[groups]) -> 0 on success
  seemore_sum: { parameters: [B, B, I, B, B], result: I },
  seemore_im2col3x3s2: { parameters: [B, B, I, I, I, I], result: VOID }, // x, cols, B, H, W, C
  seemore_col2im3x3s2: { parameters: [B, B, I, I, I, I], result: VOID }, // dcols, dx, B, H, W, C
  seemore_fill_rows: { parameters: [B, B, I, I], result: VOID }, // dst (rows, n), row (n), rows, n
  seemore_release_host_memory: { parameters: [], result: VOID },
} as const;

export interface MemoryKernels {
  /** dst = transpose(src, perm), for 4-byte elements; shape is src's shape. */
  transpose32(src: Int32Array, dst: Int32Array, shape: number[], perm: number[]): void;
  /**
   * dst (outer, index.length, inner) = src (outer, dim, inner) gathered along the middle axis, for
   * 4-byte elements. Every index must lie in [0, dim) (checked).
   */
  gather32(
    src: Int32Array,
    dst: Int32Array,
    sizes: { outer: number; dim: number; inner: number },
    index: Int32Array,
  ): void;
  /** dst = sum of src over `axes` (dst holds the kept axes' elements), accumulated in double. */
  sum(src: Float32Array, dst: Float32Array, shape: number[], axes: number[]): void;
  /** im2col of a 3×3, stride 2, padding 1 convolution: x (B, H, W, C) → cols (B, H/2, W/2, 9, C). */
  im2col3x3s2(x: Float32Array, cols: Float32Array, shape: [number, number, number, number]): void;
  /** Its adjoint (the gradient): cols summed back onto the pixels they were read from, into dx (overwritten). */
  col2im3x3s2(cols: Float32Array, dx: Float32Array, shape: [number, number, number, number]): void;
  /** dst (rows, row.length) = row repeated, rows split across the kernel threads. */
  fillRows(dst: Float32Array, row: Float32Array): void;
  /** Hands the C heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere). */
  releaseHostMemory(): void;
}

export function memoryKernels(s: Symbols<typeof MEMORY_SYMBOLS>): MemoryKernels {
  return {
    transpose32(src, dst, shape, perm) {
      const size = shape.reduce((a, b) => a * b, 1);
      checkPerm(shape, perm);
      if (src.length < size || dst.length < size) {
        check.fail(`transpose32 needs ${size} elements, got ${src.length} and ${dst.length}`);
      }
      s.seemore_transpose32(src, dst, shape.length, Int32Array.from(shape), Int32Array.from(perm));
    },
    gather32(src, dst, { outer, dim, inner }, index) {
      for (const [name, v] of [["outer", outer], ["dim", dim], ["inner", inner]] as const) {
        if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) {
          check.fail(`gather32 ${name}=${v} is not a valid size`);
        }
      }
      for (let i = 0; i < index.length; i++) {
        if (!(index[i] >= 0 && index[i] < dim)) {
          check.fail(`gather index ${index[i]} is not in [0, ${dim - 1}]`);
        }
      }
      if (src.length < outer * dim * inner || dst.length < outer * index.length * inner) {
        check.fail(
          `gather32 needs ${outer * dim * inner} -> ${outer * index.length * inner} ` +
            `elements, got ${src.length} -> ${dst.length}`,
        );
      }
      s.seemore_gather32(src, dst, outer, dim, inner, index, index.length);
    },
    sum(src, dst, shape, axes) {
      const [sizes, reduced] = simplifyReduction(shape, axes);
      const size = shape.reduce((a, b) => a * b, 1);
      const kept = sizes.reduce((acc, d, g) => (reduced[g] ? acc : acc * d), 1);
      if (src.length < size || dst.length < kept) {
        check.fail(`sum needs ${size} -> ${kept} elements, got ${src.length} -> ${dst.length}`);
      }
      if (sizes.length === 0) {
        dst[0] = src[0];
        return;
      }
      if (sizes.length > MAX_RANK) check.fail(`sum over rank ${sizes.length} > ${MAX_RANK}`);
      const rc = s.seemore_sum(
        src,
        dst,
        sizes.length,
        Int32Array.from(sizes),
        Int32Array.from(reduced, Number),
      );
      check.ok("seemore_sum", rc);
    },
    im2col3x3s2(x, cols, shape) {
      checkIm2col("im2col3x3s2", x, cols, shape);
      s.seemore_im2col3x3s2(x, cols, ...shape);
    },
    col2im3x3s2(cols, dx, shape) {
      checkIm2col("col2im3x3s2", dx, cols, shape);
      s.seemore_col2im3x3s2(cols, dx, ...shape);
    },
    releaseHostMemory() {
      s.seemore_release_host_memory();
    },
    fillRows(dst, row) {
      const rows = check.rowsOf("fillRows", dst.length, row.length);
      s.seemore_fill_rows(dst, row, rows, row.length);
    },
  };
}

/**
 * Groups neighbouring axes that are all reduced or all kept (size-1 axes dropped): the same
 * reduction on fewer, longer axes. Returns [sizes, reduced flags].
 */
export function simplifyReduction(shape: number[], axes: number[]): [number[], boolean[]] {
  const sizes: number[] = [], reduced: boolean[] = [];
  shape.forEach((d, i) => {
    if (d === 1) return;
    const r = axes.includes(i);
    if (reduced.length > 0 && reduced[reduced.length - 1] === r) sizes[sizes.length - 1] *= d;
    else {
      sizes.push(d);
      reduced.push(r);
    }
  });
  return [sizes, reduced];
}

function checkPerm(shape: number[], perm: number[]): void {
  const seen = new Set(perm);
  if (
    perm.length !== shape.length || seen.size !== perm.length ||
    perm.some((p) => !(p >= 0 && p < shape.length))
  ) {
    check.fail(`bad permutation [${perm}] for shape [${shape}]`);
  }
  if (shape.some((d) => !Number.isInteger(d) || d < 0 || d > 0x7fffffff)) check.fail(`bad shape [${shape}]`);
}

/** Image (B, H, W, C) and column (B, H/2, W/2, 9, C) buffers of an im2col call hold what the shape says. */
function checkIm2col(what: string, image: Float32Array, cols: Float32Array, [B, H, W, C]: number[]): void {
  if (H % 2 !== 0 || W % 2 !== 0) check.fail(`${what} needs even H, W (${H}×${W})`);
  check.sameLength(`${what} image`, B * H * W * C, { image });
  check.sameLength(`${what} cols`, B * H * W * C / 4 * 9, { cols });
}
