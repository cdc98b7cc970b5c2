// seeMoE's routing decisions and their statistics, made on the host: the top-k choice (tfjs has no
// gradient for TopK or comparisons, so it stays outside the gradient), the dispatch plan the expert ops
// follow, and what the router did (for metrics, charts and the load-balancing loss).

import * as tf from "@tensorflow/tfjs";

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

/** How a router layer behaved on the last training batch (plain numbers, for metrics and charts). */
export interface RouterStats {
  /** Share of (token, choice) pairs routed to each expert, before any capacity limit; sums to 1. */
  share: number[];
  /** Entropy of `share` in nats: ln(num_experts) when the load is perfectly even, 0 when one expert takes all. */
  entropy: number;
  /** Mean per-token entropy of the router's softmax over all experts (nats): low = confident routing. */
  gateEntropy: number;
  /** Switch-Transformer balance term E·Σ f_e·P_e (1 when even); what the aux loss minimises. */
  balance: number;
  /** Share of pairs dropped by the capacity limit (0 without one). */
  dropped: number;
}

export function routerStats(logits: ArrayLike<number>, plan: DispatchPlan, numExperts: number): RouterStats {
  const N = plan.tokens, E = numExperts;
  const pairs = N * plan.topK;
  const share = plan.routed.map((c) => c / pairs);
  const entropy = -share.reduce((s, p) => s + (p > 0 ? p * Math.log(p) : 0), 0);
  const meanProb = new Array(E).fill(0);
  let gateEntropy = 0;
  const probs = new Float64Array(E);
  for (let n = 0; n < N; n++) {
    let max = -Infinity;
    for (let e = 0; e < E; e++) max = Math.max(max, logits[n * E + e]);
    let total = 0;
    for (let e = 0; e < E; e++) total += probs[e] = Math.exp(logits[n * E + e] - max);
    for (let e = 0; e < E; e++) {
      const p = probs[e] / total;
      meanProb[e] += p / N;
      if (p > 0) gateEntropy -= p * Math.log(p) / N;
    }
  }
  const balance = E * share.reduce((s, f, e) => s + f * meanProb[e], 0);
  return { share, entropy, gateEntropy, balance, dropped: plan.dropped / pairs };
}

/**
 * Switch Transformer's load-balancing loss for one layer: E · Σ_e f_e · P_e, where f_e is the share of
 * (token, choice) pairs routed to expert e (a constant) and P_e the mean router probability of e over
 * the batch (softmax of the routing logits over all experts; differentiable). 1 when perfectly even.
 */
export function switchBalanceLoss(logits: tf.Tensor2D, plan: DispatchPlan): tf.Scalar {
  const E = logits.shape[1];
  const pairs = plan.tokens * plan.topK;
  const f = tf.tensor1d(plan.routed.map((c) => c / pairs)); // (E)
  const meanProb = tf.mean(tf.softmax(logits), 0); // (E)
  return tf.mul(tf.sum(tf.mul(f, meanProb)), E) as tf.Scalar;
}
