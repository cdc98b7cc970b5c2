// Shared test helpers: a backend set up once, float comparisons with useful messages, small configs and
// data, PNGs built byte by byte.

import * as tf from "@tensorflow/tfjs";
import zlib from "node:zlib";
import { initBackend } from "../lib/backend.ts";
import { DEFAULT_MODEL } from "../lib/config.ts";

/** Starts a backend for a test file (cpu unless SEEMORE_TEST_BACKEND says otherwise). */
export async function useBackend(name = Deno.env.get("SEEMORE_TEST_BACKEND") ?? "cpu"): Promise<void> {
  if (tf.getBackend() !== name) await initBackend(name);
}

/** Largest absolute difference between two equally long arrays. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Fails unless every element agrees within `tol`. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what = "values",
) {
  const d = maxAbsDiff(actual, expected);
  if (!(d <= tol)) throw new Error(`${what}: max |diff| ${d} > ${tol}`);
}

/**
 * Fails unless every element agrees within `rtol` of the largest |expected| (a norm-wise relative
 * check): the scale float32 rounding works at when the summation order differs between backends.
 */
export function assertRelClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  rtol: number,
  what = "values",
) {
  const d = maxAbsDiff(actual, expected);
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  if (!(d <= rtol * scale)) {
    throw new Error(`${what}: max |diff| ${d} > ${rtol} · max |expected| (${scale})`);
  }
}

/** Euclidean norm of a − b (of a alone without b). */
export function normOfDiff(a: ArrayLike<number>, b?: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - (b ? b[i] : 0)) ** 2;
  return Math.sqrt(s);
}

/** `deno task train` flags for a tiny model (fast CLI runs in tests); add `--img-size 32` for small images. */
export const TINY_CLI_FLAGS = [
  "--n-embd",
  "32",
  "--image-embed-dim",
  "32",
  "--n-head",
  "4",
  "--n-layer",
  "2",
  "--num-blks",
  "1",
];

/** A small model config for fast tests (same structure as the original, smaller sizes). */
export function tinyConfig(overrides: Partial<import("../lib/config.ts").ModelConfig> = {}) {
  return {
    ...DEFAULT_MODEL,
    n_embd: 32,
    image_embed_dim: 32,
    n_head: 4,
    n_layer: 2,
    num_blks: 1,
    img_size: 32,
    patch_size: 16,
    block_positions: 64,
    vocab_size: 66,
    ...overrides,
  } as import("../lib/config.ts").ModelConfig;
}

/** tinyConfig with every switch of the seeing recipe's model: patch tokens, conv stem, word loss, pre-norm. */
export function tinySeeingConfig(overrides: Partial<import("../lib/config.ts").ModelConfig> = {}) {
  return tinyConfig({
    visual_tokens: "patches",
    patch_stem: "conv",
    patch_size: 8,
    first_token_from_image: true,
    residual: "pre_norm",
    attention_scale: "head",
    image_words: ["red", "star", "at"],
    ...overrides,
  });
}

/** `n` generated shape scenes as an in-memory dataset (images resized to `imgSize`). */
export async function shapesDataset(n: number, imgSize = 32, seed = 1) {
  const { makeRows } = await import("../lib/data/shapes.ts");
  const { ImageCaptionDataset } = await import("../lib/data/batches.ts");
  const { Tokenizer } = await import("../lib/tokenizer.ts");
  const rows = makeRows(seed, 1, "train", n);
  const table = { file: "generated", images: rows.map((r) => r.image), captions: rows.map((r) => r.caption) };
  return ImageCaptionDataset.fromTable(table, Tokenizer.original(), imgSize);
}

function pngChunk(type: string, data: Uint8Array): Uint8Array {
  const body = new Uint8Array([...new TextEncoder().encode(type), ...data]);
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length); // big-endian length, then type + data, then their CRC-32
  out.set(body, 4);
  view.setUint32(8 + data.length, zlib.crc32(body));
  return out;
}

/**
 * A grey PNG built chunk by chunk: its header declares width × height at `bitDepth` bits per pixel, and
 * its one IDAT chunk holds `idat` (zlib data), whether or not that many pixels are in it.
 */
export function greyPng(width: number, height: number, bitDepth: number, idat: Uint8Array): Uint8Array {
  const ihdr = new Uint8Array(13);
  const view = new DataView(ihdr.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  ihdr.set([bitDepth, 0, 0, 0, 0], 8); // grey, deflate, no filter, no interlace
  return new Uint8Array([
    ...[0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a],
    ...pngChunk("IHDR", ihdr),
    ...pngChunk("IDAT", idat),
    ...pngChunk("IEND", new Uint8Array()),
  ]);
}

/**
 * zlib data that inflates to n zero bytes, built in O(n / 64 kB) time: one flushed deflate segment of
 * 64 KiB of zeros, repeated (a full flush makes each segment stand alone), the rest, an empty final block,
 * and the Adler-32 of n zeros (a = 1, b = n mod 65521). A few kilobytes that decompress to gigabytes.
 */
export function zerosZlib(n: number): Uint8Array {
  const K = 65536;
  const segment = (bytes: number) =>
    zlib.deflateRawSync(new Uint8Array(bytes), { finishFlush: zlib.constants.Z_FULL_FLUSH });
  const whole = segment(K), rest = segment(n % K);
  const repeats = Math.floor(n / K);
  const out = new Uint8Array(2 + repeats * whole.length + rest.length + 5 + 4);
  out.set([0x78, 0x01]); // zlib header: deflate, 32 KiB window
  for (let i = 0; i < repeats; i++) out.set(whole, 2 + i * whole.length);
  let at = 2 + repeats * whole.length;
  out.set(rest, at);
  at += rest.length;
  out.set([0x01, 0x00, 0x00, 0xff, 0xff], at); // final stored block of length 0
  new DataView(out.buffer).setUint32(at + 5, (((n % 65521) << 16) | 1) >>> 0); // Adler-32, big-endian
  return out;
}

/**
 * The original's side (Debian's python3-torch) runs tests that compare with the original PyTorch code.
 * Where it is missing those tests skip, unless SEEMORE_REQUIRE_TORCH=1 (CI): then they run and fail.
 */
export const REQUIRE_TORCH = Deno.env.get("SEEMORE_REQUIRE_TORCH") === "1";
export const PYTHON = Deno.env.get("SEEMORE_PYTHON") ?? "/usr/bin/python3";
export const TORCH_INSTALL = "apt-get install python3-torch python3-torchvision python3-pandas python3-pil";

/** Why the original cannot run here ("" when `PYTHON` imports everything the original imports). */
export async function torchMissing(): Promise<string> {
  try {
    const r = await new Deno.Command(PYTHON, {
      args: ["-c", "import torch, torchvision, pandas, PIL"],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (r.success) return "";
    const err = new TextDecoder().decode(r.stderr).trim().split("\n").at(-1);
    return `${PYTHON} cannot import the original's packages (${err}): ${TORCH_INSTALL}`;
  } catch (e) {
    return `cannot run ${PYTHON} (${(e as Error).message.split("\n")[0]}): ${TORCH_INSTALL}`;
  }
}
