// router.csv, which a seeMoE training run writes beside metrics.csv (lib/train.ts saveRun): one row per
// logged step, MoE layer and expert, with each layer's routing statistics on the batch just trained on.

import assert from "node:assert/strict";
import { DEFAULT_TRAIN } from "../lib/config.ts";
import { VisionMoELanguageModel } from "../lib/model/moe.ts";
import { Tokenizer } from "../lib/tokenizer.ts";
import { train } from "../lib/train.ts";
import { shapesDataset, tinyConfig, useBackend } from "./helpers.ts";

await useBackend();

Deno.test("a seeMoE run's router.csv: every logged step × layer × expert, shares summing to 1", async () => {
  const [layers, experts] = [2, 4];
  const model = new VisionMoELanguageModel(
    tinyConfig({ model_type: "seemoe", n_layer: layers, num_experts: experts, top_k: 2 }),
    3,
  );
  const dir = await Deno.makeTempDir();
  try {
    await train({
      model,
      vocab: Tokenizer.original().symbols as string[],
      train: await shapesDataset(3),
      cfg: { ...DEFAULT_TRAIN, batch_size: 3, max_iters: 6, eval_interval: 2 },
      outDir: dir,
    });
    const csv = (await Deno.readTextFile(`${dir}/router.csv`)).trim().split("\n");
    assert.equal(csv[0], "step,layer,expert,share,entropy,gate_entropy,balance,dropped");
    const rows = csv.slice(1).map((line) => line.split(",").map(Number));
    const steps = (await Deno.readTextFile(`${dir}/metrics.csv`)).trim().split("\n").slice(1)
      .map((line) => Number(line.split(",")[0]));
    assert.deepEqual(steps, [1, 3, 5, 6]); // after steps 0, 2, 4 (the interval) and the last

    // One row per (step, layer, expert), in that order.
    const keys = steps.flatMap((s) =>
      [...Array(layers).keys()].flatMap((l) => [...Array(experts).keys()].map((e) => [s, l, e]))
    );
    assert.deepEqual(rows.map((r) => r.slice(0, 3)), keys);

    for (let i = 0; i < rows.length; i += experts) {
      const group = rows.slice(i, i + experts); // one step and layer
      const shares = group.map((r) => r[3]);
      const where = `step ${group[0][0]} layer ${group[0][1]}`;
      assert(shares.every((p) => p >= 0 && p <= 1), `${where}: shares ${shares}`);
      assert(Math.abs(shares.reduce((a, b) => a + b, 0) - 1) < 1e-9, `${where}: shares ${shares} sum to 1`);
      // The layer's statistics repeat on each expert's row; entropy is that of the shares.
      for (const col of [4, 5, 6, 7]) assert.equal(new Set(group.map((r) => r[col])).size, 1, where);
      const entropy = -shares.reduce((s, p) => s + (p > 0 ? p * Math.log(p) : 0), 0);
      assert(Math.abs(group[0][4] - entropy) < 1e-9, `${where}: entropy ${group[0][4]} != ${entropy}`);
      assert.equal(group[0][7], 0, `${where}: nothing dropped without a capacity limit`);
    }
    // The last step's rows are the model's own statistics of its last training batch.
    const last = model.routerStats();
    assert.equal(last.length, layers);
    last.forEach((s, l) =>
      assert.deepEqual(rows.filter((r) => r[0] === 6 && r[1] === l).map((r) => r[3]), s.share, `layer ${l}`)
    );
  } finally {
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a dense model's run writes no router.csv", async () => {
  const { VisionLanguageModel } = await import("../lib/model/vision_language_model.ts");
  const model = new VisionLanguageModel(tinyConfig(), 3);
  const dir = await Deno.makeTempDir();
  try {
    await train({
      model,
      vocab: Tokenizer.original().symbols as string[],
      train: await shapesDataset(3),
      cfg: { ...DEFAULT_TRAIN, batch_size: 3, max_iters: 2, eval_interval: 1 },
      outDir: dir,
    });
    await Deno.stat(`${dir}/metrics.csv`);
    await assert.rejects(Deno.stat(`${dir}/router.csv`), Deno.errors.NotFound);
  } finally {
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});
