// What seeMoE's routers did: statistics per layer for metrics and charts, each token's gates, and the
// Switch-Transformer load-balancing loss. The choice itself is made by lib/ops/experts.ts (sparseMixture),
// which reports it as two (N, E) masks: `chosen` (before any capacity limit) and `kept`.

import * as tf from "@tensorflow/tfjs";
import { mixtureGates } from "../ops/experts.ts";

/** One layer's routing in one forward: its router logits and the chosen and kept masks, each (N, E). */
export interface Routing {
  logits: tf.Tensor2D;
  chosen: tf.Tensor2D;
  kept: tf.Tensor2D;
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

/** The statistics of one layer from its logits (N, E) and the chosen and kept masks (N, E), as read back. */
export function routerStats(
  logits: ArrayLike<number>,
  chosen: ArrayLike<number>,
  kept: ArrayLike<number>,
  numExperts: number,
): RouterStats {
  const E = numExperts, N = logits.length / E;
  const routed = new Array(E).fill(0);
  let pairs = 0, keptPairs = 0;
  for (let i = 0; i < N * E; i++) {
    routed[i % E] += chosen[i];
    pairs += chosen[i];
    keptPairs += kept[i];
  }
  const share = routed.map((c) => c / pairs);
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
  return { share, entropy, gateEntropy, balance, dropped: (pairs - keptPairs) / pairs };
}

/** The statistics of each layer's routing, read synchronously. */
export function routingStats(routings: Routing[]): RouterStats[] {
  return statsOf(routings, (t) => t.dataSync());
}

/** routingStats, read asynchronously (any backend: WebGPU reads only so). */
export async function readRoutingStats(routings: Routing[]): Promise<RouterStats[]> {
  const tensors = routings.flatMap((r) => [r.logits, r.chosen, r.kept]);
  const values = await Promise.all(tensors.map((t) => t.data()));
  return statsOf(routings, (t) => values[tensors.indexOf(t)]);
}

/** Each routing's statistics, its tensors' values as `read` gives them (the loop both reads share). */
function statsOf(routings: Routing[], read: (t: tf.Tensor2D) => ArrayLike<number>): RouterStats[] {
  return routings.map((r) => routerStats(read(r.logits), read(r.chosen), read(r.kept), r.logits.shape[1]));
}

/** Each layer's gates as rows [token][expert], read asynchronously: 0 where not chosen or dropped. */
export function readGates(routings: Routing[]): Promise<number[][][]> {
  return Promise.all(routings.map(async ({ logits, chosen, kept }) => {
    const gates = tf.tidy(() => mixtureGates(logits, chosen, kept));
    const rows = await gates.array() as number[][];
    gates.dispose();
    return rows;
  }));
}

/**
 * Switch Transformer's load-balancing loss for one layer: E · Σ_e f_e · P_e, where f_e is the share of
 * (token, choice) pairs routed to expert e (`chosen` (N, E), a constant) and P_e the mean router
 * probability of e over the batch (softmax of the logits over all experts; differentiable). 1 when even.
 */
export function switchBalanceLoss(logits: tf.Tensor2D, chosen: tf.Tensor2D): tf.Scalar {
  const E = logits.shape[1];
  const f = tf.div(tf.sum(chosen, 0), tf.sum(chosen)); // (E)
  const meanProb = tf.mean(tf.softmax(logits), 0); // (E)
  return tf.mul(tf.sum(tf.mul(f, meanProb)), E) as tf.Scalar;
}
