// Building a model of the kind a config names.

import { configProblem, type ModelConfig, type ModelType } from "../config.ts";
import { VisionMoELanguageModel } from "./moe.ts";
import { VisionLanguageModel } from "./vision_language_model.ts";

/** Something that builds a model of one kind. */
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
