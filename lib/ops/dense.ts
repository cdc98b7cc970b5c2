// Dense layers: x @ W (+ b) over the last axis of x, and the second half of a feed-forward, GELU then
// a dense layer, that keeps only its input for the backward pass.

import * as tf from "@tensorflow/tfjs-core";
import { gelu, geluWithGrad, hasGeluWithGrad } from "./activations.ts";
import { hasKernels, KERNELS, runKernel } from "./registry.ts";

/** `x @ W (+ b)` over the last axis of x, any leading shape; W is [in, out]. → (..., out) */
export function dense(x: tf.Tensor, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor {
  if (x.dtype !== "float32" || !hasKernels("dense")) return denseComposite(x, w, b);
  return runKernel("dense", b ? { a: x, b: w, bias: b } : { a: x, b: w }) as tf.Tensor;
}

/** The same from tfjs ops: rows flattened, one 2-D matmul, the bias added. */
function denseComposite(x: tf.Tensor, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor {
  const [nIn, nOut] = w.shape;
  const rows = tf.reshape(x, [-1, nIn]) as tf.Tensor2D; // (N, in)
  const y = matmul2d(rows, w); // (N, out)
  return tf.reshape(b ? tf.add(y, b) : y, [...x.shape.slice(0, -1), nOut]); // (..., out)
}

/**
 * `a @ b` for 2-D tensors whose gradient uses only untransposed matmuls: the stock wasm backend runs
 * transposed matmuls on a slow scalar path, an explicit transpose then a plain matmul is several times
 * faster there, and costs little elsewhere.
 */
const matmul2d = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [a, b, save] = args as [tf.Tensor2D, tf.Tensor2D, tf.GradSaveFunc];
  save([a, b]);
  return {
    value: tf.matMul(a, b), // (M, N)
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sa, sb] = saved as tf.Tensor2D[];
      return [
        tf.matMul(dy as tf.Tensor2D, tf.transpose(sb)), // (M, K)
        tf.matMul(tf.transpose(sa), dy as tf.Tensor2D), // (K, N)
      ];
    },
  };
}) as (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor2D;

// The dense kernel's gradient, lazy per input: a dense layer fed by data (the patch embedding, the
// one-hot token lookup) never computes the gradient of its input.
tf.registerGradient({
  kernelName: KERNELS.dense,
  inputsToSave: ["a", "b"],
  gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
    const [a, b] = saved;
    const g = dy as tf.Tensor; // (..., out)
    return {
      a: () => tf.matMul(g, b, false, true), // (..., in)
      b: () => weightGrad(a, g), // [in, out]
      bias: () => biasGrad(g), // [out]
    };
  },
});

/** The gradient of x @ W with respect to W: x (..., in), dy (..., out) → [in, out], summed over rows. */
function weightGrad(x: tf.Tensor, dy: tf.Tensor): tf.Tensor {
  const rowsX = tf.reshape(x, [-1, x.shape[x.rank - 1]]);
  const rowsDy = tf.reshape(dy, [-1, dy.shape[dy.rank - 1]]);
  return tf.matMul(rowsX, rowsDy, true, false); // [in, out]
}

/** The gradient of x @ W + b with respect to b: dy (..., out) summed over all leading axes → [out]. */
function biasGrad(dy: tf.Tensor): tf.Tensor {
  return tf.sum(dy, Array.from({ length: dy.rank - 1 }, (_, i) => i));
}

/**
 * dense(gelu(h), w, b), keeping only h for the backward pass, where one kernel then gives GELU(h) again
 * and GELU's gradient together (as cheap as the gradient alone): the feed-forward's widest activation
 * (B, T, 4C) is freed between the passes. The same numbers as dense(gelu(h), w, b).
 */
export function geluDense(h: tf.Tensor, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor {
  if (!recordingGradients() || !hasKernels("dense") || !hasGeluWithGrad()) return dense(gelu(h), w, b);
  return geluDenseRecomputed(h, w, b);
}

const geluDenseRecomputed = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [h, w, b, save] = args as [tf.Tensor, tf.Tensor2D, tf.Tensor1D, tf.GradSaveFunc];
  save([h, w]);
  return {
    value: dense(gelu(h), w, b), // (..., out)
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sh, sw] = saved as [tf.Tensor, tf.Tensor2D];
      const [g, dh] = geluWithGrad(sh, tf.matMul(dy, sw, false, true)); // GELU(h), dL/dh: (..., in)
      return [dh, weightGrad(g, dy), biasGrad(dy)];
    },
  };
}) as (h: tf.Tensor, w: tf.Tensor2D, b: tf.Tensor1D) => tf.Tensor;

/** Whether ops now run under a gradient tape (inside tf.grad / variableGrads' forward pass). */
function recordingGradients(): boolean {
  return (tf.engine() as unknown as { state: { gradientDepth: number } }).state.gradientDepth > 0;
}

/**
 * Row lookup `table[ids]` as a one-hot matmul, so its gradient is a matmul too (the wasm backend has
 * no kernel for the scatter-add that a gather's gradient needs). ids (...) → (..., C)
 */
export function embed(ids: tf.Tensor, table: tf.Tensor2D): tf.Tensor {
  const [vocab, width] = table.shape;
  const oneHot = tf.cast(tf.oneHot(tf.reshape(ids, [-1]) as tf.Tensor1D, vocab), "float32"); // (N, V)
  return tf.reshape(dense(oneHot, table), [...ids.shape, width]); // (..., C)
}
