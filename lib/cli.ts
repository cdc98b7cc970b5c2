// The command line: `deno task train | eval | generate`.
//
//   train     [--data CSV] [--val CSV] [--test CSV] [--model seemore|seemoe] [--steps N] [--batch N] [--lr X]
//             [--seed S] [--backend B] [--out DIR] [--resume DIR] [--eval-interval N] [--eval-iters N]
//             [--save-interval N (steps between saves of the run folder; 0 = only at the end)]
//             [--minutes M (training-time budget)] [--warmup N] [--decay-lr true|false] [--min-lr X] [--pad-loss all|first|none] [--word-noise P] [--word-loss X]
//             [--blind (blank images: a baseline)]
//             [--recipe seeing|original]  (default seeing; original = the PyTorch original's settings)
//             recipe: [--visual-tokens cls|patches] [--first-token-from-image] [--attention-scale width|head]
//                     [--residual original|pre_norm] [--patch-stem linear|conv]
//             [--n-embd N] [--image-embed-dim N] [--n-head N] [--n-layer N] [--num-blks N] [--img-size N]
//             [--patch-size N] [--dropout X]
//             seeMoE: [--experts 8] [--top-k 2] [--aux-loss X (0 = none)] [--capacity-factor X (0 = no limit)]
//   eval      --ckpt DIR --data CSV [--json] [--blind] [--backend B]
//   generate  --ckpt DIR --image FILE [--prompt TEXT] [--greedy | --temperature T --top-k K --top-p P]
//             [--max-tokens N] [--seed S] [--backend B]
//
// With no arguments `train` trains on the bundled shapes data (data/shapes) and reports held-out accuracy.

import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { initBackend } from "./backend.ts";
import {
  DEFAULT_MODEL,
  DEFAULT_RECIPE,
  DEFAULT_TRAIN,
  type ModelConfig,
  RECIPES,
  type TrainConfig,
} from "./config.ts";
import { ImageCaptionDataset } from "./data/batches.ts";
import { captionVocabulary } from "./data/caption_words.ts";
import { readImageCaptionCsv } from "./data/csv.ts";
import { decodeImage } from "./data/images.ts";
import { evaluate, type Evaluation } from "./evaluate.ts";
import { generate } from "./generate.ts";
import { buildModel, loadModel } from "./model/factory.ts";
import type { VisionLanguageModel } from "./model/vision_language_model.ts";
import { expertUsageChart, lossChart, usageFromMetrics, writeChart } from "./charts.ts";
import { Tokenizer } from "./tokenizer.ts";
import { train } from "./train.ts";

const BUNDLED = new URL("../data/shapes/", import.meta.url).pathname;

class UsageError extends Error {}

/** Architecture flags of `train` (defaults: the original's hyper-parameters). */
const ARCH_FLAGS = [
  ["n-embd", "n_embd"],
  ["image-embed-dim", "image_embed_dim"],
  ["n-head", "n_head"],
  ["n-layer", "n_layer"],
  ["num-blks", "num_blks"],
  ["img-size", "img_size"],
  ["patch-size", "patch_size"],
  ["dropout", "dropout"],
  // seeMoE
  ["experts", "num_experts"],
  ["top-k", "top_k"],
  ["aux-loss", "aux_loss_coef"],
  ["capacity-factor", "capacity_factor"],
] as const;

function num(v: string | undefined, name: string, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} expects a number, got "${v}"`);
  return n;
}

function oneOf<T extends string>(v: string | undefined, name: string, allowed: readonly T[], fallback: T): T {
  if (v === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(v)) {
    throw new UsageError(`--${name} must be one of ${allowed.join(", ")}`);
  }
  return v as T;
}

/** The vocabulary for a new model: the original's 66 symbols when the captions fit in them. */
function chooseTokenizer(captions: readonly string[]): Tokenizer {
  const original = Tokenizer.original();
  const symbols = new Set(original.symbols);
  const fits = captions.every((c) => [...c].every((ch) => symbols.has(ch)));
  return fits ? original : Tokenizer.fromCaptions(captions);
}

function printSamples(e: Evaluation, n: number, label: string): void {
  console.log(`\n${label}: greedy captions (prediction | truth)`);
  for (let i = 0; i < Math.min(n, e.predictions.length); i++) {
    const mark = e.predictions[i] === e.truths[i] ? "✓" : "✗";
    console.log(`  ${mark} ${JSON.stringify(e.predictions[i])} | ${JSON.stringify(e.truths[i])}`);
  }
}

function printScores(e: Evaluation, label: string): void {
  const pct = (x: number) => `${(100 * x).toFixed(1)} %`;
  let line = `${label}: n ${e.n}  loss ${e.loss.toFixed(4)}  exact match ${pct(e.exact_match)}  ` +
    `char accuracy ${pct(e.char_accuracy)}`;
  if (e.attributes) {
    const a = e.attributes;
    const parts = (["colour", "shape", "size", "position", "relation"] as const)
      .filter((k) => a[k] !== null).map((k) => `${k} ${pct(a[k] as number)}`);
    line += `\n  per attribute: ${parts.join("  ")}`;
  }
  console.log(line);
}

async function cmdTrain(args: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args,
    strict: true,
    options: {
      data: { type: "string" },
      val: { type: "string" },
      test: { type: "string" },
      model: { type: "string" },
      steps: { type: "string" },
      batch: { type: "string" },
      lr: { type: "string" },
      seed: { type: "string" },
      backend: { type: "string" },
      out: { type: "string" },
      resume: { type: "string" },
      "eval-interval": { type: "string" },
      "eval-iters": { type: "string" },
      "save-interval": { type: "string" },
      "pad-loss": { type: "string" },
      "visual-tokens": { type: "string" },
      "first-token-from-image": { type: "boolean" },
      "attention-scale": { type: "string" },
      residual: { type: "string" },
      warmup: { type: "string" },
      "decay-lr": { type: "string" },
      "min-lr": { type: "string" },
      "word-noise": { type: "string" },
      "word-loss": { type: "string" },
      "patch-stem": { type: "string" },
      recipe: { type: "string" },
      blind: { type: "boolean" },
      minutes: { type: "string" },
      ...Object.fromEntries(ARCH_FLAGS.map(([flag]) => [flag, { type: "string" as const }])),
    },
  });
  const backend = await initBackend(v.backend);
  console.error(`backend: ${backend.name}${backend.notes.length ? ` (${backend.notes.join("; ")})` : ""}`);

  const bundled = v.data === undefined;
  const dataPath = v.data ?? `${BUNDLED}train.csv`;
  const valPath = v.val ?? (bundled ? `${BUNDLED}val.csv` : undefined);
  const testPath = v.test ?? (bundled ? `${BUNDLED}test.csv` : undefined);

  const recipeName = v.recipe ?? DEFAULT_RECIPE;
  const recipe = RECIPES[recipeName];
  if (!recipe) throw new UsageError(`--recipe must be one of ${Object.keys(RECIPES).join(", ")}`);
  const base: TrainConfig = { ...DEFAULT_TRAIN, ...recipe.train };
  const cfg: TrainConfig = {
    ...base,
    max_iters: num(v.steps, "steps", base.max_iters),
    batch_size: num(v.batch, "batch", base.batch_size),
    learning_rate: num(v.lr, "lr", base.learning_rate),
    seed: num(v.seed, "seed", base.seed),
    eval_interval: num(v["eval-interval"], "eval-interval", base.eval_interval),
    eval_iters: num(v["eval-iters"], "eval-iters", base.eval_iters),
    save_interval: num(v["save-interval"], "save-interval", base.save_interval),
    pad_loss: oneOf(v["pad-loss"], "pad-loss", ["all", "first", "none"] as const, base.pad_loss),
    warmup_iters: num(v.warmup, "warmup", base.warmup_iters),
    decay_lr: oneOf(
      v["decay-lr"],
      "decay-lr",
      ["true", "false"] as const,
      String(base.decay_lr) as "true" | "false",
    ) === "true",
    min_lr: num(v["min-lr"], "min-lr", base.min_lr),
    word_noise: num(v["word-noise"], "word-noise", base.word_noise),
    word_loss: num(v["word-loss"], "word-loss", base.word_loss),
  };

  const table = readImageCaptionCsv(dataPath);
  let model: VisionLanguageModel;
  let tokenizer: Tokenizer;
  if (v.resume) {
    const loaded = await loadModel(v.resume);
    model = loaded.model;
    tokenizer = new Tokenizer(loaded.vocab);
    const saved = loaded.extra.train as Partial<TrainConfig> | undefined;
    // The run's own settings, but --steps, and --save-interval when given, from this command line.
    const keep = {
      max_iters: cfg.max_iters,
      ...(v["save-interval"] !== undefined ? { save_interval: cfg.save_interval } : {}),
    };
    if (saved) Object.assign(cfg, { ...saved, ...keep });
  } else {
    tokenizer = chooseTokenizer(table.captions);
    const arch: ModelConfig = { ...DEFAULT_MODEL, ...recipe.model, vocab_size: tokenizer.vocabSize };
    const config: ModelConfig = {
      ...arch,
      model_type: oneOf(v.model, "model", ["seemore", "seemoe"] as const, "seemore"),
      visual_tokens: oneOf(
        v["visual-tokens"],
        "visual-tokens",
        ["cls", "patches"] as const,
        arch.visual_tokens,
      ),
      first_token_from_image: v["first-token-from-image"] ?? arch.first_token_from_image,
      attention_scale: oneOf(
        v["attention-scale"],
        "attention-scale",
        ["width", "head"] as const,
        arch.attention_scale,
      ),
      residual: oneOf(v.residual, "residual", ["original", "pre_norm"] as const, arch.residual),
      patch_stem: oneOf(v["patch-stem"], "patch-stem", ["linear", "conv"] as const, arch.patch_stem),
    };
    for (const [flag, key] of ARCH_FLAGS) {
      config[key] = num((v as Record<string, string | undefined>)[flag], flag, config[key]);
    }
    config.image_words = cfg.word_loss > 0 ? captionVocabulary(table.captions) : [];
    model = buildModel(config, cfg.seed);
  }
  const c = model.config;
  const opts = { maxLen: c.block_positions, visualTokens: model.numVisualTokens };
  // --blind: every image blank, in training and evaluation — what can be learnt from captions alone.
  const blind = (d: ImageCaptionDataset) => v.blind ? d.blank() : d;
  const load = async (path: string) =>
    blind(await ImageCaptionDataset.fromCsv(path, tokenizer, c.img_size, opts));
  const all = blind(await ImageCaptionDataset.fromTable(table, tokenizer, c.img_size, opts));
  const { train: trainSet, val: valSet } = valPath
    ? { train: all, val: await load(valPath) }
    : all.split(0.9);
  const outDir = v.resume ?? v.out ?? `runs/${new Date().toISOString().replace(/[:.]/g, "-")}`;
  console.error(
    `model: ${c.model_type}, ${
      model.variables().reduce((n, x) => n + x.size, 0).toLocaleString()
    } parameters; ` +
      `train ${trainSet.length} rows, val ${valSet.length} rows; ${cfg.max_iters} steps of batch ${cfg.batch_size}; ` +
      `run folder ${outDir}`,
  );

  const result = await train({
    model,
    vocab: tokenizer.symbols as string[],
    train: trainSet,
    val: valSet,
    cfg,
    outDir,
    extraConfig: { data: dataPath },
    progress: true,
    handleSigint: true,
    timeLimitS: v.minutes === undefined ? undefined : 60 * num(v.minutes, "minutes", 0),
  }, v.resume);
  if (result.interrupted) {
    console.log(`interrupted at step ${result.steps}; saved to ${outDir} (continue with --resume ${outDir})`);
    return;
  }
  console.log(result.frame.toString());

  const valEval = evaluate(model, tokenizer, valSet.slice(0, Math.min(valSet.length, 64)));
  printSamples(valEval, 6, "validation");
  printScores(valEval, "validation (first 64 rows)");
  if (testPath) {
    const testSet = await load(testPath);
    const testEval = evaluate(model, tokenizer, testSet);
    printScores(testEval, `test (${testPath})`);
    await Deno.writeTextFile(
      `${outDir}/test_eval.json`,
      JSON.stringify({ ...testEval, predictions: undefined, truths: undefined }, null, 2) + "\n",
    );
  }
  const lossSpec = lossChart(result.metrics, { title: `${c.model_type}: loss` });
  const charts = await writeChart(lossSpec, `${outDir}/loss`);
  const usage = usageFromMetrics(result.metrics);
  if (usage.length > 0) await writeChart(expertUsageChart(usage), `${outDir}/expert_usage`);
  console.log(`\ncheckpoint: ${outDir}  (loss chart: ${charts.svg}, ${charts.png})`);
}

async function cmdEval(args: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args,
    strict: true,
    options: {
      ckpt: { type: "string" },
      data: { type: "string" },
      json: { type: "boolean" },
      blind: { type: "boolean" },
      backend: { type: "string" },
      samples: { type: "string" },
    },
  });
  if (!v.ckpt || !v.data) throw new UsageError("eval needs --ckpt DIR and --data CSV");
  await initBackend(v.backend);
  const { model, vocab } = await loadModel(v.ckpt);
  const tokenizer = new Tokenizer(vocab);
  let data = await ImageCaptionDataset.fromCsv(v.data, tokenizer, model.config.img_size, {
    maxLen: model.config.block_positions,
    visualTokens: model.numVisualTokens,
  });
  if (v.blind) data = data.blank();
  const e = evaluate(model, tokenizer, data);
  if (v.json) {
    const { predictions: _p, truths: _t, ...scores } = e;
    console.log(JSON.stringify(scores));
  } else {
    printSamples(e, num(v.samples, "samples", 5), v.data);
    printScores(e, v.data + (v.blind ? " (blank images)" : ""));
  }
}

async function cmdGenerate(args: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args,
    strict: true,
    options: {
      ckpt: { type: "string" },
      image: { type: "string" },
      prompt: { type: "string" },
      greedy: { type: "boolean" },
      temperature: { type: "string" },
      "top-k": { type: "string" },
      "top-p": { type: "string" },
      "max-tokens": { type: "string" },
      seed: { type: "string" },
      backend: { type: "string" },
    },
  });
  if (!v.ckpt || !v.image) throw new UsageError("generate needs --ckpt DIR and --image FILE");
  await initBackend(v.backend);
  const { model, vocab } = await loadModel(v.ckpt);
  const tokenizer = new Tokenizer(vocab);
  const S = model.config.img_size;
  const pixels = await decodeImage(await Deno.readFile(v.image), S, { file: v.image });
  const sampled = v.temperature !== undefined || v["top-k"] !== undefined || v["top-p"] !== undefined;
  const prompt = tokenizer.encode(v.prompt ?? "", { file: "--prompt" });
  const images = tf.tensor4d(pixels, [1, 3, S, S]);
  const ids = generate(model, images, {
    maxNewTokens: num(v["max-tokens"], "max-tokens", 100),
    prompt,
    greedy: v.greedy || !sampled,
    temperature: num(v.temperature, "temperature", 1),
    topK: num(v["top-k"], "top-k", 0),
    topP: num(v["top-p"], "top-p", 1),
    seed: num(v.seed, "seed", 0),
  });
  images.dispose();
  console.log(tokenizer.decode([...prompt, ...ids[0]]));
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  train: cmdTrain,
  eval: cmdEval,
  generate: cmdGenerate,
};

if (import.meta.main) {
  const [command, ...rest] = Deno.args;
  const run = COMMANDS[command];
  if (!run) {
    console.error(
      `usage: deno task train|eval|generate [options]  (see the header of lib/cli.ts or README.md)`,
    );
    Deno.exit(2);
  }
  try {
    await run(rest);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(e instanceof UsageError ? 2 : 1);
  }
}
