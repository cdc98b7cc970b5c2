// Micro-benchmark for lib/blas on the wasm backend, median of --reps runs (default 7) after a warm-up:
// 1. matMul GFLOP/s, stock kernels vs OpenBLAS, at the shapes our model uses (all transposes);
// 2. one transformer block's training step (forward, backward, Adam) at the ViT and decoder sizes:
//    stock wasm (dense layers' gradients via explicit transposes, as stock wasm needs) / + OpenBLAS
//    kernels / + plain tf.matMul gradients (transposed sgemm) / + fused C GELU, layer norm and Adam.
//
//   deno run -A bench/blas_bench.ts [--reps 7] [--only NAME] [--skip matmul|block] [--profile] [--threads N]
//
// --profile also lists where the fastest block step spends its time, kernel by kernel.
//
// The machine is shared: compare medians, and rerun when numbers look odd.

import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { parseArgs } from "node:util";
import * as blasKernels from "../lib/blas/mod.ts";
import { registerKernels, unregisterKernels } from "../lib/ops/registry.ts";
import { adamComposite as adamOps, adamStep } from "../lib/ops/adam.ts";
import { gelu, geluComposite as geluOps } from "../lib/ops/activations.ts";
import { layerNorm, layerNormComposite as layerNormOps } from "../lib/ops/layer_norm.ts";

interface Shape {
  name: string;
  batch: number;
  m: number;
  k: number;
  n: number;
}

const SHAPES: Shape[] = [
  { name: "vit qkv/proj 592x512 @ 512x512", batch: 1, m: 16 * 37, k: 512, n: 512 },
  { name: "vit ffn 592x512 @ 512x2048", batch: 1, m: 16 * 37, k: 512, n: 2048 },
  { name: "vit attention 128 x (37x64 @ 64x37)", batch: 16 * 8, m: 37, k: 64, n: 37 },
  { name: "decoder ffn 800x128 @ 128x512", batch: 1, m: 16 * 50, k: 128, n: 512 },
];

const TRANSPOSES: [boolean, boolean][] = [[false, false], [true, false], [false, true]];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Median milliseconds of one matMul (kernels run synchronously on wasm, so no read-back is needed). */
function timeMatMul(shape: Shape, ta: boolean, tb: boolean, reps: number): number {
  const { batch, m, k, n } = shape;
  const lead = batch > 1 ? [batch] : [];
  const a = tf.randomNormal([...lead, ...(ta ? [k, m] : [m, k])]);
  const b = tf.randomNormal([...lead, ...(tb ? [n, k] : [k, n])]);
  const times: number[] = [];
  for (let r = 0; r <= reps; r++) {
    const t0 = performance.now();
    const c = tf.matMul(a, b, ta, tb);
    const t1 = performance.now();
    c.dispose();
    if (r > 0) times.push(t1 - t0); // run 0 warms up
  }
  tf.dispose([a, b]);
  return median(times);
}

function gflops(shape: Shape, ms: number): number {
  return (2 * shape.batch * shape.m * shape.k * shape.n) / (ms * 1e6);
}

// ---------------------------------------------------------------------------------------------
// A transformer block built from tfjs ops (pre-norm attention, then the original's ln2 + GELU FFN).

interface BlockSize {
  name: string;
  B: number;
  T: number;
  C: number;
  heads: number;
  causal: boolean;
}

const BLOCKS: BlockSize[] = [
  { name: "vit block 16x37x512", B: 16, T: 37, C: 512, heads: 8, causal: false },
  { name: "decoder block 16x50x128", B: 16, T: 50, C: 128, heads: 8, causal: true },
];

interface Ops {
  dense(x: tf.Tensor, w: tf.Tensor, b?: tf.Tensor): tf.Tensor;
  gelu(x: tf.Tensor): tf.Tensor;
  layerNorm(x: tf.Tensor, g: tf.Tensor, b: tf.Tensor): tf.Tensor;
  adam: typeof adamStep;
}

/** 2-D matmul whose gradient uses explicit transposes (what the stock wasm backend needs). */
const matmulTransposedGrad = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [a, b, save] = args as [tf.Tensor2D, tf.Tensor2D, tf.GradSaveFunc];
  save([a, b]);
  return {
    value: tf.matMul(a, b),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sa, sb] = saved as tf.Tensor2D[];
      return [tf.matMul(dy as tf.Tensor2D, tf.transpose(sb)), tf.matMul(tf.transpose(sa), dy as tf.Tensor2D)];
    },
  };
}) as (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor2D;

function denseWith(matmul: (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor2D): Ops["dense"] {
  return (x, w, b) => {
    const lead = x.shape.slice(0, -1);
    const y = matmul(tf.reshape(x, [-1, w.shape[0]]) as tf.Tensor2D, w as tf.Tensor2D); // (N, out)
    return tf.reshape(b ? tf.add(y, b) : y, [...lead, w.shape[1] as number]);
  };
}

const STOCK_OPS: Ops = {
  dense: denseWith(matmulTransposedGrad),
  gelu: geluOps,
  layerNorm: layerNormOps,
  adam: adamOps,
};
const PLAIN_MATMUL_OPS: Ops = { ...STOCK_OPS, dense: denseWith((a, b) => tf.matMul(a, b)) };
const FUSED_OPS: Ops = { dense: denseWith((a, b) => tf.matMul(a, b)), gelu, layerNorm, adam: adamStep };

function makeParams(C: number): Record<string, tf.Variable> {
  const w = (shape: number[]) => tf.variable(tf.randomNormal(shape, 0, 1 / Math.sqrt(shape[0])));
  return {
    ln1g: tf.variable(tf.ones([C])),
    ln1b: tf.variable(tf.zeros([C])),
    qkv: w([C, 3 * C]),
    proj: w([C, C]),
    projB: tf.variable(tf.zeros([C])),
    ln2g: tf.variable(tf.ones([C])),
    ln2b: tf.variable(tf.zeros([C])),
    fc1: w([C, 4 * C]),
    fc1B: tf.variable(tf.zeros([4 * C])),
    fc2: w([4 * C, C]),
    fc2B: tf.variable(tf.zeros([C])),
  };
}

function blockForward(x: tf.Tensor, p: Record<string, tf.Variable>, size: BlockSize, ops: Ops): tf.Tensor {
  const { B, T, C, heads } = size;
  const hs = C / heads;
  const split = (t: tf.Tensor) => tf.transpose(tf.reshape(t, [B, T, heads, hs]), [0, 2, 1, 3]); // (B, nh, T, hs)
  const [q, k, v] = tf.split(ops.dense(ops.layerNorm(x, p.ln1g, p.ln1b), p.qkv), 3, -1).map(split);
  let att = tf.mul(tf.matMul(q, k, false, true), C ** -0.5); // (B, nh, T, T)
  if (size.causal) att = tf.add(att, tf.mul(tf.sub(tf.linalg.bandPart(tf.ones([T, T]), -1, 0), 1), 1e9)); // causal mask
  const heads_ = tf.matMul(tf.softmax(att), v); // (B, nh, T, hs)
  const merged = tf.reshape(tf.transpose(heads_, [0, 2, 1, 3]), [B, T, C]); // (B, T, C)
  const h = tf.add(x, ops.dense(merged, p.proj, p.projB)); // (B, T, C)
  const n = ops.layerNorm(h, p.ln2g, p.ln2b);
  return tf.add(n, ops.dense(ops.gelu(ops.dense(n, p.fc1, p.fc1B)), p.fc2, p.fc2B)); // (B, T, C)
}

/** A block's training step (forward, backward, Adam), ready to run repeatedly; dispose() when done. */
function blockStep(size: BlockSize, ops: Ops): { run: (step: number) => void; dispose: () => void } {
  const p = makeParams(size.C);
  const vars = Object.values(p);
  const moments: tf.Tensor[][] = vars.map((v) => [tf.zerosLike(v), tf.zerosLike(v)]);
  const x = tf.randomNormal([size.B, size.T, size.C]);
  const target = tf.randomNormal([size.B, size.T, size.C]);
  const run = (step: number) =>
    tf.tidy(() => {
      const { grads } = tf.variableGrads(
        () => tf.sum(tf.mul(blockForward(x, p, size, ops), target)) as tf.Scalar,
        vars,
      );
      vars.forEach((v, i) => {
        const [m, s] = moments[i];
        const out = ops.adam(v, m, s, grads[v.name], { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, step });
        v.assign(out.p);
        moments[i] = [tf.keep(out.m), tf.keep(out.v)];
        tf.dispose([m, s]);
      });
    });
  return { run, dispose: () => tf.dispose([...vars, ...moments.flat(), x, target]) };
}

/** Median ms of forward + backward + Adam for one block. */
function timeBlock(size: BlockSize, ops: Ops, reps: number): number {
  const step = blockStep(size, ops);
  const times: number[] = [];
  for (let r = 0; r <= reps; r++) {
    const t0 = performance.now();
    step.run(r + 1);
    if (r > 0) times.push(performance.now() - t0);
  }
  step.dispose();
  return median(times);
}

/** Prints the kernels one fused block step spends its time in (nested kernels counted in their parent too). */
async function profileBlock(size: BlockSize): Promise<void> {
  const step = blockStep(size, FUSED_OPS);
  step.run(1);
  const info = await tf.profile(() => step.run(2));
  step.dispose();
  const byName = new Map<string, { ms: number; calls: number }>();
  for (const k of info.kernels) {
    const entry = byName.get(k.name) ?? { ms: 0, calls: 0 };
    entry.ms += (await k.kernelTimeMs) as number;
    entry.calls += 1;
    byName.set(k.name, entry);
  }
  console.log(`\nprofile of one ${size.name} step with the fused ops (kernel, ms, calls):`);
  for (const [name, { ms, calls }] of [...byName].sort((a, b) => b[1].ms - a[1].ms).slice(0, 15)) {
    console.log(`  ${name.padEnd(22)}${ms.toFixed(2).padStart(9)}${String(calls).padStart(6)}`);
  }
}

/** The fast path as lib/backend.ts sets it up: the overrides, and our fused kernels under the ops' names. */
async function enableBlasKernels(): Promise<blasKernels.EnableResult> {
  const result = await blasKernels.enableBlasKernels();
  if (result.ok) registerKernels("wasm", blasKernels.fusedKernels());
  return result;
}

function disableBlasKernels(): void {
  blasKernels.disableBlasKernels();
  unregisterKernels("wasm");
}

async function benchMatMul(reps: number, only?: string): Promise<void> {
  console.log(["shape", "op", "stock ms", "stock GF/s", "blas ms", "blas GF/s", "speed-up"].join("\t"));
  for (const shape of SHAPES) {
    if (only && !shape.name.includes(only)) continue;
    for (const [ta, tb] of TRANSPOSES) {
      const op = `A${ta ? "ᵀ" : ""}B${tb ? "ᵀ" : ""}`;
      disableBlasKernels();
      const stockMs = timeMatMul(shape, ta, tb, reps);
      await enableBlasKernels();
      const blasMs = timeMatMul(shape, ta, tb, reps);
      console.log([
        shape.name,
        op,
        stockMs.toFixed(2),
        gflops(shape, stockMs).toFixed(1),
        blasMs.toFixed(2),
        gflops(shape, blasMs).toFixed(1),
        `${(stockMs / blasMs).toFixed(1)}x`,
      ].join("\t"));
    }
  }
}

async function benchBlocks(reps: number, only: string | undefined, profile: boolean): Promise<void> {
  const header = [
    "\nblock step (fwd+bwd+Adam), ms",
    "stock wasm",
    "+blas kernels",
    "+plain matMul grads",
    "+fused C ops",
  ];
  console.log(header.join("\t"));
  for (const size of BLOCKS) {
    if (only && !size.name.includes(only)) continue;
    disableBlasKernels();
    const stock = timeBlock(size, STOCK_OPS, reps);
    await enableBlasKernels();
    const blas = timeBlock(size, STOCK_OPS, reps);
    const plain = timeBlock(size, PLAIN_MATMUL_OPS, reps);
    const fused = timeBlock(size, FUSED_OPS, reps);
    console.log(
      [size.name, stock, blas, plain, fused].map((v) => (typeof v === "number" ? v.toFixed(1) : v)).join(
        "\t",
      ),
    );
  }
  if (profile) { for (const size of BLOCKS) if (!only || size.name.includes(only)) await profileBlock(size); }
}

async function main(): Promise<void> {
  const args = parseArgs({
    args: Deno.args,
    options: {
      reps: { type: "string" },
      only: { type: "string" },
      skip: { type: "string" },
      profile: { type: "boolean" },
      threads: { type: "string" },
    },
  });
  const reps = Math.max(1, Number(args.values.reps ?? 7));
  await tf.setBackend("wasm");
  const enabled = await enableBlasKernels();
  if (!enabled.ok) {
    console.error(`OpenBLAS kernels unavailable: ${enabled.reason}`);
    Deno.exit(1);
  }
  const blas = blasKernels.activeBlas()!;
  if (args.values.threads) blas.setNumThreads(Number(args.values.threads));
  console.log(`OpenBLAS: ${blas.path} (${blas.config}), threads ${blas.numThreads()}; ${enabled.native}`);
  console.log(`median of ${reps} runs; the machine is shared, so treat differences under ~25% as noise\n`);
  if (args.values.skip !== "matmul") await benchMatMul(reps, args.values.only);
  if (args.values.skip !== "block") await benchBlocks(reps, args.values.only, args.values.profile === true);
}

if (import.meta.main) await main();
