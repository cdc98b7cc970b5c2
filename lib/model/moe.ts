// seeMoE: seemore with a sparse Mixture-of-Experts decoder, as the original's seeMoE.py.
//
//   SparseMoEBlock:  x = x + attn(ln1(x));  n = ln2(x);  x = n + SparseMoE(n)   (the original's quirk)
//   SparseMoE:       a NoisyTopkRouter picks top_k of num_experts Experts per token; the token's output is
//                    the sum of those experts' outputs weighted by a softmax over the k chosen logits.
//
// Differences from the original, all documented and switchable back where it matters:
// - Router noise only while training. The original adds N(0,1)·softplus(noise_linear(x)) in eval and
//   generation too, so its outputs are random; `router_noise_in_eval: true` restores that.
// - Each expert runs only on the rows routed to it (the original does that too, with boolean indexing),
//   through the dispatch → experts → combine ops of lib/ops/experts.ts.
// - Beyond the original: router statistics per layer, an optional Switch-Transformer load-balancing loss
//   (`aux_loss_coef`), an optional expert capacity (`capacity_factor`).
//
// The original's main applies kaiming_normal_ to every nn.Linear weight after building the model;
// `VisionMoELanguageModel` does the same by default. That init is why the original's MoE barely learns
// (README, "seeMoE").

import * as tf from "@tensorflow/tfjs";
import type { ModelConfig } from "../config.ts";
import { experts, moeCombine, moeDispatch, type MoERoute } from "../ops/experts.ts";
import { hash32 } from "../random.ts";
import { type KVCache, MultiHeadAttention } from "./attention.ts";
import { DecoderLanguageModel } from "./decoder.ts";
import { LayerNorm, Linear } from "./layers.ts";
import { TwoLayerMLP } from "./mlp.ts";
import { type ForwardContext, Initialiser, Module, readData } from "./module.ts";
import {
  type DispatchPlan,
  planDispatch,
  type RouterStats,
  routerStats,
  switchBalanceLoss,
  topKIndices,
} from "./routing.ts";
import { VisionLanguageModel } from "./vision_language_model.ts";

/** One expert: Linear(C, 4C) → ReLU → Linear(4C, C) → Dropout (saved as net.0 / net.2). */
export class Expert extends TwoLayerMLP {
  constructor(nEmbd: number, dropout: number, init: Initialiser) {
    super({ nIn: nEmbd, nHidden: 4 * nEmbd, nOut: nEmbd, activation: "relu", dropout, prefix: "net" }, init);
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

export class NoisyTopkRouter extends Module {
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
    super();
    this.topkrouteLinear = this.add("topkroute_linear", new Linear(nEmbd, numExperts, init));
    this.noiseLinear = this.add("noise_linear", new Linear(nEmbd, numExperts, init));
  }

  /** x (N, C) → the routing of each token. */
  forward(x: tf.Tensor2D, ctx: ForwardContext): Routing {
    const [N] = x.shape;
    const E = this.numExperts, k = this.topK;
    let logits = this.topkrouteLinear.forward(x) as tf.Tensor2D; // (N, E)
    if (ctx.training || this.noiseInEval) {
      const scale = tf.softplus(this.noiseLinear.forward(x)); // (N, E)
      const noise = tf.randomNormal([N, E], 0, 1, "float32", this.noiseSeed(ctx, "noise")); // (N, E)
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
}

/** seeMoE's settings beyond the decoder's own (see ModelConfig for their meaning). */
export interface MoEOptions {
  numExperts: number;
  topK: number;
  capacityFactor: number; // 0 = no limit
  routerNoiseInEval: boolean;
  auxLoss: boolean; // compute the load-balancing loss while training
}

export class SparseMoE extends Module {
  readonly router: NoisyTopkRouter;
  readonly experts: Expert[];
  /** Statistics of the last training forward (null before one). */
  lastRouterStats: RouterStats | null = null;
  /** Load-balancing loss of the last training forward when `opts.auxLoss` (taken by auxLoss()). */
  lastAuxLoss: tf.Scalar | null = null;

  constructor(
    readonly nEmbd: number,
    readonly dropoutRate: number,
    readonly opts: MoEOptions,
    init: Initialiser,
  ) {
    super();
    const { numExperts, topK, routerNoiseInEval } = opts;
    this.router = this.add("router", new NoisyTopkRouter(nEmbd, numExperts, topK, init, routerNoiseInEval));
    this.experts = this.addList(
      "experts",
      Array.from({ length: numExperts }, () => new Expert(nEmbd, dropoutRate, init)),
    );
  }

  /** The most rows one expert takes from a batch of `tokens` tokens. */
  capacity(tokens: number): number {
    const f = this.opts.capacityFactor;
    return f > 0 ? Math.max(1, Math.ceil((f * tokens * this.opts.topK) / this.opts.numExperts)) : Infinity;
  }

  /** Routes x (..., C) and plans the dispatch; records statistics and the aux loss while training. */
  route(x: tf.Tensor, ctx: ForwardContext): { flat: tf.Tensor2D; routing: Routing; plan: DispatchPlan } {
    const flat = tf.reshape(x, [-1, this.nEmbd]) as tf.Tensor2D; // (N, C)
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

  /** x (..., C) → (..., C): dispatch each expert's tokens, run the experts, combine by the gates. */
  forward(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    const { flat, routing, plan } = this.route(x, ctx);
    const route: MoERoute = {
      order: plan.order,
      rowOfSlot: plan.rowOfSlot,
      slotExpert: plan.slotExpert,
      tokens: plan.tokens,
      choices: plan.topK,
    };
    const inputs = moeDispatch(flat, route); // (M, C)
    const noise = ctx.training && this.dropoutRate > 0
      ? { rate: this.dropoutRate, seeds: this.experts.map((e) => e.noiseSeed(ctx, "output")) }
      : null; // each expert's own dropout noise
    const weights = this.experts.map((e) => ({
      w1: e.fc1.weight,
      b1: e.fc1.bias!,
      w2: e.fc2.weight,
      b2: e.fc2.bias!,
    }));
    const merged = experts(inputs, plan.counts, weights, noise); // (M, C)
    return tf.reshape(moeCombine(merged, routing.gates, route), x.shape); // (..., C)
  }

  /**
   * Reference for tests: EVERY expert on EVERY token, weighted by the same sparse gates (0 for experts
   * not chosen or dropped by capacity). Costs num_experts dense FFNs; the sparse forward must equal it.
   */
  forwardDense(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
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
}

/** A decoder block whose feed-forward is a SparseMoE (saved as `sparseMoE`); options as seemore's Block. */
export class SparseMoEBlock extends Module {
  readonly ln1: LayerNorm;
  readonly attn: MultiHeadAttention;
  readonly ln2: LayerNorm;
  readonly sparseMoE: SparseMoE;

  constructor(readonly cfg: ModelConfig, moe: MoEOptions, init: Initialiser) {
    super();
    const C = cfg.n_embd;
    this.ln1 = this.add("ln1", new LayerNorm(C, init));
    const scaleByHeadSize = cfg.attention_scale === "head";
    const attention = {
      nEmbd: C,
      numHeads: cfg.n_head,
      dropout: cfg.dropout,
      isDecoder: true,
      scaleByHeadSize,
    };
    this.attn = this.add("attn", new MultiHeadAttention(attention, init));
    this.ln2 = this.add("ln2", new LayerNorm(C, init));
    this.sparseMoE = this.add("sparseMoE", new SparseMoE(C, cfg.dropout, moe, init));
  }

  forward(x: tf.Tensor3D, ctx: ForwardContext, cache?: KVCache): tf.Tensor3D {
    const h = tf.add(x, this.attn.forward(this.ln1.forward(x) as tf.Tensor3D, ctx, cache)); // (B, T, C)
    const n = this.ln2.forward(h); // (B, T, C)
    const base = this.cfg.residual === "pre_norm" ? h : n; // the original adds to the normalised stream
    return tf.add(base, this.sparseMoE.forward(n, ctx)) as tf.Tensor3D; // (B, T, C)
  }
}

/** The decoder with SparseMoEBlocks (saved as `sparseMoEBlocks.{i}`); everything else as seemore's. */
export class MoEDecoderLanguageModel extends DecoderLanguageModel {
  constructor(cfg: ModelConfig, moe: MoEOptions, init: Initialiser) {
    super(cfg, init, { blocks: { name: "sparseMoEBlocks", make: () => new SparseMoEBlock(cfg, moe, init) } });
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
    return new MoEDecoderLanguageModel(c, {
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

  /** The mean over layers of the last training forward's Switch balance loss (aux_loss_coef > 0), or null. */
  override auxLoss(): tf.Scalar | null {
    const aux = this.moeLayers.flatMap((m) => (m.lastAuxLoss ? [m.lastAuxLoss] : []));
    for (const m of this.moeLayers) m.lastAuxLoss = null;
    return aux.length ? tf.div(tf.addN(aux), aux.length) as tf.Scalar : null;
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
  model.loadStateDict(state);
}
