// seeMoE's experts and their routing (c/experts.c): all experts of a layer in one call each way, and
// the dispatch to and combine from them.

import { aleaState } from "./alea.ts";
import { B, checksFor, F, I, type Shared, type Symbols, VOID } from "./common.ts";

const check = checksFor("lib/blas/native/experts.ts");

export const EXPERTS_SYMBOLS = {
  // heap, offsets (u32: w1, b1, w2, b2 per expert), counts (i32), E, x, h, y, mask (u8, or null),
  // noise states (f64[4] per expert, or null), keep, C, F -> 0 on success
  seemore_experts: { parameters: [B, B, B, I, B, B, B, B, B, F, I, I], result: I },
  // heap, offsets (w1, b1, w2, b2), gradient offsets (dw1, db1, dw2, db2), counts, E, x, h, dy,
  // mask (or null), keep, dx, C, F -> 0 on success
  seemore_experts_grad: { parameters: [B, B, B, B, I, B, B, B, B, F, B, I, I], result: I },
  seemore_moe_dispatch: { parameters: [B, B, B, I, I, I], result: VOID }, // x, order (i32), inputs, N, M, C
  seemore_moe_dispatch_grad: { parameters: [B, B, B, I, I, I], result: VOID }, // dinputs, order, dx, N, M, C
  // merged, gates, rowOfSlot (i32), slotExpert (i32), out, N, k, C, E
  seemore_moe_combine: { parameters: [B, B, B, B, B, I, I, I, I], result: VOID },
  // dout, merged, gates, rowOfSlot, slotExpert, dmerged, dgates, N, k, M, C, E
  seemore_moe_combine_grad: { parameters: [B, B, B, B, B, B, B, I, I, I, I, I], result: VOID },
} as const;

/** Sizes of seeMoE's routing: N tokens of width C, k choices each, M expert rows, E experts. */
export interface MoEDims {
  N: number;
  M: number;
  C: number;
  k: number;
  E: number;
}

/** Combine's inputs: merged (M, C), gates (N, E), and each slot's expert row and expert (k·N). */
export interface MoECombineInputs {
  merged: Float32Array;
  gates: Float32Array;
  rowOfSlot: Int32Array;
  slotExpert: Int32Array;
}

export interface ExpertsKernels {
  /**
   * seeMoE's experts (Linear(C, F) → ReLU → Linear(F, C) → dropout), each on its group of rows of x
   * (counts[e] rows, groups in order), parameters on the wasm `heap` at `offsets` (w1, b1, w2, b2 per
   * expert): writes h = ReLU(x w1 + b1) and y; with seeds (one per expert), y is dropped out with each
   * expert's own noise and mask written. OpenBLAS must run on one thread (experts spread over ours).
   */
  experts(
    heap: Uint8Array,
    offsets: Uint32Array,
    counts: Int32Array,
    io: { x: Float32Array; h: Float32Array; y: Float32Array; mask: Uint8Array | null },
    dropout: { seeds: number[]; keep: number } | null,
    dims: { C: number; F: number },
  ): void;
  /** The gradient of experts(): dx, and dw1, db1, dw2, db2 per expert at gradOffsets on the heap. */
  expertsGrad(
    heap: Uint8Array,
    offsets: Uint32Array,
    gradOffsets: Uint32Array,
    counts: Int32Array,
    io: { x: Float32Array; h: Float32Array; dy: Float32Array; mask: Uint8Array | null; dx: Float32Array },
    keep: number,
    dims: { C: number; F: number },
  ): void;
  /** seeMoE's dispatch: inputs[r] = x[order[r] mod N], x (N, C) → inputs (M, C). */
  moeDispatch(x: Float32Array, order: Int32Array, inputs: Float32Array, dims: MoEDims): void;
  /** Its gradient: dx[n] = the sum of the rows of dinputs that came from token n. */
  moeDispatchGrad(dinputs: Float32Array, order: Int32Array, dx: Float32Array, dims: MoEDims): void;
  /** seeMoE's combine: out[n] = Σ_j gates[n, e] · merged[row] over token n's kept slots (moe.ts). */
  moeCombine(io: MoECombineInputs, out: Float32Array, dims: MoEDims): void;
  /** Its gradient: dmerged (M, C) and dgates (N, E) from dout (N, C). */
  moeCombineGrad(
    io: MoECombineInputs,
    dout: Float32Array,
    grads: { dmerged: Float32Array; dgates: Float32Array },
    dims: MoEDims,
  ): void;
}

export function expertsKernels(s: Symbols<typeof EXPERTS_SYMBOLS>, shared: Shared): ExpertsKernels {
  return {
    experts(heap, offsets, counts, io, dropout, { C, F }) {
      check.needSgemm(shared, "experts");
      const rows = checkExperts("experts", heap.byteLength, offsets, counts, [C * F, F, F * C, C]);
      check.sameLength("experts", rows * C, { x: io.x, y: io.y });
      check.sameLength("experts", rows * F, { h: io.h });
      if (dropout) {
        check.keep(dropout.keep);
        if (!io.mask) check.fail("experts with dropout needs a mask");
        check.sameLength("experts", rows * C, { mask: io.mask! });
        if (dropout.seeds.length !== counts.length) {
          check.fail(`experts needs one seed per expert, got ${dropout.seeds.length}`);
        }
      }
      const states = dropout ? new Float64Array(4 * counts.length) : null;
      dropout?.seeds.forEach((seed, e) => states!.set(aleaState(seed), 4 * e));
      const { x, h, y } = io, mask = dropout ? io.mask : null, keep = dropout?.keep ?? 1;
      const rc = s.seemore_experts(heap, offsets, counts, counts.length, x, h, y, mask, states, keep, C, F);
      check.ok("seemore_experts", rc);
    },
    expertsGrad(heap, offsets, gradOffsets, counts, io, keep, { C, F }) {
      check.needSgemm(shared, "expertsGrad");
      const sizes = [C * F, F, F * C, C];
      const rows = checkExperts("expertsGrad", heap.byteLength, offsets, counts, sizes);
      checkExperts("expertsGrad (gradients)", heap.byteLength, gradOffsets, counts, sizes);
      check.sameLength("expertsGrad", rows * C, { x: io.x, dy: io.dy, dx: io.dx });
      check.sameLength("expertsGrad", rows * F, { h: io.h });
      if (io.mask) {
        check.keep(keep);
        check.sameLength("expertsGrad", rows * C, { mask: io.mask });
      }
      const { x, h, dy, mask, dx } = io, E = counts.length;
      const rc = s.seemore_experts_grad(
        heap,
        offsets,
        gradOffsets,
        counts,
        E,
        x,
        h,
        dy,
        mask,
        keep,
        dx,
        C,
        F,
      );
      check.ok("seemore_experts_grad", rc);
    },
    moeDispatch(x, order, inputs, dims) {
      checkDispatch(order, dims, x, inputs);
      s.seemore_moe_dispatch(x, order, inputs, dims.N, dims.M, dims.C);
    },
    moeDispatchGrad(dinputs, order, dx, dims) {
      checkDispatch(order, dims, dx, dinputs);
      s.seemore_moe_dispatch_grad(dinputs, order, dx, dims.N, dims.M, dims.C);
    },
    moeCombine(io, out, dims) {
      checkCombine(io, dims, { out });
      const { N, C, k, E } = dims;
      s.seemore_moe_combine(io.merged, io.gates, io.rowOfSlot, io.slotExpert, out, N, k, C, E);
    },
    moeCombineGrad(io, dout, { dmerged, dgates }, dims) {
      checkCombine(io, dims, { dout });
      const { N, M, C, k, E } = dims;
      check.sameLength("moeCombineGrad", M * C, { dmerged });
      check.sameLength("moeCombineGrad", N * E, { dgates });
      const { merged, gates, rowOfSlot, slotExpert } = io;
      s.seemore_moe_combine_grad(dout, merged, gates, rowOfSlot, slotExpert, dmerged, dgates, N, k, M, C, E);
    },
  };
}

/**
 * Checks the experts' parameter regions (4 per expert, of `sizes` floats, inside the heap, 4-byte
 * aligned) and their row counts; returns the rows of all groups together.
 */
function checkExperts(
  what: string,
  heapBytes: number,
  offsets: Uint32Array,
  counts: Int32Array,
  sizes: number[],
): number {
  if (offsets.length !== 4 * counts.length) {
    check.fail(`${what} needs 4 offsets per expert, got ${offsets.length}`);
  }
  offsets.forEach((start, i) => check.region(what, heapBytes, start, 4 * sizes[i % 4]));
  let rows = 0;
  for (const n of counts) {
    if (!Number.isInteger(n) || n < 0) check.fail(`${what} row count ${n}`);
    rows += n;
  }
  return rows;
}

function checkDispatch(order: Int32Array, { N, M, C, k }: MoEDims, nc: Float32Array, mc: Float32Array): void {
  check.sameLength("moeDispatch", N * C, { "(N, C) array": nc });
  check.sameLength("moeDispatch", M * C, { "(M, C) array": mc });
  if (order.length !== M) check.fail(`moeDispatch needs ${M} rows, got ${order.length}`);
  check.range("moeDispatch slot", order, 0, k * N);
}

function checkCombine(
  io: MoECombineInputs,
  { N, M, C, k, E }: MoEDims,
  nc: Record<string, Float32Array>,
): void {
  check.sameLength("moeCombine", M * C, { merged: io.merged });
  check.sameLength("moeCombine", N * E, { gates: io.gates });
  check.sameLength("moeCombine", N * C, nc);
  if (io.rowOfSlot.length !== k * N || io.slotExpert.length !== k * N) {
    check.fail(`moeCombine needs ${k * N} slots, got ${io.rowOfSlot.length}`);
  }
  check.range("moeCombine row", io.rowOfSlot, -1, M);
  check.range("moeCombine expert", io.slotExpert, 0, E);
}
