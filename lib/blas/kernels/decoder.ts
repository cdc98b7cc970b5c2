// Generation's decoder steps on the wasm backend: a decoder's tensors are bound once (their heap offsets,
// each checked against layout.ts's step tables), then each position is one C call (native/decoder.ts)
// that reads the weights in place: nothing is copied, and weights updated in place are seen at once.

import * as tf from "@tensorflow/tfjs-core";
import {
  decoderCacheSize,
  type DecoderKind,
  type DecoderStepDims,
  decoderStepTensors,
  STEP_LAYOUTS,
  type StepTensor,
} from "../layout.ts";
import { activeNative, offsetOf, wasmOf } from "./common.ts";

/** One position for every row: x (B, C) → logits (B, vocab), updating the key/value cache. */
export type BoundDecoderStep = (
  x: Float32Array,
  cache: Float32Array,
  logits: Float32Array,
  position: number,
) => void;

/** The decoder step of one kind, as lib/backend.ts offers it (the registry's DecoderStepKernel). */
export function decoderStepKernel(kind: DecoderKind) {
  const names = (tensors: readonly StepTensor[]) => tensors.map((t) => t.name);
  const { block, expert, final } = STEP_LAYOUTS[kind];
  return {
    layout: { block: names(block), expert: names(expert), final: names(final) },
    cacheSize: decoderCacheSize,
    /** The decoder's tensors, in decoderStepTensors(kind, dims)'s order, bound for its steps. */
    bind(weights: readonly tf.Tensor[], dims: DecoderStepDims): BoundDecoderStep {
      const backend = wasmOf(tf.backend());
      const places = decoderStepTensors(kind, dims);
      if (weights.length !== places.length) {
        throw new Error(
          `lib/blas/kernels/decoder.ts: the ${kind} decoder step takes ${places.length} tensors, got ${weights.length}`,
        );
      }
      weights.forEach((t, i) => {
        const p = places[i];
        if (t.dtype !== "float32" || !tf.util.arraysEqual(t.shape, p.shape)) {
          const where = p.layer === null
            ? ""
            : ` of layer ${p.layer}${p.expert === null ? "" : `, expert ${p.expert}`}`;
          throw new Error(
            `lib/blas/kernels/decoder.ts: ${p.name}${where} must be float32 [${p.shape}], got ${t.dtype} [${t.shape}]`,
          );
        }
      });
      const offsets = Uint32Array.from(weights, (t) => offsetOf(backend, t));
      return (x, cache, logits, position) => {
        const native = activeNative();
        if (!native) throw new Error("lib/blas/kernels/decoder.ts: the C kernels are not active");
        native.decoderStep(kind, backend.wasm.HEAPU8, offsets, { x, cache, logits }, dims, position);
      };
    },
  };
}
