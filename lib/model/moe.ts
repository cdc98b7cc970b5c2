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
//   through the experts (each gathering its tokens' rows) and combine ops of lib/ops/experts.ts.
// - Beyond the original: router statistics per layer, an optional Switch-Transformer load-balancing loss
//   (`aux_loss_coef`), an optional expert capacity (`capacity_factor`).
//
// The original's main applies kaiming_normal_ to every nn.Linear weight after building the model; a seeMoE
// config without `init` does the same (initOf; lib/model/init.ts).

import * as tf from "@tensorflow/tfjs";
import { checkModelConfig, type ModelConfig } from "../config.ts";
import { type ExpertWeights, type MixtureOptions, sparseMixture, topKGates } from "../ops/experts.ts";
import { residual } from "../ops/residual.ts";
import { type KVCache, MultiHeadAttention } from "./attention.ts";
import { attentionHalf } from "./block.ts";
import { DecoderLanguageModel } from "./decoder.ts";
import { LayerNorm, Linear } from "./layers.ts";
import { TwoLayerMLP } from "./mlp.ts";
import { ForwardContext, Initialiser, Module } from "./module.ts";
import {
  readGates,
  readRoutingStats,
  type RouterStats,
  type Routing,
  routingStats,
  switchBalanceLoss,
} from "./routing.ts";
import { VisionLanguageModel } from "./vision_language_model.ts";

/** One expert: Linear(C, 4C) → ReLU → Linear(4C, C) → Dropout (saved as net.0 / net.2). */
export class Expert extends TwoLayerMLP {
  constructor(nEmbd: number, dropout: number, init: Initialiser) {
    super({ nIn: nEmbd, nHidden: 4 * nEmbd, nOut: nEmbd, activation: "relu", dropout, prefix: "net" }, init);
  }
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

  /**
   * x (N, C) → the logits (N, E) each token's top_k experts are chosen from: noisy while training (the
   * original's N(0,1)·softplus(noise_linear(x))). The choice and the gates are sparseMixture's.
   */
  forward(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const [N] = x.shape;
    const logits = this.topkrouteLinear.forward(x) as tf.Tensor2D; // (N, E)
    if (!ctx.training && !this.noiseInEval) return logits;
    const scale = tf.softplus(this.noiseLinear.forward(x)); // (N, E)
    const noise = tf.randomNormal([N, this.numExperts], 0, 1, "float32", this.noiseSeed(ctx, "noise")); // (N, E)
    return tf.add(logits, tf.mul(noise, scale)) as tf.Tensor2D;
  }

  /**
   * What the original's forward returns: gates (N, E), a softmax over each token's top_k logits (0
   * elsewhere), and the chosen experts (N, top_k). For inspection; the layer hands forward()'s logits to
   * sparseMixture, which makes the same choice.
   */
  route(x: tf.Tensor2D, ctx: ForwardContext): { gates: tf.Tensor2D; indices: tf.Tensor2D } {
    return tf.tidy(() => topKGates(this.forward(x, ctx), this.topK));
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
  /** The last training (or recorded) forward's routing, kept for its statistics (readRouterStats). */
  lastRouting: Routing | null = null;
  /** Keep the routing of evaluation forwards too (VisionMoELanguageModel.routingGates). */
  recordRouting = false;
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

  /** x (..., C) → (..., C): each token's top_k experts, weighted by the softmax over their logits. */
  forward(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    const flat = tf.reshape(x, [-1, this.nEmbd]) as tf.Tensor2D; // (N, C)
    const logits = this.router.forward(flat, ctx); // (N, E)
    const { out, chosen, kept } = this.mixture(flat, logits, this.expertNoise(ctx));
    this.lastAuxLoss = null;
    if (ctx.training || this.recordRouting) this.keepRouting(logits, chosen, kept);
    if (ctx.training && this.opts.auxLoss) this.lastAuxLoss = switchBalanceLoss(logits, chosen);
    return tf.reshape(out, x.shape); // (..., C)
  }

  /** The mixture op on flat (N, C) and its router logits (N, E), with this layer's top_k and capacity. */
  private mixture(flat: tf.Tensor2D, logits: tf.Tensor2D, noise: MixtureOptions["noise"]) {
    const o = { topK: this.opts.topK, capacity: this.capacity(flat.shape[0]), noise };
    return sparseMixture(flat, logits, this.expertWeights(), o);
  }

  /** Each expert's parameters, as the mixture op takes them. */
  private expertWeights(): ExpertWeights[] {
    return this.experts.map((e) => ({
      w1: e.fc1.weight,
      b1: e.fc1.bias!,
      w2: e.fc2.weight,
      b2: e.fc2.bias!,
    }));
  }

  /** Each expert's own dropout noise while training (none otherwise). */
  private expertNoise(ctx: ForwardContext): { rate: number; seeds: number[] } | null {
    if (!ctx.training || this.dropoutRate <= 0) return null;
    return { rate: this.dropoutRate, seeds: this.experts.map((e) => e.noiseSeed(ctx, "output")) };
  }

  private keepRouting(logits: tf.Tensor2D, chosen: tf.Tensor2D, kept: tf.Tensor2D): void {
    this.disposeRouting();
    const keep = (t: tf.Tensor2D) => tf.keep(tf.clone(t));
    this.lastRouting = { logits: keep(logits), chosen: keep(chosen), kept: keep(kept) };
  }

  private disposeRouting(): void {
    if (this.lastRouting) tf.dispose(Object.values(this.lastRouting));
    this.lastRouting = null;
  }

  override dispose(): void {
    this.disposeRouting();
    super.dispose();
  }

  /**
   * Reference for tests: EVERY expert on EVERY token, weighted by the same sparse gates (0 for experts
   * not chosen or dropped by capacity). Costs num_experts dense FFNs; the sparse forward must equal it.
   */
  forwardDense(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    const flat = tf.reshape(x, [-1, this.nEmbd]) as tf.Tensor2D; // (N, C)
    const logits = this.router.forward(flat, ctx); // (N, E)
    const { chosen, kept } = this.mixture(flat, logits, null);
    const gates = tf.mul(tf.softmax(tf.add(logits, tf.mul(tf.sub(chosen, 1), 1e9))), kept); // (N, E)
    const N = flat.shape[0];
    let out: tf.Tensor = tf.zerosLike(flat); // (N, C)
    this.experts.forEach((expert, e) => {
      out = tf.add(out, tf.mul(expert.forward(flat, ctx), tf.slice(gates, [0, e], [N, 1])));
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
    const attention = { nEmbd: C, numHeads: cfg.n_head, dropout: cfg.dropout, isDecoder: true };
    const scaleByHeadSize = cfg.attention_scale === "head";
    this.attn = this.add("attn", new MultiHeadAttention({ ...attention, scaleByHeadSize }, init));
    this.ln2 = this.add("ln2", new LayerNorm(C, init));
    this.sparseMoE = this.add("sparseMoE", new SparseMoE(C, cfg.dropout, moe, init));
  }

  forward(x: tf.Tensor3D, ctx: ForwardContext, cache?: KVCache): tf.Tensor3D {
    const h = attentionHalf(this.ln1, this.attn, x, ctx, cache); // (B, T, C): x + attn(ln1(x))
    const n = this.ln2.forward(h); // (B, T, C)
    const base = this.cfg.residual === "pre_norm" ? h : n; // the original adds to the normalised stream
    return residual(base, this.sparseMoE.forward(n, ctx)) as tf.Tensor3D; // (B, T, C)
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

/**
 * seeMoE: the ViT (with the ReLU MLP in its blocks) → projector → MoE decoder. Its Linear weights start
 * Kaiming-normal unless the config's `init` is "pytorch" (initOf).
 */
export class VisionMoELanguageModel extends VisionLanguageModel {
  constructor(config: ModelConfig, seed = 0) {
    checkModelConfig(config, "seemoe config");
    super(config, seed);
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

  /** Router statistics of each layer from the last training forward (empty before one), read synchronously. */
  routerStats(): RouterStats[] {
    return routingStats(this.routings());
  }

  /** routerStats(), read asynchronously (any backend: WebGPU reads only so). */
  readRouterStats(): Promise<RouterStats[]> {
    return readRoutingStats(this.routings());
  }

  /** Each layer's routing from its last training (or recorded) forward; layers without one left out. */
  private routings(): Routing[] {
    return this.moeLayers.flatMap((m) => (m.lastRouting ? [m.lastRouting] : []));
  }

  /**
   * The gates every MoE layer gives each token in one evaluation forward of (images, idx):
   * gates[layer][token][expert], tokens in sequence order (visual tokens, then the text), rows of all
   * images one after another; 0 for experts not chosen. Read asynchronously (any backend).
   */
  async routingGates(images: tf.Tensor4D, idx: tf.Tensor2D): Promise<number[][][]> {
    const layers = this.moeLayers;
    layers.forEach((m) => (m.recordRouting = true));
    try {
      tf.tidy(() => void this.forward(images, idx, ForwardContext.eval()));
    } finally {
      layers.forEach((m) => (m.recordRouting = false));
    }
    return await readGates(layers.map((m) => m.lastRouting!));
  }

  /** The mean over layers of the last training forward's Switch balance loss (aux_loss_coef > 0), or null. */
  override auxLoss(): tf.Scalar | null {
    const aux = this.moeLayers.flatMap((m) => (m.lastAuxLoss ? [m.lastAuxLoss] : []));
    for (const m of this.moeLayers) m.lastAuxLoss = null;
    return aux.length ? tf.div(tf.addN(aux), aux.length) as tf.Scalar : null;
  }
}
