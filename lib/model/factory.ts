// Building a model from a config, and moving models in and out of checkpoint folders.
//
// A checkpoint's config.json holds the hyper-parameters under the original's names, `model_type` and
// `vocab` (symbols by token id, "<pad>" last). A key that is missing means the original's behaviour,
// so a PyTorch user can write this file by hand for weights trained with the original.

import { checkTensors, loadCheckpoint, type NamedTensor, saveCheckpoint } from "../checkpoint.ts";
import { DEFAULT_MODEL, type ModelConfig, type ModelType, PAD } from "../config.ts";
import { Tokenizer } from "../tokenizer.ts";
import { stemChannels } from "./conv_patch_embeddings.ts";
import { VisionMoELanguageModel } from "./moe.ts";
import type { StateDict } from "./ops.ts";
import { VisionLanguageModel } from "./vision_language_model.ts";

/** Something that builds a model of one kind (seeMoE registers itself here). */
export type ModelBuilder = (config: ModelConfig, seed: number) => VisionLanguageModel;

const builders = new Map<ModelType, ModelBuilder>([
  ["seemore", (config, seed) => new VisionLanguageModel(config, seed)],
  ["seemoe", (config, seed) => new VisionMoELanguageModel(config, seed)],
]);

export function registerModel(type: ModelType, build: ModelBuilder): void {
  builders.set(type, build);
}

export function buildModel(config: ModelConfig, seed = 0): VisionLanguageModel {
  const build = builders.get(config.model_type);
  if (!build) {
    throw new Error(`unknown model_type "${config.model_type}" (known: ${[...builders.keys()].join(", ")})`);
  }
  const problem = configProblem(config);
  if (problem) throw new Error(`model config: ${problem}`);
  return build(config, seed);
}

/**
 * How many numbers the model of a config holds, counted from the config alone (before building it).
 * Linear(i, o) has i·o + o; LayerNorm(w) 2w; attention 3C² (q, k, v, no bias) + Linear(C, C); a block's
 * feed-forward (or an expert) Linear(C, 4C) + Linear(4C, C). tests/model/factory_test.ts keeps it exact.
 */
export function parameterCount(c: ModelConfig): number {
  const linear = (i: number, o: number) => i * o + o;
  const feedForward = (w: number) => linear(w, 4 * w) + linear(4 * w, w);
  const attention = (w: number) => 3 * w * w + linear(w, w);
  const block = (w: number, ffn: number) => 2 * 2 * w + attention(w) + ffn; // ln1, ln2, attention, ffn
  const D = c.image_embed_dim, C = c.n_embd, V = c.vocab_size, p = c.patch_size;
  const [c1, c2] = stemChannels(D);
  const patches = c.patch_stem === "conv"
    ? linear(9 * 3, c1) + linear(9 * c1, c2) + linear(c2 * (p / 4) ** 2, D)
    : linear(3 * p * p, D);
  const vit = patches + D + ((c.img_size / p) ** 2 + 1) * D + // patch embedding, CLS token, positions
    c.num_blks * block(D, feedForward(D)) + 2 * D;
  const experts = linear(C, c.num_experts) * 2 + c.num_experts * feedForward(C); // router + experts
  const decoderFfn = c.model_type === "seemoe" ? experts : feedForward(C);
  const decoder = V * C + c.block_positions * C + linear(D, 4 * D) + linear(4 * D, C) + // tables, projector
    c.n_layer * block(C, decoderFfn) + 2 * C + linear(C, V);
  const words = c.image_words.length > 0 ? linear(D, c.image_words.length) : 0;
  return vit + decoder + words;
}

/** Why a config cannot be built, naming the keys at fault; undefined if it can. */
export function configProblem(c: ModelConfig): string | undefined {
  for (const key of ["n_embd", "image_embed_dim"] as const) {
    if (c[key] % c.n_head !== 0) return `"${key}" ${c[key]} is not divisible by "n_head" ${c.n_head}`;
  }
  if (c.img_size > MAX_IMG_SIZE) return `"img_size" ${c.img_size} is over the limit of ${MAX_IMG_SIZE}`;
  if (c.img_size % c.patch_size !== 0) {
    return `"img_size" ${c.img_size} is not a multiple of "patch_size" ${c.patch_size}`;
  }
  if (c.patch_stem === "conv" && c.patch_size % 4 !== 0) {
    return `"patch_size" ${c.patch_size} is not a multiple of 4, which "patch_stem" "conv" needs`;
  }
  if (c.model_type === "seemoe" && c.top_k > c.num_experts) {
    return `"top_k" ${c.top_k} is more than "num_experts" ${c.num_experts}`;
  }
  const n = parameterCount(c);
  if (n > MAX_PARAMETERS) {
    return `the model would hold ${n} parameters, more than the limit of ${MAX_PARAMETERS} (2^28): ` +
      `check the sizes ("n_embd", "image_embed_dim", "n_layer", "num_blks", "num_experts", ` +
      `"block_positions", "img_size", "patch_size", "vocab", "image_words")`;
  }
  return undefined;
}

/** What a checkpoint's config.json turns into. */
export interface CheckpointConfig {
  model: ModelConfig;
  vocab: string[];
  /** Every other key of config.json, kept as it was (e.g. the training recipe). */
  extra: Record<string, unknown>;
}

/** Whole-number keys and the least value each may take. */
const INTEGER_KEYS = {
  n_embd: 1,
  image_embed_dim: 1,
  n_head: 1,
  n_layer: 0,
  num_blks: 0,
  img_size: 1,
  patch_size: 1,
  block_positions: 1,
  num_experts: 1,
  top_k: 1,
} as const;
/** Dropout probabilities: from 0 up to, not including, 1. */
const RATE_KEYS = ["dropout", "emb_dropout", "blk_dropout"] as const;
/** Any finite number from 0 up. */
const WEIGHT_KEYS = ["aux_loss_coef", "capacity_factor"] as const;
const BOOLEAN_KEYS = ["first_token_from_image", "router_noise_in_eval"] as const;

/**
 * The largest model a config may describe: 2^28 parameters (1 GiB of float32, about 20 times the
 * original's 12.9 M), so a config with a typo like n_embd 1e9 is refused before anything is allocated.
 */
export const MAX_PARAMETERS = 2 ** 28;
/** The largest img_size: one 4096 × 4096 image is already 192 MiB of float32. */
export const MAX_IMG_SIZE = 4096;

/** Keys whose value is one of a few words (first = the original's behaviour). */
const CHOICE_KEYS = {
  visual_tokens: ["cls", "patches"],
  attention_scale: ["width", "head"],
  residual: ["original", "pre_norm"],
  patch_stem: ["linear", "conv"],
} as const;
type ChoiceKey = keyof typeof CHOICE_KEYS;

/** Validates a parsed config.json; errors name the file and the key. */
export function parseConfig(json: Record<string, unknown>, file: string): CheckpointConfig {
  const vocab = json.vocab;
  if (!Array.isArray(vocab) || vocab.length < 2 || !vocab.every((s) => typeof s === "string")) {
    throw new Error(
      `${file}: "vocab" must be a list of at least two symbols (token id order, "${PAD}" last)`,
    );
  }
  if (vocab[vocab.length - 1] !== PAD) throw new Error(`${file}: the last "vocab" entry must be "${PAD}"`);
  try {
    new Tokenizer(vocab); // one character per symbol, none twice
  } catch (e) {
    throw new Error(`${file}: "vocab": ${(e as Error).message.replace(/^Tokenizer: /, "")}`);
  }
  const model: ModelConfig = { ...DEFAULT_MODEL, vocab_size: vocab.length };
  const type = json.model_type ?? "seemore";
  if (type !== "seemore" && type !== "seemoe") {
    throw new Error(`${file}: "model_type" must be "seemore" or "seemoe", not ${JSON.stringify(type)}`);
  }
  model.model_type = type;
  const bad = (key: string, what: string) => {
    throw new Error(`${file}: "${key}" must be ${what}, not ${JSON.stringify(json[key])}`);
  };
  for (const [key, least] of Object.entries(INTEGER_KEYS) as [keyof typeof INTEGER_KEYS, number][]) {
    if (json[key] === undefined) continue;
    if (!Number.isSafeInteger(json[key]) || (json[key] as number) < least) bad(key, `an integer ≥ ${least}`);
    model[key] = json[key] as number;
  }
  for (const key of RATE_KEYS) {
    if (json[key] === undefined) continue;
    const v = json[key];
    if (typeof v !== "number" || !(v >= 0 && v < 1)) bad(key, "a probability from 0 to less than 1");
    model[key] = v as number;
  }
  for (const key of WEIGHT_KEYS) {
    if (json[key] === undefined) continue;
    const v = json[key];
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) bad(key, "a number ≥ 0");
    model[key] = v as number;
  }
  for (const key of BOOLEAN_KEYS) {
    if (json[key] === undefined) continue;
    if (typeof json[key] !== "boolean") bad(key, "true or false");
    model[key] = json[key] as boolean;
  }
  if (json.vocab_size !== undefined && json.vocab_size !== vocab.length) {
    throw new Error(`${file}: "vocab_size" is ${json.vocab_size} but "vocab" lists ${vocab.length} symbols`);
  }
  for (const [key, allowed] of Object.entries(CHOICE_KEYS) as [ChoiceKey, readonly string[]][]) {
    if (json[key] === undefined) continue;
    if (!allowed.includes(json[key] as string)) {
      throw new Error(`${file}: "${key}" must be one of ${allowed.map((a) => `"${a}"`).join(", ")}`);
    }
    (model as unknown as Record<string, unknown>)[key] = json[key];
  }
  if (json.image_words !== undefined) {
    const words = json.image_words;
    if (!Array.isArray(words) || !words.every((w) => typeof w === "string" && w.length > 0)) {
      throw new Error(`${file}: "image_words" must be a list of words`);
    }
    model.image_words = words as string[];
  }
  const known = new Set<string>([
    "vocab",
    "model_type",
    "vocab_size",
    "image_words",
    ...Object.keys(INTEGER_KEYS),
    ...RATE_KEYS,
    ...WEIGHT_KEYS,
    ...BOOLEAN_KEYS,
    ...Object.keys(CHOICE_KEYS),
  ]);
  const extra = Object.fromEntries(Object.entries(json).filter(([k]) => !known.has(k)));
  const problem = configProblem(model);
  if (problem) throw new Error(`${file}: ${problem}`);
  return { model, vocab: vocab as string[], extra };
}

/** The config.json we write for a model. */
export function configJson(
  model: ModelConfig,
  vocab: string[],
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return { ...model, vocab, ...extra };
}

function stateTensors(state: StateDict): NamedTensor[] {
  return [...state].map(([name, t]) => ({ name, shape: t.shape, data: t.data }));
}

/** Writes config.json and model.safetensors (temp names, then renamed). */
export async function saveModel(
  dir: string,
  model: VisionLanguageModel,
  vocab: string[],
  extra: Record<string, unknown> = {},
): Promise<void> {
  await saveCheckpoint(dir, configJson(model.config, vocab, extra), stateTensors(model.stateDict()));
}

/** Loads a checkpoint folder into a new model; config and tensors must agree (errors name the tensor). */
export async function loadModel(
  dir: string,
  expectType?: ModelType,
): Promise<{ model: VisionLanguageModel; vocab: string[]; extra: Record<string, unknown> }> {
  const { config, tensors } = await loadCheckpoint(dir);
  const parsed = parseConfig(config, `${dir}/config.json`);
  if (expectType && parsed.model.model_type !== expectType) {
    throw new Error(
      `${dir}: this checkpoint holds a "${parsed.model.model_type}" model, not "${expectType}" (config.json "model_type")`,
    );
  }
  const model = buildModel(parsed.model);
  try {
    checkTensors(model.expectedShapes(), tensors, `${dir}/model.safetensors`);
    model.loadState("", tensors);
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, vocab: parsed.vocab, extra: parsed.extra };
}
