// Word noising: whole words swapped for training words, their characters excluded from the loss, the
// rest of the caption (spaces, punctuation, other words) and its targets untouched.

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { ImageCaptionDataset, makeBatch } from "../../lib/data/batches.ts";
import { WordNoise, wordSpans } from "../../lib/data/word_noise.ts";
import { mulberry32 } from "../../lib/random.ts";
import { VisionLanguageModel } from "../../lib/model/vision_language_model.ts";
import { DEFAULT_MODEL } from "../../lib/config.ts";
import { Tokenizer } from "../../lib/tokenizer.ts";
import { ForwardContext } from "../../lib/model/module.ts";
import { captionLoss, lossTargets } from "../../lib/objective.ts";

await tf.setBackend("cpu");

const CAPTIONS = ["a red star.", "a blue square at the top.", "a green circle."];
const tokenizer = Tokenizer.original();
const ids = CAPTIONS.map((c) => tokenizer.encode(c));
const vocab = tokenizer.symbols;
const words = (text: string) => text.match(/[a-z]+/g)!;

Deno.test("wordSpans finds runs of letters and leaves spaces and punctuation out", () => {
  const isWord = vocab.map((s) => /^[a-z]$/.test(s));
  const text = "a blue square at the top.";
  const spans = wordSpans(tokenizer.encode(text), isWord);
  assert.deepEqual(spans.map(([s, e]) => text.slice(s, e)), words(text));
});

Deno.test("rate 0 keeps every caption; rate 1 swaps every word for one in the same place of a caption", () => {
  const none = new WordNoise(ids, vocab, 0);
  const rand = mulberry32(1);
  for (const row of ids) {
    const n = none.apply(row, rand);
    assert.deepEqual(n.ids, row);
    assert(n.skip.every((f) => f === 0));
  }
  const pool = new Set(CAPTIONS.flatMap(words));
  const all = new WordNoise(ids, vocab, 1);
  for (const [i, row] of ids.entries()) {
    const n = all.apply(row, mulberry32(10 + i));
    const text = tokenizer.decode(n.ids);
    assert(words(text).every((w) => pool.has(w)), `"${text}" uses only training words`);
    // the k-th word comes from the k-th words of the training captions
    words(text).forEach((w, k) =>
      assert(CAPTIONS.some((c) => words(c)[k] === w), `word ${k} "${w}" of "${text}"`)
    );
    assert.equal(words(text).length, words(CAPTIONS[i]).length, "one word in for one word out");
    assert.equal(text.replace(/[a-z]/g, ""), CAPTIONS[i].replace(/[a-z]/g, ""), "spaces and '.' stay");
    // exactly the letters are flagged: every word was swapped
    assert.deepEqual([...n.skip], [...text].map((ch) => /[a-z]/.test(ch) ? 1 : 0));
  }
});

Deno.test("word noise is seeded and swaps about `rate` of the words", () => {
  const noise = new WordNoise(ids, vocab, 0.3);
  const run = (seed: number) => {
    const rand = mulberry32(seed);
    return Array.from({ length: 200 }, (_, i) => noise.apply(ids[i % 3], rand));
  };
  assert.deepEqual(run(5), run(5));
  const longest = Math.max(...ids.map((row) => row.length));
  const capped = new WordNoise(ids, vocab, 1, longest);
  const rand = mulberry32(9);
  const results = Array.from({ length: 200 }, (_, i) => capped.apply(ids[i % 3], rand));
  assert(results.every((c) => c.ids.length <= longest), "never longer than maxLength");
  assert(results.some((c, i) => c.skip.every((f) => f === 0) && c.ids.length === ids[i % 3].length));
  const flaggedWords = run(5).reduce((n, c) =>
    n + wordSpans(c.ids, vocab.map((s) => /^[a-z]$/.test(s)))
      .filter(([s]) => c.skip[s] === 1).length, 0);
  const totalWords = Array.from({ length: 200 }, (_, i) => words(CAPTIONS[i % 3]).length).reduce((a, b) =>
    a + b
  );
  const share = flaggedWords / totalWords;
  assert(share > 0.2 && share < 0.4, `swapped share ${share}`);
});

Deno.test("swapped words are no targets; everything after them still is", () => {
  const S = 8;
  const images = new Float32Array(2 * 3 * S * S);
  const data = new ImageCaptionDataset({
    file: "mem",
    imgSize: S,
    images,
    tokens: ids.slice(0, 2),
    captions: CAPTIONS.slice(0, 2),
    padId: tokenizer.padId,
  });
  const noise = new WordNoise(ids, vocab, 1);
  const noised = [0, 1].map((r) => noise.apply(ids[r], mulberry32(r)));
  const batch = makeBatch(data, [0, 1], noised);
  const model = new VisionLanguageModel({
    ...DEFAULT_MODEL,
    vocab_size: tokenizer.vocabSize,
    img_size: S,
    patch_size: 4,
    image_embed_dim: 16,
    n_embd: 16,
    n_head: 2,
    n_layer: 1,
    num_blks: 1,
    first_token_from_image: true,
  });
  const V = model.numVisualTokens;
  const [B, T] = batch.idx.shape;
  const { ids: targets, weights } = lossTargets(model, batch.idx, batch.targets, "first", batch.skip);
  for (let b = 0; b < B; b++) {
    const chars = tokenizer.decode(noised[b].ids);
    // the target of position V-1+k is caption character k (k = T: the end-of-caption pad)
    for (let k = 0; k <= T; k++) {
      const w = weights[b * (V + T) + V - 1 + k];
      if (k < chars.length) {
        assert.equal(targets[b * (V + T) + V - 1 + k], noised[b].ids[k]);
        assert.equal(w, /[a-z]/.test(chars[k]) ? 0 : 1, `row ${b}, char ${k} "${chars[k]}"`);
      } else if (k === chars.length) assert.equal(w, 1, "the end-of-caption pad is still learned");
      else assert.equal(w, 0, "later pads are not");
    }
  }
  const loss = captionLoss(model, batch.images, batch.idx, batch.targets, ForwardContext.eval(), "first", {
    skip: batch.skip,
  });
  assert(Number.isFinite(loss.dataSync()[0]));
  tf.dispose([loss, batch]);
  model.dispose();
});
