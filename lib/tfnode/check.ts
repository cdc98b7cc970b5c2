// Why tfjs-node(-gpu) cannot start here, in one line, before it is imported.
//
// A leaf like lib/blas/ and lib/webgpu/: files and dynamic libraries only. Importing the package when
// a piece is missing gives a multi-line error from deep inside it (no native addon), or worse, nothing:
// TensorFlow quietly falls back to the CPU when CUDA or a GPU is missing and only logs warnings.
// So lib/backend.ts asks here first, in the order an install fails:
//   1. the npm package is not installed;
//   2. its install script did not finish (libtensorflow 2.9.1 and the addon are downloaded by it);
//   3. (GPU) the CUDA 11 / cuDNN 8 runtime libraries TensorFlow 2.9 opens are not found;
//   4. (GPU) no NVIDIA driver or no GPU device is visible.
// docs: README, "Training on a GPU".

import { fileURLToPath } from "node:url";

export type NodeKind = "tensorflow-gpu" | "tensorflow";

export const NODE_PACKAGES: Record<NodeKind, string> = {
  "tensorflow-gpu": "@tensorflow/tfjs-node-gpu",
  "tensorflow": "@tensorflow/tfjs-node",
};
export const NODE_VERSION = "4.22.0";

/**
 * What libtensorflow 2.9.1 (built against CUDA 11.2, cuDNN 8.1) opens at start-up; any CUDA 11.x ≥ 11.2
 * and cuDNN 8.x ≥ 8.1 provide these names.
 */
export const CUDA_LIBRARIES = [
  "libcudart.so.11.0",
  "libcublas.so.11",
  "libcublasLt.so.11",
  "libcufft.so.10",
  "libcurand.so.10",
  "libcusolver.so.11",
  "libcusparse.so.11",
  "libcudnn.so.8",
];

export interface CheckOptions {
  /** The folder holding node_modules (default: this project's). */
  root?: string;
  /** Libraries to find (default CUDA_LIBRARIES). */
  libraries?: string[];
  /** The NVIDIA driver library and the device node a visible GPU has. */
  driver?: string;
  device?: string;
}

export const PROJECT_ROOT = fileURLToPath(new URL("../../", import.meta.url));

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function anyFile(dir: string, test: (name: string) => boolean): boolean {
  try {
    for (const e of Deno.readDirSync(dir)) if (test(e.name)) return true;
  } catch { /* no such folder */ }
  return false;
}

/** Whether the dynamic linker finds `name` (as TensorFlow's dlopen would: LD_LIBRARY_PATH, ld.so.cache). */
function loadable(name: string): boolean {
  try {
    Deno.dlopen(name, {}).close();
    return true;
  } catch {
    return false;
  }
}

/** The command that runs (or re-runs) the package's install script under Deno. */
export function installCommand(pkg: string): string {
  return `deno install --allow-scripts=npm:${pkg}@${NODE_VERSION}`;
}

/** Where an install of tfjs-node(-gpu) stands, in the order it fails. */
export type NodeStage = "package" | "script" | "libraries" | "driver" | "device" | "ready";

/** The first missing piece of `kind`, with one line saying what to do (null when ready). */
export function tfNodeCheck(
  kind: NodeKind,
  opts: CheckOptions = {},
): { stage: NodeStage; problem: string | null } {
  const pkg = NODE_PACKAGES[kind];
  const dir = `${opts.root ?? PROJECT_ROOT}node_modules/${pkg}`;
  if (!exists(`${dir}/package.json`)) {
    const problem = `npm package ${pkg} is not installed (install it with: ${
      installCommand(pkg)
    } npm:${pkg}@${NODE_VERSION})`;
    return { stage: "package", problem };
  }
  const addon = anyFile(
    `${dir}/lib`,
    (d) => d.startsWith("napi-v") && exists(`${dir}/lib/${d}/tfjs_binding.node`),
  );
  const libtensorflow = anyFile(`${dir}/deps/lib`, (f) => f.startsWith("libtensorflow.so"));
  if (!addon || !libtensorflow) {
    const missing = [
      libtensorflow ? "" : "libtensorflow 2.9.1 (deps/lib)",
      addon ? "" : "its addon (lib/napi-v*)",
    ]
      .filter(Boolean).join(" and ");
    const problem = `${pkg} is installed but its install script did not finish: ${missing} missing; ` +
      `retry with: rm -f ${scriptsRunMarker(pkg)} && ${installCommand(pkg)}`;
    return { stage: "script", problem };
  }
  const ready = { stage: "ready" as const, problem: null };
  if (kind !== "tensorflow-gpu" || Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return ready;
  }
  const notFound = (opts.libraries ?? CUDA_LIBRARIES).filter((lib) => !loadable(lib));
  if (notFound.length > 0) {
    const problem = `CUDA 11 / cuDNN 8 runtime libraries not found: ${notFound.join(", ")} ` +
      `(TensorFlow would run on the CPU; install them or add their folder to LD_LIBRARY_PATH)`;
    return { stage: "libraries", problem };
  }
  const driver = opts.driver ?? "libcuda.so.1";
  if (!loadable(driver)) return { stage: "driver", problem: `no NVIDIA driver: ${driver} not found` };
  const device = opts.device ?? "/dev/nvidia0";
  if (Deno.build.os === "linux" && !exists(device)) {
    return {
      stage: "device",
      problem: `no NVIDIA GPU visible (${device} missing; in a container, start it with --gpus all)`,
    };
  }
  return ready;
}

/** Deno's mark that a package's install script ran (even when it failed), relative to the project. */
export function scriptsRunMarker(pkg: string): string {
  return `node_modules/.deno/${pkg.replace("/", "+")}@${NODE_VERSION}/.scripts-run`;
}

/** One line saying why `kind` cannot start, or null when nothing is known to be missing. */
export function tfNodeProblem(kind: NodeKind, opts: CheckOptions = {}): string | null {
  return tfNodeCheck(kind, opts).problem;
}
