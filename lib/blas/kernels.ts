// Faster kernels for tfjs's wasm backend: matmuls go to OpenBLAS's cblas_sgemm (through Deno FFI, on
// views of the wasm heap), and ops the stock backend does slowly are replaced too: Transpose, Unpack,
// SplitV, Slice, GatherV2 and Sum (JS, or C where native.ts could build its kernels), Identity (no copy),
// and with the C kernels also Erf and Exp. It also installs the lean backward pass (lean_gradients.ts),
// which frees gradients and saved tensors as soon as they are used: the wasm heap never shrinks, so the
// backward pass's peak would otherwise stay the process's memory. This file puts them in place; the kernel
// functions live in kernels/<family>.ts. Our own fused kernels (fusedKernels(): GELU, layer norm,
// attention, the whole block, ...) are handed to the caller by op, for it to register under the ops' names.
//
//   import * as tf from "@tensorflow/tfjs-core";
//   import "@tensorflow/tfjs-backend-wasm";
//   await tf.setBackend("wasm");
//   const blas = await enableBlasKernels(); // { ok, reason?, kernels, native? }
//   const ours = fusedKernels();              // { gelu: KernelFunc, attention: KernelFunc, ... }
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
import { loadNative, type Native } from "./native.ts";
import * as attention from "./kernels/attention.ts";
import * as block from "./kernels/block.ts";
import { active, activeNative, BACKEND, originals } from "./kernels/common.ts";
import * as elementwise from "./kernels/elementwise.ts";
import * as experts from "./kernels/experts.ts";
import * as matmul from "./kernels/matmul.ts";
import * as memory from "./kernels/memory_ops.ts";

export { activeNative };
export { adamInPlace } from "./kernels/elementwise.ts";

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

type Kernel = (args: never) => unknown;

/** The stock kernels we replace (float32 to BLAS and C, the rest copied in place or to the stock one). */
const OVERRIDES: [string, Kernel][] = [
  ["BatchMatMul", matmul.batchMatMulKernel],
  ["_FusedMatMul", matmul.fusedMatMulKernel],
  ["Transpose", memory.transposeKernel],
  ["Identity", memory.identityKernel],
  ["Unpack", memory.unpackKernel],
  ["SplitV", memory.splitVKernel],
  ["Slice", memory.sliceKernel],
  ["GatherV2", memory.gatherKernel],
  ["Sum", memory.sumKernel],
];

/** Replaced too when the C kernels load. */
const NATIVE_OVERRIDES: [string, Kernel][] = [
  ["Erf", elementwise.unaryKernel("Erf", "erf")],
  ["Exp", elementwise.unaryKernel("Exp", "exp")],
];

/** Our own kernels, by the op they serve: with the C kernels, then those that also call sgemm themselves. */
const FUSED: Record<string, Kernel> = {
  dense: matmul.denseKernel,
  gelu: elementwise.geluKernel,
  geluGrad: elementwise.unaryGradKernel("gelu"),
  geluWithGrad: elementwise.geluWithGradKernel,
  reluGrad: elementwise.unaryGradKernel("relu"),
  layerNorm: elementwise.layerNormKernel,
  layerNormGrad: elementwise.layerNormGradKernel,
  adam: elementwise.adamKernel,
  dropout: elementwise.dropoutKernel,
  dropoutGrad: elementwise.dropoutGradKernel,
  im2col3x3s2: elementwise.im2colKernel,
  col2im3x3s2: elementwise.col2imKernel,
  moeCombine: experts.moeCombineKernel,
  moeCombineGrad: experts.moeCombineGradKernel,
};
const FUSED_WITH_SGEMM: Record<string, Kernel> = {
  attention: attention.attentionKernel,
  attentionGrad: attention.attentionGradKernel,
  attentionCached: attention.attentionCachedKernel,
  firstAttention: attention.firstAttentionKernel,
  firstAttentionGrad: attention.firstAttentionGradKernel,
  experts: experts.expertsKernel,
  expertsGrad: experts.expertsGradKernel,
  block: block.blockKernel,
  blockGrad: block.blockGradKernel,
  attentionHalf: block.attentionHalfKernel,
  attentionHalfGrad: block.attentionHalfGradKernel,
};

let lastResult: EnableResult | null = null;
let fused: Record<string, tf.KernelFunc> = {};

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
  const blas = active.blas = loaded.blas;
  if (opts.threads !== undefined) blas.setNumThreads(opts.threads);
  active.native = null;
  const nativeNote = (opts.native ?? true) ? openNative(blas) : "";
  const native = active.native as Native | null;
  const overrides = native ? [...OVERRIDES, ...NATIVE_OVERRIDES] : OVERRIDES;
  for (const [name, kernel] of overrides) override(name, kernel as tf.KernelFunc);
  const withSgemm = native?.bindSgemm(blas.path) ?? false;
  fused = (native ? { ...FUSED, ...(withSgemm ? FUSED_WITH_SGEMM : {}) } : {}) as Record<
    string,
    tf.KernelFunc
  >;
  const gemm = native?.hasSgemm()
    ? chooseGemm(native, opts.onednn).note
    : "products on OpenBLAS (oneDNN needs the C kernels)";
  if (opts.leanGradients ?? true) installLeanGradients();
  lastResult = {
    ok: true,
    kernels: overrides.map(([name]) => name),
    native: nativeNote,
    gemm,
  };
  active.enabled = true;
  return lastResult;
}

/** Loads the C kernels into `active` (null when they cannot load) and says which, or why none. */
function openNative(blas: Blas): string {
  const n = loadNative();
  active.native = n.ok ? n.native : null;
  active.native?.setThreads(blas.numThreads() || 1);
  return n.ok ? `C kernels from ${n.native.path}` : n.reason;
}

/**
 * Our own kernels, by op (keys as lib/ops/registry.ts's KERNELS): empty before enableBlasKernels, or
 * without the C kernels. The caller registers them on the wasm backend under the ops' kernel names.
 */
export function fusedKernels(): Record<string, tf.KernelFunc> {
  return active.enabled ? { ...fused } : {};
}

/** Puts the stock kernels back (benchmarks and tests compare both in one process). */
export function disableBlasKernels(): void {
  for (const [name, config] of originals) {
    tf.unregisterKernel(name, BACKEND);
    tf.registerKernel(config);
  }
  originals.clear();
  fused = {};
  uninstallLeanGradients();
  lastResult = null;
  active.enabled = false;
}

/** Whether the overrides are active. */
export function blasKernelsEnabled(): boolean {
  return active.enabled;
}

/**
 * Threads for large matmuls (OpenBLAS) and for the C kernels that split their work (elementwise,
 * layer norm, Adam, attention). enableBlasKernels starts with OpenBLAS's own count.
 */
export function setKernelThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new Error(`lib/blas/kernels.ts: threads must be >= 1, got ${n}`);
  if (!active.blas) {
    throw new Error("lib/blas/kernels.ts: setKernelThreads before enableBlasKernels succeeded");
  }
  active.blas.setNumThreads(n);
  active.native?.setThreads(n);
}

/** The OpenBLAS in use (null before enableBlasKernels succeeds). */
export function activeBlas(): Blas | null {
  return active.blas;
}

function override(name: string, kernelFunc: tf.KernelFunc): void {
  const stock = tf.getKernel(name, BACKEND);
  if (!stock) throw new Error(`lib/blas/kernels.ts: wasm backend has no ${name} kernel to replace`);
  originals.set(name, stock);
  tf.unregisterKernel(name, BACKEND);
  tf.registerKernel({ kernelName: name, backendName: BACKEND, kernelFunc });
}
