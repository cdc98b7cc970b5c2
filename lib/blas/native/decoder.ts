// Generation's decoder steps (c/decoder.c): one new position through the whole decoder in one call,
// seemore's or seeMoE's, the weights read in place on the wasm heap in the order of layout.ts's step
// tables (decoderStepTensors).

import { decoderCacheSize, type DecoderKind, type DecoderStepDims, decoderStepTensors } from "../layout.ts";
import { B, checksFor, F, I, type Symbols } from "./common.ts";

const check = checksFor("lib/blas/native/decoder.ts");

export const DECODER_SYMBOLS = {
  // heap, offsets (u32, one per tensor), x, cache, logits, B, C, H, layers, V, P (position table rows),
  // t, max_t (cached positions), scale, eps, pre_norm -> 0 on success
  seemore_decoder_step: { parameters: [B, B, B, B, B, I, I, I, I, I, I, I, I, F, F, I], result: I },
  // the same with E (experts per layer) and k (experts per row) after layers
  seemore_moe_decoder_step: { parameters: [B, B, B, B, B, I, I, I, I, I, I, I, I, I, I, F, F, I], result: I },
} as const;

export interface DecoderKernels {
  /**
   * One new position through the whole decoder of `kind` (generation): x (B, C) without its position
   * embedding → logits (B, V); writes the position's keys and values into `cache` (decoderCacheSize
   * floats). Tensor i of decoderStepTensors(kind, dims) lies at byte offsets[i] of the wasm `heap`.
   */
  decoderStep(
    kind: DecoderKind,
    heap: Uint8Array,
    offsets: Uint32Array,
    io: { x: Float32Array; cache: Float32Array; logits: Float32Array },
    dims: DecoderStepDims,
    position: number,
  ): void;
}

export function decoderKernels(s: Symbols<typeof DECODER_SYMBOLS>): DecoderKernels {
  return {
    decoderStep(kind, heap, offsets, { x, cache, logits }, dims, position) {
      checkDecoderStep(kind, dims, position);
      checkWeights(kind, heap, offsets, dims);
      const { batch, width, heads, layers, vocab, positions, cached, scale, eps } = dims;
      check.sameLength("decoderStep", batch * width, { x });
      check.sameLength("decoderStep", decoderCacheSize(dims), { cache });
      check.sameLength("decoderStep", batch * vocab, { logits });
      const preNorm = dims.preNorm ? 1 : 0;
      const rc = kind === "moe"
        ? s.seemore_moe_decoder_step(
          heap,
          offsets,
          x,
          cache,
          logits,
          batch,
          width,
          heads,
          layers,
          dims.experts,
          dims.topK,
          vocab,
          positions,
          position,
          cached,
          scale,
          eps,
          preNorm,
        )
        : s.seemore_decoder_step(
          heap,
          offsets,
          x,
          cache,
          logits,
          batch,
          width,
          heads,
          layers,
          vocab,
          positions,
          position,
          cached,
          scale,
          eps,
          preNorm,
        );
      check.ok(`decoderStep (${kind})`, rc);
    },
  };
}

/** Offsets whose regions were checked, with the dims and kind they were checked for (the heap only grows). */
const checked = new WeakMap<Uint32Array, { kind: DecoderKind; dims: DecoderStepDims }>();

/** Each tensor's region lies inside the heap (checked once per offsets array: a step runs per token). */
function checkWeights(
  kind: DecoderKind,
  heap: Uint8Array,
  offsets: Uint32Array,
  dims: DecoderStepDims,
): void {
  const seen = checked.get(offsets);
  if (seen?.kind === kind && seen.dims === dims) return;
  const places = decoderStepTensors(kind, dims);
  if (offsets.length !== places.length) {
    check.fail(`decoderStep: ${places.length} tensors for this ${kind} decoder, got ${offsets.length}`);
  }
  places.forEach((p, i) => {
    const floats = p.shape.reduce((a, b) => a * b, 1);
    check.region(`decoderStep ${p.name}`, heap.byteLength, offsets[i], 4 * floats);
  });
  checked.set(offsets, { kind, dims });
}

function checkDecoderStep(kind: DecoderKind, dims: DecoderStepDims, position: number): void {
  const { batch, width, heads, layers, vocab, positions, cached, experts, topK } = dims;
  if (![batch, width, heads, layers, vocab, positions, cached].every((v) => Number.isInteger(v) && v > 0)) {
    check.fail(`decoderStep: bad sizes ${JSON.stringify(dims)}`);
  }
  if (width % heads !== 0) check.fail(`decoderStep: ${width} % ${heads} heads`);
  if (
    kind === "moe" && !(Number.isInteger(topK) && Number.isInteger(experts) && topK >= 1 && topK <= experts)
  ) {
    check.fail(`decoderStep: top-${topK} of ${experts} experts`);
  }
  if (!Number.isInteger(position) || position < 0 || position >= Math.min(positions, cached)) {
    check.fail(`decoderStep: position ${position} outside [0, ${Math.min(positions, cached)})`);
  }
}
