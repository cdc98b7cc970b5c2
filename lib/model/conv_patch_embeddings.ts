// ConvPatchEmbeddings: a drop-in replacement for PatchEmbeddings with a small convolutional stem
// (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"). Two 3×3 convolutions with
// stride 2, each followed by a GELU, shrink the image 4× per side; every (patch_size/4)² cell of that
// feature map is then flattened and mapped to one hidden_dim token, as the original maps a patch.
//
// Why: the original's patch embedding is one linear map per patch, so it must learn a separate template
// for a shape at every offset inside a patch. Overlapping 3×3 filters see edges and corners wherever they
// are, and a model with them learns what a shape is (not only its colour and place) in far fewer steps.
// Each token still covers its own patch_size × patch_size square (plus a 3-pixel rim from the filters).
//
// The convolutions run as im2col + matmul (lib/ops/im2col.ts). Saved as `patch_embedding.conv1`,
// `.conv2` (Conv2d layout [out, in, 3, 3]) and `.proj` (Linear [out, in]).

import * as tf from "@tensorflow/tfjs";
import { stemChannels } from "../config.ts";
import { gelu } from "../ops/activations.ts";
import { im2col3x3s2 } from "../ops/im2col.ts";
import { Linear } from "./layers.ts";
import { type Initialiser, Module, type ParamLayout, transpose2d } from "./module.ts";
import { patchCount } from "./patch_embeddings.ts";

export class ConvPatchEmbeddings extends Module {
  readonly numPatches: number;
  readonly conv1: Linear; // [9·3, c1]: taps ordered (dy, dx, channel)
  readonly conv2: Linear; // [9·c1, c2]
  readonly proj: Linear; // [c2·(p/4)², hidden_dim]

  constructor(
    readonly imgSize: number,
    readonly patchSize: number,
    readonly hiddenDim: number,
    init: Initialiser,
  ) {
    super();
    if (patchSize % 4 !== 0) {
      throw new Error(`the conv patch stem needs a patch_size divisible by 4, got ${patchSize}`);
    }
    this.numPatches = patchCount(imgSize, patchSize);
    const [c1, c2] = stemChannels(hiddenDim);
    this.conv1 = this.add("conv1", new Linear(9 * 3, c1, init, { weightLayout: CONV3X3 }));
    this.conv2 = this.add("conv2", new Linear(9 * c1, c2, init, { weightLayout: CONV3X3 }));
    this.proj = this.add("proj", new Linear(c2 * (patchSize / 4) ** 2, hiddenDim, init));
  }

  /** images (B, 3, S, S) → patch embeddings (B, N, hidden_dim), patches in row-major order. */
  forward(images: tf.Tensor4D): tf.Tensor3D {
    const [B, , S] = images.shape;
    const x = tf.transpose(images, [0, 2, 3, 1]) as tf.Tensor4D; // (B, S, S, 3)
    const f1 = gelu(conv3x3Stride2(x, this.conv1)) as tf.Tensor4D; // (B, S/2, S/2, c1)
    const f2 = gelu(conv3x3Stride2(f1, this.conv2)) as tf.Tensor4D; // (B, S/4, S/4, c2)
    const q = this.patchSize / 4; // feature-map cells per patch side
    const g = S / this.patchSize; // patches per side
    const c2 = this.conv2.nOut;
    const cells = tf.reshape(f2, [B, g, q, g, q, c2]); // (B, gy, qy, gx, qx, c2)
    const patches = tf.reshape(tf.transpose(cells, [0, 1, 3, 2, 4, 5]), [B * g * g, q * q * c2]); // (B·N, q·q·c2)
    return tf.reshape(this.proj.forward(patches), [B, this.numPatches, this.hiddenDim]); // (B, N, D)
  }
}

/** A 3×3 convolution, stride 2, padding 1: x (B, H, W, C) → (B, H/2, W/2, lin.nOut), as im2col + matmul. */
export function conv3x3Stride2(x: tf.Tensor4D, lin: Linear): tf.Tensor4D {
  const [B, H, W] = x.shape;
  const cols = im2col3x3s2(x); // (B·H/2·W/2, 9C), taps (dy, dx, c)
  return tf.reshape(lin.forward(cols), [B, H / 2, W / 2, lin.nOut]) as tf.Tensor4D; // (B, H/2, W/2, Cout)
}

/**
 * Linear [in = (dy, dx, c), out] ↔ Conv2d weight [out, c, dy, dx]: in PyTorch's [out, in] order, each
 * output row's (tap, channel) block is transposed to (channel, tap).
 */
const CONV3X3: ParamLayout = {
  save(key, data, [nIn, nOut]) {
    const C = nIn / 9;
    const rows = transposeRowBlocks(transpose2d(data, nIn, nOut), nOut, 9, C); // [out, c, (dy, dx)]
    return [[key, { shape: [nOut, C, 3, 3], data: rows }]];
  },
  load(key, state, [nIn, nOut]) {
    const C = nIn / 9;
    const rows = transposeRowBlocks(state.get(key)!.data, nOut, C, 9); // [out, (dy, dx), c]
    return transpose2d(rows, nOut, nIn);
  },
};

/** data [n, rows, cols] → [n, cols, rows]. */
function transposeRowBlocks(data: Float32Array, n: number, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  const size = rows * cols;
  for (let i = 0; i < n; i++) {
    out.set(transpose2d(data.subarray(i * size, (i + 1) * size), rows, cols), i * size);
  }
  return out;
}
