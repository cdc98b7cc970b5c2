// A whole transformer block (c/block.c): one call forward and one backward, its tensors regions of the
// wasm heap in the order of layout.ts's BLOCK_TENSORS.

import { BLOCK_TENSORS, blockBytes, type BlockDims, HALF_TENSORS, usedInBackward } from "../layout.ts";
import { aleaStates, DRAW_CHUNK } from "./alea.ts";
import { B, checksFor, I, type Shared, type Symbols } from "./common.ts";

const check = checksFor("lib/blas/native/block.ts");

export const BLOCK_SYMBOLS = {
  // heap, offsets (u32, BLOCK_TENSORS order), attention noise states (or null), projection noise
  // states (or null), draws per chunk, dims (block_dims: 7 i32 then 3 f32) -> 0 on success
  seemore_block: { parameters: [B, B, B, B, I, B], result: I },
  seemore_block_grad: { parameters: [B, B, I, B], result: I }, // heap, offsets, has dropout, dims -> 0 on success
  // the block's first half alone (layout.ts HALF_TENSORS), the same arguments as seemore_block / _grad
  seemore_attention_half: { parameters: [B, B, B, B, I, B], result: I },
  seemore_attention_half_grad: { parameters: [B, B, I, B], result: I },
} as const;

export interface BlockKernels {
  /**
   * One transformer block with seemore's GELU feed-forward, forward (c/block.c, seemore_block): every
   * tensor is a region of the wasm heap at offsets[i], in the order of BLOCK_TENSORS; the forward pass
   * reads x and the parameters and writes out and the saved tensors. With seeds, dropout on the
   * attention weights and on the projection's output, each drawn as tf.dropout draws it for that seed.
   */
  block(
    heap: Uint8Array,
    offsets: Uint32Array,
    dims: BlockDims,
    seeds: { attention: number; projection: number } | null,
  ): void;
  /** The block's backward pass: reads dout and what the forward pass saved, writes dx and the gradients. */
  blockGrad(heap: Uint8Array, offsets: Uint32Array, dims: BlockDims, dropout: boolean): void;
  /**
   * The block's first half alone (c/block.c, seemore_attention_half): x1 = x + dropout(attention(LN1(x)
   * Wqkv) Wp + bp) in x1's place, keeping LN1's statistics and the masks; the tensors are the block's
   * (offsets as block() takes them), and only layout.ts's HALF_TENSORS.forward are touched.
   */
  attentionHalf(
    heap: Uint8Array,
    offsets: Uint32Array,
    dims: BlockDims,
    seeds: { attention: number; projection: number } | null,
  ): void;
  /** Its backward pass: dout is x1's gradient; computes a, qkv and merged again (HALF_TENSORS.backward). */
  attentionHalfGrad(heap: Uint8Array, offsets: Uint32Array, dims: BlockDims, dropout: boolean): void;
}

export function blockKernels(s: Symbols<typeof BLOCK_SYMBOLS>, shared: Shared): BlockKernels {
  return {
    block(heap, offsets, dims, seeds) {
      check.needSgemm(shared, "block");
      checkBlock("block", heap.byteLength, offsets, dims, seeds !== null, false);
      const [att, proj] = noiseStates(dims, seeds);
      check.ok("seemore_block", s.seemore_block(heap, offsets, att, proj, DRAW_CHUNK, blockDimsStruct(dims)));
    },
    blockGrad(heap, offsets, dims, dropout) {
      check.needSgemm(shared, "blockGrad");
      checkBlock("blockGrad", heap.byteLength, offsets, dims, dropout, true);
      check.ok(
        "seemore_block_grad",
        s.seemore_block_grad(heap, offsets, dropout ? 1 : 0, blockDimsStruct(dims)),
      );
    },
    attentionHalf(heap, offsets, dims, seeds) {
      check.needSgemm(shared, "attentionHalf");
      checkBlock(
        "attentionHalf",
        heap.byteLength,
        offsets,
        dims,
        seeds !== null,
        false,
        HALF_TENSORS.forward,
      );
      const [att, proj] = noiseStates(dims, seeds);
      const rc = s.seemore_attention_half(heap, offsets, att, proj, DRAW_CHUNK, blockDimsStruct(dims));
      check.ok("seemore_attention_half", rc);
    },
    attentionHalfGrad(heap, offsets, dims, dropout) {
      check.needSgemm(shared, "attentionHalfGrad");
      checkBlock("attentionHalfGrad", heap.byteLength, offsets, dims, dropout, true, HALF_TENSORS.backward);
      const rc = s.seemore_attention_half_grad(heap, offsets, dropout ? 1 : 0, blockDimsStruct(dims));
      check.ok("seemore_attention_half_grad", rc);
    },
  };
}

/** The dropout noise of the attention weights (B, H, T, T) and of the projection's output (B, T, C). */
function noiseStates(
  d: BlockDims,
  seeds: { attention: number; projection: number } | null,
): [Float64Array | null, Float64Array | null] {
  if (!seeds) return [null, null];
  return [
    aleaStates(seeds.attention, d.B * d.heads * d.T * d.T),
    aleaStates(seeds.projection, d.B * d.T * d.C),
  ];
}

/**
 * The regions a block call touches lie inside the heap (forward: up to the scratch; backward: what it
 * uses; or only the named tensors, for the attention half).
 */
function checkBlock(
  what: string,
  heapBytes: number,
  offsets: Uint32Array,
  d: BlockDims,
  dropout: boolean,
  backward: boolean,
  only?: readonly string[],
): void {
  if (offsets.length !== BLOCK_TENSORS.length) {
    check.fail(`${what} needs ${BLOCK_TENSORS.length} offsets, got ${offsets.length}`);
  }
  if (d.C % d.heads !== 0 || [d.B, d.T, d.C, d.heads].some((n) => !Number.isInteger(n) || n < 1)) {
    check.fail(`${what}: bad sizes ${JSON.stringify(d)}`);
  }
  if (dropout) check.keep(d.keep);
  const sizes = blockBytes(d, dropout, backward);
  const lastForward = BLOCK_TENSORS.indexOf("scratch");
  BLOCK_TENSORS.forEach((name, i) => {
    const used = only ? only.includes(name) : backward ? usedInBackward(name) : i <= lastForward;
    if (used && sizes[i] > 0) check.region(`${what} ${name}`, heapBytes, offsets[i], sizes[i]);
  });
}

/** block_dims as c/block.c lays it out: B, T, C, H, pre_norm, causal, relu (int32), then scale, keep, eps (float32). */
function blockDimsStruct(d: BlockDims): Uint8Array {
  const buf = new ArrayBuffer(40);
  new Int32Array(buf, 0, 7).set([
    d.B,
    d.T,
    d.C,
    d.heads,
    d.preNorm ? 1 : 0,
    d.causal ? 1 : 0,
    d.relu ? 1 : 0,
  ]);
  new Float32Array(buf, 28, 3).set([d.scale, d.keep, d.eps]);
  return new Uint8Array(buf);
}
