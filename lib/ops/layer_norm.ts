// Layer normalisation over the last axis (biased variance and eps 1e-5, as PyTorch's nn.LayerNorm).

import * as tf from "@tensorflow/tfjs-core";
import { hasKernels, runKernel } from "./registry.ts";

export const LAYER_NORM_EPS = 1e-5;

/** x (..., C), gain g (C), bias b (C) → (..., C). */
export function layerNorm(x: tf.Tensor, g: tf.Tensor, b: tf.Tensor, eps = LAYER_NORM_EPS): tf.Tensor {
  const C = x.shape[x.shape.length - 1];
  if (g.shape.length !== 1 || b.shape.length !== 1 || g.shape[0] !== C || b.shape[0] !== C) {
    throw new Error(`layerNorm: gain [${g.shape}] and bias [${b.shape}] must be [${C}]`);
  }
  const floats = [x, g, b].every((t) => t.dtype === "float32");
  if (!floats || !hasKernels("layerNorm", "layerNormGrad")) return layerNormComposite(x, g, b, eps);
  return layerNormKernel(eps)(x, g, b);
}

/** The same from tfjs ops. */
export function layerNormComposite(
  x: tf.Tensor,
  g: tf.Tensor,
  b: tf.Tensor,
  eps = LAYER_NORM_EPS,
): tf.Tensor {
  return tf.tidy(() => {
    const mean = tf.mean(x, -1, true); // (..., 1)
    const centred = tf.sub(x, mean); // (..., C)
    const variance = tf.mean(tf.square(centred), -1, true); // (..., 1)
    return tf.add(tf.mul(tf.mul(centred, tf.rsqrt(tf.add(variance, eps))), g), b);
  });
}

type LayerNormFn = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => tf.Tensor;
const byEps = new Map<number, LayerNormFn>();

/** The kernel route for one eps: the forward keeps each row's mean and 1/std for the gradient. */
function layerNormKernel(eps: number): LayerNormFn {
  let op = byEps.get(eps);
  if (!op) {
    op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const [x, g, b, save] = args as [tf.Tensor, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
      const [y, mean, rstd] = runKernel("layerNorm", { x, g, b }, { eps }) as tf.Tensor[];
      save([x, g, mean, rstd]);
      return {
        value: y,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [sx, sg, sMean, sRstd] = saved;
          return runKernel("layerNormGrad", { dy, x: sx, g: sg, mean: sMean, rstd: sRstd }) as tf.Tensor[];
        },
      };
    }) as LayerNormFn;
    byEps.set(eps, op);
  }
  return op;
}
