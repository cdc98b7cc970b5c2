// A whole transformer block as one op, and its first half (attention with its residual) as one op: on a
// backend with the block kernels, one kernel each way instead of ~60 (or ~20); elsewhere the composite
// the model hands in (its own layers, lib/model/block.ts), which computes the same maths with the same
// noise.

import * as tf from "@tensorflow/tfjs-core";
import { hasKernels, runKernel } from "./registry.ts";

/** The block kernels' weight inputs, in the order the gradient kernel returns their gradients. */
export const BLOCK_WEIGHTS = ["g1", "b1", "wqkv", "wp", "bp", "g2", "b2", "w1", "bh", "w2", "bf"] as const;

/** A block's parameters (its feed-forward without dropout: seemore's GELU or seeMoE's ViT's ReLU), weights [in, out]. */
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
  /** The feed-forward's activation (default GELU). */
  activation?: "gelu" | "relu";
  eps: number;
  /** Dropout on the attention weights and on the projection's output, tf.dropout's noise for each seed. */
  dropout?: { rate: number; attention: number; projection: number };
}

/** The block kernels' attrs. */
function kernelAttrs(o: BlockOptions) {
  return {
    heads: o.heads,
    scale: o.scale,
    causal: o.causal,
    preNorm: o.preNorm,
    relu: o.activation === "relu",
    eps: o.eps,
    dropout: o.dropout !== undefined,
    keep: o.dropout ? 1 - o.dropout.rate : 1,
    seedAttention: o.dropout?.attention ?? 0,
    seedProjection: o.dropout?.projection ?? 0,
  };
}

/**
 * x (B, T, C) → (B, T, C):  a = LN1(x); x1 = x + dropout(attention(a Wqkv) Wp + bp); n = LN2(x1);
 * out = (preNorm ? x1 : n) + act(n W1 + bh) W2 + bf, act GELU or ReLU. `composite` computes the same from
 * the layers.
 */
export function transformerBlock(
  x: tf.Tensor3D,
  weights: BlockWeights,
  o: BlockOptions,
  composite: () => tf.Tensor3D,
): tf.Tensor3D {
  if (x.dtype !== "float32" || !hasKernels("block", "blockGrad")) return composite();
  const attrs = kernelAttrs(o);
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

/** The attention half's weight inputs, in the order its gradient kernel returns their gradients. */
export const HALF_WEIGHTS = ["g1", "b1", "wqkv", "wp", "bp"] as const;

export type HalfWeights = Pick<BlockWeights, typeof HALF_WEIGHTS[number]>;

/**
 * A block's first half, x (B, T, C) → x1 = x + dropout(attention(LN1(x) Wqkv) Wp + bp), as one op (seeMoE's
 * blocks, whose second half is the mixture of experts). The kernel keeps only x, LN1's statistics and the
 * dropout masks for the gradient, which computes LN1(x), qkv and the heads again (the same numbers),
 * instead of the (B, T, 5C) floats the layers keep. `composite` computes the same from the layers.
 */
export function attentionHalf(
  x: tf.Tensor3D,
  weights: HalfWeights,
  o: BlockOptions,
  composite: () => tf.Tensor3D,
): tf.Tensor3D {
  if (x.dtype !== "float32" || !hasKernels("attentionHalf", "attentionHalfGrad")) return composite();
  const attrs = kernelAttrs(o);
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const input = args[0] as tf.Tensor;
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const named: tf.NamedTensorMap = { x: input };
    HALF_WEIGHTS.forEach((name, i) => (named[name] = args[1 + i] as tf.Tensor));
    const [x1, ...saved] = runKernel("attentionHalf", named, attrs) as tf.Tensor[];
    save([input, ...saved]); // the weights are variables, unchanged until the step's update
    return {
      value: x1, // (B, T, C)
      gradFunc: (dy: tf.Tensor, kept: tf.Tensor[]) => {
        const inputs: tf.NamedTensorMap = { ...named, dout: dy, x: kept[0] };
        kept.slice(1).forEach((t, i) => (inputs[`saved${i}`] = t));
        return runKernel("attentionHalfGrad", inputs, attrs) as tf.Tensor[]; // [dx, then HALF_WEIGHTS' gradients]
      },
    };
  }) as (...inputs: tf.Tensor[]) => tf.Tensor3D;
  return op(x, ...HALF_WEIGHTS.map((name) => weights[name]));
}
