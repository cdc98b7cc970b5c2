// What the tfjs kernel functions share: the libraries in use, the stock kernels they fall back to, and
// views of the wasm heap. Offsets come from the backend's own table; every view is checked against the
// tensor's allocation and the heap, and built from the heap's *current* buffer (it can grow).

import * as tf from "@tensorflow/tfjs-core";
import type { Blas } from "../ffi.ts";
import type { Native } from "../native.ts";

export type TensorInfo = tf.TensorInfo;
export type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: object; attrs?: tf.NamedAttrMap };

export const BACKEND = "wasm";

/** The parts of tfjs-backend-wasm's BackendWasm these kernels use. */
export interface WasmBackend {
  wasm: { HEAPU8: Uint8Array<ArrayBuffer> };
  dataIdMap: { get(dataId: object): { memoryOffset: number; shape: number[]; refCount: number } | undefined };
  makeOutput(shape: number[], dtype: tf.DataType): TensorInfo;
  incRef(dataId: object): void;
  disposeData(dataId: object, force?: boolean): boolean;
}

/** What enableBlasKernels set up: OpenBLAS, the C kernels (null without them), and whether it is on. */
export const active: { blas: Blas | null; native: Native | null; enabled: boolean } = {
  blas: null,
  native: null,
  enabled: false,
};

/** The C kernels, while the overrides are active and could load them (else null). */
export function activeNative(): Native | null {
  return active.enabled && tf.getBackend() === BACKEND ? active.native : null;
}

/** The stock kernel configs we replaced, to restore them and to fall back on. */
export const originals = new Map<string, tf.KernelConfig>();

/** Runs the stock kernel `name` (for dtypes and cases the replacement does not handle). */
export function stock(name: string, args: KernelArgs): TensorInfo | TensorInfo[] {
  const config = originals.get(name);
  if (!config) throw new Error(`lib/blas/kernels/common.ts: stock ${name} kernel missing`);
  return config.kernelFunc(args);
}

export type HeapArray = Float32Array | Int32Array | Uint8Array;
export type HeapCtor = Float32ArrayConstructor | Int32ArrayConstructor | Uint8ArrayConstructor;

export function wasmOf(backend: object): WasmBackend {
  const b = backend as WasmBackend;
  if (!b?.dataIdMap || !b.wasm?.HEAPU8) {
    throw new Error("lib/blas/kernels/common.ts: kernel called on a non-wasm backend");
  }
  return b;
}

/** A typed view of a tensor's memory on the heap, checked against its allocation. */
export function heapView<T extends HeapArray>(backend: WasmBackend, info: TensorInfo, Ctor: HeapCtor): T {
  const data = backend.dataIdMap.get(info.dataId);
  if (!data || data.memoryOffset == null) {
    throw new Error(`lib/blas/kernels/common.ts: tensor ${info.shape} has no wasm memory`);
  }
  const size = tf.util.sizeFromShape(info.shape);
  const allocated = tf.util.sizeFromShape(data.shape);
  const bytes = size * Ctor.BYTES_PER_ELEMENT;
  const buffer = backend.wasm.HEAPU8.buffer;
  const offset = data.memoryOffset;
  if (
    size > allocated || offset % Ctor.BYTES_PER_ELEMENT !== 0 || offset < 0 ||
    offset + bytes > buffer.byteLength || (size > 0 && offset === 0)
  ) {
    throw new Error(
      `lib/blas/kernels/common.ts: tensor ${info.shape} (${size} elements) does not fit its wasm allocation ` +
        `(${allocated} elements at byte ${offset} of ${buffer.byteLength})`,
    );
  }
  return new Ctor(buffer, offset, size) as T;
}

/** A float32 tensor's view (`what` names it in the error). */
export function floatView(backend: WasmBackend, info: TensorInfo, what: string): Float32Array {
  if (info.dtype !== "float32") {
    throw new Error(`lib/blas/kernels/common.ts: ${what} must be float32, got ${info.dtype}`);
  }
  return heapView<Float32Array>(backend, info, Float32Array);
}

/** A bool tensor's view (a dropout mask). */
export function boolView(backend: WasmBackend, info: TensorInfo, what: string): Uint8Array {
  if (info.dtype !== "bool") {
    throw new Error(`lib/blas/kernels/common.ts: ${what} must be bool, got ${info.dtype}`);
  }
  return heapView<Uint8Array>(backend, info, Uint8Array);
}

/** A typed array that copies `dtype`'s elements bit for bit (float32 copied as int32: NaNs stay intact). */
export function copyCtor(dtype: tf.DataType): HeapCtor | null {
  if (dtype === "float32" || dtype === "int32") return Int32Array;
  if (dtype === "bool") return Uint8Array;
  return null;
}

/** The heap offset of a tensor's memory. */
export function offsetOf(backend: WasmBackend, info: TensorInfo): number {
  return backend.dataIdMap.get(info.dataId)!.memoryOffset;
}
