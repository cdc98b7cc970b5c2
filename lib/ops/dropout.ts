// Inverted dropout with a given seed: exactly tf.dropout's noise, on every route. The model derives each
// seed from what is dropped (lib/model/module.ts), so any route draws the same noise.

import * as tf from "@tensorflow/tfjs-core";
import { hasKernels, runKernel } from "./registry.ts";

/** Dropout as a kernel takes it: the rate and the seed of tf.dropout's noise. */
export interface DropoutNoise {
  rate: number;
  seed: number;
}

/** tf.dropout(x, rate, undefined, seed); the kernel keeps only a byte mask for the gradient. */
export function dropout(x: tf.Tensor, noise: DropoutNoise): tf.Tensor {
  if (x.dtype !== "float32" || !hasKernels("dropout", "dropoutGrad")) {
    return tf.dropout(x, noise.rate, undefined, noise.seed);
  }
  const keep = 1 - noise.rate, seed = noise.seed;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, save] = args as [tf.Tensor, tf.GradSaveFunc];
    const [y, mask] = runKernel("dropout", { x: input }, { keep, seed }) as tf.Tensor[];
    save([mask]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        runKernel("dropoutGrad", { dy, mask: saved[0] }, { keep }) as tf.Tensor,
    };
  }) as (x: tf.Tensor) => tf.Tensor;
  return op(x);
}
