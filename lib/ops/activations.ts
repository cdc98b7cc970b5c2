// GELU (the exact erf form, as PyTorch's nn.GELU()) and ReLU.

import * as tf from "@tensorflow/tfjs-core";
import { hasKernels, runKernel } from "./registry.ts";

/** GELU: x/2 · (1 + erf(x/√2)). */
export function gelu(x: tf.Tensor): tf.Tensor {
  if (x.dtype !== "float32" || !hasKernels("gelu", "geluGrad")) return geluComposite(x);
  return geluKernel(x);
}

/** The same GELU from tfjs ops. */
export function geluComposite(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2)))));
}

const geluKernel = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [x, save] = args as [tf.Tensor, tf.GradSaveFunc];
  save([x]);
  return {
    value: runKernel("gelu", { x }) as tf.Tensor,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => runKernel("geluGrad", { x: saved[0], dy }) as tf.Tensor,
  };
}) as (x: tf.Tensor) => tf.Tensor;

/** Whether geluWithGrad can run here. */
export function hasGeluWithGrad(): boolean {
  return hasKernels("geluWithGrad");
}

/** [GELU(x), dy · GELU'(x)] from one kernel: the GELU equals gelu(x)'s bit for bit. Only where hasGeluWithGrad(). */
export function geluWithGrad(x: tf.Tensor, dy: tf.Tensor): [tf.Tensor, tf.Tensor] {
  return runKernel("geluWithGrad", { x, dy }) as [tf.Tensor, tf.Tensor];
}

/**
 * ReLU; with the kernel its gradient is one pass (dy where x > 0) instead of tfjs's three, read from the
 * output (y > 0 exactly where x > 0), which the next layer keeps anyway: x need not be kept.
 */
export function relu(x: tf.Tensor): tf.Tensor {
  if (x.dtype !== "float32" || !hasKernels("reluGrad")) return tf.relu(x);
  return reluKernel(x);
}

const reluKernel = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [x, save] = args as [tf.Tensor, tf.GradSaveFunc];
  const y = tf.relu(x);
  save([y]);
  return {
    value: y,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => runKernel("reluGrad", { x: saved[0], dy }) as tf.Tensor,
  };
}) as (x: tf.Tensor) => tf.Tensor;
