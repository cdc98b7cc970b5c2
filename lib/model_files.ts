// Models in and out of checkpoint folders: config.json (the hyper-parameters under the original's names,
// `model_type` and `vocab`, symbols by token id with "<pad>" last; a missing key means the original's
// value, so a PyTorch user can write this file by hand) and model.safetensors (the original's state_dict).

import { checkTensors, loadCheckpoint, saveCheckpoint } from "./checkpoint.ts";
import { initOf, type ModelConfig, type ModelType, parseConfig } from "./config.ts";
import { buildModel } from "./model/factory.ts";
import type { VisionLanguageModel } from "./model/vision_language_model.ts";

/** The config.json we write for a model (`init` written out: how its weights started). */
export function configJson(
  model: ModelConfig,
  vocab: string[],
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return { ...model, init: initOf(model), vocab, ...extra };
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
  const tensors = [...model.stateDict()].map(([name, t]) => ({ name, shape: t.shape, data: t.data }));
  await saveCheckpoint(dir, configJson(model.config, vocab, extra), tensors, alongside);
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
    model.loadStateDict(tensors);
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, vocab: parsed.vocab, extra: parsed.extra };
}
