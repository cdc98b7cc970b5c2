// seeMoE: routing, sparse dispatch, gradients, parity with the original seeMoE.py, checkpoints, memory and
// learning, on the cpu backend with small configs (tests/model/moe_wasm_test.ts covers wasm).

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { DEFAULT_MODEL, type ModelConfig, PAD } from "../../lib/config.ts";
import { buildModel } from "../../lib/model/factory.ts";
import { loadModel, saveModel } from "../../lib/model_files.ts";
import { kaimingInitLinears } from "../../lib/model/init.ts";
import { type MoEOptions, SparseMoE, SparseMoEBlock, VisionMoELanguageModel } from "../../lib/model/moe.ts";
import { routerStats } from "../../lib/model/routing.ts";
import { planDispatch, selectRows, sparseMixture, topKIndices } from "../../lib/ops/experts.ts";
import { ForwardContext, Initialiser } from "../../lib/model/module.ts";
import { generate } from "../../lib/generate.ts";
import { Adam } from "../../lib/optim.ts";
import { Tokenizer } from "../../lib/tokenizer.ts";
import { assertClose, maxAbsDiff, tinyConfig, useBackend } from "../helpers.ts";
import { checkParity } from "./parity_test.ts";
import { captionLoss } from "../../lib/objective.ts";

await useBackend();

const moeConfig = (overrides: Partial<ModelConfig> = {}) =>
  tinyConfig({ model_type: "seemoe", num_experts: 4, top_k: 2, ...overrides });

const moeOptions = (overrides: Partial<MoEOptions> = {}): MoEOptions => ({
  numExperts: 4,
  topK: 2,
  capacityFactor: 0,
  routerNoiseInEval: false,
  auxLoss: false,
  ...overrides,
});

/** Each expert's share of the last training forward's (token, choice) pairs. */
function shareOf(moe: SparseMoE): number[] {
  const r = moe.lastRouting!;
  return routerStats(r.logits.dataSync(), r.chosen.dataSync(), r.kept.dataSync(), moe.opts.numExperts).share;
}

/** Three images (seeded noise) with three captions: a batch to overfit. */
function threeImages(imgSize: number) {
  const tok = Tokenizer.original();
  const captions = ["A red circle.", "Two blue squares.", "A green star!"];
  const ids = captions.map((c) => tok.encode(c));
  const T = Math.max(...ids.map((r) => r.length));
  const pad = tok.vocabSize - 1;
  const idx = ids.map((r) => [...r, ...new Array(T - r.length).fill(pad)]);
  const targets = idx.map((r) => [...r.slice(1), pad]);
  return {
    images: tf.randomNormal([3, 3, imgSize, imgSize], 0, 1, "float32", 7) as tf.Tensor4D,
    idx: tf.tensor2d(idx, undefined, "int32"),
    targets: tf.tensor2d(targets, undefined, "int32"),
  };
}

/** An Adam trainer on one fixed batch: each call of the returned function runs `steps` steps. */
function overfitter(model: VisionMoELanguageModel, lr = 1e-3) {
  const batch = threeImages(model.config.img_size);
  const opt = new Adam(model.variables(), lr);
  const run = (steps: number): number[] => {
    const losses: number[] = [];
    for (let i = 0; i < steps; i++) {
      const ctx = new ForwardContext(true, 1, opt.step);
      const { value, grads } = tf.variableGrads(
        () => captionLoss(model, batch.images, batch.idx, batch.targets, ctx, "first"),
        opt.params,
      );
      opt.update(opt.params.map((p) => grads[p.name]));
      losses.push(value.dataSync()[0]);
      tf.dispose([value, ...Object.values(grads)]);
    }
    return losses;
  };
  const dispose = () => {
    opt.dispose();
    tf.dispose(batch);
  };
  return { run, dispose };
}

Deno.test("topKIndices and planDispatch: k distinct experts per token, grouped rows, capacity drops", () => {
  const values = [0.1, 0.9, 0.5, 0.3, /* */ 2, -1, 2, 0, /* */ -3, -2, -1, -4];
  assert.deepEqual([...topKIndices(values, 3, 4, 2)], [1, 2, 0, 2, 2, 1]);
  const plan = planDispatch(Int32Array.from([1, 2, 0, 2, 2, 1]), 3, 4, 2);
  assert.deepEqual(plan.counts, [1, 2, 3, 0]);
  // slot = j·N + n; expert 0 gets (n1, j0) = slot 1; expert 1 gets slots 0 (n0) and 5 (n2, j1) ...
  assert.deepEqual([...plan.order], [1, 0, 5, 3, 4, 2]);
  assert.deepEqual([...plan.rowOfSlot], [1, 0, 5, 3, 4, 2]);
  const capped = planDispatch(Int32Array.from([1, 2, 0, 2, 2, 1]), 3, 4, 2, 2);
  assert.deepEqual(capped.counts, [1, 2, 2, 0]);
  assert.equal(capped.dropped, 1);
  assert.equal(capped.rowOfSlot[2], -1); // token 2's first choice (expert 2) came third: dropped
});

Deno.test("router + sparseMixture: exactly top_k experts per token, the k largest logits", () => {
  for (const [E, k] of [[4, 2], [5, 3], [8, 1]]) {
    const moe = new SparseMoE(16, 0, moeOptions({ numExperts: E, topK: k }), new Initialiser(3));
    tf.tidy(() => {
      const x = tf.randomNormal([50, 16], 0, 1, "float32", 1) as tf.Tensor2D;
      const weights = moe.experts.map((e) => ({
        w1: e.fc1.weight,
        b1: e.fc1.bias!,
        w2: e.fc2.weight,
        b2: e.fc2.bias!,
      }));
      for (const ctx of [ForwardContext.eval(), new ForwardContext(true, 5, 0)]) {
        const logits = moe.router.forward(x, ctx);
        const { chosen, kept } = sparseMixture(x, logits, weights, {
          topK: k,
          capacity: Infinity,
          noise: null,
        });
        const masks = chosen.arraySync(), values = logits.arraySync();
        assert.deepEqual(kept.arraySync(), masks, "no capacity limit: every choice is kept");
        masks.forEach((row, n) => {
          const picked = row.flatMap((m, e) => (m === 1 ? [e] : []));
          assert.equal(picked.length, k, `token ${n} has ${k} experts`);
          assert(row.every((m) => m === 0 || m === 1), `token ${n}: a 0/1 mask`);
          const minChosen = Math.min(...picked.map((e) => values[n][e]));
          assert(
            values[n].every((l, e) => picked.includes(e) || l <= minChosen),
            `token ${n}: the k largest`,
          );
        });
      }
    });
    moe.dispose();
  }
});

Deno.test("router.route gives the original's pair: gates (softmax over the top k, 0 elsewhere) and indices", () => {
  const moe = new SparseMoE(16, 0, moeOptions({ numExperts: 5, topK: 2 }), new Initialiser(4));
  tf.tidy(() => {
    const x = tf.randomNormal([30, 16], 0, 1, "float32", 2) as tf.Tensor2D;
    const { gates, indices } = moe.router.route(x, ForwardContext.eval());
    assert.deepEqual(gates.shape, [30, 5]);
    assert.deepEqual(indices.shape, [30, 2]);
    const logits = moe.router.forward(x, ForwardContext.eval()).arraySync();
    const g = gates.arraySync(), ids = indices.arraySync();
    g.forEach((row, n) => {
      assert.deepEqual(row.flatMap((v, e) => (v > 0 ? [e] : [])), [...ids[n]].sort(), `token ${n}`);
      assert(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-6, `token ${n}: gates sum to 1`);
      const [a, b] = ids[n]; // gates[a] / gates[b] = exp(logit a − logit b)
      assert(
        Math.abs(Math.log(row[a] / row[b]) - (logits[n][a] - logits[n][b])) < 1e-4,
        `token ${n}: softmax`,
      );
    });
  });
  moe.dispose();
});

Deno.test("routingGates: every layer's gates for one evaluation pass, no tensors left, no routing kept after", async () => {
  const model = buildModel(moeConfig({ n_layer: 2 }), 3) as VisionMoELanguageModel;
  const batch = threeImages(model.config.img_size);
  tf.tidy(() => void model.forward(batch.images, batch.idx, ForwardContext.eval())); // the model's lazy constants
  const before = tf.memory().numTensors;
  const gates = await model.routingGates(batch.images, batch.idx);
  const [B, T] = batch.idx.shape, rows = B * (model.numVisualTokens + T);
  assert.equal(gates.length, 2);
  for (const layer of gates) {
    assert.equal(layer.length, rows);
    layer.forEach((row, n) => {
      assert.equal(row.filter((v) => v > 0).length, 2, `token ${n}: top 2 of 4`);
      assert(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-5);
    });
  }
  // The recorded routing is kept (2 layers × logits, chosen, kept) and nothing else.
  assert.equal(tf.memory().numTensors, before + 6);
  tf.tidy(() => void model.forward(batch.images, batch.idx, ForwardContext.eval()));
  assert.equal(tf.memory().numTensors, before + 6, "an evaluation forward keeps no new routing");
  tf.dispose(batch);
  model.dispose();
});

Deno.test("selectRows: picks rows (zero rows for -1); its gradient puts each row's gradient back", () => {
  tf.tidy(() => {
    const x = tf.randomNormal([6, 3], 0, 1, "float32", 2) as tf.Tensor2D;
    const rows = Int32Array.from([4, -1, 0, 5, 2]);
    const w = tf.randomNormal([5, 3], 0, 1, "float32", 3);
    const xs = x.arraySync(), ws = w.arraySync() as number[][];
    const expectedValues = [...rows].flatMap((i) => (i < 0 ? [0, 0, 0] : xs[i]));
    // d/dx sum(w ⊙ y): row i of x gets row r of w where rows[r] = i, zeros for rows never picked.
    const expectedGrad = xs.flatMap((_, i) => (rows.includes(i) ? ws[rows.indexOf(i)] : [0, 0, 0]));
    const grad = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(selectRows(t as tf.Tensor2D, rows), w)))(x);
    assertClose(selectRows(x, rows).dataSync(), expectedValues, 0, "values");
    assertClose(grad.dataSync(), expectedGrad, 0, "gradient");
    assert.throws(() => selectRows(x, Int32Array.from([1, 1])), /picked twice/);
  });
});

Deno.test("sparse dispatch equals the dense reference (every expert on every token, sparse gates)", () => {
  const cases: [string, Partial<MoEOptions>, ForwardContext][] = [
    ["eval", {}, ForwardContext.eval()],
    ["training (noisy routing)", {}, new ForwardContext(true, 11, 3)],
    ["capacity 0.5 (drops)", { capacityFactor: 0.5 }, ForwardContext.eval()],
    ["top-1 of 3", { numExperts: 3, topK: 1 }, new ForwardContext(true, 4, 0)],
  ];
  for (const [name, opts, ctx] of cases) {
    // Dropout 0 so both passes see the same numbers; the router noise seed is the pass's first draw.
    const moe = new SparseMoE(24, 0, moeOptions(opts), new Initialiser(9));
    tf.tidy(() => {
      const x = tf.randomNormal([3, 7, 24], 0, 1, "float32", 8);
      const again = new ForwardContext(ctx.training, ctx.seed, ctx.step);
      const sparse = moe.forward(x, ctx);
      const dense = moe.forwardDense(x, again);
      assert.deepEqual(sparse.shape, [3, 7, 24]);
      const d = maxAbsDiff(sparse.dataSync(), dense.dataSync());
      assert(d < 1e-5, `${name}: sparse vs dense max |diff| ${d}`);
      if (opts.capacityFactor) {
        moe.forward(x, new ForwardContext(true, 0, 0)); // keeps the routing masks (dropout is 0)
        const { chosen, kept } = moe.lastRouting!;
        assert(
          tf.sum(chosen).dataSync()[0] > tf.sum(kept).dataSync()[0],
          "the capacity limit dropped some slots",
        );
        assert(Math.max(...tf.sum(kept, 0).dataSync()) <= moe.capacity(21));
      }
    });
    moe.variables().forEach((v) => v.dispose());
  }
});

Deno.test("seemoe: same weights and inputs give the original's logits and losses", () =>
  checkParity("seemoe"));

// The original's state_dict keys and shapes (tests/fixtures/reference/make_state_dict_keys.py).
const REFERENCE_KEYS = new URL("../fixtures/reference/state_dict_keys.json", import.meta.url);

Deno.test("seemoe: parameter names and shapes are the original's state_dict (default config)", async () => {
  const ref = JSON.parse(await Deno.readTextFile(REFERENCE_KEYS));
  const config: ModelConfig = { ...DEFAULT_MODEL, model_type: "seemoe", vocab_size: 66, init: "pytorch" };
  const model = new VisionMoELanguageModel(config, 0);
  try {
    const ours = Object.fromEntries(model.expectedShapes());
    assert.deepEqual(Object.keys(ours).sort(), Object.keys(ref.seemoe).sort());
    for (const [name, shape] of Object.entries(ref.seemoe)) assert.deepEqual(ours[name], shape, name);
  } finally {
    model.dispose();
  }
});

Deno.test("SparseMoEBlock: the original's residual by default, the recipe switches when asked", () => {
  for (const residual of ["original", "pre_norm"] as const) {
    const model = new VisionMoELanguageModel(moeConfig({ residual, attention_scale: "head" }), 2);
    const block = model.decoder.blocks[0] as SparseMoEBlock;
    assert.equal(block.attn.cfg.scaleByHeadSize, true);
    tf.tidy(() => {
      const x = tf.randomNormal([2, 5, 32], 0, 1, "float32", 4) as tf.Tensor3D;
      const ctx = ForwardContext.eval();
      const h = tf.add(x, block.attn.forward(block.ln1.forward(x) as tf.Tensor3D, ctx));
      const n = block.ln2.forward(h);
      const expected = tf.add(residual === "pre_norm" ? h : n, block.sparseMoE.forward(n, ctx));
      assertClose(block.forward(x, ctx).dataSync(), expected.dataSync(), 1e-6, residual);
    });
    model.dispose();
  }
});

Deno.test("eval is deterministic; training routes with noise; router_noise_in_eval restores the original", () => {
  const model = new VisionMoELanguageModel(moeConfig(), 1);
  const noisy = new VisionMoELanguageModel(moeConfig({ router_noise_in_eval: true }), 1);
  const batch = threeImages(model.config.img_size);
  tf.tidy(() => {
    const run = (m: VisionMoELanguageModel, ctx: ForwardContext) =>
      m.forward(batch.images, batch.idx, ctx).dataSync();
    const a = run(model, ForwardContext.eval()), b = run(model, ForwardContext.eval());
    assert.equal(maxAbsDiff(a, b), 0, "two eval forwards agree");
    assert(maxAbsDiff(a, run(noisy, ForwardContext.eval())) > 1e-4, "noise in eval changes the output");
    // Training: noise and dropout are seeded by (seed, step).
    assert.equal(
      maxAbsDiff(run(model, new ForwardContext(true, 3, 1)), run(model, new ForwardContext(true, 3, 1))),
      0,
    );
    assert(
      maxAbsDiff(run(model, new ForwardContext(true, 3, 1)), run(model, new ForwardContext(true, 3, 2))) >
        1e-4,
    );
  });
  tf.dispose(batch);
  model.dispose();
  noisy.dispose();
});

Deno.test("generation with the KV cache equals greedy decoding by full recomputation", () => {
  const model = new VisionMoELanguageModel(moeConfig(), 8);
  const batch = threeImages(model.config.img_size);
  const images = batch.images;
  const cached = generate(model, images, { maxNewTokens: 8, greedy: true });
  const ctx = ForwardContext.eval();
  const reference = tf.tidy(() => {
    const visual = model.visualTokens(images, ctx); // (B, 1, C)
    const rows: number[][] = [[], [], []];
    for (let step = 0; step < 8; step++) {
      const ids = tf.tensor2d(rows, [3, step], "int32");
      const x = step === 0 ? visual : tf.concat([visual, model.decoder.embedTokens(ids)], 1) as tf.Tensor3D;
      const logits = model.decoder.decode(x, 0, ctx); // (B, 1+step, vocab)
      const next = tf.argMax(tf.slice(logits, [0, step, 0], [3, 1, -1]), -1).dataSync(); // (B, 1)
      rows.forEach((r, b) => r.push(next[b]));
    }
    return rows;
  });
  const pad = model.config.vocab_size - 1;
  reference.forEach((row, b) => {
    const stop = row.indexOf(pad);
    assert.deepEqual(cached[b], stop < 0 ? row : row.slice(0, stop), `row ${b}`);
  });
  tf.dispose(batch);
  model.dispose();
});

Deno.test("the router's Linears and the chosen experts receive non-zero gradients", () => {
  const model = new VisionMoELanguageModel(moeConfig(), 2);
  const batch = threeImages(model.config.img_size);
  const layer = model.moeLayers[0];
  const watched = {
    route: layer.router.topkrouteLinear.weight,
    noise: layer.router.noiseLinear.weight,
    ...Object.fromEntries(layer.experts.map((e, i) => [`expert${i}`, e.fc1.weight])),
  };
  tf.tidy(() => {
    const ctx = new ForwardContext(true, 4, 0);
    const { grads } = tf.variableGrads(
      () => captionLoss(model, batch.images, batch.idx, batch.targets, ctx, "first"),
      Object.values(watched),
    );
    const norm = (v: tf.Variable) => tf.norm(grads[v.name]).dataSync()[0];
    assert(norm(watched.route) > 1e-6, `topkroute_linear gradient norm ${norm(watched.route)}`);
    assert(norm(watched.noise) > 1e-6, `noise_linear gradient norm ${norm(watched.noise)}`);
    const share = shareOf(layer);
    layer.experts.forEach((e, i) => {
      if (share[i] > 0) assert(norm(e.fc1.weight) > 1e-6, `expert ${i} routed tokens but got no gradient`);
      else assert.equal(norm(e.fc1.weight), 0);
    });
  });
  tf.dispose(batch);
  model.dispose();
});

Deno.test("an expert that gets no tokens still gets a (zero) gradient", () => {
  const moe = new SparseMoE(16, 0.1, moeOptions(), new Initialiser(12));
  moe.router.topkrouteLinear.bias!.assign(tf.tensor1d([0, 0, 0, -100])); // expert 3 is never chosen
  tf.tidy(() => {
    const x = tf.randomNormal([20, 16], 0, 1, "float32", 13);
    const ctx = new ForwardContext(true, 1, 0);
    const { grads } = tf.variableGrads(() => tf.sum(tf.square(moe.forward(x, ctx))), moe.variables());
    assert.equal(shareOf(moe)[3], 0);
    for (const v of moe.experts[3].variables()) {
      assert(grads[v.name], "a gradient tensor exists");
      assert.equal(tf.max(tf.abs(grads[v.name])).dataSync()[0], 0);
    }
    assert(tf.norm(grads[moe.experts[0].fc2.weight.name]).dataSync()[0] > 0);
  });
  moe.variables().forEach((v) => v.dispose());
});

Deno.test("router statistics in training; Switch aux loss adds coef × mean balance", () => {
  const plain = new VisionMoELanguageModel(moeConfig(), 5);
  const withAux = new VisionMoELanguageModel(moeConfig({ aux_loss_coef: 0.1 }), 5);
  const batch = threeImages(plain.config.img_size);
  tf.tidy(() => {
    const loss = (m: VisionMoELanguageModel, ctx: ForwardContext) =>
      captionLoss(m, batch.images, batch.idx, batch.targets, ctx, "first").dataSync()[0];
    loss(plain, ForwardContext.eval());
    assert.equal(plain.routerStats().length, 0, "no statistics from eval");
    const ce = loss(plain, new ForwardContext(true, 6, 0));
    const total = loss(withAux, new ForwardContext(true, 6, 0));
    const stats = withAux.routerStats();
    assert.equal(stats.length, 2);
    for (const s of stats) {
      assert(Math.abs(s.share.reduce((a, b) => a + b, 0) - 1) < 1e-9);
      assert(s.entropy >= 0 && s.entropy <= Math.log(4) + 1e-9);
      assert(s.gateEntropy > 0 && s.gateEntropy <= Math.log(4) + 1e-9);
      assert(s.balance > 0);
      assert.equal(s.dropped, 0);
    }
    const meanBalance = stats.reduce((a, s) => a + s.balance, 0) / stats.length;
    assert(Math.abs(total - (ce + 0.1 * meanBalance)) < 1e-5, `${total} vs ${ce} + 0.1 × ${meanBalance}`);
    assert.equal(
      loss(withAux, ForwardContext.eval()),
      loss(plain, ForwardContext.eval()),
      "no aux loss in eval",
    );
  });
  tf.dispose(batch);
  plain.dispose();
  withAux.dispose();
});

Deno.test("Kaiming init: Linear weights ~ N(0, 2/fan_in), everything else untouched", () => {
  const config = moeConfig({ n_embd: 64, image_embed_dim: 64, init: "pytorch" });
  const model = new VisionMoELanguageModel(config, 3);
  const before = model.stateDict();
  kaimingInitLinears(model, 3);
  const after = model.stateDict();
  const std = (a: Float32Array) => Math.sqrt(a.reduce((s, v) => s + v * v, 0) / a.length);
  for (const [name, t] of after) {
    const linear = t.shape.length === 2 && !name.includes("embedding_table");
    if (!linear) assert.deepEqual(t.data, before.get(name)!.data, `${name} must keep its init`);
    else if (t.data.length >= 4096) {
      const expected = Math.sqrt(2 / t.shape[1]);
      assert(Math.abs(std(t.data) / expected - 1) < 0.1, `${name}: std ${std(t.data)} vs ${expected}`);
    }
  }
  model.dispose();
});

Deno.test("checkpoint: model_type seemoe, num_experts and top_k saved; wrong kind is a clear error", async () => {
  const dir = await Deno.makeTempDir();
  const model = buildModel(moeConfig({ num_experts: 3, top_k: 1, capacity_factor: 1.5 }), 4);
  assert(model instanceof VisionMoELanguageModel);
  const vocab = [...Tokenizer.original().symbols];
  assert.equal(vocab.at(-1), PAD);
  const batch = threeImages(model.config.img_size);
  try {
    await saveModel(`${dir}/ckpt`, model, vocab);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/ckpt/config.json`));
    assert.equal(config.model_type, "seemoe");
    assert.equal(config.num_experts, 3);
    assert.equal(config.top_k, 1);
    assert.equal(config.capacity_factor, 1.5);
    const { model: loaded } = await loadModel(`${dir}/ckpt`, "seemoe");
    assert(loaded instanceof VisionMoELanguageModel);
    const [a, b] = tf.tidy(() =>
      [model, loaded].map((m) => m.forward(batch.images, batch.idx, ForwardContext.eval()).dataSync())
    );
    assertClose(a, b, 0, "logits after a save/load round trip");
    loaded.dispose();
    await assert.rejects(() => loadModel(`${dir}/ckpt`, "seemore"), /holds a "seemoe" model, not "seemore"/);
    const dense = new URL("../fixtures/parity/seemore", import.meta.url).pathname;
    await assert.rejects(() => loadModel(dense, "seemoe"), /holds a "seemore" model, not "seemoe"/);
    assert.throws(
      () => buildModel(moeConfig({ top_k: 5 })),
      /model config: "top_k" 5 is more than "num_experts" 4/,
    );
  } finally {
    tf.dispose(batch);
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("training leaves no tensors behind (aux loss and capacity on)", () => {
  const model = new VisionMoELanguageModel(moeConfig({ aux_loss_coef: 0.01, capacity_factor: 1 }), 6);
  const trainer = overfitter(model);
  const counts = [0, 1, 2].map(() => {
    trainer.run(2);
    return tf.memory().numTensors;
  });
  assert.deepEqual(counts, [counts[0], counts[0], counts[0]]);
  trainer.dispose();
  model.dispose();
});

Deno.test("the loss falls when overfitting three images", () => {
  const model = new VisionMoELanguageModel(moeConfig(), 7);
  const trainer = overfitter(model, 3e-3);
  const losses = trainer.run(15);
  const first = losses[0], last = Math.min(...losses.slice(-3));
  assert(last < 0.5 * first, `loss ${first.toFixed(3)} → ${last.toFixed(3)}`);
  trainer.dispose();
  model.dispose();
});
