// Self-attention, as in the original: `Head` is one head with its own key/query/value projections;
// `MultiHeadAttention` runs n_head of them side by side, concatenates, and projects back.
//
// Faithful quirk: scores are scaled by C^-0.5 where C is the full input width (n_embd), not the
// head size that "Attention Is All You Need" uses.
//
// Speed: MultiHeadAttention computes every head's q, k and v with ONE matmul against a fused weight
// [C, 3C] (columns: all query heads, then all key heads, then all value heads). The saved parameters
// are still the original's `heads.{h}.key|query|value.weight`, each [head_size, C]. On the fast CPU
// path (lib/blas) the rest of the layer is one C kernel that reads q, k and v in place (training and
// evaluation) or grows the KV cache (generation); the op-by-op version below is the reference.

import * as tf from "@tensorflow/tfjs";
import {
  attention,
  cachedAttention,
  canFuseAttention,
  canFuseFirstAttention,
  firstAttention,
} from "../blas/fused.ts";
import {
  assign,
  type Ctx,
  dense,
  dropout,
  type Initialiser,
  Linear,
  type Parametrised,
  readData,
  type StateDict,
  transpose2d,
} from "./ops.ts";

/** Keys and values of the positions seen so far, for one attention layer (generation only). */
export interface KVCache {
  k: tf.Tensor4D | null; // (B, nh, t, hs)
  v: tf.Tensor4D | null; // (B, nh, t, hs)
}

/** Additive causal mask for `tNew` queries that follow `tPast` cached positions: (tNew, tPast + tNew). */
export function causalMask(tNew: number, tPast: number): tf.Tensor2D {
  return tf.tidy(() => {
    const rows = tf.reshape(tf.range(tPast, tPast + tNew, 1, "int32"), [tNew, 1]); // (tNew, 1)
    const cols = tf.reshape(tf.range(0, tPast + tNew, 1, "int32"), [1, tPast + tNew]); // (1, tAll)
    const visible = tf.cast(tf.lessEqual(cols, rows), "float32"); // (tNew, tAll): 1 where key ≤ query
    return tf.mul(tf.sub(1, visible), -1e9) as tf.Tensor2D;
  });
}

/** One attention head, exactly as the original's `Head` (used for teaching and tests). */
export class Head implements Parametrised {
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
    this.key = new Linear(nEmbd, headSize, init, { bias: false });
    this.query = new Linear(nEmbd, headSize, init, { bias: false });
    this.value = new Linear(nEmbd, headSize, init, { bias: false });
  }

  forward(x: tf.Tensor3D, ctx: Ctx): tf.Tensor3D {
    const [, T, C] = x.shape;
    const k = this.key.forward(x) as tf.Tensor3D; // (B, T, hs)
    const q = this.query.forward(x) as tf.Tensor3D; // (B, T, hs)
    const v = this.value.forward(x) as tf.Tensor3D; // (B, T, hs)
    let wei: tf.Tensor = tf.mul(tf.matMul(q, k, false, true), C ** -0.5); // (B, T, T)
    if (this.isDecoder) wei = tf.add(wei, causalMask(T, 0));
    wei = dropout(tf.softmax(wei, -1), this.dropoutRate, ctx);
    return tf.matMul(wei as tf.Tensor3D, v); // (B, T, hs)
  }

  variables(): tf.Variable[] {
    return [...this.key.variables(), ...this.query.variables(), ...this.value.variables()];
  }
  saveState(prefix: string, out: StateDict): void {
    this.key.saveState(`${prefix}.key`, out);
    this.query.saveState(`${prefix}.query`, out);
    this.value.saveState(`${prefix}.value`, out);
  }
  loadState(prefix: string, state: StateDict): void {
    this.key.loadState(`${prefix}.key`, state);
    this.query.loadState(`${prefix}.query`, state);
    this.value.loadState(`${prefix}.value`, state);
  }
}

const QKV = ["query", "key", "value"] as const;

export class MultiHeadAttention implements Parametrised {
  readonly headSize: number;
  readonly qkv: tf.Variable<tf.Rank.R2>; // [C, 3C]: all heads' query | key | value projections
  readonly proj: Linear;
  /** Set `keepAttention` to have forward() leave the softmax weights (B, nh, Tq, Tk) here. */
  keepAttention = false;
  lastAttention: tf.Tensor4D | null = null;

  constructor(
    readonly nEmbd: number,
    readonly numHeads: number,
    readonly dropoutRate: number,
    readonly isDecoder: boolean,
    init: Initialiser,
    /** Scale scores by head_size^-0.5 (the usual transformer) instead of the original's n_embd^-0.5. */
    readonly scaleByHeadSize = false,
  ) {
    if (nEmbd % numHeads !== 0) throw new Error(`n_embd ${nEmbd} must be divisible by n_head ${numHeads}`);
    this.headSize = nEmbd / numHeads;
    // Each head's projection is its own nn.Linear in the original: initialise them the same way.
    const weight = init.uniformFanIn([nEmbd, 3 * nEmbd], nEmbd);
    this.qkv = tf.variable(weight, true) as tf.Variable<tf.Rank.R2>;
    weight.dispose();
    this.proj = new Linear(nEmbd, nEmbd, init);
  }

  /** The factor on q·k: n_embd^-0.5 as in the original, or head_size^-0.5. */
  get scale(): number {
    return (this.scaleByHeadSize ? this.headSize : this.nEmbd) ** -0.5;
  }

  /** x (B, T, C) → (B, T, C). With a cache, x holds only the new positions and the cache grows. */
  forward(x: tf.Tensor3D, ctx: Ctx, cache?: KVCache): tf.Tensor3D {
    if (!this.keepAttention && canFuseAttention()) {
      if (!cache) return this.forwardFused(x, ctx);
      if (!ctx.training) return this.forwardCached(x, ctx, cache);
    }
    const [q, kNew, vNew] = tf.split(dense(x, this.qkv), 3, -1).map((t) => this.splitHeads(t)); // 3 × (B, nh, T, hs)
    const tPast = cache?.k ? cache.k.shape[2] : 0;
    const k = cache?.k ? tf.concat([cache.k, kNew], 2) as tf.Tensor4D : kNew; // (B, nh, tPast+T, hs)
    const v = cache?.v ? tf.concat([cache.v, vNew], 2) as tf.Tensor4D : vNew;
    if (cache) this.updateCache(cache, k, v);
    return this.attend(q, k, v, tPast, ctx);
  }

  /**
   * forward(x) at position 0 only (B, 1, C): its query against every position's key and value. The
   * ViT's last block needs no more when only the CLS token is kept. No cache, no causal mask.
   */
  forwardFirst(x: tf.Tensor3D, ctx: Ctx): tf.Tensor3D {
    if (this.isDecoder) throw new Error("MultiHeadAttention.forwardFirst: only for bidirectional attention");
    if (!this.keepAttention && canFuseFirstAttention()) return this.forwardFirstFused(x, ctx);
    const [B, , C] = x.shape;
    const [wq, wkv] = tf.split(this.qkv, [C, 2 * C], 1) as tf.Tensor2D[]; // [C, C], [C, 2C]
    const q = this.splitHeads(dense(tf.slice(x, [0, 0, 0], [B, 1, C]), wq)); // (B, nh, 1, hs)
    const [k, v] = tf.split(dense(x, wkv), 2, -1).map((t) => this.splitHeads(t)); // 2 × (B, nh, T, hs)
    return this.attend(q, k, v, 0, ctx);
  }

  /** Scaled dot-product attention of q (B, nh, Tq, hs) over k, v (B, nh, tPast+Tq, hs), merged and projected. */
  private attend(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, tPast: number, ctx: Ctx): tf.Tensor3D {
    const [B, , T] = q.shape;
    const C = this.nEmbd;
    let wei: tf.Tensor = tf.mul(tf.matMul(q, k, false, true), this.scale); // (B, nh, T, tPast+T)
    if (this.isDecoder) wei = tf.add(wei, causalMask(T, tPast));
    wei = tf.softmax(wei, -1);
    if (this.keepAttention) this.keep(wei as tf.Tensor4D);
    wei = dropout(wei, this.dropoutRate, ctx);
    const heads = tf.matMul(wei as tf.Tensor4D, v); // (B, nh, T, hs)
    const merged = tf.reshape(tf.transpose(heads, [0, 2, 1, 3]), [B, T, C]); // (B, T, C)
    return dropout(this.proj.forward(merged), this.dropoutRate, ctx) as tf.Tensor3D;
  }

  /**
   * forward() without a cache on the fast CPU path: one kernel reads q, k and v in place from the
   * fused projection and writes the merged heads (no split, transposes or saved score tensors).
   * Same maths and the same dropout noise (seeds drawn in the same order) as the ops above.
   */
  private forwardFused(x: tf.Tensor3D, ctx: Ctx): tf.Tensor3D {
    const merged = attention(dense(x, this.qkv) as tf.Tensor3D, {
      heads: this.numHeads,
      scale: this.scale,
      causal: this.isDecoder,
      dropout: this.weightDropout(ctx),
    }); // (B, T, C)
    return dropout(this.proj.forward(merged), this.dropoutRate, ctx) as tf.Tensor3D;
  }

  /** forwardFirst() on the fast CPU path: one kernel, the weight read in place (same maths and noise). */
  private forwardFirstFused(x: tf.Tensor3D, ctx: Ctx): tf.Tensor3D {
    const merged = firstAttention(x, this.qkv, {
      heads: this.numHeads,
      scale: this.scale,
      dropout: this.weightDropout(ctx),
    }); // (B, 1, C)
    return dropout(this.proj.forward(merged), this.dropoutRate, ctx) as tf.Tensor3D;
  }

  /**
   * The fused kernels' dropout on the attention weights: while training, this layer's rate with the
   * next seed (drawn where the ops version's dropout draws it); none otherwise.
   */
  private weightDropout(ctx: Ctx): { rate: number; seed: number } | undefined {
    return ctx.training && this.dropoutRate > 0
      ? { rate: this.dropoutRate, seed: ctx.nextSeed() }
      : undefined;
  }

  /** forward() with a cache (generation) on the fast CPU path: one kernel grows the cache and attends. */
  private forwardCached(x: tf.Tensor3D, ctx: Ctx, cache: KVCache): tf.Tensor3D {
    const past = cache.k && cache.v ? { k: cache.k, v: cache.v } : null;
    const { out, k, v } = cachedAttention(dense(x, this.qkv) as tf.Tensor3D, past, {
      heads: this.numHeads,
      scale: this.scale,
      causal: this.isDecoder,
    }); // (B, T, C), (B, nh, tPast+T, hs) × 2
    this.updateCache(cache, k, v);
    return dropout(this.proj.forward(out), this.dropoutRate, ctx) as tf.Tensor3D;
  }

  /** (B, T, C) → (B, nh, T, hs) */
  private splitHeads(t: tf.Tensor): tf.Tensor4D {
    const [B, T] = t.shape;
    return tf.transpose(tf.reshape(t, [B, T, this.numHeads, this.headSize]), [0, 2, 1, 3]);
  }

  private updateCache(cache: KVCache, k: tf.Tensor4D, v: tf.Tensor4D): void {
    cache.k?.dispose();
    cache.v?.dispose();
    cache.k = tf.keep(k);
    cache.v = tf.keep(v);
  }

  private keep(wei: tf.Tensor4D): void {
    this.lastAttention?.dispose();
    this.lastAttention = tf.keep(tf.clone(wei));
  }

  variables(): tf.Variable[] {
    return [this.qkv, ...this.proj.variables()];
  }

  saveState(prefix: string, out: StateDict): void {
    const C = this.nEmbd, hs = this.headSize;
    const fused = readData(this.qkv); // [C, 3C]
    const fusedT = transpose2d(fused, C, 3 * C); // [3C, C]: row r = output column r
    QKV.forEach((kind, part) => {
      for (let h = 0; h < this.numHeads; h++) {
        const start = (part * C + h * hs) * C;
        out.set(`${prefix}.heads.${h}.${kind}.weight`, {
          shape: [hs, C],
          data: fusedT.slice(start, start + hs * C),
        });
      }
    });
    this.proj.saveState(`${prefix}.proj`, out);
  }

  loadState(prefix: string, state: StateDict): void {
    const C = this.nEmbd, hs = this.headSize;
    const fusedT = new Float32Array(3 * C * C); // [3C, C]
    QKV.forEach((kind, part) => {
      for (let h = 0; h < this.numHeads; h++) {
        fusedT.set(state.get(`${prefix}.heads.${h}.${kind}.weight`)!.data, (part * C + h * hs) * C);
      }
    });
    assign(this.qkv, [C, 3 * C], transpose2d(fusedT, 3 * C, C));
    this.proj.loadState(`${prefix}.proj`, state);
  }
}
