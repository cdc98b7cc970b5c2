// Speed and memory of one configuration (the original's, unless flags say otherwise):
//   deno task bench [--backend B] [--model seemore|seemoe] [--batch N] [--steps N] [--json]
// Train step and forward: medians of --steps timed runs after warm-up. Generation: tokens per second
// for one image and 40 new tokens with the KV cache. Peak RSS: the process's high-water mark.

import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { initBackend } from "../lib/backend.ts";
import { DEFAULT_MODEL, DEFAULT_TRAIN } from "../lib/config.ts";
import { generate } from "../lib/generate.ts";
import { buildModel } from "../lib/model/factory.ts";
import { Ctx } from "../lib/model/ops.ts";
import { Adam } from "../lib/optim.ts";

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Peak resident memory in MiB (Linux VmHWM; elsewhere the current RSS). */
export function peakRssMiB(): number {
  try {
    const status = Deno.readTextFileSync("/proc/self/status");
    const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1]);
    if (kb) return kb / 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss / 2 ** 20;
}

function time(f: () => void): number {
  const t0 = performance.now();
  f();
  return performance.now() - t0;
}

export interface BenchResult {
  backend: string;
  backend_notes: string[];
  model_type: string;
  batch_size: number;
  caption_length: number;
  train_step_ms: number;
  forward_ms: number;
  generate_tokens_per_s: number;
  peak_rss_mib: number;
  train_step_gflop: number;
  train_gflop_per_s: number;
}

/** FLOPs of the matmuls in one forward pass (a train step ≈ 3×). */
function forwardFlops(c: typeof DEFAULT_MODEL, B: number, T: number): number {
  const np = (c.img_size / c.patch_size) ** 2;
  const D = c.image_embed_dim, C = c.n_embd, N = np + 1, L = T + 1;
  const vit = 2 * B * np * 3 * c.patch_size ** 2 * D +
    c.num_blks * (2 * B * N * D * (3 * D + D + 8 * D) + 4 * B * N * N * D);
  const proj = 2 * B * (D * 4 * D + 4 * D * C);
  const ffn = c.model_type === "seemoe" ? c.top_k * 8 * C : 8 * C;
  const dec = c.n_layer * (2 * B * L * C * (4 * C) + 2 * B * L * ffn * C + 4 * B * L * L * C);
  return vit + proj + dec + 2 * B * L * C * 66;
}

export async function bench(opts: { backend?: string; model?: string; batch?: number; steps?: number }): Promise<BenchResult> {
  const info = await initBackend(opts.backend);
  const B = opts.batch ?? DEFAULT_TRAIN.batch_size;
  const T = 49; // a 49-character caption, 50 positions with the visual token
  const config = { ...DEFAULT_MODEL, model_type: (opts.model ?? "seemore") as "seemore" | "seemoe", vocab_size: 66 };
  const model = buildModel(config, 1);
  const opt = new Adam(model.variables(), 1e-3);
  const images = tf.randomNormal([B, 3, config.img_size, config.img_size], 0, 1, "float32", 1) as tf.Tensor4D;
  const idx = tf.randomUniform([B, T], 0, 65, "int32", 2) as tf.Tensor2D;
  const targets = tf.randomUniform([B, T], 0, 66, "int32", 3) as tf.Tensor2D;
  const steps = opts.steps ?? 10;

  const trainOnce = (step: number) => {
    const { value, grads } = tf.variableGrads(
      () => model.loss(images, idx, targets, new Ctx(true, 1, step), "first"),
      opt.params,
    );
    opt.update(opt.params.map((p) => grads[p.name]));
    value.dataSync();
    tf.dispose([value, ...Object.values(grads)]);
  };
  const forwardOnce = () => tf.tidy(() => model.forward(images, idx, Ctx.eval()).dataSync());

  for (let i = 0; i < 2; i++) trainOnce(i); // warm-up: kernels compiled, buffers allocated
  const trainMs = median(Array.from({ length: steps }, (_, i) => time(() => trainOnce(i + 2))));
  forwardOnce();
  const forwardMs = median(Array.from({ length: steps }, () => time(forwardOnce)));
  const one = tf.slice(images, [0, 0, 0, 0], [1, -1, -1, -1]) as tf.Tensor4D;
  // Count only full 40-token runs: a <pad> would stop early, so forbid nothing and time what was made.
  generate(model, one, { maxNewTokens: 5, prompt: [1] });
  const genRuns = Array.from({ length: 3 }, () => {
    let n = 0;
    const ms = time(() => {
      n = generate(model, one, { maxNewTokens: 40, prompt: [1] })[0].length;
    });
    return Math.max(n, 1) / (ms / 1000);
  });
  const gflop = 3 * forwardFlops(config, B, T) / 1e9;
  const result: BenchResult = {
    backend: info.name,
    backend_notes: info.notes,
    model_type: config.model_type,
    batch_size: B,
    caption_length: T,
    train_step_ms: trainMs,
    forward_ms: forwardMs,
    generate_tokens_per_s: median(genRuns),
    peak_rss_mib: peakRssMiB(),
    train_step_gflop: gflop,
    train_gflop_per_s: gflop / (trainMs / 1000),
  };
  tf.dispose([images, idx, targets, one]);
  opt.dispose();
  model.dispose();
  return result;
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      backend: { type: "string" },
      model: { type: "string" },
      batch: { type: "string" },
      steps: { type: "string" },
      json: { type: "boolean" },
    },
  });
  const r = await bench({
    backend: v.backend,
    model: v.model,
    batch: v.batch ? Number(v.batch) : undefined,
    steps: v.steps ? Number(v.steps) : undefined,
  });
  if (v.json) console.log(JSON.stringify(r));
  else {
    console.log(`backend ${r.backend}${r.backend_notes.length ? ` (${r.backend_notes.join("; ")})` : ""}`);
    console.log(`model ${r.model_type}, batch ${r.batch_size}, caption ${r.caption_length} characters`);
    console.log(`train step      ${r.train_step_ms.toFixed(1)} ms (median)  ≈ ${r.train_gflop_per_s.toFixed(1)} GFLOP/s of ${r.train_step_gflop.toFixed(1)} GFLOP`);
    console.log(`forward         ${r.forward_ms.toFixed(1)} ms (median)`);
    console.log(`generate        ${r.generate_tokens_per_s.toFixed(1)} tokens/s (batch 1, up to 40 tokens, KV cache)`);
    console.log(`peak RSS        ${r.peak_rss_mib.toFixed(0)} MiB`);
  }
}
