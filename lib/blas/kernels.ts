// Faster kernels for tfjs's wasm backend: matmuls go to OpenBLAS's cblas_sgemm (through Deno FFI, on
// views of the wasm heap), and ops the stock backend does slowly are replaced too: Transpose, Unpack,
// SplitV, Slice, GatherV2 and Sum (JS, or C where native.ts could build its kernels), Identity (no copy),
// and with the C kernels also Erf and Exp plus the fused GELU / layer norm / Adam / dropout /
// attention / whole-block / seeMoE kernels behind fused.ts. It also installs the lean backward pass (lean_gradients.ts),
// which frees gradients and saved tensors as soon as they are used: the wasm heap never shrinks, so
// the backward pass's peak would otherwise stay the process's memory.
//
//   import * as tf from "@tensorflow/tfjs-core";
//   import "@tensorflow/tfjs-backend-wasm";
//   await tf.setBackend("wasm");
//   const blas = await enableBlasKernels(); // { ok, reason?, kernels, native? }
//
// If OpenBLAS (or --allow-ffi) is missing, enableBlasKernels returns ok:false and changes nothing.
//
// Differences from the stock wasm kernels, on purpose:
// - _FusedMatMul adds the bias correctly for transposeB and batch > 1 (stock wasm gets it wrong).
// - Batch dims broadcast like numpy ([2,1]x[1,3] → [2,3]); tfjs's cpu backend does that case wrongly.
// - Nothing is cached by tensor id (stock wasm caches packed weights by id).
// - Identity shares the input's buffer (as the cpu backend does) instead of copying it. Code that
//   writes into a tensor's memory in place therefore changes its clones too.
// Only float32 goes to BLAS and C; other dtypes run the stock kernel (Transpose, Unpack, SplitV, Slice
// and GatherV2 also handle int32 and bool).

import * as tf from "@tensorflow/tfjs-core";
import { type Blas, loadBlas } from "./ffi.ts";
import { chooseGemm } from "./onednn.ts";
import { installLeanGradients, uninstallLeanGradients } from "./lean_gradients.ts";
import {
  type AttentionDims,
  BLOCK_PARAMS,
  BLOCK_SAVED,
  BLOCK_TENSORS,
  blockBytes,
  type BlockDims,
  blockShape,
  loadNative,
  type MoEDims,
  type Native,
  simplifyReduction,
} from "./native.ts";

export { simplifyReduction };

type TensorInfo = tf.TensorInfo;
type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: object; attrs?: tf.NamedAttrMap };

/** The parts of tfjs-backend-wasm's BackendWasm these kernels use. */
interface WasmBackend {
  wasm: { HEAPU8: Uint8Array<ArrayBuffer> };
  dataIdMap: { get(dataId: object): { memoryOffset: number; shape: number[]; refCount: number } | undefined };
  makeOutput(shape: number[], dtype: tf.DataType): TensorInfo;
  incRef(dataId: object): void;
  disposeData(dataId: object, force?: boolean): boolean;
}

export interface EnableOptions {
  /** Use small C kernels compiled with the system `cc` where they help (default true; JS if no compiler). */
  native?: boolean;
  /** Open this OpenBLAS instead of searching the usual paths (tests use a bad path to force the fallback). */
  libraryPath?: string;
  /** Free each gradient and saved tensor as soon as the backward pass is done with it (default true; see lean_gradients.ts). */
  leanGradients?: boolean;
  /**
   * Threads for large products (small ones always use one: see SMALL_GEMM) and for the C kernels.
   * Default: OpenBLAS's own choice (all cores, or $OPENBLAS_NUM_THREADS).
   */
  threads?: number;
  /**
   * Run the products on oneDNN's sgemm when libdnnl loads (default true: $SEEMORE_ONEDNN or the usual
   * paths, see onednn.ts); a path tries that file; false keeps them on OpenBLAS. Needs the C kernels.
   */
  onednn?: boolean | string;
}

export interface EnableResult {
  ok: boolean;
  /** Why nothing was changed (ok:false), in one line. */
  reason?: string;
  /** Kernels now overridden on the wasm backend. */
  kernels: string[];
  /** Which C kernels are in use, or why none are ("" when native was not asked for). */
  native?: string;
  /** Which library runs the products (oneDNN or OpenBLAS), and why not oneDNN. */
  gemm?: string;
}

// ---------------------------------------------------------------------------------------------
// State: the stock kernel configs we replaced, so they can be restored and used as fallbacks.

const BACKEND = "wasm";
const originals = new Map<string, tf.KernelConfig>();
const added = new Set<string>(); // our own kernel names (no stock version)
let blas: Blas | null = null;
let native: Native | null = null;
let lastResult: EnableResult | null = null;

/**
 * Replaces the kernels listed above on the wasm backend. Call after `await tf.setBackend("wasm")`.
 * Once it has succeeded, later calls return the first result (call disableBlasKernels() first to
 * change options).
 */
// deno-lint-ignore require-await
export async function enableBlasKernels(opts: EnableOptions = {}): Promise<EnableResult> {
  if (lastResult?.ok) return lastResult;
  if (opts.threads !== undefined && !(Number.isInteger(opts.threads) && opts.threads >= 1)) {
    throw new Error(`lib/blas/kernels.ts: threads must be a positive integer, got ${opts.threads}`);
  }
  if (tf.getBackend() !== BACKEND) {
    return {
      ok: false,
      reason: `lib/blas/kernels.ts: the active tfjs backend is '${tf.getBackend()}'; ` +
        `call enableBlasKernels() after await tf.setBackend("wasm")`,
      kernels: [],
    };
  }
  const loaded = loadBlas(opts.libraryPath);
  if (!loaded.ok) return { ok: false, reason: loaded.reason, kernels: [] };
  blas = loaded.blas;
  if (opts.threads !== undefined) blas.setNumThreads(opts.threads);

  let nativeNote = "";
  native = null;
  if (opts.native ?? true) {
    const n = loadNative();
    native = n.ok ? n.native : null;
    nativeNote = n.ok ? `C kernels from ${n.native.path}` : n.reason;
    native?.setThreads(blas.numThreads() || 1);
  }

  const overrides: [string, tf.KernelFunc][] = [
    ["BatchMatMul", batchMatMulKernel as tf.KernelFunc],
    ["_FusedMatMul", fusedMatMulKernel as tf.KernelFunc],
    ["Transpose", transposeKernel as tf.KernelFunc],
    ["Identity", identityKernel as tf.KernelFunc],
    ["Unpack", unpackKernel as tf.KernelFunc],
    ["SplitV", splitVKernel as tf.KernelFunc],
    ["Slice", sliceKernel as tf.KernelFunc],
    ["GatherV2", gatherKernel as tf.KernelFunc],
    ["Sum", sumKernel as tf.KernelFunc],
  ];
  if (native) {
    overrides.push(["Erf", unaryKernel("Erf", "erf")], ["Exp", unaryKernel("Exp", "exp")]);
  }
  for (const [name, kernelFunc] of overrides) override(name, kernelFunc);
  const fused = native ? registerFusedKernels() : [];
  const gemm = native?.hasSgemm()
    ? chooseGemm(native, opts.onednn).note
    : "products on OpenBLAS (oneDNN needs the C kernels)";
  if (opts.leanGradients ?? true) installLeanGradients();
  lastResult = {
    ok: true,
    kernels: [...overrides.map(([name]) => name), ...fused],
    native: nativeNote,
    gemm,
  };
  return lastResult;
}

/** Names of the extra kernels behind lib/blas/fused.ts (registered only with the C kernels). */
export const FUSED_KERNELS = {
  gelu: "SeemoreGelu",
  geluGrad: "SeemoreGeluGrad",
  geluWithGrad: "SeemoreGeluWithGrad",
  reluGrad: "SeemoreReluGrad",
  layerNorm: "SeemoreLayerNorm",
  layerNormGrad: "SeemoreLayerNormGrad",
  adam: "SeemoreAdam",
  dropout: "SeemoreDropout",
  dropoutGrad: "SeemoreDropoutGrad",
  im2col3x3s2: "SeemoreIm2col3x3s2",
  col2im3x3s2: "SeemoreCol2im3x3s2",
  /** Registered only when the C kernels can call OpenBLAS's sgemm themselves. */
  attention: "SeemoreAttention",
  attentionGrad: "SeemoreAttentionGrad",
  attentionCached: "SeemoreAttentionCached",
  firstAttention: "SeemoreFirstAttention",
  firstAttentionGrad: "SeemoreFirstAttentionGrad",
  experts: "SeemoreExperts",
  expertsGrad: "SeemoreExpertsGrad",
  block: "SeemoreBlock",
  blockGrad: "SeemoreBlockGrad",
  moeDispatch: "SeemoreMoeDispatch",
  moeDispatchGrad: "SeemoreMoeDispatchGrad",
  moeCombine: "SeemoreMoeCombine",
  moeCombineGrad: "SeemoreMoeCombineGrad",
} as const;

function registerFusedKernels(): string[] {
  const kernels: [string, tf.KernelFunc][] = [
    [FUSED_KERNELS.gelu, geluKernel as tf.KernelFunc],
    [FUSED_KERNELS.geluGrad, unaryGradKernel("gelu") as tf.KernelFunc],
    [FUSED_KERNELS.geluWithGrad, geluWithGradKernel as tf.KernelFunc],
    [FUSED_KERNELS.reluGrad, unaryGradKernel("relu") as tf.KernelFunc],
    [FUSED_KERNELS.layerNorm, layerNormKernel as tf.KernelFunc],
    [FUSED_KERNELS.layerNormGrad, layerNormGradKernel as tf.KernelFunc],
    [FUSED_KERNELS.adam, adamKernel as tf.KernelFunc],
    [FUSED_KERNELS.dropout, dropoutKernel as tf.KernelFunc],
    [FUSED_KERNELS.dropoutGrad, dropoutGradKernel as tf.KernelFunc],
    [FUSED_KERNELS.im2col3x3s2, im2colKernel as tf.KernelFunc],
    [FUSED_KERNELS.col2im3x3s2, col2imKernel as tf.KernelFunc],
    [FUSED_KERNELS.moeDispatch, moeDispatchKernel as tf.KernelFunc],
    [FUSED_KERNELS.moeDispatchGrad, moeDispatchGradKernel as tf.KernelFunc],
    [FUSED_KERNELS.moeCombine, moeCombineKernel as tf.KernelFunc],
    [FUSED_KERNELS.moeCombineGrad, moeCombineGradKernel as tf.KernelFunc],
  ];
  if (native!.bindSgemm(blas!.path)) {
    kernels.push(
      [FUSED_KERNELS.attention, attentionKernel as tf.KernelFunc],
      [FUSED_KERNELS.attentionGrad, attentionGradKernel as tf.KernelFunc],
      [FUSED_KERNELS.attentionCached, attentionCachedKernel as tf.KernelFunc],
      [FUSED_KERNELS.firstAttention, firstAttentionKernel as tf.KernelFunc],
      [FUSED_KERNELS.firstAttentionGrad, firstAttentionGradKernel as tf.KernelFunc],
      [FUSED_KERNELS.experts, expertsKernel as tf.KernelFunc],
      [FUSED_KERNELS.expertsGrad, expertsGradKernel as tf.KernelFunc],
      [FUSED_KERNELS.block, blockKernel as tf.KernelFunc],
      [FUSED_KERNELS.blockGrad, blockGradKernel as tf.KernelFunc],
    );
  }
  for (const [kernelName, kernelFunc] of kernels) {
    if (tf.getKernel(kernelName, BACKEND)) tf.unregisterKernel(kernelName, BACKEND);
    tf.registerKernel({ kernelName, backendName: BACKEND, kernelFunc });
    added.add(kernelName);
  }
  return kernels.map(([name]) => name);
}

/** Puts the stock kernels back (benchmarks and tests compare both in one process). */
export function disableBlasKernels(): void {
  for (const [name, config] of originals) {
    tf.unregisterKernel(name, BACKEND);
    tf.registerKernel(config);
  }
  originals.clear();
  for (const name of added) tf.unregisterKernel(name, BACKEND);
  added.clear();
  uninstallLeanGradients();
  lastResult = null;
}

/** The C kernels, while the overrides are active and could load them (else null). */
export function activeNative(): Native | null {
  return blasKernelsEnabled() && tf.getBackend() === BACKEND ? native : null;
}

/** Whether the overrides are active. */
export function blasKernelsEnabled(): boolean {
  return lastResult?.ok === true;
}

/**
 * Threads for large matmuls (OpenBLAS) and for the C kernels that split their work (elementwise,
 * layer norm, Adam, attention). enableBlasKernels starts with OpenBLAS's own count.
 */
export function setKernelThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new Error(`lib/blas/kernels.ts: threads must be >= 1, got ${n}`);
  if (!blas) throw new Error("lib/blas/kernels.ts: setKernelThreads before enableBlasKernels succeeded");
  blas.setNumThreads(n);
  native?.setThreads(n);
}

/** The OpenBLAS in use (null before enableBlasKernels succeeds). */
export function activeBlas(): Blas | null {
  return blas;
}

function override(name: string, kernelFunc: tf.KernelFunc): void {
  const stock = tf.getKernel(name, BACKEND);
  if (!stock) throw new Error(`lib/blas/kernels.ts: wasm backend has no ${name} kernel to replace`);
  originals.set(name, stock);
  tf.unregisterKernel(name, BACKEND);
  tf.registerKernel({ kernelName: name, backendName: BACKEND, kernelFunc });
}

function stock(name: string, args: KernelArgs): TensorInfo | TensorInfo[] {
  const config = originals.get(name);
  if (!config) throw new Error(`lib/blas/kernels.ts: stock ${name} kernel missing`);
  return config.kernelFunc(args);
}

// ---------------------------------------------------------------------------------------------
// The wasm heap. Offsets come from the backend's own table; every view is checked against the
// tensor's allocation and the heap, and built from the heap's *current* buffer (it can grow).

type HeapArray = Float32Array | Int32Array | Uint8Array;
type HeapCtor = Float32ArrayConstructor | Int32ArrayConstructor | Uint8ArrayConstructor;

function wasmOf(backend: object): WasmBackend {
  const b = backend as WasmBackend;
  if (!b?.dataIdMap || !b.wasm?.HEAPU8) {
    throw new Error("lib/blas/kernels.ts: kernel called on a non-wasm backend");
  }
  return b;
}

function heapView<T extends HeapArray>(backend: WasmBackend, info: TensorInfo, Ctor: HeapCtor): T {
  const data = backend.dataIdMap.get(info.dataId);
  if (!data || data.memoryOffset == null) {
    throw new Error(`lib/blas/kernels.ts: tensor ${info.shape} has no wasm memory`);
  }
  const size = tf.util.sizeFromShape(info.shape);
  const allocated = tf.util.sizeFromShape(data.shape);
  const bytes = size * Ctor.BYTES_PER_ELEMENT;
  const buffer = backend.wasm.HEAPU8.buffer;
  const offset = data.memoryOffset;
  if (
    size > allocated || offset % Ctor.BYTES_PER_ELEMENT !== 0 || offset < 0 ||
    offset + bytes > buffer.byteLength || (size > 0 && offset === 0)
  ) {
    throw new Error(
      `lib/blas/kernels.ts: tensor ${info.shape} (${size} elements) does not fit its wasm allocation ` +
        `(${allocated} elements at byte ${offset} of ${buffer.byteLength})`,
    );
  }
  return new Ctor(buffer, offset, size) as T;
}

/** A typed array that copies `dtype`'s elements bit for bit (float32 copied as int32: NaNs stay intact). */
function copyCtor(dtype: tf.DataType): HeapCtor | null {
  if (dtype === "float32" || dtype === "int32") return Int32Array;
  if (dtype === "bool") return Uint8Array;
  return null;
}

// ---------------------------------------------------------------------------------------------
// Matmul: shapes, batch broadcasting, and the sgemm calls.

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
    throw new Error(`lib/blas/kernels.ts: matMul needs rank >= 2 tensors, got [${aShape}] and [${bShape}]`);
  }
  const m = transA ? aShape[ar - 1] : aShape[ar - 2];
  const k = transA ? aShape[ar - 2] : aShape[ar - 1];
  const kB = transB ? bShape[br - 1] : bShape[br - 2];
  const n = transB ? bShape[br - 2] : bShape[br - 1];
  if (k !== kB) {
    throw new Error(
      `lib/blas/kernels.ts: matMul inner sizes differ: [${aShape}]${transA ? "ᵀ" : ""} @ [${bShape}]${
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
 * products, where waking a second thread costs more than it saves). Measured on the quiet 2-core
 * machine (best of 15, one thread vs two): 800×128×128 100 vs 151 GFLOP/s, 37×512×2048 67 vs 117,
 * 16×512×2048 48 vs 91 — every product of a training step or of one image's ViT pass is faster on
 * two. (On a machine loaded by other jobs two threads can lose: they wait for a core.) The block kernels
 * apply the same rule in C (kernels.c, product_threads).
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
  const threads = m * n * k * (plan.merged ? batch : 1) < SMALL_GEMM ? 1 : blas!.numThreads() || 1;
  const lda = transA ? m : k, ldb = transB ? k : n;
  if ((plan.merged || batch === 1) && native?.hasSgemm()) { // splits mid-size products on our threads
    const rows = plan.merged ? batch * m : m; // merged: A's batch is stacked into rows, never transposed
    native.sgemm(transA && !plan.merged, transB, { m: rows, n, k }, a, lda, b, ldb, beta, c, n, threads);
    return;
  }
  blas!.useThreads(threads);
  if (plan.merged) {
    blas!.sgemm(false, transB, batch * m, n, k, 1, a, lda, b, ldb, beta, c, n);
    return;
  }
  if (batch > 1 && native?.hasSgemm()) { // one FFI call for all items (an FFI call costs ~2 µs)
    native.sgemmBatch(transA, transB, { m, n, k }, a, plan.aIndex, b, plan.bIndex, beta, c);
    return;
  }
  const aSize = m * k, bSize = k * n, cSize = m * n;
  for (let i = 0; i < batch; i++) {
    const ai = plan.aIndex[i] * aSize, bi = plan.bIndex[i] * bSize;
    blas!.sgemm(
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

function batchMatMulKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
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

function fusedMatMulKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const { a, b, bias, preluActivationWeights: prelu } = args.inputs as Record<string, TensorInfo | undefined>;
  if (!a || !b) throw new Error("lib/blas/kernels.ts: _FusedMatMul needs inputs a and b");
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
      `lib/blas/kernels.ts: _FusedMatMul ${name} shape [${srcShape}] does not broadcast to [${dstShape}]`,
    );
  }
  const joint = tf.broadcast_util.assertAndGetBroadcastShape(dstShape, shape);
  if (!tf.util.arraysEqual(joint, dstShape)) {
    throw new Error(
      `lib/blas/kernels.ts: _FusedMatMul ${name} shape [${srcShape}] does not broadcast to [${dstShape}]`,
    );
  }
  const n = dstShape[dstShape.length - 1];
  if (shape.length <= 1 && (src.length === n || src.length === 1)) {
    const row = src.length === n ? src : new Float32Array(n).fill(src[0]);
    if (native) native.fillRows(dst, row); // rows split across the kernel threads
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
      if (!weights) throw new Error("lib/blas/kernels.ts: prelu activation without preluActivationWeights");
      const w = new Float32Array(len);
      fillBroadcast(w, outShape, weights, weightsShape, "preluActivationWeights");
      for (let i = 0; i < len; i++) if (c[i] < 0) c[i] = w[i] * c[i];
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// C elementwise kernels and fused layers (only registered when native.ts loaded).

function floatView(backend: WasmBackend, info: TensorInfo, what: string): Float32Array {
  if (info.dtype !== "float32") {
    throw new Error(`lib/blas/kernels.ts: ${what} must be float32, got ${info.dtype}`);
  }
  return heapView<Float32Array>(backend, info, Float32Array);
}

function unaryKernel(name: string, op: "erf" | "exp"): tf.KernelFunc {
  return ((args: KernelArgs) => {
    const x = args.inputs.x as TensorInfo;
    if (x.dtype !== "float32" || !native) return stock(name, args);
    const backend = wasmOf(args.backend);
    const out = backend.makeOutput(x.shape, "float32");
    native.unary(op, floatView(backend, x, "x"), floatView(backend, out, "out"));
    return out;
  }) as tf.KernelFunc;
}

/** inputs x (B, H, W, C) → cols (B·H/2·W/2, 9C): im2col of a 3×3 / stride 2 / padding 1 convolution. */
function im2colKernel(args: KernelArgs): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  const [B, H, W, C] = x.shape;
  const backend = wasmOf(args.backend);
  const cols = backend.makeOutput([B * (H / 2) * (W / 2), 9 * C], "float32");
  native!.im2col3x3s2(floatView(backend, x, "im2col x"), floatView(backend, cols, "cols"), [B, H, W, C]);
  return cols;
}

/** inputs dcols (B·H/2·W/2, 9C) and x (for its shape) → dx (B, H, W, C): im2col's gradient. */
function col2imKernel(args: KernelArgs): TensorInfo {
  const { x, dcols } = args.inputs as { x: TensorInfo; dcols: TensorInfo };
  const [B, H, W, C] = x.shape;
  const backend = wasmOf(args.backend);
  const dx = backend.makeOutput(x.shape, "float32");
  native!.col2im3x3s2(floatView(backend, dcols, "dcols"), floatView(backend, dx, "dx"), [B, H, W, C]);
  return dx;
}

function geluKernel(args: KernelArgs): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  const backend = wasmOf(args.backend);
  const out = backend.makeOutput(x.shape, "float32");
  native!.unary("gelu", floatView(backend, x, "gelu x"), floatView(backend, out, "out"));
  return out;
}

/** inputs x, dy → dx = dy * f'(x), for f = GELU or ReLU. */
function unaryGradKernel(op: "gelu" | "relu"): (args: KernelArgs) => TensorInfo {
  return (args) => {
    const { x, dy } = args.inputs as { x: TensorInfo; dy: TensorInfo };
    const backend = wasmOf(args.backend);
    const dx = backend.makeOutput(x.shape, "float32");
    native!.unaryGrad(
      op,
      floatView(backend, x, `${op} x`),
      floatView(backend, dy, `${op} dy`),
      floatView(backend, dx, "dx"),
    );
    return dx;
  };
}

/** inputs x, dy → [GELU(x), dy * GELU'(x)]. */
function geluWithGradKernel(args: KernelArgs): TensorInfo[] {
  const { x, dy } = args.inputs as { x: TensorInfo; dy: TensorInfo };
  const backend = wasmOf(args.backend);
  const out = backend.makeOutput(x.shape, "float32");
  const dx = backend.makeOutput(x.shape, "float32");
  native!.geluWithGrad(
    floatView(backend, x, "gelu x"),
    floatView(backend, dy, "gelu dy"),
    floatView(backend, out, "out"),
    floatView(backend, dx, "dx"),
  );
  return [out, dx];
}

/** inputs x (..., C), g (C), b (C); attrs eps → [y (..., C), mean (...), rstd (...)]. */
function layerNormKernel(args: KernelArgs): TensorInfo[] {
  const { x, g, b } = args.inputs as { x: TensorInfo; g: TensorInfo; b: TensorInfo };
  const backend = wasmOf(args.backend);
  const cols = x.shape[x.shape.length - 1];
  const rowShape = x.shape.slice(0, -1);
  const y = backend.makeOutput(x.shape, "float32");
  const mean = backend.makeOutput(rowShape, "float32");
  const rstd = backend.makeOutput(rowShape, "float32");
  native!.layerNorm(
    floatView(backend, x, "layerNorm x"),
    floatView(backend, g, "layerNorm gain"),
    floatView(backend, b, "layerNorm bias"),
    {
      y: floatView(backend, y, "y"),
      mean: floatView(backend, mean, "mean"),
      rstd: floatView(backend, rstd, "rstd"),
    },
    cols,
    args.attrs?.eps as number,
  );
  return [y, mean, rstd];
}

/** inputs dy, x, g, mean, rstd → [dx, dg, db]. */
function layerNormGradKernel(args: KernelArgs): TensorInfo[] {
  const { dy, x, g, mean, rstd } = args.inputs as Record<string, TensorInfo>;
  const backend = wasmOf(args.backend);
  const dx = backend.makeOutput(x.shape, "float32");
  const dg = backend.makeOutput(g.shape, "float32");
  const db = backend.makeOutput(g.shape, "float32");
  native!.layerNormGrad(
    floatView(backend, dy, "layerNorm dy"),
    floatView(backend, x, "layerNorm x"),
    floatView(backend, g, "layerNorm gain"),
    floatView(backend, mean, "layerNorm mean"),
    floatView(backend, rstd, "layerNorm rstd"),
    { dx: floatView(backend, dx, "dx"), dg: floatView(backend, dg, "dg"), db: floatView(backend, db, "db") },
  );
  return [dx, dg, db];
}

/** inputs p, m, v, g (same shape); attrs beta1, beta2, stepSize, sqrtBc2, eps → [p', m', v']. */
function adamKernel(args: KernelArgs): TensorInfo[] {
  const { p, m, v, g } = args.inputs as Record<string, TensorInfo>;
  const attrs = args.attrs as Record<string, number>;
  const backend = wasmOf(args.backend);
  const outs = [p, m, v].map(() => backend.makeOutput(p.shape, "float32"));
  const [pOut, mOut, vOut] = outs.map((o) => floatView(backend, o, "adam out"));
  native!.adam(
    {
      p: floatView(backend, p, "adam param"),
      m: floatView(backend, m, "adam m"),
      v: floatView(backend, v, "adam v"),
      g: floatView(backend, g, "adam grad"),
    },
    { p: pOut, m: mOut, v: vOut },
    {
      beta1: attrs.beta1,
      beta2: attrs.beta2,
      stepSize: attrs.stepSize,
      sqrtBc2: attrs.sqrtBc2,
      eps: attrs.eps,
    },
  );
  return outs;
}

/**
 * One Adam step for all `params` in ONE C call that overwrites the parameters and their moments in
 * their wasm memory (no new tensors, no assign). Only where nothing else shares that memory: false
 * (and nothing done) off the fast path, for a non-float tensor, or when a parameter or moment's data
 * is also held by another tensor (a clone the caller kept: it must not change).
 */
export function adamInPlace(
  params: tf.Tensor[],
  ms: tf.Tensor[],
  vs: tf.Tensor[],
  grads: tf.Tensor[],
  hyper: { beta1: number; beta2: number; stepSize: number; sqrtBc2: number; eps: number },
): boolean {
  const c = activeNative();
  if (!c) return false;
  const backend = wasmOf(tf.backend());
  const offsets = new Uint32Array(4 * params.length);
  const sizes = new Int32Array(params.length);
  for (let i = 0; i < params.length; i++) {
    const group = [params[i], ms[i], vs[i], grads[i]];
    if (group.some((t) => t.dtype !== "float32" || !tf.util.arraysEqual(t.shape, params[i].shape))) {
      return false;
    }
    for (let j = 0; j < 4; j++) {
      const data = backend.dataIdMap.get(group[j].dataId);
      if (!data || data.memoryOffset == null || (j < 3 && data.refCount !== 1)) return false;
      offsets[4 * i + j] = data.memoryOffset;
    }
    sizes[i] = params[i].size;
  }
  c.adamInPlace(backend.wasm.HEAPU8, offsets, sizes, hyper);
  inPlaceUpdates += 1;
  return true;
}

let inPlaceUpdates = 0;
/** How many times adamInPlace has changed tensors without giving them new data (copies of weights check it). */
export function inPlaceUpdateCount(): number {
  return inPlaceUpdates;
}

/** inputs x; attrs keep, seed (tf.dropout's) → [y (float32), mask (bool)]. */
function dropoutKernel(args: KernelArgs): TensorInfo[] {
  const { x } = args.inputs as { x: TensorInfo };
  const backend = wasmOf(args.backend);
  const y = backend.makeOutput(x.shape, "float32");
  const mask = backend.makeOutput(x.shape, "bool");
  native!.dropout(
    floatView(backend, x, "dropout x"),
    args.attrs?.seed as number,
    { y: floatView(backend, y, "y"), mask: boolView(backend, mask, "mask") },
    args.attrs?.keep as number,
  );
  return [y, mask];
}

/** inputs dy, mask (bool); attrs keep → dx. */
function dropoutGradKernel(args: KernelArgs): TensorInfo {
  const { dy, mask } = args.inputs as { dy: TensorInfo; mask: TensorInfo };
  const backend = wasmOf(args.backend);
  const dx = backend.makeOutput(dy.shape, "float32");
  native!.dropoutGrad(
    floatView(backend, dy, "dropout dy"),
    boolView(backend, mask, "dropout mask"),
    floatView(backend, dx, "dx"),
    args.attrs?.keep as number,
  );
  return dx;
}

function attentionDims(qkv: TensorInfo, heads: number): AttentionDims {
  if (qkv.shape.length !== 3 || qkv.shape[2] % (3 * heads) !== 0) {
    throw new Error(`lib/blas/kernels.ts: attention qkv [${qkv.shape}] is not (B, T, 3·${heads}·head size)`);
  }
  const [batch, positions, width] = qkv.shape;
  return { batch, positions, heads, headSize: width / (3 * heads) };
}

/**
 * inputs qkv (B, T, 3C); attrs heads, scale, causal, and dropout (with its keep probability and
 * seed) → [out (B, T, C), probs (B, H, T, T), mask (B, H, T, T) bool, or [0] without dropout].
 */
function attentionKernel(args: KernelArgs): TensorInfo[] {
  const { qkv } = args.inputs as { qkv: TensorInfo };
  const attrs = args.attrs as {
    heads: number;
    scale: number;
    causal: boolean;
    keep: number;
    dropout: boolean;
    seed: number;
  };
  const dropout = attrs.dropout === true;
  const backend = wasmOf(args.backend);
  const dims = attentionDims(qkv, attrs.heads);
  const { batch: B, positions: T, heads: H, headSize } = dims;
  const out = backend.makeOutput([B, T, H * headSize], "float32");
  const probs = backend.makeOutput([B, H, T, T], "float32");
  const mask = backend.makeOutput(dropout ? [B, H, T, T] : [0], "bool");
  native!.attention(
    floatView(backend, qkv, "attention qkv"),
    dropout ? attrs.seed : null,
    {
      out: floatView(backend, out, "out"),
      probs: floatView(backend, probs, "probs"),
      mask: dropout ? boolView(backend, mask, "mask") : null,
    },
    dims,
    { scale: attrs.scale, causal: attrs.causal, keep: attrs.keep },
  );
  return [out, probs, mask];
}

/**
 * inputs qkv (B, Tn, 3C), optional k, v (B, H, tPast, hs): the cache; attrs heads, scale, causal
 * → [out (B, Tn, C), k, v (B, H, tPast + Tn, hs)].
 */
function attentionCachedKernel(args: KernelArgs): TensorInfo[] {
  const { qkv, k, v } = args.inputs as { qkv: TensorInfo; k?: TensorInfo; v?: TensorInfo };
  const attrs = args.attrs as { heads: number; scale: number; causal: boolean };
  const backend = wasmOf(args.backend);
  const dims = attentionDims(qkv, attrs.heads);
  const { batch: B, positions: Tn, heads: H, headSize } = dims;
  if ((k == null) !== (v == null)) throw new Error("lib/blas/kernels.ts: attention cache needs both k and v");
  const tPast = k ? k.shape[2] : 0;
  for (const [name, t] of [["k", k], ["v", v]] as const) {
    if (t && !tf.util.arraysEqual(t.shape, [B, H, tPast, headSize])) {
      throw new Error(
        `lib/blas/kernels.ts: attention cache ${name} [${t.shape}] is not [${B},${H},t,${headSize}]`,
      );
    }
  }
  const out = backend.makeOutput([B, Tn, H * headSize], "float32");
  const kAll = backend.makeOutput([B, H, tPast + Tn, headSize], "float32");
  const vAll = backend.makeOutput([B, H, tPast + Tn, headSize], "float32");
  native!.attentionCached(
    floatView(backend, qkv, "attention qkv"),
    k && v && tPast > 0 ? { k: floatView(backend, k, "cache k"), v: floatView(backend, v, "cache v") } : null,
    {
      out: floatView(backend, out, "out"),
      k: floatView(backend, kAll, "k"),
      v: floatView(backend, vAll, "v"),
    },
    { ...dims, pastPositions: tPast },
    { scale: attrs.scale, causal: attrs.causal },
  );
  return [out, kAll, vAll];
}

/** inputs dout (B, T, C), qkv, probs, mask (as attentionKernel made them); attrs heads, scale, keep → dqkv. */
function attentionGradKernel(args: KernelArgs): TensorInfo {
  const { dout, qkv, probs, mask } = args.inputs as Record<string, TensorInfo>;
  const attrs = args.attrs as { heads: number; scale: number; keep: number };
  const backend = wasmOf(args.backend);
  const dims = attentionDims(qkv, attrs.heads);
  const dqkv = backend.makeOutput(qkv.shape, "float32");
  const hasMask = tf.util.sizeFromShape(mask.shape) > 0;
  native!.attentionGrad(
    floatView(backend, dout, "attention dout"),
    {
      qkv: floatView(backend, qkv, "attention qkv"),
      probs: floatView(backend, probs, "attention probs"),
      mask: hasMask ? boolView(backend, mask, "attention mask") : null,
    },
    floatView(backend, dqkv, "dqkv"),
    dims,
    { scale: attrs.scale, keep: attrs.keep },
  );
  return dqkv;
}

interface FirstAttentionAttrs {
  heads: number;
  scale: number;
  keep: number;
  dropout: boolean;
  seed: number;
}

function firstAttentionDims(x: TensorInfo, attrs: FirstAttentionAttrs) {
  const [B, T, C] = x.shape;
  return { B, T, C, H: attrs.heads, scale: attrs.scale, keep: attrs.keep };
}

/**
 * inputs x (B, T, C), w [C, 3C]; attrs heads, scale, keep, dropout, seed → [out (B, 1, C), q (B, C),
 * a (B, H, C), ctx (B, H, C), probs (B, H, T), mask (B, H, T) bool, or [0] without dropout].
 */
function firstAttentionKernel(args: KernelArgs): TensorInfo[] {
  const { x, w } = args.inputs as { x: TensorInfo; w: TensorInfo };
  const attrs = args.attrs as unknown as FirstAttentionAttrs;
  const backend = wasmOf(args.backend);
  const dims = firstAttentionDims(x, attrs);
  const { B, T, C, H } = dims;
  const out = backend.makeOutput([B, 1, C], "float32");
  const q = backend.makeOutput([B, C], "float32");
  const a = backend.makeOutput([B, H, C], "float32");
  const ctx = backend.makeOutput([B, H, C], "float32");
  const probs = backend.makeOutput([B, H, T], "float32");
  const mask = backend.makeOutput(attrs.dropout ? [B, H, T] : [0], "bool");
  native!.firstAttention(
    {
      x: floatView(backend, x, "x"),
      w: floatView(backend, w, "w"),
      q: floatView(backend, q, "q"),
      a: floatView(backend, a, "a"),
      ctx: floatView(backend, ctx, "ctx"),
      out: floatView(backend, out, "out"),
      probs: floatView(backend, probs, "probs"),
      mask: attrs.dropout ? boolView(backend, mask, "mask") : null,
    },
    attrs.dropout ? attrs.seed : null,
    dims,
  );
  return [out, q, a, ctx, probs, mask];
}

/** inputs dout (B, 1, C) and x, w, q, a, ctx, probs, mask as above → [dx (B, T, C), dw [C, 3C]]. */
function firstAttentionGradKernel(args: KernelArgs): TensorInfo[] {
  const { dout, x, w, q, a, ctx, probs, mask } = args.inputs as Record<string, TensorInfo>;
  const attrs = args.attrs as unknown as FirstAttentionAttrs;
  const backend = wasmOf(args.backend);
  const dims = firstAttentionDims(x, attrs);
  const dx = backend.makeOutput(x.shape, "float32");
  const dw = backend.makeOutput(w.shape, "float32");
  native!.firstAttentionGrad(
    {
      dout: floatView(backend, dout, "dout"),
      x: floatView(backend, x, "x"),
      w: floatView(backend, w, "w"),
      q: floatView(backend, q, "q"),
      a: floatView(backend, a, "a"),
      ctx: floatView(backend, ctx, "ctx"),
      probs: floatView(backend, probs, "probs"),
      mask: attrs.dropout ? boolView(backend, mask, "mask") : null,
      dx: floatView(backend, dx, "dx"),
      dw: floatView(backend, dw, "dw"),
    },
    dims,
  );
  return [dx, dw];
}

/** attrs of the seeMoE routing kernels: the plan of lib/model/moe.ts planDispatch. */
interface MoEAttrs {
  order: Int32Array; // (M) slot of each expert row
  rowOfSlot: Int32Array; // (k·N) expert row of each slot, -1 if dropped
  slotExpert: Int32Array; // (k·N) expert of each slot
  tokens: number; // N
  choices: number; // k
}

function dispatchDims(attrs: MoEAttrs, C: number): MoEDims {
  return { N: attrs.tokens, C, M: attrs.order.length, k: attrs.choices, E: 0 };
}

/** inputs x (N, C); attrs as MoEAttrs → (M, C), row r = x[order[r] mod N]. */
function moeDispatchKernel(args: KernelArgs): TensorInfo {
  const { x } = args.inputs as { x: TensorInfo };
  const attrs = args.attrs as unknown as MoEAttrs;
  const backend = wasmOf(args.backend);
  const dims = dispatchDims(attrs, x.shape[1]);
  const inputs = backend.makeOutput([dims.M, dims.C], "float32");
  native!.moeDispatch(floatView(backend, x, "x"), attrs.order, floatView(backend, inputs, "inputs"), dims);
  return inputs;
}

/** inputs dinputs (M, C) → dx (N, C). */
function moeDispatchGradKernel(args: KernelArgs): TensorInfo {
  const { dinputs } = args.inputs as { dinputs: TensorInfo };
  const attrs = args.attrs as unknown as MoEAttrs;
  const backend = wasmOf(args.backend);
  const dims = dispatchDims(attrs, dinputs.shape[1]);
  const dx = backend.makeOutput([dims.N, dims.C], "float32");
  native!.moeDispatchGrad(
    floatView(backend, dinputs, "dinputs"),
    attrs.order,
    floatView(backend, dx, "dx"),
    dims,
  );
  return dx;
}

function combineDims(merged: TensorInfo, gates: TensorInfo, attrs: MoEAttrs): MoEDims {
  const [N, E] = gates.shape, [M, C] = merged.shape;
  return { N, C, M, k: attrs.choices, E };
}

function combineInputs(backend: WasmBackend, merged: TensorInfo, gates: TensorInfo, attrs: MoEAttrs) {
  return {
    merged: floatView(backend, merged, "merged"),
    gates: floatView(backend, gates, "gates"),
    rowOfSlot: attrs.rowOfSlot,
    slotExpert: attrs.slotExpert,
  };
}

/** inputs merged (M, C), gates (N, E) → out (N, C). */
function moeCombineKernel(args: KernelArgs): TensorInfo {
  const { merged, gates } = args.inputs as { merged: TensorInfo; gates: TensorInfo };
  const attrs = args.attrs as unknown as MoEAttrs;
  const backend = wasmOf(args.backend);
  const dims = combineDims(merged, gates, attrs);
  const out = backend.makeOutput([dims.N, dims.C], "float32");
  native!.moeCombine(combineInputs(backend, merged, gates, attrs), floatView(backend, out, "out"), dims);
  return out;
}

/** inputs dout (N, C), merged, gates → [dmerged (M, C), dgates (N, E)]. */
function moeCombineGradKernel(args: KernelArgs): TensorInfo[] {
  const { dout, merged, gates } = args.inputs as { dout: TensorInfo; merged: TensorInfo; gates: TensorInfo };
  const attrs = args.attrs as unknown as MoEAttrs;
  const backend = wasmOf(args.backend);
  const dmerged = backend.makeOutput(merged.shape, "float32");
  const dgates = backend.makeOutput(gates.shape, "float32");
  native!.moeCombineGrad(
    combineInputs(backend, merged, gates, attrs),
    floatView(backend, dout, "dout"),
    { dmerged: floatView(backend, dmerged, "dmerged"), dgates: floatView(backend, dgates, "dgates") },
    combineDims(merged, gates, attrs),
  );
  return [dmerged, dgates];
}

/**
 * Byte offsets on the wasm heap of each expert e's parameters, inputs w1_e [C, F], b1_e [F], w2_e [F, C]
 * and b2_e [C] (shapes checked: the C kernel trusts them).
 */
function expertOffsets(
  backend: WasmBackend,
  inputs: Record<string, TensorInfo>,
  E: number,
  C: number,
  F: number,
) {
  const offsets = new Uint32Array(4 * E);
  const shapes: [string, number[]][] = [["w1", [C, F]], ["b1", [F]], ["w2", [F, C]], ["b2", [C]]];
  for (let e = 0; e < E; e++) {
    shapes.forEach(([name, shape], j) => {
      const t = inputs[`${name}_${e}`];
      if (!t || t.dtype !== "float32" || !tf.util.arraysEqual(t.shape, shape)) {
        throw new Error(`lib/blas/kernels.ts: experts input ${name}_${e} must be float32 [${shape}]`);
      }
      offsets[4 * e + j] = backend.dataIdMap.get(t.dataId)!.memoryOffset;
    });
  }
  return offsets;
}

interface ExpertsAttrs {
  counts: number[];
  hidden: number;
  keep: number;
  seeds: number[]; // one per expert, or none: no dropout
}

/**
 * inputs x (M, C) and w1_e, b1_e, w2_e, b2_e for each expert e; attrs counts, hidden (F), keep, seeds
 * → [y (M, C), h (M, F), mask (M, C) bool, or [0] without dropout]. See native.ts experts().
 */
function expertsKernel(args: KernelArgs): TensorInfo[] {
  const inputs = args.inputs as Record<string, TensorInfo>;
  const { counts, hidden: F, keep, seeds } = args.attrs as unknown as ExpertsAttrs;
  const x = inputs.x, [M, C] = x.shape;
  const backend = wasmOf(args.backend);
  const offsets = expertOffsets(backend, inputs, counts.length, C, F);
  const dropout = seeds.length > 0;
  const y = backend.makeOutput([M, C], "float32");
  const h = backend.makeOutput([M, F], "float32");
  const mask = backend.makeOutput(dropout ? [M, C] : [0], "bool");
  native!.experts(
    backend.wasm.HEAPU8,
    offsets,
    Int32Array.from(counts),
    {
      x: floatView(backend, x, "experts x"),
      h: floatView(backend, h, "h"),
      y: floatView(backend, y, "y"),
      mask: dropout ? boolView(backend, mask, "mask") : null,
    },
    dropout ? { seeds, keep } : null,
    { C, F },
  );
  return [y, h, mask];
}

/** inputs dy, x, h, mask and the experts' parameters; attrs as expertsKernel → [dx, then dw1, db1, dw2, db2 per expert]. */
function expertsGradKernel(args: KernelArgs): TensorInfo[] {
  const inputs = args.inputs as Record<string, TensorInfo>;
  const { counts, hidden: F, keep, seeds } = args.attrs as unknown as ExpertsAttrs;
  const { dy, x, h, mask } = inputs;
  const [M, C] = x.shape;
  const backend = wasmOf(args.backend);
  const offsets = expertOffsets(backend, inputs, counts.length, C, F);
  const dx = backend.makeOutput([M, C], "float32");
  const grads = counts.flatMap(() =>
    [[C, F], [F], [F, C], [C]].map((shape) => backend.makeOutput(shape, "float32"))
  );
  const gradOffsets = Uint32Array.from(grads, (g) => backend.dataIdMap.get(g.dataId)!.memoryOffset);
  native!.expertsGrad(
    backend.wasm.HEAPU8,
    offsets,
    gradOffsets,
    Int32Array.from(counts),
    {
      x: floatView(backend, x, "experts x"),
      h: floatView(backend, h, "experts h"),
      dy: floatView(backend, dy, "experts dy"),
      mask: seeds.length > 0 ? boolView(backend, mask, "experts mask") : null,
      dx: floatView(backend, dx, "dx"),
    },
    keep,
    { C, F },
  );
  return [dx, ...grads];
}

// ---------------------------------------------------------------------------------------------
// A whole transformer block (native.ts block(), kernels.c seemore_block).

/** attrs of SeemoreBlock and SeemoreBlockGrad. */
export interface BlockAttrs {
  heads: number;
  scale: number;
  causal: boolean;
  preNorm: boolean;
  eps: number;
  /** Dropout on the attention weights and on the projection's output, with these seeds (keep = 1 - rate). */
  dropout: boolean;
  keep: number;
  seedAttention: number;
  seedProjection: number;
}

function blockDims(x: TensorInfo, attrs: BlockAttrs): BlockDims {
  if (x.dtype !== "float32" || x.shape.length !== 3 || x.shape[2] % attrs.heads !== 0) {
    throw new Error(
      `lib/blas/kernels.ts: block x must be float32 (B, T, C) with C divisible by ${attrs.heads}, got [${x.shape}]`,
    );
  }
  const [B, T, C] = x.shape;
  const { heads, preNorm, causal, scale, keep, eps } = attrs;
  return { B, T, C, heads, preNorm, causal, scale, keep: attrs.dropout ? keep : 1, eps };
}

/** Each named tensor's heap offset at its BLOCK_TENSORS place, after checking its dtype and element count. */
function blockOffsets(
  backend: WasmBackend,
  tensors: Record<string, TensorInfo>,
  bytes: number[],
): Uint32Array {
  const offsets = new Uint32Array(BLOCK_TENSORS.length);
  for (const [name, t] of Object.entries(tensors)) {
    const i = BLOCK_TENSORS.indexOf(name as typeof BLOCK_TENSORS[number]);
    const width = t.dtype === "bool" ? 1 : 4;
    if (
      i < 0 || (t.dtype !== "float32" && t.dtype !== "bool") ||
      tf.util.sizeFromShape(t.shape) * width !== bytes[i]
    ) {
      throw new Error(
        `lib/blas/kernels.ts: block ${name} [${t.shape}] ${t.dtype} does not fit (${
          bytes[i]
        } bytes expected)`,
      );
    }
    offsets[i] = backend.dataIdMap.get(t.dataId)!.memoryOffset;
  }
  return offsets;
}

/** inputs x (B, T, C) and the parameters (native.ts BLOCK_PARAMS) → [out, then native.ts BLOCK_SAVED]. */
function blockKernel(args: KernelArgs): TensorInfo[] {
  return blockCall(args, ["out", ...BLOCK_SAVED], false, (heap, offsets, dims, attrs) => {
    const seeds = attrs.dropout ? { attention: attrs.seedAttention, projection: attrs.seedProjection } : null;
    native!.block(heap, offsets, dims, seeds);
  });
}

/**
 * inputs dout, x, the parameters, and the forward's saved outputs as saved0, saved1, … (BLOCK_SAVED's
 * order) → [dx, then each parameter's gradient].
 */
function blockGradKernel(args: KernelArgs): TensorInfo[] {
  const outputs = ["dx", ...BLOCK_PARAMS.map((p) => `d${p}`)];
  const inputs = { ...args.inputs };
  BLOCK_SAVED.forEach((name, i) => {
    inputs[name] = inputs[`saved${i}`];
    delete inputs[`saved${i}`];
  });
  return blockCall({ ...args, inputs }, outputs, true, (heap, offsets, dims, attrs) => {
    native!.blockGrad(heap, offsets, dims, attrs.dropout);
  });
}

/**
 * Makes the named outputs and a scratch region on the heap, then calls `call` with the heap (as it is
 * after those allocations) and every tensor's offset; frees the scratch.
 */
function blockCall(
  args: KernelArgs,
  outputNames: string[],
  backward: boolean,
  call: (heap: Uint8Array, offsets: Uint32Array, dims: BlockDims, attrs: BlockAttrs) => void,
): TensorInfo[] {
  const inputs = args.inputs as Record<string, TensorInfo>;
  const attrs = args.attrs as unknown as BlockAttrs;
  const backend = wasmOf(args.backend);
  const dims = blockDims(inputs.x, attrs);
  const bytes = blockBytes(dims, attrs.dropout, backward);
  const outputs = outputNames.map((name) =>
    backend.makeOutput(blockShape(name, dims, attrs.dropout), name.startsWith("mask") ? "bool" : "float32")
  );
  const named = Object.fromEntries(outputNames.map((name, i) => [name, outputs[i]]));
  runWithScratch(backend, bytes[BLOCK_TENSORS.indexOf("scratch")] / 4, (scratch) => {
    const offsets = blockOffsets(backend, { ...inputs, ...named, scratch }, bytes);
    call(backend.wasm.HEAPU8, offsets, dims, attrs);
  });
  return outputs;
}

/** f with a float32 scratch tensor of `size` on the heap, freed afterwards. */
function runWithScratch(backend: WasmBackend, size: number, f: (scratch: TensorInfo) => void): void {
  const scratch = backend.makeOutput([size], "float32");
  try {
    f(scratch);
  } finally {
    backend.disposeData(scratch.dataId, true);
  }
}

function boolView(backend: WasmBackend, info: TensorInfo, what: string): Uint8Array {
  if (info.dtype !== "bool") throw new Error(`lib/blas/kernels.ts: ${what} must be bool, got ${info.dtype}`);
  return heapView<Uint8Array>(backend, info, Uint8Array);
}

// ---------------------------------------------------------------------------------------------
// Memory-bound kernels.

function transposeKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  const Ctor = copyCtor(x.dtype);
  if (!Ctor) return stock("Transpose", args);
  const backend = wasmOf(args.backend);
  const perm = (args.attrs?.perm as number[]).map((p) => (p < 0 ? p + x.shape.length : p));
  const out = backend.makeOutput(perm.map((p) => x.shape[p]), x.dtype);
  if (tf.util.sizeFromShape(x.shape) === 0) return out;
  const src = heapView<Int32Array>(backend, x, Ctor);
  const dst = heapView<Int32Array>(backend, out, Ctor);
  const [shape, order] = simplifyTranspose(x.shape, perm); // same transpose on fewer axes
  if (shape.length <= 1) dst.set(src);
  else if (native && Ctor === Int32Array && shape.length <= 8) native.transpose32(src, dst, shape, order);
  else transposeInto(src, dst, shape, order);
  return out;
}

/** Identity shares the input's buffer, like the cpu backend (tfjs clones every saved tensor). */
function identityKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  if (x.dtype === "string" || x.dtype === "complex64") return stock("Identity", args);
  const backend = wasmOf(args.backend);
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

function unpackKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const value = args.inputs.value as TensorInfo;
  const Ctor = copyCtor(value.dtype);
  if (!Ctor) return stock("Unpack", args);
  const backend = wasmOf(args.backend);
  const rank = value.shape.length;
  let axis = (args.attrs?.axis as number | undefined) ?? 0;
  if (axis < 0) axis += rank;
  const count = value.shape[axis];
  const outShape = value.shape.filter((_, d) => d !== axis);
  const outs = Array.from({ length: count }, () => backend.makeOutput(outShape, value.dtype)); // allocate first
  const outer = tf.util.sizeFromShape(value.shape.slice(0, axis));
  const inner = tf.util.sizeFromShape(value.shape.slice(axis + 1));
  if (outer * inner === 0) return outs;
  const src = heapView<Int32Array>(backend, value, Ctor);
  for (let i = 0; i < count; i++) {
    const dst = heapView<Int32Array>(backend, outs[i], Ctor);
    for (let o = 0; o < outer; o++) {
      const from = (o * count + i) * inner;
      copyRun(src, from, dst, o * inner, inner);
    }
  }
  return outs;
}

/**
 * tf.slice read in place: stock wasm first copies the whole input out of the heap (readSync), which
 * for the ViT's CLS row (16 of 16 × 37 × 512) costs 0.75 ms instead of ~0.01. Trailing axes taken
 * whole merge into one run; the runs are copied outer index by outer index.
 */
function sliceKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  const Ctor = copyCtor(x.dtype);
  if (!Ctor) return stock("Slice", args);
  const backend = wasmOf(args.backend);
  const [begin, size] = tf.slice_util.parseSliceParams(
    x as tf.Tensor,
    args.attrs?.begin as number | number[],
    args.attrs?.size as number | number[],
  );
  const out = backend.makeOutput(size, x.dtype);
  const total = tf.util.sizeFromShape(size);
  if (total === 0) return out;
  const rank = x.shape.length;
  let axis = rank - 1; // the runs start at this axis: every axis after it is taken whole
  while (axis > 0 && size[axis] === x.shape[axis]) axis--;
  const strides = tf.util.computeStrides(x.shape); // strides[d] = elements per step of axis d (d < rank-1)
  const inner = axis === rank - 1 ? 1 : strides[axis];
  const run = size[axis] * inner;
  const src = heapView<Int32Array>(backend, x, Ctor), dst = heapView<Int32Array>(backend, out, Ctor);
  const coord = new Array(axis).fill(0); // position in the outer axes of the slice
  for (let to = 0; to < total; to += run) {
    let from = begin[axis] * inner;
    for (let d = 0; d < axis; d++) from += (begin[d] + coord[d]) * strides[d];
    copyRun(src, from, dst, to, run);
    for (let d = axis - 1; d >= 0 && ++coord[d] === size[d]; d--) coord[d] = 0;
  }
  return out;
}

/** tf.gather along one axis (batchDims 0): whole runs of the axes after it are copied at once. */
function gatherKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const { x, indices } = args.inputs as { x: TensorInfo; indices: TensorInfo };
  const batchDims = (args.attrs?.batchDims as number | undefined) ?? 0;
  const Ctor = copyCtor(x.dtype);
  if (!Ctor || indices.dtype !== "int32" || batchDims !== 0) return stock("GatherV2", args);
  const backend = wasmOf(args.backend);
  const axis = tf.util.parseAxisParam(args.attrs?.axis as number, x.shape)[0];
  const outer = tf.util.sizeFromShape(x.shape.slice(0, axis));
  const dim = x.shape[axis];
  const inner = tf.util.sizeFromShape(x.shape.slice(axis + 1));
  const n = tf.util.sizeFromShape(indices.shape);
  const index = n > 0 ? heapView<Int32Array>(backend, indices, Int32Array).slice() : new Int32Array(0);
  for (let i = 0; i < n; i++) {
    if (!(index[i] >= 0 && index[i] < dim)) {
      throw new Error(`GatherV2: the index value ${index[i]} is not in [0, ${dim - 1}]`);
    }
  }
  const out = backend.makeOutput(
    [...x.shape.slice(0, axis), ...indices.shape, ...x.shape.slice(axis + 1)],
    x.dtype,
  );
  if (outer * n * inner === 0) return out;
  const src = heapView<Int32Array>(backend, x, Ctor);
  const dst = heapView<Int32Array>(backend, out, Ctor);
  if (native && Ctor === Int32Array) native.gather32(src, dst, { outer, dim, inner }, index);
  else {
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < n; i++) copyRun(src, (o * dim + index[i]) * inner, dst, (o * n + i) * inner, inner);
    }
  }
  return out;
}

function splitVKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  const Ctor = copyCtor(x.dtype);
  if (!Ctor) return stock("SplitV", args);
  const backend = wasmOf(args.backend);
  const axis = tf.util.parseAxisParam(args.attrs?.axis as number, x.shape)[0];
  const sizes = tf.backend_util.prepareSplitSize(
    x as tf.Tensor,
    args.attrs?.numOrSizeSplits as number | number[],
    axis,
  );
  const outs = sizes.map((size) => {
    const shape = x.shape.slice();
    shape[axis] = size;
    return backend.makeOutput(shape, x.dtype); // allocate first
  });
  const outer = tf.util.sizeFromShape(x.shape.slice(0, axis));
  const inner = tf.util.sizeFromShape(x.shape.slice(axis + 1));
  const width = x.shape[axis];
  if (outer * inner * width === 0) return outs;
  const src = heapView<Int32Array>(backend, x, Ctor);
  let start = 0;
  sizes.forEach((size, i) => {
    const dst = heapView<Int32Array>(backend, outs[i], Ctor);
    const run = size * inner;
    for (let o = 0; o < outer; o++) copyRun(src, (o * width + start) * inner, dst, o * run, run);
    start += size;
  });
  return outs;
}

/** Sum over any axes of a float32 tensor without transposing it first (stock wasm transposes). */
function sumKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  if (x.dtype !== "float32") return stock("Sum", args);
  const backend = wasmOf(args.backend);
  const axes = tf.util.parseAxisParam(args.attrs?.axis as number | number[], x.shape);
  const keepDims = args.attrs?.keepDims === true;
  const outShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d)).filter((_, i) =>
    keepDims || !axes.includes(i)
  );
  const out = backend.makeOutput(outShape, "float32");
  const dst = heapView<Float32Array>(backend, out, Float32Array);
  if (tf.util.sizeFromShape(x.shape) === 0) {
    dst.fill(0);
    return out;
  }
  const src = heapView<Float32Array>(backend, x, Float32Array);
  if (native) native.sum(src, dst, x.shape, axes);
  else sumInto(src, dst, x.shape, axes);
  return out;
}

/** dst = sum of src (row-major `shape`) over `axes`, accumulated in double precision. */
export function sumInto(src: Float32Array, dst: Float32Array, shape: number[], axes: number[]): void {
  const [sizes, reduced] = simplifyReduction(shape, axes);
  const acc = new Float64Array(dst.length);
  const last = sizes.length - 1;
  if (last < 0) {
    dst[0] = src[0];
    return;
  }
  const len = sizes[last];
  // Output stride of each group: 0 for reduced groups.
  const outStep = new Array(sizes.length).fill(0);
  for (let g = last, s = 1; g >= 0; g--) {
    if (!reduced[g]) {
      outStep[g] = s;
      s *= sizes[g];
    }
  }
  const inStep = stridesOf(sizes);
  forEachGroup(sizes, inStep, outStep, last, (inBase, outBase) => {
    if (reduced[last]) {
      let total = 0;
      for (let j = 0; j < len; j++) total += src[inBase + j];
      acc[outBase] += total;
    } else {
      for (let j = 0; j < len; j++) acc[outBase + j] += src[inBase + j];
    }
  });
  for (let i = 0; i < dst.length; i++) dst[i] = acc[i];
}

/** Calls fn(inOffset, outOffset) for every combination of the groups before `inner`. */
function forEachGroup(
  sizes: number[],
  inStep: number[],
  outStep: number[],
  inner: number,
  fn: (inBase: number, outBase: number) => void,
): void {
  let total = 1;
  for (let g = 0; g < inner; g++) total *= sizes[g];
  const coord = new Array(inner).fill(0);
  let inPos = 0, outPos = 0;
  for (let t = 0; t < total; t++) {
    fn(inPos, outPos);
    for (let g = inner - 1; g >= 0; g--) {
      coord[g]++;
      inPos += inStep[g];
      outPos += outStep[g];
      if (coord[g] < sizes[g]) break;
      inPos -= inStep[g] * coord[g];
      outPos -= outStep[g] * coord[g];
      coord[g] = 0;
    }
  }
}

/** dst[to .. to+len) = src[from .. from+len); short runs by hand (subarray costs more than it saves). */
function copyRun(src: HeapArray, from: number, dst: HeapArray, to: number, len: number): void {
  if (len >= 64) {
    dst.set(src.subarray(from, from + len), to);
    return;
  }
  for (let j = 0; j < len; j++) dst[to + j] = src[from + j];
}

/**
 * Drops size-1 axes and merges axes that stay neighbours under `perm`: the transpose is the same,
 * on fewer, longer axes. Returns the reduced shape and permutation.
 */
export function simplifyTranspose(shape: number[], perm: number[]): [number[], number[]] {
  const keep = shape.map((s) => s !== 1);
  // Axes of the input, renumbered after dropping size-1 axes.
  const renumber = new Array(shape.length).fill(-1);
  const dims: number[] = [];
  for (let d = 0; d < shape.length; d++) if (keep[d]) renumber[d] = dims.push(shape[d]) - 1;
  const p = perm.filter((d) => keep[d]).map((d) => renumber[d]);
  // Merge runs p[i+1] === p[i] + 1 into one axis.
  const groups: number[][] = [];
  for (const d of p) {
    const last = groups[groups.length - 1];
    if (last && last[last.length - 1] + 1 === d) last.push(d);
    else groups.push([d]);
  }
  const order = groups.map((g) => g[0]).sort((x, y) => x - y);
  const mergedShape = order.map((first) => {
    const g = groups.find((gr) => gr[0] === first)!;
    return g.reduce((acc, d) => acc * dims[d], 1);
  });
  const mergedPerm = groups.map((g) => order.indexOf(g[0]));
  return [mergedShape, mergedPerm];
}

/** dst = transpose(src, perm) for a row-major tensor of `shape` (any element type). */
export function transposeInto(src: HeapArray, dst: HeapArray, shape: number[], perm: number[]): void {
  const [s, p] = simplifyTranspose(shape, perm);
  const r = s.length;
  if (r <= 1) {
    dst.set(src.subarray(0, dst.length));
    return;
  }
  const inStrides = stridesOf(s);
  const outShape = p.map((d) => s[d]);
  const outStrides = stridesOf(outShape);
  // Input stride of each output axis.
  const step = p.map((d) => inStrides[d]);
  if (p[r - 1] === r - 1) {
    // Rows of the last axis stay contiguous: copy them whole.
    const len = s[r - 1];
    forEachOuter(outShape, step, [r - 1], (inBase, outBase) => copyRun(src, inBase, dst, outBase, len));
    return;
  }
  // Output axis q reads the input's contiguous axis; the output's last axis reads stride `far`.
  const q = p.indexOf(r - 1);
  const rows = outShape[q], cols = outShape[r - 1], far = step[r - 1], outRow = outStrides[q];
  const TILE = 32;
  forEachOuter(outShape, step, [q, r - 1], (inBase, outBase) => {
    for (let i0 = 0; i0 < rows; i0 += TILE) {
      const i1 = Math.min(rows, i0 + TILE);
      for (let j0 = 0; j0 < cols; j0 += TILE) {
        const j1 = Math.min(cols, j0 + TILE);
        for (let i = i0; i < i1; i++) {
          const o = outBase + i * outRow;
          const x = inBase + i;
          for (let j = j0; j < j1; j++) dst[o + j] = src[x + j * far];
        }
      }
    }
  });
}

/**
 * Calls fn(inputOffset, outputOffset) for every combination of the output axes not in `inner`,
 * visiting outputs in order. `step[d]` is the input stride of output axis d.
 */
function forEachOuter(
  outShape: number[],
  step: number[],
  inner: number[],
  fn: (inBase: number, outBase: number) => void,
): void {
  const outStrides = stridesOf(outShape);
  const axes = outShape.map((_, d) => d).filter((d) => !inner.includes(d));
  const total = axes.reduce((acc, d) => acc * outShape[d], 1);
  const coord = new Array(axes.length).fill(0);
  let inPos = 0, outPos = 0;
  for (let t = 0; t < total; t++) {
    fn(inPos, outPos);
    for (let a = axes.length - 1; a >= 0; a--) {
      const d = axes[a];
      coord[a]++;
      inPos += step[d];
      outPos += outStrides[d];
      if (coord[a] < outShape[d]) break;
      inPos -= step[d] * coord[a];
      outPos -= outStrides[d] * coord[a];
      coord[a] = 0;
    }
  }
}

function stridesOf(shape: number[]): number[] {
  const strides = new Array(shape.length);
  let s = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    strides[d] = s;
    s *= shape[d];
  }
  return strides;
}
