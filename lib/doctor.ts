// `deno task doctor`: which backends work on this machine, why the others do not and the fix, which one
// `deno task train` picks, and how long one train step takes there.
//
//   deno task doctor [--json] [--help]
//
// One line per backend: wasm + OpenBLAS + oneDNN (the fast CPU path: which files, versions, threads, where
// the compiled C kernels are cached), plain wasm, cpu, webgpu (the adapter, and whether it is a software
// one), tensorflow and tensorflow-gpu (tfjs-node: installed, its libtensorflow, CUDA, the driver, a GPU,
// and whether it starts). Then the pick, with the median time of a train step of the seeing recipe's model
// at batch 2.

import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { initBackend } from "./backend.ts";
import { nativeCompiler, nativeLibraryPath } from "./blas/native.ts";
import { DEFAULT_MODEL, type ModelConfig, RECIPES } from "./config.ts";
import { PATH_WORDS, type PathKind, pathKind } from "./fast_path.ts";
import { buildModel } from "./model/factory.ts";
import { ForwardContext } from "./model/module.ts";
import { captionLoss } from "./objective.ts";
import { Adam } from "./optim.ts";
import {
  detectSystem,
  type FastPathStatus,
  planSetup,
  probeFastPath,
  shellLine,
  type System,
} from "./setup.ts";
import { NODE_PACKAGES, NODE_VERSION, type NodeKind, tfNodeProblem } from "./tfnode/check.ts";
import { adapterName, probeAdapter } from "./webgpu/adapter.ts";

export interface BackendReport {
  name: string;
  available: boolean;
  /** What was found (files, versions, threads), or why it is not available. */
  detail: string;
  /** What to run to make it available (or faster), or null. */
  fix: string | null;
}

export interface DoctorReport {
  backends: BackendReport[];
  /** What `deno task train` would run on. */
  pick: { backend: string; path: PathKind | null; train_step_ms: number; timed: string };
}

const TFJS_VERSION = NODE_VERSION;

// ---------------------------------------------------------------------------------------------
// One check per backend

/** The fast CPU path, from its loaders (probeFastPath), with the files they opened. */
function fastPathReport(s: FastPathStatus, sys: System, builtBefore: boolean): BackendReport {
  const parts: string[] = [];
  if (s.openblas.ok) {
    const b = s.openblas.blas;
    const config = b.config.replace(/^OpenBLAS /, "");
    parts.push(`OpenBLAS ${config} at ${loadedFile("libopenblas") ?? b.path}, ${b.numThreads()} threads`);
  } else parts.push(`OpenBLAS ✗ (${s.openblas.reason})`);
  if (s.onednn.ok) parts.push(`oneDNN ${s.onednn.version} at ${loadedFile("libdnnl") ?? s.onednn.path}`);
  else parts.push(s.onednn.off ? "oneDNN off (SEEMORE_ONEDNN=off)" : `oneDNN ✗ (${s.onednn.reason})`);
  const cc = compilerVersion();
  if (s.kernels.ok) {
    parts.push(
      `C kernels ${builtBefore ? "cached at" : "built now into"} ${s.kernels.native.path}` +
        ` (${
          cc
            ? `${nativeCompiler()}: ${cc}`
            : `${nativeCompiler()} not runnable: only needed when kernels.c changes`
        })`,
    );
  } else parts.push(`C kernels ✗ (${s.kernels.reason})`);
  const available = s.needs.length === 0 && s.problems.length === 0;
  return { name: "wasm + OpenBLAS + oneDNN", available, detail: parts.join("; "), fix: fastPathFix(s, sys) };
}

/** The commands that would set the fast path up here (as `deno task setup --dry-run` prints them). */
function fastPathFix(s: FastPathStatus, sys: System): string | null {
  if (s.needs.length === 0) return s.problems.length > 0 ? s.problems.join("; ") : null;
  const plan = planSetup(s.needs, false, sys, Deno.execPath());
  const lines = [...plan.install.map(shellLine), ...plan.manual];
  const run = lines.length > 0 ? `${lines.join(" && ")} (or \`deno task setup\`)` : "";
  return [run, ...plan.unsupported].filter(Boolean).join("; ");
}

/** The file a library name was loaded from, as this process mapped it (Linux), or null. */
function loadedFile(name: string): string | null {
  try {
    const maps = Deno.readTextFileSync("/proc/self/maps");
    const line = maps.split("\n").find((l) => l.includes(`/${name}`));
    return line ? line.slice(line.indexOf("/")) : null;
  } catch {
    return null;
  }
}

/** The first line of `cc --version` without its package prefix, or null when it does not run. */
function compilerVersion(): string | null {
  try {
    const out = new Deno.Command(nativeCompiler(), { args: ["--version"], stdout: "piped", stderr: "null" })
      .outputSync();
    return out.success ? new TextDecoder().decode(out.stdout).split("\n")[0].trim() : null;
  } catch {
    return null;
  }
}

async function wasmReport(): Promise<BackendReport> {
  const ok = await tf.setBackend("wasm");
  if (!ok) return { name: "wasm", available: false, detail: "tfjs's wasm backend did not start", fix: null };
  const simd = await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT");
  return {
    name: "wasm",
    available: true,
    detail: `tfjs-backend-wasm ${TFJS_VERSION}, ${simd ? "SIMD" : "no SIMD"}, one thread ` +
      "(threaded wasm does not start in Deno); the fast path's base",
    fix: null,
  };
}

async function cpuReport(): Promise<BackendReport> {
  const ok = await tf.setBackend("cpu");
  return {
    name: "cpu",
    available: ok,
    detail: ok ? `tfjs-backend-cpu ${TFJS_VERSION}, plain JavaScript (the slowest)` : "did not start",
    fix: null,
  };
}

/** navigator.gpu and its adapter: a real GPU is train's pick; a software one only when asked for by name. */
async function webgpuReport(): Promise<BackendReport> {
  const probe = await probeAdapter();
  if (!probe.ok) {
    const fix = Deno.build.os === "linux"
      ? "your GPU's Vulkan driver (or apt-get install mesa-vulkan-drivers for a software adapter, llvmpipe)"
      : "a GPU driver with Vulkan, Metal or DirectX 12";
    return { name: "webgpu", available: false, detail: probe.reason, fix };
  }
  const a = probe.adapter;
  const kind = a.software
    ? "software: runs on the CPU, slower than the fast CPU path; --backend webgpu uses it, auto does not"
    : "a real GPU: train picks it unless tfjs-node-gpu is installed";
  return { name: "webgpu", available: true, detail: `adapter ${adapterName(a)}; ${kind}`, fix: null };
}

/** tfjs-node(-gpu): each piece it needs (lib/tfnode/check.ts), then whether it starts and on what. */
async function tensorflowReport(kind: NodeKind): Promise<BackendReport> {
  const pkg = NODE_PACKAGES[kind];
  const install = kind === "tensorflow-gpu"
    ? 'deno task setup --gpu (README, "Training on a GPU")'
    : `deno install --allow-scripts=npm:${pkg}@${NODE_VERSION} npm:${pkg}@${NODE_VERSION}`;
  const problem = tfNodeProblem(kind);
  // The problem line names the command when running it is all there is to do.
  if (problem) {
    return { name: kind, available: false, detail: problem, fix: problem.includes(install) ? null : install };
  }
  try {
    const info = await initBackend(kind);
    const devices = kind === "tensorflow-gpu" ? "on the GPU" : "on the CPU";
    return {
      name: kind,
      available: true,
      detail: `${pkg} ${NODE_VERSION} starts (${info.name}, ${devices})`,
      fix: null,
    };
  } catch (e) {
    return { name: kind, available: false, detail: (e as Error).message.split("\n")[0], fix: install };
  }
}

// ---------------------------------------------------------------------------------------------
// The pick, timed

/**
 * Median milliseconds of a train step (forward, backward, Adam) of the seeing recipe's model at `batch`:
 * `steps` timed steps after `warmup`, fewer (at least one) once two seconds were spent timing.
 */
async function timeTrainStep(batch = 2, steps = 5, warmup = 2): Promise<{ ms: number; steps: number }> {
  const config = { ...DEFAULT_MODEL, ...RECIPES.seeing.model, vocab_size: 66 } as ModelConfig;
  const model = buildModel(config, 1);
  const opt = new Adam(model.variables(), 1e-3);
  const S = config.img_size, T = 40;
  const images = tf.randomNormal([batch, 3, S, S], 0, 1, "float32", 1) as tf.Tensor4D; // (B, 3, S, S)
  const idx = tf.randomUniform([batch, T], 0, 65, "int32", 2) as tf.Tensor2D; // (B, T)
  const targets = tf.randomUniform([batch, T], 0, 66, "int32", 3) as tf.Tensor2D; // (B, T)
  const times: number[] = [];
  for (let i = 0; i < warmup + steps && times.reduce((a, b) => a + b, 0) < 2000; i++) {
    const t0 = performance.now();
    const loss = opt.minimize(() =>
      captionLoss(model, images, idx, targets, new ForwardContext(true, 1, i), "first")
    );
    await loss.data(); // the step's work done (a GPU's too), read as every backend can
    loss.dispose();
    if (i >= warmup) times.push(performance.now() - t0);
  }
  tf.dispose([images, idx, targets]);
  opt.dispose();
  model.dispose();
  times.sort((a, b) => a - b);
  return { ms: times[times.length >> 1], steps: times.length };
}

/** Checks every backend, then starts and times the one train would pick. */
export async function doctor(): Promise<DoctorReport> {
  const sys = await detectSystem();
  const builtBefore = exists(nativeLibraryPath());
  const fast = probeFastPath();
  const backends = [
    fastPathReport(fast, sys, builtBefore),
    await wasmReport(),
    await cpuReport(),
    await webgpuReport(),
    await tensorflowReport("tensorflow"),
    await tensorflowReport("tensorflow-gpu"),
  ];
  const info = await initBackend(); // as train: SEEMORE_BACKEND, else the fastest available
  const fastInUse = info.name === "wasm" && Deno.env.get("SEEMORE_BLAS") !== "0";
  const t = await timeTrainStep();
  return {
    backends,
    pick: {
      backend: info.name,
      path: fastInUse ? pathKind(fast) : null,
      train_step_ms: t.ms,
      timed:
        `one train step of the seeing recipe's model at batch 2 (median of ${t.steps}, after 2 warm-up steps)`,
    },
  };
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** The report as lines for a terminal. */
export function formatReport(r: DoctorReport): string[] {
  const width = Math.max(...r.backends.map((b) => b.name.length));
  const lines = r.backends.map((b) =>
    `${b.name.padEnd(width)}  ${b.available ? "available" : "not available"}: ${b.detail}` +
    (b.fix ? `; fix: ${b.fix}` : "")
  );
  const path = r.pick.path ? PATH_WORDS[r.pick.path] : r.pick.backend;
  lines.push(`train picks: ${path}; ${r.pick.timed}: ${r.pick.train_step_ms.toFixed(1)} ms`);
  return lines;
}

const USAGE = `deno task doctor [--json]

One line per backend (wasm + OpenBLAS + oneDNN, wasm, cpu, webgpu, tensorflow, tensorflow-gpu): available,
or why not and the fix; then the backend \`deno task train\` picks and its measured train-step time.
  --json   the same as one JSON object`;

if (import.meta.main) {
  let v;
  try {
    ({ values: v } = parseArgs({
      args: Deno.args,
      strict: true,
      options: { json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    }));
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (v.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const report = await doctor();
  if (v.json) console.log(JSON.stringify(report));
  else for (const line of formatReport(report)) console.log(line);
}
