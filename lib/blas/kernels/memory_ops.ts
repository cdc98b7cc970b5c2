// Memory-bound kernels: Transpose, Identity, Unpack, Slice, GatherV2, SplitV and Sum on the wasm heap
// (C where the kernels loaded, else JS), for float32, int32 and bool; other dtypes run the stock kernel.

import * as tf from "@tensorflow/tfjs-core";
import { simplifyReduction } from "../native/memory.ts";
import {
  active,
  copyCtor,
  type HeapArray,
  heapView,
  type KernelArgs,
  stock,
  type TensorInfo,
  wasmOf,
} from "./common.ts";

export function transposeKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  const Ctor = copyCtor(x.dtype);
  if (!Ctor) return stock("Transpose", args);
  const backend = wasmOf(args.backend);
  const perm = (args.attrs?.perm as number[]).map((p) => (p < 0 ? p + x.shape.length : p));
  const out = backend.makeOutput(perm.map((p) => x.shape[p]), x.dtype);
  if (tf.util.sizeFromShape(x.shape) === 0) return out;
  const src = heapView<Int32Array>(backend, x, Ctor);
  const dst = heapView<Int32Array>(backend, out, Ctor);
  const [shape, order] = simplifyTranspose(x.shape, perm); // same transpose on fewer axes
  if (shape.length <= 1) dst.set(src);
  else if (active.native && Ctor === Int32Array && shape.length <= 8) {
    active.native.transpose32(src, dst, shape, order);
  } else transposeInto(src, dst, shape, order);
  return out;
}

/** Identity shares the input's buffer, like the cpu backend (tfjs clones every saved tensor). */
export function identityKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  if (x.dtype === "string" || x.dtype === "complex64") return stock("Identity", args);
  const backend = wasmOf(args.backend);
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

export function unpackKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const value = args.inputs.value as TensorInfo;
  const Ctor = copyCtor(value.dtype);
  if (!Ctor) return stock("Unpack", args);
  const backend = wasmOf(args.backend);
  const rank = value.shape.length;
  let axis = (args.attrs?.axis as number | undefined) ?? 0;
  if (axis < 0) axis += rank;
  const count = value.shape[axis];
  const outShape = value.shape.filter((_, d) => d !== axis);
  const outs = Array.from({ length: count }, () => backend.makeOutput(outShape, value.dtype)); // allocate first
  const outer = tf.util.sizeFromShape(value.shape.slice(0, axis));
  const inner = tf.util.sizeFromShape(value.shape.slice(axis + 1));
  if (outer * inner === 0) return outs;
  const src = heapView<Int32Array>(backend, value, Ctor);
  for (let i = 0; i < count; i++) {
    const dst = heapView<Int32Array>(backend, outs[i], Ctor);
    for (let o = 0; o < outer; o++) {
      const from = (o * count + i) * inner;
      copyRun(src, from, dst, o * inner, inner);
    }
  }
  return outs;
}

/**
 * tf.slice read in place: stock wasm first copies the whole input out of the heap (readSync), which
 * for a small slice of a big tensor (the ViT's CLS row) costs most of the time. Trailing axes taken
 * whole merge into one run; the runs are copied outer index by outer index.
 */
export function sliceKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  const Ctor = copyCtor(x.dtype);
  if (!Ctor) return stock("Slice", args);
  const backend = wasmOf(args.backend);
  const [begin, size] = tf.slice_util.parseSliceParams(
    x as tf.Tensor,
    args.attrs?.begin as number | number[],
    args.attrs?.size as number | number[],
  );
  const out = backend.makeOutput(size, x.dtype);
  const total = tf.util.sizeFromShape(size);
  if (total === 0) return out;
  const rank = x.shape.length;
  let axis = rank - 1; // the runs start at this axis: every axis after it is taken whole
  while (axis > 0 && size[axis] === x.shape[axis]) axis--;
  const strides = tf.util.computeStrides(x.shape); // strides[d] = elements per step of axis d (d < rank-1)
  const inner = axis === rank - 1 ? 1 : strides[axis];
  const run = size[axis] * inner;
  const src = heapView<Int32Array>(backend, x, Ctor), dst = heapView<Int32Array>(backend, out, Ctor);
  const coord = new Array(axis).fill(0); // position in the outer axes of the slice
  for (let to = 0; to < total; to += run) {
    let from = begin[axis] * inner;
    for (let d = 0; d < axis; d++) from += (begin[d] + coord[d]) * strides[d];
    copyRun(src, from, dst, to, run);
    for (let d = axis - 1; d >= 0 && ++coord[d] === size[d]; d--) coord[d] = 0;
  }
  return out;
}

/** tf.gather along one axis (batchDims 0): whole runs of the axes after it are copied at once. */
export function gatherKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const { x, indices } = args.inputs as { x: TensorInfo; indices: TensorInfo };
  const batchDims = (args.attrs?.batchDims as number | undefined) ?? 0;
  const Ctor = copyCtor(x.dtype);
  if (!Ctor || indices.dtype !== "int32" || batchDims !== 0) return stock("GatherV2", args);
  const backend = wasmOf(args.backend);
  const axis = tf.util.parseAxisParam(args.attrs?.axis as number, x.shape)[0];
  const outer = tf.util.sizeFromShape(x.shape.slice(0, axis));
  const dim = x.shape[axis];
  const inner = tf.util.sizeFromShape(x.shape.slice(axis + 1));
  const n = tf.util.sizeFromShape(indices.shape);
  const index = n > 0 ? heapView<Int32Array>(backend, indices, Int32Array).slice() : new Int32Array(0);
  for (let i = 0; i < n; i++) {
    if (!(index[i] >= 0 && index[i] < dim)) {
      throw new Error(`GatherV2: the index value ${index[i]} is not in [0, ${dim - 1}]`);
    }
  }
  const out = backend.makeOutput(
    [...x.shape.slice(0, axis), ...indices.shape, ...x.shape.slice(axis + 1)],
    x.dtype,
  );
  if (outer * n * inner === 0) return out;
  const src = heapView<Int32Array>(backend, x, Ctor);
  const dst = heapView<Int32Array>(backend, out, Ctor);
  if (active.native && Ctor === Int32Array) active.native.gather32(src, dst, { outer, dim, inner }, index);
  else {
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < n; i++) copyRun(src, (o * dim + index[i]) * inner, dst, (o * n + i) * inner, inner);
    }
  }
  return out;
}

export function splitVKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  const Ctor = copyCtor(x.dtype);
  if (!Ctor) return stock("SplitV", args);
  const backend = wasmOf(args.backend);
  const axis = tf.util.parseAxisParam(args.attrs?.axis as number, x.shape)[0];
  const sizes = tf.backend_util.prepareSplitSize(
    x as tf.Tensor,
    args.attrs?.numOrSizeSplits as number | number[],
    axis,
  );
  const outs = sizes.map((size) => {
    const shape = x.shape.slice();
    shape[axis] = size;
    return backend.makeOutput(shape, x.dtype); // allocate first
  });
  const outer = tf.util.sizeFromShape(x.shape.slice(0, axis));
  const inner = tf.util.sizeFromShape(x.shape.slice(axis + 1));
  const width = x.shape[axis];
  if (outer * inner * width === 0) return outs;
  const src = heapView<Int32Array>(backend, x, Ctor);
  let start = 0;
  sizes.forEach((size, i) => {
    const dst = heapView<Int32Array>(backend, outs[i], Ctor);
    const run = size * inner;
    for (let o = 0; o < outer; o++) copyRun(src, (o * width + start) * inner, dst, o * run, run);
    start += size;
  });
  return outs;
}

/** Sum over any axes of a float32 tensor without transposing it first (stock wasm transposes). */
export function sumKernel(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  if (x.dtype !== "float32") return stock("Sum", args);
  const backend = wasmOf(args.backend);
  const axes = tf.util.parseAxisParam(args.attrs?.axis as number | number[], x.shape);
  const keepDims = args.attrs?.keepDims === true;
  const outShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d)).filter((_, i) =>
    keepDims || !axes.includes(i)
  );
  const out = backend.makeOutput(outShape, "float32");
  const dst = heapView<Float32Array>(backend, out, Float32Array);
  if (tf.util.sizeFromShape(x.shape) === 0) {
    dst.fill(0);
    return out;
  }
  const src = heapView<Float32Array>(backend, x, Float32Array);
  if (active.native) active.native.sum(src, dst, x.shape, axes);
  else sumInto(src, dst, x.shape, axes);
  return out;
}

/** dst = sum of src (row-major `shape`) over `axes`, accumulated in double precision. */
export function sumInto(src: Float32Array, dst: Float32Array, shape: number[], axes: number[]): void {
  const [sizes, reduced] = simplifyReduction(shape, axes);
  const acc = new Float64Array(dst.length);
  const last = sizes.length - 1;
  if (last < 0) {
    dst[0] = src[0];
    return;
  }
  const len = sizes[last];
  // Output stride of each group: 0 for reduced groups.
  const outStep = new Array(sizes.length).fill(0);
  for (let g = last, s = 1; g >= 0; g--) {
    if (!reduced[g]) {
      outStep[g] = s;
      s *= sizes[g];
    }
  }
  const inStep = stridesOf(sizes);
  forEachGroup(sizes, inStep, outStep, last, (inBase, outBase) => {
    if (reduced[last]) {
      let total = 0;
      for (let j = 0; j < len; j++) total += src[inBase + j];
      acc[outBase] += total;
    } else {
      for (let j = 0; j < len; j++) acc[outBase + j] += src[inBase + j];
    }
  });
  for (let i = 0; i < dst.length; i++) dst[i] = acc[i];
}

/** Calls fn(inOffset, outOffset) for every combination of the groups before `inner`. */
function forEachGroup(
  sizes: number[],
  inStep: number[],
  outStep: number[],
  inner: number,
  fn: (inBase: number, outBase: number) => void,
): void {
  let total = 1;
  for (let g = 0; g < inner; g++) total *= sizes[g];
  const coord = new Array(inner).fill(0);
  let inPos = 0, outPos = 0;
  for (let t = 0; t < total; t++) {
    fn(inPos, outPos);
    for (let g = inner - 1; g >= 0; g--) {
      coord[g]++;
      inPos += inStep[g];
      outPos += outStep[g];
      if (coord[g] < sizes[g]) break;
      inPos -= inStep[g] * coord[g];
      outPos -= outStep[g] * coord[g];
      coord[g] = 0;
    }
  }
}

/** dst[to .. to+len) = src[from .. from+len); short runs by hand (subarray costs more than it saves). */
function copyRun(src: HeapArray, from: number, dst: HeapArray, to: number, len: number): void {
  if (len >= 64) {
    dst.set(src.subarray(from, from + len), to);
    return;
  }
  for (let j = 0; j < len; j++) dst[to + j] = src[from + j];
}

/**
 * Drops size-1 axes and merges axes that stay neighbours under `perm`: the transpose is the same,
 * on fewer, longer axes. Returns the reduced shape and permutation.
 */
export function simplifyTranspose(shape: number[], perm: number[]): [number[], number[]] {
  const keep = shape.map((s) => s !== 1);
  // Axes of the input, renumbered after dropping size-1 axes.
  const renumber = new Array(shape.length).fill(-1);
  const dims: number[] = [];
  for (let d = 0; d < shape.length; d++) if (keep[d]) renumber[d] = dims.push(shape[d]) - 1;
  const p = perm.filter((d) => keep[d]).map((d) => renumber[d]);
  // Merge runs p[i+1] === p[i] + 1 into one axis.
  const groups: number[][] = [];
  for (const d of p) {
    const last = groups[groups.length - 1];
    if (last && last[last.length - 1] + 1 === d) last.push(d);
    else groups.push([d]);
  }
  const order = groups.map((g) => g[0]).sort((x, y) => x - y);
  const mergedShape = order.map((first) => {
    const g = groups.find((gr) => gr[0] === first)!;
    return g.reduce((acc, d) => acc * dims[d], 1);
  });
  const mergedPerm = groups.map((g) => order.indexOf(g[0]));
  return [mergedShape, mergedPerm];
}

/** dst = transpose(src, perm) for a row-major tensor of `shape` (any element type). */
export function transposeInto(src: HeapArray, dst: HeapArray, shape: number[], perm: number[]): void {
  const [s, p] = simplifyTranspose(shape, perm);
  const r = s.length;
  if (r <= 1) {
    dst.set(src.subarray(0, dst.length));
    return;
  }
  const inStrides = stridesOf(s);
  const outShape = p.map((d) => s[d]);
  const outStrides = stridesOf(outShape);
  // Input stride of each output axis.
  const step = p.map((d) => inStrides[d]);
  if (p[r - 1] === r - 1) {
    // Rows of the last axis stay contiguous: copy them whole.
    const len = s[r - 1];
    forEachOuter(outShape, step, [r - 1], (inBase, outBase) => copyRun(src, inBase, dst, outBase, len));
    return;
  }
  // Output axis q reads the input's contiguous axis; the output's last axis reads stride `far`.
  const q = p.indexOf(r - 1);
  const rows = outShape[q], cols = outShape[r - 1], far = step[r - 1], outRow = outStrides[q];
  const TILE = 32;
  forEachOuter(outShape, step, [q, r - 1], (inBase, outBase) => {
    for (let i0 = 0; i0 < rows; i0 += TILE) {
      const i1 = Math.min(rows, i0 + TILE);
      for (let j0 = 0; j0 < cols; j0 += TILE) {
        const j1 = Math.min(cols, j0 + TILE);
        for (let i = i0; i < i1; i++) {
          const o = outBase + i * outRow;
          const x = inBase + i;
          for (let j = j0; j < j1; j++) dst[o + j] = src[x + j * far];
        }
      }
    }
  });
}

/**
 * Calls fn(inputOffset, outputOffset) for every combination of the output axes not in `inner`,
 * visiting outputs in order. `step[d]` is the input stride of output axis d.
 */
function forEachOuter(
  outShape: number[],
  step: number[],
  inner: number[],
  fn: (inBase: number, outBase: number) => void,
): void {
  const outStrides = stridesOf(outShape);
  const axes = outShape.map((_, d) => d).filter((d) => !inner.includes(d));
  const total = axes.reduce((acc, d) => acc * outShape[d], 1);
  const coord = new Array(axes.length).fill(0);
  let inPos = 0, outPos = 0;
  for (let t = 0; t < total; t++) {
    fn(inPos, outPos);
    for (let a = axes.length - 1; a >= 0; a--) {
      const d = axes[a];
      coord[a]++;
      inPos += step[d];
      outPos += outStrides[d];
      if (coord[a] < outShape[d]) break;
      inPos -= step[d] * coord[a];
      outPos -= outStrides[d] * coord[a];
      coord[a] = 0;
    }
  }
}

function stridesOf(shape: number[]): number[] {
  const strides = new Array(shape.length);
  let s = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    strides[d] = s;
    s *= shape[d];
  }
  return strides;
}
