// Caption generation with a KV cache.
//
// The image is encoded once; the visual tokens and the prompt go through the decoder in one pass
// that fills each layer's key/value cache; after that every new character costs one position's work.
// The result is exactly what recomputing the whole sequence each step would give (tested).
//
// Sampling: greedy (argmax), or temperature with optional top-k and top-p (nucleus) filtering.
// Generation stops at max tokens, or for a row when it emits <pad> (the end-of-caption symbol).

import * as tf from "@tensorflow/tfjs";
import type { KVCache } from "./model/attention.ts";
import { Ctx } from "./model/ops.ts";
import type { VisionLanguageModel } from "./model/vision_language_model.ts";
import { NativeDecoder } from "./blas/native_decoder.ts";
import { mulberry32 } from "./random.ts";

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
 * (without the prompt), cut before the first <pad>.
 */
export function generate(model: VisionLanguageModel, images: tf.Tensor4D, opts: GenerateOptions): number[][] {
  const B = images.shape[0];
  const pad = model.config.vocab_size - 1;
  const prompt = opts.prompt ?? [];
  const rand = mulberry32(opts.seed ?? 0);
  const out: number[][] = Array.from({ length: B }, () => []);
  const done = new Array<boolean>(B).fill(false);
  const stepper = NativeStepper.create(model, images, prompt, opts.maxNewTokens) ??
    new TfjsStepper(model, images, prompt);
  try {
    let rows = stepper.start(); // logits (B, vocab) after the visual tokens and the prompt
    let position = model.numVisualTokens + prompt.length;
    for (let step = 0; step < opts.maxNewTokens; step++) {
      const next = rows.map((row, b) => done[b] ? pad : sampleToken(row, opts, rand));
      next.forEach((id, b) => {
        if (done[b]) return;
        if (id === pad) done[b] = true;
        else out[b].push(id);
      });
      if (done.every((d) => d) || step === opts.maxNewTokens - 1) break;
      rows = stepper.next(next, position);
      position += 1;
    }
  } finally {
    stepper.dispose();
  }
  return out;
}

/** Runs the decoder for generate(): each call returns the logits (one row per image) of the last position. */
interface Stepper {
  /** The visual tokens and the prompt, all at once. */
  start(): Float32Array[];
  /** One new id per row, at `position`. */
  next(ids: number[], position: number): Float32Array[];
  dispose(): void;
}

/** Through tfjs, with a KV cache per block (any model, any backend). */
class TfjsStepper implements Stepper {
  private readonly ctx = Ctx.eval();
  private readonly caches: KVCache[];

  constructor(readonly model: VisionLanguageModel, readonly images: tf.Tensor4D, readonly prompt: number[]) {
    this.caches = model.decoder.blocks.map(() => ({ k: null, v: null }));
  }

  start(): Float32Array[] {
    const { model, images, prompt, ctx } = this;
    const B = images.shape[0];
    return rowsOf(tf.tidy(() => {
      const visual = model.visualTokens(images, ctx); // (B, V, C)
      let x = visual;
      if (prompt.length > 0) {
        const ids = tf.tensor2d(Array.from({ length: B }, () => prompt), [B, prompt.length], "int32");
        x = tf.concat([visual, model.decoder.embedTokens(ids)], 1) as tf.Tensor3D; // (B, V+P, C)
      }
      return lastPosition(model.decoder.run(x, 0, ctx, this.caches)); // (B, vocab)
    }));
  }

  next(ids: number[], position: number): Float32Array[] {
    const decoder = this.model.decoder;
    return rowsOf(tf.tidy(() => {
      const x = decoder.embedTokens(tf.tensor2d(ids, [ids.length, 1], "int32")); // (B, 1, C)
      return lastPosition(decoder.run(x, position, this.ctx, this.caches)); // (B, vocab)
    }));
  }

  dispose(): void {
    for (const c of this.caches) tf.dispose([c.k!, c.v!].filter(Boolean));
  }
}

/**
 * The decoder in one C call per position (lib/blas/native_decoder.ts); the image still goes through the
 * ViT and the projector in tfjs. Only where the C kernels are loaded and the decoder is seemore's.
 */
class NativeStepper implements Stepper {
  private constructor(
    readonly model: VisionLanguageModel,
    readonly images: tf.Tensor4D,
    readonly prompt: number[],
    readonly decoder: NativeDecoder,
  ) {}

  static create(
    model: VisionLanguageModel,
    images: tf.Tensor4D,
    prompt: number[],
    maxNewTokens: number,
  ): NativeStepper | null {
    // Cache room for every position this generation can reach (the last new token is not fed back).
    const positions = model.numVisualTokens + prompt.length + Math.max(0, maxNewTokens - 1);
    const decoder = NativeDecoder.create(model.decoder, images.shape[0], Math.max(1, positions));
    return decoder ? new NativeStepper(model, images, prompt, decoder) : null;
  }

  start(): Float32Array[] {
    const { model, images, prompt, decoder } = this;
    const [B, V, C] = [images.shape[0], model.numVisualTokens, decoder.dims.width];
    const ctx = Ctx.eval();
    const visual = tf.tidy(() => model.visualTokens(images, ctx)); // (B, V, C)
    const tokens = visual.dataSync() as Float32Array;
    visual.dispose();
    let logits: Float32Array = new Float32Array(0);
    for (let v = 0; v < V; v++) {
      const x = new Float32Array(B * C); // (B, C): visual token v of every row
      for (let b = 0; b < B; b++) x.set(tokens.subarray((b * V + v) * C, (b * V + v + 1) * C), b * C);
      logits = decoder.step(x, v);
    }
    prompt.forEach((id, j) => {
      logits = decoder.step(decoder.embed(new Array(B).fill(id)), V + j);
    });
    return splitRows(logits, B);
  }

  next(ids: number[], position: number): Float32Array[] {
    return splitRows(this.decoder.step(this.decoder.embed(ids), position), ids.length);
  }

  dispose(): void {}
}

/** A (B, vocab) tensor's rows as arrays; disposes it. */
function rowsOf(logits: tf.Tensor2D): Float32Array[] {
  const data = logits.dataSync() as Float32Array;
  logits.dispose();
  return splitRows(data, logits.shape[0]);
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
