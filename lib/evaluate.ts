// Evaluating a trained model on a dataset: the mean loss over caption targets, and greedy captions
// scored against the truth with lib/eval.ts (exact match, character accuracy, and — for captions of
// the shapes grammar — per-attribute accuracy and confusions).
//
// Models trained the original way never learn a caption's first character (the visual position has
// no target), so for them the truth's first character is given as the prompt and counted as part of
// the caption. Models trained with `first_token_from_image` caption from the image alone.

import * as tf from "@tensorflow/tfjs";
import type { ImageCaptionDataset } from "./data/batches.ts";
import { summarize, type Summary } from "./data/shapes_score.ts";
import { generate, type SampleOptions } from "./generate.ts";
import { ForwardContext } from "./model/module.ts";
import { captionLoss, lossTargets } from "./objective.ts";
import type { VisionLanguageModel } from "./model/vision_language_model.ts";
import type { Tokenizer } from "./tokenizer.ts";

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

/** Greedy (or sampled) captions for every row of a dataset, in order. */
export function captionDataset(
  model: VisionLanguageModel,
  tokenizer: Tokenizer,
  data: ImageCaptionDataset,
  opts: SampleOptions & { batchSize?: number; maxNewTokens?: number } = {},
): string[] {
  const out: string[] = [];
  const maxNewTokens = opts.maxNewTokens ?? maxTokens(data);
  for (const batch of data.allBatches(opts.batchSize ?? 32)) {
    if (model.config.first_token_from_image) {
      const ids = generate(model, batch.images, { ...opts, maxNewTokens });
      out.push(...ids.map((row) => tokenizer.decode(row)));
    } else {
      // Each row is prompted with its own first character: rows sharing one are generated together.
      const captions = new Array<string>(batch.rows.length);
      for (const [first, members] of groupBy(batch.rows.map((row) => data.tokens[row][0]))) {
        const images = tf.gather(batch.images, members); // (G, 3, S, S)
        const ids = generate(model, images, { ...opts, maxNewTokens, prompt: [first] });
        images.dispose();
        members.forEach((b, k) => captions[b] = tokenizer.decode([first, ...ids[k]]));
      }
      out.push(...captions);
    }
    tf.dispose(batch);
  }
  return out;
}

/**
 * Mean loss over a whole dataset (every caption target plus one end-of-caption target per row). A batch's
 * loss is the mean over its targets, so it counts as many times as it has targets: the result does not
 * depend on the batch size.
 */
export function datasetLoss(model: VisionLanguageModel, data: ImageCaptionDataset, batchSize = 32): number {
  let total = 0, targets = 0;
  for (const batch of data.allBatches(batchSize)) {
    const { weights } = lossTargets(model, batch.idx, batch.targets, "first");
    const n = weights.reduce((sum, w) => sum + w, 0);
    total += n *
      tf.tidy(() =>
        captionLoss(model, batch.images, batch.idx, batch.targets, ForwardContext.eval(), "first")
          .dataSync()[0]
      );
    targets += n;
    tf.dispose(batch);
  }
  return total / targets;
}

export function evaluate(
  model: VisionLanguageModel,
  tokenizer: Tokenizer,
  data: ImageCaptionDataset,
  opts: { batchSize?: number } = {},
): Evaluation {
  const loss = datasetLoss(model, data, opts.batchSize);
  const predictions = captionDataset(model, tokenizer, data, { greedy: true, batchSize: opts.batchSize });
  const truths = [...data.captions];
  return { loss, ...summarize(predictions, truths), predictions, truths };
}
