// The `init` config key: "kaiming" redraws every Linear weight from N(0, 2/fan_in) and leaves the rest as
// built, on the dense model as on seeMoE; absent means the original's choice for the model type; the draw is
// the one main made before init.ts (checkpoints stay bit for bit); config.json records it and a bad value is
// an error naming the file and the key.

import assert from "node:assert/strict";
import { initOf, type ModelConfig } from "../../lib/config.ts";
import { loadCheckpoint } from "../../lib/checkpoint.ts";
import { buildModel } from "../../lib/model/factory.ts";
import { Initialiser, type Module, readData, type StateDict } from "../../lib/model/module.ts";
import { loadModel, saveModel } from "../../lib/model_files.ts";
import { hash32 } from "../../lib/random.ts";
import { Tokenizer } from "../../lib/tokenizer.ts";
import { tinyConfig, useBackend } from "../helpers.ts";

await useBackend();
const vocab = Tokenizer.original().symbols as string[];

/** Every kind of Linear: fused attention heads, the conv stem's, the projector, experts, routers, word head. */
const config = (overrides: Partial<ModelConfig>) =>
  tinyConfig({
    n_embd: 64,
    image_embed_dim: 64,
    num_experts: 4,
    top_k: 2,
    patch_stem: "conv",
    patch_size: 8,
    image_words: ["red", "blue", "circle"],
    ...overrides,
  }) as ModelConfig;

const isLinearWeight = (name: string, shape: number[]) =>
  shape.length === 2 && name.endsWith(".weight") && !name.includes("embedding_table");

/** main's kaimingInitLinears as it was in lib/model/moe.ts (5cfc6f9): the whole state_dict redrawn, then loaded. */
function mainKaimingDraw(model: Module, seed: number): void {
  const init = new Initialiser(hash32(seed, 0x6b61696d, 0x6e67));
  const state = model.stateDict();
  for (const [name, t] of state) {
    if (!isLinearWeight(name, t.shape)) continue;
    const sample = init.normal(t.shape, Math.sqrt(2 / t.shape[1]));
    state.set(name, { shape: t.shape, data: readData(sample) });
    sample.dispose();
  }
  model.loadStateDict(state);
}

const stateOf = (c: ModelConfig, seed: number): StateDict => {
  const model = buildModel(c, seed);
  const state = model.stateDict();
  model.dispose();
  return state;
};

Deno.test("initOf: the config's init, else the original's for the model type", () => {
  assert.equal(initOf({ model_type: "seemore" }), "pytorch");
  assert.equal(initOf({ model_type: "seemoe" }), "kaiming");
  assert.equal(initOf({ model_type: "seemore", init: "kaiming" }), "kaiming");
  assert.equal(initOf({ model_type: "seemoe", init: "pytorch" }), "pytorch");
});

Deno.test("dense model, init kaiming: Linear weights ~ N(0, 2/fan_in), everything else as PyTorch's init", () => {
  const plain = stateOf(config({ model_type: "seemore" }), 3);
  const kaiming = stateOf(config({ model_type: "seemore", init: "kaiming" }), 3);
  assert.deepEqual([...kaiming.keys()], [...plain.keys()]);
  let sum = 0, squares = 0, n = 0, linears = 0;
  for (const [name, t] of kaiming) {
    const before = plain.get(name)!.data;
    if (!isLinearWeight(name, t.shape)) {
      assert.deepEqual(t.data, before, `${name} keeps its init`);
      continue;
    }
    assert.notDeepEqual(t.data, before, `${name} is redrawn`);
    const scale = Math.sqrt(2 / t.shape[1]); // PyTorch layout [out, in]: fan_in = in
    for (const v of t.data) (sum += v / scale, squares += (v / scale) ** 2, n++);
    linears++;
  }
  // ViT: the stem's projection (its convolutions are Conv2d, kept), 1 block × (4 heads × q, k, v, proj, ffn
  // 2); projector 2; decoder 2 blocks × 15; lm_head; word head
  assert.equal(linears, 1 + 15 + 2 + 2 * 15 + 1 + 1);
  const mean = sum / n, std = Math.sqrt(squares / n - mean ** 2);
  assert(
    Math.abs(mean) < 0.02 && Math.abs(std - 1) < 0.01,
    `weights / √(2/fan_in): mean ${mean}, std ${std}`,
  );
});

Deno.test("the Kaiming redraw is main's draw bit for bit: seeMoE by default, either model when asked", () => {
  for (const c of [config({ model_type: "seemoe" }), config({ model_type: "seemore", init: "kaiming" })]) {
    const model = buildModel({ ...c, init: "pytorch" }, 7);
    mainKaimingDraw(model, 7);
    const expected = model.stateDict();
    model.dispose();
    const got = stateOf(c, 7);
    for (const [name, t] of expected) {
      assert.deepEqual(got.get(name)!.data, t.data, `${c.model_type} ${name}`);
    }
  }
  const explicit = stateOf(config({ model_type: "seemoe", init: "kaiming" }), 7);
  const byDefault = stateOf(config({ model_type: "seemoe" }), 7);
  for (const [name, t] of byDefault) assert.deepEqual(explicit.get(name)!.data, t.data, name);
});

Deno.test("config.json: a new checkpoint records its init; both values load; others name the file and key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const [model_type, init] of [["seemore", "pytorch"], ["seemoe", "kaiming"]] as const) {
      const model = buildModel(tinyConfig({ model_type, num_experts: 2, top_k: 1 }), 1);
      await saveModel(`${dir}/${model_type}`, model, vocab);
      model.dispose();
      const { config: json } = await loadCheckpoint(`${dir}/${model_type}`);
      assert.equal(json.init, init, `${model_type} records the original's init`);
    }
    const file = `${dir}/seemore/config.json`;
    const json = JSON.parse(await Deno.readTextFile(file));
    for (const init of ["pytorch", "kaiming"]) {
      await Deno.writeTextFile(file, JSON.stringify({ ...json, init }));
      const { model } = await loadModel(`${dir}/seemore`);
      assert.equal(model.config.init, init);
      model.dispose();
    }
    for (const init of ["xavier", "Kaiming", 1, null]) {
      await Deno.writeTextFile(file, JSON.stringify({ ...json, init }));
      await assert.rejects(loadModel(`${dir}/seemore`), (e: Error) => {
        const shown = JSON.stringify(init);
        assert.equal(e.message, `${file}: "init" must be one of "pytorch", "kaiming", not ${shown}`);
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
