// Block: one transformer layer, shared by the ViT (bidirectional) and the decoder (causal).
//
// Faithful quirk: the original normalises BEFORE attention but adds the feed-forward output to the
// NORMALISED stream —  x = x + attn(ln1(x));  x = ln2(x);  x = x + ffn(x)  — so the second residual
// carries ln2's output, not the raw stream. We keep it so the same weights give the same logits
// (residual "pre_norm" switches to the usual x = x + ffn(ln2(x))).
//
// seemore's blocks use an unnamed feed-forward (Linear → GELU → Linear, no dropout; saved as ffn.0 /
// ffn.2); seeMoE's ViT blocks use the `MLP` module instead (ReLU, dropout; saved as ffn.net.0 / .2).

import * as tf from "@tensorflow/tfjs";
import {
  attentionHalf as attentionHalfOp,
  type BlockOptions,
  type BlockWeights,
  transformerBlock,
} from "../ops/block.ts";
import { LAYER_NORM_EPS } from "../ops/layer_norm.ts";
import { residual } from "../ops/residual.ts";
import { type KVCache, MultiHeadAttention } from "./attention.ts";
import { LayerNorm } from "./layers.ts";
import { FeedForward, MLP } from "./mlp.ts";
import { type ForwardContext, type Initialiser, Module } from "./module.ts";

export interface BlockConfig {
  nEmbd: number;
  numHeads: number;
  dropout: number;
  isDecoder: boolean;
  /** "gelu": seemore's feed-forward (the default); "mlp": the original's MLP module (seeMoE's ViT). */
  ffn?: "gelu" | "mlp";
  /** x = x + attn(ln1(x)); x = x + ffn(ln2(x)): the usual pre-norm block, the residual never normalised. */
  preNorm?: boolean;
  /** Attention scaled by head_size^-0.5 instead of n_embd^-0.5. */
  scaleByHeadSize?: boolean;
}

export class Block extends Module {
  readonly ln1: LayerNorm;
  readonly attn: MultiHeadAttention;
  readonly ln2: LayerNorm;
  readonly ffn: FeedForward | MLP;

  constructor(readonly cfg: BlockConfig, init: Initialiser) {
    super();
    const { nEmbd: C, numHeads, dropout, isDecoder, scaleByHeadSize } = cfg;
    this.ln1 = this.add("ln1", new LayerNorm(C, init));
    this.attn = this.add(
      "attn",
      new MultiHeadAttention({ nEmbd: C, numHeads, dropout, isDecoder, scaleByHeadSize }, init),
    );
    this.ln2 = this.add("ln2", new LayerNorm(C, init));
    // seeMoE's MLP keeps its own default dropout of 0.1, whatever the block's rate.
    this.ffn = this.add("ffn", cfg.ffn === "mlp" ? new MLP(C, 0.1, true, init) : new FeedForward(C, init));
  }

  /** x (B, T, C) → (B, T, C); with a cache (generation) x holds only the new positions. */
  forward(x: tf.Tensor3D, ctx: ForwardContext, cache?: KVCache): tf.Tensor3D {
    if (!this.whole(ctx) || cache || this.attn.keepAttention) return this.layers(x, ctx, cache);
    return transformerBlock(x, this.weights(), this.wholeOptions(ctx), () => this.layers(x, ctx));
  }

  /**
   * Whether the block runs as one op: always with seemore's feed-forward; with seeMoE's ViT MLP only
   * while its output dropout is off (evaluation), a draw the block op does not make.
   */
  private whole(ctx: ForwardContext): boolean {
    return this.ffn.cfg.dropout === 0 || !ctx.training;
  }

  /**
   * The block layer by layer: x = x + attn(ln1(x)), then the feed-forward half. Each half in a tidy:
   * the ops keep what their gradients need, and the rest (the projection before and after its dropout,
   * the feed-forward's output) goes at once instead of at the end of the forward pass.
   */
  layers(x: tf.Tensor3D, ctx: ForwardContext, cache?: KVCache): tf.Tensor3D {
    const h = tf.tidy(() => residual(x, this.attn.forward(this.ln1.forward(x) as tf.Tensor3D, ctx, cache))); // (B, T, C)
    return tf.tidy(() => this.feedForward(h, ctx));
  }

  /**
   * forward(x) at position 0 alone, (B, 1, C). Every position is still a key and a value, but only the
   * first asks a query, and the feed-forward runs on that one row: the ViT's last block, whose other rows
   * the original computes and then drops (it keeps the CLS token alone).
   */
  forwardCls(x: tf.Tensor3D, ctx: ForwardContext): tf.Tensor3D {
    const [B, , C] = x.shape;
    const h = tf.tidy(() => {
      const first = tf.slice(x, [0, 0, 0], [B, 1, C]); // (B, 1, C)
      return residual(first, this.attn.forwardCls(this.ln1.forward(x) as tf.Tensor3D, ctx));
    });
    return tf.tidy(() => this.feedForward(h, ctx));
  }

  /** The second half, after the attention's residual add: h (B, T, C) → (B, T, C). */
  private feedForward(h: tf.Tensor, ctx: ForwardContext): tf.Tensor3D {
    const n = this.ln2.forward(h); // (B, T, C)
    const base = this.cfg.preNorm ? h : n; // the original adds to the normalised stream
    return residual(base, this.ffn.forward(n, ctx)) as tf.Tensor3D;
  }

  /** This block's parameters as the whole-block op takes them. */
  private weights(): BlockWeights {
    const { ln1, attn, ln2, ffn } = this;
    return {
      g1: ln1.weight,
      b1: ln1.bias,
      wqkv: attn.qkv,
      wp: attn.proj.weight,
      bp: attn.proj.bias!,
      g2: ln2.weight,
      b2: ln2.bias,
      w1: ffn.fc1.weight,
      bh: ffn.fc1.bias!,
      w2: ffn.fc2.weight,
      bf: ffn.fc2.bias!,
    };
  }

  /** The whole-block op's options: the attention's, with the noise its two dropouts draw in the layers. */
  private wholeOptions(ctx: ForwardContext): BlockOptions {
    return {
      ...blockOptions(this.attn, this.cfg.preNorm === true, ctx),
      activation: this.ffn.cfg.activation,
    };
  }
}

/** A block op's options: the attention's, with the noise its two dropouts draw in the layers. */
function blockOptions(attn: MultiHeadAttention, preNorm: boolean, ctx: ForwardContext): BlockOptions {
  const { heads, scale, causal, dropout } = attn.options(ctx);
  const eps = LAYER_NORM_EPS;
  if (!dropout) return { heads, scale, causal, preNorm, eps };
  const projection = attn.noiseSeed(ctx, "output");
  return {
    heads,
    scale,
    causal,
    preNorm,
    eps,
    dropout: { rate: dropout.rate, attention: dropout.seed, projection },
  };
}

/**
 * A block's first half, x + attn(ln1(x)) (B, T, C): one op where it can (seeMoE's blocks; lib/ops/block.ts
 * attentionHalf), else the layers, in a tidy (the projection before and after its dropout go at once).
 * With a cache (generation), or the attention weights kept, always the layers.
 */
export function attentionHalf(
  ln1: LayerNorm,
  attn: MultiHeadAttention,
  x: tf.Tensor3D,
  ctx: ForwardContext,
  cache?: KVCache,
): tf.Tensor3D {
  const layers = () => tf.tidy(() => residual(x, attn.forward(ln1.forward(x) as tf.Tensor3D, ctx, cache)));
  if (cache || attn.keepAttention) return layers() as tf.Tensor3D;
  const weights = { g1: ln1.weight, b1: ln1.bias, wqkv: attn.qkv, wp: attn.proj.weight, bp: attn.proj.bias! };
  return attentionHalfOp(x, weights, blockOptions(attn, false, ctx), layers as () => tf.Tensor3D);
}
