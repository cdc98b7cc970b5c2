// Does an average of the weights over the last steps (an exponential moving average, EMA) caption held-out
// pairs better than the last step's weights? Trains the seeing recipe as `deno task train --seed S` does (same
// model, data, batches and kernels) but without the recipe's own average (since acc6c59), keeps one EMA of
// the weights per --decays value, and at the end scores the test split (500 held-out colour–shape pairs) with
// the last weights and with each average.
//
//   deno run -A --v8-flags=--max-semi-space-size=4 bench/experiments/ema.ts --seed 1 --decays 0.998,0.999
//   ... --train '{"image_shift": 2}'     (other training settings, as JSON; --model for the model's)
//
// Each average starts from the initial weights and is updated every --every steps with decay^every; after
// thousands of steps the initial weights' share is negligible (0.998^4800 ≈ 7e-5). `--ema` in the training
// settings (lib/weight_average.ts) starts from zero and corrects for it instead, so its figures can differ
// from these in the last bits. Prints one JSON line: test exact match and shape accuracy of each set of weights.

import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import {
  DEFAULT_MODEL,
  DEFAULT_TRAIN,
  type ModelConfig,
  RECIPES,
  type TrainConfig,
} from "../../lib/config.ts";
import { ImageCaptionDataset } from "../../lib/data/batches.ts";
import { captionVocabulary } from "../../lib/data/caption_words.ts";
import { readImageCaptionCsv } from "../../lib/data/csv.ts";
import { evaluateAsync } from "../../lib/evaluate.ts";
import { startBackend } from "../../lib/fast_path.ts";
import { buildModel } from "../../lib/model/factory.ts";
import { Tokenizer } from "../../lib/tokenizer.ts";
import { train } from "../../lib/train.ts";

const { values: v } = parseArgs({
  options: {
    seed: { type: "string", default: "1337" },
    decays: { type: "string", default: "0.998,0.999" },
    every: { type: "string", default: "4" },
    data: { type: "string", default: "data/shapes" }, // a folder with train.csv, val.csv, test.csv
    train: { type: "string", default: "{}" }, // extra training keys as JSON, e.g. '{"max_iters": 3000}'
    model: { type: "string", default: "{}" }, // extra model keys as JSON, e.g. '{"img_size": 96}'
  },
});
const decays = v.decays!.split(",").map(Number);
const every = Number(v.every);

await startBackend(undefined);
const cfg: TrainConfig = {
  ...DEFAULT_TRAIN,
  ...RECIPES.seeing.train,
  seed: Number(v.seed),
  save_interval: 0,
  ema: 0, // the recipe's own average (since acc6c59) would replace the last weights this script compares
  ...JSON.parse(v.train!),
} as TrainConfig;
const table = readImageCaptionCsv(`${v.data}/train.csv`);
const tokenizer = Tokenizer.original();
const config: ModelConfig = {
  ...DEFAULT_MODEL,
  ...RECIPES.seeing.model,
  ...JSON.parse(v.model!),
  vocab_size: tokenizer.vocabSize,
};
config.image_words = cfg.word_loss > 0 ? captionVocabulary(table.captions) : [];
const model = buildModel(config, cfg.seed);
const opts = { maxLen: config.block_positions, visualTokens: model.numVisualTokens };
const trainData = await ImageCaptionDataset.fromTable(table, tokenizer, config.img_size, opts);
const val = await ImageCaptionDataset.fromCsv(`${v.data}/val.csv`, tokenizer, config.img_size, opts);
const test = await ImageCaptionDataset.fromCsv(`${v.data}/test.csv`, tokenizer, config.img_size, opts);

const params = model.variables();
const averages = decays.map(() => params.map((p) => tf.variable(p.clone(), false)));
const onStep = (done: number) => {
  if (done % every !== 0) return;
  decays.forEach((d, k) => {
    const keep = d ** every;
    tf.tidy(() => averages[k].forEach((a, i) => a.assign(a.mul(keep).add(params[i].mul(1 - keep)))));
  });
};
const t0 = performance.now();
await train({ model, vocab: tokenizer.symbols as string[], train: trainData, val, cfg, onStep });
const seconds = (performance.now() - t0) / 1000;

const score = async () => {
  const e = await evaluateAsync(model, tokenizer, test);
  return { exact: e.exact_match, shape: e.attributes?.shape ?? null };
};
const last = params.map((p) => p.clone());
const result: Record<string, unknown> = {
  seed: cfg.seed,
  steps: cfg.max_iters,
  seconds,
  last: await score(),
};
for (const [k, d] of decays.entries()) {
  params.forEach((p, i) => p.assign(averages[k][i]));
  result[`ema_${d}`] = await score();
}
params.forEach((p, i) => p.assign(last[i]));
result.last_again = await score(); // the weights put back: the same figures as "last"
console.log(JSON.stringify(result));
