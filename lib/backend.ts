// Chooses where tensors live and ops run, and registers that backend's fused kernels with the ops of
// lib/ops (the seam). Model code never asks which backend it is on.
//
// Order when nothing is asked for: tfjs-node-gpu, tfjs-node (only if installed in node_modules — they
// need libtensorflow, which `npm i @tensorflow/tfjs-node-gpu` downloads), then wasm (with OpenBLAS
// products and the C kernels of lib/blas when they load), then the pure-JS cpu backend.
// Override with `--backend NAME` or the SEEMORE_BACKEND environment variable.

import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-cpu";
import "@tensorflow/tfjs-backend-wasm";
import { fileURLToPath } from "node:url";
import { registerExtras, registerKernels, unregisterKernels } from "./ops/registry.ts";

export type BackendName = "tensorflow-gpu" | "tensorflow" | "wasm" | "cpu";
export const BACKENDS = ["tensorflow-gpu", "tensorflow", "wasm", "cpu"] as const;

export interface BackendInfo {
  name: string; // what tf.getBackend() reports
  requested: string;
  notes: string[]; // e.g. why a faster backend was not used
}

const NODE_PACKAGES: Record<string, string> = {
  "tensorflow-gpu": "@tensorflow/tfjs-node-gpu",
  "tensorflow": "@tensorflow/tfjs-node",
};

/** True when an npm package has been installed next to this project. */
function installed(pkg: string): boolean {
  try {
    Deno.statSync(fileURLToPath(new URL(`../node_modules/${pkg}/package.json`, import.meta.url)));
    return true;
  } catch {
    return false;
  }
}

async function tryNode(kind: "tensorflow-gpu" | "tensorflow", notes: string[]): Promise<boolean> {
  const pkg = NODE_PACKAGES[kind];
  if (!installed(pkg)) return false;
  try {
    // A computed specifier: Deno must not fetch this package unless the user installed it.
    await import(["npm:", pkg, "@4.22.0"].join(""));
    if (await tf.setBackend("tensorflow")) return true;
    notes.push(`${pkg} loaded but its backend did not start`);
  } catch (e) {
    notes.push(`${pkg} is installed but could not load: ${(e as Error).message.split("\n")[0]}`);
  }
  return false;
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
    decoderStep: native?.hasSgemm()
      ? {
        layout: {
          block: blas.DECODER_LAYER_TENSORS.map((t) => t.name),
          final: blas.DECODER_FINAL_TENSORS.map((t) => t.name),
        },
        cacheSize: blas.decoderCacheSize,
        step: (weights, x, cache, logits, dims, position) =>
          native.decoderStep(weights, x, cache, logits, dims, position),
        inPlaceUpdates: blas.inPlaceUpdateCount,
      }
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
  if (want === "tensorflow-gpu" || want === "tensorflow") {
    ok = await tryNode(want, notes);
    if (!ok) {
      throw new Error(
        `backend ${want} is not available: ${
          notes.join("; ") || `npm package ${NODE_PACKAGES[want]} is not installed`
        }`,
      );
    }
  } else if (want === "auto") {
    ok = (await tryNode("tensorflow-gpu", notes)) || (await tryNode("tensorflow", notes)) ||
      (await tryWasm(notes, blas)) || (await tf.setBackend("cpu"));
  } else if (want === "wasm") {
    ok = await tryWasm(notes, blas);
  } else {
    ok = await tf.setBackend("cpu");
  }
  if (!ok) throw new Error(`backend ${want} could not be started`);
  await tf.ready();
  return { name: tf.getBackend(), requested: want, notes };
}
