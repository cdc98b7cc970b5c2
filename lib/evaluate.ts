// Evaluating a trained model on a dataset: the mean loss over caption targets, and greedy captions
// scored against the truth (lib/metrics.ts: exact match, character accuracy; lib/data/shapes_score.ts:
// for captions of the shapes grammar, per-attribute accuracy and confusions).
//
// Models trained the original way never learn a caption's first character (the visual position has
// no target), so for them the truth's first character is given as the prompt and counted as part of
// the caption. Models trained with `first_token_from_image` caption from the image alone.
//
// Each function has an async twin (…Async) that reads values with `await data()`: the one to use on
// WebGPU. Both run the same readback generator (lib/readback.ts).

import * as tf from "@tensorflow/tfjs";
import type { ImageCaptionDataset } from "./data/batches.ts";
import { summarize, type Summary } from "./data/shapes_score.ts";
import { generation, type SampleOptions } from "./generate.ts";
import { ForwardContext } from "./model/module.ts";
import { captionLoss, lossTargetTensors } from "./objective.ts";
import type { VisionLanguageModel } from "./model/vision_language_model.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { readAsync, type Readback, readSync } from "./readback.ts";

export interface Evaluation extends Summary {
  loss: number; // mean cross-entropy over every caption target and each caption's end (<pad>) target
  predictions: string[];
  truths: string[];
}

/** Longest caption (in characters) worth generating for this dataset. */
function maxTokens(data: ImageCaptionDataset): number {
  return Math.max(...data.tokens.map((t) => t.length)) + 8;
}

/** Positions of each distinct value: [value, [i, j, ...]] in order of first appearance. */
function groupBy(values: number[]): Map<number, number[]> {
  const groups = new Map<number, number[]>();
  values.forEach((v, i) => groups.set(v, [...(groups.get(v) ?? []), i]));
  return groups;
}

type CaptionOptions = SampleOptions & { batchSize?: number; maxNewTokens?: number };

/** Greedy (or sampled) captions for every row of a dataset, in order. */
export function captionDataset(
  model: VisionLanguageModel,
  tokenizer: Tokenizer,
  data: ImageCaptionDataset,
  opts: CaptionOptions = {},
): string[] {
  return readSync(captioning(model, tokenizer, data, opts));
}

export function captionDatasetAsync(
  model: VisionLanguageModel,
  tokenizer: Tokenizer,
  data: ImageCaptionDataset,
  opts: CaptionOptions = {},
): Promise<string[]> {
  return readAsync(captioning(model, tokenizer, data, opts));
}

function* captioning(
  model: VisionLanguageModel,
  tokenizer: Tokenizer,
  data: ImageCaptionDataset,
  opts: CaptionOptions,
): Readback<string[]> {
  const out: string[] = [];
  const maxNewTokens = opts.maxNewTokens ?? maxTokens(data);
  for (const batch of data.allBatches(opts.batchSize ?? 32)) {
    try {
      if (model.config.first_token_from_image) {
        const ids = yield* generation(model, batch.images, { ...opts, maxNewTokens });
        out.push(...ids.map((row) => tokenizer.decode(row)));
        continue;
      }
      // Each row is prompted with its own first character: rows sharing one are generated together.
      const captions = new Array<string>(batch.rows.length);
      for (const [first, members] of groupBy(batch.rows.map((row) => data.tokens[row][0]))) {
        const images = tf.gather(batch.images, members); // (G, 3, S, S)
        try {
          const ids = yield* generation(model, images, { ...opts, maxNewTokens, prompt: [first] });
          members.forEach((b, k) => captions[b] = tokenizer.decode([first, ...ids[k]]));
        } finally {
          images.dispose();
        }
      }
      out.push(...captions);
    } finally {
      tf.dispose(batch);
    }
  }
  return out;
}

/**
 * Mean loss over a whole dataset (every caption target plus one end-of-caption target per row). A batch's
 * loss is the mean over its targets, so it counts as many times as it has targets: the result does not
 * depend on the batch size.
 */
export function datasetLoss(model: VisionLanguageModel, data: ImageCaptionDataset, batchSize = 32): number {
  return readSync(lossOver(model, data, batchSize));
}

export function datasetLossAsync(
  model: VisionLanguageModel,
  data: ImageCaptionDataset,
  batchSize = 32,
): Promise<number> {
  return readAsync(lossOver(model, data, batchSize));
}

/** Each batch's loss and target count stay on the device and are read together at the end. */
function* lossOver(
  model: VisionLanguageModel,
  data: ImageCaptionDataset,
  batchSize: number,
): Readback<number> {
  const parts: tf.Tensor[] = [];
  try {
    for (const batch of data.allBatches(batchSize)) {
      parts.push(tf.tidy(() => {
        const loss = captionLoss(
          model,
          batch.images,
          batch.idx,
          batch.targets,
          ForwardContext.eval(),
          "first",
        );
        const targets = tf.sum(lossTargetTensors(model, batch.idx, batch.targets, "first").weights);
        return tf.stack([loss, targets]); // (2)
      }));
      tf.dispose(batch);
    }
    const values = yield tf.tidy(() => tf.stack(parts)); // (batches, 2)
    let total = 0, targets = 0;
    for (let i = 0; i < values.length; i += 2) {
      total += values[i] * values[i + 1];
      targets += values[i + 1];
    }
    return total / targets;
  } finally {
    tf.dispose(parts);
  }
}

export function evaluate(
  model: VisionLanguageModel,
  tokenizer: Tokenizer,
  data: ImageCaptionDataset,
  opts: { batchSize?: number } = {},
): Evaluation {
  return readSync(evaluation(model, tokenizer, data, opts));
}

export function evaluateAsync(
  model: VisionLanguageModel,
  tokenizer: Tokenizer,
  data: ImageCaptionDataset,
  opts: { batchSize?: number } = {},
): Promise<Evaluation> {
  return readAsync(evaluation(model, tokenizer, data, opts));
}

function* evaluation(
  model: VisionLanguageModel,
  tokenizer: Tokenizer,
  data: ImageCaptionDataset,
  opts: { batchSize?: number },
): Readback<Evaluation> {
  const loss = yield* lossOver(model, data, opts.batchSize ?? 32);
  const predictions = yield* captioning(model, tokenizer, data, { greedy: true, batchSize: opts.batchSize });
  const truths = [...data.captions];
  return { loss, ...summarize(predictions, truths), predictions, truths };
}
