// Multi-head attention (c/attention.c): forward, gradient, and generation's cached form.

import { aleaStates, DRAW_CHUNK } from "./alea.ts";
import { B, checksFor, F, I, type Shared, type Symbols } from "./common.ts";

const check = checksFor("lib/blas/native/attention.ts");

export const ATTENTION_SYMBOLS = {
  // qkv, noise states (or null), draws per chunk, out, probs (or null: not kept), mask (u8, or null),
  // B, T, H, hs, scale, causal, keep -> 0 on success
  seemore_attention: { parameters: [B, B, I, B, B, B, I, I, I, I, F, I, F], result: I },
  // dout, qkv, probs (or null: recomputed), mask (u8, or null), dqkv, B, T, H, hs, scale, causal, keep
  // -> 0 on success
  seemore_attention_grad: { parameters: [B, B, B, B, B, I, I, I, I, F, I, F], result: I },
  // qkv, k_past, v_past (or null), out, k_all, v_all, B, Tn, t_past, H, hs, scale, causal -> 0 on success
  seemore_attention_cached: { parameters: [B, B, B, B, B, B, I, I, I, I, I, F, I], result: I },
} as const;

/** Sizes of one multi-head attention: batch, positions, heads, head size (C = heads · head size). */
export interface AttentionDims {
  batch: number;
  positions: number;
  heads: number;
  headSize: number;
}

export interface AttentionKernels {
  /**
   * Attention from the fused projection qkv (B, T, 3C) into out (B, T, C); probs (B, H, T, T), when
   * given, gets the softmax weights. With a dropout seed, the weights get tf.dropout's noise for
   * (B, H, T, T) and mask the kept flags (see c/attention.c); with null, no dropout.
   */
  attention(
    qkv: Float32Array,
    seed: number | null,
    out: { out: Float32Array; probs: Float32Array | null; mask: Uint8Array | null },
    dims: AttentionDims,
    opts: { scale: number; causal: boolean; keep: number },
  ): void;
  /**
   * Gradient of attention(): dqkv (B, T, 3C) from dout (B, T, C) and what the forward saved; probs
   * null: recomputed from qkv (the same bits).
   */
  attentionGrad(
    dout: Float32Array,
    saved: { qkv: Float32Array; probs: Float32Array | null; mask: Uint8Array | null },
    dqkv: Float32Array,
    dims: AttentionDims,
    opts: { scale: number; causal: boolean; keep: number },
  ): void;
  /**
   * Attention of new positions (qkv (B, Tn, 3C), dims.positions = Tn) over `pastPositions` cached ones
   * (past k/v (B, H, tPast, hs), null when tPast = 0): writes the grown caches k/v (B, H, tPast+Tn, hs)
   * and out (B, Tn, C). Generation only: no dropout, no gradient.
   */
  attentionCached(
    qkv: Float32Array,
    past: { k: Float32Array; v: Float32Array } | null,
    out: { out: Float32Array; k: Float32Array; v: Float32Array },
    dims: AttentionDims & { pastPositions: number },
    opts: { scale: number; causal: boolean },
  ): void;
}

export function attentionKernels(s: Symbols<typeof ATTENTION_SYMBOLS>, shared: Shared): AttentionKernels {
  return {
    attention(qkv, seed, out, dims, opts) {
      check.needSgemm(shared, "attention");
      const probsSize = checkAttention(qkv, seed, out, dims, opts.keep);
      const { batch: b, positions: t, heads: h, headSize: hs } = dims;
      const { scale, keep } = opts, causal = opts.causal ? 1 : 0;
      const noise = seed === null ? null : aleaStates(seed, probsSize);
      const { out: o, probs, mask } = out;
      const rc = s.seemore_attention(
        qkv,
        noise,
        DRAW_CHUNK,
        o,
        probs,
        mask,
        b,
        t,
        h,
        hs,
        scale,
        causal,
        keep,
      );
      check.ok("seemore_attention", rc);
    },
    attentionGrad(dout, saved, dqkv, dims, opts) {
      check.needSgemm(shared, "attentionGrad");
      checkAttentionGrad(dout, saved, dqkv, dims, opts.keep);
      const { batch: b, positions: t, heads: h, headSize: hs } = dims;
      const { qkv, probs, mask } = saved;
      const causal = opts.causal ? 1 : 0;
      const rc = s.seemore_attention_grad(
        dout,
        qkv,
        probs,
        mask,
        dqkv,
        b,
        t,
        h,
        hs,
        opts.scale,
        causal,
        opts.keep,
      );
      check.ok("seemore_attention_grad", rc);
    },
    attentionCached(qkv, past, out, dims, opts) {
      check.needSgemm(shared, "attentionCached");
      checkAttentionCached(qkv, past, out, dims);
      const { pastPositions: tPast, batch, positions, heads, headSize } = dims;
      const [pastK, pastV, causal] = [past?.k ?? null, past?.v ?? null, opts.causal ? 1 : 0];
      const rc = s.seemore_attention_cached(
        qkv,
        pastK,
        pastV,
        out.out,
        out.k,
        out.v,
        batch,
        positions,
        tPast,
        heads,
        headSize,
        opts.scale,
        causal,
      );
      check.ok("seemore_attention_cached", rc);
    },
  };
}

/** attention()'s arrays have its sizes, and a dropout seed comes with a mask; returns the weights' size. */
function checkAttention(
  qkv: Float32Array,
  seed: number | null,
  out: { out: Float32Array; probs: Float32Array | null; mask: Uint8Array | null },
  dims: AttentionDims,
  keep: number,
): number {
  check.keep(keep);
  const { qkvSize, outSize, probsSize } = attentionSizes(dims);
  check.sameLength("attention", qkvSize, { qkv });
  check.sameLength("attention", outSize, { out: out.out });
  if (out.probs) check.sameLength("attention", probsSize, { probs: out.probs });
  if ((seed === null) !== (out.mask === null)) {
    check.fail("attention needs both a dropout seed and a mask, or neither");
  }
  if (out.mask) check.sameLength("attention", probsSize, { mask: out.mask });
  return probsSize;
}

/** attentionGrad()'s arrays have its sizes (probs and mask where given). */
function checkAttentionGrad(
  dout: Float32Array,
  saved: { qkv: Float32Array; probs: Float32Array | null; mask: Uint8Array | null },
  dqkv: Float32Array,
  dims: AttentionDims,
  keep: number,
): void {
  check.keep(keep);
  const { qkvSize, outSize, probsSize } = attentionSizes(dims);
  check.sameLength("attentionGrad", qkvSize, { qkv: saved.qkv, dqkv });
  check.sameLength("attentionGrad", outSize, { dout });
  if (saved.probs) check.sameLength("attentionGrad", probsSize, { probs: saved.probs });
  if (saved.mask) check.sameLength("attentionGrad", probsSize, { mask: saved.mask });
}

/** attentionCached()'s cache is given exactly when positions are cached, and every array has its size. */
function checkAttentionCached(
  qkv: Float32Array,
  past: { k: Float32Array; v: Float32Array } | null,
  out: { out: Float32Array; k: Float32Array; v: Float32Array },
  dims: AttentionDims & { pastPositions: number },
): void {
  const { pastPositions: tPast, ...newDims } = dims;
  if (!Number.isInteger(tPast) || tPast < 0 || (tPast === 0) !== (past === null)) {
    check.fail(`attentionCached: ${tPast} cached positions but cache ${past ? "given" : "missing"}`);
  }
  const { qkvSize, outSize } = attentionSizes(newDims);
  const { batch, positions, heads, headSize } = newDims;
  const perPosition = batch * heads * headSize;
  check.sameLength("attentionCached", qkvSize, { qkv });
  check.sameLength("attentionCached", outSize, { out: out.out });
  check.sameLength("attentionCached", perPosition * (tPast + positions), { k: out.k, v: out.v });
  if (past) check.sameLength("attentionCached", perPosition * tPast, { pastK: past.k, pastV: past.v });
}

/** Element counts of attention's tensors; throws on sizes that are not positive int32s. */
function attentionSizes(d: AttentionDims): { qkvSize: number; outSize: number; probsSize: number } {
  for (const [name, v] of Object.entries(d)) {
    if (!Number.isInteger(v) || v < 1 || v > 0x7fffffff) {
      check.fail(`attention ${name}=${v} is not a positive int32`);
    }
  }
  const C = d.heads * d.headSize;
  return {
    qkvSize: d.batch * d.positions * 3 * C,
    outSize: d.batch * d.positions * C,
    probsSize: d.batch * d.heads * d.positions * d.positions,
  };
}
