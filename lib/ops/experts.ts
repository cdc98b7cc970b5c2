// seeMoE's sparse mixture of experts. sparseMixture() picks each token's top-k experts from its router
// logits and sums their outputs weighted by a softmax over those k logits. Two routes, the same sums:
// - on the host (the default): the logits are read back and planned, then two ops run — the experts
//   (each on the rows of the tokens routed to it, gathered on the way) and combine (each token's
//   experts' outputs, gate-weighted and summed); a "slot" j·N + n is token n's j-th choice;
// - on the device (backends that keep work there, registry.ts deviceOnly): top-k on the device, and every
//   expert on every token with a gate of exactly 0 where not chosen — nothing read back, num_experts /
//   top_k times the experts' multiply-adds. Experts' dropout noise is then drawn over all the tokens.

import * as tf from "@tensorflow/tfjs-core";
import { relu } from "./activations.ts";
import { dense } from "./dense.ts";
import { dropout } from "./dropout.ts";
import { backendExtras, hasKernels, runKernel } from "./registry.ts";

export interface MixtureOptions {
  topK: number;
  /** The most (token, choice) pairs one expert takes, in token order (Infinity: no limit); the rest are dropped. */
  capacity: number;
  /** Each expert's output dropout: tf.dropout's noise for seeds[e] (null: none). */
  noise: { rate: number; seeds: number[] } | null;
}

export interface Mixture {
  out: tf.Tensor2D; // (N, C)
  /** (N, E) 1 where a token chose an expert, before any capacity limit; a constant. */
  chosen: tf.Tensor2D;
  /** (N, E) 1 where that choice kept its place under the capacity; a constant. */
  kept: tf.Tensor2D;
}

/** x (N, C), router logits (N, E), one ExpertWeights per expert → the mixture (N, C) and the routing masks. */
export function sparseMixture(
  x: tf.Tensor2D,
  logits: tf.Tensor2D,
  weights: ExpertWeights[],
  o: MixtureOptions,
): Mixture {
  return backendExtras().deviceOnly
    ? deviceMixture(x, logits, weights, o)
    : hostMixture(x, logits, weights, o);
}

/** Softmax over each token's chosen logits: -1e9 elsewhere underflows to exactly 0. */
function chosenGates(logits: tf.Tensor2D, chosen: tf.Tensor2D): tf.Tensor2D {
  return tf.softmax(tf.add(logits, tf.mul(tf.sub(chosen, 1), 1e9))) as tf.Tensor2D; // (N, E)
}

/**
 * tf.oneHot as float32. Not tf.oneHot's dtype argument: tfjs-backend-wasm 4.22 ignores it and writes
 * int32 bits under a float32 label (1 reads as 1.4e-45).
 */
function oneHotFloat(indices: tf.Tensor, depth: number): tf.Tensor {
  return tf.cast(tf.oneHot(indices as tf.Tensor1D, depth), "float32");
}

/** The gates a mixture used, from its logits and masks (N, E): 0 where not chosen or dropped. */
export function mixtureGates(logits: tf.Tensor2D, chosen: tf.Tensor2D, kept: tf.Tensor2D): tf.Tensor2D {
  return tf.mul(chosenGates(logits, chosen), kept) as tf.Tensor2D; // (N, E)
}

/** The original router's output: gates (N, E), a softmax over each token's top k logits, and those k (N, k). */
export function topKGates(logits: tf.Tensor2D, k: number): { gates: tf.Tensor2D; indices: tf.Tensor2D } {
  return tf.tidy(() => {
    const [N, E] = logits.shape;
    const { indices } = tf.topk(logits, k); // (N, k) int32, ties to the lower index
    const chosen = tf.sum(tf.reshape(oneHotFloat(indices, E), [N, k, E]), 1); // (N, E)
    return { gates: chosenGates(logits, chosen as tf.Tensor2D), indices: indices as tf.Tensor2D };
  });
}

function hostMixture(
  x: tf.Tensor2D,
  logits: tf.Tensor2D,
  weights: ExpertWeights[],
  o: MixtureOptions,
): Mixture {
  const [N, E] = logits.shape, k = o.topK;
  const choices = topKIndices(logits.dataSync(), N, E, k); // read back: the choice is made on the host
  const plan = planDispatch(choices, N, E, k, o.capacity);
  const chosen = new Float32Array(N * E), kept = new Float32Array(N * E);
  choices.forEach((e, i) => (chosen[Math.floor(i / k) * E + e] = 1));
  plan.order.forEach((slot) => (kept[(slot % N) * E + plan.slotExpert[slot]] = 1));
  const masks = { chosen: tf.tensor2d(chosen, [N, E]), kept: tf.tensor2d(kept, [N, E]) };
  const route: MoERoute = {
    order: plan.order,
    rowOfSlot: plan.rowOfSlot,
    slotExpert: plan.slotExpert,
    tokens: N,
    choices: k,
  };
  const merged = experts(x, route, plan.counts, weights, o.noise); // (M, C): expert e on its tokens' rows
  return { out: moeCombine(merged, chosenGates(logits, masks.chosen), route), ...masks };
}

function deviceMixture(
  x: tf.Tensor2D,
  logits: tf.Tensor2D,
  weights: ExpertWeights[],
  o: MixtureOptions,
): Mixture {
  const [chosen, kept] = tf.unstack(routingMasks(logits, o.topK, o.capacity)) as tf.Tensor2D[]; // (N, E) each
  const gates = mixtureGates(logits, chosen, kept); // (N, E)
  return { out: everyExpert(x, gates, weights, o.noise), chosen, kept };
}

/**
 * (2, N, E): the chosen mask and the kept mask, constants, made on the device. Ties go to the lower
 * expert index (tf.topk's order, as topKIndices); capacity as planDispatch: tokens fill an expert in
 * token order, each token's choices in rank order. tfjs has no gradient for TopK or the comparisons, so
 * both are made inside one op whose gradient is zero (the gates carry the gradient).
 */
function routingMasks(logits: tf.Tensor2D, k: number, capacity: number): tf.Tensor3D {
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const x = args[0] as tf.Tensor2D;
    const [N, E] = x.shape;
    const { indices } = tf.topk(x, k); // (N, k) int32, each token's choices in rank order
    const choices = tf.reshape(oneHotFloat(indices, E), [N * k, E]); // (N·k, E)
    let keptChoices = choices;
    if (Number.isFinite(capacity) && capacity < N * k) {
      const queue = tf.cumsum(choices, 0); // (N·k, E): each pair's place in its expert's queue, 1-based
      keptChoices = tf.mul(choices, tf.cast(tf.lessEqual(queue, capacity), "float32"));
    }
    const perToken = (t: tf.Tensor) => tf.sum(tf.reshape(t, [N, k, E]), 1); // (N, E)
    return {
      value: tf.stack([perToken(choices), perToken(keptChoices)]) as tf.Tensor3D, // (2, N, E)
      gradFunc: () => tf.zerosLike(x),
    };
  }) as (x: tf.Tensor2D) => tf.Tensor3D;
  return op(logits);
}

/** Σ_e gates[:, e] · expert_e(x): every expert on every row of x (N, C), in two batched products → (N, C). */
function everyExpert(
  x: tf.Tensor2D,
  gates: tf.Tensor2D,
  experts: ExpertWeights[],
  noise: { rate: number; seeds: number[] } | null,
): tf.Tensor2D {
  const [N, C] = x.shape;
  const E = experts.length;
  const xs = tf.tile(tf.reshape(x, [1, N, C]), [E, 1, 1]) as tf.Tensor3D; // (E, N, C)
  const w1 = tf.stack(experts.map((e) => e.w1)) as tf.Tensor3D; // (E, C, F)
  const b1 = tf.stack(experts.map((e) => tf.reshape(e.b1, [1, -1]))); // (E, 1, F)
  const w2 = tf.stack(experts.map((e) => e.w2)) as tf.Tensor3D; // (E, F, C)
  const b2 = tf.stack(experts.map((e) => tf.reshape(e.b2, [1, -1]))); // (E, 1, C)
  const h = tf.relu(tf.add(tf.matMul(xs, w1), b1)) as tf.Tensor3D; // (E, N, F)
  let y = tf.add(tf.matMul(h, w2), b2) as tf.Tensor3D; // (E, N, C)
  if (noise) {
    y = tf.stack(
      tf.unstack(y).map((ye, e) => dropout(ye, { rate: noise.rate, seed: noise.seeds[e] })),
    ) as tf.Tensor3D;
  }
  const w = tf.reshape(tf.transpose(gates), [E, N, 1]); // (E, N, 1)
  return tf.sum(tf.mul(y, w), 0) as tf.Tensor2D; // (N, C)
}

/** Column indices of the k largest values of each row, row-major (rows·k); ties go to the lower index. */
export function topKIndices(values: ArrayLike<number>, rows: number, cols: number, k: number): Int32Array {
  const out = new Int32Array(rows * k);
  const taken = new Uint8Array(cols);
  for (let r = 0; r < rows; r++) {
    taken.fill(0);
    const base = r * cols;
    for (let j = 0; j < k; j++) {
      let best = -1;
      for (let c = 0; c < cols; c++) {
        if (!taken[c] && (best < 0 || values[base + c] > values[base + best])) best = c;
      }
      taken[best] = 1;
      out[r * k + j] = best;
    }
  }
  return out;
}

/**
 * Where every (token, choice) pair goes. A "slot" is one pair: slot s = j·N + n is token n's j-th
 * chosen expert. Slots are grouped by expert (tokens in order inside a group) into the rows the experts
 * run on; with a capacity, an expert keeps only its first `capacity` tokens and the rest are dropped
 * (that expert then adds nothing to the token: its residual stream passes through).
 */
export interface DispatchPlan {
  tokens: number; // N
  topK: number; // k
  counts: number[]; // rows each expert runs on
  routed: number[]; // slots routed to each expert before the capacity limit
  order: Int32Array; // (M) slot of each expert-input row, grouped by expert
  rowOfSlot: Int32Array; // (k·N) expert-input row of each slot, -1 if dropped
  slotExpert: Int32Array; // (k·N) expert of each slot
  dropped: number; // slots dropped by the capacity limit
}

export function planDispatch(
  chosen: Int32Array,
  tokens: number,
  numExperts: number,
  topK: number,
  capacity = Infinity,
): DispatchPlan {
  const groups: number[][] = Array.from({ length: numExperts }, () => []);
  const routed = new Array(numExperts).fill(0);
  const slotExpert = new Int32Array(topK * tokens);
  let dropped = 0;
  for (let n = 0; n < tokens; n++) {
    for (let j = 0; j < topK; j++) {
      const e = chosen[n * topK + j];
      const slot = j * tokens + n;
      slotExpert[slot] = e;
      routed[e] += 1;
      if (groups[e].length < capacity) groups[e].push(slot);
      else dropped += 1;
    }
  }
  const order = Int32Array.from(groups.flat());
  const rowOfSlot = new Int32Array(topK * tokens).fill(-1);
  order.forEach((slot, row) => (rowOfSlot[slot] = row));
  return { tokens, topK, counts: groups.map((g) => g.length), routed, order, rowOfSlot, slotExpert, dropped };
}

/** Where every (token, choice) slot goes. */
export interface MoERoute {
  order: Int32Array; // (M) the slot of each expert row, rows grouped by expert
  rowOfSlot: Int32Array; // (k·N) the expert row of each slot, -1 where the slot was dropped
  slotExpert: Int32Array; // (k·N) the expert of each slot
  tokens: number; // N
  choices: number; // k
}

/** The experts' input rows: row r is token order[r] mod N of x (N, C) → (M, C). */
export function moeDispatch(x: tf.Tensor2D, route: MoERoute): tf.Tensor2D {
  const k = route.choices;
  const copies = k === 1 ? x : tf.concat(Array.from({ length: k }, () => x), 0); // (k·N, C)
  return selectRows(copies as tf.Tensor2D, route.order); // (M, C)
}

/** One expert's parameters: Linear(C, F) → ReLU → Linear(F, C), weights [in, out]. */
export interface ExpertWeights {
  w1: tf.Tensor2D;
  b1: tf.Tensor1D;
  w2: tf.Tensor2D;
  b2: tf.Tensor1D;
}

/**
 * Expert e (Linear → ReLU → Linear → dropout) on its group of counts[e] rows, the groups one after
 * another: row r is token route.order[r] mod N of x (N, C) (moeDispatch) → (M, C). With dropout,
 * expert e's noise is tf.dropout's for seeds[e]. An expert with no rows still gets a (zero) gradient, so
 * an optimizer sees every parameter every step. The kernel keeps only the tokens (which the router
 * keeps anyway) and the dropout mask for the gradient: it gathers the rows and recomputes the hidden
 * layer again there, the same numbers, instead of keeping (M, C) + (M, 4C) floats per layer.
 */
export function experts(
  x: tf.Tensor2D,
  route: MoERoute,
  counts: number[],
  weights: ExpertWeights[],
  noise: { rate: number; seeds: number[] } | null,
): tf.Tensor2D {
  if (x.dtype !== "float32" || !hasKernels("experts", "expertsGrad")) {
    const groups = tf.split(moeDispatch(x, route), counts, 0); // E × (n_e, C)
    const outputs = groups.map((g, e) => {
      const { w1, b1, w2, b2 } = weights[e];
      const y = dense(relu(dense(g, w1, b1)), w2, b2); // (n_e, C)
      return noise ? dropout(y, { rate: noise.rate, seed: noise.seeds[e] }) : y;
    });
    return tf.concat(outputs, 0) as tf.Tensor2D; // (M, C)
  }
  const attrs = {
    rows: route.order,
    tokens: route.tokens,
    choices: route.choices,
    counts,
    hidden: weights[0].w1.shape[1],
    keep: noise ? 1 - noise.rate : 1,
    seeds: noise ? noise.seeds : [],
  };
  const named = (ts: tf.Tensor[]) => {
    const out: tf.NamedTensorMap = {};
    ts.forEach((t, i) => (out[`${["w1", "b1", "w2", "b2"][i % 4]}_${Math.floor(i / 4)}`] = t));
    return out;
  };
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const [input, ...params] = args.slice(0, -1) as tf.Tensor[];
    const [y, mask] = runKernel("experts", { x: input, ...named(params) }, attrs) as tf.Tensor[];
    // The parameters are variables, unchanged until the step's update: the gradient reads them as they are.
    save([input, mask]);
    return {
      value: y, // (M, C)
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, smask] = saved;
        const inputs = { dy, x: sx, mask: smask, ...named(params) };
        return runKernel("expertsGrad", inputs, attrs) as tf.Tensor[]; // [dx (N, C), the parameters' gradients]
      },
    };
  }) as (...inputs: tf.Tensor[]) => tf.Tensor2D;
  return op(x, ...weights.flatMap((w) => [w.w1, w.b1, w.w2, w.b2]));
}

/**
 * Each token's experts' outputs weighted by their gates and summed: out[n] = Σ_j gates[n, e] · merged[row]
 * over the kept slots j·N + n (e = slotExpert, row = rowOfSlot). merged (M, C), gates (N, E) → (N, C).
 */
export function moeCombine(merged: tf.Tensor2D, gates: tf.Tensor2D, route: MoERoute): tf.Tensor2D {
  if (merged.dtype !== "float32" || !hasKernels("moeCombine", "moeCombineGrad")) {
    const [N, E] = gates.shape, k = route.choices, C = merged.shape[1];
    const perSlot = tf.reshape(selectRows(merged, route.rowOfSlot), [k, N, C]); // (k, N, C)
    const oneHot = new Float32Array(k * N * E); // picks each slot's gate from gates
    route.slotExpert.forEach((e, slot) => (oneHot[slot * E + e] = 1));
    const slotGates = tf.sum(tf.mul(tf.reshape(gates, [1, N, E]), tf.tensor3d(oneHot, [k, N, E])), -1, true); // (k, N, 1)
    return tf.sum(tf.mul(perSlot, slotGates), 0) as tf.Tensor2D; // (N, C)
  }
  const attrs = route as unknown as tf.NamedAttrMap;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [m, g, save] = args as [tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    save([m, g]);
    return {
      value: runKernel("moeCombine", { merged: m, gates: g }, attrs) as tf.Tensor, // (N, C)
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        runKernel("moeCombineGrad", { dout: dy, merged: saved[0], gates: saved[1] }, attrs) as tf.Tensor[],
    };
  }) as (merged: tf.Tensor2D, gates: tf.Tensor2D) => tf.Tensor2D;
  return op(merged, gates);
}

/**
 * y[r] = x[rows[r]], or a zero row where rows[r] is -1. Each row of x may be picked at most once, so the
 * gradient is the inverse pick (no scatter-add, which the wasm backend lacks for tf.gather's gradient).
 */
export function selectRows(x: tf.Tensor2D, rows: Int32Array): tf.Tensor2D {
  const n = x.shape[0];
  const inverse = new Int32Array(n).fill(-1);
  rows.forEach((i, r) => {
    if (i < 0) return;
    if (i >= n || inverse[i] !== -1) throw new Error(`selectRows: row ${i} is out of range or picked twice`);
    inverse[i] = r;
  });
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
    value: pick(args[0] as tf.Tensor2D, rows), // (rows, C)
    gradFunc: (dy: tf.Tensor) => pick(dy as tf.Tensor2D, inverse), // (n, C)
  })) as (x: tf.Tensor2D) => tf.Tensor2D;
  return op(x);
}

/** Gathers `rows` of x (an index of -1 gives a zero row). */
function pick(x: tf.Tensor2D, rows: Int32Array): tf.Tensor2D {
  return tf.tidy(() => {
    const [n, width] = x.shape;
    const hasGaps = rows.some((r) => r < 0);
    const source = hasGaps ? tf.concat([x, tf.zeros([1, width])], 0) : x; // (n [+1], C)
    const index = hasGaps ? rows.map((r) => (r < 0 ? n : r)) : rows;
    return tf.gather(source, tf.tensor1d(index, "int32")) as tf.Tensor2D; // (rows, C)
  });
}
