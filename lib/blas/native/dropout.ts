// Dropout and its noise (c/dropout.c): tf.randomUniform's draws and tf.dropout's mask, bit for bit.

import { aleaState, aleaStates, DRAW_CHUNK } from "./alea.ts";
import { B, checksFor, F, I, type Symbols, VOID } from "./common.ts";

const check = checksFor("lib/blas/native/dropout.ts");

export const DROPOUT_SYMBOLS = {
  seemore_uniform: { parameters: [B, B, I], result: VOID }, // state (f64[4], advanced), out, n
  // x, y, mask (u8), n, keep, noise states (f64[4] per chunk of draws), draws per chunk
  seemore_dropout: { parameters: [B, B, B, I, F, B, I], result: VOID },
  seemore_dropout_grad: { parameters: [B, B, B, I, F], result: VOID }, // dy, mask (u8), dx, n, keep
} as const;

export interface DropoutKernels {
  /** tf.randomUniform(shape, 0, 1, "float32", seed)'s values, bit for bit, n of them. */
  uniform(seed: number, n: number): Float32Array;
  /**
   * tf.dropout(x, 1 - keep, undefined, seed): y = x · floor(u + keep) / keep with u that seed's
   * uniform noise; mask[i] = 1 where x[i] was kept.
   */
  dropout(x: Float32Array, seed: number, out: { y: Float32Array; mask: Uint8Array }, keep: number): void;
  /** dx = dy · (mask ? 1/keep : 0). */
  dropoutGrad(dy: Float32Array, mask: Uint8Array, dx: Float32Array, keep: number): void;
}

export function dropoutKernels(s: Symbols<typeof DROPOUT_SYMBOLS>): DropoutKernels {
  return {
    uniform(seed, n) {
      const out = new Float32Array(n);
      s.seemore_uniform(aleaState(seed), out, n);
      return out;
    },
    dropout(x, seed, out, keep) {
      check.keep(keep);
      check.sameLength("dropout", x.length, { y: out.y, mask: out.mask });
      s.seemore_dropout(x, out.y, out.mask, x.length, keep, aleaStates(seed, x.length), DRAW_CHUNK);
    },
    dropoutGrad(dy, mask, dx, keep) {
      check.keep(keep);
      check.sameLength("dropoutGrad", dy.length, { dx, mask });
      s.seemore_dropout_grad(dy, mask, dx, dy.length, keep);
    },
  };
}
