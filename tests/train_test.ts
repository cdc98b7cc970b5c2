// The training loop: it learns (overfits three images), leaks no tensors, a resumed run repeats an
// uninterrupted one exactly (also after a crash part-way), and a NaN loss stops it without a save.

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { DEFAULT_TRAIN, type TrainConfig } from "../lib/config.ts";
import { loadModel } from "../lib/model_files.ts";
import { ForwardContext } from "../lib/model/module.ts";
import { VisionLanguageModel } from "../lib/model/vision_language_model.ts";
import { Tokenizer } from "../lib/tokenizer.ts";
import { type MetricRow, saveRun, train, type TrainRun, trainStep } from "../lib/train.ts";
import { Adam } from "../lib/optim.ts";
import { WordNoise } from "../lib/data/word_noise.ts";
import { datasetLoss } from "../lib/evaluate.ts";
import { shapesDataset, tinyConfig, useBackend } from "./helpers.ts";
import { captionLoss, lossTargets } from "../lib/objective.ts";

await useBackend();
const vocab = Tokenizer.original().symbols as string[];
const three = await shapesDataset(3);

function cfg(over: Partial<TrainConfig> = {}): TrainConfig {
  return { ...DEFAULT_TRAIN, batch_size: 3, eval_iters: 2, val_batch_size: 3, eval_interval: 5, ...over };
}

/**
 * The original's model and schedule, and the seeing recipe's extras: conv stem, word head, word noise,
 * decay; and image shifts and a weight average (whose running sums and training weights a resume restores).
 */
const SETUPS = [
  { name: "original", model: tinyConfig(), train: {} },
  {
    name: "seeing",
    model: tinyConfig({
      patch_stem: "conv",
      patch_size: 8,
      first_token_from_image: true,
      image_words: ["a", "red"],
    }),
    train: {
      word_noise: 0.5,
      word_loss: 1,
      warmup_iters: 2,
      decay_lr: true,
      min_lr: 1e-4,
      image_shift: 2,
      ema: 0.9,
    },
  },
] as const;

Deno.test("loss < 0.1 after overfitting three images", async () => {
  const model = new VisionLanguageModel(tinyConfig({ first_token_from_image: true }), 3);
  const before = datasetLoss(model, three);
  const result = await train({
    model,
    vocab,
    train: three,
    val: three,
    cfg: cfg({ max_iters: 150, eval_interval: 50, learning_rate: 3e-3 }),
  });
  const after = datasetLoss(model, three);
  console.log(`loss ${before.toFixed(3)} → ${after.toFixed(4)} in ${result.steps} steps`);
  assert(after < 0.1, `loss after overfitting is ${after}`);
  model.dispose();
});

for (const setup of SETUPS) {
  Deno.test(`tf.memory().numTensors is constant across 20 training steps (${setup.name})`, () => {
    const model = new VisionLanguageModel(setup.model, 3);
    const opt = new Adam(model.variables());
    const run: TrainRun = { model, vocab, train: three, cfg: cfg(setup.train) };
    const noise = run.cfg.word_noise > 0 ? new WordNoise(three.tokens, vocab, run.cfg.word_noise) : undefined;
    trainStep(model, opt, run, 0, noise); // the first step creates nothing that lasts, but warm up anyway
    const counts: number[] = [];
    for (let s = 1; s <= 20; s++) {
      trainStep(model, opt, run, s, noise);
      counts.push(tf.memory().numTensors);
    }
    assert.deepEqual(new Set(counts).size, 1, `tensor counts: ${counts.join(" ")}`);
    opt.dispose();
    model.dispose();
  });
}

for (const setup of SETUPS) {
  Deno.test(`--resume follows the same loss curve as an uninterrupted run (${setup.name})`, async () => {
    const dirA = await Deno.makeTempDir();
    const dirB = await Deno.makeTempDir();
    // No decay here: a cosine decay follows max_iters, so 4 steps then 4 more is, by design, not 8 steps.
    const base = cfg({ ...setup.train, decay_lr: false, max_iters: 8, eval_interval: 2 });
    const straight = new VisionLanguageModel(setup.model, 5);
    const full = await train({ model: straight, vocab, train: three, val: three, cfg: base, outDir: dirA });

    const first = new VisionLanguageModel(setup.model, 5);
    await train({
      model: first,
      vocab,
      train: three,
      val: three,
      cfg: { ...base, max_iters: 4 },
      outDir: dirB,
    });
    first.dispose();
    const { model: resumed } = await loadModel(dirB);
    const rest = await train(
      { model: resumed, vocab, train: three, val: three, cfg: base, outDir: dirB },
      dirB,
    );

    assert.equal(rest.steps, 8);
    // The interrupted run also logged its last step (4); every other row matches to the bit.
    const row = (
      r: { step: number; train_loss: number; val_loss: number | null },
    ) => [r.step, r.train_loss, r.val_loss];
    assert.deepEqual(rest.metrics.filter((r) => r.step !== 4).map(row), full.metrics.map(row));
    const a = await Deno.readFile(`${dirA}/model.safetensors`);
    const b = await Deno.readFile(`${dirB}/model.safetensors`);
    assert.deepEqual(a, b, "the final weights are identical");
    straight.dispose();
    resumed.dispose();
  });
}

const equalBytes = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);

/** Every file of a folder by name. */
async function readFolder(dir: string): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for await (const e of Deno.readDir(dir)) out.set(e.name, await Deno.readFile(`${dir}/${e.name}`));
  return out;
}

/** Fails, naming the files that differ (a deepEqual diff of large byte arrays takes minutes). */
async function assertFolderIs(dir: string, expected: Map<string, Uint8Array>, what: string) {
  const got = await readFolder(dir);
  const names = [...new Set([...got.keys(), ...expected.keys()])].sort();
  const differ = names.filter((n) =>
    !got.has(n) || !expected.has(n) || !equalBytes(got.get(n)!, expected.get(n)!)
  );
  assert.deepEqual(differ, [], `${what}: these files differ`);
}

Deno.test("a crash part-way, then a resume with the same steps, repeats the run (warm-up, cosine decay)", async () => {
  // The original model (the test above covers the seeing recipe's extra random streams without decay).
  const base = cfg({ warmup_iters: 3, decay_lr: true, max_iters: 8, eval_interval: 2, save_interval: 2 });
  const row = (r: MetricRow) => [r.step, r.train_loss];
  const dirA = await Deno.makeTempDir();
  const straight = new VisionLanguageModel(tinyConfig(), 5);
  const full = await train({ model: straight, vocab, train: three, cfg: base, outDir: dirA });
  straight.dispose();
  // A crash right after the evaluation of step 3 (in the warm-up) or 5 (on the cosine): the folder holds
  // the save of step 2 or 4.
  for (const crashAt of [3, 5]) {
    const dir = await Deno.makeTempDir();
    const first = new VisionLanguageModel(tinyConfig(), 5);
    const onEval = (r: MetricRow) => {
      if (r.step === crashAt) throw new Error("simulated crash");
    };
    await assert.rejects(
      train({ model: first, vocab, train: three, cfg: base, outDir: dir, onEval }),
      /simulated crash/,
    );
    first.dispose();
    const { model: resumed } = await loadModel(dir);
    const rest = await train({ model: resumed, vocab, train: three, cfg: base, outDir: dir }, dir);
    resumed.dispose();
    assert.deepEqual(rest.metrics.map(row), full.metrics.map(row), `crash at ${crashAt}: metrics`);
    for (const f of ["model.safetensors", "optimizer.safetensors"]) {
      const same = equalBytes(await Deno.readFile(`${dir}/${f}`), await Deno.readFile(`${dirA}/${f}`));
      assert(same, `crash at ${crashAt}: ${f} differs from the uninterrupted run's`);
    }
  }
});

Deno.test("a NaN loss stops training, naming the step, and the folder keeps the last good save", async () => {
  const dir = await Deno.makeTempDir();
  const base = cfg({ max_iters: 4, save_interval: 2 });
  const model = new VisionLanguageModel(tinyConfig(), 3);
  await train({ model, vocab, train: three, cfg: base, outDir: dir });
  model.dispose();
  const before = await readFolder(dir);
  const tensors = tf.memory().numTensors;
  const { model: resumed } = await loadModel(dir);
  // A learning rate of 1e30 sends the weights to ≈ 1e30 in step 5; step 6's forward pass overflows.
  const wild = { ...base, max_iters: 10, learning_rate: 1e30 };
  await assert.rejects(
    train({ model: resumed, vocab, train: three, cfg: wild, outDir: dir }, dir),
    /the loss of step 6 is NaN .*keeps step 4/,
  );
  resumed.dispose();
  assert.equal(tf.memory().numTensors, tensors, "nothing leaks when training stops");
  await assertFolderIs(dir, before, "the folder is byte for byte the save of step 4");
});

Deno.test("saveRun refuses weights holding NaN, leaving the folder as it was", async () => {
  const dir = await Deno.makeTempDir();
  const model = new VisionLanguageModel(tinyConfig(), 3);
  const run: TrainRun = { model, vocab, train: three, cfg: cfg() };
  const opt = new Adam(model.variables());
  await saveRun(run, opt, [], dir);
  const before = await readFolder(dir);
  const w = model.variables()[3];
  tf.tidy(() => w.assign(tf.fill(w.shape, NaN)));
  await assert.rejects(saveRun(run, opt, [], dir), new RegExp(`not saved: parameter ${w.name} holds NaN`));
  await assertFolderIs(dir, before, "a refused save changes nothing");
  opt.dispose();
  model.dispose();
});

Deno.test("dropout: seeded in training (same seed, same loss), none in evaluation", () => {
  const model = new VisionLanguageModel(tinyConfig(), 6);
  const noDropout = new VisionLanguageModel(tinyConfig({ dropout: 0, emb_dropout: 0, blk_dropout: 0 }), 0);
  noDropout.loadStateDict(model.stateDict()); // the same weights
  const batch = [...three.allBatches(3)][0];
  const loss = (m: VisionLanguageModel, ctx: ForwardContext) =>
    tf.tidy(() => captionLoss(m, batch.images, batch.idx, batch.targets, ctx, "first").dataSync()[0]);
  const seeded = loss(model, new ForwardContext(true, 1, 0));
  assert.equal(
    loss(model, new ForwardContext(true, 1, 0)),
    seeded,
    "the same seed and step draw the same masks",
  );
  assert.notEqual(loss(model, new ForwardContext(true, 2, 0)), seeded, "another seed draws other masks");
  assert.notEqual(loss(model, new ForwardContext(true, 1, 1)), seeded, "another step draws other masks");
  const evaluated = loss(model, ForwardContext.eval());
  assert.equal(loss(model, ForwardContext.eval()), evaluated);
  assert.notEqual(seeded, evaluated, "training drops units");
  const free = loss(noDropout, new ForwardContext(true, 1, 0));
  assert(Math.abs(evaluated - free) < 1e-6, `evaluation ${evaluated} = no dropout ${free}`);
  tf.dispose(batch);
  model.dispose();
  noDropout.dispose();
});

Deno.test("pad targets: 'all' counts every pad (the original), 'first' only the end-of-caption one", () => {
  const model = new VisionLanguageModel(tinyConfig(), 6);
  const pad = 65;
  const idx = tf.tensor2d([[1, 2, 3, 4], [5, 6, pad, pad]], undefined, "int32");
  const targets = tf.tensor2d([[2, 3, 4, pad], [6, pad, pad, pad]], undefined, "int32");
  const weights = (mode: "all" | "first" | "none") =>
    Array.from(lossTargets(model, idx, targets, mode).weights);
  // one visual position (never a target in the original setting), then 4 caption positions per row
  assert.deepEqual(weights("all"), [0, 1, 1, 1, 1, 0, 1, 1, 1, 1]);
  assert.deepEqual(weights("first"), [0, 1, 1, 1, 1, 0, 1, 1, 0, 0]);
  assert.deepEqual(weights("none"), [0, 1, 1, 1, 0, 0, 1, 0, 0, 0]);
  tf.dispose([idx, targets]);
  model.dispose();
});

Deno.test("learning-rate warm-up is linear, then constant; none by default (the original)", async () => {
  const { learningRate } = await import("../lib/train.ts");
  assert.equal(learningRate(cfg(), 0), 1e-3);
  const warm = cfg({ warmup_iters: 4 });
  assert.deepEqual([0, 1, 2, 3, 4, 100].map((s) => learningRate(warm, s)), [
    2.5e-4,
    5e-4,
    7.5e-4,
    1e-3,
    1e-3,
    1e-3,
  ]);
  const cosine = cfg({ warmup_iters: 2, decay_lr: true, min_lr: 1e-4, max_iters: 12 });
  const lrs = [0, 1, 2, 7, 12, 50].map((s) => learningRate(cosine, s));
  assert.deepEqual(lrs.slice(0, 3), [5e-4, 1e-3, 1e-3]);
  assert(Math.abs(lrs[3] - 5.5e-4) < 1e-12, `half way down: ${lrs[3]}`);
  assert.deepEqual(lrs.slice(4), [1e-4, 1e-4]);
});

Deno.test("a time limit stops training early and still logs the last step", async () => {
  const model = new VisionLanguageModel(tinyConfig(), 3);
  const r = await train({
    model,
    vocab,
    train: three,
    cfg: cfg({ max_iters: 10_000, eval_interval: 1000 }),
    timeLimitS: 0.5,
  });
  assert(r.timeUp && !r.interrupted);
  assert(r.steps < 10_000);
  assert.equal(r.metrics.at(-1)!.step, r.steps);
  model.dispose();
});

Deno.test("a model with a word head also trains without the word loss, leaving the head as it is", () => {
  const model = new VisionLanguageModel(tinyConfig({ image_words: ["a", "red"] }), 3);
  const opt = new Adam(model.variables());
  const head = model.wordHead!.weight.dataSync().slice();
  const run: TrainRun = { model, vocab, train: three, cfg: cfg({ word_loss: 0 }) };
  const losses = [0, 1, 2].map((s) => trainStep(model, opt, run, s));
  assert(losses.every(Number.isFinite));
  assert.deepEqual(model.wordHead!.weight.dataSync(), head);
  opt.dispose();
  model.dispose();
});
