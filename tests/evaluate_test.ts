// lib/evaluate.ts, which gives the README's test figures: captions for every row of a dataset (from the
// image alone, or prompted with the truth's first character), the dataset loss, and evaluate() that
// scores them. A tiny model memorises five images (a few seconds), so its captions must be the truths,
// in row order; equalities that hold for any weights are checked on an untrained model too.

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { DEFAULT_TRAIN } from "../lib/config.ts";
import { ImageCaptionDataset } from "../lib/data/batches.ts";
import { makeRows } from "../lib/data/shapes.ts";
import { summarize } from "../lib/data/shapes_score.ts";
import { captionDataset, datasetLoss, evaluate } from "../lib/evaluate.ts";
import { generate } from "../lib/generate.ts";
import { ForwardContext } from "../lib/model/module.ts";
import { VisionLanguageModel } from "../lib/model/vision_language_model.ts";
import { captionLoss } from "../lib/objective.ts";
import { Tokenizer } from "../lib/tokenizer.ts";
import { train } from "../lib/train.ts";
import { tinyConfig, useBackend } from "./helpers.ts";

await useBackend();
const tokenizer = Tokenizer.original();

// First characters a, b, a, c, b: the prompted path groups rows 0 and 2, 1 and 4, and 3 alone, and must
// put the captions back in row order. Two lengths, so that a mean over rows differs from one over targets.
const CAPTIONS = ["ab.", "bad.", "ac.", "cab.", "bd."];
const images = makeRows(5, 1, "train", CAPTIONS.length).map((r) => r.image);
const data = await ImageCaptionDataset.fromTable({ file: "five", images, captions: CAPTIONS }, tokenizer, 16);

function config(firstTokenFromImage: boolean) {
  return tinyConfig({
    n_embd: 16,
    image_embed_dim: 16,
    n_head: 2,
    n_layer: 1,
    img_size: 16,
    patch_size: 8,
    dropout: 0,
    emb_dropout: 0,
    blk_dropout: 0,
    first_token_from_image: firstTokenFromImage,
  });
}

/** The same weights under the other setting of first_token_from_image (it changes no parameter). */
function withFirstToken(model: VisionLanguageModel, firstTokenFromImage: boolean): VisionLanguageModel {
  const other = new VisionLanguageModel(config(firstTokenFromImage), 0);
  other.loadStateDict(model.stateDict());
  return other;
}

// Trained with the first character as a target, the model also continues a caption from its first
// character, so the same weights caption both ways.
const trained = new VisionLanguageModel(config(true), 7);
await train({
  model: trained,
  vocab: tokenizer.symbols as string[],
  train: data,
  cfg: { ...DEFAULT_TRAIN, batch_size: 5, max_iters: 250, learning_rate: 3e-3, eval_interval: 1000 },
});
const prompted = withFirstToken(trained, false);

Deno.test("captionDataset from the image alone (first_token_from_image): the memorised truths, in row order", () => {
  for (const batchSize of [2, 32]) {
    assert.deepEqual(captionDataset(trained, tokenizer, data, { greedy: true, batchSize }), CAPTIONS);
  }
});

Deno.test("captionDataset prompted by the truth's first character: grouped rows come back in row order", () => {
  for (const batchSize of [1, 2, 32]) {
    assert.deepEqual(captionDataset(prompted, tokenizer, data, { greedy: true, batchSize }), CAPTIONS);
  }
});

Deno.test("captionDataset on any weights: each row's own generate(), whatever the batch size", () => {
  for (const fromImage of [false, true]) {
    const model = new VisionLanguageModel(config(fromImage), 11);
    const maxNewTokens = 6;
    // Row by row with generate() itself: the prompted path starts each caption with its truth's first id.
    const expected = CAPTIONS.map((_caption, row) => {
      const batch = [...data.allBatches(1)][row];
      const prompt = fromImage ? [] : [data.tokens[row][0]];
      const ids = generate(model, batch.images, { greedy: true, maxNewTokens, prompt })[0];
      tf.dispose(batch);
      return tokenizer.decode([...prompt, ...ids]);
    });
    if (!fromImage) {
      expected.forEach((c, row) => assert.equal(c[0], CAPTIONS[row][0]));
      assert(new Set(expected).size > 1, `every row is captioned alike: ${expected}`); // or order is untested
    }
    for (const batchSize of [1, 2, 32]) {
      const got = captionDataset(model, tokenizer, data, { greedy: true, batchSize, maxNewTokens });
      assert.deepEqual(got, expected, `first_token_from_image ${fromImage}, batch ${batchSize}`);
    }
    model.dispose();
  }
});

Deno.test("datasetLoss is the mean over every target, whatever the batch size", () => {
  for (const fromImage of [false, true]) {
    const model = new VisionLanguageModel(config(fromImage), 11);
    // Row by row: a caption of n characters has n targets (n - 1 characters and its end), plus its first
    // character from the visual position with first_token_from_image.
    let sum = 0, count = 0;
    for (const batch of data.allBatches(1)) {
      const n = data.tokens[batch.rows[0]].length + (fromImage ? 1 : 0);
      sum += n *
        tf.tidy(() =>
          captionLoss(model, batch.images, batch.idx, batch.targets, ForwardContext.eval(), "first")
            .dataSync()[0]
        );
      count += n;
      tf.dispose(batch);
    }
    for (const batchSize of [1, 2, 3, 32]) {
      const loss = datasetLoss(model, data, batchSize);
      assert(Math.abs(loss - sum / count) < 1e-5, `batch ${batchSize}: ${loss} != ${sum / count}`);
    }
    model.dispose();
  }
});

Deno.test("evaluate: the dataset loss, greedy captions and their scores", () => {
  for (const model of [trained, prompted]) {
    const result = evaluate(model, tokenizer, data, { batchSize: 2 });
    assert.deepEqual(result.predictions, CAPTIONS);
    assert.deepEqual(result.truths, CAPTIONS);
    assert.equal(result.exact_match, 1);
    assert.equal(result.char_accuracy, 1);
    assert.equal(result.n, CAPTIONS.length);
    assert.equal(result.loss, datasetLoss(model, data, 2));
    assert(result.loss < 0.05, `the memorised captions' loss is ${result.loss}`);
  }
  // An untrained model: scores are summarize()'s on its own captions.
  const fresh = new VisionLanguageModel(config(true), 11);
  const result = evaluate(fresh, tokenizer, data);
  assert.deepEqual(result.predictions, captionDataset(fresh, tokenizer, data, { greedy: true }));
  const { exact_match, char_accuracy, n } = summarize(result.predictions, CAPTIONS);
  assert.deepEqual([result.exact_match, result.char_accuracy, result.n], [exact_match, char_accuracy, n]);
  assert(result.loss > 1, `an untrained model's loss is ${result.loss}`);
  fresh.dispose();
});
