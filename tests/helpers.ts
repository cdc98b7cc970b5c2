// Shared test helpers: a backend set up once, and float comparisons with useful messages.

import * as tf from "@tensorflow/tfjs";
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

/** `n` generated shape scenes as an in-memory dataset (images resized to `imgSize`). */
export async function shapesDataset(n: number, imgSize = 32, seed = 1) {
  const { makeRows } = await import("../lib/data/shapes.ts");
  const { ImageCaptionDataset } = await import("../lib/data/batches.ts");
  const { Tokenizer } = await import("../lib/tokenizer.ts");
  const rows = makeRows(seed, 1, "train", n);
  const table = { file: "generated", images: rows.map((r) => r.image), captions: rows.map((r) => r.caption) };
  return ImageCaptionDataset.fromTable(table, Tokenizer.original(), imgSize);
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
