// Where a train step spends its time, kernel by kernel, from tf.profile (the engine times every kernel
// it runs; the wasm backend's timer is a plain clock around the synchronous kernel call).
//
//   const p = await profileKernels(() => trainOnce());
//   console.log(formatProfile(p, 10));
//
// Only registered kernels are counted: custom-gradient scopes ("forward", "fusedMatMul__op") wrap
// kernels that are already listed, so counting them too would count time twice. What is left of
// the wall time is tfjs's own bookkeeping (tape, tidy, tensor objects) and our JS between kernels.

import * as tf from "@tensorflow/tfjs";

export interface KernelRow {
  name: string;
  ms: number;
  calls: number;
  /** Floating-point operations of the matmul kernels (0 for the others). */
  flop: number;
}

export interface KernelProfile {
  wall_ms: number;
  kernel_ms: number;
  kernel_calls: number;
  /** Rows by time, slowest first. */
  kernels: KernelRow[];
}

const MATMULS = new Set(["BatchMatMul", "_FusedMatMul"]);

/** FLOPs of a matmul from its shapes: out [..., m, n]; a holds batch·m·k elements whatever its transpose. */
export function matmulFlop(aShape: number[], outShape: number[]): number {
  const m = outShape[outShape.length - 2], n = outShape[outShape.length - 1];
  const batch = outShape.slice(0, -2).reduce((x, y) => x * y, 1);
  const aBatch = aShape.slice(0, -2).reduce((x, y) => x * y, 1);
  const k = (aShape[aShape.length - 1] * aShape[aShape.length - 2]) / m;
  return aBatch > 0 && m > 0 ? 2 * batch * m * n * k : 0;
}

/** Runs f once under tf.profile and sums kernel times by kernel name. */
export async function profileKernels(f: () => unknown): Promise<KernelProfile> {
  const known = new Set(tf.getKernelsForBackend(tf.getBackend()).map((k) => k.kernelName));
  const t0 = performance.now();
  const info = await tf.profile(async () => void (await f()));
  const wall = performance.now() - t0;
  const rows = new Map<string, KernelRow>();
  let total = 0, calls = 0;
  for (const k of info.kernels) {
    if (!known.has(k.name)) continue;
    const ms = Number(await k.kernelTimeMs);
    const row = rows.get(k.name) ?? { name: k.name, ms: 0, calls: 0, flop: 0 };
    row.ms += ms;
    row.calls += 1;
    if (MATMULS.has(k.name) && k.inputShapes[0] && k.outputShapes[0]) {
      row.flop += matmulFlop(k.inputShapes[0], k.outputShapes[0]);
    }
    rows.set(k.name, row);
    total += ms;
    calls += 1;
  }
  return {
    wall_ms: wall,
    kernel_ms: total,
    kernel_calls: calls,
    kernels: [...rows.values()].sort((a, b) => b.ms - a.ms),
  };
}

/** A small table: the `top` slowest kernels, their share of the wall time, and GFLOP/s for matmuls. */
export function formatProfile(p: KernelProfile, top = 10, what = "one train step"): string {
  const lines = [
    `per-kernel profile of ${what}: wall ${p.wall_ms.toFixed(0)} ms, kernels ${
      p.kernel_ms.toFixed(0)
    } ms in ${p.kernel_calls} calls, outside kernels ${(p.wall_ms - p.kernel_ms).toFixed(0)} ms`,
    `  ${"kernel".padEnd(24)}${"ms".padStart(8)}${"share".padStart(7)}${"calls".padStart(7)}  GFLOP/s`,
  ];
  for (const r of p.kernels.slice(0, top)) {
    const share = `${(100 * r.ms / p.wall_ms).toFixed(0)}%`;
    const rate = r.flop > 0 && r.ms > 0 ? (r.flop / 1e6 / r.ms).toFixed(1) : "";
    lines.push(
      `  ${r.name.padEnd(24)}${r.ms.toFixed(1).padStart(8)}${share.padStart(7)}${
        String(r.calls).padStart(7)
      }  ${rate}`,
    );
  }
  if (p.kernels.some((r) => r.name === "SeemoreBlock" || r.name === "SeemoreBlockGrad")) {
    lines.push(
      "  (SeemoreBlock / SeemoreBlockGrad: whole transformer blocks, their matmuls included; --layers shows inside)",
    );
  }
  return lines.join("\n");
}
