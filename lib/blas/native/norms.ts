// Layer norm and its gradient (c/norms.c).

import { B, checksFor, F, I, type Symbols, VOID } from "./common.ts";

const check = checksFor("lib/blas/native/norms.ts");

export const NORM_SYMBOLS = {
  seemore_layer_norm: { parameters: [B, B, B, B, B, B, I, I, F], result: VOID }, // x, g, b, y, mean, rstd, rows, cols, eps
  // dy, x, g, mean, rstd, dx, dg, db, rows, cols -> 0 on success
  seemore_layer_norm_grad: { parameters: [B, B, B, B, B, B, B, B, I, I], result: I },
} as const;

export interface NormKernels {
  /** Layer norm over rows of `cols` values; also writes each row's mean and 1/sqrt(var + eps). */
  layerNorm(
    x: Float32Array,
    g: Float32Array,
    b: Float32Array,
    out: { y: Float32Array; mean: Float32Array; rstd: Float32Array },
    cols: number,
    eps: number,
  ): void;
  /** Its gradient: dx, and dg, db summed over the rows. */
  layerNormGrad(
    dy: Float32Array,
    x: Float32Array,
    g: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    out: { dx: Float32Array; dg: Float32Array; db: Float32Array },
  ): void;
}

export function normKernels(s: Symbols<typeof NORM_SYMBOLS>): NormKernels {
  return {
    layerNorm(x, g, b, out, cols, eps) {
      const rows = check.rowsOf("layerNorm", x.length, cols);
      check.sameLength("layerNorm", x.length, { y: out.y });
      check.sameLength("layerNorm", cols, { g, b });
      check.sameLength("layerNorm", rows, { mean: out.mean, rstd: out.rstd });
      s.seemore_layer_norm(x, g, b, out.y, out.mean, out.rstd, rows, cols, eps);
    },
    layerNormGrad(dy, x, g, mean, rstd, out) {
      const cols = g.length;
      const rows = check.rowsOf("layerNormGrad", x.length, cols);
      check.sameLength("layerNormGrad", x.length, { dy, dx: out.dx });
      check.sameLength("layerNormGrad", cols, { dg: out.dg, db: out.db });
      check.sameLength("layerNormGrad", rows, { mean, rstd });
      const rc = s.seemore_layer_norm_grad(dy, x, g, mean, rstd, out.dx, out.dg, out.db, rows, cols);
      check.ok("seemore_layer_norm_grad", rc);
    },
  };
}
