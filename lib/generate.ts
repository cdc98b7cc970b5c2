// Caption generation with a KV cache.
//
// The image is encoded once; the visual tokens and the prompt go through the decoder in one pass
// that fills each layer's key/value cache; after that every new character costs one position's work.
// The result is exactly what recomputing the whole sequence each step would give (tested).
//
// Sampling: greedy (argmax), or temperature with optional top-k and top-p (nucleus) filtering.
// Generation stops at max tokens, or for a row when it emits <pad> (the end-of-caption symbol).
//
// Each new token needs the last logits on the host. The loop is written once as a readback generator
// (lib/readback.ts): generate() reads synchronously (cpu, wasm), generateAsync() with `await data()`,
// which every backend supports and WebGPU under Deno requires.

import * as tf from "@tensorflow/tfjs";
import type { KVCache } from "./model/attention.ts";
import { Block } from "./model/block.ts";
import type { DecoderBlock, DecoderLanguageModel } from "./model/decoder.ts";
import { SparseMoEBlock } from "./model/moe.ts";
import { ForwardContext, type Module, readData } from "./model/module.ts";
import type { VisionLanguageModel } from "./model/vision_language_model.ts";
import { LAYER_NORM_EPS } from "./ops/layer_norm.ts";
import {
  backendExtras,
  type DecoderKind,
  type DecoderStep,
  type DecoderStepDims,
  type DecoderStepKernel,
} from "./ops/registry.ts";
import { mulberry32 } from "./random.ts";
import { readAsync, type Readback, readSync } from "./readback.ts";

export interface SampleOptions {
  greedy?: boolean; // default true
  temperature?: number; // default 1
  topK?: number; // keep the k most likely symbols (0 = all)
  topP?: number; // keep the smallest set whose probability reaches p (1 = all)
  seed?: number;
}

export interface GenerateOptions extends SampleOptions {
  maxNewTokens: number;
  prompt?: number[]; // token ids every row starts with (may be empty)
}

/** Picks a token id from one row of logits. */
export function sampleToken(logits: Float32Array, opts: SampleOptions, rand: () => number): number {
  if (opts.greedy ?? true) return argmax(logits);
  const t = opts.temperature ?? 1;
  if (!(t > 0)) throw new Error(`temperature must be > 0 (got ${t}); use greedy decoding for t = 0`);
  const maxLogit = Math.max(...logits);
  let items = Array.from(logits, (l, id) => ({ id, p: Math.exp((l - maxLogit) / t) }));
  items.sort((a, b) => b.p - a.p);
  if (opts.topK && opts.topK > 0) items = items.slice(0, opts.topK);
  normalise(items);
  if (opts.topP !== undefined && opts.topP < 1) {
    let mass = 0;
    const kept = [];
    for (const it of items) {
      kept.push(it);
      mass += it.p;
      if (mass >= opts.topP) break;
    }
    items = kept;
    normalise(items);
  }
  let r = rand();
  for (const it of items) {
    r -= it.p;
    if (r <= 0) return it.id;
  }
  return items[items.length - 1].id;
}

function normalise(items: { p: number }[]): void {
  const total = items.reduce((s, it) => s + it.p, 0);
  for (const it of items) it.p /= total;
}

function argmax(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

/**
 * Generates up to `maxNewTokens` ids for each image (B, 3, S, S). Returns, per row, the new ids
 * (without the prompt), cut before the first <pad>. Reads synchronously: cpu and wasm backends.
 */
export function generate(model: VisionLanguageModel, images: tf.Tensor4D, opts: GenerateOptions): number[][] {
  return readSync(generation(model, images, opts));
}

/** generate() on any backend (WebGPU included): each step's logits are read with `await data()`. */
export function generateAsync(
  model: VisionLanguageModel,
  images: tf.Tensor4D,
  opts: GenerateOptions,
): Promise<number[][]> {
  return readAsync(generation(model, images, opts));
}

/** The generation loop, yielding each step's logits to be read. */
export function* generation(
  model: VisionLanguageModel,
  images: tf.Tensor4D,
  opts: GenerateOptions,
): Readback<number[][]> {
  const B = images.shape[0];
  const pad = model.config.vocab_size - 1;
  const prompt = opts.prompt ?? [];
  const rand = mulberry32(opts.seed ?? 0);
  const out: number[][] = Array.from({ length: B }, () => []);
  const done = new Array<boolean>(B).fill(false);
  const stepper = KernelStepper.create(model, images, prompt, opts.maxNewTokens) ??
    new TfjsStepper(model, images, prompt);
  try {
    let rows = yield* stepper.start(); // logits (B, vocab) after the visual tokens and the prompt
    let position = model.numVisualTokens + prompt.length;
    for (let step = 0; step < opts.maxNewTokens; step++) {
      const next = rows.map((row, b) => done[b] ? pad : sampleToken(row, opts, rand));
      next.forEach((id, b) => {
        if (done[b]) return;
        if (id === pad) done[b] = true;
        else out[b].push(id);
      });
      if (done.every((d) => d) || step === opts.maxNewTokens - 1) break;
      rows = yield* stepper.next(next, position);
      position += 1;
    }
  } finally {
    stepper.dispose();
  }
  return out;
}

/**
 * Runs the decoder for generate(): each call gives the logits (one row per image) of the last position,
 * yielding whatever it needs read back.
 */
export interface Stepper {
  /** The visual tokens and the prompt, all at once. */
  start(): Readback<Float32Array[]>;
  /** One new id per row, at `position`. */
  next(ids: number[], position: number): Readback<Float32Array[]>;
  dispose(): void;
}

/** Through tfjs, with a KV cache per block (any model, any backend). */
class TfjsStepper implements Stepper {
  private readonly ctx = ForwardContext.eval();
  private readonly caches: KVCache[];

  constructor(readonly model: VisionLanguageModel, readonly images: tf.Tensor4D, readonly prompt: number[]) {
    this.caches = model.decoder.blocks.map(() => ({ k: null, v: null }));
  }

  *start(): Readback<Float32Array[]> {
    const { model, images, prompt, ctx } = this;
    const B = images.shape[0];
    return splitRows(
      yield tf.tidy(() => {
        const visual = model.visualTokens(images, ctx); // (B, V, C)
        let x = visual;
        if (prompt.length > 0) {
          const ids = tf.tensor2d(Array.from({ length: B }, () => prompt), [B, prompt.length], "int32");
          x = tf.concat([visual, model.decoder.embedTokens(ids)], 1) as tf.Tensor3D; // (B, V+P, C)
        }
        return lastPosition(model.decoder.decode(x, 0, ctx, this.caches)); // (B, vocab)
      }),
      B,
    );
  }

  *next(ids: number[], position: number): Readback<Float32Array[]> {
    const decoder = this.model.decoder;
    return splitRows(
      yield tf.tidy(() => {
        const x = decoder.embedTokens(tf.tensor2d(ids, [ids.length, 1], "int32")); // (B, 1, C)
        return lastPosition(decoder.decode(x, position, this.ctx, this.caches)); // (B, vocab)
      }),
      ids.length,
    );
  }

  dispose(): void {
    for (const c of this.caches) tf.dispose([c.k!, c.v!].filter(Boolean));
  }
}

/**
 * The decoder as one kernel call per position (the backend's decoder step: lib/blas on the fast CPU
 * path), its parameters read in place; the image still goes through the ViT and the projector as ops.
 * Only where the backend offers the step for the decoder's kind: seemore's (GELU feed-forward blocks) or
 * seeMoE's (evaluation's routing: no router noise, no expert capacity).
 */
export class KernelStepper implements Stepper {
  private readonly cache: Float32Array;
  private readonly logits: Float32Array;
  private readonly tokenTable: Float32Array;

  private constructor(
    readonly model: VisionLanguageModel,
    readonly images: tf.Tensor4D,
    readonly prompt: number[],
    readonly dims: DecoderStepDims,
    private readonly run: DecoderStep,
    cacheSize: number,
  ) {
    this.cache = new Float32Array(cacheSize);
    this.logits = new Float32Array(dims.batch * dims.vocab);
    this.tokenTable = readData(model.decoder.tokenEmbedding.weight);
  }

  static create(
    model: VisionLanguageModel,
    images: tf.Tensor4D,
    prompt: number[],
    maxNewTokens: number,
  ): KernelStepper | null {
    const kind = stepKind(model);
    const kernel = kind && backendExtras().decoderSteps?.[kind];
    if (!kind || !kernel) return null;
    const blocks = model.decoder.blocks as (Block | SparseMoEBlock)[];
    const attn = blocks[0].attn, cfg = model.config;
    // Cache room for every position this generation can reach (the last new token is not fed back).
    const positions = model.numVisualTokens + prompt.length + Math.max(0, maxNewTokens - 1);
    const dims: DecoderStepDims = {
      batch: images.shape[0],
      width: cfg.n_embd,
      heads: attn.numHeads,
      layers: blocks.length,
      vocab: cfg.vocab_size,
      positions: cfg.block_positions,
      cached: Math.min(Math.max(1, positions), cfg.block_positions),
      scale: attn.scale,
      eps: LAYER_NORM_EPS,
      preNorm: cfg.residual === "pre_norm",
      experts: kind === "moe" ? cfg.num_experts : 0,
      topK: kind === "moe" ? cfg.top_k : 0,
    };
    const run = kernel.bind(stepWeights(model.decoder, kernel.layout), dims);
    return new KernelStepper(model, images, prompt, dims, run, kernel.cacheSize(dims));
  }

  *start(): Readback<Float32Array[]> {
    const { model, images, prompt } = this;
    const [B, V, C] = [images.shape[0], model.numVisualTokens, this.dims.width];
    const tokens = yield tf.tidy(() => model.visualTokens(images, ForwardContext.eval())); // (B, V, C)
    let logits: Float32Array = new Float32Array(0);
    for (let v = 0; v < V; v++) {
      const x = new Float32Array(B * C); // (B, C): visual token v of every row
      for (let b = 0; b < B; b++) x.set(tokens.subarray((b * V + v) * C, (b * V + v + 1) * C), b * C);
      logits = this.step(x, v);
    }
    prompt.forEach((id, j) => {
      logits = this.step(this.embed(new Array(B).fill(id)), V + j);
    });
    return splitRows(logits, B);
  }

  // deno-lint-ignore require-yield
  *next(ids: number[], position: number): Readback<Float32Array[]> {
    return splitRows(this.step(this.embed(ids), position), ids.length); // computed on the host: nothing to read
  }

  dispose(): void {}

  /** Token embeddings of one id per row → (B, C). */
  private embed(ids: number[]): Float32Array {
    const C = this.dims.width, table = this.tokenTable;
    const x = new Float32Array(ids.length * C);
    ids.forEach((id, b) => x.set(table.subarray(id * C, (id + 1) * C), b * C));
    return x;
  }

  /** Inputs x (B, C) at `position` → logits (B, vocab), a fresh copy. */
  private step(x: Float32Array, position: number): Float32Array {
    this.model.decoder.checkPositions(position, 1);
    this.run(x, this.cache, this.logits, position);
    return this.logits.slice();
  }
}

/**
 * Which decoder step runs this model's decoder: seemore's blocks (GELU feed-forward), or seeMoE's routed
 * the way evaluation routes (the step has no router noise and no expert capacity); else none.
 */
function stepKind(model: VisionLanguageModel): DecoderKind | null {
  const blocks = model.decoder.blocks, cfg = model.config;
  if (blocks.length === 0) return null;
  if (blocks.every((b) => b instanceof Block && b.cfg.ffn !== "mlp")) return "dense";
  const evalRouting = !cfg.router_noise_in_eval && cfg.capacity_factor === 0;
  if (evalRouting && blocks.every((b) => b instanceof SparseMoEBlock)) return "moe";
  return null;
}

/** The model's parameter behind each name of a step kernel's layout that is not its own name. */
const PARAMETER_OF: Record<string, string> = {
  "attn.qkv": "attn.heads",
  "ffn.fc1.weight": "ffn.0.weight",
  "ffn.fc1.bias": "ffn.0.bias",
  "ffn.fc2.weight": "ffn.2.weight",
  "ffn.fc2.bias": "ffn.2.bias",
  "router.weight": "sparseMoE.router.topkroute_linear.weight",
  "router.bias": "sparseMoE.router.topkroute_linear.bias",
  "fc1.weight": "net.0.weight", // an expert's
  "fc1.bias": "net.0.bias",
  "fc2.weight": "net.2.weight",
  "fc2.bias": "net.2.bias",
  "position_embedding": "position_embedding_table.weight",
};

/** The decoder's parameters in the step's order: per block its tensors then its experts', then the final ones. */
function stepWeights(decoder: DecoderLanguageModel, layout: DecoderStepKernel["layout"]): tf.Tensor[] {
  const param = (module: Module, name: string) => module.parameter(PARAMETER_OF[name] ?? name);
  const experts = (block: DecoderBlock) => block instanceof SparseMoEBlock ? block.sparseMoE.experts : [];
  return [
    ...decoder.blocks.flatMap((block) => [
      ...layout.block.map((name) => param(block, name)),
      ...experts(block).flatMap((expert) => layout.expert.map((name) => param(expert, name))),
    ]),
    ...layout.final.map((name) => param(decoder, name)),
  ];
}

/** (B × vocab) values → B rows. */
function splitRows(data: Float32Array, B: number): Float32Array[] {
  const V = data.length / B;
  return Array.from({ length: B }, (_, b) => data.subarray(b * V, (b + 1) * V));
}

/** logits (B, T, vocab) → the last position's (B, vocab). */
function lastPosition(logits: tf.Tensor3D): tf.Tensor2D {
  const [B, T, V] = logits.shape;
  return tf.reshape(tf.slice(logits, [0, T - 1, 0], [B, 1, V]), [B, V]);
}
