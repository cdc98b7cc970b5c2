// Speed and memory of one configuration (the original's, unless flags say otherwise):
//   deno task bench [--backend B] [--model seemore|seemoe] [--size original|tiny] [--batch N]
//                   [--steps N] [--threads N] [--profile] [--layers] [--json]
//   deno task bench --compare-original [--rounds 7] [--repeat 2] [--torch-threads 1,2]
//                   [--torch-device auto|cpu|cuda] [...the flags above]
//
// Train step (forward, backward, Adam) and forward (eval mode): medians of --steps timed runs after
// warm-up, each until its result is on the host (read asynchronously, which every backend supports:
// on a GPU the time then includes the device's work, not only the queueing of it). Generation: one image, 40 new tokens, greedy, with the KV cache. Peak RSS: this process's
// high-water mark (VmHWM). --profile adds the per-kernel time profile of one train step (top 10);
// --layers runs the transformer blocks layer by layer instead of as one C kernel each way (the profile
// then shows what is inside them).
//
// --compare-original also runs the ORIGINAL PyTorch model (bench/original_step.py under Debian's
// /usr/bin/python3) on the same batch shapes, in a child process, alternating with ours round by round
// (ours, then theirs: the two never run at once; each figure the best of --repeat runs), and prints
// both medians and ours/original, the median of the rounds' ratios (each pair ran seconds apart under
// the same load, which the medians of a busy machine do not). Torch's thread counts (--torch-threads)
// are first probed on the train step; the original is then timed at every count within 30% of the
// best, and each figure is compared with its best count. Without torch it says how to install it and
// reports our figures alone. --torch-device: where the original runs; auto is its own choice (CUDA when
// torch sees a GPU), and on CUDA the thread counts are not probed.

import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { type BackendInfo, initBackend } from "../lib/backend.ts";
import { startBackend } from "../lib/fast_path.ts";
import { activeBlas, setKernelThreads } from "../lib/blas/kernels.ts";
import { KERNELS } from "../lib/ops/registry.ts";
import type { AdapterSummary } from "../lib/webgpu/adapter.ts";
import { DEFAULT_MODEL, DEFAULT_TRAIN, type ModelConfig, type ModelType } from "../lib/config.ts";
import { generateAsync } from "../lib/generate.ts";
import { buildModel } from "../lib/model/factory.ts";
import { ForwardContext } from "../lib/model/module.ts";
import { captionLoss } from "../lib/objective.ts";
import type { VisionLanguageModel } from "../lib/model/vision_language_model.ts";
import { Adam } from "../lib/optim.ts";
import { OriginalProcess, type OriginalReady, TORCH_DEVICES, type TorchDevice } from "./original.ts";
import { formatProfile, type KernelProfile, profileKernels } from "./profile.ts";

const USAGE = `deno task bench [--backend B] [--model seemore|seemoe] [--size original|tiny] [--batch N]
                [--steps N] [--threads N] [--profile] [--layers] [--json]
deno task bench --compare-original [--rounds 7] [--repeat 2] [--torch-threads 1,2]
                [--torch-device auto|cpu|cuda] [...the flags above]

Times our train step, forward pass and 40-token generation on the original's configuration (or --size tiny),
and reports the peak RSS; --compare-original runs the original PyTorch model beside it, round by round, on
the same batch shapes (--batch, --size). --torch-device: where the original runs (auto: CUDA when torch sees
a GPU, else the CPU). On a GPU machine, ours on the GPU against the original on the same GPU:
  deno task bench --backend webgpu --batch 128 --compare-original --json
See bench/README.md.`;

export const GENERATE_TOKENS = 40;
/** Generation runs per figure: each takes tens of ms, so a median of a few swings with the machine's noise. */
const GENERATE_RUNS = 15;
const VOCAB = 66; // the original's: 65 characters of input.txt + <pad>

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Peak resident memory in MiB (Linux VmHWM; elsewhere the current RSS). */
export function peakRssMiB(): number {
  try {
    const status = Deno.readTextFileSync("/proc/self/status");
    const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1]);
    if (kb) return kb / 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss / 2 ** 20;
}

async function time(f: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

// ---------------------------------------------------------------------------------------------
// Configurations

export type BenchSize = "original" | "tiny";

export interface BenchOptions {
  backend?: string;
  model?: string;
  size?: BenchSize;
  batch?: number;
  steps?: number;
  threads?: number;
  /** Blocks layer by layer: without the whole-block kernel (lib/ops/block.ts transformerBlock()). */
  layers?: boolean;
}

/** The shapes one benchmark runs: the original's config, or a tiny one for tests of this file. */
export function benchShapes(
  size: BenchSize,
  model: string,
): { config: ModelConfig; batch: number; caption: number } {
  if (model !== "seemore" && model !== "seemoe") {
    throw new Error(`--model must be seemore or seemoe, got "${model}"`);
  }
  const base = { ...DEFAULT_MODEL, model_type: model as ModelType, vocab_size: VOCAB };
  if (size === "original") return { config: base, batch: DEFAULT_TRAIN.batch_size, caption: 49 };
  if (size === "tiny") {
    const tiny = {
      n_embd: 16,
      image_embed_dim: 32,
      n_head: 2,
      n_layer: 1,
      num_blks: 1,
      img_size: 32,
      num_experts: 4,
    };
    return { config: { ...base, ...tiny }, batch: 2, caption: 8 };
  }
  throw new Error(`--size must be original or tiny, got "${size}"`);
}

/**
 * FLOPs of the matmuls in one forward pass. With `clsOnly` the ViT's last block is counted as our fast
 * path runs it when only the CLS token leaves the encoder (lib/blas/c/first_attention.c): one
 * row's query, its key and value products moved onto that row (a = q Wk^T per head, then x Wv after
 * the weighted sum), scores and weighted sums over every row per head, and one row through the
 * projection and MLP. Without, as the original runs it (every row).
 */
export function forwardFlops(c: ModelConfig, B: number, T: number, clsOnly = false): number {
  const np = (c.img_size / c.patch_size) ** 2;
  const D = c.image_embed_dim, C = c.n_embd, N = np + 1, L = T + 1;
  const fullBlock = 2 * B * N * D * (3 * D + D + 8 * D) + 4 * B * N * N * D;
  const shortcut = clsOnly && c.visual_tokens === "cls" && c.num_blks > 0;
  const lastBlock = shortcut ? 2 * B * D * (3 * D + D + 8 * D) + 4 * B * c.n_head * N * D : fullBlock;
  const vit = patchFlops(c, B) + (c.num_blks > 0 ? (c.num_blks - 1) * fullBlock + lastBlock : 0);
  const proj = 2 * B * (D * 4 * D + 4 * D * C);
  const ffn = c.model_type === "seemoe" ? c.top_k * 8 * C : 8 * C;
  const dec = c.n_layer * (2 * B * L * C * (4 * C) + 2 * B * L * ffn * C + 4 * B * L * L * C);
  return vit + proj + dec + 2 * B * L * C * c.vocab_size;
}

/** The patch embedding's matmul FLOPs (its input, the pixels, needs no gradient). */
function patchFlops(c: ModelConfig, B: number): number {
  const np = (c.img_size / c.patch_size) ** 2;
  return 2 * B * np * 3 * c.patch_size ** 2 * c.image_embed_dim;
}

/** FLOPs of the matmuls in one train step: forward, then each product's two gradients (one for the patch embedding). */
export function trainFlops(c: ModelConfig, B: number, T: number, clsOnly = false): number {
  return 3 * forwardFlops(c, B, T, clsOnly) - patchFlops(c, B);
}

// ---------------------------------------------------------------------------------------------
// Our model, ready to time

/** One model, its optimizer and a fixed random batch; each method runs and times one thing. */
export class OurModel {
  private step = 0;
  private constructor(
    readonly model: VisionLanguageModel,
    readonly opt: Adam,
    readonly images: tf.Tensor4D,
    readonly idx: tf.Tensor2D,
    readonly targets: tf.Tensor2D,
    readonly oneImage: tf.Tensor4D,
  ) {}

  static create(config: ModelConfig, batch: number, caption: number): OurModel {
    const model = buildModel(config, 1);
    const opt = new Adam(model.variables(), 1e-3);
    const S = config.img_size;
    const images = tf.randomNormal([batch, 3, S, S], 0, 1, "float32", 1) as tf.Tensor4D; // (B, 3, S, S)
    const idx = tf.randomUniform([batch, caption], 0, VOCAB - 1, "int32", 2) as tf.Tensor2D; // (B, T)
    const targets = tf.randomUniform([batch, caption], 0, VOCAB, "int32", 3) as tf.Tensor2D; // (B, T)
    const oneImage = tf.slice(images, [0, 0, 0, 0], [1, -1, -1, -1]) as tf.Tensor4D; // (1, 3, S, S)
    neverPad(model);
    return new OurModel(model, opt, images, idx, targets, oneImage);
  }

  /** One Adam step on the batch (dropout on); returns milliseconds. */
  train(): Promise<number> {
    const step = this.step++;
    return time(async () => {
      const loss = this.opt.minimize(() =>
        captionLoss(
          this.model,
          this.images,
          this.idx,
          this.targets,
          new ForwardContext(true, 1, step),
          "first",
        )
      );
      await loss.data();
      loss.dispose();
    });
  }

  /** Logits of the batch in eval mode; returns milliseconds. */
  forward(): Promise<number> {
    return time(async () => {
      const logits = tf.tidy(() => this.model.forward(this.images, this.idx, ForwardContext.eval()));
      await logits.data();
      logits.dispose();
    });
  }

  /** 40 new tokens for one image (greedy, KV cache); returns milliseconds and how many were made. */
  async generate(): Promise<{ ms: number; tokens: number }> {
    let tokens = 0;
    const ms = await time(async () => {
      const ids = await generateAsync(this.model, this.oneImage, {
        maxNewTokens: GENERATE_TOKENS,
        prompt: [0],
      });
      tokens = ids[0].length;
    });
    return { ms, tokens };
  }

  dispose(): void {
    tf.dispose([this.images, this.idx, this.targets, this.oneImage]);
    this.opt.dispose();
    this.model.dispose();
  }
}

/**
 * Makes the (random) benchmark model never pick <pad>, so that generation always makes all 40
 * tokens: <pad> ends a caption early. Only one bias value changes; the work per token does not.
 */
function neverPad(model: VisionLanguageModel): void {
  const bias = model.decoder.lmHead.bias;
  if (!bias) return;
  const values = bias.dataSync().slice() as Float32Array;
  values[values.length - 1] = -1e4; // <pad> is the last id
  tf.tidy(() => bias.assign(tf.tensor1d(values)));
}

// ---------------------------------------------------------------------------------------------
// Our figures alone

export interface BenchResult {
  backend: string;
  backend_notes: string[];
  /** webgpu: the adapter ("description", vendor, architecture, whether it is a software one); else null. */
  adapter: AdapterSummary | null;
  blas_threads: number | null;
  model_type: string;
  size: BenchSize;
  batch_size: number;
  caption_length: number;
  train_step_ms: number;
  forward_ms: number;
  generate_ms: number;
  generate_tokens: number;
  generate_tokens_per_s: number;
  peak_rss_mib: number;
  /** Our step's matmul FLOPs (the ViT's last block for the CLS row only), and the original's. */
  train_step_gflop: number;
  original_step_gflop: number;
  train_gflop_per_s: number;
  profile?: KernelProfile;
}

interface Prepared {
  ours: OurModel;
  info: BackendInfo;
  config: ModelConfig;
  batch: number;
  caption: number;
  size: BenchSize;
}

async function prepare(opts: BenchOptions): Promise<Prepared> {
  const info = await initBackend(opts.backend);
  if (opts.layers && tf.getKernel(KERNELS.block, tf.getBackend())) {
    tf.unregisterKernel(KERNELS.block, tf.getBackend()); // Block.forward then runs its layers' kernels
  }
  if (opts.threads !== undefined) {
    if (!activeBlas()) throw new Error("--threads: OpenBLAS is not in use on this backend");
    setKernelThreads(opts.threads);
  }
  const size = opts.size ?? "original";
  const shapes = benchShapes(size, opts.model ?? "seemore");
  const batch = opts.batch ?? shapes.batch;
  const ours = OurModel.create(shapes.config, batch, shapes.caption);
  // Warm-up: kernels (and shaders) compiled, the wasm heap grown to its working size.
  await ours.train();
  await ours.train();
  await ours.forward();
  await ours.generate();
  return { ours, info, config: shapes.config, batch, caption: shapes.caption, size };
}

function resultOf(
  p: Prepared,
  train: number[],
  forward: number[],
  gen: { ms: number; tokens: number }[],
): BenchResult {
  const trainMs = median(train);
  const genMs = median(gen.map((g) => g.ms));
  const tokens = Math.min(...gen.map((g) => g.tokens));
  const gflop = trainFlops(p.config, p.batch, p.caption, true) / 1e9;
  return {
    backend: p.info.name,
    backend_notes: p.info.notes,
    adapter: p.info.adapter ?? null,
    blas_threads: activeBlas()?.numThreads() ?? null,
    model_type: p.config.model_type,
    size: p.size,
    batch_size: p.batch,
    caption_length: p.caption,
    train_step_ms: trainMs,
    forward_ms: median(forward),
    generate_ms: genMs,
    generate_tokens: tokens,
    generate_tokens_per_s: tokens / (genMs / 1000),
    peak_rss_mib: peakRssMiB(),
    train_step_gflop: gflop,
    original_step_gflop: trainFlops(p.config, p.batch, p.caption) / 1e9,
    train_gflop_per_s: gflop / (trainMs / 1000),
  };
}

/** `n` results of f, run one after another. */
async function repeatRuns<T>(n: number, f: () => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < n; i++) out.push(await f());
  return out;
}

/** Our figures: medians of `steps` runs of the train step and the forward pass, of GENERATE_RUNS generations. */
export async function bench(opts: BenchOptions & { profile?: boolean } = {}): Promise<BenchResult> {
  const p = await prepare(opts);
  const steps = opts.steps ?? 10;
  const train = await repeatRuns(steps, () => p.ours.train());
  const forward = await repeatRuns(steps, () => p.ours.forward());
  const gen = await repeatRuns(GENERATE_RUNS, () => p.ours.generate());
  const result = resultOf(p, train, forward, gen);
  if (opts.profile) result.profile = await profileKernels(() => p.ours.train());
  p.ours.dispose();
  return result;
}

// ---------------------------------------------------------------------------------------------
// Side by side with the original

export interface OriginalFigures {
  torch: string;
  default_threads: number;
  /** Where torch ran (--torch-device; auto is the original's own choice: cuda when torch sees a GPU). */
  device: "cpu" | "cuda";
  /** torch.cuda.get_device_name() on CUDA, else null. */
  gpu: string | null;
  /** The batch the original timed, as its process reports it (checked to be ours). */
  batch_size: number;
  caption_length: number;
  /** Train-step times of the thread-count probe, by thread count (empty on CUDA: not probed). */
  thread_probe_ms: Record<string, number[]>;
  /** Thread counts timed in the rounds (those within 30% of the probe's best). */
  threads_timed: number[];
  train_step_ms: number;
  train_step_threads: number;
  forward_ms: number;
  forward_threads: number;
  generate_ms: number;
  generate_threads: number;
  /** Medians at every timed thread count. */
  by_threads: Record<string, { train_step_ms: number; forward_ms: number; generate_ms: number }>;
  /** Every round's figure (ms) at every timed thread count. */
  by_threads_rounds: Record<string, { train: number[]; forward: number[]; generate: number[] }>;
  peak_rss_mib: number;
  /** torch.cuda.max_memory_allocated in MiB on CUDA, else null. */
  peak_cuda_mib: number | null;
}

export interface CompareResult {
  rounds: number;
  /** Each figure of a round is the best of this many back-to-back runs. */
  repeat: number;
  ours: BenchResult;
  original: OriginalFigures | null;
  original_unavailable?: string;
  /**
   * ours / original: for times the median over rounds of each round's ratio (the two were measured
   * seconds apart, under the same load); for memory the ratio of peaks. generate_speedup = 1 / generate.
   */
  ratio:
    | { train_step: number; forward: number; generate: number; generate_speedup: number; peak_rss: number }
    | null;
  /** ours' median / the original's median, for comparison with the paired ratios. */
  ratio_of_medians?: { train_step: number; forward: number; generate: number };
  /** Every round's figures (ms), ours and the original's (by thread count). */
  per_round?: {
    ours: { train: number[]; forward: number[]; generate: number[] };
    original: OriginalFigures["by_threads_rounds"];
  };
}

/**
 * Probes torch's thread counts on the train step and returns the probe's times and the counts within 30%
 * of the best (a count far slower than the best is dropped early: under load, torch's OpenMP threads spin
 * and one step can take 30 s).
 */
async function probeThreads(
  orig: OriginalProcess,
  threads: number[],
  log: (s: string) => void,
): Promise<{ probe: Map<number, number[]>; timed: number[] }> {
  const probe = new Map<number, number[]>(threads.map((t) => [t, []]));
  let fastest = Infinity;
  for (const t of threads) {
    await orig.ask(`threads ${t}`);
    const warm = (await orig.ask("train")).ms; // warm-up at this count
    // A count already twice as slow as the best is not worth a second step.
    const ms = warm > 2 * fastest ? warm : (await orig.ask("train")).ms;
    probe.get(t)!.push(ms);
    fastest = Math.min(fastest, ms);
    log(`torch ${t} thread(s): train step ${ms.toFixed(0)} ms`);
  }
  const [probeBest] = best(probe);
  return { probe, timed: threads.filter((t) => median(probe.get(t)!) <= 1.3 * probeBest) };
}

/** On CUDA torch's CPU threads only launch kernels: its default count, no probe, two warm-up steps. */
async function warmUpOnGpu(
  orig: OriginalProcess,
  threads: number,
  log: (s: string) => void,
): Promise<{ probe: Map<number, number[]>; timed: number[] }> {
  log(`torch on cuda: thread counts not probed, ${threads} thread(s)`);
  await orig.ask("train");
  await orig.ask("train");
  return { probe: new Map(), timed: [threads] };
}

/** Best (lowest) median over thread counts: [median, threads]. */
function best(byThreads: Map<number, number[]>): [number, number] {
  let out: [number, number] = [Infinity, 0];
  for (const [t, xs] of byThreads) if (xs.length && median(xs) < out[0]) out = [median(xs), t];
  return out;
}

export async function compareOriginal(
  opts: BenchOptions & {
    rounds?: number;
    repeat?: number;
    torchThreads?: number[];
    torchDevice?: TorchDevice;
    profile?: boolean;
    log?: (s: string) => void;
  },
): Promise<CompareResult> {
  const log = opts.log ?? (() => {});
  const rounds = opts.rounds ?? 7;
  const repeat = opts.repeat ?? 2;
  const threads = opts.torchThreads ?? [1, 2];
  const p = await prepare(opts);
  const started = await OriginalProcess.start({
    model: p.config.model_type,
    size: p.size,
    batch: p.batch,
    caption: p.caption,
    device: opts.torchDevice,
  });
  if (!started.ok) {
    log(`original not timed: ${started.reason}`);
    const ours = await oursAlone(p, rounds, opts.profile);
    p.ours.dispose();
    return { rounds, repeat, ours, original: null, original_unavailable: started.reason, ratio: null };
  }
  const orig = started.process;
  try {
    checkSameBatch(started, p);
    const { probe, timed } = started.device === "cpu"
      ? await probeThreads(orig, threads, log)
      : await warmUpOnGpu(orig, started.defaultThreads, log);
    await warmUpAt(orig, timed);
    const r = await alternate(p, orig, timed, rounds, repeat, log);
    const ours = resultOf(p, r.train, r.forward, r.gen);
    if (opts.profile) ours.profile = await profileKernels(() => p.ours.train());
    const original = originalFigures(started, probe, timed, r, await orig.ask("rss"));
    return { rounds, repeat, ours, original, ...ratios(ours, original, r) };
  } finally {
    await orig.close();
    p.ours.dispose();
  }
}

/** Our figures alone, one run of each per round, when the original cannot run. */
async function oursAlone(p: Prepared, rounds: number, profile?: boolean): Promise<BenchResult> {
  const train: number[] = [], forward: number[] = [], gen: { ms: number; tokens: number }[] = [];
  for (let r = 0; r < rounds; r++) {
    train.push(await p.ours.train());
    forward.push(await p.ours.forward());
    gen.push(await p.ours.generate());
  }
  const ours = resultOf(p, train, forward, gen);
  if (profile) ours.profile = await profileKernels(() => p.ours.train());
  return ours;
}

/** The original must time our batch shapes, or the ratios compare different work. */
function checkSameBatch(started: OriginalReady, p: Prepared): void {
  if (started.batch !== p.batch || started.caption !== p.caption) {
    throw new Error(
      `bench/bench.ts: the original times batch ${started.batch}, caption ${started.caption}; ` +
        `ours batch ${p.batch}, caption ${p.caption}`,
    );
  }
}

/** The original's forward and generation warmed up at every thread count to be timed. */
async function warmUpAt(orig: OriginalProcess, timed: number[]): Promise<void> {
  for (const t of timed) {
    await orig.ask(`threads ${t}`);
    await orig.ask("forward"); // warm-up
    await orig.ask("generate");
  }
}

/** What the rounds measured (ms): ours, and the original's by thread count. */
interface Rounds {
  train: number[];
  forward: number[];
  gen: { ms: number; tokens: number }[];
  oTrain: Map<number, number[]>;
  oForward: Map<number, number[]>;
  oGen: Map<number, number[]>;
}

/** `rounds` rounds of ours, then the original at each timed thread count: train step, forward, generation. */
async function alternate(
  p: Prepared,
  orig: OriginalProcess,
  timed: number[],
  rounds: number,
  repeat: number,
  log: (s: string) => void,
): Promise<Rounds> {
  const byThreads = () => new Map<number, number[]>(timed.map((t) => [t, []]));
  const r: Rounds = {
    train: [],
    forward: [],
    gen: [],
    oTrain: byThreads(),
    oForward: byThreads(),
    oGen: byThreads(),
  };
  const theirs = (command: string, t: number) => bestOfOriginal(orig, command, t, repeat);
  for (let i = 0; i < rounds; i++) {
    r.train.push(Math.min(...await repeatRuns(repeat, () => p.ours.train())));
    for (const t of timed) r.oTrain.get(t)!.push(await theirs("train", t));
    r.forward.push(Math.min(...await repeatRuns(repeat, () => p.ours.forward())));
    for (const t of timed) r.oForward.get(t)!.push(await theirs("forward", t));
    const gens = await repeatRuns(repeat, () => p.ours.generate());
    r.gen.push(gens.reduce((a, b) => (b.ms < a.ms ? b : a)));
    for (const t of timed) r.oGen.get(t)!.push(await theirs("generate", t));
    log(roundLine(r, i, rounds, timed));
  }
  return r;
}

/**
 * The original's `command` at `threads` threads: the best of `repeat` back-to-back runs (another
 * process's burst slows one run, rarely all of them).
 */
async function bestOfOriginal(
  orig: OriginalProcess,
  command: string,
  threads: number,
  repeat: number,
): Promise<number> {
  await orig.ask(`threads ${threads}`);
  let ms = Infinity;
  for (let i = 0; i < repeat; i++) ms = Math.min(ms, (await orig.ask(command)).ms);
  return ms;
}

/** Round i's figures, ours and the original's at each thread count: train/forward/generate ms. */
function roundLine(r: Rounds, i: number, rounds: number, timed: number[]): string {
  return `round ${i + 1}/${rounds}: ours ${r.train[i].toFixed(0)}/${r.forward[i].toFixed(0)}/${
    r.gen[i].ms.toFixed(0)
  } ms, original ${
    timed.map((t) =>
      `${t}t ${r.oTrain.get(t)!.at(-1)!.toFixed(0)}/${r.oForward.get(t)!.at(-1)!.toFixed(0)}/${
        r.oGen.get(t)!.at(-1)!.toFixed(0)
      }`
    ).join(", ")
  } ms (train/forward/generate)`;
}

/** The original's figures: each at its best thread count, the medians and rounds at every count, memory. */
function originalFigures(
  started: OriginalReady,
  probe: Map<number, number[]>,
  timed: number[],
  r: Rounds,
  memory: Record<string, number>,
): OriginalFigures {
  const [trainMs, trainT] = best(r.oTrain),
    [forwardMs, forwardT] = best(r.oForward),
    [genMs, genT] = best(r.oGen);
  return {
    torch: started.torch,
    default_threads: started.defaultThreads,
    device: started.device,
    gpu: started.gpu,
    batch_size: started.batch,
    caption_length: started.caption,
    thread_probe_ms: Object.fromEntries([...probe].map(([t, xs]) => [String(t), xs])),
    threads_timed: timed,
    train_step_ms: trainMs,
    train_step_threads: trainT,
    forward_ms: forwardMs,
    forward_threads: forwardT,
    generate_ms: genMs,
    generate_threads: genT,
    by_threads: Object.fromEntries(timed.map((t) => [String(t), {
      train_step_ms: median(r.oTrain.get(t)!),
      forward_ms: median(r.oForward.get(t)!),
      generate_ms: median(r.oGen.get(t)!),
    }])),
    by_threads_rounds: Object.fromEntries(timed.map((t) => [String(t), {
      train: r.oTrain.get(t)!,
      forward: r.oForward.get(t)!,
      generate: r.oGen.get(t)!,
    }])),
    peak_rss_mib: memory.peak_rss_mib,
    peak_cuda_mib: memory.peak_cuda_mib ?? null,
  };
}

/** Ours / the original's: paired by round at its best thread counts, the ratio of medians, every round. */
function ratios(ours: BenchResult, g: OriginalFigures, r: Rounds) {
  const paired = (mine: number[], other: number[]) => median(mine.map((x, i) => x / other[i]));
  const genOurs = r.gen.map((x) => x.ms);
  const generateRatio = paired(genOurs, r.oGen.get(g.generate_threads)!);
  const ratio = {
    train_step: paired(r.train, r.oTrain.get(g.train_step_threads)!),
    forward: paired(r.forward, r.oForward.get(g.forward_threads)!),
    generate: generateRatio,
    generate_speedup: 1 / generateRatio,
    peak_rss: ours.peak_rss_mib / g.peak_rss_mib,
  };
  const ratioOfMedians = {
    train_step: ours.train_step_ms / g.train_step_ms,
    forward: ours.forward_ms / g.forward_ms,
    generate: ours.generate_ms / g.generate_ms,
  };
  const perRound = {
    ours: { train: r.train, forward: r.forward, generate: genOurs },
    original: g.by_threads_rounds,
  };
  return { ratio, ratio_of_medians: ratioOfMedians, per_round: perRound };
}

// ---------------------------------------------------------------------------------------------
// Printing

function describeOurs(r: BenchResult): string[] {
  const threads = r.blas_threads ? `, OpenBLAS ${r.blas_threads} thread(s)` : "";
  const adapter = r.adapter
    ? [`adapter ${r.adapter.description || r.adapter.vendor}${r.adapter.software ? " (software)" : ""}`]
    : [];
  return [
    `backend ${r.backend}${threads}${r.backend_notes.length ? ` (${r.backend_notes.join("; ")})` : ""}`,
    `model ${r.model_type} (${r.size} config), batch ${r.batch_size}, caption ${r.caption_length} characters`,
    ...adapter,
  ];
}

function printBench(r: BenchResult): void {
  console.log(describeOurs(r).join("\n"));
  console.log(
    `train step      ${r.train_step_ms.toFixed(1)} ms (median)  ≈ ${
      r.train_gflop_per_s.toFixed(1)
    } GFLOP/s of ${r.train_step_gflop.toFixed(1)} GFLOP (the original's step: ${
      r.original_step_gflop.toFixed(1)
    })`,
  );
  console.log(`forward         ${r.forward_ms.toFixed(1)} ms (median)`);
  console.log(
    `generate        ${r.generate_ms.toFixed(1)} ms for ${r.generate_tokens} tokens = ${
      r.generate_tokens_per_s.toFixed(1)
    } tokens/s (batch 1, greedy, KV cache)`,
  );
  console.log(`peak RSS        ${r.peak_rss_mib.toFixed(0)} MiB`);
  if (r.profile) console.log(formatProfile(r.profile, 10));
}

function printCompare(c: CompareResult): void {
  const o = c.ours;
  console.log(describeOurs(o).join("\n"));
  if (!c.original || !c.ratio) {
    console.log(`original PyTorch not timed: ${c.original_unavailable}`);
    printBench(o);
    return;
  }
  const g = c.original;
  const onGpu = g.device === "cuda";
  const probe = Object.entries(g.thread_probe_ms)
    .map(([t, xs]) => `${t}: ${xs.map((x) => x.toFixed(0)).join(", ")}`).join("; ");
  console.log(
    `original: PyTorch ${g.torch} on ${onGpu ? `cuda (${g.gpu})` : "the CPU"}, batch ${g.batch_size}, ` +
      `caption ${g.caption_length} characters; ` +
      (onGpu
        ? `${g.default_threads} thread(s), not probed`
        : `default ${g.default_threads} thread(s); thread probe (train step ms): ${probe}; ` +
          `timed at ${g.threads_timed.join(" and ")} thread(s)`),
  );
  const at = (threads: number) => onGpu ? "cuda" : `${threads}t`;
  console.log(
    `${c.rounds} alternating rounds, each figure the best of ${c.repeat} runs; medians, and ours/original as ` +
      `the median of the rounds' ratios; original ${
        onGpu ? "on cuda" : "at its best thread count per figure"
      }\n`,
  );
  for (const line of compareTable(o, g, c.ratio, at)) console.log(line);
  if (g.peak_cuda_mib !== null) {
    console.log(
      `the original's peak CUDA memory (torch.cuda.max_memory_allocated): ${g.peak_cuda_mib.toFixed(0)} MiB`,
    );
  }
  if (c.ratio_of_medians) {
    const m = c.ratio_of_medians;
    console.log(
      `(ratios of the medians instead: train ${m.train_step.toFixed(2)}, forward ${m.forward.toFixed(2)}, ` +
        `generate ${m.generate.toFixed(3)})`,
    );
  }
  console.log(
    `\nours: ${o.train_gflop_per_s.toFixed(1)} GFLOP/s over the step's ${
      o.train_step_gflop.toFixed(1)
    } GFLOP of matmuls; the original's step: ${o.original_step_gflop.toFixed(1)} GFLOP${
      c.original ? `, ${(o.original_step_gflop / (c.original.train_step_ms / 1000)).toFixed(1)} GFLOP/s` : ""
    }`,
  );
  if (o.profile) console.log(formatProfile(o.profile, 10));
}

/** The side-by-side table: each figure ours, the original's (`at`: where it ran), ours/original, target. */
function compareTable(
  o: BenchResult,
  g: OriginalFigures,
  ratio: NonNullable<CompareResult["ratio"]>,
  at: (threads: number) => string,
): string[] {
  const rows: [string, string, string, string, string][] = [
    [
      "train step (ms)",
      o.train_step_ms.toFixed(0),
      `${g.train_step_ms.toFixed(0)} (${at(g.train_step_threads)})`,
      ratio.train_step.toFixed(2),
      "≤ 0.50",
    ],
    [
      "forward (ms)",
      o.forward_ms.toFixed(0),
      `${g.forward_ms.toFixed(0)} (${at(g.forward_threads)})`,
      ratio.forward.toFixed(2),
      "≤ 0.50",
    ],
    [
      `generate ${GENERATE_TOKENS} tok (ms)`,
      `${o.generate_ms.toFixed(0)}${
        o.generate_tokens < GENERATE_TOKENS ? ` [${o.generate_tokens} tok]` : ""
      }`,
      `${g.generate_ms.toFixed(0)} (${at(g.generate_threads)})`,
      `${ratio.generate.toFixed(3)} (${ratio.generate_speedup.toFixed(1)}x faster)`,
      "≤ 0.10",
    ],
    [
      "peak RSS (MiB)",
      o.peak_rss_mib.toFixed(0),
      g.peak_rss_mib.toFixed(0),
      ratio.peak_rss.toFixed(2),
      "≤ 500 MiB",
    ],
  ];
  const head: [string, string, string, string, string] = ["", "ours", "original", "ours/original", "target"];
  const widths = [24, 18, 14, 26, 10];
  return [head, ...rows].map((row) => row.map((cell, i) => cell.padEnd(widths[i])).join(""));
}

function parseThreads(s: string): number[] {
  const list = s.split(",").map((x) => Number(x.trim()));
  if (list.length === 0 || list.some((t) => !Number.isInteger(t) || t < 1)) {
    throw new Error(`--torch-threads must be a comma-separated list of positive integers, got "${s}"`);
  }
  return list;
}

function torchDevice(s: string | undefined): TorchDevice | undefined {
  if (s === undefined) return undefined;
  if (!(TORCH_DEVICES as readonly string[]).includes(s)) {
    throw new Error(`--torch-device must be auto, cpu or cuda, got "${s}"`);
  }
  return s as TorchDevice;
}

function positive(name: string, s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got "${s}"`);
  return n;
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      backend: { type: "string" },
      model: { type: "string" },
      size: { type: "string" },
      batch: { type: "string" },
      steps: { type: "string" },
      rounds: { type: "string" },
      threads: { type: "string" },
      "torch-threads": { type: "string" },
      "torch-device": { type: "string" },
      repeat: { type: "string" },
      "compare-original": { type: "boolean" },
      profile: { type: "boolean" },
      layers: { type: "boolean" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (v.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const torchDev = torchDevice(v["torch-device"]); // a bad value fails before anything starts
  await startBackend(v.backend); // sets the fast path up first, or says what to run (lib/fast_path.ts)
  const opts = {
    backend: v.backend,
    model: v.model,
    size: (v.size ?? "original") as BenchSize,
    batch: positive("batch", v.batch),
    steps: positive("steps", v.steps),
    threads: positive("threads", v.threads),
    profile: v.profile,
    layers: v.layers,
  };
  if (v["compare-original"]) {
    const c = await compareOriginal({
      ...opts,
      rounds: positive("rounds", v.rounds),
      repeat: positive("repeat", v.repeat),
      torchThreads: v["torch-threads"] ? parseThreads(v["torch-threads"]) : undefined,
      torchDevice: torchDev,
      log: v.json ? undefined : (s) => console.error(s),
    });
    if (v.json) console.log(JSON.stringify(c));
    else printCompare(c);
  } else {
    const r = await bench(opts);
    if (v.json) console.log(JSON.stringify(r));
    else printBench(r);
  }
}
