// Attention of the first position only (c/first_attention.c): the ViT's CLS row, forward and gradient.

import { aleaStates, DRAW_CHUNK } from "./alea.ts";
import { B, checksFor, F, I, type Shared, type Symbols } from "./common.ts";

const check = checksFor("lib/blas/native/first_attention.ts");

export const FIRST_ATTENTION_SYMBOLS = {
  // x, w, q, a, ctx, out, probs, mask (u8, or null), noise states (or null), draws per chunk, B, T, C, H,
  // scale, keep -> 0 on success
  seemore_first_attention: { parameters: [B, B, B, B, B, B, B, B, B, I, I, I, I, I, F, F], result: I },
  // dout, x, w, q, a, ctx, probs, mask (or null), dx, dw, B, T, C, H, scale, keep -> 0 on success
  seemore_first_attention_grad: { parameters: [B, B, B, B, B, B, B, B, B, B, I, I, I, I, F, F], result: I },
} as const;

/** firstAttention's sizes: batch B, positions T, width C, H heads; the score scale and dropout's keep. */
export interface FirstAttentionDims {
  B: number;
  T: number;
  C: number;
  H: number;
  scale: number;
  keep: number;
}

/** firstAttention's input x, fused weight w, and what it keeps for the gradient (q, a, ctx, probs). */
export interface FirstAttentionArrays {
  x: Float32Array;
  w: Float32Array;
  q: Float32Array;
  a: Float32Array;
  ctx: Float32Array;
  probs: Float32Array;
}

export interface FirstAttentionKernels {
  /**
   * Attention of position 0 only, from x (B, T, C) and the fused weight w [C, 3C] read in place:
   * q = x[:, 0] w[:, :C]; per head, softmax(scale q·k) (dropped out with seed's noise when given)
   * times v → out (B, C), with the key and value projections moved onto the query's side (a = q_h
   * Wk_h^T, ctx = the weighted sum of x's rows; c/first_attention.c). q, a, ctx, probs and mask are
   * kept for firstAttentionGrad.
   */
  firstAttention(
    io: FirstAttentionArrays & { out: Float32Array; mask: Uint8Array | null },
    seed: number | null,
    dims: FirstAttentionDims,
  ): void;
  /** Its gradient: dx (B, T, C) and dw [C, 3C] from dout (B, C) and what firstAttention kept. */
  firstAttentionGrad(
    io: FirstAttentionArrays & {
      dout: Float32Array;
      mask: Uint8Array | null;
      dx: Float32Array;
      dw: Float32Array;
    },
    dims: FirstAttentionDims,
  ): void;
}

export function firstAttentionKernels(
  s: Symbols<typeof FIRST_ATTENTION_SYMBOLS>,
  shared: Shared,
): FirstAttentionKernels {
  return {
    firstAttention(io, seed, dims) {
      check.needSgemm(shared, "firstAttention");
      checkFirstAttention("firstAttention", dims, io, io.mask);
      check.sameLength("firstAttention", dims.B * dims.C, { out: io.out });
      if ((seed === null) !== (io.mask === null)) {
        check.fail("firstAttention needs both a dropout seed and a mask, or neither");
      }
      const { B, T, C, H, scale, keep } = dims;
      const noise = seed === null ? null : aleaStates(seed, B * H * T);
      const { x, w, q, a, ctx, out, probs, mask } = io;
      const rc = s.seemore_first_attention(
        x,
        w,
        q,
        a,
        ctx,
        out,
        probs,
        mask,
        noise,
        DRAW_CHUNK,
        B,
        T,
        C,
        H,
        scale,
        keep,
      );
      check.ok("seemore_first_attention", rc);
    },
    firstAttentionGrad(io, dims) {
      check.needSgemm(shared, "firstAttentionGrad");
      checkFirstAttention("firstAttentionGrad", dims, io, io.mask);
      check.sameLength("firstAttentionGrad", dims.B * dims.C, { dout: io.dout });
      check.sameLength("firstAttentionGrad", dims.B * dims.T * dims.C, { dx: io.dx });
      check.sameLength("firstAttentionGrad", 3 * dims.C * dims.C, { dw: io.dw });
      const { B, T, C, H, scale, keep } = dims;
      const { dout, x, w, q, a, ctx, probs, mask, dx, dw } = io;
      const rc = s.seemore_first_attention_grad(
        dout,
        x,
        w,
        q,
        a,
        ctx,
        probs,
        mask,
        dx,
        dw,
        B,
        T,
        C,
        H,
        scale,
        keep,
      );
      check.ok("seemore_first_attention_grad", rc);
    },
  };
}

function checkFirstAttention(
  what: string,
  { B, T, C, H, keep }: FirstAttentionDims,
  arrays: FirstAttentionArrays,
  mask: Uint8Array | null,
): void {
  if (C % H !== 0) check.fail(`${what} width ${C} is not a multiple of ${H} heads`);
  check.keep(keep);
  check.sameLength(what, B * T * C, { x: arrays.x });
  check.sameLength(what, 3 * C * C, { w: arrays.w });
  check.sameLength(what, B * C, { q: arrays.q });
  check.sameLength(what, B * H * C, { a: arrays.a, ctx: arrays.ctx });
  check.sameLength(what, B * H * T, { probs: arrays.probs });
  if (mask) check.sameLength(what, B * H * T, { mask });
}
