// The WebGPU backend (tfjs-backend-webgpu on Deno's navigator.gpu) against the cpu backend, on tiny
// configs of both models and every recipe switch: forward, every gradient and three Adam steps agree
// within 1e-4; training lowers the loss without leaking tensors or GPU buffers; cached generation
// equals full recompute; a checkpoint trained on WebGPU evaluates the same on wasm.
//
// Runs on any adapter, Mesa's software Vulkan (llvmpipe) included: `apt-get install mesa-vulkan-drivers`.
// Skipped (with one line saying why) where there is none, unless SEEMORE_REQUIRE_WEBGPU=1.

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initBackend } from "../lib/backend.ts";
import { DEFAULT_TRAIN, type ModelConfig, type TrainConfig } from "../lib/config.ts";
import { datasetLoss, datasetLossAsync } from "../lib/evaluate.ts";
import { generation } from "../lib/generate.ts";
import { buildModel } from "../lib/model/factory.ts";
import { loadModel } from "../lib/model_files.ts";
import { ForwardContext, type StateDict } from "../lib/model/module.ts";
import { captionLoss } from "../lib/objective.ts";
import { Adam } from "../lib/optim.ts";
import { Tokenizer } from "../lib/tokenizer.ts";
import { stepBatch, stepOnDevice, train } from "../lib/train.ts";
import type { VisionLanguageModel } from "../lib/model/vision_language_model.ts";
import { probeAdapter } from "../lib/webgpu/adapter.ts";
import { gpuBufferStats } from "../lib/webgpu/start.ts";
import { assertClose, shapesDataset, tinyConfig, tinySeeingConfig } from "./helpers.ts";

const probe = await probeAdapter();
if (!probe.ok) {
  if (Deno.env.get("SEEMORE_REQUIRE_WEBGPU") === "1") {
    throw new Error(`SEEMORE_REQUIRE_WEBGPU=1 but WebGPU is unavailable: ${probe.reason}`);
  }
  console.log(`webgpu tests skipped: ${probe.reason}`);
}
const ignore = !probe.ok;

/** Both models, with every recipe switch on somewhere. */
const CONFIGS: Record<string, ModelConfig> = {
  "seemore original": tinyConfig(),
  "seemore seeing": tinySeeingConfig(),
  // Expert dropout 0: the device-routed mixture draws the experts' noise over all tokens, the sparse
  // cpu path over each expert's own rows (lib/ops/experts.ts); router noise is on (training).
  "seemoe": tinyConfig({ model_type: "seemoe", num_experts: 4, top_k: 2, dropout: 0, aux_loss_coef: 0.01 }),
  "seemoe capacity, patches": tinyConfig({
    model_type: "seemoe",
    num_experts: 4,
    top_k: 2,
    dropout: 0,
    capacity_factor: 0.6,
    visual_tokens: "patches",
    first_token_from_image: true,
  }),
};

interface Run {
  logits: Float32Array;
  grads: Float32Array[]; // every parameter's gradient, model order, internal layout
  losses: number[]; // before each of 3 Adam steps
  params: Float32Array[]; // every parameter after them
}

const LR = 1e-3;

/** Forward, gradients and three Adam steps on the active backend, reading only asynchronously. */
async function runOn(config: ModelConfig, initial: StateDict): Promise<Run> {
  const model = buildModel(config, 21);
  model.loadStateDict(initial);
  const images = tf.randomNormal([3, 3, 32, 32], 0, 1, "float32", 4) as tf.Tensor4D;
  const idx = tf.tensor2d([[1, 5, 9, 12], [3, 4, 65, 65], [40, 41, 42, 43]], undefined, "int32");
  const targets = tf.tensor2d([[5, 9, 12, 65], [4, 65, 65, 65], [41, 42, 43, 65]], undefined, "int32");
  const words = tf.tensor2d([[1, 0, 1], [0, 0, 0], [1, 1, 1]]);
  const skip = Uint8Array.from([0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]); // (B, T): a swapped word's characters
  const logitsT = tf.tidy(() => model.forward(images, idx, ForwardContext.eval()));
  const logits = await logitsT.data() as Float32Array;
  logitsT.dispose();
  const vars = model.variables();
  // Training mode: dropout (seemore) and router noise (seemoe) drawn from the same seeds everywhere.
  const loss = (step: number) => () =>
    captionLoss(model, images, idx, targets, new ForwardContext(true, 7, step), "first", {
      skip,
      words,
      wordLoss: 0.5,
    });
  const { value, grads } = tf.variableGrads(loss(0), vars);
  const gradData = await Promise.all(vars.map((v) => grads[v.name].data() as Promise<Float32Array>));
  tf.dispose([value, ...Object.values(grads)]);
  const opt = new Adam(vars, LR);
  const losses: number[] = [];
  for (let s = 0; s < 3; s++) { // the first step's gradient is the one above
    const { value, grads: g } = tf.variableGrads(loss(s), vars);
    losses.push((await value.data())[0]);
    opt.update(vars.map((v) => g[v.name]));
    tf.dispose([value, ...Object.values(g)]);
  }
  const params = await Promise.all(vars.map((v) => v.data() as Promise<Float32Array>));
  opt.dispose();
  model.dispose();
  tf.dispose([images, idx, targets, words]);
  return { logits, grads: gradData, losses, params };
}

/**
 * Adam's first update is lr · sign(g) for every element, however small g is, so an element whose
 * gradient is within float32 rounding of 0 (GPU and CPU sums differ by up to ~5e-7 here) may move ±lr
 * either way. Those elements (|g| < 1e-5 on cpu) may differ by up to 2·lr per step; every other
 * parameter element, and each loss (relative to its size), within 1e-4.
 */
function assertAdamClose(gpu: Run, cpu: Run, steps: number): void {
  const relative = gpu.losses.map((l, i) => (l - cpu.losses[i]) / Math.max(1, Math.abs(cpu.losses[i])));
  assertClose(relative, relative.map(() => 0), 1e-4, "losses over the Adam steps (relative)");
  cpu.params.forEach((p, i) => {
    const g = cpu.grads[i];
    for (let j = 0; j < p.length; j++) {
      const tol = Math.abs(g[j]) < 1e-5 ? 2 * LR * steps : 1e-4;
      const d = Math.abs(gpu.params[i][j] - p[j]);
      if (!(d <= tol)) {
        throw new Error(`parameter ${i}[${j}] after ${steps} Adam steps: |diff| ${d} > ${tol}`);
      }
    }
  });
}

for (const [name, config] of Object.entries(CONFIGS)) {
  Deno.test({
    name: `webgpu equals cpu within 1e-4: forward, every gradient, 3 Adam steps (${name})`,
    ignore,
    fn: async () => {
      await initBackend("cpu");
      const fresh = buildModel(config, 21);
      const initial = fresh.stateDict();
      fresh.dispose();
      const cpu = await runOn(config, initial);
      await initBackend("webgpu");
      const gpu = await runOn(config, initial);
      assertClose(gpu.logits, cpu.logits, 1e-4, "logits");
      cpu.grads.forEach((g, i) => assertClose(gpu.grads[i], g, 1e-4, `gradient ${i}`));
      assertAdamClose(gpu, cpu, 3);
    },
  });
}

const vocab = Tokenizer.original().symbols as string[];
const trainCfg = (over: Partial<TrainConfig> = {}): TrainConfig => ({
  ...DEFAULT_TRAIN,
  batch_size: 4,
  eval_iters: 2,
  val_batch_size: 4,
  eval_interval: 10,
  learning_rate: 3e-3,
  ...over,
});

Deno.test({
  name: "webgpu: 20 training steps lower the loss, and the checkpoint evaluates the same on wasm",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    const data = await shapesDataset(8);
    const model = buildModel(tinyConfig(), 5);
    const dir = await Deno.makeTempDir({ prefix: "seemore-webgpu-" });
    try {
      const before = await datasetLossAsync(model, data);
      const run = await train({
        model,
        vocab,
        train: data,
        val: data,
        cfg: trainCfg({ max_iters: 20 }),
        outDir: dir,
      });
      assert.equal(run.steps, 20);
      const after = await datasetLossAsync(model, data);
      assert(after < before - 0.5, `loss ${before} → ${after} after 20 steps`);
      model.dispose();
      await initBackend("wasm");
      const { model: loaded } = await loadModel(dir);
      assertClose([datasetLoss(loaded, data)], [after], 1e-4, "the dataset loss on wasm vs webgpu");
      loaded.dispose();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "webgpu: training steps leak no tensors and no GPU buffers (seemoe, routed on the device)",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    const data = await shapesDataset(4);
    const model = buildModel(tinyConfig({ model_type: "seemoe", num_experts: 4, top_k: 2 }), 5);
    const opt = new Adam(model.variables(), LR);
    const run = { model, vocab, train: data, cfg: trainCfg({ word_noise: 0.25 }) };
    const seen: string[] = [];
    for (let s = 0; s < 6; s++) {
      const loss = stepOnDevice(model, opt, run, stepBatch(model, run, s));
      await loss.data(); // the step is done on the device, and tfjs has freed what it held for it
      loss.dispose();
      seen.push(JSON.stringify({ tensors: tf.memory().numTensors, ...gpuBufferStats() }));
    }
    // The first steps create the optimizer's moments and fill the buffer pool; then nothing grows.
    assert.equal(new Set(seen.slice(2)).size, 1, `per step: ${seen.join(" ")}`);
    opt.dispose();
    model.dispose();
  },
});

/** Greedy decoding by full recomputation, reading asynchronously: ids and each step's last logits. */
async function greedyByRecompute(model: VisionLanguageModel, images: tf.Tensor4D, n: number) {
  const B = images.shape[0];
  const rows: number[][] = Array.from({ length: B }, () => []);
  const logits: Float32Array[] = [];
  for (let i = 0; i < n; i++) {
    const last = tf.tidy(() => {
      let x = model.visualTokens(images, ForwardContext.eval()); // (B, V, C)
      if (i > 0) {
        x = tf.concat(
          [x, model.decoder.embedTokens(tf.tensor2d(rows, undefined, "int32"))],
          1,
        ) as tf.Tensor3D;
      }
      const all = model.decoder.decode(x, 0, ForwardContext.eval()); // (B, L, vocab)
      return tf.reshape(tf.slice(all, [0, all.shape[1] - 1, 0], [B, 1, -1]), [B, -1]); // (B, vocab)
    });
    const values = await last.data() as Float32Array;
    last.dispose();
    logits.push(values);
    const V = values.length / B;
    rows.forEach((r, b) => r.push(argmax(values.subarray(b * V, (b + 1) * V))));
  }
  return { rows, logits };
}

function argmax(xs: Float32Array): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

for (
  const [name, config] of [
    ["seemore, patches", tinyConfig({ visual_tokens: "patches", first_token_from_image: true })],
    ["seemoe", tinyConfig({ model_type: "seemoe", num_experts: 4, top_k: 2 })],
  ] as const
) {
  Deno.test({
    name: `webgpu: KV-cached generation equals full recompute, ids and logits (${name})`,
    ignore,
    fn: async () => {
      await initBackend("webgpu");
      const model = buildModel(config, 4);
      const images = tf.randomNormal([2, 3, 32, 32], 0, 1, "float32", 8) as tf.Tensor4D;
      const before = tf.memory().numTensors;
      // The cached run, with each step's logits kept as its driver reads them.
      const seen: Float32Array[] = [];
      const g = generation(model, images, { maxNewTokens: 8, greedy: true });
      let step = g.next();
      while (!step.done) {
        const values = Float32Array.from(await step.value.data());
        step.value.dispose();
        seen.push(values);
        step = g.next(values);
      }
      const full = await greedyByRecompute(model, images, seen.length);
      step.value.forEach((row, b) => assert.deepEqual(row, full.rows[b].slice(0, row.length), `row ${b}`));
      // A finished row is fed <pad> from then on, the recompute its own argmax: compare while it runs.
      const V = seen[0].length / 2;
      step.value.forEach((row, b) => {
        for (let i = 0; i <= Math.min(row.length, seen.length - 1); i++) {
          const at = (l: Float32Array) => l.subarray(b * V, (b + 1) * V);
          assertClose(at(seen[i]), at(full.logits[i]), 1e-4, `row ${b}, logits of step ${i}`);
        }
      });
      assert.equal(tf.memory().numTensors, before, "generation leaks no tensors");
      images.dispose();
      model.dispose();
    },
  });
}

Deno.test({
  name:
    "webgpu kernel fix: int32 and bool cast to float32, then a rank-3 transpose, sum or cumsum, equal cpu",
  ignore,
  fn: async () => {
    const values = [[[0, 1, 0], [1, 0, 0]], [[0, 0, 1], [2, 1, 0]]]; // (2, 2, 3)
    const ops = (x: tf.Tensor3D) => [tf.transpose(x, [0, 2, 1]), tf.sum(x, 1), tf.cumsum(x, 0), tf.max(x, 0)];
    const run = () =>
      tf.tidy(() => {
        const ints = tf.add(tf.tensor3d(values, undefined, "int32"), tf.scalar(0, "int32")); // made on the device
        const bools = tf.greater(ints, tf.scalar(0, "int32"));
        return [
          ...ops(tf.cast(ints, "float32") as tf.Tensor3D),
          ...ops(tf.cast(bools, "float32") as tf.Tensor3D),
        ];
      });
    await initBackend("cpu");
    const onCpu = run();
    const expected = onCpu.map((t) => t.dataSync());
    await initBackend("webgpu");
    const onGpu = run();
    const got = await Promise.all(onGpu.map((t) => t.data()));
    got.forEach((g, i) => assertClose(g, expected[i], 0, `op ${i}`));
    tf.dispose([...onCpu, ...onGpu]);
  },
});

Deno.test({
  name: "webgpu: a synchronous read fails with one line saying to read asynchronously",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    const x = tf.add(tf.ones([4]), 1); // computed on the device, never read
    assert.throws(
      () => x.dataSync(),
      /cannot read a tensor synchronously under Deno.*await tensor\.data\(\)/,
    );
    assert.deepEqual(Array.from(await x.data()), [2, 2, 2, 2]);
    assert.deepEqual(Array.from(x.dataSync()), [2, 2, 2, 2], "once read, the values stay on the host");
    x.dispose();
  },
});
