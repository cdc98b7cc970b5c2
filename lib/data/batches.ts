// Datasets and batches for seemore: decoded images + tokenised captions held in memory, the original's
// 90/10 train/val split, and its get_batch (captions padded to the batch's longest, targets shifted
// left by one with "<pad>" appended), drawn by a seeded sampler so runs repeat exactly.

import * as tf from "@tensorflow/tfjs-core";
import { DEFAULT_MODEL } from "../config.ts";
import { describeLocation, type Tokenizer } from "../tokenizer.ts";
import { CAPTION_COLUMN, type ImageCaptionTable, readImageCaptionCsv } from "./csv.ts";
import { blankImage, decodeBase64Images } from "./images.ts";
import { shiftImages } from "./image_shift.ts";
import type { NoisedCaption } from "./word_noise.ts";
import { mulberry32 } from "../random.ts";

/** One batch; dispose it with `tf.dispose(batch)` (a type, not an interface, so tf.dispose accepts it). */
export type Batch = {
  images: tf.Tensor4D; // (B, 3, S, S) float32, normalised
  idx: tf.Tensor2D; // (B, T) int32 caption ids, padded with "<pad>"
  targets: tf.Tensor2D; // (B, T) int32, idx shifted left by one, "<pad>" at the end
  rows: number[]; // (B,) which dataset rows (0-based) the batch holds
  lengths: number[]; // (B,) caption lengths: targets[b, lengths[b] - 1] is the first "<pad>" target
  /** (B, T) 1 where caption character t is not learned (a word swapped by word noising); absent: all are. */
  skip?: Uint8Array;
};

export interface DatasetParts {
  file: string; // where the data came from, for messages
  imgSize: number;
  images: Float32Array; // (N, 3, S, S)
  tokens: number[][]; // (N, caption length)
  captions: string[]; // (N,)
  padId: number;
}

export interface FromCsvOptions {
  /** Decoder positions (the original's 1000-row table): caption length + visual tokens must fit. */
  maxLen?: number;
  /** Visual tokens in front of the caption: 1 in the original (the ViT's CLS output). */
  visualTokens?: number;
  /** Images decoded at once. */
  concurrency?: number;
}

export class ImageCaptionDataset {
  readonly file: string;
  readonly imgSize: number;
  readonly images: Float32Array; // (N, 3, S, S)
  readonly tokens: readonly number[][];
  readonly captions: readonly string[];
  readonly padId: number;

  constructor(parts: DatasetParts) {
    const n = parts.captions.length;
    const imageSize = 3 * parts.imgSize * parts.imgSize;
    if (parts.tokens.length !== n || parts.images.length !== n * imageSize) {
      throw new Error(
        `${parts.file}: dataset parts disagree: ${n} captions, ${parts.tokens.length} token rows, ` +
          `${parts.images.length / imageSize} images`,
      );
    }
    this.file = parts.file;
    this.imgSize = parts.imgSize;
    this.images = parts.images;
    this.tokens = parts.tokens;
    this.captions = parts.captions;
    this.padId = parts.padId;
  }

  /**
   * Reads a CSV (columns b64string_images, caption), checks every caption against the tokenizer and
   * the decoder's position table, then decodes every image to (3, S, S).
   */
  static async fromCsv(
    path: string,
    tokenizer: Tokenizer,
    imgSize: number,
    options: FromCsvOptions = {},
  ): Promise<ImageCaptionDataset> {
    return await ImageCaptionDataset.fromTable(readImageCaptionCsv(path), tokenizer, imgSize, options);
  }

  /** As fromCsv, from a table already read (row i of the table is data row i + 1 of table.file). */
  static async fromTable(
    table: ImageCaptionTable,
    tokenizer: Tokenizer,
    imgSize: number,
    { maxLen = DEFAULT_MODEL.block_positions, visualTokens = 1, concurrency }: FromCsvOptions = {},
  ): Promise<ImageCaptionDataset> {
    const tokens = table.captions.map((caption, i) => {
      const where = { file: table.file, row: i + 1, column: CAPTION_COLUMN };
      const ids = tokenizer.encode(caption, where);
      if (ids.length + visualTokens > maxLen) {
        const tokens = visualTokens === 1 ? "the visual token" : `${visualTokens} visual tokens`;
        throw new Error(
          `${describeLocation(where)}: the caption has ${ids.length} characters; with ${tokens} ` +
            `that is ${ids.length + visualTokens} positions, more than the decoder's ${maxLen}`,
        );
      }
      return ids;
    });
    const images = await decodeBase64Images(table.images, imgSize, table.file, { concurrency });
    return new ImageCaptionDataset({
      file: table.file,
      imgSize,
      images,
      tokens,
      captions: [...table.captions],
      padId: tokenizer.padId,
    });
  }

  get length(): number {
    return this.captions.length;
  }

  /** The (3, S, S) image of row i, a view (no copy). */
  image(i: number): Float32Array {
    const size = 3 * this.imgSize * this.imgSize;
    return this.images.subarray(i * size, (i + 1) * size);
  }

  /** Rows [start, end) as a dataset sharing this one's image memory. */
  slice(start: number, end: number): ImageCaptionDataset {
    const size = 3 * this.imgSize * this.imgSize;
    return new ImageCaptionDataset({
      file: this.file,
      imgSize: this.imgSize,
      images: this.images.subarray(start * size, end * size),
      tokens: this.tokens.slice(start, end),
      captions: this.captions.slice(start, end),
      padId: this.padId,
    });
  }

  /** The original's split: the first floor(fraction * n) rows train, the rest validate. */
  split(fraction = 0.9): { train: ImageCaptionDataset; val: ImageCaptionDataset } {
    const n = this.length;
    const nTrain = Math.floor(fraction * n);
    if (nTrain < 1 || nTrain >= n) {
      throw new Error(
        `${this.file}: ${n} rows split at ${fraction} give ${nTrain} training and ${n - nTrain} ` +
          `validation rows; both must be non-empty (add rows)`,
      );
    }
    return { train: this.slice(0, nTrain), val: this.slice(nTrain, n) };
  }

  /** The same captions with every image black (normalised): a blind baseline's data. */
  blank(): ImageCaptionDataset {
    const one = blankImage(this.imgSize);
    const images = new Float32Array(this.images.length);
    for (let i = 0; i < this.length; i++) images.set(one, i * one.length);
    return new ImageCaptionDataset({ ...this.parts(), images });
  }

  /** The rows in order, batchSize at a time; the last batch may be smaller. Dispose each batch. */
  *allBatches(batchSize: number): Generator<Batch> {
    checkBatchSize(batchSize);
    for (let start = 0; start < this.length; start += batchSize) {
      const end = Math.min(start + batchSize, this.length);
      yield makeBatch(this, Array.from({ length: end - start }, (_, k) => start + k));
    }
  }

  private parts(): DatasetParts {
    return {
      file: this.file,
      imgSize: this.imgSize,
      images: this.images,
      tokens: [...this.tokens],
      captions: [...this.captions],
      padId: this.padId,
    };
  }
}

function checkBatchSize(batchSize: number): void {
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new Error(`batch size must be a positive integer, got ${batchSize}`);
  }
}

/**
 * The original's get_batch on chosen rows: images stacked, captions padded, targets shifted.
 * `noised`: the rows' captions after word noising (lib/data/word_noise.ts), used instead of the dataset's.
 * `shift`: each image moved by up to `max` pixels each way, drawn from `rand` (lib/data/image_shift.ts).
 */
export function makeBatch(
  dataset: ImageCaptionDataset,
  rows: number[],
  noised?: NoisedCaption[],
  shift?: { max: number; rand: () => number },
): Batch {
  const B = rows.length;
  if (B === 0) throw new Error(`${dataset.file}: a batch needs at least one row`);
  for (const row of rows) {
    if (!Number.isInteger(row) || row < 0 || row >= dataset.length) {
      throw new Error(`${dataset.file}: row ${row} is outside the dataset (0..${dataset.length - 1})`);
    }
  }
  const imageSize = 3 * dataset.imgSize * dataset.imgSize;
  const pixels = new Float32Array(B * imageSize);
  rows.forEach((row, b) => pixels.set(dataset.image(row), b * imageSize));
  if (shift) shiftImages(pixels, dataset.imgSize, shift.max, shift.rand);

  const captions = noised?.map((n) => n.ids) ?? rows.map((row) => dataset.tokens[row]);
  const T = Math.max(...captions.map((ids) => ids.length));
  const idx = new Int32Array(B * T).fill(dataset.padId);
  const targets = new Int32Array(B * T).fill(dataset.padId);
  captions.forEach((ids, b) => {
    idx.set(ids, b * T); // idx[b, :len] = caption
    targets.set(ids.slice(1), b * T); // targets[b, t] = idx[b, t + 1]; the last column stays pad
  });
  let skip: Uint8Array | undefined;
  if (noised) {
    skip = new Uint8Array(B * T);
    noised.forEach((n, b) => skip!.set(n.skip, b * T)); // skip[b, t]: caption character t is no target
  }
  const S = dataset.imgSize;
  return {
    images: tf.tensor4d(pixels, [B, 3, S, S], "float32"), // (B, 3, S, S)
    idx: tf.tensor2d(idx, [B, T], "int32"), // (B, T)
    targets: tf.tensor2d(targets, [B, T], "int32"), // (B, T)
    rows,
    lengths: captions.map((ids) => ids.length),
    ...(skip ? { skip } : {}),
  };
}

/** Draws random batches from one dataset, reproducibly from a seed (the original's df.sample). */
export class BatchSampler {
  private readonly random: () => number;

  constructor(readonly dataset: ImageCaptionDataset, seed: number) {
    if (dataset.length === 0) throw new Error(`${dataset.file}: cannot sample batches from an empty dataset`);
    this.random = mulberry32(seed);
  }

  private randomIndex(n: number): number {
    return Math.floor(this.random() * n);
  }

  /** Row indices: distinct within the batch unless `replace` (train: false, validation: true). */
  sampleRows(batchSize: number, { replace = false }: { replace?: boolean } = {}): number[] {
    checkBatchSize(batchSize);
    const n = this.dataset.length;
    if (replace) return Array.from({ length: batchSize }, () => this.randomIndex(n));
    if (batchSize > n) {
      throw new Error(
        `${this.dataset.file}: cannot draw ${batchSize} distinct rows from ${n}; lower the batch size or add rows`,
      );
    }
    const order = Array.from({ length: n }, (_, i) => i);
    for (let i = 0; i < batchSize; i++) { // partial Fisher-Yates: order[0..batchSize) is the sample
      const j = i + this.randomIndex(n - i);
      [order[i], order[j]] = [order[j], order[i]];
    }
    return order.slice(0, batchSize);
  }

  /** The next random batch (B = batchSize). Dispose it with tf.dispose(batch). */
  next(batchSize: number, options: { replace?: boolean } = {}): Batch {
    return makeBatch(this.dataset, this.sampleRows(batchSize, options));
  }
}
