// Generation through the backend's decoder step (lib/generate.ts KernelStepper: on the fast CPU path one
// C call per position) against the tfjs decoder run over the whole sequence: the logits of every caption
// position, for seemore's and seeMoE's decoders (top-1 and top-2), the original's block and the pre-norm
// recipe, one and several visual tokens, 19 rows (split across threads); generate() takes this path on
// wasm and gives the tokens of full recomputation; the step reads weights updated in place; seeMoE with
// router noise in evaluation or an expert capacity, and the cpu backend, fall back to tfjs.

import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../lib/backend.ts";
import { loadNative, type Native } from "../lib/blas/native.ts";
import type { ModelConfig } from "../lib/config.ts";
import { generate, KernelStepper } from "../lib/generate.ts";
import { Adam } from "../lib/optim.ts";
import { readSync } from "../lib/readback.ts";
import { buildModel } from "../lib/model/factory.ts";
import { ForwardContext } from "../lib/model/module.ts";
import type { VisionMoELanguageModel } from "../lib/model/moe.ts";
import type { VisionLanguageModel } from "../lib/model/vision_language_model.ts";
import { tinyConfig } from "./helpers.ts";
import { assertClose, assertEquals, BLAS_OK } from "./blas/helpers.ts";

const READY = BLAS_OK && loadNative().ok;
const NOTE = READY ? "" : " [ignored: needs OpenBLAS and a C compiler]";
const TOL = 1e-4;

const splitRows = (data: Float32Array, B: number) =>
  Array.from({ length: B }, (_, b) => data.slice((b * data.length) / B, ((b + 1) * data.length) / B));

async function ready(): Promise<void> {
  const info = await initBackend("wasm");
  if (!info.notes.some((n) => n.startsWith("OpenBLAS kernels"))) {
    throw new Error(`no fast path: ${info.notes}`);
  }
}

/** Visual tokens + caption ids through the tfjs decoder in one pass: logits (B, V+T, vocab). */
function fullLogits(model: VisionLanguageModel, images: tf.Tensor4D, ids: number[][]): Float32Array {
  return tf.tidy(() => {
    const ctx = ForwardContext.eval();
    const visual = model.visualTokens(images, ctx); // (B, V, C)
    const tokens = model.decoder.embedTokens(tf.tensor2d(ids, undefined, "int32")); // (B, T, C)
    return model.decoder.decode(tf.concat([visual, tokens], 1) as tf.Tensor3D, 0, ctx)
      .dataSync() as Float32Array;
  });
}

const RECIPES: [string, Partial<ModelConfig>][] = [
  ["the original's block, CLS token", {}],
  ["pre-norm, head-size scale, all patch tokens", {
    residual: "pre_norm",
    attention_scale: "head",
    visual_tokens: "patches",
  }],
];
/** Wide enough that a single row's experts pass decoder.c's split threshold. */
const WIDE: Partial<ModelConfig> = { n_embd: 128, n_head: 4 };
const seemoe = (topK: number): Partial<ModelConfig> => ({
  model_type: "seemoe",
  num_experts: 4,
  top_k: topK,
});
/** seeMoE's router with every logit alike (weights 0, biases 0.5): every choice is a tie. */
function tiedRouters(model: VisionLanguageModel): void {
  for (const moe of (model as VisionMoELanguageModel).moeLayers) {
    const { weight, bias } = moe.router.topkrouteLinear;
    tf.tidy(() => {
      weight.assign(tf.zerosLike(weight));
      bias!.assign(tf.fill(bias!.shape, 0.5));
    });
  }
}

/** What is tested, the config, a change to the model, and the rows (19: split across threads; 12: seeMoE's
 * experts split; one row at width 128: its two experts side by side, as in generation). */
const CONFIGS: [string, Partial<ModelConfig>, ((m: VisionLanguageModel) => void)?, number?][] = [
  ...RECIPES.map(([what, o]): [string, Partial<ModelConfig>] => [`seemore, ${what}`, o]),
  ...[1, 2].flatMap((k) =>
    RECIPES.map((
      [what, o],
    ): [string, Partial<ModelConfig>] => [`seeMoE top-${k}, ${what}`, { ...seemoe(k), ...o }])
  ),
  ["seeMoE top-2, every router logit tied (the lower index wins)", seemoe(2), tiedRouters],
  ["seeMoE top-2, 12 rows (one chunk: the experts run side by side)", seemoe(2), undefined, 12],
  ["seeMoE top-2, one row at width 128 (two experts side by side)", { ...WIDE, ...seemoe(2) }, undefined, 1],
];

for (const [what, overrides, prepare, rows = 19] of CONFIGS) {
  Deno.test({
    name:
      `native decoder step = tfjs decoder over the whole sequence, every position's logits: ${what}${NOTE}`,
    ignore: !READY,
    async fn() {
      await ready();
      const config = tinyConfig({ n_layer: 3, ...overrides });
      const model = buildModel(config, 5);
      prepare?.(model);
      const [B, T, V, vocab] = [rows, 5, model.numVisualTokens, config.vocab_size];
      const images = tf.randomNormal([B, 3, 32, 32], 0, 1, "float32", 9) as tf.Tensor4D;
      const ids = Array.from(
        { length: B },
        (_, b) => Array.from({ length: T }, (_, t) => (7 * b + 13 * t + 3) % 66),
      ); // (B, T)
      const expected = fullLogits(model, images, ids); // (B, V+T, vocab)

      const stepper = KernelStepper.create(model, images, [], T + 1);
      if (!stepper) throw new Error("no decoder step kernel on wasm with the C kernels");
      const at = (p: number) =>
        Float32Array.from(
          { length: B * vocab },
          (_, i) => expected[(Math.floor(i / vocab) * (V + T) + p) * vocab + (i % vocab)],
        ); // (B, vocab): position p's logits of every row
      assertClose(
        readSync(stepper.start()).map((r) => r.slice()),
        splitRows(at(V - 1), B),
        TOL,
        "last visual position",
      );
      const native = (loadNative() as { ok: true; native: Native }).native;
      const [threads, shared] = [native.threads(), native.jobsShared()];
      native.setThreads(2);
      try {
        for (let t = 0; t < T; t++) {
          const rows = readSync(stepper.next(ids.map((row) => row[t]), V + t));
          assertClose(rows.map((r) => r.slice()), splitRows(at(V + t), B), TOL, `position ${V + t}`);
        }
      } finally {
        native.setThreads(threads);
      }
      // The steps alone share work with the helper threads: 19 rows by row chunks, 12 rows and one row at
      // width 128 by experts.
      assertEquals(native.jobsShared() > shared, true, "work shared with helper threads");
      tf.dispose([images]);
      model.dispose();
    },
  });
}

for (const [what, overrides] of [["seemore", {}], ["seeMoE top-2", seemoe(2)]] as const) {
  Deno.test({
    name:
      `generate() on wasm runs the native step and gives the tokens of full recomputation: ${what}${NOTE}`,
    ignore: !READY,
    async fn() {
      await ready();
      const model = buildModel(tinyConfig({ n_layer: 2, ...overrides }), 6);
      const images = tf.randomNormal([2, 3, 32, 32], 0, 1, "float32", 10) as tf.Tensor4D;
      const before = tf.memory().numTensors;
      const prompt = [12, 40];
      const made = generate(model, images, { maxNewTokens: 10, prompt });
      assertEquals(tf.memory().numTensors, before, "no tensors leak");
      // Greedy by recomputation: each next id is the argmax of the full pass's last position.
      const rows = [[...prompt], [...prompt]];
      for (let step = 0; step < 10; step++) {
        const logits = fullLogits(model, images, rows);
        const vocab = 66, L = logits.length / (2 * vocab);
        rows.forEach((row, b) => {
          const last = logits.subarray((b * L + L - 1) * vocab, (b * L + L) * vocab);
          row.push(last.indexOf(Math.max(...last)));
        });
      }
      made.forEach((row, b) => assertEquals(`${row}`, `${rows[b].slice(2, 2 + row.length)}`, `row ${b}`));
      assertEquals(made.every((row) => row.length > 0), true, "tokens were made");
      // The native path: after the ViT and the projector no tfjs kernel runs, however many tokens are made.
      const kernels = async (n: number) =>
        (await tf.profile(() => void generate(model, images, { maxNewTokens: n, prompt }))).kernels.length;
      assertEquals(await kernels(2), await kernels(10), "tfjs kernels for 2 vs 10 new tokens");
      images.dispose();
      model.dispose();
    },
  });
}

Deno.test({
  name: `the native decoder reads the weights in place: it sees an in-place Adam update${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const model = buildModel(tinyConfig({ n_layer: 2 }), 11);
    const images = tf.randomNormal([1, 3, 32, 32], 0, 1, "float32", 12) as tf.Tensor4D;
    const firstLogits = () => readSync(KernelStepper.create(model, images, [], 1)!.start())[0].slice();
    const before = firstLogits();
    const opt = new Adam(model.variables(), 0.05);
    const grads = model.variables().map((v) => tf.onesLike(v));
    opt.update(grads); // in place on the fast path: no variable gets a new dataId
    tf.dispose(grads);
    const after = firstLogits();
    const expected = fullLogits(model, images, [[]]).subarray(0, after.length); // position 0
    assertClose([after], [expected], TOL, "logits after the update");
    assertEquals(before.some((v, i) => Math.abs(v - after[i]) > 1e-3), true, "the update changed the logits");
    opt.dispose();
    images.dispose();
    model.dispose();
  },
});

Deno.test({
  name:
    `no native decoder for seeMoE with router noise in evaluation or an expert capacity, nor off wasm${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const images = tf.zeros([1, 3, 32, 32]) as tf.Tensor4D;
    const stepsFor = (overrides: Partial<ModelConfig>) => {
      const model = buildModel(tinyConfig(overrides), 7);
      const steps = KernelStepper.create(model, images, [], 1) !== null;
      model.dispose();
      return steps;
    };
    assertEquals(stepsFor(seemoe(2)), true, "seeMoE on wasm");
    assertEquals(stepsFor({ ...seemoe(2), router_noise_in_eval: true }), false, "seeMoE with router noise");
    assertEquals(stepsFor({ ...seemoe(2), capacity_factor: 1.25 }), false, "seeMoE with an expert capacity");
    assertEquals(stepsFor({}), true, "seemore on wasm");
    await tf.setBackend("cpu");
    try {
      assertEquals(stepsFor({}), false, "seemore on the cpu backend");
      assertEquals(stepsFor(seemoe(2)), false, "seeMoE on the cpu backend");
    } finally {
      await tf.setBackend("wasm");
    }
    images.dispose();
  },
});
