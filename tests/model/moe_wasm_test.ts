// seeMoE trains on the wasm backend, which has no gradient kernel for tf.gather (UnsortedSegmentSum):
// one training step there must run and give the cpu backend's loss and gradients.
// (Its own file: it switches backends, and `deno test` runs each file in its own process.)

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initBackend } from "../../lib/backend.ts";
import { VisionMoELanguageModel } from "../../lib/model/moe.ts";
import { ForwardContext, readData } from "../../lib/model/module.ts";
import { Adam } from "../../lib/optim.ts";
import { maxAbsDiff, tinyConfig } from "../helpers.ts";
import { captionLoss } from "../../lib/objective.ts";

/** Loss and gradients (by variable, in model order) of one training forward. */
function lossAndGrads(model: VisionMoELanguageModel, batch: tf.Tensor[], step: number) {
  const [images, idx, targets] = batch as [tf.Tensor4D, tf.Tensor2D, tf.Tensor2D];
  const ctx = new ForwardContext(true, 21, step);
  const { value, grads } = tf.variableGrads(
    () => captionLoss(model, images, idx, targets, ctx, "first"),
    model.variables(),
  );
  const loss = value.dataSync()[0];
  const flat = model.variables().map((v) => readData(grads[v.name]));
  return { loss, grads, flat, dispose: () => tf.dispose([value, ...Object.values(grads)]) };
}

Deno.test("one seeMoE training step on wasm: same loss and gradients as cpu, then an Adam update", async () => {
  await initBackend("cpu");
  const config = tinyConfig({
    model_type: "seemoe",
    num_experts: 4,
    top_k: 2,
    aux_loss_coef: 0.01,
    capacity_factor: 1.25,
  });
  const model = new VisionMoELanguageModel(config, 11);
  const batch = [
    tf.randomNormal([2, 3, config.img_size, config.img_size], 0, 1, "float32", 3),
    tf.tensor2d([[13, 1, 50, 43, 42, 8], [31, 57, 39, 56, 2, 65]], undefined, "int32"),
    tf.tensor2d([[1, 50, 43, 42, 8, 65], [57, 39, 56, 2, 65, 65]], undefined, "int32"),
  ];
  const onCpu = lossAndGrads(model, batch, 0);
  onCpu.dispose();

  const info = await initBackend("wasm");
  assert.equal(tf.getBackend(), "wasm", JSON.stringify(info));
  const onWasm = lossAndGrads(model, batch, 0);
  assert(Math.abs(onWasm.loss - onCpu.loss) < 1e-4, `loss wasm ${onWasm.loss} vs cpu ${onCpu.loss}`);
  onWasm.flat.forEach((g, i) => {
    const scale = Math.max(1e-3, ...Array.from(onCpu.flat[i], Math.abs));
    const d = maxAbsDiff(g, onCpu.flat[i]);
    assert(
      d <= 1e-3 * scale,
      `gradient ${i} (${model.variables()[i].shape}): max |diff| ${d}, scale ${scale}`,
    );
  });
  const router = model.moeLayers[0].router.topkrouteLinear.weight;
  assert(tf.norm(onWasm.grads[router.name]).dataSync()[0] > 0, "router gradient on wasm");

  const opt = new Adam(model.variables(), 1e-3);
  const before = readData(router);
  opt.update(model.variables().map((v) => onWasm.grads[v.name]));
  onWasm.dispose();
  assert(maxAbsDiff(readData(router), before) > 1e-5, "the router's weights moved");
  const next = lossAndGrads(model, batch, 0);
  assert(Number.isFinite(next.loss) && next.loss < onWasm.loss, `loss ${onWasm.loss} → ${next.loss}`);
  next.dispose();
  opt.dispose();
  tf.dispose(batch);
  model.dispose();
});

Deno.test("router.route and routingGates on wasm equal cpu's (tfjs-backend-wasm's oneHot ignores its dtype)", async () => {
  const config = tinyConfig({ model_type: "seemoe", num_experts: 4, top_k: 2 });
  const run = async (backend: string) => {
    await initBackend(backend);
    const model = new VisionMoELanguageModel(config, 5);
    const x = tf.randomNormal([12, config.n_embd], 0, 1, "float32", 6) as tf.Tensor2D;
    const { gates, indices } = model.moeLayers[0].router.route(x, ForwardContext.eval());
    const images = tf.randomNormal(
      [1, 3, config.img_size, config.img_size],
      0,
      1,
      "float32",
      7,
    ) as tf.Tensor4D;
    const idx = tf.tensor2d([[13, 1, 50]], undefined, "int32");
    const out = {
      gates: readData(gates),
      indices: [...indices.dataSync()],
      layers: await model.routingGates(images, idx),
    };
    tf.dispose([x, gates, indices, images, idx]);
    model.dispose();
    return out;
  };
  const cpu = await run("cpu");
  const wasm = await run("wasm");
  assert.deepEqual(wasm.indices, cpu.indices);
  assert(maxAbsDiff(wasm.gates, cpu.gates) < 1e-6, `gates differ by ${maxAbsDiff(wasm.gates, cpu.gates)}`);
  assert.equal(cpu.gates.filter((g) => g > 0).length, 24, "top 2 of 4 for 12 tokens");
  const flat = (l: number[][][]) => l.flat(2);
  assert(maxAbsDiff(flat(wasm.layers), flat(cpu.layers)) < 1e-5);
});
