// The same weights give the same numbers on the cpu and wasm backends (wasm with OpenBLAS matmuls when
// libopenblas is installed): forward, gradients, and a few Adam steps.

import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../lib/backend.ts";
import type { ModelConfig } from "../lib/config.ts";
import { Ctx, type StateDict } from "../lib/model/ops.ts";
import { VisionLanguageModel } from "../lib/model/vision_language_model.ts";
import { Adam } from "../lib/optim.ts";
import { assertClose, tinyConfig } from "./helpers.ts";

interface Run {
  logits: Float32Array;
  grads: Float32Array[];
  losses: number[];
}

/** The original's layout with patch tokens, and the seeing recipe's parts: conv stem, word head, word loss. */
const CONFIGS = {
  cls: tinyConfig(), // the default: the ViT's last block runs the CLS row alone (forwardFirst)
  patches: tinyConfig({ visual_tokens: "patches" }),
  seeing: tinyConfig({
    visual_tokens: "patches",
    patch_stem: "conv",
    patch_size: 8,
    first_token_from_image: true,
    residual: "pre_norm",
    attention_scale: "head",
    image_words: ["red", "star", "at"],
  }),
};

function runOn(config: ModelConfig, state: StateDict | null): { run: Run; state: StateDict } {
  const model = new VisionLanguageModel(config, 21);
  if (state) model.loadState("", state);
  const images = tf.randomNormal([3, 3, 32, 32], 0, 1, "float32", 4) as tf.Tensor4D;
  const idx = tf.tensor2d([[1, 5, 9, 12], [3, 4, 65, 65], [40, 41, 42, 43]], undefined, "int32");
  const targets = tf.tensor2d([[5, 9, 12, 65], [4, 65, 65, 65], [41, 42, 43, 65]], undefined, "int32");
  const logits = tf.tidy(() => model.forward(images, idx, Ctx.eval()).dataSync() as Float32Array);
  const vars = model.variables();
  const words = tf.tensor2d([[1, 0, 1], [0, 0, 0], [1, 1, 1]]);
  const skip = Uint8Array.from([0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]); // (B, T): a swapped word's characters
  const loss = () => model.loss(images, idx, targets, Ctx.eval(), "first", { skip, words, wordLoss: 0.5 });
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
  Deno.test(`cpu and wasm agree within 1e-4 on forward, gradients and Adam steps (${name})`, async () => {
    await initBackend("cpu");
    const initial = new VisionLanguageModel(config, 21).stateDict();
    const cpu = runOn(config, initial);
    const info = await initBackend("wasm");
    console.log(`wasm: ${info.notes.join("; ") || "stock kernels"}`);
    const wasm = runOn(config, initial);
    assertClose(wasm.run.logits, cpu.run.logits, 1e-4, "logits");
    cpu.run.grads.forEach((g, i) => assertClose(wasm.run.grads[i], g, 1e-4, `gradient ${i}`));
    assertClose(wasm.run.losses, cpu.run.losses, 1e-4, "losses over 3 Adam steps");
    for (const [key, t] of cpu.state) assertClose(wasm.state.get(key)!.data, t.data, 1e-4, key);
  });
}
