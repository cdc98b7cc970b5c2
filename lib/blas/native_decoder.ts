// Generation's fast path on the CPU: each new position goes through the whole decoder in ONE C call
// (kernels.c, seemore_decoder_step) instead of ~90 tfjs kernels, with the key/value cache in a plain
// Float32Array. lib/generate.ts uses it when the C kernels are loaded (wasm backend with OpenBLAS) and
// the decoder is seemore's (GELU feed-forward blocks); otherwise generation runs through tfjs with its
// own KV cache. The numbers are the same (tests compare both with the full recompute).

import { type Block, FeedForward } from "../model/block.ts";
import type { DecoderLanguageModel } from "../model/decoder.ts";
import { type LayerNorm, type Linear, readData } from "../model/ops.ts";
import { activeNative, inPlaceUpdateCount } from "./kernels.ts";
import { decoderCacheSize, type DecoderStepDims, decoderWeightCount, type Native } from "./native.ts";

const LN_EPS = 1e-5; // as lib/blas/fused.ts's layerNorm

export class NativeDecoder {
  private readonly cache: Float32Array;
  private readonly logits: Float32Array;

  private constructor(
    private readonly native: Native,
    private readonly decoder: DecoderLanguageModel,
    private readonly weights: Float32Array,
    private readonly tokenTable: Float32Array, // (vocab, C)
    readonly dims: DecoderStepDims,
  ) {
    this.cache = new Float32Array(decoderCacheSize(dims));
    this.logits = new Float32Array(dims.batch * dims.vocab);
  }

  /**
   * A stepper for `batch` rows with an empty cache for `positions` positions (default: the whole
   * position table), or null when this decoder or backend has no native step (no C kernels, seeMoE
   * blocks, or a feed-forward other than seemore's).
   */
  static create(decoder: DecoderLanguageModel, batch: number, positions?: number): NativeDecoder | null {
    const native = activeNative();
    const blocks = decoder.blocks as Block[];
    if (!native || blocks.length === 0 || !blocks.every((b) => b.ffn instanceof FeedForward)) return null;
    const { nEmbd: width, vocabSize: vocab, blockPositions } = decoder.opts;
    const { attn, options } = blocks[0];
    const preNorm = options.preNorm ?? false;
    if (blocks.some((b) => (b.options.preNorm ?? false) !== preNorm || b.attn.scale !== attn.scale)) {
      return null;
    }
    const dims: DecoderStepDims = {
      batch,
      width,
      heads: attn.numHeads,
      layers: blocks.length,
      vocab,
      positions: blockPositions,
      cached: Math.min(positions ?? blockPositions, blockPositions),
      scale: attn.scale,
      eps: LN_EPS,
      preNorm,
    };
    const { weights, tokenTable } = packedWeights(decoder, dims);
    return new NativeDecoder(native, decoder, weights, tokenTable, dims);
  }

  /** Token embeddings of one id per row → (B, C). */
  embed(ids: number[]): Float32Array {
    const C = this.dims.width;
    const x = new Float32Array(ids.length * C);
    ids.forEach((id, b) => x.set(this.tokenTable.subarray(id * C, (id + 1) * C), b * C));
    return x;
  }

  /** Inputs x (B, C) at `position` (position embedding not yet added) → logits (B, vocab), a fresh copy. */
  step(x: Float32Array, position: number): Float32Array {
    this.decoder.checkPositions(position, 1);
    this.native.decoderStep(this.weights, x, this.cache, this.logits, this.dims, position);
    return this.logits.slice();
  }
}

/**
 * The packed weights of each decoder, kept while its variables hold the same data: an assign (a
 * checkpoint load, the per-parameter optimizer step) gives a variable a new dataId, and the in-place
 * Adam step is counted (inPlaceUpdateCount), so the two tell whether the copy is current. Saves copying
 * the weights for every generate() call of an evaluation.
 */
interface Packed {
  ids: object[];
  updates: number;
  weights: Float32Array;
  tokenTable: Float32Array;
}
const packCache = new WeakMap<DecoderLanguageModel, Packed>();

function packedWeights(decoder: DecoderLanguageModel, dims: DecoderStepDims): Packed {
  const ids = decoder.variables().map((v) => v.dataId);
  const updates = inPlaceUpdateCount();
  const hit = packCache.get(decoder);
  const current = hit && hit.updates === updates && hit.weights.length === decoderWeightCount(dims) &&
    hit.ids.every((id, i) => id === ids[i]);
  if (current) return hit;
  const weights = packWeights(decoder, dims);
  const entry = { ids, updates, weights, tokenTable: readData(decoder.tokenEmbedding.v) };
  packCache.set(decoder, entry);
  return entry;
}

/** The decoder's weights in seemore_decoder_step's order (see kernels.c). */
function packWeights(decoder: DecoderLanguageModel, dims: DecoderStepDims): Float32Array {
  const out = new Float32Array(decoderWeightCount(dims));
  let at = 0;
  const put = (t: { dataSync(): ArrayLike<number> } | null) => {
    if (!t) throw new Error("lib/blas/native_decoder.ts: a decoder weight is missing (bias-free Linear?)");
    const data = t.dataSync();
    out.set(data, at);
    at += data.length;
  };
  const putNorm = (ln: LayerNorm) => [ln.g, ln.b].forEach(put);
  const putLinear = (l: Linear) => [l.w, l.b].forEach(put);
  for (const block of decoder.blocks as Block[]) {
    const ffn = block.ffn as FeedForward;
    putNorm(block.ln1);
    put(block.attn.qkv);
    putLinear(block.attn.proj);
    putNorm(block.ln2);
    putLinear(ffn.fc1);
    putLinear(ffn.fc2);
  }
  putNorm(decoder.lnF);
  putLinear(decoder.lmHead);
  put(decoder.positionEmbedding.v);
  if (at !== out.length) throw new Error(`lib/blas/native_decoder.ts: packed ${at} of ${out.length} weights`);
  return out;
}
