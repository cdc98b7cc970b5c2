// Generation's decoder step (c/decoder.c): one new position through the whole decoder in one call, the
// weights packed in the order of layout.ts's DECODER_LAYER_TENSORS and DECODER_FINAL_TENSORS.

import { decoderCacheSize, type DecoderStepDims, decoderWeightCount } from "../layout.ts";
import { B, checksFor, F, I, type Symbols } from "./common.ts";

const check = checksFor("lib/blas/native/decoder.ts");

export const DECODER_SYMBOLS = {
  // weights, x, cache, logits, B, C, H, layers, V, P (position table rows), t, max_t (cached positions),
  // scale, eps, pre_norm -> 0 on success
  seemore_decoder_step: { parameters: [B, B, B, B, I, I, I, I, I, I, I, I, F, F, I], result: I },
} as const;

export interface DecoderKernels {
  /**
   * One new position through the whole decoder (generation): x (B, C) without its position embedding
   * → logits (B, V); writes the position's keys and values into `cache` (decoderCacheSize floats).
   * `weights` is packed as layout.ts's decoderWeightLayout describes.
   */
  decoderStep(
    weights: Float32Array,
    x: Float32Array,
    cache: Float32Array,
    logits: Float32Array,
    dims: DecoderStepDims,
    position: number,
  ): void;
}

export function decoderKernels(s: Symbols<typeof DECODER_SYMBOLS>): DecoderKernels {
  return {
    decoderStep(weights, x, cache, logits, dims, position) {
      checkDecoderStep(dims, position);
      const { batch, width, heads, layers, vocab, positions, cached } = dims;
      check.sameLength("decoderStep", decoderWeightCount(dims), { weights });
      check.sameLength("decoderStep", batch * width, { x });
      check.sameLength("decoderStep", decoderCacheSize(dims), { cache });
      check.sameLength("decoderStep", batch * vocab, { logits });
      const rc = s.seemore_decoder_step(
        weights,
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
        dims.scale,
        dims.eps,
        dims.preNorm ? 1 : 0,
      );
      check.ok("seemore_decoder_step", rc);
    },
  };
}

function checkDecoderStep(dims: DecoderStepDims, position: number): void {
  const { batch, width, heads, layers, vocab, positions, cached } = dims;
  if (![batch, width, heads, layers, vocab, positions, cached].every((v) => Number.isInteger(v) && v > 0)) {
    check.fail(`decoderStep: bad sizes ${JSON.stringify(dims)}`);
  }
  if (width % heads !== 0) check.fail(`decoderStep: ${width} % ${heads} heads`);
  if (!Number.isInteger(position) || position < 0 || position >= Math.min(positions, cached)) {
    check.fail(`decoderStep: position ${position} outside [0, ${Math.min(positions, cached)})`);
  }
}
