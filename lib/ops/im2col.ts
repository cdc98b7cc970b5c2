// im2col of a 3×3 convolution with stride 2 and padding 1: the convolutional stem's patches.

import * as tf from "@tensorflow/tfjs-core";
import { hasKernels, runKernel } from "./registry.ts";

/**
 * x (B, H, W, C), H and W even → cols (B·H/2·W/2, 9C): row (b, y, x) holds the nine pixels a 3×3 filter
 * at stride 2 and padding 1 reads for output (y, x), taps in (dy, dx) order, zeros outside the image.
 */
export function im2col3x3s2(x: tf.Tensor4D): tf.Tensor2D {
  const [, H, W] = x.shape;
  if (H % 2 !== 0 || W % 2 !== 0) {
    throw new Error(`im2col3x3s2 needs an even height and width, got ${H}×${W}`);
  }
  if (x.dtype !== "float32" || !hasKernels("im2col3x3s2", "col2im3x3s2")) return im2colComposite(x);
  return im2colKernel(x);
}

/**
 * The same from tfjs ops. Output (y, x) reads padded rows 2y + dy (dy = 0, 1, 2), i.e. row
 * 2(y + ⌊dy/2⌋) + dy mod 2: each tap is a slice of one (row parity, column parity) plane, so the
 * gradient needs only slices, pads and concats.
 */
export function im2colComposite(x: tf.Tensor4D): tf.Tensor2D {
  return tf.tidy(() => {
    const [B, H, W, C] = x.shape;
    const h = H / 2, w = W / 2;
    const padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]); // (B, H+2, W+2, C)
    const split = tf.reshape(padded, [B, h + 1, 2, w + 1, 2, C]); // (B, a, row parity, a', col parity, C)
    const planes = tf.reshape(tf.transpose(split, [2, 4, 0, 1, 3, 5]), [4 * B, h + 1, w + 1, C]); // (4B, h+1, w+1, C)
    const taps: tf.Tensor[] = [];
    for (let dy = 0; dy < 3; dy++) {
      for (let dx = 0; dx < 3; dx++) {
        const plane = 2 * (dy % 2) + (dx % 2);
        taps.push(tf.slice(planes, [plane * B, dy >> 1, dx >> 1, 0], [B, h, w, C])); // (B, h, w, C)
      }
    }
    return tf.reshape(tf.concat(taps, 3), [B * h * w, 9 * C]) as tf.Tensor2D; // (B·h·w, 9C)
  });
}

const im2colKernel = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [x, save] = args as [tf.Tensor4D, tf.GradSaveFunc];
  save([x]);
  return {
    value: runKernel("im2col3x3s2", { x }) as tf.Tensor,
    gradFunc: (dcols: tf.Tensor, saved: tf.Tensor[]) =>
      runKernel("col2im3x3s2", { dcols, x: saved[0] }) as tf.Tensor,
  };
}) as (x: tf.Tensor4D) => tf.Tensor2D;
