// seeMoE's sparse mixture, in three ops: dispatch (each expert's rows of the tokens), the experts (each
// on its own rows), combine (each token's experts' outputs, gate-weighted and summed). The routing plan
// comes from the model (lib/model/moe.ts planDispatch): a "slot" j·N + n is token n's j-th choice.

import * as tf from "@tensorflow/tfjs-core";
import { relu } from "./activations.ts";
import { dense } from "./dense.ts";
import { dropout } from "./dropout.ts";
import { hasKernels, runKernel } from "./registry.ts";

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
  if (x.dtype !== "float32" || !hasKernels("moeDispatch", "moeDispatchGrad")) {
    const k = route.choices;
    const copies = k === 1 ? x : tf.concat(Array.from({ length: k }, () => x), 0); // (k·N, C)
    return selectRows(copies as tf.Tensor2D, route.order); // (M, C)
  }
  const attrs = route as unknown as tf.NamedAttrMap;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
    value: runKernel("moeDispatch", { x: args[0] as tf.Tensor }, attrs) as tf.Tensor, // (M, C)
    gradFunc: (dy: tf.Tensor) => runKernel("moeDispatchGrad", { dinputs: dy }, attrs) as tf.Tensor, // (N, C)
  })) as (x: tf.Tensor2D) => tf.Tensor2D;
  return op(x);
}

/** One expert's parameters: Linear(C, F) → ReLU → Linear(F, C), weights [in, out]. */
export interface ExpertWeights {
  w1: tf.Tensor2D;
  b1: tf.Tensor1D;
  w2: tf.Tensor2D;
  b2: tf.Tensor1D;
}

/**
 * Expert e (Linear → ReLU → Linear → dropout) on its group of rows of x (M, C), counts[e] rows, the
 * groups one after another → (M, C). With dropout, expert e's noise is tf.dropout's for seeds[e].
 * An expert with no rows still gets a (zero) gradient, so an optimizer sees every parameter every step.
 */
export function experts(
  x: tf.Tensor2D,
  counts: number[],
  weights: ExpertWeights[],
  noise: { rate: number; seeds: number[] } | null,
): tf.Tensor2D {
  if (x.dtype !== "float32" || !hasKernels("experts", "expertsGrad")) {
    const groups = tf.split(x, counts, 0); // E × (n_e, C)
    const outputs = groups.map((g, e) => {
      const { w1, b1, w2, b2 } = weights[e];
      const y = dense(relu(dense(g, w1, b1)), w2, b2); // (n_e, C)
      return noise ? dropout(y, { rate: noise.rate, seed: noise.seeds[e] }) : y;
    });
    return tf.concat(outputs, 0) as tf.Tensor2D; // (M, C)
  }
  const attrs = {
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
    const [y, h, mask] = runKernel("experts", { x: input, ...named(params) }, attrs) as tf.Tensor[];
    // The parameters are variables, unchanged until the step's update: the gradient reads them as they are.
    save([input, h, mask]);
    return {
      value: y, // (M, C)
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sh, smask] = saved;
        const inputs = { dy, x: sx, h: sh, mask: smask, ...named(params) };
        return runKernel("expertsGrad", inputs, attrs) as tf.Tensor[];
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
