// The attention kernels: multi-head attention from the fused qkv projection, its gradient, its cached
// form for generation, and the attention of the first position only (the ViT's CLS row).

import * as tf from "@tensorflow/tfjs-core";
import type { AttentionDims } from "../native/attention.ts";
import { active, boolView, floatView, type KernelArgs, type TensorInfo, wasmOf } from "./common.ts";

function attentionDims(qkv: TensorInfo, heads: number): AttentionDims {
  if (qkv.shape.length !== 3 || qkv.shape[2] % (3 * heads) !== 0) {
    throw new Error(
      `lib/blas/kernels/attention.ts: attention qkv [${qkv.shape}] is not (B, T, 3·${heads}·head size)`,
    );
  }
  const [batch, positions, width] = qkv.shape;
  return { batch, positions, heads, headSize: width / (3 * heads) };
}

/**
 * inputs qkv (B, T, 3C); attrs heads, scale, causal, and dropout (with its keep probability and
 * seed) → [out (B, T, C), mask (B, H, T, T) bool, or [0] without dropout]. The softmax weights are
 * not kept: the gradient recomputes them.
 */
export function attentionKernel(args: KernelArgs): TensorInfo[] {
  const { qkv } = args.inputs as { qkv: TensorInfo };
  const attrs = args.attrs as {
    heads: number;
    scale: number;
    causal: boolean;
    keep: number;
    dropout: boolean;
    seed: number;
  };
  const dropout = attrs.dropout === true;
  const backend = wasmOf(args.backend);
  const dims = attentionDims(qkv, attrs.heads);
  const { batch: B, positions: T, heads: H, headSize } = dims;
  const out = backend.makeOutput([B, T, H * headSize], "float32");
  const mask = backend.makeOutput(dropout ? [B, H, T, T] : [0], "bool");
  active.native!.attention(
    floatView(backend, qkv, "attention qkv"),
    dropout ? attrs.seed : null,
    {
      out: floatView(backend, out, "out"),
      probs: null,
      mask: dropout ? boolView(backend, mask, "mask") : null,
    },
    dims,
    { scale: attrs.scale, causal: attrs.causal, keep: attrs.keep },
  );
  return [out, mask];
}

/**
 * inputs qkv (B, Tn, 3C), optional k, v (B, H, tPast, hs): the cache; attrs heads, scale, causal
 * → [out (B, Tn, C), k, v (B, H, tPast + Tn, hs)].
 */
export function attentionCachedKernel(args: KernelArgs): TensorInfo[] {
  const { qkv, k, v } = args.inputs as { qkv: TensorInfo; k?: TensorInfo; v?: TensorInfo };
  const attrs = args.attrs as { heads: number; scale: number; causal: boolean };
  const backend = wasmOf(args.backend);
  const dims = attentionDims(qkv, attrs.heads);
  const { batch: B, positions: Tn, heads: H, headSize } = dims;
  if ((k == null) !== (v == null)) {
    throw new Error("lib/blas/kernels/attention.ts: attention cache needs both k and v");
  }
  const tPast = k ? k.shape[2] : 0;
  for (const [name, t] of [["k", k], ["v", v]] as const) {
    if (t && !tf.util.arraysEqual(t.shape, [B, H, tPast, headSize])) {
      throw new Error(
        `lib/blas/kernels/attention.ts: attention cache ${name} [${t.shape}] is not [${B},${H},t,${headSize}]`,
      );
    }
  }
  const out = backend.makeOutput([B, Tn, H * headSize], "float32");
  const kAll = backend.makeOutput([B, H, tPast + Tn, headSize], "float32");
  const vAll = backend.makeOutput([B, H, tPast + Tn, headSize], "float32");
  active.native!.attentionCached(
    floatView(backend, qkv, "attention qkv"),
    k && v && tPast > 0 ? { k: floatView(backend, k, "cache k"), v: floatView(backend, v, "cache v") } : null,
    {
      out: floatView(backend, out, "out"),
      k: floatView(backend, kAll, "k"),
      v: floatView(backend, vAll, "v"),
    },
    { ...dims, pastPositions: tPast },
    { scale: attrs.scale, causal: attrs.causal },
  );
  return [out, kAll, vAll];
}

/** inputs dout (B, T, C), qkv, probs, mask (as attentionKernel made them); attrs heads, scale, keep → dqkv. */
export function attentionGradKernel(args: KernelArgs): TensorInfo {
  const { dout, qkv, mask } = args.inputs as Record<string, TensorInfo>;
  const attrs = args.attrs as { heads: number; scale: number; causal: boolean; keep: number };
  const backend = wasmOf(args.backend);
  const dims = attentionDims(qkv, attrs.heads);
  const dqkv = backend.makeOutput(qkv.shape, "float32");
  const hasMask = tf.util.sizeFromShape(mask.shape) > 0;
  active.native!.attentionGrad(
    floatView(backend, dout, "attention dout"),
    {
      qkv: floatView(backend, qkv, "attention qkv"),
      probs: null,
      mask: hasMask ? boolView(backend, mask, "attention mask") : null,
    },
    floatView(backend, dqkv, "dqkv"),
    dims,
    { scale: attrs.scale, causal: attrs.causal, keep: attrs.keep },
  );
  return dqkv;
}

interface FirstAttentionAttrs {
  heads: number;
  scale: number;
  keep: number;
  dropout: boolean;
  seed: number;
}

function firstAttentionDims(x: TensorInfo, attrs: FirstAttentionAttrs) {
  const [B, T, C] = x.shape;
  return { B, T, C, H: attrs.heads, scale: attrs.scale, keep: attrs.keep };
}

/**
 * inputs x (B, T, C), w [C, 3C]; attrs heads, scale, keep, dropout, seed → [out (B, 1, C), q (B, C),
 * a (B, H, C), ctx (B, H, C), probs (B, H, T), mask (B, H, T) bool, or [0] without dropout].
 */
export function firstAttentionKernel(args: KernelArgs): TensorInfo[] {
  const { x, w } = args.inputs as { x: TensorInfo; w: TensorInfo };
  const attrs = args.attrs as unknown as FirstAttentionAttrs;
  const backend = wasmOf(args.backend);
  const dims = firstAttentionDims(x, attrs);
  const { B, T, C, H } = dims;
  const out = backend.makeOutput([B, 1, C], "float32");
  const q = backend.makeOutput([B, C], "float32");
  const a = backend.makeOutput([B, H, C], "float32");
  const ctx = backend.makeOutput([B, H, C], "float32");
  const probs = backend.makeOutput([B, H, T], "float32");
  const mask = backend.makeOutput(attrs.dropout ? [B, H, T] : [0], "bool");
  active.native!.firstAttention(
    {
      x: floatView(backend, x, "x"),
      w: floatView(backend, w, "w"),
      q: floatView(backend, q, "q"),
      a: floatView(backend, a, "a"),
      ctx: floatView(backend, ctx, "ctx"),
      out: floatView(backend, out, "out"),
      probs: floatView(backend, probs, "probs"),
      mask: attrs.dropout ? boolView(backend, mask, "mask") : null,
    },
    attrs.dropout ? attrs.seed : null,
    dims,
  );
  return [out, q, a, ctx, probs, mask];
}

/** inputs dout (B, 1, C) and x, w, q, a, ctx, probs, mask as above → [dx (B, T, C), dw [C, 3C]]. */
export function firstAttentionGradKernel(args: KernelArgs): TensorInfo[] {
  const { dout, x, w, q, a, ctx, probs, mask } = args.inputs as Record<string, TensorInfo>;
  const attrs = args.attrs as unknown as FirstAttentionAttrs;
  const backend = wasmOf(args.backend);
  const dims = firstAttentionDims(x, attrs);
  const dx = backend.makeOutput(x.shape, "float32");
  const dw = backend.makeOutput(w.shape, "float32");
  active.native!.firstAttentionGrad(
    {
      dout: floatView(backend, dout, "dout"),
      x: floatView(backend, x, "x"),
      w: floatView(backend, w, "w"),
      q: floatView(backend, q, "q"),
      a: floatView(backend, a, "a"),
      ctx: floatView(backend, ctx, "ctx"),
      probs: floatView(backend, probs, "probs"),
      mask: attrs.dropout ? boolView(backend, mask, "mask") : null,
      dx: floatView(backend, dx, "dx"),
      dw: floatView(backend, dw, "dw"),
    },
    dims,
  );
  return [dx, dw];
}
