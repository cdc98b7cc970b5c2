// A ViT that classifies shape alone (ALL_SHAPES: the six base shapes and the four training-only extras), on
// the bundled shapes data: how fast its image encoder
// learns shape with the original's one-matmul patch embedding ("linear") or the convolutional stem
// ("conv"), and whether shape learned on its own carries over to the test split's held-out colour–shape
// pairs (README, "A model that sees").
//
//   deno run -A --v8-flags=--max-semi-space-size=4 bench/experiments/shape_classifier.ts --stem conv --steps 800
//   deno run -A --v8-flags=--max-semi-space-size=4 bench/experiments/shape_classifier.ts --stem linear --steps 800
//
// The encoder is the seeing recipe's ViT (lib/config.ts RECIPES.seeing: 64×64 images, 16×16 patches, 128
// wide, pre-norm blocks; --patch-size changes the patches); a Linear head reads its CLS output. Adam at --lr, batches of --batch training
// images drawn with --seed. Every --eval-interval steps it prints the share of shapes named right on the
// val split (in-distribution, 300 images) and on the test split (500 images, all held-out pairs).
// --json prints those rows as one JSON line at the end.

import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { initBackend } from "../../lib/backend.ts";
import { DEFAULT_MODEL, type ModelConfig, RECIPES } from "../../lib/config.ts";
import { ImageCaptionDataset } from "../../lib/data/batches.ts";
import { readImageCaptionCsv } from "../../lib/data/csv.ts";
import { ALL_SHAPES, parseCaption } from "../../lib/data/shapes.ts";
import { Linear } from "../../lib/model/layers.ts";
import { ForwardContext, Initialiser } from "../../lib/model/module.ts";
import { VisionLanguageModel } from "../../lib/model/vision_language_model.ts";
import { Adam } from "../../lib/optim.ts";
import { mulberry32 } from "../../lib/random.ts";
import { Tokenizer } from "../../lib/tokenizer.ts";

const { values: v } = parseArgs({
  options: {
    stem: { type: "string", default: "conv" },
    "patch-size": { type: "string", default: String(RECIPES.seeing.model.patch_size) },
    steps: { type: "string", default: "800" },
    batch: { type: "string", default: "16" },
    lr: { type: "string", default: "1e-3" },
    seed: { type: "string", default: "1337" },
    "eval-interval": { type: "string", default: "100" },
    data: { type: "string", default: "data/shapes" },
    backend: { type: "string" },
    json: { type: "boolean", default: false },
  },
});
if (v.stem !== "conv" && v.stem !== "linear") throw new Error(`--stem must be conv or linear, got ${v.stem}`);
const steps = Number(v.steps), batchSize = Number(v.batch), seed = Number(v.seed);
const evalInterval = Number(v["eval-interval"]);

const info = await initBackend(v.backend);
const config: ModelConfig = {
  ...DEFAULT_MODEL,
  ...RECIPES.seeing.model,
  patch_stem: v.stem as ModelConfig["patch_stem"],
  patch_size: Number(v["patch-size"]),
  vocab_size: 66,
};

/** A split's images and the index in ALL_SHAPES of each caption's shape. */
async function load(split: string): Promise<{ data: ImageCaptionDataset; labels: number[] }> {
  const file = `${v.data}/${split}.csv`;
  const table = readImageCaptionCsv(file);
  const data = await ImageCaptionDataset.fromTable(
    table,
    Tokenizer.fromCaptions(table.captions),
    config.img_size,
  );
  const labels = data.captions.map((caption, i) => {
    const attrs = parseCaption(caption);
    if (!attrs || attrs.objects.length !== 1) {
      throw new Error(`${file}, row ${i + 1}: not a one-shape caption`);
    }
    const label = ALL_SHAPES.indexOf(attrs.objects[0].shape);
    if (label < 0) {
      throw new Error(`${file}, row ${i + 1}: shape "${attrs.objects[0].shape}" is not in ALL_SHAPES`);
    }
    return label;
  });
  return { data, labels };
}
const [train, val, test] = [await load("train"), await load("val"), await load("test")];

// Only the model's image encoder is used; the head maps its CLS feature to the shapes of ALL_SHAPES.
const vit = new VisionLanguageModel(config, seed).visionEncoder;
const head = new Linear(config.image_embed_dim, ALL_SHAPES.length, new Initialiser(seed + 1));
const params = [...vit.variables(), ...head.variables()];
const opt = new Adam(params, Number(v.lr));

function imagesOf(data: ImageCaptionDataset, rows: number[]): tf.Tensor4D {
  const S = config.img_size, size = 3 * S * S;
  const pixels = new Float32Array(rows.length * size);
  rows.forEach((row, b) => pixels.set(data.image(row), b * size));
  return tf.tensor4d(pixels, [rows.length, 3, S, S]);
}

/** (B, 3, S, S) → shape logits (B, ALL_SHAPES.length) from the ViT's CLS output. */
function logits(images: tf.Tensor4D, ctx: ForwardContext): tf.Tensor2D {
  const feats = vit.forward(images, ctx); // (B, V, D)
  const [B, , D] = feats.shape;
  return head.forward(tf.reshape(tf.slice(feats, [0, 0, 0], [B, 1, D]), [B, D])) as tf.Tensor2D; // (B, 10)
}

function accuracy({ data, labels }: { data: ImageCaptionDataset; labels: number[] }): number {
  let right = 0;
  for (let start = 0; start < data.length; start += 64) {
    const rows = Array.from({ length: Math.min(64, data.length - start) }, (_, k) => start + k);
    const predicted = tf.tidy(() =>
      tf.argMax(logits(imagesOf(data, rows), ForwardContext.eval()), 1).dataSync()
    );
    rows.forEach((row, k) => (right += predicted[k] === labels[row] ? 1 : 0));
  }
  return right / data.length;
}

console.error(
  `backend: ${info.name}; stem ${v.stem}, patches ${config.patch_size}; ${steps} steps of batch ${batchSize}`,
);
const rand = mulberry32(seed);
const results: { step: number; loss: number; val: number; test: number; elapsed_s: number }[] = [];
const t0 = performance.now();
for (let step = 1; step <= steps; step++) {
  const rows = Array.from({ length: batchSize }, () => Math.floor(rand() * train.data.length));
  const images = imagesOf(train.data, rows);
  const onehot = tf.oneHot(tf.tensor1d(rows.map((r) => train.labels[r]), "int32"), ALL_SHAPES.length);
  const ctx = new ForwardContext(true, seed, step);
  const { value, grads } = tf.variableGrads(
    () => tf.losses.softmaxCrossEntropy(onehot, logits(images, ctx)) as tf.Scalar,
    params,
  );
  opt.update(params.map((p) => grads[p.name]));
  const loss = value.dataSync()[0];
  tf.dispose([images, onehot, value, ...Object.values(grads)]);
  if (step % evalInterval === 0 || step === steps) {
    const row = {
      step,
      loss,
      val: accuracy(val),
      test: accuracy(test),
      elapsed_s: (performance.now() - t0) / 1000,
    };
    results.push(row);
    console.error(
      `step ${step}: loss ${loss.toFixed(3)}, shape right: val ${(100 * row.val).toFixed(1)} %, ` +
        `test (held-out pairs) ${(100 * row.test).toFixed(1)} % (${row.elapsed_s.toFixed(0)} s)`,
    );
  }
}
if (v.json) {
  console.log(
    JSON.stringify({ stem: v.stem, patch_size: config.patch_size, steps, batch: batchSize, seed, results }),
  );
}
