// seeMoE's experts and their routing (c/experts.c): all experts of a layer in one call each way, each
// expert's rows gathered from the tokens on the way, and the combine after them.

import { aleaState } from "./alea.ts";
import { B, checksFor, F, I, type Shared, type Symbols, VOID } from "./common.ts";

const check = checksFor("lib/blas/native/experts.ts");

export const EXPERTS_SYMBOLS = {
  // heap, offsets (u32: w1, b1, w2, b2 per expert), counts (i32), E, x (tokens), rows (i32 slots), N,
  // h (or null: not kept), y, mask (u8, or null), noise states (f64[4] per expert, or null), keep, C, F
  // -> 0 on success
  seemore_experts: { parameters: [B, B, B, I, B, B, I, B, B, B, B, F, I, I], result: I },
  // heap, offsets (w1, b1, w2, b2), gradient offsets (dw1, db1, dw2, db2), counts, E, x (tokens), rows, N,
  // h (or null: recomputed), dy, mask (or null), keep, dx (tokens), C, F -> 0 on success
  seemore_experts_grad: { parameters: [B, B, B, B, I, B, B, I, B, B, B, F, B, I, I], result: I },
  // merged, gates, rowOfSlot (i32), slotExpert (i32), out, N, k, C, E
  seemore_moe_combine: { parameters: [B, B, B, B, B, I, I, I, I], result: VOID },
  // dout, merged, gates, rowOfSlot, slotExpert, dmerged, dgates, N, k, M, C, E
  seemore_moe_combine_grad: { parameters: [B, B, B, B, B, B, B, I, I, I, I, I], result: VOID },
} as const;

/** Sizes of seeMoE's routing: N tokens of width C, k choices each, M expert rows, E experts. */
/** experts()' arrays: x in, y out, and h (the hidden layer, where kept) and the dropout mask. */
type ExpertsIo = { x: Float32Array; h: Float32Array | null; y: Float32Array; mask: Uint8Array | null };
/** experts()' dropout: one seed per expert and the keep probability. */
type ExpertsDropout = { seeds: number[]; keep: number };

/** expertsGrad()'s arrays: the forward's x (and h, or null: recomputed), dy and mask in, dx out. */
type ExpertsGradIo = {
  x: Float32Array;
  h: Float32Array | null;
  dy: Float32Array;
  mask: Uint8Array | null;
  dx: Float32Array;
};

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

/** The experts' rows: row r is token rows[r] mod N of the tokens (N, C) (rows[r] is a slot j·N + n). */
export interface ExpertRows {
  rows: Int32Array; // (M)
  tokens: number; // N
  choices: number; // k: slots are < k·N
}

export interface ExpertsKernels {
  /**
   * seeMoE's experts (Linear(C, F) → ReLU → Linear(F, C) → dropout), each on its group of rows
   * (counts[e] rows, groups in order) gathered from the tokens x (N, C) as `route` says, parameters on
   * the wasm `heap` at `offsets` (w1, b1, w2, b2 per expert): writes y (M, C), and h = ReLU(x w1 + b1)
   * when given (else it is not kept); with seeds (one per expert), y is dropped out with each expert's
   * own noise and mask written. OpenBLAS must run on one thread (experts spread over ours).
   */
  experts(
    heap: Uint8Array,
    offsets: Uint32Array,
    counts: Int32Array,
    route: ExpertRows,
    io: ExpertsIo,
    dropout: ExpertsDropout | null,
    dims: { C: number; F: number },
  ): void;
  /**
   * The gradient of experts(): dx (N, C) (each token's rows summed, in row order), and dw1, db1, dw2,
   * db2 per expert at gradOffsets on the heap; h is the forward's, or null: recomputed (the same bits).
   */
  expertsGrad(
    heap: Uint8Array,
    offsets: Uint32Array,
    gradOffsets: Uint32Array,
    counts: Int32Array,
    route: ExpertRows,
    io: ExpertsGradIo,
    keep: number,
    dims: { C: number; F: number },
  ): void;
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
    experts(heap, offsets, counts, route, io, dropout, { C, F }) {
      check.needSgemm(shared, "experts");
      checkExpertsForward(heap, offsets, counts, route, io, dropout, { C, F });
      const states = dropoutStates(dropout, counts.length);
      const { x, h, y } = io, mask = dropout ? io.mask : null, keep = dropout?.keep ?? 1;
      const E = counts.length, N = route.tokens;
      const rc = s.seemore_experts(
        heap,
        offsets,
        counts,
        E,
        x,
        route.rows,
        N,
        h,
        y,
        mask,
        states,
        keep,
        C,
        F,
      );
      check.ok("seemore_experts", rc);
    },
    expertsGrad(heap, offsets, gradOffsets, counts, route, io, keep, { C, F }) {
      check.needSgemm(shared, "expertsGrad");
      checkExpertsGrad(heap, offsets, gradOffsets, counts, route, io, keep, { C, F });
      const { x, h, dy, mask, dx } = io, E = counts.length, N = route.tokens;
      const rc = s.seemore_experts_grad(
        heap,
        offsets,
        gradOffsets,
        counts,
        E,
        x,
        route.rows,
        N,
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

/** experts()' regions, rows and arrays (h where kept); with dropout, a mask and a seed per expert. */
function checkExpertsForward(
  ...[heap, offsets, counts, route, io, dropout, { C, F }]: Parameters<ExpertsKernels["experts"]>
): void {
  const rows = checkExperts("experts", heap.byteLength, offsets, counts, [C * F, F, F * C, C]);
  checkRows("experts", route, rows, C, io.x);
  check.sameLength("experts", rows * C, { y: io.y });
  if (io.h) check.sameLength("experts", rows * F, { h: io.h });
  if (dropout) {
    check.keep(dropout.keep);
    if (!io.mask) check.fail("experts with dropout needs a mask");
    check.sameLength("experts", rows * C, { mask: io.mask! });
    if (dropout.seeds.length !== counts.length) {
      check.fail(`experts needs one seed per expert, got ${dropout.seeds.length}`);
    }
  }
}

/** Each expert's dropout noise state (4 float64s, from its seed), or null without dropout. */
function dropoutStates(dropout: { seeds: number[] } | null, experts: number): Float64Array | null {
  const states = dropout ? new Float64Array(4 * experts) : null;
  dropout?.seeds.forEach((seed, e) => states!.set(aleaState(seed), 4 * e));
  return states;
}

/** expertsGrad()'s parameter and gradient regions, rows and arrays (h and mask where given). */
function checkExpertsGrad(
  ...[heap, offsets, gradOffsets, counts, route, io, keep, { C, F }]: Parameters<
    ExpertsKernels["expertsGrad"]
  >
): void {
  const sizes = [C * F, F, F * C, C];
  const rows = checkExperts("expertsGrad", heap.byteLength, offsets, counts, sizes);
  checkExperts("expertsGrad (gradients)", heap.byteLength, gradOffsets, counts, sizes);
  checkRows("expertsGrad", route, rows, C, io.x);
  check.sameLength("expertsGrad", rows * C, { dy: io.dy });
  check.sameLength("expertsGrad", route.tokens * C, { dx: io.dx });
  if (io.h) check.sameLength("expertsGrad", rows * F, { h: io.h });
  if (io.mask) {
    check.keep(keep);
    check.sameLength("expertsGrad", rows * C, { mask: io.mask });
  }
}

/** The experts' rows: one per row of all groups, each a slot of the N tokens' k choices. */
function checkRows(what: string, route: ExpertRows, rows: number, C: number, x: Float32Array): void {
  if (route.rows.length !== rows) check.fail(`${what} needs ${rows} rows, got ${route.rows.length}`);
  check.range(`${what} slot`, route.rows, 0, route.choices * route.tokens);
  check.sameLength(what, route.tokens * C, { x });
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
