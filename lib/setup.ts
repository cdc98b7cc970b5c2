// `deno task setup`: checks what the fast CPU path and the notebooks need, installs what is missing, and
// says what it did. Running it again does nothing.
//
//   deno task setup [--dry-run] [--only fast,kernel,notebooks,gpu] [--gpu] [--help]
//
// Three parts by default, each checked by trying the real thing, and a fourth on request:
// - fast: OpenBLAS and oneDNN load (lib/blas/ffi.ts, onednn.ts) and our C kernels build with the system's
//   compiler (lib/blas/native.ts's loader: the real build, then cached on disk).
// - kernel: Deno's Jupyter kernel is registered, for a deno of this version (`deno jupyter --install`
//   with Deno.execPath(): the deno that runs setup).
// - notebooks: Debian's /usr/bin/python3 finds nbconvert, nbclient and jupyter_client
//   (`deno task notebooks` and the notebook tests execute the notebooks with them).
// - gpu (--gpu): @tensorflow/tfjs-node-gpu installed with its install script run (it downloads
//   libtensorflow 2.9.1), then the CUDA 11 / cuDNN 8 libraries, driver and device it needs
//   (lib/tfnode/check.ts); the WebGPU adapter is reported. CUDA itself is left to the user (README).
// Packages come from the system's package manager when it runs without a prompt (root, or passwordless
// `sudo -n`): apt on Debian and Ubuntu. Elsewhere, or when a password would be asked, setup prints what to
// run. The main jobs (lib/fast_path.ts) run the "fast" part by themselves.

import { parseArgs } from "node:util";
import { ffiAllowed, forgetFailedBlas, loadBlas, type LoadResult, readEnv } from "./blas/ffi.ts";
import {
  forgetFailedNative,
  loadNative,
  nativeCompiler,
  nativeLibraryPath,
  type NativeResult,
} from "./blas/native.ts";
import { type OnednnProbe, probeOnednn } from "./blas/onednn.ts";
import {
  installCommand,
  NODE_PACKAGES,
  NODE_VERSION,
  type NodeStage,
  PROJECT_ROOT,
  scriptsRunMarker,
  tfNodeCheck,
} from "./tfnode/check.ts";
import { adapterName, type AdapterProbe, probeAdapter } from "./webgpu/adapter.ts";

export type Part = "fast" | "kernel" | "notebooks" | "gpu";
/** The parts setup checks by default; "gpu" only when asked (it downloads about 400 MB). */
export const PARTS: readonly Part[] = ["fast", "kernel", "notebooks"];
export const ALL_PARTS: readonly Part[] = [...PARTS, "gpu"];

/** Something missing that a package provides. */
export type Need =
  | "openblas"
  | "onednn"
  | "compiler"
  | "libc-dev"
  | "nbconvert"
  | "nbclient"
  | "jupyter_client";

/** Debian and Ubuntu package of each need. */
export const APT_PACKAGES: Record<Need, string> = {
  openblas: "libopenblas0-pthread",
  onednn: "libdnnl2",
  compiler: "gcc",
  "libc-dev": "libc6-dev",
  nbconvert: "python3-nbconvert",
  nbclient: "python3-nbclient",
  jupyter_client: "python3-jupyter-client",
};

/** Homebrew formula of each need that works on macOS today (the rest are Linux-only, see LINUX_ONLY). */
const BREW_PACKAGES: Partial<Record<Need, string>> = { openblas: "openblas" };

/** Why a need cannot be met on macOS today. */
const LINUX_ONLY: Partial<Record<Need, string>> = {
  onednn: "oneDNN: Linux only today (lib/blas/onednn.ts looks for libdnnl.so)",
  compiler: "C kernels: Linux only today (lib/blas/native.ts links with GNU ld's -z nodelete)",
  "libc-dev": "C kernels: Linux only today (lib/blas/native.ts links with GNU ld's -z nodelete)",
  nbconvert:
    "notebook execution: Debian and Ubuntu only today (tests/run_notebooks.ts uses /usr/bin/python3)",
  nbclient: "notebook execution: Debian and Ubuntu only today (tests/run_notebooks.ts uses /usr/bin/python3)",
  jupyter_client:
    "notebook execution: Debian and Ubuntu only today (tests/run_notebooks.ts uses /usr/bin/python3)",
};

/** What each need is, in words (messages on systems without apt). */
const NEED_NAMES: Record<Need, string> = {
  openblas: "OpenBLAS (libopenblas.so.0)",
  onednn: "oneDNN (libdnnl.so.2)",
  compiler: "a C compiler (cc)",
  "libc-dev": "the C library headers",
  nbconvert: "nbconvert",
  nbclient: "nbclient",
  jupyter_client: "jupyter_client",
};

const NOTEBOOK_MODULES = ["nbconvert", "nbclient", "jupyter_client"] as const;
export const PYTHON = "/usr/bin/python3";

// ---------------------------------------------------------------------------------------------
// What is there

/** The fast CPU path: each part as its loader reports it, and what is missing. */
export interface FastPathStatus {
  openblas: LoadResult;
  onednn: OnednnProbe;
  kernels: NativeResult;
  /** Missing parts a package would provide, in install order. */
  needs: Need[];
  /** Missing parts no package provides (a permission, a failing build), with why. */
  problems: string[];
}

/**
 * Tries the fast path's parts: opens OpenBLAS and oneDNN, and builds (or opens the cached build of) the C
 * kernels. Cheap after the backend started: its loaders remember their results. `retry` forgets earlier
 * failures first (after an install).
 */
export function probeFastPath(retry = false): FastPathStatus {
  if (retry) {
    forgetFailedBlas();
    forgetFailedNative();
  }
  const openblas = loadBlas();
  const onednn = probeOnednn();
  const kernels = loadNative();
  const needs: Need[] = [];
  const problems: string[] = [];
  // A package cannot help when a flag is missing or a variable names another file or compiler.
  const chosen = (name: string) => readEnv(name) !== undefined;
  if (!openblas.ok) {
    if (!ffiAllowed() || chosen("SEEMORE_OPENBLAS")) problems.push(openblas.reason);
    else needs.push("openblas");
  }
  if (!onednn.ok && !onednn.off) {
    if (!ffiAllowed() || chosen("SEEMORE_ONEDNN")) problems.push(onednn.reason);
    else needs.push("onednn");
  }
  if (!kernels.ok) {
    if (kernels.cause === "compiler" && !chosen("CC")) {
      needs.push("compiler");
      if (!libcHeadersPresent()) needs.push("libc-dev");
    } else if (
      kernels.cause === "build" && /\.h: No such file|cannot find (-l|crt|\S*crt)/.test(kernels.reason)
    ) {
      needs.push("libc-dev");
    } else {
      problems.push(kernels.reason);
    }
  }
  return { openblas, onednn, kernels, needs, problems };
}

/** Whether the C library's headers are installed (checked when there is no compiler to try them). */
function libcHeadersPresent(): boolean {
  return isFile("/usr/include/stdlib.h");
}

/** Deno's Jupyter kernel as Jupyter will find it. */
export interface KernelStatus {
  ok: boolean;
  /** The kernelspec folder found first, or null. */
  spec: string | null;
  /** The deno it starts, or null. */
  deno: string | null;
  detail: string;
}

/** Folders Jupyter reads kernelspecs from, in its order (jupyter_core.paths.jupyter_path). */
export function kernelDirs(): string[] {
  const env = (k: string) => Deno.env.get(k) || undefined;
  const home = env("HOME") ?? env("USERPROFILE") ?? "";
  const user = Deno.build.os === "darwin"
    ? `${home}/Library/Jupyter`
    : Deno.build.os === "windows"
    ? `${env("APPDATA")}/jupyter`
    : `${env("XDG_DATA_HOME") ?? `${home}/.local/share`}/jupyter`;
  const sep = Deno.build.os === "windows" ? ";" : ":";
  const dirs = [
    ...(env("JUPYTER_PATH")?.split(sep).filter(Boolean) ?? []),
    ...(env("JUPYTER_DATA_DIR") ? [env("JUPYTER_DATA_DIR")!] : []),
    user,
    "/usr/local/share/jupyter",
    "/usr/share/jupyter",
  ];
  return [...new Set(dirs)].map((d) => `${d}/kernels`);
}

/**
 * Looks for the "deno" kernelspec; it counts as registered when the deno it starts runs and is this
 * deno's version (Deno.version.deno). Another version, or a deno that is gone, is registered anew.
 */
export async function probeKernel(): Promise<KernelStatus> {
  for (const dir of kernelDirs()) {
    const spec = `${dir}/deno`;
    let argv: unknown;
    try {
      argv = JSON.parse(await Deno.readTextFile(`${spec}/kernel.json`)).argv;
    } catch {
      continue;
    }
    const deno = Array.isArray(argv) && typeof argv[0] === "string" ? argv[0] : null;
    if (!deno) return { ok: false, spec, deno, detail: `${spec}/kernel.json has no argv` };
    const version = await denoVersion(deno);
    if (version === Deno.version.deno) return { ok: true, spec, deno, detail: `deno ${version}, ${spec}` };
    const why = version ? `deno ${version}, not ${Deno.version.deno}` : `${deno} does not run`;
    return { ok: false, spec, deno, detail: `${spec} starts ${deno} (${why})` };
  }
  return { ok: false, spec: null, deno: null, detail: "no kernelspec named deno" };
}

async function denoVersion(deno: string): Promise<string | null> {
  try {
    const out = await new Deno.Command(deno, { args: ["--version"], stdout: "piped", stderr: "null" })
      .output();
    return /^deno (\S+)/.exec(new TextDecoder().decode(out.stdout))?.[1] ?? null;
  } catch {
    return null;
  }
}

/** Which of nbconvert, nbclient and jupyter_client Debian's python3 lacks (all three without python3). */
export async function probeNotebookTools(): Promise<Need[]> {
  const script = "import importlib.util, json; print(json.dumps([m for m in " +
    `${JSON.stringify(NOTEBOOK_MODULES)} if importlib.util.find_spec(m) is None]))`;
  try {
    const out = await new Deno.Command(PYTHON, { args: ["-c", script], stdout: "piped", stderr: "null" })
      .output();
    if (out.success) return JSON.parse(new TextDecoder().decode(out.stdout)) as Need[];
  } catch { /* no python3 */ }
  return [...NOTEBOOK_MODULES];
}

// ---------------------------------------------------------------------------------------------
// The system: package manager and privileges

export interface System {
  os: typeof Deno.build.os;
  /** The package manager setup can drive, or null. */
  manager: "apt" | "brew" | null;
  root: boolean;
  /** Passwordless sudo works (`sudo -n true`). */
  sudo: boolean;
}

export async function detectSystem(): Promise<System> {
  const os = Deno.build.os;
  const root = Deno.uid?.() === 0;
  let manager: System["manager"] = null;
  if (os === "linux" && onPath("apt-get")) manager = "apt";
  else if (os === "darwin" && onPath("brew")) manager = "brew";
  const sudo = !root && manager === "apt" && await succeeds("sudo", ["-n", "true"]);
  return { os, manager, root, sudo };
}

function onPath(name: string): boolean {
  const path = Deno.env.get("PATH") ?? "";
  return path.split(":").some((dir) => dir && isFile(`${dir}/${name}`));
}

async function succeeds(cmd: string, args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "null" }).output())
      .success;
  } catch {
    return false;
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// The plan: commands, from what is missing and what the system allows (no side effects)

export interface Plan {
  /** Packages to install. */
  packages: string[];
  /** Commands (argv) that install them, in order; empty when nothing can be installed here. */
  install: string[][];
  /** Whether `install` runs without a prompt (root, sudo -n, or Homebrew). */
  promptFree: boolean;
  /** Shell lines for the user to run when setup cannot (a password would be asked), else []. */
  manual: string[];
  /** Needs this system cannot meet by a package setup knows, each with what to do. */
  unsupported: string[];
  /** The command (argv) that registers Deno's Jupyter kernel, or null. */
  kernel: string[] | null;
  /** Commands (argv) that install tfjs-node-gpu, run in the project folder; empty when not needed. */
  gpu: string[][];
}

/** What setup would do for these needs on this system. `deno`: the deno to register as the kernel. */
export function planSetup(needs: Need[], kernelMissing: boolean, sys: System, deno: string): Plan {
  const plan: Plan = {
    packages: [],
    install: [],
    promptFree: false,
    manual: [],
    unsupported: [],
    kernel: kernelMissing ? [deno, "jupyter", "--install", "--force"] : null,
    gpu: [],
  };
  if (needs.length === 0) return plan;
  if (sys.manager === "apt") {
    plan.packages = [...new Set(needs.map((n) => APT_PACKAGES[n]))];
    const sudo = sys.root ? [] : sys.sudo ? ["sudo", "-n"] : ["sudo"];
    plan.install = [
      [...sudo, "apt-get", "update", "-qq"],
      [...sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", ...plan.packages],
    ];
    plan.promptFree = sys.root || sys.sudo;
    if (!plan.promptFree) {
      plan.manual = plan.install.map(shellLine);
      plan.install = [];
    }
    return plan;
  }
  if (sys.os === "darwin") {
    const brew = needs.flatMap((n) => BREW_PACKAGES[n] ?? []);
    plan.packages = [...new Set(brew)];
    plan.unsupported = [...new Set(needs.flatMap((n) => LINUX_ONLY[n] ?? []))];
    if (plan.packages.length > 0) {
      const cmd = ["brew", "install", ...plan.packages];
      // Homebrew asks no questions, but setup installs only with apt: on macOS it says what to run.
      plan.manual = [shellLine(cmd)];
    }
    if (!sys.manager && plan.packages.length > 0) {
      plan.unsupported.push("Homebrew not found: https://brew.sh");
    }
    return plan;
  }
  const words = needs.map((n) => NEED_NAMES[n]).join(", ");
  plan.unsupported = [
    `no apt-get here: install ${words} with your package manager ` +
    "(or point SEEMORE_OPENBLAS / SEEMORE_ONEDNN at the libraries)",
  ];
  return plan;
}

/** argv as one line a shell would read back the same. */
export function shellLine(argv: string[]): string {
  return argv.map((a) => /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`).join(" ");
}

/**
 * The commands that install tfjs-node-gpu from where its install stands: Deno runs a package's install
 * script only when --allow-scripts names it, and marks it run even when it failed (the download), so a
 * retry removes the mark first. Later stages (CUDA, driver, device) are not Deno's to install: [].
 */
export function planGpu(stage: NodeStage, deno: string): string[][] {
  const pkg = NODE_PACKAGES["tensorflow-gpu"];
  const install = [deno, ...installCommand(pkg).split(" ").slice(1)];
  if (stage === "package") return [[...install, `npm:${pkg}@${NODE_VERSION}`]];
  if (stage === "script") return [["rm", "-f", scriptsRunMarker(pkg)], install];
  return [];
}

// ---------------------------------------------------------------------------------------------
// Doing it

/** Runs the plan's install commands quietly; returns null on success, else why not (its last lines). */
export function runInstall(plan: Plan): Promise<string | null> {
  return runQuietly(plan.install);
}

/** Runs commands one after another (in `cwd`); returns null when all succeed, else why not. */
async function runQuietly(commands: string[][], cwd?: string): Promise<string | null> {
  for (const argv of commands) {
    let out: Deno.CommandOutput;
    try {
      out = await new Deno.Command(argv[0], {
        args: argv.slice(1),
        cwd,
        env: { DEBIAN_FRONTEND: "noninteractive", NO_COLOR: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch (err) {
      return `\`${shellLine(argv)}\` did not start: ${(err as Error).message.split("\n")[0]}`;
    }
    if (!out.success) {
      const text = new TextDecoder().decode(out.stderr).trim() || new TextDecoder().decode(out.stdout).trim();
      // Deno's and apt's own "error:" lines (uncoloured: NO_COLOR) say why; a stack trace after them does not.
      const errors = text.split("\n").filter((l) => /^(error|E):/.test(l));
      const why = (errors.length > 0 ? errors : text.split("\n").slice(-3)).join(" | ");
      return `\`${shellLine(argv)}\` failed (exit ${out.code}): ${why}`;
    }
  }
  return null;
}

/** Registers Deno's Jupyter kernel; returns null on success, else why not. */
async function registerKernel(argv: string[]): Promise<string | null> {
  try {
    const out = await new Deno.Command(argv[0], {
      args: argv.slice(1),
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (out.success) return null;
    const text = new TextDecoder().decode(out.stderr).split("\n").find((l) => l.includes("error")) ?? "";
    return `\`${shellLine(argv)}\` failed: ${text.trim()}`;
  } catch (err) {
    return `\`${shellLine(argv)}\` did not start: ${(err as Error).message.split("\n")[0]}`;
  }
}

/** Everything setup looks at. */
export interface SetupStatus {
  fast?: FastPathStatus;
  kernel?: KernelStatus;
  notebooks?: Need[];
  gpu?: GpuStatus;
}

/** The GPU routes: tfjs-node-gpu's install, and the WebGPU adapter (reported; nothing to install). */
export interface GpuStatus {
  stage: NodeStage;
  problem: string | null;
  webgpu: AdapterProbe;
}

async function probeGpu(): Promise<GpuStatus> {
  return { ...tfNodeCheck("tensorflow-gpu"), webgpu: await probeAdapter() };
}

/** Checks the asked-for parts. `retry`: ask the libraries and the compiler again (after an install). */
export async function probe(parts: readonly Part[], retry = false): Promise<SetupStatus> {
  return {
    fast: parts.includes("fast") ? probeFastPath(retry) : undefined,
    kernel: parts.includes("kernel") ? await probeKernel() : undefined,
    notebooks: parts.includes("notebooks") ? await probeNotebookTools() : undefined,
    gpu: parts.includes("gpu") ? await probeGpu() : undefined,
  };
}

/** The needs of a status, in install order. */
export function needsOf(s: SetupStatus): Need[] {
  return [...(s.fast?.needs ?? []), ...(s.notebooks ?? [])];
}

/** The status as a few lines: one per part, ✓ or ✗ with why. */
export function describe(s: SetupStatus): string[] {
  const lines: string[] = [];
  if (s.fast) {
    const f = s.fast;
    const mark = (ok: boolean, off = false) => ok ? "✓" : off ? "off" : "✗";
    lines.push(
      `fast CPU path: OpenBLAS ${mark(f.openblas.ok)}  oneDNN ${
        mark(f.onednn.ok, !f.onednn.ok && f.onednn.off)
      }` +
        `  C kernels ${mark(f.kernels.ok)}`,
    );
    if (!f.openblas.ok) lines.push(`  ${f.openblas.reason}`);
    if (!f.onednn.ok && !f.onednn.off) lines.push(`  ${f.onednn.reason}`);
    if (!f.kernels.ok) lines.push(`  ${f.kernels.reason}`);
  }
  if (s.kernel) lines.push(`Jupyter kernel: ${s.kernel.ok ? "✓" : "✗"} ${s.kernel.detail}`);
  if (s.notebooks) {
    lines.push(
      s.notebooks.length === 0
        ? `notebook execution: ✓ ${PYTHON} has ${NOTEBOOK_MODULES.join(", ")}`
        : `notebook execution: ✗ ${PYTHON} lacks ${s.notebooks.join(", ")}`,
    );
  }
  if (s.gpu) {
    const g = s.gpu;
    lines.push(
      `tfjs-node-gpu: ${
        g.problem ? `✗ ${g.problem}` : `✓ ${NODE_PACKAGES["tensorflow-gpu"]} ${NODE_VERSION}`
      }`,
    );
    const w = g.webgpu;
    lines.push(
      w.ok
        ? `WebGPU: ✓ ${adapterName(w.adapter)}${w.adapter.software ? " (software: runs on the CPU)" : ""}`
        : `WebGPU: ✗ ${w.reason}`,
    );
  }
  return lines;
}

/** Whether anything in the status is missing (the WebGPU adapter is reported, not required). */
function complete(s: SetupStatus): boolean {
  return needsOf(s).length === 0 && (s.fast?.problems.length ?? 0) === 0 && (s.kernel?.ok ?? true) &&
    (s.gpu?.problem ?? null) === null;
}

/** What to do about a GPU stage setup cannot install. */
function gpuAdvice(g: GpuStatus | undefined): string | null {
  if (!g?.problem || g.stage === "package" || g.stage === "script") return null;
  return `${g.problem}; setup installs no CUDA or driver: see README, "Training on a GPU"`;
}

/**
 * Sets up the asked-for parts; returns the exit status (0: all in place). With `dryRun` prints the commands
 * it would run, one per line, and nothing else on stdout.
 */
export async function setup(parts: readonly Part[], dryRun: boolean): Promise<number> {
  const sys = await detectSystem();
  if (parts.includes("fast") && !dryRun && !isFile(nativeLibraryPath())) {
    console.error(`setup: building the C kernels with ${nativeCompiler()} (once)…`);
  }
  const before = await probe(parts);
  const plan = planSetup(needsOf(before), before.kernel ? !before.kernel.ok : false, sys, Deno.execPath());
  if (before.gpu) plan.gpu = planGpu(before.gpu.stage, Deno.execPath());
  const advice = gpuAdvice(before.gpu);
  if (dryRun) {
    for (const argv of plan.install) console.log(shellLine(argv));
    for (const line of plan.manual) console.log(line);
    if (plan.kernel) console.log(shellLine(plan.kernel));
    for (const argv of plan.gpu) console.log(shellLine(argv));
    if (advice) console.error(`setup: ${advice}`);
    for (const line of plan.unsupported) console.error(`setup: ${line}`);
    for (const p of before.fast?.problems ?? []) console.error(`setup: not fixable by a package: ${p}`);
    if (complete(before)) console.error("setup: nothing to do");
    return 0;
  }
  const failures: string[] = [];
  if (plan.install.length > 0) {
    console.error(`setup: installing ${plan.packages.join(" ")} (${shellLine(plan.install.at(-1)!)})…`);
    const t0 = performance.now();
    const err = await runInstall(plan);
    if (err) failures.push(err);
    else console.error(`setup: installed in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  }
  if (plan.kernel) {
    const err = await registerKernel(plan.kernel);
    if (err) failures.push(err);
    else console.error(`setup: registered Deno's Jupyter kernel (${shellLine(plan.kernel)})`);
  }
  if (plan.gpu.length > 0) {
    console.error(
      `setup: installing ${NODE_PACKAGES["tensorflow-gpu"]} ${NODE_VERSION} (its script downloads ` +
        `libtensorflow 2.9.1, about 400 MB)…`,
    );
    const err = await runQuietly(plan.gpu, PROJECT_ROOT);
    if (err) failures.push(err);
  }
  const changed = plan.install.length > 0 || plan.kernel !== null || plan.gpu.length > 0;
  const after = changed ? await probe(parts, true) : before;
  for (const line of describe(after)) console.log(line);
  if (!changed && complete(after)) console.log("nothing to do: all in place");
  if (complete(after)) return 0;
  for (const f of failures) console.error(`setup: ${f}`);
  const still = needsOf(after);
  if (plan.install.length > 0 && failures.length === 0 && still.length > 0) {
    const pkgs = still.map((n) => sys.manager === "apt" ? APT_PACKAGES[n] : NEED_NAMES[n]);
    console.error(`setup: installed, but still missing: ${pkgs.join(" ")} (why: the ✗ lines above)`);
  }
  if (plan.manual.length > 0) {
    const why = sys.manager === "apt" ? "installing needs a password" : "setup installs with apt only";
    console.error(`setup: ${why}; run:\n${plan.manual.map((l) => `  ${l}`).join("\n")}`);
  }
  for (const line of plan.unsupported) console.error(`setup: ${line}`);
  for (const p of after.fast?.problems ?? []) console.error(`setup: not fixable by a package: ${p}`);
  const afterAdvice = gpuAdvice(after.gpu);
  if (afterAdvice) console.error(`setup: ${afterAdvice}`);
  console.error("setup: could not set everything up (see above)");
  return 1;
}

const USAGE = `deno task setup [--dry-run] [--only fast,kernel,notebooks,gpu] [--gpu]

Checks and, where missing, installs what the fast CPU path (OpenBLAS, oneDNN, a C compiler that builds
lib/blas/c/kernels.c) and the notebooks (Deno's Jupyter kernel; nbconvert and nbclient for
\`deno task notebooks\`) need. Installs with apt-get as root or with passwordless sudo; otherwise prints
the commands. Running it again does nothing. Exit status 1 when something could not be set up.

  --dry-run   print the commands it would run, one per line, and run nothing
  --only P    only these parts (comma-separated): ${ALL_PARTS.join(", ")}
  --gpu       also the GPU part: installs @tensorflow/tfjs-node-gpu ${NODE_VERSION} with Deno (its script
              downloads libtensorflow 2.9.1), then checks CUDA 11 / cuDNN 8, the driver and the device
              it needs, and reports the WebGPU adapter (README, "Training on a GPU")`;

if (import.meta.main) {
  let v;
  try {
    ({ values: v } = parseArgs({
      args: Deno.args,
      strict: true,
      options: {
        "dry-run": { type: "boolean" },
        only: { type: "string" },
        gpu: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (v.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const parts = (v.only?.split(",").map((p) => p.trim()) ?? [...PARTS]) as Part[];
  if (v.gpu && !parts.includes("gpu")) parts.push("gpu");
  const bad = parts.filter((p) => !ALL_PARTS.includes(p));
  if (bad.length > 0 || parts.length === 0) {
    console.error(`error: --only takes ${ALL_PARTS.join(", ")} (comma-separated), got "${v.only}"`);
    Deno.exit(2);
  }
  Deno.exit(await setup(parts, v["dry-run"] ?? false));
}
