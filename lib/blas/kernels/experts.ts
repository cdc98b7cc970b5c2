// seeMoE's kernels: all experts of a layer in one call (each expert's rows gathered from the tokens on
// the way), and the combine back, each with its gradient. Parameters are read in place on the heap.

import * as tf from "@tensorflow/tfjs-core";
import type { MoEDims } from "../native/experts.ts";
import {
  active,
  boolView,
  floatView,
  type KernelArgs,
  offsetOf,
  type TensorInfo,
  type WasmBackend,
  wasmOf,
} from "./common.ts";

/** attrs of the combine kernels: the routing plan (which expert row each token's choice went to). */
interface MoEAttrs {
  order: Int32Array; // (M) slot of each expert row
  rowOfSlot: Int32Array; // (k·N) expert row of each slot, -1 if dropped
  slotExpert: Int32Array; // (k·N) expert of each slot
  tokens: number; // N
  choices: number; // k
}

function combineDims(merged: TensorInfo, gates: TensorInfo, attrs: MoEAttrs): MoEDims {
  const [N, E] = gates.shape, [M, C] = merged.shape;
  return { N, C, M, k: attrs.choices, E };
}

function combineInputs(backend: WasmBackend, merged: TensorInfo, gates: TensorInfo, attrs: MoEAttrs) {
  return {
    merged: floatView(backend, merged, "merged"),
    gates: floatView(backend, gates, "gates"),
    rowOfSlot: attrs.rowOfSlot,
    slotExpert: attrs.slotExpert,
  };
}

/** inputs merged (M, C), gates (N, E) → out (N, C). */
export function moeCombineKernel(args: KernelArgs): TensorInfo {
  const { merged, gates } = args.inputs as { merged: TensorInfo; gates: TensorInfo };
  const attrs = args.attrs as unknown as MoEAttrs;
  const backend = wasmOf(args.backend);
  const dims = combineDims(merged, gates, attrs);
  const out = backend.makeOutput([dims.N, dims.C], "float32");
  active.native!.moeCombine(
    combineInputs(backend, merged, gates, attrs),
    floatView(backend, out, "out"),
    dims,
  );
  return out;
}

/** inputs dout (N, C), merged, gates → [dmerged (M, C), dgates (N, E)]. */
export function moeCombineGradKernel(args: KernelArgs): TensorInfo[] {
  const { dout, merged, gates } = args.inputs as { dout: TensorInfo; merged: TensorInfo; gates: TensorInfo };
  const attrs = args.attrs as unknown as MoEAttrs;
  const backend = wasmOf(args.backend);
  const dmerged = backend.makeOutput(merged.shape, "float32");
  const dgates = backend.makeOutput(gates.shape, "float32");
  active.native!.moeCombineGrad(
    combineInputs(backend, merged, gates, attrs),
    floatView(backend, dout, "dout"),
    { dmerged: floatView(backend, dmerged, "dmerged"), dgates: floatView(backend, dgates, "dgates") },
    combineDims(merged, gates, attrs),
  );
  return [dmerged, dgates];
}

/**
 * Byte offsets on the wasm heap of each expert e's parameters, inputs w1_e [C, F], b1_e [F], w2_e [F, C]
 * and b2_e [C] (shapes checked: the C kernel trusts them).
 */
function expertOffsets(
  backend: WasmBackend,
  inputs: Record<string, TensorInfo>,
  E: number,
  C: number,
  F: number,
) {
  const offsets = new Uint32Array(4 * E);
  const shapes: [string, number[]][] = [["w1", [C, F]], ["b1", [F]], ["w2", [F, C]], ["b2", [C]]];
  for (let e = 0; e < E; e++) {
    shapes.forEach(([name, shape], j) => {
      const t = inputs[`${name}_${e}`];
      if (!t || t.dtype !== "float32" || !tf.util.arraysEqual(t.shape, shape)) {
        throw new Error(`lib/blas/kernels/experts.ts: experts input ${name}_${e} must be float32 [${shape}]`);
      }
      offsets[4 * e + j] = offsetOf(backend, t);
    });
  }
  return offsets;
}

interface ExpertsAttrs {
  rows: Int32Array; // (M) each expert row's slot: token rows[r] mod N
  tokens: number; // N
  choices: number; // k
  counts: number[];
  hidden: number;
  keep: number;
  seeds: number[]; // one per expert, or none: no dropout
}

/**
 * inputs x (N, C), the tokens, and w1_e, b1_e, w2_e, b2_e for each expert e; attrs as ExpertsAttrs
 * → [y (M, C), mask (M, C) bool, or [0] without dropout]. The hidden layer is not kept: the gradient
 * recomputes it. See native/experts.ts.
 */
export function expertsKernel(args: KernelArgs): TensorInfo[] {
  const inputs = args.inputs as Record<string, TensorInfo>;
  const { rows, tokens, choices, counts, hidden: F, keep, seeds } = args.attrs as unknown as ExpertsAttrs;
  const x = inputs.x, C = x.shape[1], M = rows.length;
  const backend = wasmOf(args.backend);
  const offsets = expertOffsets(backend, inputs, counts.length, C, F);
  const dropout = seeds.length > 0;
  const y = backend.makeOutput([M, C], "float32");
  const mask = backend.makeOutput(dropout ? [M, C] : [0], "bool");
  active.native!.experts(
    backend.wasm.HEAPU8,
    offsets,
    Int32Array.from(counts),
    { rows, tokens, choices },
    {
      x: floatView(backend, x, "experts x"),
      h: null,
      y: floatView(backend, y, "y"),
      mask: dropout ? boolView(backend, mask, "mask") : null,
    },
    dropout ? { seeds, keep } : null,
    { C, F },
  );
  return [y, mask];
}

/** inputs dy, x, mask and the experts' parameters; attrs as expertsKernel → [dx (N, C), then dw1, db1, dw2, db2 per expert]. */
export function expertsGradKernel(args: KernelArgs): TensorInfo[] {
  const inputs = args.inputs as Record<string, TensorInfo>;
  const { rows, tokens, choices, counts, hidden: F, keep, seeds } = args.attrs as unknown as ExpertsAttrs;
  const { dy, x, mask } = inputs;
  const C = x.shape[1];
  const backend = wasmOf(args.backend);
  const offsets = expertOffsets(backend, inputs, counts.length, C, F);
  const dx = backend.makeOutput([tokens, C], "float32");
  const grads = counts.flatMap(() =>
    [[C, F], [F], [F, C], [C]].map((shape) => backend.makeOutput(shape, "float32"))
  );
  const gradOffsets = Uint32Array.from(grads, (g) => offsetOf(backend, g));
  active.native!.expertsGrad(
    backend.wasm.HEAPU8,
    offsets,
    gradOffsets,
    Int32Array.from(counts),
    { rows, tokens, choices },
    {
      x: floatView(backend, x, "experts x"),
      h: null,
      dy: floatView(backend, dy, "experts dy"),
      mask: seeds.length > 0 ? boolView(backend, mask, "experts mask") : null,
      dx: floatView(backend, dx, "dx"),
    },
    keep,
    { C, F },
  );
  return [dx, ...grads];
}
