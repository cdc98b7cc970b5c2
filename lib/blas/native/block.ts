// A whole transformer block (c/block.c): one call forward and one backward, its tensors regions of the
// wasm heap in the order of layout.ts's BLOCK_TENSORS.

import { BLOCK_TENSORS, blockBytes, type BlockDims, usedInBackward } from "../layout.ts";
import { aleaStates, DRAW_CHUNK } from "./alea.ts";
import { B, checksFor, I, type Shared, type Symbols } from "./common.ts";

const check = checksFor("lib/blas/native/block.ts");

export const BLOCK_SYMBOLS = {
  // heap, offsets (u32, BLOCK_TENSORS order), attention noise states (or null), projection noise
  // states (or null), draws per chunk, dims (block_dims: 6 i32 then 3 f32) -> 0 on success
  seemore_block: { parameters: [B, B, B, B, I, B], result: I },
  seemore_block_grad: { parameters: [B, B, I, B], result: I }, // heap, offsets, has dropout, dims -> 0 on success
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
}

export function blockKernels(s: Symbols<typeof BLOCK_SYMBOLS>, shared: Shared): BlockKernels {
  return {
    block(heap, offsets, dims, seeds) {
      check.needSgemm(shared, "block");
      checkBlock("block", heap.byteLength, offsets, dims, seeds !== null, false);
      const { B, T, C, heads } = dims;
      const att = seeds ? aleaStates(seeds.attention, B * heads * T * T) : null;
      const proj = seeds ? aleaStates(seeds.projection, B * T * C) : null;
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
  };
}

/** The regions a block call touches lie inside the heap (forward: up to the scratch; backward: what it uses). */
function checkBlock(
  what: string,
  heapBytes: number,
  offsets: Uint32Array,
  d: BlockDims,
  dropout: boolean,
  backward: boolean,
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
    const used = backward ? usedInBackward(name) : i <= lastForward;
    if (used && sizes[i] > 0) check.region(`${what} ${name}`, heapBytes, offsets[i], sizes[i]);
  });
}

/** block_dims as c/block.c lays it out: B, T, C, H, pre_norm, causal (int32), then scale, keep, eps (float32). */
function blockDimsStruct(d: BlockDims): Uint8Array {
  const buf = new ArrayBuffer(36);
  new Int32Array(buf, 0, 6).set([d.B, d.T, d.C, d.heads, d.preNorm ? 1 : 0, d.causal ? 1 : 0]);
  new Float32Array(buf, 24, 3).set([d.scale, d.keep, d.eps]);
  return new Uint8Array(buf);
}
