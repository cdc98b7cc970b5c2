// The whole-block kernels (SeemoreBlock, SeemoreBlockGrad): every tensor a region of the heap, placed
// at its BLOCK_TENSORS index (layout.ts), then one C call each way (c/block.c).

import * as tf from "@tensorflow/tfjs-core";
import {
  BLOCK_PARAMS,
  BLOCK_SAVED,
  BLOCK_TENSORS,
  blockBytes,
  type BlockDims,
  blockDtype,
  blockShape,
  HALF_PARAMS,
  HALF_SAVED,
} from "../layout.ts";
import { active, type KernelArgs, offsetOf, type TensorInfo, type WasmBackend, wasmOf } from "./common.ts";

/** attrs of SeemoreBlock and SeemoreBlockGrad. */
export interface BlockAttrs {
  heads: number;
  scale: number;
  causal: boolean;
  preNorm: boolean;
  /** The feed-forward's activation is ReLU instead of GELU (the attention half ignores it). */
  relu: boolean;
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
      `lib/blas/kernels/block.ts: block x must be float32 (B, T, C) with C divisible by ${attrs.heads}, got [${x.shape}]`,
    );
  }
  const [B, T, C] = x.shape;
  const { heads, preNorm, causal, relu, scale, keep, eps } = attrs;
  return { B, T, C, heads, preNorm, causal, relu, scale, keep: attrs.dropout ? keep : 1, eps };
}

/** Each named tensor's heap offset at its BLOCK_TENSORS place, after checking its dtype and element count. */
function blockOffsets(
  backend: WasmBackend,
  tensors: Record<string, TensorInfo>,
  bytes: number[],
): Uint32Array {
  const offsets = new Uint32Array(BLOCK_TENSORS.length);
  for (const [name, t] of Object.entries(tensors)) {
    const i = BLOCK_TENSORS.indexOf(name);
    const dtype = i < 0 ? null : blockDtype(name);
    if (
      dtype === null || t.dtype !== dtype ||
      tf.util.sizeFromShape(t.shape) * (dtype === "bool" ? 1 : 4) !== bytes[i]
    ) {
      throw new Error(
        `lib/blas/kernels/block.ts: block ${name} [${t.shape}] ${t.dtype} does not fit (${dtype} of ${
          bytes[i]
        } bytes expected)`,
      );
    }
    offsets[i] = offsetOf(backend, t);
  }
  return offsets;
}

/** inputs x (B, T, C) and the parameters (layout.ts BLOCK_PARAMS) → [out, then layout.ts BLOCK_SAVED]. */
export function blockKernel(args: KernelArgs): TensorInfo[] {
  return blockCall(args, ["out", ...BLOCK_SAVED], false, (heap, offsets, dims, attrs) => {
    const seeds = attrs.dropout ? { attention: attrs.seedAttention, projection: attrs.seedProjection } : null;
    active.native!.block(heap, offsets, dims, seeds);
  });
}

/** inputs dout and what the gradient reads of the forward pass → [dx, then each parameter's gradient]. */
export function blockGradKernel(args: KernelArgs): TensorInfo[] {
  const outputs = ["dx", ...BLOCK_PARAMS.map((p) => `d${p}`)];
  const inputs = { ...args.inputs };
  BLOCK_SAVED.forEach((name, i) => { // the forward's saved outputs come back as saved0, saved1, …
    inputs[name] = inputs[`saved${i}`];
    delete inputs[`saved${i}`];
  });
  return blockCall({ ...args, inputs }, outputs, true, (heap, offsets, dims, attrs) => {
    active.native!.blockGrad(heap, offsets, dims, attrs.dropout);
  });
}

/**
 * The block's first half alone (SeemoreAttentionHalf): inputs x and layout.ts's HALF_PARAMS, attrs as the
 * block's → [x1, then HALF_SAVED].
 */
export function attentionHalfKernel(args: KernelArgs): TensorInfo[] {
  return blockCall(args, ["x1", ...HALF_SAVED], false, (heap, offsets, dims, attrs) => {
    const seeds = attrs.dropout ? { attention: attrs.seedAttention, projection: attrs.seedProjection } : null;
    active.native!.attentionHalf(heap, offsets, dims, seeds);
  });
}

/** Its gradient: inputs dout (x1's), x, HALF_PARAMS and saved0… (HALF_SAVED) → [dx, then HALF_PARAMS' gradients]. */
export function attentionHalfGradKernel(args: KernelArgs): TensorInfo[] {
  const outputs = ["dx", ...HALF_PARAMS.map((p) => `d${p}`)];
  const inputs = { ...args.inputs };
  HALF_SAVED.forEach((name, i) => {
    inputs[name] = inputs[`saved${i}`];
    delete inputs[`saved${i}`];
  });
  return blockCall({ ...args, inputs }, outputs, true, (heap, offsets, dims, attrs) => {
    active.native!.attentionHalfGrad(heap, offsets, dims, attrs.dropout);
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
    backend.makeOutput(blockShape(name, dims, attrs.dropout), blockDtype(name))
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
