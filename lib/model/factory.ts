// Building a model from a config, and moving models in and out of checkpoint folders.
//
// A checkpoint's config.json holds the hyper-parameters under the original's names, `model_type` and
// `vocab` (symbols by token id, "<pad>" last). A key that is missing means the original's behaviour,
// so a PyTorch user can write this file by hand for weights trained with the original.

import { checkTensors, loadCheckpoint, type NamedTensor, saveCheckpoint } from "../checkpoint.ts";
import { DEFAULT_MODEL, type ModelConfig, type ModelType, PAD } from "../config.ts";
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
  return build(config, seed);
}

/** What a checkpoint's config.json turns into. */
export interface CheckpointConfig {
  model: ModelConfig;
  vocab: string[];
  /** Every other key of config.json, kept as it was (e.g. the training recipe). */
  extra: Record<string, unknown>;
}

const NUMBER_KEYS = [
  "n_embd",
  "image_embed_dim",
  "n_head",
  "n_layer",
  "num_blks",
  "img_size",
  "patch_size",
  "dropout",
  "emb_dropout",
  "blk_dropout",
  "block_positions",
  "num_experts",
  "top_k",
  "aux_loss_coef",
  "capacity_factor",
] as const;

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
  const model: ModelConfig = { ...DEFAULT_MODEL, vocab_size: vocab.length };
  const type = json.model_type ?? "seemore";
  if (type !== "seemore" && type !== "seemoe") {
    throw new Error(`${file}: "model_type" must be "seemore" or "seemoe", not ${JSON.stringify(type)}`);
  }
  model.model_type = type;
  for (const key of NUMBER_KEYS) {
    if (json[key] === undefined) continue;
    const v = json[key];
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
      throw new Error(`${file}: "${key}" must be a non-negative number, not ${JSON.stringify(v)}`);
    }
    model[key] = v;
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
  if (json.first_token_from_image !== undefined) {
    model.first_token_from_image = json.first_token_from_image === true;
  }
  if (json.image_words !== undefined) {
    const words = json.image_words;
    if (!Array.isArray(words) || !words.every((w) => typeof w === "string" && w.length > 0)) {
      throw new Error(`${file}: "image_words" must be a list of words`);
    }
    model.image_words = words as string[];
  }
  if (json.router_noise_in_eval !== undefined) {
    model.router_noise_in_eval = json.router_noise_in_eval === true;
  }
  const known = new Set<string>([
    "vocab",
    "model_type",
    "vocab_size",
    "first_token_from_image",
    "router_noise_in_eval",
    "image_words",
    ...NUMBER_KEYS,
    ...Object.keys(CHOICE_KEYS),
  ]);
  const extra = Object.fromEntries(Object.entries(json).filter(([k]) => !known.has(k)));
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

/**
 * Writes config.json and model.safetensors, and any `alongside` files ([name, bytes]), as one group
 * (lib/checkpoint.ts's commitFiles: a crash leaves all the old files or all the new ones).
 */
export async function saveModel(
  dir: string,
  model: VisionLanguageModel,
  vocab: string[],
  extra: Record<string, unknown> = {},
  alongside: [string, Uint8Array][] = [],
): Promise<void> {
  const config = configJson(model.config, vocab, extra);
  await saveCheckpoint(dir, config, stateTensors(model.stateDict()), alongside);
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
