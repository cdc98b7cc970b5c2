// Self-attention, as in the original: `Head` is one head with its own key/query/value projections;
// `MultiHeadAttention` runs n_head of them side by side, concatenates, and projects back.
//
// Faithful quirk: scores are scaled by C^-0.5 where C is the full input width (n_embd), not the head
// size that "Attention Is All You Need" uses (attention_scale "head" switches to the latter).
//
// MultiHeadAttention computes every head's q, k and v with ONE matmul against a fused weight [C, 3C]
// (columns: all query heads, then all key heads, then all value heads); the saved parameters are still
// the original's `heads.{h}.key|query|value.weight`, each [head_size, C].

import * as tf from "@tensorflow/tfjs";
import {
  attention,
  type AttentionOptions,
  attentionWeights,
  cachedAttention,
  causalMask,
  firstPositionAttention,
  type KVCache,
} from "../ops/attention.ts";
import { dense } from "../ops/dense.ts";
import { Linear } from "./layers.ts";
import { type ForwardContext, type Initialiser, Module, type ParamLayout, transpose2d } from "./module.ts";

export type { KVCache };

export interface AttentionConfig {
  nEmbd: number;
  numHeads: number;
  dropout: number;
  /** Causal (the decoder) or bidirectional (the ViT). */
  isDecoder: boolean;
  /** Scale scores by head_size^-0.5 (the usual transformer) instead of the original's n_embd^-0.5. */
  scaleByHeadSize?: boolean;
}

/** One attention head, exactly as the original's `Head` (for teaching and tests). */
export class Head extends Module {
  readonly key: Linear;
  readonly query: Linear;
  readonly value: Linear;

  constructor(
    readonly nEmbd: number,
    readonly headSize: number,
    readonly dropoutRate: number,
    readonly isDecoder: boolean,
    init: Initialiser,
  ) {
    super();
    this.key = this.add("key", new Linear(nEmbd, headSize, init, { bias: false }));
    this.query = this.add("query", new Linear(nEmbd, headSize, init, { bias: false }));
    this.value = this.add("value", new Linear(nEmbd, headSize, init, { bias: false }));
  }

  forward(x: tf.Tensor3D, ctx: ForwardContext): tf.Tensor3D {
    const [, T, C] = x.shape;
    const k = this.key.forward(x) as tf.Tensor3D; // (B, T, hs)
    const q = this.query.forward(x) as tf.Tensor3D; // (B, T, hs)
    const v = this.value.forward(x) as tf.Tensor3D; // (B, T, hs)
    let wei: tf.Tensor = tf.mul(tf.matMul(q, k, false, true), C ** -0.5); // (B, T, T)
    if (this.isDecoder) wei = tf.add(wei, causalMask(T, 0));
    wei = this.dropout(tf.softmax(wei, -1), this.dropoutRate, ctx, "weights");
    return tf.matMul(wei as tf.Tensor3D, v); // (B, T, hs)
  }
}

export class MultiHeadAttention extends Module {
  readonly headSize: number;
  readonly qkv: tf.Variable<tf.Rank.R2>; // [C, 3C]: all heads' query | key | value projections
  readonly proj: Linear;
  /** Set `keepAttention` to have forward() leave the softmax weights (B, nh, Tq, Tk) here. */
  keepAttention = false;
  lastAttention: tf.Tensor4D | null = null;

  constructor(readonly cfg: AttentionConfig, init: Initialiser) {
    super();
    const { nEmbd: C, numHeads } = cfg;
    if (C % numHeads !== 0) throw new Error(`n_embd ${C} must be divisible by n_head ${numHeads}`);
    this.headSize = C / numHeads;
    // Each head's projection is its own nn.Linear in the original: initialised the same way.
    this.qkv = this.addParameter("heads", init.uniformFanIn([C, 3 * C], C), headsLayout(numHeads));
    this.proj = this.add("proj", new Linear(C, C, init));
  }

  get numHeads(): number {
    return this.cfg.numHeads;
  }

  /** The factor on q·k: n_embd^-0.5 as in the original, or head_size^-0.5. */
  get scale(): number {
    return (this.cfg.scaleByHeadSize ? this.headSize : this.cfg.nEmbd) ** -0.5;
  }

  /** The attention op's options for this layer in this pass (with its weights' dropout noise). */
  options(ctx: ForwardContext): AttentionOptions {
    const { numHeads: heads, isDecoder: causal, dropout } = this.cfg;
    return { heads, scale: this.scale, causal, dropout: this.dropoutNoise(ctx, dropout, "weights") };
  }

  /** x (B, T, C) → (B, T, C). With a cache, x holds only the new positions and the cache grows. */
  forward(x: tf.Tensor3D, ctx: ForwardContext, cache?: KVCache): tf.Tensor3D {
    const qkv = dense(x, this.qkv) as tf.Tensor3D; // (B, T, 3C)
    if (this.keepAttention) this.keep(attentionWeights(qkv, this.options(ctx)));
    let heads: tf.Tensor3D;
    if (cache) {
      const past = cache.k && cache.v ? { k: cache.k, v: cache.v } : null;
      const grown = cachedAttention(qkv, past, this.options(ctx));
      this.updateCache(cache, grown.k, grown.v);
      heads = grown.out;
    } else {
      heads = attention(qkv, this.options(ctx)); // (B, T, C)
    }
    return this.project(heads, ctx);
  }

  /**
   * forward(x) at position 0 alone, (B, 1, C): its query against every position's key and value. The
   * ViT's last block needs no more when only the CLS token leaves the encoder. No cache, no causal mask.
   */
  forwardCls(x: tf.Tensor3D, ctx: ForwardContext): tf.Tensor3D {
    if (this.cfg.isDecoder) {
      throw new Error("MultiHeadAttention.forwardCls: only for bidirectional attention");
    }
    if (this.keepAttention) {
      const [B, T] = x.shape;
      const all = attentionWeights(dense(x, this.qkv) as tf.Tensor3D, this.options(ctx));
      this.keep(tf.slice(all, [0, 0, 0, 0], [B, this.numHeads, 1, T]));
    }
    return this.project(firstPositionAttention(x, this.qkv, this.options(ctx)), ctx); // (B, 1, C)
  }

  /** The heads side by side (B, T, C) → projected, with the output's dropout. */
  private project(heads: tf.Tensor3D, ctx: ForwardContext): tf.Tensor3D {
    return this.dropout(this.proj.forward(heads), this.cfg.dropout, ctx, "output") as tf.Tensor3D;
  }

  private updateCache(cache: KVCache, k: tf.Tensor4D, v: tf.Tensor4D): void {
    cache.k?.dispose();
    cache.v?.dispose();
    cache.k = tf.keep(k);
    cache.v = tf.keep(v);
  }

  private keep(wei: tf.Tensor4D): void {
    this.lastAttention?.dispose();
    this.lastAttention = tf.keep(wei);
  }
}

const QKV = ["query", "key", "value"] as const;

/** The fused [C, 3C] weight ↔ the original's heads.{h}.{query,key,value}.weight, each [head_size, C]. */
function headsLayout(numHeads: number): ParamLayout {
  return {
    save(key, data, [C]) {
      const hs = C / numHeads;
      const rows = transpose2d(data, C, 3 * C); // [3C, C]: row r = output column r
      return QKV.flatMap((kind, part) =>
        Array.from({ length: numHeads }, (_, h): [string, { shape: number[]; data: Float32Array }] => {
          const start = (part * C + h * hs) * C;
          return [`${key}.${h}.${kind}.weight`, { shape: [hs, C], data: rows.slice(start, start + hs * C) }];
        })
      );
    },
    load(key, state, [C]) {
      const hs = C / numHeads;
      const rows = new Float32Array(3 * C * C); // [3C, C]
      QKV.forEach((kind, part) => {
        for (let h = 0; h < numHeads; h++) {
          rows.set(state.get(`${key}.${h}.${kind}.weight`)!.data, (part * C + h * hs) * C);
        }
      });
      return transpose2d(rows, 3 * C, C);
    },
  };
}
