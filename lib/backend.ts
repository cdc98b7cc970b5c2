// Chooses where tensors live and ops run, and registers that backend's fused kernels with the ops of
// lib/ops (the seam). Model code never asks which backend it is on.
//
// Order when nothing is asked for: tfjs-node-gpu (only if installed in node_modules — it needs
// libtensorflow, which its install script downloads), WebGPU on a real GPU adapter (probed only where the
// machine shows a GPU device), tfjs-node, then wasm (with OpenBLAS products and the C kernels of lib/blas
// when they load), then the pure-JS cpu backend. A software WebGPU adapter (llvmpipe, SwiftShader) is used
// only when `webgpu` is asked for by name: it checks the GPU path, it does not train fast.
// Override with `--backend NAME` or the SEEMORE_BACKEND environment variable.

import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-cpu";
import "@tensorflow/tfjs-backend-wasm";
import { registerExtras, registerKernels, unregisterKernels } from "./ops/registry.ts";
import { NODE_PACKAGES, NODE_VERSION, type NodeKind, tfNodeProblem } from "./tfnode/check.ts";
import { adapterName, type AdapterSummary, gpuDevicePresent, probeAdapter } from "./webgpu/adapter.ts";

export type BackendName = "tensorflow-gpu" | "tensorflow" | "webgpu" | "wasm" | "cpu";
export const BACKENDS = ["tensorflow-gpu", "tensorflow", "webgpu", "wasm", "cpu"] as const;

export interface BackendInfo {
  name: string; // what tf.getBackend() reports
  requested: string;
  notes: string[]; // e.g. why a faster backend was not used
  adapter?: AdapterSummary; // webgpu: the GPU adapter in use
}

/**
 * tfjs-node-gpu or tfjs-node, imported only once lib/tfnode/check.ts finds every piece it needs: the
 * package, libtensorflow and its addon, and for the GPU the CUDA libraries, the driver and a device.
 * Each failure is one line in `notes` (in auto-selection, a package that is not installed is none).
 */
async function tryNode(kind: NodeKind, notes: string[], explicit: boolean): Promise<boolean> {
  const pkg = NODE_PACKAGES[kind];
  const problem = tfNodeProblem(kind);
  if (problem) {
    if (explicit || !problem.startsWith("npm package")) notes.push(problem);
    return false;
  }
  try {
    // A computed specifier: Deno must not fetch this package unless the user installed it.
    await import(["npm:", pkg, "@", NODE_VERSION].join(""));
  } catch (e) {
    notes.push(`${pkg} is installed but could not load: ${(e as Error).message.split("\n")[0]}`);
    return false;
  }
  if (!(await tf.setBackend("tensorflow"))) {
    notes.push(`${pkg} loaded but its backend did not start`);
    return false;
  }
  const usingGpu = (tf.backend() as unknown as { isUsingGpuDevice?: boolean }).isUsingGpuDevice;
  if (kind === "tensorflow-gpu" && usingGpu === false) {
    const visible = Deno.env.get("CUDA_VISIBLE_DEVICES");
    notes.push(
      `${pkg} started without a GPU: TensorFlow found no usable device` +
        (visible !== undefined ? ` (CUDA_VISIBLE_DEVICES=${visible})` : " (its log above says why)"),
    );
    return false;
  }
  return true;
}

/**
 * WebGPU through tfjs-backend-webgpu, imported only here. `explicit`: asked for by name, so a software
 * adapter will do; in auto-selection only a real GPU is worth it.
 */
async function tryWebGPU(explicit: boolean, notes: string[]): Promise<AdapterSummary | null> {
  const probe = await probeAdapter();
  if (!probe.ok) {
    notes.push(`webgpu: ${probe.reason}`);
    return null;
  }
  const { adapter } = probe;
  if (adapter.software && !explicit) {
    notes.push(`webgpu: ${adapterName(adapter)} is a software adapter; ask for --backend webgpu to use it`);
    return null;
  }
  try {
    const { startWebGPU } = await import("./webgpu/start.ts");
    if (await startWebGPU()) {
      notes.push(
        `webgpu adapter: ${adapterName(adapter)}${adapter.software ? " (software, runs on the CPU)" : ""}`,
      );
      return adapter;
    }
    notes.push("webgpu: tfjs-backend-webgpu did not start");
  } catch (e) {
    notes.push(`webgpu: tfjs-backend-webgpu could not load: ${(e as Error).message.split("\n")[0]}`);
  }
  return null;
}

async function tryWasm(notes: string[], blas: boolean): Promise<boolean> {
  if (!(await tf.setBackend("wasm"))) return false;
  if (!blas) {
    (await blasModule)?.disableBlasKernels();
    unregisterKernels("wasm");
    return true;
  }
  try {
    notes.push(...await useBlas());
  } catch (e) {
    notes.push(`OpenBLAS kernels unavailable: ${(e as Error).message.split("\n")[0]}`);
  }
  return true;
}

/** lib/blas, once something asked for it (imported only then: it compiles and opens native code). */
let blasModule: Promise<typeof import("./blas/mod.ts")> | null = null;

/** The fast CPU path on wasm (lib/blas): its kernels registered with the ops; returns the notes. */
async function useBlas(): Promise<string[]> {
  blasModule ??= import("./blas/mod.ts");
  const blas = await blasModule;
  const r = await blas.enableBlasKernels();
  unregisterKernels("wasm"); // none of ours may outlive the library they call
  if (!r.ok) return [r.reason ?? "OpenBLAS not available"];
  const fused = registerKernels("wasm", blas.fusedKernels());
  const native = blas.activeNative();
  registerExtras("wasm", {
    adamInPlace: blas.adamInPlace,
    gradientsEach: blas.leanGradientsInstalled() ? blas.leanGradientsEach : undefined,
    releaseHostMemory: native ? () => native.releaseHostMemory() : undefined,
    decoderSteps: native?.hasSgemm()
      ? { dense: blas.decoderStepKernel("dense"), moe: blas.decoderStepKernel("moe") }
      : undefined,
  });
  return [`OpenBLAS kernels: ${[...r.kernels, ...fused].join(", ")}`, ...(r.gemm ? [r.gemm] : [])];
}

/**
 * Starts the requested backend (or the fastest available) and returns what was chosen.
 * `requested`: one of BACKENDS, "auto", or undefined (then SEEMORE_BACKEND, then "auto").
 */
export async function initBackend(requested?: string, opts: { blas?: boolean } = {}): Promise<BackendInfo> {
  const want = requested ?? Deno.env.get("SEEMORE_BACKEND") ?? "auto";
  const blas = opts.blas ?? Deno.env.get("SEEMORE_BLAS") !== "0";
  const notes: string[] = [];
  tf.env().set("PROD", true); // no "install tfjs-node" banner, no debug-only checks
  if (want !== "auto" && !(BACKENDS as readonly string[]).includes(want)) {
    throw new Error(`unknown backend "${want}": choose one of ${BACKENDS.join(", ")} or auto`);
  }
  let ok = false;
  let adapter: AdapterSummary | null = null;
  let nodeGpu = false; // tfjs-node-gpu started
  if (want === "webgpu") {
    adapter = await tryWebGPU(true, notes);
    if (!adapter) throw new Error(`backend webgpu is not available: ${notes.join("; ")}`);
    ok = true;
  } else if (want === "tensorflow-gpu" || want === "tensorflow") {
    ok = await tryNode(want, notes, true);
    if (!ok) throw new Error(`backend ${want} is not available: ${notes.join("; ")}`);
    nodeGpu = want === "tensorflow-gpu";
  } else if (want === "auto") {
    ok = nodeGpu = await tryNode("tensorflow-gpu", notes, false);
    if (!ok && gpuDevicePresent()) ok = (adapter = await tryWebGPU(false, notes)) !== null;
    ok = ok || (await tryNode("tensorflow", notes, false)) || (await tryWasm(notes, blas)) ||
      (await tf.setBackend("cpu"));
  } else if (want === "wasm") {
    ok = await tryWasm(notes, blas);
  } else {
    ok = await tf.setBackend("cpu");
  }
  if (!ok) throw new Error(`backend ${want} could not be started`);
  await tf.ready();
  // On a GPU a read-back drains the device's queue (and WebGPU under Deno reads only asynchronously):
  // the ops then keep their work on the device (seeMoE's router chooses its experts there).
  if (nodeGpu || adapter) registerExtras(tf.getBackend(), { deviceOnly: true });
  return { name: tf.getBackend(), requested: want, notes, ...(adapter ? { adapter } : {}) };
}
