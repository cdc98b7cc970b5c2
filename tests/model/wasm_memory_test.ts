// On wasm with the fast CPU path (OpenBLAS and the C kernels, when they load), training steps, eval
// forwards and generation must leave no tensors behind: the fused kernels (attention, the ViT's
// first-position attention, seeMoE's experts, dispatch and combine) save tensors for their gradients
// and must free them. (Its own file: it switches backends.)

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initBackend } from "../../lib/backend.ts";
import { generate } from "../../lib/generate.ts";
import { VisionMoELanguageModel } from "../../lib/model/moe.ts";
import { ForwardContext } from "../../lib/model/module.ts";
import { VisionLanguageModel } from "../../lib/model/vision_language_model.ts";
import { Adam } from "../../lib/optim.ts";
import { tinyConfig } from "../helpers.ts";
import { captionLoss } from "../../lib/objective.ts";

for (const kind of ["seemore", "seemoe"] as const) {
  Deno.test(`${kind} on wasm: training, eval and generation leave no tensors behind`, async () => {
    await initBackend("wasm");
    const config = kind === "seemore"
      ? tinyConfig({})
      : tinyConfig({ model_type: "seemoe", num_experts: 4, top_k: 2, capacity_factor: 1.25 });
    const model = kind === "seemore"
      ? new VisionLanguageModel(config, 12)
      : new VisionMoELanguageModel(config, 12);
    const images = tf.randomNormal(
      [2, 3, config.img_size, config.img_size],
      0,
      1,
      "float32",
      4,
    ) as tf.Tensor4D;
    const idx = tf.tensor2d([[13, 1, 50, 43, 42, 8], [31, 57, 39, 56, 2, 65]], undefined, "int32");
    const targets = tf.tensor2d([[1, 50, 43, 42, 8, 65], [57, 39, 56, 2, 65, 65]], undefined, "int32");
    const one = tf.slice(images, [0, 0, 0, 0], [1, -1, -1, -1]) as tf.Tensor4D;
    const opt = new Adam(model.variables(), 1e-3);
    const round = (step: number) => {
      const { value, grads } = tf.variableGrads(
        () => captionLoss(model, images, idx, targets, new ForwardContext(true, 21, step), "first"),
        model.variables(),
      );
      opt.update(model.variables().map((v) => grads[v.name]));
      tf.dispose([value, ...Object.values(grads)]);
      tf.tidy(() => void model.forward(images, idx, ForwardContext.eval()).dataSync());
      generate(model, one, { maxNewTokens: 4, prompt: [0] });
    };
    round(0);
    const before = tf.memory().numTensors;
    for (let step = 1; step <= 3; step++) round(step);
    assert.equal(tf.memory().numTensors, before, "tensors after 3 more rounds");
    opt.dispose();
    tf.dispose([images, one, idx, targets]);
    model.dispose();
  });
}
