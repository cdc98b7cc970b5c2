// Elementwise maths (c/vector_math.c): erf, exp, GELU and its gradient, ReLU's gradient.

import { B, checksFor, I, type Symbols, VOID } from "./common.ts";

const check = checksFor("lib/blas/native/vector_math.ts");

export const VECTOR_MATH_SYMBOLS = {
  seemore_erf: { parameters: [B, B, I], result: VOID }, // x, y, n
  seemore_exp: { parameters: [B, B, I], result: VOID },
  seemore_gelu: { parameters: [B, B, I], result: VOID },
  seemore_gelu_grad: { parameters: [B, B, B, I], result: VOID }, // x, dy, dx, n
  seemore_gelu_with_grad: { parameters: [B, B, B, B, I], result: VOID }, // x, dy, GELU(x), dy * GELU'(x), n
  seemore_relu_grad: { parameters: [B, B, B, I], result: VOID }, // x, dy, dx, n
} as const;

export interface VectorMathKernels {
  /** y = f(x) elementwise; x and y have the same length. */
  unary(op: "erf" | "exp" | "gelu", x: Float32Array, y: Float32Array): void;
  /** dx = dy * f'(x) for f = GELU or ReLU. */
  unaryGrad(op: "gelu" | "relu", x: Float32Array, dy: Float32Array, dx: Float32Array): void;
  /** out = GELU(x) and dx = dy * GELU'(x) in one pass (one exp and one erf per element). */
  geluWithGrad(x: Float32Array, dy: Float32Array, out: Float32Array, dx: Float32Array): void;
}

export function vectorMathKernels(s: Symbols<typeof VECTOR_MATH_SYMBOLS>): VectorMathKernels {
  return {
    unary(op, x, y) {
      check.sameLength(`${op}`, x.length, { y });
      const fn = op === "erf" ? s.seemore_erf : op === "exp" ? s.seemore_exp : s.seemore_gelu;
      fn(x, y, x.length);
    },
    unaryGrad(op, x, dy, dx) {
      check.sameLength(`${op} gradient`, x.length, { dy, dx });
      (op === "gelu" ? s.seemore_gelu_grad : s.seemore_relu_grad)(x, dy, dx, x.length);
    },
    geluWithGrad(x, dy, out, dx) {
      check.sameLength("gelu with gradient", x.length, { dy, out, dx });
      s.seemore_gelu_with_grad(x, dy, out, dx, x.length);
    },
  };
}
