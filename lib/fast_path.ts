// The main jobs' start (train, eval, generate, bench): the backend, with the fast CPU path checked.
//
// On the wasm backend the fast path is OpenBLAS + our C kernels + oneDNN (lib/blas/). When part of it is
// missing and setup can install it without a prompt (lib/setup.ts: root or passwordless sudo, apt), the
// job runs setup's "fast" part first (one line says so; SEEMORE_NO_SETUP=1 turns this off) and starts the
// backend again on it. When it cannot, the job says what to run, and train (SpeedReport) says how long it
// will take on the path it runs and on the fast one.

import { type BackendInfo, initBackend } from "./backend.ts";
import { disableBlasKernels } from "./blas/kernels.ts";
import { duration } from "./progress.ts";
import {
  describe,
  detectSystem,
  type FastPathStatus,
  type Plan,
  planSetup,
  probeFastPath,
  runInstall,
  shellLine,
} from "./setup.ts";

/** Which CPU path the wasm backend runs: all of it, or what it lacks. */
export type PathKind = "fast" | "no-onednn" | "no-kernels" | "stock";

/**
 * The seeing recipe's training speed (steps/s, batch 16) on each path, on the 2-core AMD EPYC of
 * bench/README.md ("Without the fast path"). Only ratios are used: a run's own speed on its path times
 * fast / that path estimates its speed with the fast path on the same machine.
 */
export const REFERENCE_STEPS_PER_S: Record<PathKind, number> = {
  "fast": 4800 / 365,
  "no-onednn": 4800 / 381,
  "no-kernels": 1.5, // rough: measured on a loaded machine (bench/README.md)
  "stock": 0.72,
};

export function pathKind(s: FastPathStatus): PathKind {
  if (!s.openblas.ok) return "stock";
  if (!s.kernels.ok) return "no-kernels";
  if (!s.onednn.ok && !s.onednn.off) return "no-onednn";
  return "fast";
}

export const PATH_WORDS: Record<PathKind, string> = {
  "fast": "wasm + OpenBLAS + C kernels + oneDNN",
  "no-onednn": "wasm + OpenBLAS + C kernels, without oneDNN",
  "no-kernels": "wasm + OpenBLAS, without the C kernels",
  "stock": "stock wasm",
};

export interface Started {
  info: BackendInfo;
  /** The CPU path in use; null when there is nothing to check (another backend, or SEEMORE_BLAS=0). */
  path: PathKind | null;
  /** What to run for the fast path when it is still missing (a shell line, or what to install). */
  fix: string | null;
}

/**
 * Starts the backend as initBackend does; on the wasm backend checks the fast path and, when it is
 * missing, sets it up (when that needs no prompt and SEEMORE_NO_SETUP is not 1) or says what to run.
 * `log`: where the lines go (stderr).
 */
export async function startBackend(
  requested?: string,
  log: (line: string) => void = console.error,
): Promise<Started> {
  let info = await initBackend(requested);
  if (info.name !== "wasm" || Deno.env.get("SEEMORE_BLAS") === "0") return { info, path: null, fix: null };
  let status = probeFastPath();
  for (const problem of status.problems) log(`fast CPU path: ${problem}`); // no package fixes these
  if (status.needs.length === 0) return { info, path: pathKind(status), fix: null };

  const sys = await detectSystem();
  let plan = planSetup(status.needs, false, sys, Deno.execPath());
  if (plan.promptFree && plan.install.length > 0 && Deno.env.get("SEEMORE_NO_SETUP") !== "1") {
    log(
      `fast CPU path: ${missingWords(status)} missing; running setup first: ` +
        `${shellLine(plan.install.at(-1)!)} (SEEMORE_NO_SETUP=1 skips this)`,
    );
    const t0 = performance.now();
    const err = await runInstall(plan);
    if (err) log(`setup failed: ${err}`);
    // Start again on what is there now: the loaders forget their failures and try once more.
    disableBlasKernels();
    status = probeFastPath(true);
    info = await initBackend(requested);
    if (status.needs.length === 0) {
      log(`fast CPU path: set up in ${duration((performance.now() - t0) / 1000)}`);
      return { info, path: pathKind(status), fix: null };
    }
    for (const line of describe({ fast: status })) log(`after setup: ${line}`);
    plan = planSetup(status.needs, false, sys, Deno.execPath());
  }
  const fix = fixOf(plan);
  const kind = pathKind(status);
  log(
    `fast CPU path: ${missingWords(status)} missing; this job runs on ${PATH_WORDS[kind]}, ` +
      `≈ ${factor(kind)} slower on the seeing recipe; to fix: ${fix}`,
  );
  return { info, path: kind, fix };
}

function missingWords(s: FastPathStatus): string {
  const names = [
    ...(s.openblas.ok ? [] : ["OpenBLAS"]),
    ...(s.onednn.ok || s.onednn.off ? [] : ["oneDNN"]),
    ...(s.kernels.ok ? [] : ["a C compiler for the kernels"]),
  ];
  return names.join(", ");
}

/** The command a user runs for the fast path: the install (with sudo where needed), or what to do. */
function fixOf(plan: Plan): string {
  const lines = plan.manual.length > 0 ? plan.manual : plan.install.map(shellLine);
  if (lines.length > 0) return lines.join(" && ");
  return plan.unsupported.join("; ");
}

/** How much faster the fast path is than `kind`, by the reference figures. */
export function speedup(kind: PathKind): number {
  return REFERENCE_STEPS_PER_S.fast / REFERENCE_STEPS_PER_S[kind];
}

/** The speed-up in words: "18×", or "4 %" for a small one. */
function factor(kind: PathKind): string {
  const r = speedup(kind);
  return r < 1.5 ? `${Math.round(100 * (r - 1))} %` : `${r.toFixed(0)}×`;
}

/**
 * Train's line on the time it will take: after about ten steps (the first is left out: it compiles and
 * warms up), this run's steps at its measured speed, and the same with the fast path (the measured speed
 * times the reference ratio of REFERENCE_STEPS_PER_S).
 */
export class SpeedReport {
  private start: { done: number; seconds: number } | null = null;
  private reported = false;

  constructor(
    readonly total: number,
    readonly path: PathKind,
    readonly fix: string,
    readonly log: (line: string) => void = console.error,
    readonly window = 10,
  ) {}

  /** After each step: steps done and training seconds so far (TrainRun.onStep). */
  onStep(done: number, seconds: number): void {
    if (this.reported) return;
    if (!this.start) {
      this.start = { done, seconds };
      if (done < this.total) return;
    }
    if (done - this.start.done < this.window && done < this.total) return;
    this.reported = true;
    // Steps after the first one timed; a job of one step has only that one.
    const steps = done - this.start.done || done;
    const secs = (done - this.start.done ? seconds - this.start.seconds : seconds) || 1e-9;
    const rate = steps / secs;
    const runSteps = this.total - (this.start.done - 1); // a resumed run counts from where it started
    const fastRate = rate * speedup(this.path);
    this.log(
      `this run: ${runSteps} steps at ${rate.toFixed(2)} steps/s ≈ ${duration(runSteps / rate)}; ` +
        `with the fast path ≈ ${duration(runSteps / fastRate)} (${factor(this.path)} faster: ` +
        `the seeing recipe's ratio on the reference machine, bench/README.md): run \`${this.fix}\``,
    );
  }
}
