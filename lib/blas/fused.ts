// Fused layers for the fast path: GELU, layer norm, dropout, multi-head attention (and the first
// position's alone), seeMoE's experts with their dispatch and combine, a whole transformer block, and
// an Adam step, each one C kernel (forward and backward) instead of 5–60 small tfjs ops. They use the
// kernels that enableBlasKernels() registers on the wasm backend when the C kernels built; on any other
// backend, or without them, gelu / layerNorm / dropout / adamStep compute the same maths with plain
// tfjs ops (attention, the block and the MoE parts have no such fallback here: lib/model/attention.ts,
// block.ts and moe.ts keep the ops versions). Either way the results equal tfjs's cpu backend within
// 1e-4, and dropout draws exactly tf.dropout's noise.
//
//   import { adamStep, gelu, layerNorm } from "./lib/blas/fused.ts";
//   const y = layerNorm(x, gain, bias);                     // (..., C)
//   const { p, m, v } = adamStep(param, m, v, grad, hyper); // fresh tensors; assign them yourself

import * as tf from "@tensorflow/tfjs-core";
import { adamInPlace, FUSED_KERNELS } from "./kernels.ts";
import { BLOCK_PARAMS, BLOCK_SAVED } from "./native.ts";

/** Whether the active backend has our fused kernel `name`. */
function hasKernel(name: string): boolean {
  return tf.getKernel(name, tf.getBackend()) != null;
}

function run(name: string, inputs: tf.NamedTensorMap, attrs: tf.NamedAttrMap = {}): tf.Tensor | tf.Tensor[] {
  return tf.engine().runKernel(name, inputs, attrs) as tf.Tensor | tf.Tensor[];
}

// ---------------------------------------------------------------------------------------------
// GELU

/** GELU with the exact erf form, as PyTorch's nn.GELU() default. */
export function gelu(x: tf.Tensor): tf.Tensor {
  if (x.dtype !== "float32" || !hasKernel(FUSED_KERNELS.gelu)) return geluOps(x);
  return geluFused(x);
}

/** The same GELU from tfjs ops: x/2 · (1 + erf(x/√2)). */
export function geluOps(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2)))));
}

const geluFused = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [x, save] = args as [tf.Tensor, tf.GradSaveFunc];
  save([x]);
  return {
    value: run(FUSED_KERNELS.gelu, { x }) as tf.Tensor,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => geluGrad(saved[0], dy),
  };
}) as (x: tf.Tensor) => tf.Tensor;

/** dy · GELU'(x), one C kernel. */
function geluGrad(x: tf.Tensor, dy: tf.Tensor): tf.Tensor {
  return run(FUSED_KERNELS.geluGrad, { x, dy }) as tf.Tensor;
}

/**
 * [GELU(x), dy · GELU'(x)] from one C kernel, one exp and one erf per element: the GELU equals
 * gelu(x)'s bit for bit (fast path only: check hasGeluWithGrad()).
 */
export function geluWithGrad(x: tf.Tensor, dy: tf.Tensor): [tf.Tensor, tf.Tensor] {
  return run(FUSED_KERNELS.geluWithGrad, { x, dy }) as [tf.Tensor, tf.Tensor];
}

export function hasGeluWithGrad(): boolean {
  return hasKernel(FUSED_KERNELS.geluWithGrad);
}

/**
 * ReLU. On the fast path its gradient is one C kernel (dy where x > 0); tfjs's own is three kernels
 * over the whole tensor (Step, Cast, Multiply). The forward is tfjs's Relu either way.
 */
export function relu(x: tf.Tensor): tf.Tensor {
  if (x.dtype !== "float32" || !hasKernel(FUSED_KERNELS.reluGrad)) return tf.relu(x);
  return reluFused(x);
}

const reluFused = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [x, save] = args as [tf.Tensor, tf.GradSaveFunc];
  save([x]);
  return {
    value: tf.relu(x),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
      run(FUSED_KERNELS.reluGrad, { x: saved[0], dy }) as tf.Tensor,
  };
}) as (x: tf.Tensor) => tf.Tensor;

// ---------------------------------------------------------------------------------------------
// im2col of a 3×3 convolution with stride 2 and padding 1

/**
 * x (B, H, W, C), H and W even → cols (B·H/2·W/2, 9C): row (b, y, x) holds the nine pixels a 3×3 filter
 * at stride 2 and padding 1 reads for output (y, x), taps in (dy, dx) order, zeros outside the image.
 */
export function im2col3x3s2(x: tf.Tensor4D): tf.Tensor2D {
  const [, H, W] = x.shape;
  if (H % 2 !== 0 || W % 2 !== 0) {
    throw new Error(`im2col3x3s2 needs an even height and width, got ${H}×${W}`);
  }
  if (x.dtype !== "float32" || !hasKernel(FUSED_KERNELS.im2col3x3s2)) return im2col3x3s2Ops(x);
  return im2colFused(x);
}

/**
 * The same from tfjs ops. Output (y, x) reads padded rows 2y + dy (dy = 0, 1, 2), i.e. row
 * 2(y + ⌊dy/2⌋) + dy mod 2: each tap is a slice of one (row parity, column parity) plane, so the
 * gradient needs only slices, pads and concats.
 */
export function im2col3x3s2Ops(x: tf.Tensor4D): tf.Tensor2D {
  return tf.tidy(() => {
    const [B, H, W, C] = x.shape;
    const h = H / 2, w = W / 2;
    const padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]); // (B, H+2, W+2, C)
    const split = tf.reshape(padded, [B, h + 1, 2, w + 1, 2, C]); // (B, a, row parity, a', col parity, C)
    const planes = tf.reshape(tf.transpose(split, [2, 4, 0, 1, 3, 5]), [4 * B, h + 1, w + 1, C]); // (4B, h+1, w+1, C)
    const taps: tf.Tensor[] = [];
    for (let dy = 0; dy < 3; dy++) {
      for (let dx = 0; dx < 3; dx++) {
        const plane = 2 * (dy % 2) + (dx % 2);
        taps.push(tf.slice(planes, [plane * B, dy >> 1, dx >> 1, 0], [B, h, w, C])); // (B, h, w, C)
      }
    }
    return tf.reshape(tf.concat(taps, 3), [B * h * w, 9 * C]) as tf.Tensor2D; // (B·h·w, 9C)
  });
}

const im2colFused = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [x, save] = args as [tf.Tensor4D, tf.GradSaveFunc];
  save([x]);
  return {
    value: run(FUSED_KERNELS.im2col3x3s2, { x }) as tf.Tensor,
    gradFunc: (dcols: tf.Tensor, saved: tf.Tensor[]) =>
      run(FUSED_KERNELS.col2im3x3s2, { dcols, x: saved[0] }) as tf.Tensor,
  };
}) as (x: tf.Tensor4D) => tf.Tensor2D;

// ---------------------------------------------------------------------------------------------
// Layer norm

/** Layer normalisation over the last axis (biased variance, like PyTorch); g and b are (C). */
export function layerNorm(x: tf.Tensor, g: tf.Tensor, b: tf.Tensor, eps = 1e-5): tf.Tensor {
  const C = x.shape[x.shape.length - 1];
  if (g.shape.length !== 1 || b.shape.length !== 1 || g.shape[0] !== C || b.shape[0] !== C) {
    throw new Error(`lib/blas/fused.ts: layerNorm gain [${g.shape}] and bias [${b.shape}] must be [${C}]`);
  }
  const floats = [x, g, b].every((t) => t.dtype === "float32");
  if (!floats || !hasKernel(FUSED_KERNELS.layerNorm)) return layerNormOps(x, g, b, eps);
  return layerNormFused(eps)(x, g, b);
}

/** The same layer norm from tfjs ops. */
export function layerNormOps(x: tf.Tensor, g: tf.Tensor, b: tf.Tensor, eps = 1e-5): tf.Tensor {
  return tf.tidy(() => {
    const mean = tf.mean(x, -1, true); // (..., 1)
    const centred = tf.sub(x, mean); // (..., C)
    const variance = tf.mean(tf.square(centred), -1, true); // (..., 1)
    return tf.add(tf.mul(tf.mul(centred, tf.rsqrt(tf.add(variance, eps))), g), b);
  });
}

const layerNormByEps = new Map<number, (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => tf.Tensor>();

function layerNormFused(eps: number): (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => tf.Tensor {
  let op = layerNormByEps.get(eps);
  if (!op) {
    op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const [x, g, b, save] = args as [tf.Tensor, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
      const [y, mean, rstd] = run(FUSED_KERNELS.layerNorm, { x, g, b }, { eps }) as tf.Tensor[];
      save([x, g, mean, rstd]);
      return {
        value: y,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [sx, sg, sMean, sRstd] = saved;
          return run(FUSED_KERNELS.layerNormGrad, {
            dy,
            x: sx,
            g: sg,
            mean: sMean,
            rstd: sRstd,
          }) as tf.Tensor[];
        },
      };
    }) as (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => tf.Tensor;
    layerNormByEps.set(eps, op);
  }
  return op;
}

// ---------------------------------------------------------------------------------------------
// Dropout

/**
 * tf.dropout(x, rate, undefined, seed) — the same noise, the same numbers. On the fast path one C
 * kernel draws the noise (tfjs's generator, ported) and applies it, and only a byte mask is kept for
 * the gradient (tf.dropout makes four float tensors of x's size and draws the noise in JavaScript).
 */
export function dropout(x: tf.Tensor, rate: number, seed: number): tf.Tensor {
  if (x.dtype !== "float32" || !hasKernel(FUSED_KERNELS.dropout)) return tf.dropout(x, rate, undefined, seed);
  const keep = 1 - rate;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, save] = args as [tf.Tensor, tf.GradSaveFunc];
    const [y, mask] = run(FUSED_KERNELS.dropout, { x: input }, { keep, seed }) as tf.Tensor[];
    save([mask]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        run(FUSED_KERNELS.dropoutGrad, { dy, mask: saved[0] }, { keep }) as tf.Tensor,
    };
  }) as (x: tf.Tensor) => tf.Tensor;
  return op(x);
}

// ---------------------------------------------------------------------------------------------
// Attention

export interface AttentionOptions {
  heads: number;
  /** Scores are multiplied by this (the original: n_embd^-0.5). */
  scale: number;
  /** Decoder: position t attends to positions ≤ t only. */
  causal: boolean;
  /** Dropout on the attention weights, drawn as tf.dropout(weights, rate, undefined, seed) would. */
  dropout?: { rate: number; seed: number };
}

/** Whether attention() can run here (the fast CPU path with C kernels that call OpenBLAS). */
export function canFuseAttention(): boolean {
  return hasKernel(FUSED_KERNELS.attention);
}

/**
 * Multi-head self-attention from the fused projection qkv (B, T, 3C) — all heads' queries, then
 * keys, then values — to the heads side by side (B, T, C), as one kernel that reads q, k and v in
 * place: softmax(scale · q kᵀ (+ causal mask)), dropout, times v. Keeps only the softmax weights and
 * a byte mask for the gradient. Only where canFuseAttention(); lib/model/attention.ts has the ops.
 */
export function attention(qkv: tf.Tensor3D, o: AttentionOptions): tf.Tensor3D {
  const { heads, scale, causal } = o;
  const keep = o.dropout ? 1 - o.dropout.rate : 1;
  const dropout = o.dropout !== undefined;
  const seed = o.dropout?.seed ?? 0; // the noise tf.dropout would draw for (B, H, T, T)
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [x, save] = args as [tf.Tensor3D, tf.GradSaveFunc];
    const [out, probs, mask] = run(FUSED_KERNELS.attention, { qkv: x }, {
      heads,
      scale,
      causal,
      keep,
      dropout,
      seed,
    }) as tf.Tensor[];
    save([x, probs, mask]);
    return {
      value: out, // (B, T, C)
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        run(FUSED_KERNELS.attentionGrad, { dout: dy, qkv: saved[0], probs: saved[1], mask: saved[2] }, {
          heads,
          scale,
          keep,
        }) as tf.Tensor, // (B, T, 3C)
    };
  }) as (x: tf.Tensor3D) => tf.Tensor3D;
  return op(qkv);
}

export function canFuseFirstAttention(): boolean {
  return hasKernel(FUSED_KERNELS.firstAttention);
}

/**
 * Attention of position 0 only (the ViT's last block when only CLS is kept), from x (B, T, C) and the
 * fused projection weight w [C, 3C] read in place — no split of the weight, no transposes: position
 * 0's query against every position's key and value, softmax, dropout (tf.dropout's noise for seed on
 * (B, H, 1, T)), times v → the heads side by side (B, 1, C). Only where canFuseFirstAttention().
 */
export function firstAttention(
  x: tf.Tensor3D,
  w: tf.Tensor2D,
  o: { heads: number; scale: number; dropout?: { rate: number; seed: number } },
): tf.Tensor3D {
  const attrs = {
    heads: o.heads,
    scale: o.scale,
    keep: o.dropout ? 1 - o.dropout.rate : 1,
    dropout: o.dropout !== undefined,
    seed: o.dropout?.seed ?? 0,
  };
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, weight, save] = args as [tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    const [out, q, a, ctx, probs, mask] = run(
      FUSED_KERNELS.firstAttention,
      { x: input, w: weight },
      attrs,
    ) as tf.Tensor[];
    save([input, weight, q, a, ctx, probs, mask]);
    return {
      value: out, // (B, 1, C)
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sw, sq, sa, sctx, sprobs, smask] = saved;
        const inputs = { dout: dy, x: sx, w: sw, q: sq, a: sa, ctx: sctx, probs: sprobs, mask: smask };
        return run(FUSED_KERNELS.firstAttentionGrad, inputs, attrs) as tf.Tensor[]; // [dx, dw]
      },
    };
  }) as (x: tf.Tensor3D, w: tf.Tensor2D) => tf.Tensor3D;
  return op(x, w);
}

export function canFuseExperts(): boolean {
  return hasKernel(FUSED_KERNELS.experts);
}

/** One expert's parameters: Linear(C, F) then Linear(F, C), weights [in, out]. */
export interface ExpertParams {
  w1: tf.Tensor2D;
  b1: tf.Tensor1D;
  w2: tf.Tensor2D;
  b2: tf.Tensor1D;
}

/**
 * seeMoE's experts in one kernel: expert e (Linear → ReLU → Linear → dropout) on its group of rows of
 * x (M, C), counts[e] rows, the groups one after another → (M, C). With dropout, expert e's noise is
 * tf.dropout's for seeds[e], as if each expert ran its own dropout. Keeps the ReLU output and a byte
 * mask for the gradient. Only where canFuseExperts(); lib/model/moe.ts runs the experts op by op
 * otherwise.
 */
export function experts(
  x: tf.Tensor2D,
  counts: number[],
  params: ExpertParams[],
  dropout: { rate: number; seeds: number[] } | null,
): tf.Tensor2D {
  const attrs = {
    counts,
    hidden: params[0].w1.shape[1],
    keep: dropout ? 1 - dropout.rate : 1,
    seeds: dropout ? dropout.seeds : [],
  };
  const named = (ts: tf.Tensor[]) => {
    const out: tf.NamedTensorMap = {};
    ts.forEach((t, i) => (out[`${["w1", "b1", "w2", "b2"][i % 4]}_${Math.floor(i / 4)}`] = t));
    return out;
  };
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const [input, ...weights] = args.slice(0, -1) as tf.Tensor[];
    const [y, h, mask] = run(FUSED_KERNELS.experts, { x: input, ...named(weights) }, attrs) as tf.Tensor[];
    // The parameters are variables, unchanged until the step's update: the gradient reads them
    // directly rather than saved clones (32 fewer tensors per layer to copy out and free).
    save([input, h, mask]);
    return {
      value: y, // (M, C)
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sh, smask] = saved;
        return run(
          FUSED_KERNELS.expertsGrad,
          { dy, x: sx, h: sh, mask: smask, ...named(weights) },
          attrs,
        ) as tf.Tensor[];
      },
    };
  }) as (...inputs: tf.Tensor[]) => tf.Tensor2D;
  return op(x, ...params.flatMap((p) => [p.w1, p.b1, p.w2, p.b2]));
}

/**
 * seeMoE's routing plan (lib/model/moe.ts planDispatch) as the dispatch and combine kernels take it.
 * A slot j·N + n is token n's j-th choice.
 */
export interface MoERoute {
  order: Int32Array; // (M) the slot of each expert row, rows grouped by expert
  rowOfSlot: Int32Array; // (k·N) the expert row of each slot, -1 where the slot was dropped
  slotExpert: Int32Array; // (k·N) the expert of each slot
  tokens: number; // N
  choices: number; // k
}

/**
 * The experts' input rows: row r is token order[r] mod N of x (N, C) → (M, C). Its gradient sums each
 * token's rows back. One C kernel each way (only where canFuseExperts(); moe.ts has the ops).
 */
export function moeDispatch(x: tf.Tensor2D, route: MoERoute): tf.Tensor2D {
  const attrs = route as unknown as tf.NamedAttrMap;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
    value: run(FUSED_KERNELS.moeDispatch, { x: args[0] as tf.Tensor }, attrs) as tf.Tensor, // (M, C)
    gradFunc: (dy: tf.Tensor) => run(FUSED_KERNELS.moeDispatchGrad, { dinputs: dy }, attrs) as tf.Tensor, // (N, C)
  })) as (x: tf.Tensor2D) => tf.Tensor2D;
  return op(x);
}

/**
 * Each token's experts' outputs, weighted by their gates and summed: out[n] = Σ_j gates[n, e] ·
 * merged[row] over the kept slots j·N + n (e = slotExpert, row = rowOfSlot) → (N, C). Differentiable
 * in merged (M, C) and gates (N, E). One C kernel each way (only where canFuseExperts()).
 */
export function moeCombine(merged: tf.Tensor2D, gates: tf.Tensor2D, route: MoERoute): tf.Tensor2D {
  const attrs = route as unknown as tf.NamedAttrMap;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [m, g, save] = args as [tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    save([m, g]);
    return {
      value: run(FUSED_KERNELS.moeCombine, { merged: m, gates: g }, attrs) as tf.Tensor, // (N, C)
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        run(
          FUSED_KERNELS.moeCombineGrad,
          { dout: dy, merged: saved[0], gates: saved[1] },
          attrs,
        ) as tf.Tensor[],
    };
  }) as (merged: tf.Tensor2D, gates: tf.Tensor2D) => tf.Tensor2D;
  return op(merged, gates);
}

/**
 * attention() for generation with a key/value cache: qkv (B, Tn, 3C) holds new positions that follow
 * the cached ones (k, v: (B, H, tPast, hs), or null at the start). Returns the merged heads
 * (B, Tn, C) and the grown cache (B, H, tPast + Tn, hs). No dropout and no gradient.
 */
export function cachedAttention(
  qkv: tf.Tensor3D,
  past: { k: tf.Tensor4D; v: tf.Tensor4D } | null,
  o: Omit<AttentionOptions, "dropout">,
): { out: tf.Tensor3D; k: tf.Tensor4D; v: tf.Tensor4D } {
  const inputs: tf.NamedTensorMap = past ? { qkv, k: past.k, v: past.v } : { qkv };
  const [out, k, v] = run(FUSED_KERNELS.attentionCached, inputs, {
    heads: o.heads,
    scale: o.scale,
    causal: o.causal,
  }) as tf.Tensor[];
  return { out: out as tf.Tensor3D, k: k as tf.Tensor4D, v: v as tf.Tensor4D };
}

// ---------------------------------------------------------------------------------------------
// Adam

export interface AdamHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** 1-based step number (after incrementing), for the bias corrections. */
  step: number;
}

export interface AdamResult {
  p: tf.Tensor;
  m: tf.Tensor;
  v: tf.Tensor;
}

/**
 * One Adam step (torch.optim.Adam, no weight decay) for one parameter. Returns new tensors for the
 * parameter and both moments; nothing is written in place.
 *   m' = b1 m + (1-b1) g;  v' = b2 v + (1-b2) g²;  p' = p - lr/(1-b1^t) · m' / (√v' / √(1-b2^t) + eps)
 */
export function adamStep(p: tf.Tensor, m: tf.Tensor, v: tf.Tensor, g: tf.Tensor, h: AdamHyper): AdamResult {
  for (const [name, t] of [["m", m], ["v", v], ["grad", g]] as const) {
    if (!tf.util.arraysEqual(t.shape, p.shape)) {
      throw new Error(
        `lib/blas/fused.ts: adamStep ${name} shape [${t.shape}] differs from param [${p.shape}]`,
      );
    }
  }
  const floats = [p, m, v, g].every((t) => t.dtype === "float32");
  if (!floats || !hasKernel(FUSED_KERNELS.adam)) return adamOps(p, m, v, g, h);
  const [pNew, mNew, vNew] = run(FUSED_KERNELS.adam, { p, m, v, g }, adamAttrs(h)) as tf.Tensor[];
  return { p: pNew, m: mNew, v: vNew };
}

/**
 * The same step for every parameter at once, written IN PLACE into the parameters and moments (one C
 * call; kernels.ts adamInPlace). Returns false, having changed nothing, where that cannot be done
 * (off the fast path, or when another tensor shares a parameter's memory); use adamStep then.
 */
export function adamStepAllInPlace(
  params: tf.Tensor[],
  ms: tf.Tensor[],
  vs: tf.Tensor[],
  grads: tf.Tensor[],
  h: AdamHyper,
): boolean {
  return adamInPlace(params, ms, vs, grads, adamAttrs(h));
}

/** The C kernels' form of the hyper-parameters: bias corrections folded into the step size and √bc2. */
function adamAttrs(h: AdamHyper) {
  const bc1 = 1 - h.beta1 ** h.step, bc2 = 1 - h.beta2 ** h.step;
  return { beta1: h.beta1, beta2: h.beta2, stepSize: h.lr / bc1, sqrtBc2: Math.sqrt(bc2), eps: h.eps };
}

/** The same step from tfjs ops. */
export function adamOps(p: tf.Tensor, m: tf.Tensor, v: tf.Tensor, g: tf.Tensor, h: AdamHyper): AdamResult {
  const bc1 = 1 - h.beta1 ** h.step, bc2 = 1 - h.beta2 ** h.step;
  return tf.tidy(() => {
    const mNew = tf.add(tf.mul(m, h.beta1), tf.mul(g, 1 - h.beta1)); // first moment
    const vNew = tf.add(tf.mul(v, h.beta2), tf.mul(tf.square(g), 1 - h.beta2)); // second moment
    const denom = tf.add(tf.div(tf.sqrt(vNew), Math.sqrt(bc2)), h.eps);
    const pNew = tf.sub(p, tf.mul(tf.div(mNew, denom), h.lr / bc1));
    return { p: pNew, m: mNew, v: vNew };
  });
}

// ---------------------------------------------------------------------------------------------
// A whole transformer block

export function canFuseBlock(): boolean {
  return hasKernel(FUSED_KERNELS.block);
}

/** A block's parameters (lib/model/block.ts with seemore's GELU feed-forward), weights [in, out]. */
export interface BlockParams {
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

/** The parameters the gradient reads (the biases' gradients are column sums: their values are not needed). */
const GRAD_PARAMS = ["g1", "wqkv", "wp", "g2", "w1", "w2"] as const;

/**
 * One transformer block in one kernel each way (kernels.c, seemore_block): x (B, T, C) →
 * a = LN1(x); x1 = x + dropout(attention(a Wqkv) Wp + bp); n = LN2(x1);
 * out = (preNorm ? x1 : n) + GELU(n W1 + bh) W2 + bf — the same kernels in the same order as the
 * layers' own fast path (attention(), dropout(), layerNorm(), the dense matmuls), so the same
 * numbers, in 2 calls instead of ~60. With dropout, the attention weights' noise is tf.dropout's for
 * `attention` and the projection output's for `projection`. Only where canFuseBlock().
 */
export function block(
  x: tf.Tensor3D,
  p: BlockParams,
  o: {
    heads: number;
    scale: number;
    causal: boolean;
    preNorm: boolean;
    eps?: number;
    dropout?: { rate: number; attention: number; projection: number };
  },
): tf.Tensor3D {
  const attrs = {
    heads: o.heads,
    scale: o.scale,
    causal: o.causal,
    preNorm: o.preNorm,
    eps: o.eps ?? 1e-5,
    dropout: o.dropout !== undefined,
    keep: o.dropout ? 1 - o.dropout.rate : 1,
    seedAttention: o.dropout?.attention ?? 0,
    seedProjection: o.dropout?.projection ?? 0,
  };
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const input = args[0] as tf.Tensor;
    const params = args.slice(1, 1 + BLOCK_PARAMS.length) as tf.Tensor[];
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const inputs: tf.NamedTensorMap = { x: input };
    BLOCK_PARAMS.forEach((name, i) => inputs[name] = params[i]);
    const [out, ...saved] = run(FUSED_KERNELS.block, inputs, attrs) as tf.Tensor[];
    save([input, ...GRAD_PARAMS.map((name) => inputs[name]), ...saved]);
    return {
      value: out, // (B, T, C)
      gradFunc: (dy: tf.Tensor, kept: tf.Tensor[]) => {
        const gradInputs: tf.NamedTensorMap = { dout: dy, x: kept[0] };
        GRAD_PARAMS.forEach((name, i) => gradInputs[name] = kept[1 + i]);
        BLOCK_SAVED.forEach((name, i) => gradInputs[name] = kept[1 + GRAD_PARAMS.length + i]);
        return run(FUSED_KERNELS.blockGrad, gradInputs, attrs) as tf.Tensor[]; // [dx, then each parameter's]
      },
    };
  }) as (...t: tf.Tensor[]) => tf.Tensor3D;
  return op(x, ...BLOCK_PARAMS.map((name) => p[name]));
}
