// The matmul kernels (BatchMatMul, _FusedMatMul): shapes and batch broadcasting, then sgemm calls on
// views of the wasm heap (the C kernels' split products where they load, else OpenBLAS directly).

import * as tf from "@tensorflow/tfjs-core";
import { active, heapView, type KernelArgs, stock, type TensorInfo, wasmOf } from "./common.ts";

/** How one batched matmul maps onto sgemm calls. */
export interface MatMulPlan {
  outShape: number[]; // [...batch, m, n]
  batch: number;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  aIndex: Int32Array; // which A matrix each output batch reads
  bIndex: Int32Array;
  /** All batches are one sgemm: B is shared, A untransposed and not broadcast, so rows stack. */
  merged: boolean;
}

/** Works out a (batched, broadcasting) matmul's shape and batch mapping; throws on bad shapes. */
export function planMatMul(aShape: number[], bShape: number[], transA: boolean, transB: boolean): MatMulPlan {
  const ar = aShape.length, br = bShape.length;
  if (ar < 2 || br < 2) {
    throw new Error(
      `lib/blas/kernels/matmul.ts: matMul needs rank >= 2 tensors, got [${aShape}] and [${bShape}]`,
    );
  }
  const m = transA ? aShape[ar - 1] : aShape[ar - 2];
  const k = transA ? aShape[ar - 2] : aShape[ar - 1];
  const kB = transB ? bShape[br - 1] : bShape[br - 2];
  const n = transB ? bShape[br - 2] : bShape[br - 1];
  if (k !== kB) {
    throw new Error(
      `lib/blas/kernels/matmul.ts: matMul inner sizes differ: [${aShape}]${transA ? "ᵀ" : ""} @ [${bShape}]${
        transB ? "ᵀ" : ""
      } (${k} vs ${kB})`,
    );
  }
  const aOuter = aShape.slice(0, -2), bOuter = bShape.slice(0, -2);
  const batchShape = tf.broadcast_util.assertAndGetBroadcastShape(aOuter, bOuter);
  const batch = tf.util.sizeFromShape(batchShape);
  const aIndex = broadcastIndex(aOuter, batchShape);
  const bIndex = broadcastIndex(bOuter, batchShape);
  const bShared = bIndex.every((i) => i === 0);
  const aOwn = aIndex.every((v, i) => v === i);
  return {
    outShape: [...batchShape, m, n],
    batch,
    m,
    n,
    k,
    transA,
    transB,
    aIndex,
    bIndex,
    merged: batch > 1 && bShared && aOwn && !transA,
  };
}

/** For each flat index of `outShape`, the flat index of the element of `shape` broadcast onto it. */
export function broadcastIndex(shape: number[], outShape: number[]): Int32Array {
  const total = tf.util.sizeFromShape(outShape);
  const rank = outShape.length;
  const strides = new Array(rank).fill(0);
  let stride = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    const od = rank - shape.length + d;
    strides[od] = shape[d] === 1 ? 0 : stride;
    stride *= shape[d];
  }
  const index = new Int32Array(total);
  const coord = new Array(rank).fill(0);
  let pos = 0;
  for (let i = 0; i < total; i++) {
    index[i] = pos;
    for (let d = rank - 1; d >= 0; d--) {
      coord[d]++;
      pos += strides[d];
      if (coord[d] < outShape[d]) break;
      pos -= strides[d] * coord[d];
      coord[d] = 0;
    }
  }
  return index;
}

/**
 * Products smaller than this many multiply-adds run on one OpenBLAS thread (generation's one-row
 * products, where waking a second thread costs more than it saves); every product of a training step or
 * of one image's ViT pass is faster on two (bench/README.md). The block kernel applies the same rule in
 * C (c/block.c, product_threads).
 */
export const SMALL_GEMM = 1 << 20;

/** C[i] = op(A[aIndex[i]]) @ op(B[bIndex[i]]) (+ beta * C[i]) for every batch i. */
function runGemm(plan: MatMulPlan, a: Float32Array, b: Float32Array, c: Float32Array, beta: 0 | 1): void {
  const { m, n, k, transA, transB, batch } = plan;
  if (batch === 0 || m === 0 || n === 0) return;
  if (k === 0) {
    if (beta === 0) c.fill(0);
    return;
  }
  const threads = m * n * k * (plan.merged ? batch : 1) < SMALL_GEMM ? 1 : active.blas!.numThreads() || 1;
  const lda = transA ? m : k, ldb = transB ? k : n;
  if ((plan.merged || batch === 1) && active.native?.hasSgemm()) { // splits mid-size products on our threads
    const rows = plan.merged ? batch * m : m; // merged: A's batch is stacked into rows, never transposed
    active.native.sgemm(
      transA && !plan.merged,
      transB,
      { m: rows, n, k },
      a,
      lda,
      b,
      ldb,
      beta,
      c,
      n,
      threads,
    );
    return;
  }
  active.blas!.useThreads(threads);
  if (plan.merged) {
    active.blas!.sgemm(false, transB, batch * m, n, k, 1, a, lda, b, ldb, beta, c, n);
    return;
  }
  if (batch > 1 && active.native?.hasSgemm()) { // one FFI call for all items (each call costs microseconds)
    active.native.sgemmBatch(transA, transB, { m, n, k }, a, plan.aIndex, b, plan.bIndex, beta, c);
    return;
  }
  const aSize = m * k, bSize = k * n, cSize = m * n;
  for (let i = 0; i < batch; i++) {
    const ai = plan.aIndex[i] * aSize, bi = plan.bIndex[i] * bSize;
    active.blas!.sgemm(
      transA,
      transB,
      m,
      n,
      k,
      1,
      batch === 1 ? a : a.subarray(ai, ai + aSize),
      lda,
      batch === 1 ? b : b.subarray(bi, bi + bSize),
      ldb,
      beta,
      batch === 1 ? c : c.subarray(i * cSize, (i + 1) * cSize),
      n,
    );
  }
}

function matMulArgs(args: KernelArgs): { transA: boolean; transB: boolean } {
  const attrs = args.attrs ?? {};
  return { transA: attrs.transposeA === true, transB: attrs.transposeB === true };
}

export function batchMatMulKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
  if (a.dtype !== "float32" || b.dtype !== "float32") return stock("BatchMatMul", args);
  const backend = wasmOf(args.backend);
  const { transA, transB } = matMulArgs(args);
  const plan = planMatMul(a.shape, b.shape, transA, transB);
  const out = backend.makeOutput(plan.outShape, "float32");
  if (tf.util.sizeFromShape(plan.outShape) === 0) return out;
  runGemm(
    plan,
    heapView(backend, a, Float32Array),
    heapView(backend, b, Float32Array),
    heapView(backend, out, Float32Array),
    0,
  );
  return out;
}

export function fusedMatMulKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const { a, b, bias, preluActivationWeights: prelu } = args.inputs as Record<string, TensorInfo | undefined>;
  if (!a || !b) throw new Error("lib/blas/kernels/matmul.ts: _FusedMatMul needs inputs a and b");
  const attrs = args.attrs ?? {};
  const activation = (attrs.activation as string | undefined) ?? "linear";
  const floats = [a, b, bias, prelu].every((t) => t == null || t.dtype === "float32");
  if (!floats || !ACTIVATIONS.has(activation)) return stock("_FusedMatMul", args);
  const backend = wasmOf(args.backend);
  const { transA, transB } = matMulArgs(args);
  const plan = planMatMul(a.shape, b.shape, transA, transB);
  const out = backend.makeOutput(plan.outShape, "float32");
  if (tf.util.sizeFromShape(plan.outShape) === 0) return out;
  const c = heapView<Float32Array>(backend, out, Float32Array);
  if (bias) fillBroadcast(c, plan.outShape, heapView(backend, bias, Float32Array), bias.shape, "bias");
  runGemm(plan, heapView(backend, a, Float32Array), heapView(backend, b, Float32Array), c, bias ? 1 : 0);
  if (activation !== "linear") {
    const alpha = (attrs.leakyreluAlpha as number | undefined) ?? 0.2;
    const weights = prelu ? heapView<Float32Array>(backend, prelu, Float32Array) : null;
    applyActivation(c, activation, alpha, weights, prelu?.shape ?? [], plan.outShape);
  }
  return out;
}

/** A dense layer: inputs a (..., in), b [in, out], optional bias [out] → (..., out), one product over all rows. */
export function denseKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  return fusedMatMulKernel({
    ...args,
    attrs: { transposeA: false, transposeB: false, activation: "linear" },
  });
}

/** Writes `src` (shape `srcShape`) broadcast onto `dst` (shape `dstShape`). */
function fillBroadcast(
  dst: Float32Array,
  dstShape: number[],
  src: Float32Array,
  srcShape: number[],
  name: string,
) {
  const shape = stripLeadingOnes(srcShape);
  if (shape.length > dstShape.length) {
    throw new Error(
      `lib/blas/kernels/matmul.ts: _FusedMatMul ${name} shape [${srcShape}] does not broadcast to [${dstShape}]`,
    );
  }
  const joint = tf.broadcast_util.assertAndGetBroadcastShape(dstShape, shape);
  if (!tf.util.arraysEqual(joint, dstShape)) {
    throw new Error(
      `lib/blas/kernels/matmul.ts: _FusedMatMul ${name} shape [${srcShape}] does not broadcast to [${dstShape}]`,
    );
  }
  const n = dstShape[dstShape.length - 1];
  if (shape.length <= 1 && (src.length === n || src.length === 1)) {
    const row = src.length === n ? src : new Float32Array(n).fill(src[0]);
    if (active.native) active.native.fillRows(dst, row); // rows split across the kernel threads
    else fillRows(dst, row, n);
    return;
  }
  const index = broadcastIndex(shape, dstShape);
  for (let i = 0; i < dst.length; i++) dst[i] = src[index[i]];
}

/** Repeats one row of length n over all of dst, doubling the copied block each time. */
function fillRows(dst: Float32Array, row: Float32Array, n: number): void {
  dst.set(row, 0);
  let filled = n;
  while (filled < dst.length) {
    const len = Math.min(filled, dst.length - filled);
    dst.copyWithin(filled, 0, len);
    filled += len;
  }
}

function stripLeadingOnes(shape: number[]): number[] {
  let i = 0;
  while (i < shape.length - 1 && shape[i] === 1) i++;
  return shape.slice(i);
}

const ACTIVATIONS = new Set(["linear", "relu", "relu6", "leakyrelu", "prelu", "sigmoid", "elu"]);

/** The fused activations, with the same formulas as tfjs's cpu backend. */
function applyActivation(
  c: Float32Array,
  activation: string,
  alpha: number,
  weights: Float32Array | null,
  weightsShape: number[],
  outShape: number[],
): void {
  const len = c.length;
  switch (activation) {
    case "relu":
      for (let i = 0; i < len; i++) if (c[i] < 0) c[i] = 0;
      return;
    case "relu6":
      for (let i = 0; i < len; i++) c[i] = Math.min(Math.max(c[i], 0), 6);
      return;
    case "leakyrelu":
      for (let i = 0; i < len; i++) if (c[i] < 0) c[i] = alpha * c[i];
      return;
    case "sigmoid":
      for (let i = 0; i < len; i++) c[i] = 1 / (1 + Math.exp(-c[i]));
      return;
    case "elu":
      for (let i = 0; i < len; i++) if (c[i] < 0) c[i] = Math.exp(c[i]) - 1;
      return;
    case "prelu": {
      if (!weights) {
        throw new Error("lib/blas/kernels/matmul.ts: prelu activation without preluActivationWeights");
      }
      const w = new Float32Array(len);
      fillBroadcast(w, outShape, weights, weightsShape, "preluActivationWeights");
      for (let i = 0; i < len; i++) if (c[i] < 0) c[i] = w[i] * c[i];
      return;
    }
  }
}
