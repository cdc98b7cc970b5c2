// The command line: `deno task train | eval | generate` (each answers --help with its flags).
//
// With no arguments `train` trains on the bundled shapes data (data/shapes) with the seeing recipe and
// reports held-out accuracy; `--data shapes2` names another bundled set (lib/data/bundled.ts).

import * as tf from "@tensorflow/tfjs";
import {
  DEFAULT_MODEL,
  DEFAULT_RECIPE,
  DEFAULT_TRAIN,
  type KeySpec,
  MODEL_KEYS,
  type ModelConfig,
  RECIPES,
  recipeTrain,
  TRAIN_KEYS,
  type TrainConfig,
} from "./config.ts";
import { ImageCaptionDataset } from "./data/batches.ts";
import { DEFAULT_DATA, resolveEvalData, resolveTrainData } from "./data/bundled.ts";
import { captionVocabulary } from "./data/caption_words.ts";
import { type ImageCaptionTable, readImageCaptionCsv } from "./data/csv.ts";
import { decodeImage } from "./data/images.ts";
import { evaluateAsync, type Evaluation } from "./evaluate.ts";
import { type Command, numberFlag, type ParsedFlags, parseFlags, usage, UsageError } from "./flags.ts";
import { SpeedReport, startBackend } from "./fast_path.ts";
import { generateAsync } from "./generate.ts";
import { buildModel } from "./model/factory.ts";
import type { VisionLanguageModel } from "./model/vision_language_model.ts";
import { loadModel } from "./model_files.ts";
import { expertUsageChart, lossChart, usageFromMetrics, writeChart } from "./charts.ts";
import { Tokenizer } from "./tokenizer.ts";
import { train, type TrainResult } from "./train.ts";

const BACKEND_FLAG = {
  value: "NAME",
  group: "training" as const,
  help: "cpu | wasm | webgpu | tensorflow | tensorflow-gpu | auto (or $SEEMORE_BACKEND)",
  default: "auto",
};

export const TRAIN: Command = {
  name: "train",
  summary:
    "Trains a model on a bundled data set (default: shapes) or an image–caption CSV, then captions the " +
    "validation rows and scores the test split.",
  configFlags: true,
  flags: {
    data: {
      value: "NAME|CSV",
      group: "data",
      help: "a bundled data set, data/NAME/{train,val,test}.csv: shapes (one object) or shapes2 (two " +
        "objects and a relation); or a CSV with columns b64string_images, caption",
      default: DEFAULT_DATA,
    },
    val: {
      value: "CSV",
      group: "data",
      help: "validation data (bundled: its val.csv; for a CSV --data without --val: its last 10 %)",
    },
    test: {
      value: "CSV",
      group: "data",
      help: "held-out data scored at the end (bundled: its test.csv; for a CSV --data: none without --test)",
    },
    blind: {
      group: "data",
      help: "blank images in training and evaluation: what captions alone teach (a baseline)",
    },
    recipe: {
      value: "NAME",
      group: "recipe",
      help: "seeing, or original (the PyTorch original's settings); seeing trains --data shapes2 for 9000 " +
        "steps with --word-loss 1",
      default: DEFAULT_RECIPE,
    },
    backend: BACKEND_FLAG,
    minutes: { value: "M", group: "training", help: "stop (and save) after this much training time" },
    out: {
      value: "DIR",
      group: "output",
      help: "run folder: checkpoint, metrics, charts",
      default: "runs/<date>",
    },
    resume: {
      value: "DIR",
      group: "output",
      help: "continue the run saved in DIR (same settings; --steps may grow)",
    },
  },
};

const EVAL: Command = {
  name: "eval",
  summary: "Captions every row of a CSV with a checkpoint (greedy) and scores the captions.",
  flags: {
    ckpt: { value: "DIR", group: "data", help: "checkpoint folder (config.json + model.safetensors)" },
    data: {
      value: "NAME|CSV",
      group: "data",
      help: "image–caption CSV to score, or a bundled data set (shapes, shapes2): its test.csv",
    },
    blind: { group: "data", help: "blank the images (a baseline)" },
    backend: BACKEND_FLAG,
    json: { group: "output", help: "print the scores as one JSON line" },
    samples: { value: "N", group: "output", help: "captions to print", default: "5" },
  },
};

const GENERATE: Command = {
  name: "generate",
  summary: "Writes a caption for one image with a checkpoint.",
  flags: {
    ckpt: { value: "DIR", group: "data", help: "checkpoint folder (config.json + model.safetensors)" },
    image: { value: "FILE", group: "data", help: "a PNG or JPEG of any size" },
    prompt: { value: "TEXT", group: "data", help: "the caption's start", default: '""' },
    greedy: {
      group: "training",
      help: "the most likely character each time (the default unless sampling flags are given)",
    },
    temperature: { value: "T", group: "sampling", help: "sample with this temperature", default: "1" },
    "top-k": {
      value: "K",
      group: "training",
      help: "sample among the K most likely characters (0: all)",
      default: "0",
    },
    "top-p": {
      value: "P",
      group: "training",
      help: "sample among the most likely characters holding P of the mass",
      default: "1",
    },
    "max-tokens": { value: "N", group: "output", help: "characters to write at most", default: "100" },
    seed: { value: "S", group: "sampling", help: "sampling seed", default: "0" },
    backend: BACKEND_FLAG,
  },
};

/** The settings of a training run: recipe defaults (with its changes for a bundled --data), then the flags. */
export function trainSettings(
  flags: ParsedFlags,
): { recipe: string; cfg: TrainConfig; arch: Partial<ModelConfig> } {
  const name = (flags.own.recipe as string | undefined) ?? DEFAULT_RECIPE;
  const recipe = RECIPES[name];
  if (!recipe) throw new UsageError(`--recipe must be one of ${Object.keys(RECIPES).join(", ")}`);
  const data = (flags.own.data as string | undefined) ?? DEFAULT_DATA;
  const cfg = { ...DEFAULT_TRAIN, ...recipeTrain(name, data), ...flags.train } as TrainConfig;
  return { recipe: name, cfg, arch: { ...recipe.model, ...flags.model } };
}

/** The vocabulary for a new model: the original's 66 symbols when the captions fit in them. */
function chooseTokenizer(captions: readonly string[]): Tokenizer {
  const original = Tokenizer.original();
  const symbols = new Set(original.symbols);
  const fits = captions.every((c) => [...c].every((ch) => symbols.has(ch)));
  return fits ? original : Tokenizer.fromCaptions(captions);
}

/** A new model for the data, or the run being resumed (whose saved training settings then apply). */
async function modelFor(flags: ParsedFlags, table: ImageCaptionTable, s: ReturnType<typeof trainSettings>) {
  const resume = flags.own.resume as string | undefined;
  if (resume) {
    const loaded = await loadModel(resume);
    const saved = loaded.extra.train as Partial<TrainConfig> | undefined;
    // The run's own settings, but --steps, and --save-interval when given, from this command line.
    const keep = {
      max_iters: s.cfg.max_iters,
      ...(flags.train.save_interval !== undefined ? { save_interval: s.cfg.save_interval } : {}),
    };
    // A key the saved settings lack came later and was off in that run: its default, not the recipe's.
    if (saved) Object.assign(s.cfg, { ...DEFAULT_TRAIN, ...saved, ...keep });
    return { model: loaded.model, tokenizer: new Tokenizer(loaded.vocab) };
  }
  const tokenizer = chooseTokenizer(table.captions);
  const config: ModelConfig = { ...DEFAULT_MODEL, ...s.arch, vocab_size: tokenizer.vocabSize };
  config.image_words = s.cfg.word_loss > 0 ? captionVocabulary(table.captions) : [];
  return { model: buildModel(config, s.cfg.seed), tokenizer };
}

async function cmdTrain(flags: ParsedFlags): Promise<void> {
  const own = flags.own as Record<string, string | undefined>;
  const paths = resolveTrainData(own.data, own.val, own.test); // before the backend: bad names fail fast
  const started = await startBackend(flags.own.backend as string | undefined); // sets the fast path up first
  const backend = started.info;
  console.error(`backend: ${backend.name}${backend.notes.length ? ` (${backend.notes.join("; ")})` : ""}`);
  const settings = trainSettings(flags);
  const table = readImageCaptionCsv(paths.data);
  const { model, tokenizer } = await modelFor(flags, table, settings);
  const data = await datasets(model, tokenizer, table, paths, flags.own.blind === true);
  const outDir =
    (flags.own.resume ?? flags.own.out ?? `runs/${new Date().toISOString().replace(/[:.]/g, "-")}`) as string;
  const { cfg } = settings;
  const parameters = model.variables().reduce((n, x) => n + x.size, 0).toLocaleString();
  console.error(
    `model: ${model.config.model_type}, ${parameters} parameters; train ${data.train.length} rows, val ` +
      `${data.val.length} rows; ${cfg.max_iters} steps of batch ${cfg.batch_size}; run folder ${outDir}`,
  );
  const minutes = flags.own.minutes === undefined ? undefined : numberFlag(flags, "minutes", 0);
  // Without the fast path: after ten steps, how long this run takes, and would take with it.
  const speed = started.fix && started.path
    ? new SpeedReport(cfg.max_iters, started.path, started.fix)
    : undefined;
  const result = await train({
    model,
    vocab: tokenizer.symbols as string[],
    train: data.train,
    val: data.val,
    cfg,
    outDir,
    extraConfig: { data: paths.data },
    progress: true,
    onStep: speed && ((done, seconds) => speed.onStep(done, seconds)),
    handleSigint: true,
    timeLimitS: minutes === undefined ? undefined : 60 * minutes,
  }, flags.own.resume as string | undefined);
  if (result.interrupted) {
    console.log(`interrupted at step ${result.steps}; saved to ${outDir} (continue with --resume ${outDir})`);
    return;
  }
  await report(model, tokenizer, result, data, outDir, paths.test);
}

/** The training and validation sets (and a loader for the test split), blank images with --blind. */
async function datasets(
  model: VisionLanguageModel,
  tokenizer: Tokenizer,
  table: ImageCaptionTable,
  paths: { val?: string },
  blind: boolean,
) {
  const c = model.config;
  const opts = { maxLen: c.block_positions, visualTokens: model.numVisualTokens };
  const look = (d: ImageCaptionDataset) => (blind ? d.blank() : d);
  const load = async (path: string) =>
    look(await ImageCaptionDataset.fromCsv(path, tokenizer, c.img_size, opts));
  const all = look(await ImageCaptionDataset.fromTable(table, tokenizer, c.img_size, opts));
  const split = paths.val ? { train: all, val: await load(paths.val) } : all.split(0.9);
  return { ...split, load };
}

/** After training: the metrics, sample captions and scores (val, test), test_eval.json and the charts. */
async function report(
  model: VisionLanguageModel,
  tokenizer: Tokenizer,
  result: TrainResult,
  data: { val: ImageCaptionDataset; load: (path: string) => Promise<ImageCaptionDataset> },
  outDir: string,
  testPath?: string,
): Promise<void> {
  console.log(result.frame.toString());
  const valEval = await evaluateAsync(model, tokenizer, data.val.slice(0, Math.min(data.val.length, 64)));
  printSamples(valEval, 6, "validation");
  printScores(valEval, "validation (first 64 rows)");
  if (testPath) {
    const testEval = await evaluateAsync(model, tokenizer, await data.load(testPath));
    printScores(testEval, `test (${testPath})`);
    const { predictions: _p, truths: _t, ...scores } = testEval;
    await Deno.writeTextFile(`${outDir}/test_eval.json`, JSON.stringify(scores, null, 2) + "\n");
  }
  const charts = await writeChart(
    lossChart(result.metrics, { title: `${model.config.model_type}: loss` }),
    `${outDir}/loss`,
  );
  const experts = usageFromMetrics(result.metrics);
  if (experts.length > 0) await writeChart(expertUsageChart(experts), `${outDir}/expert_usage`);
  console.log(`\ncheckpoint: ${outDir}  (loss chart: ${charts.svg}, ${charts.png})`);
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

async function cmdEval(flags: ParsedFlags): Promise<void> {
  const { ckpt, data: name, blind, json } = flags.own as Record<string, string | boolean | undefined>;
  if (typeof ckpt !== "string" || typeof name !== "string") {
    throw new UsageError("eval needs --ckpt DIR and --data CSV (or a bundled name: its test split)");
  }
  const data = resolveEvalData(name);
  await startBackend(flags.own.backend as string | undefined);
  const { model, vocab } = await loadModel(ckpt);
  const tokenizer = new Tokenizer(vocab);
  const opts = { maxLen: model.config.block_positions, visualTokens: model.numVisualTokens };
  let dataset = await ImageCaptionDataset.fromCsv(data, tokenizer, model.config.img_size, opts);
  if (blind) dataset = dataset.blank();
  const e = await evaluateAsync(model, tokenizer, dataset);
  if (json) {
    const { predictions: _p, truths: _t, ...scores } = e;
    console.log(JSON.stringify(scores));
  } else {
    printSamples(e, numberFlag(flags, "samples", 5), data);
    printScores(e, data + (blind ? " (blank images)" : ""));
  }
}

async function cmdGenerate(flags: ParsedFlags): Promise<void> {
  const v = flags.own as Record<string, string | boolean | undefined>;
  if (typeof v.ckpt !== "string" || typeof v.image !== "string") {
    throw new UsageError("generate needs --ckpt DIR and --image FILE");
  }
  await startBackend(v.backend as string | undefined);
  const { model, vocab } = await loadModel(v.ckpt);
  const tokenizer = new Tokenizer(vocab);
  const S = model.config.img_size;
  const pixels = await decodeImage(await Deno.readFile(v.image), S, { file: v.image });
  const sampled = ["temperature", "top-k", "top-p"].some((f) => v[f] !== undefined);
  const prompt = tokenizer.encode((v.prompt as string | undefined) ?? "", { file: "--prompt" });
  const images = tf.tensor4d(pixels, [1, 3, S, S]);
  const ids = await generateAsync(model, images, {
    maxNewTokens: numberFlag(flags, "max-tokens", 100),
    prompt,
    greedy: v.greedy === true || !sampled,
    temperature: numberFlag(flags, "temperature", 1),
    topK: numberFlag(flags, "top-k", 0),
    topP: numberFlag(flags, "top-p", 1),
    seed: numberFlag(flags, "seed", 0),
  });
  images.dispose();
  console.log(tokenizer.decode([...prompt, ...ids[0]]));
}

/** Defaults shown by `train --help`: the default recipe's, with the original's beside them where they differ. */
function trainDefault(key: string): string {
  const base = { ...DEFAULT_MODEL, ...DEFAULT_TRAIN } as Record<string, unknown>;
  const recipe = RECIPES[DEFAULT_RECIPE];
  const seeing = { ...base, ...recipe.model, ...recipe.train } as Record<string, unknown>;
  const spec = ({ ...MODEL_KEYS, ...TRAIN_KEYS } as Record<string, KeySpec<unknown>>)[key];
  const show = (v: unknown) => v === undefined ? spec.defaultText ?? "none" : String(v);
  const same = JSON.stringify(seeing[key]) === JSON.stringify(base[key]);
  return same ? show(base[key]) : `${show(seeing[key])}; --recipe original: ${show(base[key])}`;
}

const COMMANDS: Record<string, [Command, (flags: ParsedFlags) => Promise<void>]> = {
  train: [TRAIN, cmdTrain],
  eval: [EVAL, cmdEval],
  generate: [GENERATE, cmdGenerate],
};

if (import.meta.main) {
  const [name, ...rest] = Deno.args;
  const entry = COMMANDS[name];
  if (!entry) {
    console.error(`usage: deno task train|eval|generate [options]  (each answers --help)`);
    Deno.exit(2);
  }
  const [command, run] = entry;
  try {
    const flags = parseFlags(rest, command);
    if (flags.help) console.log(usage(command, name === "train" ? trainDefault : undefined));
    else await run(flags);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(e instanceof UsageError ? 2 : 1);
  }
}
