// A residual connection's sum of two tensors of the same shape. tf.add keeps both inputs for its
// gradient (to sum dy over broadcast axes), which keeps each block's branch output alive until the
// backward pass; with equal shapes the gradient is dy for both, so this keeps nothing. The same values
// as tf.add, forward and backward.

import * as tf from "@tensorflow/tfjs-core";

/** x + branch, both (..., C) of one shape. */
export function residual(x: tf.Tensor, branch: tf.Tensor): tf.Tensor {
  if (!tf.util.arraysEqual(x.shape, branch.shape)) {
    throw new Error(`residual: shapes [${x.shape}] and [${branch.shape}] differ`);
  }
  return residualSum(x, branch);
}

const residualSum = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [x, branch] = args as [tf.Tensor, tf.Tensor];
  return { value: tf.add(x, branch), gradFunc: (dy: tf.Tensor) => [dy, dy] };
}) as (x: tf.Tensor, branch: tf.Tensor) => tf.Tensor;
