// seeMoE: seemore with a sparse Mixture-of-Experts decoder, as the original's seeMoE.py.
//
//   SparseMoEBlock:  x = x + attn(ln1(x));  n = ln2(x);  x = n + SparseMoE(n)   (the original's quirk)
//   SparseMoE:       a NoisyTopkRouter picks top_k of num_experts Experts per token; the token's output is
//                    the sum of those experts' outputs weighted by a softmax over the k chosen logits.
//
// Differences from the original, all documented and all switchable back where it matters:
// - Router noise only while training. The original adds N(0,1)·softplus(noise_linear(x)) in eval and
//   generation too, so its outputs are random; `router_noise_in_eval: true` restores that.
// - Efficient dispatch: each expert runs only on the rows routed to it (the original does that too, with
//   boolean indexing). Here rows are picked with `selectRows`, a gather whose gradient is another gather,
//   because the wasm backend has no kernel for the scatter-add that tf.gather's gradient needs.
// - Beyond the original: router statistics per layer (`lastRouterStats`), an optional Switch-Transformer
//   load-balancing loss (`aux_loss_coef`), an optional expert capacity (`capacity_factor`).
//
// Initialisation: the original's main applies kaiming_normal_ to every nn.Linear weight after building
// the model; `VisionMoELanguageModel` does the same by default (`{ kaiming: false }` keeps PyTorch's
// default init). That Kaiming init is why the original's MoE barely learns. Overfitting 3 images (batch 16,
// Adam 1e-3, pads counted as the original), loss at step 0 → 100: original seeMoE.py 5.64 → 1.91 with it,
// 4.28 → 0.04 without; this port 5.26 → 1.93 and 4.27 → 0.04; the dense seemore.py given the same init
// 5.26 → 0.98. Applied to one part at a time, the decoder's attention projections alone stall training.
// Kaiming's std √(2/fan_in) is ≈2.4× PyTorch's default, so at init the attention branch (RMS 0.9–1.9 vs
// 0.12–0.17) and the experts (≈1.1 vs 0.17) swamp each position's own stream (RMS ≈1.4). Causal attention
// starts close to uniform, so every position gets nearly the same vector: after 8 blocks the mean cosine
// between positions is 0.79 (0.21 with the default init). lm_head then sees the same input everywhere and
// the loss sits near the unigram level (≈2.7) until attention slowly learns to pick positions.

import * as tf from "@tensorflow/tfjs";
import { canFuseExperts, experts as fusedExperts, moeCombine, moeDispatch } from "../blas/fused.ts";
import type { ModelConfig } from "../config.ts";
import { type KVCache, MultiHeadAttention } from "./attention.ts";
import type { BlockOptions } from "./block.ts";
import { DecoderLanguageModel, type DecoderOptions } from "./decoder.ts";
import {
  type Ctx,
  hash32,
  Initialiser,
  LayerNorm,
  Linear,
  type Parametrised,
  readData,
  type StateDict,
} from "./ops.ts";
import { TwoLayerNet } from "./mlp.ts";
import { type LossExtras, type PadLoss, VisionLanguageModel } from "./vision_language_model.ts";

// ---------------------------------------------------------------------------------------------
// Row picking with a gather-only gradient.

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

/**
 * y[r] = x[rows[r]], or a zero row where rows[r] is -1. Each row of x may be picked at most once, so the
 * gradient is the inverse pick: dx[i] = dy[r] where rows[r] = i, else 0. No scatter-add is needed, and
 * the op trains on every backend (tf.gather's own gradient needs UnsortedSegmentSum, missing on wasm).
 */
export function selectRows(x: tf.Tensor2D, rows: Int32Array): tf.Tensor2D {
  const n = x.shape[0];
  const inverse = new Int32Array(n).fill(-1);
  rows.forEach((i, r) => {
    if (i < 0) return;
    if (i >= n || inverse[i] !== -1) throw new Error(`selectRows: row ${i} is out of range or picked twice`);
    inverse[i] = r;
  });
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const input = args[0] as tf.Tensor2D;
    return {
      value: pick(input, rows), // (rows, C)
      gradFunc: (dy: tf.Tensor) => pick(dy as tf.Tensor2D, inverse), // (n, C)
    };
  }) as (x: tf.Tensor2D) => tf.Tensor2D;
  return op(x);
}

// ---------------------------------------------------------------------------------------------
// Routing decisions, made outside the gradient (tfjs has no gradient for TopK or comparisons).

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

function routerStats(logits: ArrayLike<number>, plan: DispatchPlan, numExperts: number): RouterStats {
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

// ---------------------------------------------------------------------------------------------
// Modules, under the original's names.

/** One expert: Linear(C, 4C) → ReLU → Linear(4C, C) → Dropout (saved as net.0 / net.2). */
export class Expert extends TwoLayerNet {
  constructor(readonly nEmbd: number, dropoutRate: number, init: Initialiser) {
    super(nEmbd, 4 * nEmbd, nEmbd, "relu", dropoutRate, init);
  }
}

/** What the router decided for N tokens. */
export interface Routing {
  /** (N, E) the logits experts were chosen from (noisy when noise is on). */
  logits: tf.Tensor2D;
  /** (N, E) softmax over each token's k chosen logits, exactly 0 elsewhere. Differentiable. */
  gates: tf.Tensor2D;
  /** (N·k) chosen expert ids, token-major: chosen[n·k + j]. */
  chosen: Int32Array;
  /** The values of `logits`, read back to choose the experts. */
  logitValues: Float32Array;
}

export class NoisyTopkRouter implements Parametrised {
  readonly topkrouteLinear: Linear;
  readonly noiseLinear: Linear;

  /** @param noiseInEval add noise outside training too, as the original does */
  constructor(
    nEmbd: number,
    readonly numExperts: number,
    readonly topK: number,
    init: Initialiser,
    readonly noiseInEval = false,
  ) {
    this.topkrouteLinear = new Linear(nEmbd, numExperts, init);
    this.noiseLinear = new Linear(nEmbd, numExperts, init);
  }

  /** x (N, C) → the routing of each token. */
  forward(x: tf.Tensor2D, ctx: Ctx): Routing {
    const [N] = x.shape;
    const E = this.numExperts, k = this.topK;
    let logits = this.topkrouteLinear.forward(x) as tf.Tensor2D; // (N, E)
    if (ctx.training || this.noiseInEval) {
      const scale = tf.softplus(this.noiseLinear.forward(x)); // (N, E)
      const noise = tf.randomNormal([N, E], 0, 1, "float32", ctx.nextSeed()); // (N, E)
      logits = tf.add(logits, tf.mul(noise, scale)) as tf.Tensor2D;
    }
    // The choice is made on read-back values; only the softmax below is differentiated.
    const logitValues = logits.dataSync() as Float32Array;
    const chosen = topKIndices(logitValues, N, E, k);
    const offsets = new Float32Array(N * E).fill(-1e9); // 0 on chosen experts, -1e9 elsewhere
    chosen.forEach((e, i) => (offsets[Math.floor(i / k) * E + e] = 0));
    const gates = tf.softmax(tf.add(logits, tf.tensor2d(offsets, [N, E]))) as tf.Tensor2D; // (N, E)
    return { logits, gates, chosen, logitValues };
  }

  variables(): tf.Variable[] {
    return [...this.topkrouteLinear.variables(), ...this.noiseLinear.variables()];
  }
  saveState(prefix: string, out: StateDict): void {
    this.topkrouteLinear.saveState(`${prefix}.topkroute_linear`, out);
    this.noiseLinear.saveState(`${prefix}.noise_linear`, out);
  }
  loadState(prefix: string, state: StateDict): void {
    this.topkrouteLinear.loadState(`${prefix}.topkroute_linear`, state);
    this.noiseLinear.loadState(`${prefix}.noise_linear`, state);
  }
}

/** seeMoE's settings beyond the decoder's own (see ModelConfig for their meaning). */
export interface MoEOptions {
  numExperts: number;
  topK: number;
  capacityFactor: number; // 0 = no limit
  routerNoiseInEval: boolean;
  auxLoss: boolean; // compute the load-balancing loss while training
}

export class SparseMoE implements Parametrised {
  readonly router: NoisyTopkRouter;
  readonly experts: Expert[];
  /** Statistics of the last training forward (null before one). */
  lastRouterStats: RouterStats | null = null;
  /** Load-balancing loss of the last training forward when `opts.auxLoss` (taken by the model's loss()). */
  lastAuxLoss: tf.Scalar | null = null;

  constructor(
    readonly nEmbd: number,
    readonly dropoutRate: number,
    readonly opts: MoEOptions,
    init: Initialiser,
  ) {
    this.router = new NoisyTopkRouter(nEmbd, opts.numExperts, opts.topK, init, opts.routerNoiseInEval);
    this.experts = Array.from({ length: opts.numExperts }, () => new Expert(nEmbd, dropoutRate, init));
  }

  /** The most rows one expert takes from a batch of `tokens` tokens. */
  capacity(tokens: number): number {
    const f = this.opts.capacityFactor;
    return f > 0 ? Math.max(1, Math.ceil((f * tokens * this.opts.topK) / this.opts.numExperts)) : Infinity;
  }

  /** Routes x (..., C) and plans the dispatch; records statistics and the aux loss while training. */
  route(x: tf.Tensor, ctx: Ctx): { flat: tf.Tensor2D; routing: Routing; plan: DispatchPlan } {
    const C = this.nEmbd;
    const flat = tf.reshape(x, [-1, C]) as tf.Tensor2D; // (N, C)
    const N = flat.shape[0];
    const routing = this.router.forward(flat, ctx);
    const plan = planDispatch(routing.chosen, N, this.opts.numExperts, this.opts.topK, this.capacity(N));
    this.lastAuxLoss = null;
    if (ctx.training) {
      this.lastRouterStats = routerStats(routing.logitValues, plan, this.opts.numExperts);
      if (this.opts.auxLoss) this.lastAuxLoss = switchBalanceLoss(routing.logits, plan);
    }
    return { flat, routing, plan };
  }

  /** x (..., C) → (..., C): each expert runs on its own tokens only. */
  forward(x: tf.Tensor, ctx: Ctx): tf.Tensor {
    const { flat, routing, plan } = this.route(x, ctx);
    const out = canFuseExperts()
      ? this.mixFused(flat, routing, plan, ctx)
      : this.mixOps(flat, routing, plan, ctx);
    return tf.reshape(out, x.shape); // (..., C)
  }

  /** Dispatch, experts and combine as tfjs ops: flat (N, C) → (N, C). */
  private mixOps(flat: tf.Tensor2D, routing: Routing, plan: DispatchPlan, ctx: Ctx): tf.Tensor {
    const [N, C] = flat.shape;
    const k = this.opts.topK;
    // Gather: k copies of the tokens (one per choice), then each expert's rows, grouped.
    const copies = k === 1 ? flat : tf.concat(Array.from({ length: k }, () => flat), 0); // (k·N, C)
    const inputs = selectRows(copies as tf.Tensor2D, plan.order); // (M, C)
    // Experts, each on its own group of rows. An expert with no rows runs on an empty group, so its
    // parameters still get a (zero) gradient and optimizers see every parameter every step.
    const groups = tf.split(inputs, plan.counts, 0); // E × (n_e, C)
    const outputs = groups.map((g, e) => this.experts[e].forward(g, ctx)); // E × (n_e, C)
    const merged = tf.concat(outputs, 0); // (M, C)
    // Scatter back: every slot's output (zero if dropped), weighted by its gate, summed over choices.
    const perSlot = tf.reshape(selectRows(merged as tf.Tensor2D, plan.rowOfSlot), [k, N, C]); // (k, N, C)
    const weighted = tf.mul(perSlot, this.slotGates(routing.gates, plan)); // (k, N, C)
    return tf.sum(weighted, 0); // (N, C)
  }

  /**
   * The same on the fast CPU path, in three C kernels: dispatch (each expert's rows), all experts at
   * once, combine (gate-weighted sum per token). The same maths and dropout noise: one seed per expert,
   * drawn in expert order as the experts' own dropouts draw them.
   */
  private mixFused(flat: tf.Tensor2D, routing: Routing, plan: DispatchPlan, ctx: Ctx): tf.Tensor {
    const route = {
      order: plan.order,
      rowOfSlot: plan.rowOfSlot,
      slotExpert: plan.slotExpert,
      tokens: plan.tokens,
      choices: plan.topK,
    };
    const inputs = moeDispatch(flat, route); // (M, C)
    const rate = this.dropoutRate;
    const dropout = ctx.training && rate > 0 ? { rate, seeds: this.experts.map(() => ctx.nextSeed()) } : null;
    const params = this.experts.map((e) => ({ w1: e.fc1.w, b1: e.fc1.b!, w2: e.fc2.w, b2: e.fc2.b! }));
    const merged = fusedExperts(inputs, plan.counts, params, dropout); // (M, C)
    return moeCombine(merged, routing.gates, route); // (N, C)
  }

  /** (k, N, 1): the gate of each slot, taken from gates (N, E) with a constant one-hot. */
  private slotGates(gates: tf.Tensor2D, plan: DispatchPlan): tf.Tensor3D {
    const E = this.opts.numExperts, N = plan.tokens, k = plan.topK;
    const oneHot = new Float32Array(k * N * E);
    plan.slotExpert.forEach((e, slot) => (oneHot[slot * E + e] = 1));
    const pickGate = tf.tensor3d(oneHot, [k, N, E]);
    return tf.sum(tf.mul(tf.reshape(gates, [1, N, E]), pickGate), -1, true) as tf.Tensor3D; // (k, N, 1)
  }

  /**
   * Reference for tests: EVERY expert on EVERY token, weighted by the same sparse gates (0 for experts
   * not chosen or dropped by capacity). Costs num_experts dense FFNs; the sparse forward must equal it.
   */
  forwardDense(x: tf.Tensor, ctx: Ctx): tf.Tensor {
    const { flat, routing, plan } = this.route(x, ctx);
    const [N] = flat.shape;
    const E = this.opts.numExperts;
    const kept = new Float32Array(N * E);
    plan.order.forEach((slot) => (kept[(slot % N) * E + plan.slotExpert[slot]] = 1));
    const weights = tf.mul(routing.gates, tf.tensor2d(kept, [N, E])); // (N, E)
    let out: tf.Tensor = tf.zerosLike(flat); // (N, C)
    this.experts.forEach((expert, e) => {
      const w = tf.slice(weights, [0, e], [N, 1]); // (N, 1)
      out = tf.add(out, tf.mul(expert.forward(flat, ctx), w));
    });
    return tf.reshape(out, x.shape);
  }

  variables(): tf.Variable[] {
    return [...this.router.variables(), ...this.experts.flatMap((e) => e.variables())];
  }
  saveState(prefix: string, out: StateDict): void {
    this.router.saveState(`${prefix}.router`, out);
    this.experts.forEach((e, i) => e.saveState(`${prefix}.experts.${i}`, out));
  }
  loadState(prefix: string, state: StateDict): void {
    this.router.loadState(`${prefix}.router`, state);
    this.experts.forEach((e, i) => e.loadState(`${prefix}.experts.${i}`, state));
  }
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

/** A decoder block whose feed-forward is a SparseMoE (saved as `sparseMoE`); options as seemore's Block. */
export class SparseMoEBlock implements Parametrised {
  readonly ln1: LayerNorm;
  readonly attn: MultiHeadAttention;
  readonly ln2: LayerNorm;
  readonly sparseMoE: SparseMoE;

  constructor(
    nEmbd: number,
    numHeads: number,
    dropoutRate: number,
    moe: MoEOptions,
    init: Initialiser,
    readonly options: BlockOptions = {},
  ) {
    this.ln1 = new LayerNorm(nEmbd, init);
    this.attn = new MultiHeadAttention(nEmbd, numHeads, dropoutRate, true, init, options.scaleByHeadSize);
    this.ln2 = new LayerNorm(nEmbd, init);
    this.sparseMoE = new SparseMoE(nEmbd, dropoutRate, moe, init);
  }

  forward(x: tf.Tensor3D, ctx: Ctx, cache?: KVCache): tf.Tensor3D {
    const h = tf.add(x, this.attn.forward(this.ln1.forward(x) as tf.Tensor3D, ctx, cache)); // (B, T, C)
    const n = this.ln2.forward(h); // (B, T, C)
    const base = this.options.preNorm ? h : n; // the original adds to the normalised stream
    return tf.add(base, this.sparseMoE.forward(n, ctx)) as tf.Tensor3D; // (B, T, C)
  }

  variables(): tf.Variable[] {
    return [
      ...this.ln1.variables(),
      ...this.attn.variables(),
      ...this.ln2.variables(),
      ...this.sparseMoE.variables(),
    ];
  }
  saveState(prefix: string, out: StateDict): void {
    this.ln1.saveState(`${prefix}.ln1`, out);
    this.attn.saveState(`${prefix}.attn`, out);
    this.ln2.saveState(`${prefix}.ln2`, out);
    this.sparseMoE.saveState(`${prefix}.sparseMoE`, out);
  }
  loadState(prefix: string, state: StateDict): void {
    this.ln1.loadState(`${prefix}.ln1`, state);
    this.attn.loadState(`${prefix}.attn`, state);
    this.ln2.loadState(`${prefix}.ln2`, state);
    this.sparseMoE.loadState(`${prefix}.sparseMoE`, state);
  }
}

/** The decoder with SparseMoEBlocks (saved as `sparseMoEBlocks.{i}`); everything else as seemore's. */
export class MoEDecoderLanguageModel extends DecoderLanguageModel {
  constructor(opts: DecoderOptions, moe: MoEOptions, init: Initialiser) {
    super(
      opts,
      init,
      () => new SparseMoEBlock(opts.nEmbd, opts.numHeads, opts.dropout, moe, init, opts.blockOptions),
      "sparseMoEBlocks",
    );
  }

  /** The SparseMoE of every block, in order. */
  get moeLayers(): SparseMoE[] {
    return (this.blocks as SparseMoEBlock[]).map((b) => b.sparseMoE);
  }
}

/** Options that are not part of a checkpoint's config. */
export interface VisionMoEOptions {
  /** Kaiming-normal Linear weights, as the original's main applies (default true). */
  kaiming?: boolean;
}

/** seeMoE: the ViT (with the ReLU MLP in its blocks) → projector → MoE decoder. */
export class VisionMoELanguageModel extends VisionLanguageModel {
  constructor(config: ModelConfig, seed = 0, opts: VisionMoEOptions = {}) {
    checkMoEConfig(config);
    super(config, seed);
    if (opts.kaiming ?? true) kaimingInitLinears(this, seed);
  }

  /** seeMoE's ViT blocks use the original's `MLP` (ReLU, dropout; saved as ffn.net.0 / .2). */
  protected override vitFeedForward(): "gelu" | "mlp" {
    return "mlp";
  }

  protected override buildDecoder(init: Initialiser): DecoderLanguageModel {
    const c = this.config;
    return new MoEDecoderLanguageModel(this.decoderOptions(), {
      numExperts: c.num_experts,
      topK: c.top_k,
      capacityFactor: c.capacity_factor,
      routerNoiseInEval: c.router_noise_in_eval,
      auxLoss: c.aux_loss_coef > 0,
    }, init);
  }

  /** The SparseMoE of every decoder block, in order. */
  get moeLayers(): SparseMoE[] {
    return (this.decoder as MoEDecoderLanguageModel).moeLayers;
  }

  /** Router statistics of each layer from the last training forward (empty before one). */
  routerStats(): RouterStats[] {
    return this.moeLayers.flatMap((m) => (m.lastRouterStats ? [m.lastRouterStats] : []));
  }

  /**
   * The cross-entropy, plus (while training, when aux_loss_coef > 0) aux_loss_coef times the mean over
   * layers of the Switch balance loss.
   */
  override loss(
    images: tf.Tensor4D,
    idx: tf.Tensor2D,
    targets: tf.Tensor2D,
    ctx: Ctx,
    padLoss: PadLoss,
    extra: LossExtras = {},
  ): tf.Scalar {
    const ce = super.loss(images, idx, targets, ctx, padLoss, extra);
    const aux = this.moeLayers.flatMap((m) => (m.lastAuxLoss ? [m.lastAuxLoss] : []));
    for (const m of this.moeLayers) m.lastAuxLoss = null;
    if (aux.length === 0) return ce;
    return tf.add(ce, tf.mul(tf.addN(aux), this.config.aux_loss_coef / aux.length)) as tf.Scalar;
  }
}

/** Router statistics of a model's MoE layers ([] for a dense model). */
export function routerStatsOf(model: VisionLanguageModel): RouterStats[] {
  return model instanceof VisionMoELanguageModel ? model.routerStats() : [];
}

function checkMoEConfig(c: ModelConfig): void {
  const bad = (key: string, what: string) => {
    throw new Error(`seemoe config: "${key}" must be ${what}`);
  };
  if (!Number.isInteger(c.num_experts) || c.num_experts < 1) bad("num_experts", "an integer ≥ 1");
  if (!Number.isInteger(c.top_k) || c.top_k < 1 || c.top_k > c.num_experts) {
    bad("top_k", `an integer from 1 to num_experts (${c.num_experts}), not ${c.top_k}`);
  }
  if (!(c.aux_loss_coef >= 0)) bad("aux_loss_coef", "≥ 0");
  if (!(c.capacity_factor >= 0)) bad("capacity_factor", "≥ 0 (0 = no limit)");
}

/**
 * The original's `model.apply(kaiming_init_weights)`: every nn.Linear weight (attention heads, projections,
 * MLPs, experts, routers, lm_head) is redrawn from N(0, 2 / fan_in); biases, LayerNorms, the embedding
 * tables, cls_token, pos_embedding and the patch conv keep their initialisation.
 */
export function kaimingInitLinears(model: VisionLanguageModel, seed: number): void {
  const init = new Initialiser(hash32(seed, 0x6b61696d, 0x6e67));
  const state = model.stateDict();
  for (const [name, t] of state) {
    const isLinearWeight = t.shape.length === 2 && name.endsWith(".weight") &&
      !name.includes("embedding_table");
    if (!isLinearWeight) continue;
    const sample = init.normal(t.shape, Math.sqrt(2 / t.shape[1])); // PyTorch layout [out, in]: fan_in = in
    state.set(name, { shape: t.shape, data: readData(sample) });
    sample.dispose();
  }
  model.loadState("", state);
}

/** One row per (step, layer, expert) of the router statistics in `rows`: a long-format CSV for charts. */
export function routerStatsCsv(rows: { step: number; router?: RouterStats[] }[]): string {
  const lines = ["step,layer,expert,share,entropy,gate_entropy,balance,dropped"];
  for (const { step, router } of rows) {
    router?.forEach((s, layer) =>
      s.share.forEach((share, expert) =>
        lines.push([step, layer, expert, share, s.entropy, s.gateEntropy, s.balance, s.dropped].join(","))
      )
    );
  }
  return lines.join("\n") + "\n";
}
