// Adam (c/adam.c): one step into fresh arrays, or in place for many parameters on the wasm heap.

import { B, checksFor, F, I, type Symbols, VOID } from "./common.ts";

const check = checksFor("lib/blas/native/adam.ts");

export const ADAM_SYMBOLS = {
  // p, m, v, g, p', m', v', n, beta1, beta2, step size, sqrt(bias correction 2), eps
  seemore_adam: { parameters: [B, B, B, B, B, B, B, I, F, F, F, F, F], result: VOID },
  // heap, byte offsets (u32: p, m, v, g per parameter), sizes (i32), count, beta1, beta2, step size,
  // sqrt(bias correction 2), eps -> 0 on success
  seemore_adam_in_place: { parameters: [B, B, B, I, F, F, F, F, F], result: I },
} as const;

/** Adam's settings for one step: step size lr / (1 - beta1^t), sqrtBc2 = sqrt(1 - beta2^t). */
export interface AdamHyper {
  beta1: number;
  beta2: number;
  stepSize: number;
  sqrtBc2: number;
  eps: number;
}

export interface AdamKernels {
  /** One Adam step into fresh arrays (see c/adam.c for the formula). */
  adam(
    state: { p: Float32Array; m: Float32Array; v: Float32Array; g: Float32Array },
    out: { p: Float32Array; m: Float32Array; v: Float32Array },
    hyper: AdamHyper,
  ): void;
  /**
   * The same step for many parameters at once, in place, on the wasm heap `heap`: parameter i has
   * sizes[i] floats and offsets[4i..4i+3] are the byte offsets of its p, m, v (overwritten) and g.
   * Every region must lie in the heap and p, m, v must not overlap anything else (checked).
   */
  adamInPlace(heap: Uint8Array, offsets: Uint32Array, sizes: Int32Array, hyper: AdamHyper): void;
}

export function adamKernels(s: Symbols<typeof ADAM_SYMBOLS>): AdamKernels {
  return {
    adam(state, out, h) {
      const n = state.p.length;
      const { m, v, g } = state;
      check.sameLength("adam", n, { m, v, g, pOut: out.p, mOut: out.m, vOut: out.v });
      s.seemore_adam(
        state.p,
        m,
        v,
        g,
        out.p,
        out.m,
        out.v,
        n,
        h.beta1,
        h.beta2,
        h.stepSize,
        h.sqrtBc2,
        h.eps,
      );
    },
    adamInPlace(heap, offsets, sizes, h) {
      checkAdamRegions(heap.byteLength, offsets, sizes);
      const count = sizes.length;
      const rc = s.seemore_adam_in_place(
        heap,
        offsets,
        sizes,
        count,
        h.beta1,
        h.beta2,
        h.stepSize,
        h.sqrtBc2,
        h.eps,
      );
      check.ok("seemore_adam_in_place", rc);
    },
  };
}

/**
 * Throws unless every region of adamInPlace lies in the heap, 4-byte aligned, and no region it writes
 * (p, m, v) overlaps another region. Gradients are only read: they may share memory.
 */
function checkAdamRegions(heapBytes: number, offsets: Uint32Array, sizes: Int32Array): void {
  if (offsets.length !== 4 * sizes.length) {
    check.fail(`adamInPlace needs 4 offsets per size, got ${offsets.length} for ${sizes.length}`);
  }
  const regions: [number, number, boolean][] = []; // [start, end, written]
  sizes.forEach((n, i) => {
    if (!Number.isInteger(n) || n < 0) check.fail(`adamInPlace size ${n}`);
    for (let j = 0; j < 4; j++) {
      const start = offsets[4 * i + j];
      check.region("adamInPlace", heapBytes, start, 4 * n);
      regions.push([start, start + 4 * n, j < 3]);
    }
  });
  regions.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < regions.length; i++) {
    const [prev, cur] = [regions[i - 1], regions[i]];
    if (cur[0] < prev[1] && (prev[2] || cur[2])) check.fail(`adamInPlace regions overlap at byte ${cur[0]}`);
  }
}
