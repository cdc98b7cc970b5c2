// The seam between the model and the backends' fused kernels, built the way TensorFlow.js builds its own
// ops: an op is a name; a backend registers its kernel under that name (lib/backend.ts does, from
// lib/blas); where the current backend has none, the op runs its composite of standard tfjs ops.
// An op takes its kernel route only when the backend has the kernels of both passes, so a composite's
// gradient is always tfjs's own, and a kernel's gradient is written once, in the op's file.

import * as tf from "@tensorflow/tfjs-core";

/** Every fused kernel an op may run, by op: the tfjs kernel names a backend registers. */
export const KERNELS = {
  dense: "SeemoreDense",
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
  attention: "SeemoreAttention",
  attentionGrad: "SeemoreAttentionGrad",
  attentionCached: "SeemoreAttentionCached",
  firstAttention: "SeemoreFirstAttention",
  firstAttentionGrad: "SeemoreFirstAttentionGrad",
  experts: "SeemoreExperts",
  expertsGrad: "SeemoreExpertsGrad",
  block: "SeemoreBlock",
  blockGrad: "SeemoreBlockGrad",
  attentionHalf: "SeemoreAttentionHalf",
  attentionHalfGrad: "SeemoreAttentionHalfGrad",
  moeCombine: "SeemoreMoeCombine",
  moeCombineGrad: "SeemoreMoeCombineGrad",
} as const;

export type KernelKey = keyof typeof KERNELS;

/** Whether the current backend has every one of these kernels. */
export function hasKernels(...keys: KernelKey[]): boolean {
  const backend = tf.getBackend();
  return keys.every((key) => tf.getKernel(KERNELS[key], backend) != null);
}

/** Runs a fused kernel on the current backend (callers check hasKernels first). */
export function runKernel(
  key: KernelKey,
  inputs: tf.NamedTensorMap,
  attrs: tf.NamedAttrMap = {},
): tf.Tensor | tf.Tensor[] {
  return tf.engine().runKernel(KERNELS[key], inputs, attrs) as tf.Tensor | tf.Tensor[];
}

/** Registers a backend's fused kernels (replacing any registered before); returns their names. */
export function registerKernels(
  backendName: string,
  kernels: Partial<Record<KernelKey, tf.KernelFunc>>,
): string[] {
  const names: string[] = [];
  for (const [key, kernelFunc] of Object.entries(kernels) as [KernelKey, tf.KernelFunc][]) {
    const kernelName = KERNELS[key];
    if (!kernelName) throw new Error(`lib/ops/registry.ts: no op uses a kernel "${key}"`);
    if (tf.getKernel(kernelName, backendName)) tf.unregisterKernel(kernelName, backendName);
    tf.registerKernel({ kernelName, backendName, kernelFunc });
    names.push(kernelName);
  }
  return names;
}

/** Removes every fused kernel of a backend (its ops then run their composites). */
export function unregisterKernels(backendName: string): void {
  for (const kernelName of Object.values(KERNELS)) {
    if (tf.getKernel(kernelName, backendName)) tf.unregisterKernel(kernelName, backendName);
  }
  extras.delete(backendName);
}

// ---------------------------------------------------------------------------------------------
// What a backend offers beyond tfjs kernels: work that is not a function of tensors to new tensors.

/** One Adam step for every parameter at once, written in place; false (nothing done) where it cannot. */
export type AdamInPlace = (
  params: tf.Tensor[],
  ms: tf.Tensor[],
  vs: tf.Tensor[],
  grads: tf.Tensor[],
  hyper: AdamKernelHyper,
) => boolean;

/** Adam's hyper-parameters as the kernels take them: bias corrections folded into the step size and √bc2. */
export interface AdamKernelHyper {
  beta1: number;
  beta2: number;
  stepSize: number;
  sqrtBc2: number;
  eps: number;
}

/** The decoders a step kernel runs: seemore's (GELU feed-forward) and seeMoE's (routed ReLU experts). */
export type DecoderKind = "dense" | "moe";

/**
 * A whole decoder step per new position (generation): one call runs every block, reading the decoder's
 * parameters in place. See lib/generate.ts.
 */
export interface DecoderStepKernel {
  /**
   * Names of the tensors the step takes, in order: per block its `block` tensors, then (seeMoE) each of
   * its experts' `expert` tensors; after the blocks the `final` ones. lib/generate.ts maps them to parameters.
   */
  layout: { block: readonly string[]; expert: readonly string[]; final: readonly string[] };
  /** Floats the key/value cache needs for these dims. */
  cacheSize(dims: DecoderStepDims): number;
  /** Binds a decoder's tensors (in layout's order; read in place, so they must live while it is used). */
  bind(weights: readonly tf.Tensor[], dims: DecoderStepDims): DecoderStep;
}

/** One position for every row: x (B, C) → logits (B, vocab), updating the cache. */
export type DecoderStep = (
  x: Float32Array,
  cache: Float32Array,
  logits: Float32Array,
  position: number,
) => void;

/** The shape of a decoder for its step kernel. */
export interface DecoderStepDims {
  batch: number;
  width: number;
  heads: number;
  layers: number;
  vocab: number;
  positions: number; // rows of the position table
  cached: number; // positions the cache holds
  scale: number;
  eps: number;
  preNorm: boolean;
  experts: number; // seeMoE: experts per layer (0 for seemore)
  topK: number; // seeMoE: experts per token (0 for seemore)
}

/**
 * A backward pass of f (a scalar) that hands each gradient over as soon as it is final: onGradient(i, g)
 * runs once no later step of the pass reads xs[i] (so it may update xs[i] in place) and owns g.
 * Variables the loss does not reach are not reported. Returns f's value.
 */
export type GradientsEach = (
  f: () => tf.Scalar,
  xs: tf.Variable[],
  onGradient: (i: number, g: tf.Tensor) => void,
) => tf.Scalar;

export interface BackendExtras {
  adamInPlace?: AdamInPlace;
  gradientsEach?: GradientsEach;
  /** Hands host memory that was freed back to the system (start-up's garbage would stay resident). */
  releaseHostMemory?: () => void;
  decoderSteps?: Partial<Record<DecoderKind, DecoderStepKernel>>;
  /**
   * Work stays on the device: reading a tensor back inside a step would drain a GPU's queue (and WebGPU
   * under Deno reads only asynchronously), so ops that would read (seeMoE's routing) take a device route.
   */
  deviceOnly?: boolean;
}

const extras = new Map<string, BackendExtras>();

export function registerExtras(backendName: string, offered: BackendExtras): void {
  extras.set(backendName, offered);
}

/** What the current backend offers beyond kernels (nothing for most). */
export function backendExtras(): BackendExtras {
  return extras.get(tf.getBackend()) ?? {};
}
