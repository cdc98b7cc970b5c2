// Shared setup for the BLAS kernel tests: seeded data, running the same computation on the cpu
// backend and on wasm (with or without our kernels), and closeness checks.

import * as tf from "@tensorflow/tfjs"; // the union package registers gradients and chained ops
import "@tensorflow/tfjs-backend-cpu";
import "@tensorflow/tfjs-backend-wasm";
import { loadBlas } from "../../lib/blas/ffi.ts";
import type { Native } from "../../lib/blas/native.ts";
import { mulberry32 } from "../../lib/random.ts";

await tf.setBackend("wasm");

/** Whether OpenBLAS can be opened here (tests that need it are ignored otherwise). */
export const BLAS_OK = loadBlas().ok;
export const SKIP_NOTE = BLAS_OK
  ? ""
  : " [ignored: OpenBLAS not loadable; apt-get install libopenblas0-pthread]";

/**
 * Runs f with the C kernels' products on OpenBLAS, then (where libdnnl is bound) on oneDNN, and puts
 * back the library that was in use.
 */
export async function onEachGemm(
  native: Native,
  f: (library: string) => Promise<void> | void,
): Promise<void> {
  const before = native.usingDnnl(), onednn = native.useDnnl(true);
  try {
    for (const library of onednn ? ["OpenBLAS", "oneDNN"] : ["OpenBLAS"]) {
      native.useDnnl(library === "oneDNN");
      await f(library);
    }
  } finally {
    native.useDnnl(before);
  }
}

/** Deterministic values in [-1, 1) (mulberry32). */
export function seeded(size: number, seed: number): Float32Array {
  const rand = mulberry32(seed);
  return Float32Array.from({ length: size }, () => rand() * 2 - 1);
}

/** Runs fn on the named backend and returns its tensors' values (everything else is disposed). */
export async function valuesOn(
  backend: "cpu" | "wasm",
  fn: () => tf.Tensor | tf.Tensor[],
): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  try {
    const out = tf.tidy(fn);
    const list = Array.isArray(out) ? out : [out];
    const values = list.map((t) => Float32Array.from(t.dataSync() as ArrayLike<number>));
    tf.dispose(list);
    return values;
  } finally {
    await tf.setBackend("wasm");
  }
}

/** Largest |a - b| / max(1, |b|): absolute for small values, relative for large ones. */
export function maxRelDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(b[i]));
    if (!(d <= worst)) worst = d; // NaN propagates as a failure
  }
  return worst;
}

export function assertClose(
  actual: Float32Array[],
  expected: Float32Array[],
  tol: number,
  what: string,
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: ${actual.length} outputs vs ${expected.length}`);
  }
  actual.forEach((a, i) => {
    const d = maxRelDiff(a, expected[i]);
    if (!(d <= tol)) throw new Error(`${what}: output ${i} differs by ${d} (tolerance ${tol})`);
  });
}

/** Allocates and frees a NaN-filled buffer so the next allocation likely reuses dirty memory. */
export function dirtyHeap(size: number): void {
  tf.tidy(() => tf.fill([size], NaN).dataSync());
}

/** Throws unless actual === expected (the shared import map may lack @std/assert while others edit it). */
export function assertEquals<T>(actual: T, expected: T, what = "value"): void {
  if (actual !== expected) throw new Error(`${what}: got ${String(actual)}, expected ${String(expected)}`);
}
