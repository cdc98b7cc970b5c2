// The training loop: Adam on random batches, a validation estimate every eval_interval steps,
// metrics as a polars DataFrame, checkpoints that can be resumed.
//
// Reproducibility: the batch of step s, its dropout masks and the validation batches drawn at step s
// all come from seeds derived from (seed, s). So a run resumed from a checkpoint at step s (weights,
// optimizer moments and step count restored) follows the same loss curve as one never interrupted.
//
// With cfg.ema the run also keeps an average of the weights (lib/weight_average.ts): each save writes the
// average as the model and the training weights beside the optimizer state; after training the model
// holds the average.
//
// Faults: the run folder is saved every save_interval steps and at the end, each save one group commit
// (lib/checkpoint.ts), so a crash at any moment leaves a folder that loads and resumes. A NaN or infinite
// loss stops training with an error, and no save follows: the folder keeps the last good checkpoint.
//
// Nothing is read back inside a step, so a GPU never waits for the host: each step's loss stays a device
// tensor, read asynchronously while the next step runs (which also keeps at most two steps in flight),
// and every loss up to a step is known before that step is evaluated or saved; the next batch is built
// while the device works.

import * as tf from "@tensorflow/tfjs";
import pl from "nodejs-polars";
import { decodeSafetensors, encodeSafetensors, type NamedTensor, readCommitted } from "./checkpoint.ts";
import type { TrainConfig } from "./config.ts";
import { type Batch, BatchSampler, type ImageCaptionDataset, makeBatch } from "./data/batches.ts";
import { WordNoise } from "./data/word_noise.ts";
import { wordTargets } from "./data/caption_words.ts";
import { saveModel } from "./model_files.ts";
import { VisionMoELanguageModel } from "./model/moe.ts";
import { ForwardContext } from "./model/module.ts";
import type { VisionLanguageModel } from "./model/vision_language_model.ts";
import { captionLoss } from "./objective.ts";
import { hash32, mulberry32 } from "./random.ts";
import { type MetricRow, metricsCsv, routerStatsCsv } from "./run_log.ts";
import { Adam } from "./optim.ts";
import { ProgressBar } from "./progress.ts";
import { toHost } from "./readback.ts";
import { WeightAverage } from "./weight_average.ts";

export type { MetricRow };

export interface TrainRun {
  model: VisionLanguageModel;
  vocab: string[];
  train: ImageCaptionDataset;
  val?: ImageCaptionDataset;
  cfg: TrainConfig;
  /** Folder for the checkpoint, optimizer state and metrics (saved every save_interval steps and at the end). */
  outDir?: string;
  /** Extra keys for config.json (e.g. the data the run used). */
  extraConfig?: Record<string, unknown>;
  /** Called after every evaluation (notebooks draw their live chart from this). */
  onEval?: (row: MetricRow, all: MetricRow[]) => void;
  /** Draw a progress bar on stderr. */
  progress?: boolean;
  /** Called after every optimizer step with the steps done and the training seconds so far. */
  onStep?: (done: number, trainSeconds: number) => void;
  /** Save and stop cleanly on Ctrl-C (CLI only). */
  handleSigint?: boolean;
  /** Stop (and save) once this many seconds of training have passed. */
  timeLimitS?: number;
}

export interface TrainResult {
  metrics: MetricRow[];
  /** The same metrics as a polars DataFrame. */
  frame: pl.DataFrame;
  steps: number;
  interrupted: boolean; // stopped by Ctrl-C
  timeUp: boolean; // stopped by timeLimitS before max_iters
}

const STATE_FILE = "train_state.json";
const OPTIMIZER_FILE = "optimizer.safetensors";

/** Seeds for the three random streams of a step. */
const seeds = (seed: number, step: number) => ({
  batch: hash32(seed, step, 1),
  dropout: hash32(seed, step, 2),
  val: hash32(seed, step, 3),
  tokens: hash32(seed, step, 4),
  shift: hash32(seed, step, 5),
});

/**
 * The learning rate of step s: linear warm-up over warmup_iters steps, then constant, or with decay_lr
 * a cosine from learning_rate down to min_lr at max_iters (nanoGPT's schedule).
 */
export function learningRate(cfg: TrainConfig, step: number): number {
  if (cfg.warmup_iters > 0 && step < cfg.warmup_iters) {
    return cfg.learning_rate * (step + 1) / cfg.warmup_iters;
  }
  if (!cfg.decay_lr) return cfg.learning_rate;
  const progress = Math.min(1, (step - cfg.warmup_iters) / Math.max(1, cfg.max_iters - cfg.warmup_iters));
  return cfg.min_lr + 0.5 * (1 + Math.cos(Math.PI * progress)) * (cfg.learning_rate - cfg.min_lr);
}

/**
 * One optimizer step on one batch; returns the batch loss, read synchronously (cpu, wasm: the training
 * loop itself reads asynchronously). Leaves no tensors behind. `noise`: word noising of the batch's
 * captions (built once per run from the training captions).
 */
export function trainStep(
  model: VisionLanguageModel,
  opt: Adam,
  run: TrainRun,
  step: number,
  noise?: WordNoise,
): number {
  const loss = stepOnDevice(model, opt, run, stepBatch(model, run, step, noise));
  const value = loss.dataSync()[0];
  loss.dispose();
  return value;
}

/** A step's batch (and word-loss labels), built on the host. */
export interface StepBatch {
  step: number;
  batch: Batch;
  words?: tf.Tensor2D;
}

/** The batch of step `step`: its rows, word noise and word labels all follow from (seed, step). */
export function stepBatch(
  model: VisionLanguageModel,
  run: TrainRun,
  step: number,
  noise?: WordNoise,
): StepBatch {
  const { cfg } = run;
  const s = seeds(cfg.seed, step);
  const rows = new BatchSampler(run.train, s.batch).sampleRows(cfg.batch_size);
  const rand = mulberry32(s.tokens);
  const noised = noise ? rows.map((row) => noise.apply(run.train.tokens[row], rand)) : undefined;
  const shift = cfg.image_shift > 0 ? { max: cfg.image_shift, rand: mulberry32(s.shift) } : undefined;
  const batch = makeBatch(run.train, rows, noised, shift);
  const words = model.wordHead && cfg.word_loss > 0 ? imageWordTargets(model, run.train, rows) : undefined;
  return { step, batch, words };
}

function disposeStepBatch(b: StepBatch): void {
  tf.dispose(b.batch);
  b.words?.dispose();
}

/**
 * One optimizer step on a prepared batch (disposed here): returns the batch loss as a scalar tensor,
 * nothing read back. Leaves no other tensors behind.
 */
export function stepOnDevice(model: VisionLanguageModel, opt: Adam, run: TrainRun, b: StepBatch): tf.Scalar {
  const { cfg } = run;
  const ctx = new ForwardContext(true, seeds(cfg.seed, b.step).dropout, b.step);
  const { batch, words } = b;
  try {
    const extra = { skip: batch.skip, words, wordLoss: cfg.word_loss };
    // A parameter the loss does not use (the word head when word_loss is 0) gets a zero gradient (minimize).
    return opt.minimize(() =>
      captionLoss(model, batch.images, batch.idx, batch.targets, ctx, cfg.pad_loss, extra)
    );
  } finally {
    disposeStepBatch(b);
  }
}

/** (B, W) labels of the word loss: which of the model's image_words each row's caption holds. */
function imageWordTargets(
  model: VisionLanguageModel,
  data: ImageCaptionDataset,
  rows: number[],
): tf.Tensor2D {
  const words = model.config.image_words;
  return tf.tensor2d(wordTargets(rows.map((r) => data.captions[r]), words), [rows.length, words.length]);
}

/**
 * Mean loss over `eval_iters` validation batches (with replacement, as the original), no dropout. The
 * batch losses stay on the device until all are computed, then are read at once.
 */
export async function estimateLoss(
  model: VisionLanguageModel,
  data: ImageCaptionDataset,
  cfg: TrainConfig,
  seed: number,
): Promise<number> {
  const sampler = new BatchSampler(data, seed);
  const losses: tf.Scalar[] = [];
  try {
    for (let i = 0; i < cfg.eval_iters; i++) {
      const batch = sampler.next(cfg.val_batch_size, { replace: true });
      losses.push(
        tf.tidy(() =>
          captionLoss(model, batch.images, batch.idx, batch.targets, ForwardContext.eval(), cfg.pad_loss)
        ),
      );
      tf.dispose(batch);
    }
    const values = await tf.tidy(() => tf.stack(losses)).data();
    let total = 0;
    for (const l of values) total += l;
    return total / cfg.eval_iters;
  } finally {
    tf.dispose(losses);
  }
}

export function metricsFrame(rows: MetricRow[]): pl.DataFrame {
  return pl.DataFrame({
    step: rows.map((r) => r.step),
    train_loss: rows.map((r) => r.train_loss),
    val_loss: rows.map((r) => r.val_loss),
    elapsed_s: rows.map((r) => r.elapsed_s),
  });
}

/** Names the first parameter or training-state tensor holding NaN or ±Inf, if any: such a state is not saved. */
function nonFinite(opt: Adam, moments: NamedTensor[]): string | undefined {
  const finite = (data: ArrayLike<number>) => {
    for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return false;
    return true;
  };
  const param = opt.params.find((p) => !finite(p.dataSync() as Float32Array));
  if (param) return `parameter ${param.name}`;
  const moment = moments.find((t) => !finite(t.data));
  return moment && `training-state tensor ${moment.name}`;
}

/**
 * Writes the checkpoint (config.json + model.safetensors) and everything --resume needs, as one group:
 * a crash while saving leaves the previous save whole. Refuses weights or moments that hold NaN or ±Inf.
 * With a weight average, model.safetensors holds the average and the optimizer file the training weights.
 */
export async function saveRun(
  run: TrainRun,
  opt: Adam,
  metrics: MetricRow[],
  dir: string,
  average?: WeightAverage,
): Promise<void> {
  // Read to the host first, so that the synchronous readers below work on WebGPU.
  await toHost([...run.model.variables(), ...opt.moments(), ...(average?.tensors() ?? [])]);
  const moments = [...opt.state(), ...(average?.state() ?? [])];
  const bad = nonFinite(opt, moments);
  if (bad) throw new Error(`${dir}: not saved: ${bad} holds NaN or Inf after step ${opt.step}`);
  const enc = new TextEncoder();
  const files: [string, Uint8Array][] = [
    [OPTIMIZER_FILE, encodeSafetensors(moments)],
    [STATE_FILE, enc.encode(JSON.stringify({ step: opt.step, metrics }, null, 2) + "\n")],
    ["metrics.csv", enc.encode(metricsCsv(metrics))],
  ];
  if (metrics.some((r) => r.router)) files.push(["router.csv", enc.encode(routerStatsCsv(metrics))]);
  const save = () => saveModel(dir, run.model, run.vocab, { ...run.extraConfig, train: run.cfg }, files);
  await (average ? average.withAverage(opt.step, save) : save());
}

/**
 * Restores optimizer state and metrics saved by saveRun (the model itself is loaded by loadModel), and
 * with a weight average its running sums and the training weights. Reads through a commit that a crash
 * interrupted, as loadModel does, so both see the same save.
 */
export async function loadRunState(dir: string, opt: Adam, average?: WeightAverage): Promise<MetricRow[]> {
  const stateFile = `${dir}/${STATE_FILE}`;
  let state: { step: number; metrics: MetricRow[] };
  try {
    state = JSON.parse(new TextDecoder().decode(await readCommitted(dir, STATE_FILE)));
  } catch (e) {
    throw new Error(`${stateFile}: cannot resume from this folder (${(e as Error).message.split("\n")[0]})`);
  }
  const optFile = `${dir}/${OPTIMIZER_FILE}`;
  const tensors = decodeSafetensors(await readCommitted(dir, OPTIMIZER_FILE), optFile);
  opt.load(state.step, tensors, optFile);
  average?.load(tensors, optFile);
  return state.metrics;
}

/**
 * Trains `run.model` for cfg.max_iters optimizer steps in all (a resumed run continues its count),
 * saving to run.outDir every cfg.save_interval steps and at the end. Throws on a NaN or infinite loss,
 * naming the step, without saving. `resumeDir`: a folder written by saveRun whose weights are already
 * loaded into run.model. With cfg.ema, run.model ends holding the average of its weights.
 */
export async function train(run: TrainRun, resumeDir?: string): Promise<TrainResult> {
  const { model, cfg } = run;
  const opt = new Adam(model.variables(), cfg.learning_rate);
  const average = cfg.ema > 0 ? new WeightAverage(model.variables(), cfg.ema) : undefined;
  try {
    const result = await trainLoop(run, opt, average, resumeDir);
    if (!result.interrupted) average?.apply(opt.step);
    return result;
  } finally {
    opt.dispose();
    average?.dispose();
  }
}

async function trainLoop(
  run: TrainRun,
  opt: Adam,
  average: WeightAverage | undefined,
  resumeDir?: string,
): Promise<TrainResult> {
  const { model, cfg, outDir } = run;
  const metrics = resumeDir ? await loadRunState(resumeDir, opt, average) : [];
  let savedStep = resumeDir !== undefined && resumeDir === outDir ? opt.step : undefined; // what outDir holds
  const bar = run.progress ? new ProgressBar(cfg.max_iters) : null;
  const ctrlC = ctrlCStop(run);
  let timeUp = false;
  let trainSeconds = metrics.at(-1)?.elapsed_s ?? 0;
  const noise = wordNoise(run);
  /** Every loss up to `f`'s step, read and checked: the weights after it are fit to evaluate and save. */
  const settle = (f: InFlight) => checkedLoss(f, outDir, savedStep);
  let next = opt.step < cfg.max_iters ? stepBatch(model, run, opt.step, noise) : null;
  let previous: InFlight | null = null; // the step before the one just queued
  let shownLoss = NaN; // the progress bar's: the previous step's, read without waiting for this one
  try {
    while (next && !ctrlC.stopped && !timeUp) {
      const step = opt.step;
      const t0 = performance.now();
      opt.lr = learningRate(cfg, step);
      const current = inFlight(stepOnDevice(model, opt, run, next), opt.step); // queued, not waited for
      average?.update(opt.step);
      // While the device works: the next batch, then the previous step's loss.
      next = opt.step < cfg.max_iters ? stepBatch(model, run, opt.step, noise) : null;
      if (previous) {
        const done = previous;
        previous = null;
        shownLoss = await settleAndFree(done, settle);
      }
      previous = current;
      trainSeconds += (performance.now() - t0) / 1000;
      showProgress(bar, opt.step, shownLoss, trainSeconds);
      run.onStep?.(opt.step, trainSeconds);
      if (run.timeLimitS !== undefined && trainSeconds >= run.timeLimitS) timeUp = true;
      const evaluate = step % cfg.eval_interval === 0 || opt.step === cfg.max_iters || timeUp;
      const save = outDir && cfg.save_interval > 0 && opt.step % cfg.save_interval === 0 &&
        opt.step < cfg.max_iters;
      if (evaluate || save) {
        const t1 = performance.now();
        const trainLoss = await settle(current); // this step's device time, and its check
        trainSeconds += (performance.now() - t1) / 1000;
        if (evaluate) await evaluateAt(run, step, trainLoss, trainSeconds, metrics);
        if (save) {
          await saveRun(run, opt, metrics, outDir, average);
          savedStep = opt.step;
        }
      }
      // Let a pending Ctrl-C (or a notebook's display update) through between steps.
      await new Promise((r) => setTimeout(r, 0));
    }
    if (previous) await settle(previous); // the last step's loss is checked before the final save
  } finally {
    if (previous) {
      await previous.read.catch(() => {});
      previous.loss.dispose();
    }
    if (next) disposeStepBatch(next);
    ctrlC.remove();
    bar?.finish();
  }
  if (outDir) await saveRun(run, opt, metrics, outDir, average);
  return { metrics, frame: metricsFrame(metrics), steps: opt.step, interrupted: ctrlC.stopped, timeUp };
}

/** With run.handleSigint, Ctrl-C sets `stopped` (training ends after this step); remove() unhooks it. */
function ctrlCStop(run: TrainRun): { stopped: boolean; remove: () => void } {
  const flag = { stopped: false, remove: () => {} };
  if (!run.handleSigint) return flag;
  const onSigint = () => {
    flag.stopped = true;
  };
  Deno.addSignalListener("SIGINT", onSigint);
  flag.remove = () => Deno.removeSignalListener("SIGINT", onSigint);
  return flag;
}

/** The training captions' word noise (cfg.word_noise; none at 0), over the caption positions that fit. */
function wordNoise(run: TrainRun): WordNoise | undefined {
  const { model, cfg } = run;
  const positions = model.config.block_positions - model.numVisualTokens; // caption characters that fit
  return cfg.word_noise > 0
    ? new WordNoise(run.train.tokens, run.vocab, cfg.word_noise, positions)
    : undefined;
}

/** `f`'s loss, read and checked: NaN or ±Inf stops training, naming the step and what outDir keeps. */
async function checkedLoss(f: InFlight, outDir?: string, savedStep?: number): Promise<number> {
  const loss = await f.read;
  if (Number.isFinite(loss)) return loss;
  const kept = outDir && (savedStep === undefined ? `nothing saved` : `${outDir} keeps step ${savedStep}`);
  throw new Error(`training stopped: the loss of step ${f.step} is ${loss}${kept ? ` (${kept})` : ""}`);
}

/** `settle(f)`, then f's loss tensor freed whatever the outcome. */
async function settleAndFree(f: InFlight, settle: (f: InFlight) => Promise<number>): Promise<number> {
  try {
    return await settle(f);
  } finally {
    f.loss.dispose();
  }
}

/** The progress bar's line after `steps` steps: the last loss read (none yet: NaN) and steps per second. */
function showProgress(bar: ProgressBar | null, steps: number, loss: number, seconds: number): void {
  bar?.update(steps, Number.isNaN(loss) ? {} : { loss }, steps / Math.max(seconds, 1e-9));
}

/** A step's loss on the device, with its read to the host under way. */
interface InFlight {
  loss: tf.Scalar;
  read: Promise<number>;
  step: number; // optimizer steps done after it
}

function inFlight(loss: tf.Scalar, step: number): InFlight {
  return { loss, step, read: loss.data().then((v) => v[0]) };
}

/** The metrics row of the evaluation after step `step` (validation loss, router statistics). */
async function evaluateAt(
  run: TrainRun,
  step: number,
  trainLoss: number,
  trainSeconds: number,
  metrics: MetricRow[],
): Promise<void> {
  const router = run.model instanceof VisionMoELanguageModel ? await run.model.readRouterStats() : [];
  const val = run.val ? await estimateLoss(run.model, run.val, run.cfg, seeds(run.cfg.seed, step).val) : null;
  const row: MetricRow = {
    step: step + 1,
    train_loss: trainLoss,
    val_loss: val,
    elapsed_s: trainSeconds,
    ...(router.length ? { router } : {}), // seeMoE only
  };
  metrics.push(row);
  run.onEval?.(row, metrics);
}
