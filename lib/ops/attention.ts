// Multi-head scaled dot-product attention over the fused projection qkv (B, T, 3C) — all heads'
// queries, then keys, then values — to the heads side by side (B, T, C):
//   softmax(scale · q kᵀ (+ causal mask)) → dropout → times v.
// Three forms: training and evaluation (attention), generation with a key/value cache (cachedAttention),
// and the first position's query alone (firstPositionAttention: the ViT's last block when only CLS leaves
// the encoder). Each runs the backend's kernel where it has one, else the composite below.

import * as tf from "@tensorflow/tfjs-core";
import { dense } from "./dense.ts";
import { dropout, type DropoutNoise } from "./dropout.ts";
import { hasKernels, runKernel } from "./registry.ts";

export interface AttentionOptions {
  heads: number;
  /** Scores are multiplied by this (the original: n_embd^-0.5). */
  scale: number;
  /** Decoder: position t attends to positions ≤ t only. */
  causal: boolean;
  /** Dropout on the attention weights (B, H, T, T), tf.dropout's noise for this seed. */
  dropout?: DropoutNoise;
}

/** qkv (B, T, 3C) → the heads side by side (B, T, C). */
export function attention(qkv: tf.Tensor3D, o: AttentionOptions): tf.Tensor3D {
  if (qkv.dtype !== "float32" || !hasKernels("attention", "attentionGrad")) {
    const [q, k, v] = splitQkv(qkv, o.heads);
    return mergeHeads(attend(q, k, v, 0, o));
  }
  const attrs = {
    heads: o.heads,
    scale: o.scale,
    causal: o.causal,
    keep: o.dropout ? 1 - o.dropout.rate : 1,
    dropout: o.dropout !== undefined,
    seed: o.dropout?.seed ?? 0,
  };
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [x, save] = args as [tf.Tensor3D, tf.GradSaveFunc];
    const [out, mask] = runKernel("attention", { qkv: x }, attrs) as tf.Tensor[];
    // Only qkv (the projection keeps it anyway) and a byte mask are kept for the gradient, which
    // recomputes the softmax weights (B, H, T, T) from qkv, the same numbers.
    save([x, mask]);
    return {
      value: out, // (B, T, C)
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        runKernel("attentionGrad", { dout: dy, qkv: saved[0], mask: saved[1] }, {
          heads: attrs.heads,
          scale: attrs.scale,
          causal: attrs.causal,
          keep: attrs.keep,
        }) as tf.Tensor, // (B, T, 3C)
    };
  }) as (x: tf.Tensor3D) => tf.Tensor3D;
  return op(qkv);
}

/** The softmax weights (B, H, T, T) that attention() applies, before dropout (for pictures of attention). */
export function attentionWeights(qkv: tf.Tensor3D, o: AttentionOptions): tf.Tensor4D {
  return tf.tidy(() => {
    const [q, k] = splitQkv(qkv, o.heads);
    return scores(q, k, 0, o);
  });
}

/** Keys and values of the positions seen so far, for one attention layer (generation only). */
export interface KVCache {
  k: tf.Tensor4D | null; // (B, H, t, hs)
  v: tf.Tensor4D | null; // (B, H, t, hs)
}

/**
 * attention() for generation: qkv (B, Tn, 3C) holds new positions that follow the cached ones. Returns
 * the heads (B, Tn, C) and the grown cache (B, H, tPast + Tn, hs). No dropout, no gradient.
 */
export function cachedAttention(
  qkv: tf.Tensor3D,
  past: { k: tf.Tensor4D; v: tf.Tensor4D } | null,
  o: Omit<AttentionOptions, "dropout">,
): { out: tf.Tensor3D; k: tf.Tensor4D; v: tf.Tensor4D } {
  if (qkv.dtype === "float32" && hasKernels("attentionCached")) {
    const inputs: tf.NamedTensorMap = past ? { qkv, k: past.k, v: past.v } : { qkv };
    const attrs = { heads: o.heads, scale: o.scale, causal: o.causal };
    const [out, k, v] = runKernel("attentionCached", inputs, attrs) as tf.Tensor[];
    return { out: out as tf.Tensor3D, k: k as tf.Tensor4D, v: v as tf.Tensor4D };
  }
  const [q, kNew, vNew] = splitQkv(qkv, o.heads);
  const k = past ? tf.concat([past.k, kNew], 2) as tf.Tensor4D : kNew; // (B, H, tPast+Tn, hs)
  const v = past ? tf.concat([past.v, vNew], 2) as tf.Tensor4D : vNew;
  const tPast = past ? past.k.shape[2] : 0;
  return { out: mergeHeads(attend(q, k, v, tPast, { ...o, dropout: undefined })), k, v };
}

/**
 * Attention of position 0 alone, from x (B, T, C) and the fused projection weight w [C, 3C]: position 0's
 * query against every position's key and value, no mask → (B, 1, C).
 */
export function firstPositionAttention(
  x: tf.Tensor3D,
  w: tf.Tensor2D,
  o: Omit<AttentionOptions, "causal">,
): tf.Tensor3D {
  if (x.dtype !== "float32" || !hasKernels("firstAttention", "firstAttentionGrad")) {
    const [B, , C] = x.shape;
    const [wq, wkv] = tf.split(w, [C, 2 * C], 1) as tf.Tensor2D[]; // [C, C], [C, 2C]
    const q = splitHeads(dense(tf.slice(x, [0, 0, 0], [B, 1, C]), wq), o.heads); // (B, H, 1, hs)
    const [k, v] = tf.split(dense(x, wkv), 2, -1).map((t) => splitHeads(t, o.heads)); // 2 × (B, H, T, hs)
    return mergeHeads(attend(q, k, v, 0, { ...o, causal: false }));
  }
  const attrs = {
    heads: o.heads,
    scale: o.scale,
    keep: o.dropout ? 1 - o.dropout.rate : 1,
    dropout: o.dropout !== undefined,
    seed: o.dropout?.seed ?? 0,
  };
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, weight, save] = args as [tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    const [out, q, a, ctx, probs, mask] = runKernel(
      "firstAttention",
      { x: input, w: weight },
      attrs,
    ) as tf.Tensor[];
    save([input, weight, q, a, ctx, probs, mask]);
    return {
      value: out, // (B, 1, C)
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sw, sq, sa, sctx, sprobs, smask] = saved;
        const inputs = { dout: dy, x: sx, w: sw, q: sq, a: sa, ctx: sctx, probs: sprobs, mask: smask };
        return runKernel("firstAttentionGrad", inputs, attrs) as tf.Tensor[]; // [dx, dw]
      },
    };
  }) as (x: tf.Tensor3D, w: tf.Tensor2D) => tf.Tensor3D;
  return op(x, w);
}

// ---------------------------------------------------------------------------------------------
// The composite's pieces.

/** (B, T, 3C) → q, k, v, each (B, H, T, hs). */
function splitQkv(qkv: tf.Tensor3D, heads: number): tf.Tensor4D[] {
  return tf.split(qkv, 3, -1).map((t) => splitHeads(t, heads));
}

/** (B, T, C) → (B, H, T, hs) */
function splitHeads(t: tf.Tensor, heads: number): tf.Tensor4D {
  const [B, T, C] = t.shape;
  return tf.transpose(tf.reshape(t, [B, T, heads, C / heads]), [0, 2, 1, 3]);
}

/** (B, H, T, hs) → (B, T, C) */
function mergeHeads(t: tf.Tensor4D): tf.Tensor3D {
  const [B, H, T, hs] = t.shape;
  return tf.reshape(tf.transpose(t, [0, 2, 1, 3]), [B, T, H * hs]);
}

/** softmax(scale · q kᵀ (+ causal mask)): q (B, H, Tq, hs) over k (B, H, tPast+Tq, hs) → (B, H, Tq, tPast+Tq). */
function scores(q: tf.Tensor4D, k: tf.Tensor4D, tPast: number, o: AttentionOptions): tf.Tensor4D {
  let wei: tf.Tensor = tf.mul(tf.matMul(q, k, false, true), o.scale);
  if (o.causal) wei = tf.add(wei, causalMask(q.shape[2], tPast));
  return tf.softmax(wei, -1) as tf.Tensor4D;
}

/** The weights, their dropout, times v → (B, H, Tq, hs). */
function attend(
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  tPast: number,
  o: AttentionOptions,
): tf.Tensor4D {
  const wei = scores(q, k, tPast, o);
  return tf.matMul(o.dropout ? dropout(wei, o.dropout) as tf.Tensor4D : wei, v);
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
