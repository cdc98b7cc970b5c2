// Datasets and batches: the original's split and get_batch layout, seeded sampling, no tensor leaks.

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import sharp from "sharp";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { BatchSampler, ImageCaptionDataset, makeBatch } from "../../lib/data/batches.ts";
import { normaliseByte } from "../../lib/data/images.ts";
import { Tokenizer } from "../../lib/tokenizer.ts";

await tf.setBackend("cpu");

const S = 4; // image size: small keeps the tests fast
const dir = Deno.makeTempDirSync({ prefix: "seemore_batches_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

/** Row i: a flat grey image of value 20 * i and caption CAPTIONS[i]. */
const CAPTIONS = ["ab", "abc", "a", "cab", "bb", "c", "abcab", "ca", "b", "acb"];
const tokenizer = Tokenizer.fromCaptions(CAPTIONS); // " " absent: a b c <pad>; pad id 3
const PAD_ID = 3;

async function pngBase64(grey: number): Promise<string> {
  const raw = new Uint8Array(6 * 6).fill(grey);
  const png = await sharp(raw, { raw: { width: 6, height: 6, channels: 1 } }).png().toBuffer();
  return Buffer.from(png).toString("base64");
}

async function writeCsv(name: string, captions: string[]): Promise<string> {
  const rows = await Promise.all(captions.map(async (caption, i) => `${await pngBase64(20 * i)},${caption}`));
  const path = join(dir, name);
  Deno.writeTextFileSync(path, `b64string_images,caption\n${rows.join("\n")}\n`);
  return path;
}

const csvPath = await writeCsv("ten.csv", CAPTIONS);
const dataset = await ImageCaptionDataset.fromCsv(csvPath, tokenizer, S);

function ids(t: tf.Tensor2D): number[][] {
  return t.arraySync() as number[][];
}

Deno.test("fromCsv: captions tokenised, images decoded in row order", () => {
  assert.equal(dataset.length, 10);
  assert.equal(dataset.images.length, 10 * 3 * S * S);
  assert.deepEqual(dataset.tokens[3], tokenizer.encode("cab"));
  assert.deepEqual(dataset.captions, CAPTIONS);
  for (const row of [0, 5, 9]) {
    assert.ok(dataset.image(row).every((v, k) => v === normaliseByte(20 * row, Math.floor(k / (S * S)))));
  }
});

Deno.test("fromCsv: an unknown character names file, row and column caption", async () => {
  const path = await writeCsv("unknown.csv", ["ab", "ab", "abz"]);
  await assert.rejects(
    ImageCaptionDataset.fromCsv(path, tokenizer, S),
    new RegExp(`^Error: ${path}, row 3, column "caption": character "z" \\(U\\+007A\\) at position 3`),
  );
});

Deno.test("fromCsv: caption + visual token must fit the decoder's positions", async () => {
  const path = await writeCsv("long.csv", ["abc", "abcabc"]);
  await assert.rejects(
    ImageCaptionDataset.fromCsv(path, tokenizer, S, { maxLen: 6 }),
    new RegExp(
      `${path}, row 2, column "caption": the caption has 6 characters; with the visual token that is 7 positions, more than the decoder's 6`,
    ),
  );
  assert.equal((await ImageCaptionDataset.fromCsv(path, tokenizer, S, { maxLen: 7 })).length, 2);
  await assert.rejects(
    ImageCaptionDataset.fromCsv(path, tokenizer, S, { maxLen: 7, visualTokens: 2 }),
    /row 2, column "caption": the caption has 6 characters; with 2 visual tokens that is 8 positions/,
  );
});

Deno.test("fromCsv: a bad image names its row and column", async () => {
  const path = join(dir, "badimage.csv");
  Deno.writeTextFileSync(path, `b64string_images,caption\n${await pngBase64(1)},ab\nAAAA,ab\n`);
  await assert.rejects(
    ImageCaptionDataset.fromCsv(path, tokenizer, S),
    new RegExp(`${path}, row 2, column "b64string_images": not a PNG or JPEG image`),
  );
});

Deno.test("split: first floor(0.9 n) rows train, the rest validate; empty splits are errors", () => {
  const { train, val } = dataset.split();
  assert.deepEqual(train.captions, CAPTIONS.slice(0, 9));
  assert.deepEqual(val.captions, CAPTIONS.slice(9));
  assert.deepEqual(val.image(0), dataset.image(9));
  assert.equal(dataset.slice(0, 5).split().train.length, 4); // floor(4.5)
  assert.throws(
    () => dataset.slice(0, 1).split(),
    new RegExp(`${csvPath}: 1 rows split at 0.9 give 0 training`),
  );
  assert.throws(
    () => dataset.slice(0, 5).split(1),
    /give 5 training and 0 validation rows; both must be non-empty/,
  );
});

Deno.test("a batch: shapes, padding to the longest caption, targets shifted left with pad", () => {
  const batch = makeBatch(dataset, [6, 2, 3]); // "abcab", "a", "cab"
  assert.deepEqual(batch.images.shape, [3, 3, S, S]);
  assert.equal(batch.images.dtype, "float32");
  assert.deepEqual(batch.idx.shape, [3, 5]);
  assert.equal(batch.idx.dtype, "int32");
  assert.equal(batch.targets.dtype, "int32");
  const [a, b, c, P] = [0, 1, 2, PAD_ID];
  assert.deepEqual(ids(batch.idx), [[a, b, c, a, b], [a, P, P, P, P], [c, a, b, P, P]]);
  assert.deepEqual(ids(batch.targets), [[b, c, a, b, P], [P, P, P, P, P], [a, b, P, P, P]]);
  const images = batch.images.dataSync();
  assert.deepEqual(images.subarray(3 * S * S, 6 * S * S), dataset.image(2));
  assert.deepEqual(batch.rows, [6, 2, 3]);
  assert.deepEqual(batch.lengths, [5, 1, 3]);
  tf.dispose(batch);
});

Deno.test("the sampler is seeded: same seed, same batches; without replacement rows are distinct", () => {
  const draw = (seed: number) => {
    const sampler = new BatchSampler(dataset, seed);
    return [0, 1, 2, 3].map(() => sampler.sampleRows(8));
  };
  const first = draw(1337);
  assert.deepEqual(draw(1337), first);
  assert.notDeepEqual(draw(7), first);
  for (const rows of first) {
    assert.equal(new Set(rows).size, 8);
    assert.ok(rows.every((r) => Number.isInteger(r) && r >= 0 && r < 10));
  }
  assert.notDeepEqual(first[0], first[1]); // the stream moves on
  // Same seed, same tensors.
  const [x, y] = [new BatchSampler(dataset, 5).next(4), new BatchSampler(dataset, 5).next(4)];
  assert.deepEqual(ids(x.idx), ids(y.idx));
  assert.deepEqual(x.images.dataSync(), y.images.dataSync());
  tf.dispose([x, y]);
});

Deno.test("the sampler's stream is pinned: a changed PRNG would silently change every training run", () => {
  const sampler = new BatchSampler(dataset, 1337); // mulberry32
  assert.deepEqual(sampler.sampleRows(5), [1, 2, 8, 7, 6]);
  assert.deepEqual(sampler.sampleRows(5, { replace: true }), [3, 5, 5, 5, 5]);
});

Deno.test("with replacement a batch may exceed the dataset; without, that is an error naming the file", () => {
  const { val } = dataset.split(); // one row, as a small validation split is
  const sampler = new BatchSampler(val, 3);
  assert.deepEqual(sampler.sampleRows(8, { replace: true }), [0, 0, 0, 0, 0, 0, 0, 0]);
  assert.throws(() => sampler.sampleRows(2), new RegExp(`${csvPath}: cannot draw 2 distinct rows from 1`));
  const many = new BatchSampler(dataset, 11).sampleRows(200, { replace: true });
  assert.ok(new Set(many).size === 10, "200 draws with replacement reach all 10 rows");
});

Deno.test("no tensor leaks: a disposed batch leaves tf.memory() as it was", () => {
  const sampler = new BatchSampler(dataset, 1);
  const before = tf.memory().numTensors;
  const batch = sampler.next(4);
  assert.equal(tf.memory().numTensors, before + 3);
  tf.dispose(batch);
  for (const b of dataset.allBatches(4)) tf.dispose(b);
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("allBatches goes through the rows in order, the last batch smaller", () => {
  const sizes: number[] = [];
  const rows: number[] = [];
  for (const batch of dataset.allBatches(4)) {
    sizes.push(batch.images.shape[0]);
    rows.push(...batch.rows);
    assert.equal(batch.idx.shape[0], batch.images.shape[0]);
    tf.dispose(batch);
  }
  assert.deepEqual(sizes, [4, 4, 2]);
  assert.deepEqual(rows, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.throws(() => dataset.allBatches(0).next(), /batch size must be a positive integer/);
});

Deno.test("blank(): the same captions with every image black", () => {
  const blank = dataset.blank();
  assert.deepEqual(blank.tokens, dataset.tokens);
  assert.equal(blank.images.length, dataset.images.length);
  const plane = S * S;
  assert.ok(blank.images.every((v, k) => v === normaliseByte(0, Math.floor(k / plane) % 3)));
  assert.ok(dataset.image(5).some((v) => v !== normaliseByte(0, 0)), "the original images are untouched");
});
