// Block: one transformer layer, shared by the ViT (bidirectional) and the decoder (causal).
//
// Faithful quirk: the original normalises BEFORE attention but adds the feed-forward output to the
// NORMALISED stream —  x = x + attn(ln1(x));  x = ln2(x);  x = x + ffn(x)  — so the second residual
// carries ln2's output, not the raw stream. We keep it so the same weights give the same logits.
//
// seemore's blocks use an unnamed feed-forward (Linear → GELU → Linear, no dropout; saved as ffn.0 /
// ffn.2). seeMoE's ViT blocks use the `MLP` module instead (ReLU, dropout; saved as ffn.net.0 / .2).
//
// Speed: on the fast CPU path (lib/blas) a seemore block without a KV cache is one C kernel forward
// and one backward (forwardFused), with the same numbers as the layers below, which stay the reference.

import * as tf from "@tensorflow/tfjs";
import { block as fusedBlock, canFuseBlock } from "../blas/fused.ts";
import { type KVCache, MultiHeadAttention } from "./attention.ts";
import { MLP } from "./mlp.ts";
import {
  type Ctx,
  geluDense,
  type Initialiser,
  LayerNorm,
  Linear,
  type Parametrised,
  type StateDict,
} from "./ops.ts";

/** seemore's feed-forward: Linear(C, 4C) → GELU → Linear(4C, C). */
export class FeedForward implements Parametrised {
  readonly fc1: Linear; // ffn.0
  readonly fc2: Linear; // ffn.2

  constructor(readonly nEmbd: number, init: Initialiser) {
    this.fc1 = new Linear(nEmbd, 4 * nEmbd, init);
    this.fc2 = new Linear(4 * nEmbd, nEmbd, init);
  }

  forward(x: tf.Tensor, _ctx: Ctx): tf.Tensor {
    return geluDense(this.fc1.forward(x), this.fc2.w, this.fc2.b!); // (B, T, C): fc2(GELU(fc1(x)))
  }

  variables(): tf.Variable[] {
    return [...this.fc1.variables(), ...this.fc2.variables()];
  }
  saveState(prefix: string, out: StateDict): void {
    this.fc1.saveState(`${prefix}.0`, out);
    this.fc2.saveState(`${prefix}.2`, out);
  }
  loadState(prefix: string, state: StateDict): void {
    this.fc1.loadState(`${prefix}.0`, state);
    this.fc2.loadState(`${prefix}.2`, state);
  }
}

export type FeedForwardKind = "gelu" | "mlp";

/** Departures from the original's block, for recipes that train faster (both off = the original). */
export interface BlockOptions {
  /** x = x + attn(ln1(x)); x = x + ffn(ln2(x)) — the usual pre-norm block, residual stream never normalised. */
  preNorm?: boolean;
  /** Attention scaled by head_size^-0.5 instead of n_embd^-0.5. */
  scaleByHeadSize?: boolean;
}

export class Block implements Parametrised {
  readonly ln1: LayerNorm;
  readonly attn: MultiHeadAttention;
  readonly ln2: LayerNorm;
  readonly ffn: FeedForward | MLP;

  constructor(
    nEmbd: number,
    numHeads: number,
    dropoutRate: number,
    isDecoder: boolean,
    init: Initialiser,
    ffnKind: FeedForwardKind = "gelu",
    readonly options: BlockOptions = {},
  ) {
    this.ln1 = new LayerNorm(nEmbd, init);
    this.attn = new MultiHeadAttention(
      nEmbd,
      numHeads,
      dropoutRate,
      isDecoder,
      init,
      options.scaleByHeadSize,
    );
    this.ln2 = new LayerNorm(nEmbd, init);
    // seeMoE's MLP keeps its own default dropout of 0.1, whatever the block's rate.
    this.ffn = ffnKind === "gelu" ? new FeedForward(nEmbd, init) : new MLP(nEmbd, 0.1, true, init);
  }

  forward(x: tf.Tensor3D, ctx: Ctx, cache?: KVCache): tf.Tensor3D {
    if (!cache && this.ffn instanceof FeedForward && !this.attn.keepAttention && canFuseBlock()) {
      return this.forwardFused(x, this.ffn, ctx);
    }
    return this.feedForward(
      tf.add(x, this.attn.forward(this.ln1.forward(x) as tf.Tensor3D, ctx, cache)),
      ctx,
    ); // (B, T, C)
  }

  /**
   * forward(x) at position 0 only, (B, 1, C). Every position is still a key and a value, but only
   * the first asks a query, and the feed-forward runs on that one row: the ViT's last block, whose
   * other rows the original computes and then drops (it keeps the CLS token alone).
   */
  forwardFirst(x: tf.Tensor3D, ctx: Ctx): tf.Tensor3D {
    const [B, , C] = x.shape;
    const first = tf.slice(x, [0, 0, 0], [B, 1, C]); // (B, 1, C)
    return this.feedForward(
      tf.add(first, this.attn.forwardFirst(this.ln1.forward(x) as tf.Tensor3D, ctx)),
      ctx,
    ); // (B, 1, C)
  }

  /**
   * forward() on the fast CPU path: the whole block as one kernel each way (lib/blas/fused.ts), the
   * same maths and the same dropout noise — seeds drawn in the layers' order: the attention weights',
   * then the projection output's.
   */
  private forwardFused(x: tf.Tensor3D, ffn: FeedForward, ctx: Ctx): tf.Tensor3D {
    const { attn } = this, rate = attn.dropoutRate;
    const dropout = ctx.training && rate > 0
      ? { rate, attention: ctx.nextSeed(), projection: ctx.nextSeed() }
      : undefined;
    const params = {
      g1: this.ln1.g,
      b1: this.ln1.b,
      wqkv: attn.qkv,
      wp: attn.proj.w,
      bp: attn.proj.b!,
      g2: this.ln2.g,
      b2: this.ln2.b,
      w1: ffn.fc1.w,
      bh: ffn.fc1.b!,
      w2: ffn.fc2.w,
      bf: ffn.fc2.b!,
    };
    const options = { heads: attn.numHeads, scale: attn.scale, causal: attn.isDecoder, dropout };
    return fusedBlock(x, params, { ...options, preNorm: this.options.preNorm === true }); // (B, T, C)
  }

  /** The second half of the block, after the attention's residual add: h (B, T, C) → (B, T, C). */
  private feedForward(h: tf.Tensor, ctx: Ctx): tf.Tensor3D {
    const n = this.ln2.forward(h); // (B, T, C)
    if (this.options.preNorm) return tf.add(h, this.ffn.forward(n, ctx)) as tf.Tensor3D; // (B, T, C)
    return tf.add(n, this.ffn.forward(n, ctx)) as tf.Tensor3D; // (B, T, C)
  }

  variables(): tf.Variable[] {
    return [
      ...this.ln1.variables(),
      ...this.attn.variables(),
      ...this.ln2.variables(),
      ...this.ffn.variables(),
    ];
  }
  saveState(prefix: string, out: StateDict): void {
    this.ln1.saveState(`${prefix}.ln1`, out);
    this.attn.saveState(`${prefix}.attn`, out);
    this.ln2.saveState(`${prefix}.ln2`, out);
    this.ffn.saveState(`${prefix}.ffn`, out);
  }
  loadState(prefix: string, state: StateDict): void {
    this.ln1.loadState(`${prefix}.ln1`, state);
    this.attn.loadState(`${prefix}.attn`, state);
    this.ln2.loadState(`${prefix}.ln2`, state);
    this.ffn.loadState(`${prefix}.ffn`, state);
  }
}
