// lib/blas's public face: what code outside lib/blas imports (the backend, the fused ops, generation's
// decoder step, benchmarks). lib/blas imports nothing from outside itself but tfjs.
//
// Inside: kernels.ts puts the tfjs kernels in place (and hands out our fused ones, by op), whose functions live in kernels/<family>.ts; they call
// OpenBLAS (ffi.ts), oneDNN (onednn.ts) and the C kernels: c/<family>.c, compiled and opened by
// native.ts, each family's FFI symbols and checked wrappers in native/<family>.ts. layout.ts declares the
// order of the block's tensors and of the decoder steps' weights, for both sides.

export {
  activeBlas,
  activeNative,
  adamInPlace,
  blasKernelsEnabled,
  disableBlasKernels,
  enableBlasKernels,
  type EnableOptions,
  type EnableResult,
  fusedKernels,
  setKernelThreads,
} from "./kernels.ts";
export { type BoundDecoderStep, decoderStepKernel } from "./kernels/decoder.ts";
export { leanGradientsEach, leanGradientsInstalled } from "./lean_gradients.ts";
export type { BlockAttrs } from "./kernels/block.ts";
export {
  BLOCK_PARAMS,
  BLOCK_SAVED,
  BLOCK_TENSORS,
  type BlockDims,
  blockShape,
  decoderCacheSize,
  type DecoderKind,
  type DecoderStepDims,
  decoderStepTensors,
  STEP_LAYOUTS,
  type StepPlace,
} from "./layout.ts";
export { loadNative, type Native, type NativeResult } from "./native.ts";
export { type Blas, loadBlas } from "./ffi.ts";
export { chooseGemm, ONEDNN_HINT } from "./onednn.ts";
