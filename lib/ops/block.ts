// A whole transformer block as one op: on a backend with the block kernels, one kernel each way instead
// of ~60; elsewhere the composite the model hands in (its own layers, lib/model/block.ts), which computes
// the same maths with the same noise.

import * as tf from "@tensorflow/tfjs-core";
import { hasKernels, runKernel } from "./registry.ts";

/** The block kernels' weight inputs, in the order the gradient kernel returns their gradients. */
export const BLOCK_WEIGHTS = ["g1", "b1", "wqkv", "wp", "bp", "g2", "b2", "w1", "bh", "w2", "bf"] as const;

/** A block's parameters (seemore's block with its GELU feed-forward), weights [in, out]. */
export interface BlockWeights {
  g1: tf.Tensor1D; // ln1
  b1: tf.Tensor1D;
  wqkv: tf.Tensor2D; // attention: all heads' query | key | value, [C, 3C]
  wp: tf.Tensor2D; // its output projection
  bp: tf.Tensor1D;
  g2: tf.Tensor1D; // ln2
  b2: tf.Tensor1D;
  w1: tf.Tensor2D; // feed-forward, [C, 4C]
  bh: tf.Tensor1D;
  w2: tf.Tensor2D; // [4C, C]
  bf: tf.Tensor1D;
}

export interface BlockOptions {
  heads: number;
  scale: number;
  causal: boolean;
  /** out = x1 + ffn(LN2 x1) when true, else the original's LN2(x1) + ffn(LN2 x1). */
  preNorm: boolean;
  eps: number;
  /** Dropout on the attention weights and on the projection's output, tf.dropout's noise for each seed. */
  dropout?: { rate: number; attention: number; projection: number };
}

/**
 * x (B, T, C) → (B, T, C):  a = LN1(x); x1 = x + dropout(attention(a Wqkv) Wp + bp); n = LN2(x1);
 * out = (preNorm ? x1 : n) + GELU(n W1 + bh) W2 + bf. `composite` computes the same from the layers.
 */
export function transformerBlock(
  x: tf.Tensor3D,
  weights: BlockWeights,
  o: BlockOptions,
  composite: () => tf.Tensor3D,
): tf.Tensor3D {
  if (x.dtype !== "float32" || !hasKernels("block", "blockGrad")) return composite();
  const attrs = {
    heads: o.heads,
    scale: o.scale,
    causal: o.causal,
    preNorm: o.preNorm,
    eps: o.eps,
    dropout: o.dropout !== undefined,
    keep: o.dropout ? 1 - o.dropout.rate : 1,
    seedAttention: o.dropout?.attention ?? 0,
    seedProjection: o.dropout?.projection ?? 0,
  };
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const input = args[0] as tf.Tensor;
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const named: tf.NamedTensorMap = { x: input };
    BLOCK_WEIGHTS.forEach((name, i) => (named[name] = args[1 + i] as tf.Tensor));
    const [out, ...saved] = runKernel("block", named, attrs) as tf.Tensor[];
    // The weights are variables, unchanged until the step's update: the gradient reads them as they are.
    save([input, ...saved]);
    return {
      value: out, // (B, T, C)
      gradFunc: (dy: tf.Tensor, kept: tf.Tensor[]) => {
        const inputs: tf.NamedTensorMap = { ...named, dout: dy, x: kept[0] };
        kept.slice(1).forEach((t, i) => (inputs[`saved${i}`] = t));
        return runKernel("blockGrad", inputs, attrs) as tf.Tensor[]; // [dx, then BLOCK_WEIGHTS' gradients]
      },
    };
  }) as (...inputs: tf.Tensor[]) => tf.Tensor3D;
  return op(x, ...BLOCK_WEIGHTS.map((name) => weights[name]));
}
