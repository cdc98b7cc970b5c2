// PatchEmbeddings: cuts an image into non-overlapping patch_size × patch_size squares and maps each
// square to a hidden_dim vector. The original does this with a Conv2d whose kernel and stride are both
// patch_size; that is exactly "flatten each patch, multiply by a weight matrix, add a bias", which is
// what we compute (the wasm backend has no gradient kernel for convolution weights, and a matmul is
// faster anyway). The weight is saved in the Conv2d layout [hidden_dim, 3, patch_size, patch_size].

import * as tf from "@tensorflow/tfjs";
import { Linear, transposedWeight } from "./layers.ts";
import { type Initialiser, Module } from "./module.ts";

export class PatchEmbeddings extends Module {
  readonly numPatches: number;
  readonly conv: Linear; // the conv as a matmul: [3·p·p, hidden_dim]

  constructor(
    readonly imgSize: number,
    readonly patchSize: number,
    readonly hiddenDim: number,
    init: Initialiser,
  ) {
    super();
    this.numPatches = patchCount(imgSize, patchSize);
    // A Linear [in, out] with in = (channel, row, col) is the conv weight [out, channel, row, col] transposed.
    const weightLayout = transposedWeight([hiddenDim, 3, patchSize, patchSize]);
    this.conv = this.add("conv", new Linear(3 * patchSize * patchSize, hiddenDim, init, { weightLayout }));
  }

  /** images (B, 3, S, S) → patch embeddings (B, N, hidden_dim), patches in row-major order. */
  forward(images: tf.Tensor4D): tf.Tensor3D {
    const [B] = images.shape;
    return tf.reshape(this.conv.forward(patchify(images, this.patchSize)), [
      B,
      this.numPatches,
      this.hiddenDim,
    ]);
  }
}

/** Patches in an img_size × img_size image; the sizes must tile it. */
export function patchCount(imgSize: number, patchSize: number): number {
  if (imgSize % patchSize !== 0) {
    throw new Error(`img_size ${imgSize} is not a multiple of patch_size ${patchSize}`);
  }
  return (imgSize / patchSize) ** 2;
}

/** (B, 3, S, S) → (B·N, 3·p·p): each row one patch, flattened channel-major like a conv kernel. */
export function patchify(images: tf.Tensor4D, p: number): tf.Tensor2D {
  const [B, C, S] = images.shape;
  const g = S / p; // patches per side
  const x = tf.reshape(images, [B, C, g, p, g, p]); // (B, C, gy, py, gx, px)
  const t = tf.transpose(x, [0, 2, 4, 1, 3, 5]); // (B, gy, gx, C, py, px)
  return tf.reshape(t, [B * g * g, C * p * p]) as tf.Tensor2D;
}
