// The same weights give the same numbers on the cpu and wasm backends (wasm with OpenBLAS / oneDNN
// products and the C kernels where they load): forward, gradients, and a few Adam steps.
//
// Tolerances. The backends sum in different orders (tfjs's loops, OpenBLAS's or oneDNN's kernels, which
// differ by processor), so results agree to float32 rounding, not bit for bit. A sum of K terms is within
// γ_K ≈ K · 6e-8 of exact relative to its terms; the tiny model's longest sums have K ≤ 128 (γ ≈ 7.6e-6),
// and measured differences stay below 1e-6 of each tensor's largest value. So values and gradients must
// agree within RTOL = 1e-5 of the tensor's largest value. Adam steps each weight by about ±lr whatever its
// gradient's size, so a weight whose gradient is at rounding level moves by ±lr either way: its update
// cannot be compared element by element (measured: 2 of 77,442 weights). The updates after three steps are
// compared as a whole instead (norm of the difference within 1 % of the update's norm; measured ≤ 0.1 %).

import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../lib/backend.ts";
import type { ModelConfig } from "../lib/config.ts";
import { ForwardContext, type StateDict } from "../lib/model/module.ts";
import { VisionLanguageModel } from "../lib/model/vision_language_model.ts";
import { Adam } from "../lib/optim.ts";
import { assertRelClose, normOfDiff, tinyConfig, tinySeeingConfig } from "./helpers.ts";
import { captionLoss } from "../lib/objective.ts";

const RTOL = 1e-5;
const UPDATE_RTOL = 1e-2;

interface Run {
  logits: Float32Array;
  grads: Float32Array[];
  losses: number[];
}

/** The original's layout, with patch tokens, and the seeing recipe's parts: conv stem, word head, word loss. */
const CONFIGS = {
  cls: tinyConfig(), // the ViT's last block computes the CLS row alone
  patches: tinyConfig({ visual_tokens: "patches" }),
  seeing: tinySeeingConfig(),
};

function runOn(config: ModelConfig, state: StateDict | null): { run: Run; state: StateDict } {
  const model = new VisionLanguageModel(config, 21);
  if (state) model.loadStateDict(state);
  const images = tf.randomNormal([3, 3, 32, 32], 0, 1, "float32", 4) as tf.Tensor4D;
  const idx = tf.tensor2d([[1, 5, 9, 12], [3, 4, 65, 65], [40, 41, 42, 43]], undefined, "int32");
  const targets = tf.tensor2d([[5, 9, 12, 65], [4, 65, 65, 65], [41, 42, 43, 65]], undefined, "int32");
  const logits = tf.tidy(() => model.forward(images, idx, ForwardContext.eval()).dataSync() as Float32Array);
  const vars = model.variables();
  const words = tf.tensor2d([[1, 0, 1], [0, 0, 0], [1, 1, 1]]);
  const skip = Uint8Array.from([0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]); // (B, T): a swapped word's characters
  const loss = () =>
    captionLoss(model, images, idx, targets, ForwardContext.eval(), "first", { skip, words, wordLoss: 0.5 });
  const { grads } = tf.variableGrads(loss, vars);
  const gradData = vars.map((v) => grads[v.name].dataSync() as Float32Array);
  tf.dispose(Object.values(grads));
  const opt = new Adam(vars, 1e-3);
  const losses: number[] = [];
  for (let s = 0; s < 3; s++) {
    const { value, grads: g } = tf.variableGrads(loss, vars);
    losses.push(value.dataSync()[0]);
    opt.update(vars.map((v) => g[v.name]));
    tf.dispose([value, ...Object.values(g)]);
  }
  const saved = model.stateDict();
  opt.dispose();
  model.dispose();
  tf.dispose([images, idx, targets, words]);
  return { run: { logits, grads: gradData, losses }, state: saved };
}

for (const [name, config] of Object.entries(CONFIGS)) {
  Deno.test(`cpu and wasm agree to float32 rounding on forward, gradients and Adam steps (${name})`, async () => {
    await initBackend("cpu");
    const initial = new VisionLanguageModel(config, 21).stateDict();
    const cpu = runOn(config, initial);
    const info = await initBackend("wasm");
    console.log(`wasm: ${info.notes.join("; ") || "stock kernels"}`);
    const wasm = runOn(config, initial);
    assertRelClose(wasm.run.logits, cpu.run.logits, RTOL, "logits");
    cpu.run.grads.forEach((g, i) => assertRelClose(wasm.run.grads[i], g, RTOL, `gradient ${i}`));
    assertRelClose(wasm.run.losses, cpu.run.losses, RTOL, "losses over 3 Adam steps");
    for (const [key, t] of cpu.state) {
      const before = initial.get(key)!.data, after = wasm.state.get(key)!.data;
      const update = normOfDiff(t.data, before); // how far three Adam steps moved this tensor on cpu
      const apart = normOfDiff(after, t.data); // how far wasm's weights are from cpu's
      if (!(apart <= UPDATE_RTOL * update)) {
        throw new Error(
          `${key}: after 3 Adam steps |wasm − cpu| = ${apart} > ${UPDATE_RTOL} · |update| (${update})`,
        );
      }
    }
  });
}
