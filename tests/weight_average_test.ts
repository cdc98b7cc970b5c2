// The moving average of the weights (lib/weight_average.ts): the bias-corrected mean it promises, the
// training weights put back after a save, and a training run that ends holding the average of the weights
// its own steps produced. (tests/train_test.ts resumes a run with an average, bit for bit.)

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { DEFAULT_TRAIN, type TrainConfig } from "../lib/config.ts";
import { VisionLanguageModel } from "../lib/model/vision_language_model.ts";
import { mulberry32 } from "../lib/random.ts";
import { Tokenizer } from "../lib/tokenizer.ts";
import { train } from "../lib/train.ts";
import { EVERY, WeightAverage } from "../lib/weight_average.ts";
import { assertRelClose, shapesDataset, tinyConfig, useBackend } from "./helpers.ts";

await useBackend();

// float32 rounding: a few roundings per update, at the scale of the largest weight (1e-6 ≈ 8 ulp).
const RTOL = 1e-6;

Deno.test("the average is the bias-corrected exponential mean of the weights at each update", () => {
  const rand = mulberry32(3);
  const p = tf.variable(tf.zeros([5]));
  const decay = 0.8, keep = decay ** EVERY;
  const avg = new WeightAverage([p], decay);
  const seen: number[][] = []; // the weights at each update
  const counts: number[] = [];
  for (let step = 1; step <= 5 * EVERY + 2; step++) {
    const w = Array.from({ length: 5 }, () => 4 * rand() - 2);
    tf.tidy(() => p.assign(tf.tensor1d(w)));
    avg.update(step);
    if (step % EVERY === 0) seen.push(w);
    counts.push(tf.memory().numTensors);
    // Expected, in float64: Σ_k (1 - keep) keep^(n-1-k) w_k / (1 - keep^n) over the n updates so far.
    const n = seen.length;
    const expected = n === 0
      ? w
      : w.map((_, j) =>
        seen.reduce((sum, wk, k) => sum + (1 - keep) * keep ** (n - 1 - k) * wk[j], 0) / (1 - keep ** n)
      );
    const [got] = avg.average(step);
    assertRelClose(got.dataSync(), expected, RTOL, `average after step ${step}`);
    got.dispose();
  }
  assert.equal(new Set(counts).size, 1, `tensor counts: ${counts.join(" ")}`);
  avg.dispose();
  p.dispose();
});

Deno.test("withAverage shows the average inside and puts the training weights back, also on a throw", async () => {
  const p = tf.variable(tf.tensor1d([1, 2, 3]));
  const avg = new WeightAverage([p], 0.5);
  avg.update(EVERY); // the average: [1, 2, 3], up to rounding
  tf.tidy(() => p.assign(tf.tensor1d([5, 6, 7])));
  const inside = await avg.withAverage(EVERY, () => Promise.resolve([...p.dataSync()]));
  assertRelClose(inside, [1, 2, 3], RTOL, "inside");
  assert.deepEqual([...p.dataSync()], [5, 6, 7]);
  await assert.rejects(avg.withAverage(EVERY, () => Promise.reject(new Error("disk full"))), /disk full/);
  assert.deepEqual([...p.dataSync()], [5, 6, 7]);
  avg.dispose();
  p.dispose();
});

Deno.test("a run with ema ends holding the average of the weights its steps produced", async () => {
  const vocab = Tokenizer.original().symbols as string[];
  const three = await shapesDataset(3);
  const cfg = (over: Partial<TrainConfig>): TrainConfig => ({
    ...DEFAULT_TRAIN,
    batch_size: 3,
    eval_iters: 1,
    val_batch_size: 3,
    eval_interval: 100,
    ...over,
  });
  /** The weights after `steps` steps of the same run (an average changes nothing about training). */
  const weights = async (steps: number, ema = 0) => {
    const model = new VisionLanguageModel(tinyConfig(), 5);
    await train({ model, vocab, train: three, cfg: cfg({ max_iters: steps, ema }) });
    const w = model.variables().map((v) => Float32Array.from(v.dataSync()));
    model.dispose();
    return w;
  };
  const decay = 0.7, keep = decay ** EVERY;
  const [w1, w2] = [await weights(EVERY), await weights(2 * EVERY)];
  const averaged = await weights(2 * EVERY, decay);
  averaged.forEach((got, i) => {
    const expected = w2[i].map((x, j) => ((1 - keep) * keep * w1[i][j] + (1 - keep) * x) / (1 - keep * keep));
    assertRelClose(got, expected, RTOL, `parameter ${i}`);
  });
  assert(
    averaged.some((got, i) => got.some((x, j) => x !== w2[i][j])),
    "the average is not the last weights",
  );
});
