// Shared setup for the BLAS kernel tests: seeded data, running the same computation on the cpu
// backend and on wasm (with or without our kernels), and closeness checks.

import * as tf from "@tensorflow/tfjs"; // the union package registers gradients and chained ops
import "@tensorflow/tfjs-backend-cpu";
import "@tensorflow/tfjs-backend-wasm";
import { loadBlas } from "../../lib/blas/ffi.ts";
import { loadNative, type Native } from "../../lib/blas/native.ts";
import { mulberry32 } from "../../lib/random.ts";

await tf.setBackend("wasm");

const blasLoad = loadBlas();
/** Whether OpenBLAS can be opened here (tests that need it are ignored otherwise). */
export const BLAS_OK = blasLoad.ok;
export const SKIP_NOTE = BLAS_OK
  ? ""
  : " [ignored: OpenBLAS not loadable; apt-get install libopenblas0-pthread]";
const nativeLoad = BLAS_OK ? loadNative() : null;
// Without OpenBLAS, oneDNN or a compiler the native tests are ignored; one line says why (CI sets
// SEEMORE_REQUIRE_NATIVE=1, under which fused_test.ts's required test fails instead).
if (!blasLoad.ok || (nativeLoad && !nativeLoad.ok)) {
  const why = !blasLoad.ok ? blasLoad.reason : (nativeLoad as { reason: string }).reason;
  console.log(`native tests skipped: ${why} (SEEMORE_REQUIRE_NATIVE=1 makes this a failure)`);
}

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

/** float32's unit roundoff: every rounding error is at most this much of the value rounded. */
export const UNIT_ROUNDOFF = 2 ** -24;

/**
 * γ_n = n·u / (1 − n·u): a sum of n products computed in float32 in ANY order (blocked, pairwise, with
 * or without fused multiply-adds) is within γ_n · Σ|terms| of the exact sum (Higham, Accuracy and
 * Stability of Numerical Algorithms, §3.1). Libraries choose their own order per processor, so this,
 * not bit equality, is what a product computed by them promises.
 */
export function gamma(n: number): number {
  return (n * UNIT_ROUNDOFF) / (1 - n * UNIT_ROUNDOFF);
}

/** A row-major product's operands: op(a) is m×k, op(b) k×n, with leading dimensions as stored. */
export interface Product {
  m: number;
  n: number;
  k: number;
  a: Float32Array;
  transA: boolean;
  b: Float32Array;
  transB: boolean;
  /** C before the call when it is accumulated into (beta 1), else null. */
  c0: Float32Array | null;
}

/** The exact op(a) @ op(b) (+ c0) in float64, and Σ|a||b| (+ |c0|) per element: (m·n) each. */
export function exactProduct(p: Product): { exact: Float64Array; magnitude: Float64Array } {
  const { m, n, k, a, b, transA, transB, c0 } = p;
  const exact = new Float64Array(m * n), magnitude = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let sum = c0 ? c0[i * n + j] : 0, mag = Math.abs(sum);
      for (let t = 0; t < k; t++) {
        const term = a[transA ? t * m + i : i * k + t] * b[transB ? j * k + t : t * n + j];
        sum += term;
        mag += Math.abs(term);
      }
      exact[i * n + j] = sum;
      magnitude[i * n + j] = mag;
    }
  }
  return { exact, magnitude };
}

/**
 * Throws unless every element of a computed product lies within γ_(k+1) · (Σ|a||b| + |c0|) of the exact
 * one: the bound any correct summation order meets, and far below a missing, doubled or misplaced term.
 */
export function assertWithinProductBound(
  got: Float32Array,
  p: Product,
  what: string,
  reference = exactProduct(p),
): void {
  const g = gamma(p.k + 1);
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i] - reference.exact[i]);
    if (!(err <= g * reference.magnitude[i])) {
      throw new Error(
        `${what}: element ${i} is ${got[i]}, exact ${reference.exact[i]}: error ${err} > ` +
          `γ_${p.k + 1} · Σ|a||b| = ${g * reference.magnitude[i]}`,
      );
    }
  }
}

/** Allocates and frees a NaN-filled buffer so the next allocation likely reuses dirty memory. */
export function dirtyHeap(size: number): void {
  tf.tidy(() => tf.fill([size], NaN).dataSync());
}

/** Throws unless actual === expected (the shared import map may lack @std/assert while others edit it). */
export function assertEquals<T>(actual: T, expected: T, what = "value"): void {
  if (actual !== expected) throw new Error(`${what}: got ${String(actual)}, expected ${String(expected)}`);
}
