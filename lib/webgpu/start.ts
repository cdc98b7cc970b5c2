// Starting tfjs's WebGPU backend under Deno, and what it tells about its GPU memory.
//
// Imported only by lib/backend.ts, only once WebGPU has been chosen: the package and its shader kernels
// then load; a CPU-only start-up never sees them.
//
// Deno quirk: tfjs-backend-webgpu reads a tensor synchronously (dataSync, arraySync) by drawing it to
// an OffscreenCanvas with a 2-D context, which Deno does not provide; the read then fails deep inside the
// backend ("Cannot read properties of null (reading 'clearRect')"). We replace that failure with one
// line that says what to do: read with `await tensor.data()` (lib/readback.ts).
//
// tfjs-backend-webgpu 4.22 bug: tf.cast from int32 or bool to float32 only relabels the tensor (the
// buffer keeps its integer bits), and the rank ≥ 3 Transpose program copies those bits as floats: a
// cast one-hot or comparison, transposed or summed over a leading axis (Sum, Max and Cumsum transpose
// first), comes out as 1.4e-45 instead of 1. We register a Cast that converts for real (a multiply
// by 1.0, whose program reads the integer buffer as integers).

import * as tf from "@tensorflow/tfjs-core";

/** The backend's buffer pool counters (tfjs-backend-webgpu's BufferManager). */
export interface GpuBufferStats {
  usedBuffers: number; // buffers held by live tensors and in-flight uniforms
  freeBuffers: number; // buffers kept for reuse
  bytesUsed: number;
  bytesAllocated: number; // every buffer created and not destroyed
}

interface WebGPUBackendLike {
  bufferManager: {
    numUsedBuffers: number;
    numFreeBuffers: number;
    numBytesUsed: number;
    numBytesAllocated: number;
  };
  tensorMap: { get(dataId: object): { values: unknown; dtype: string } | undefined };
  readSync(dataId: object): unknown;
  device: GPUDevice;
}

/** The active backend when it is tfjs's WebGPU one, else null. */
function webgpuBackend(): WebGPUBackendLike | null {
  return tf.getBackend() === "webgpu" ? tf.backend() as unknown as WebGPUBackendLike : null;
}

/** Buffer pool counters of the active WebGPU backend (null on any other backend). */
export function gpuBufferStats(): GpuBufferStats | null {
  const m = webgpuBackend()?.bufferManager;
  if (!m) return null;
  return {
    usedBuffers: m.numUsedBuffers,
    freeBuffers: m.numFreeBuffers,
    bytesUsed: m.numBytesUsed,
    bytesAllocated: m.numBytesAllocated,
  };
}

/**
 * Loads tfjs-backend-webgpu and makes it the active backend, every op on the GPU (no small ops
 * forwarded to the CPU, so what runs is what the WebGPU tests check). False if it did not start.
 */
export async function startWebGPU(): Promise<boolean> {
  await import("@tensorflow/tfjs-backend-webgpu");
  tf.env().set("WEBGPU_CPU_FORWARD", false);
  registerCastFix();
  if (!(await tf.setBackend("webgpu"))) return false;
  explainSyncReads(webgpuBackend()!);
  return true;
}

/** Replaces webgpu's Cast so that int32/bool → float32 writes float32 values (see the header). */
function registerCastFix(): void {
  const stock = tf.getKernel("Cast", "webgpu");
  if (!stock || (stock.kernelFunc as { seemoreFix?: boolean }).seemoreFix) return;
  const multiply = tf.getKernel("Multiply", "webgpu")!.kernelFunc;
  const kernelFunc = (args: Parameters<tf.KernelFunc>[0]) => {
    const x = args.inputs.x as tf.TensorInfo;
    if (args.attrs?.dtype !== "float32" || (x.dtype !== "int32" && x.dtype !== "bool")) {
      return stock.kernelFunc(args);
    }
    const backend = args.backend as tf.KernelBackend & {
      makeTensorInfo(shape: number[], dtype: string, values: Float32Array): tf.TensorInfo;
    };
    const one = backend.makeTensorInfo([], "float32", new Float32Array([1]));
    const out = multiply({ inputs: { a: x, b: one }, backend, attrs: {} }); // float32 = upcast(int32, float32)
    backend.disposeData(one.dataId);
    return out;
  };
  Object.assign(kernelFunc, { seemoreFix: true });
  tf.unregisterKernel("Cast", "webgpu");
  tf.registerKernel({ kernelName: "Cast", backendName: "webgpu", kernelFunc: kernelFunc as tf.KernelFunc });
}

const explained = new WeakSet<WebGPUBackendLike>();

/** Makes a synchronous read of a tensor whose values are only on the GPU fail with a clear message. */
function explainSyncReads(backend: WebGPUBackendLike): void {
  if (explained.has(backend)) return;
  explained.add(backend);
  const readSync = backend.readSync.bind(backend);
  backend.readSync = (dataId: object) => {
    const data = backend.tensorMap.get(dataId);
    if (data && data.values == null && data.dtype !== "string") {
      throw new Error(
        "the webgpu backend cannot read a tensor synchronously under Deno (dataSync/arraySync): " +
          "read it with `await tensor.data()` (or `await toHost(tensors)` first; lib/readback.ts)",
      );
    }
    return readSync(dataId);
  };
}
