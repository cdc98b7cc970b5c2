// What routing seeMoE's experts on the device costs: one SparseMoE layer, forward and backward, at
// the original's decoder shapes (16 × 50 tokens, n_embd 128, 8 experts, top 2), with
//   sparse: the router's logits read back, each expert on its own tokens;
//   device: top-k on the device, every expert on every token with zero gates for the rest:
//           num_experts / top_k times the experts' FLOPs, no read-back (both lib/ops/experts.ts).
// WebGPU under Deno cannot read synchronously inside a gradient, so there only "device" runs.
//
//   deno run -A bench/moe_routing.ts [--backend B] [--steps N] [--tokens N] [--json]

import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { initBackend } from "../lib/backend.ts";
import { SparseMoE } from "../lib/model/moe.ts";
import { ForwardContext, Initialiser } from "../lib/model/module.ts";
import { backendExtras, registerExtras } from "../lib/ops/registry.ts";
import { median } from "./bench.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    backend: { type: "string" },
    steps: { type: "string" },
    tokens: { type: "string" },
    json: { type: "boolean" },
  },
});
const info = await initBackend(v.backend);
const steps = Number(v.steps ?? 7);
const tokens = Number(v.tokens ?? 16 * 50);
const C = 128, E = 8, K = 2;

const moe = new SparseMoE(C, 0.1, {
  numExperts: E,
  topK: K,
  capacityFactor: 0,
  routerNoiseInEval: false,
  auxLoss: false,
}, new Initialiser(1));
const x = tf.randomNormal([tokens, C], 0, 1, "float32", 2) as tf.Tensor2D;
const vars = moe.variables();

/** One forward + backward through the layer, until the gradients are on the host; milliseconds. */
async function step(device: boolean, s: number): Promise<number> {
  registerExtras(tf.getBackend(), { ...backendExtras(), deviceOnly: device }); // the mixture's route
  const t0 = performance.now();
  const { value, grads } = tf.variableGrads(
    () => tf.sum(tf.square(moe.forward(x, new ForwardContext(true, 3, s)))) as tf.Scalar,
    vars,
  );
  await Promise.all(Object.values(grads).map((g) => g.data()));
  const ms = performance.now() - t0;
  tf.dispose([value, ...Object.values(grads)]);
  return ms;
}

const modes = info.name === "webgpu" ? [true] : [false, true];
const result: Record<string, number> = {};
for (const device of modes) {
  await step(device, 0); // warm-up
  const times: number[] = [];
  for (let s = 1; s <= steps; s++) times.push(await step(device, s));
  result[device ? "device_ms" : "sparse_ms"] = median(times);
}
// Matmul FLOPs of the experts, forward and backward (×3): each token through k (sparse) or E experts.
const expertFlops = (experts: number) => 3 * 2 * tokens * experts * (C * 4 * C + 4 * C * C);
const out = {
  backend: info.name,
  notes: info.notes,
  tokens,
  ...result,
  expert_gflop_sparse: expertFlops(K) / 1e9,
  expert_gflop_device: expertFlops(E) / 1e9,
};
console.log(v.json ? JSON.stringify(out) : out);
tf.dispose(x);
moe.dispose();
