// The original notebook's shape checks for every component, plus the behaviour that defines them:
// causal masking, fused heads equal to separate Heads, and the state_dict contract.

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { Head, MultiHeadAttention } from "../../lib/model/attention.ts";
import { Block } from "../../lib/model/block.ts";
import { DecoderLanguageModel } from "../../lib/model/decoder.ts";
import { MLP } from "../../lib/model/mlp.ts";
import { ForwardContext, Initialiser, type StateDict, stateUnder } from "../../lib/model/module.ts";
import { PatchEmbeddings } from "../../lib/model/patch_embeddings.ts";
import { MultiModalProjector } from "../../lib/model/projector.ts";
import { VisionLanguageModel } from "../../lib/model/vision_language_model.ts";
import { ViT } from "../../lib/model/vit.ts";
import { DEFAULT_MODEL } from "../../lib/config.ts";
import { assertClose, maxAbsDiff, tinyConfig, useBackend } from "../helpers.ts";

await useBackend();
const init = new Initialiser(7);
const ctx = ForwardContext.eval();
const B = 4;

Deno.test("shape checks of the original notebook", () => {
  tf.tidy(() => {
    const pe = new PatchEmbeddings(96, 16, 512, init);
    assert.deepEqual(pe.forward(tf.zeros([B, 3, 96, 96])).shape, [B, 36, 512]);
    assert.deepEqual(new MLP(128, 0.1, true, init).forward(tf.zeros([B, 3, 128]), ctx).shape, [B, 3, 128]);
    assert.deepEqual(new Head(128, 16, 0.1, false, init).forward(tf.zeros([B, 3, 128]), ctx).shape, [
      B,
      3,
      16,
    ]);
    const attention = { nEmbd: 128, numHeads: 8, dropout: 0.1, isDecoder: false };
    assert.deepEqual(new MultiHeadAttention(attention, init).forward(tf.zeros([B, 3, 128]), ctx).shape, [
      B,
      3,
      128,
    ]);
    assert.deepEqual(new Block(attention, init).forward(tf.zeros([B, 3, 128]), ctx).shape, [B, 3, 128]);
    const cfg = { ...DEFAULT_MODEL, vocab_size: 66, n_layer: 2 }; // the original's sizes
    const vit = new ViT(cfg, init);
    const feats = vit.forward(tf.zeros([B, 3, 96, 96]), ctx);
    assert.deepEqual(feats.shape, [B, 1, 512]); // the original's (B, 512), one visual token
    assert.deepEqual(new MultiModalProjector(128, 512, 0.1, init).forward(feats, ctx).shape, [B, 1, 128]);
    const dec = new DecoderLanguageModel(cfg, init);
    assert.deepEqual(dec.forward(tf.zeros([B, 10], "int32"), feats, ctx).shape, [B, 11, 66]);
  });
});

Deno.test("the full model's parameters are exactly the original's state_dict names and shapes", async () => {
  // The original's state_dict keys and shapes (tests/fixtures/reference/make_state_dict_keys.py).
  const path = new URL("../fixtures/reference/state_dict_keys.json", import.meta.url);
  const reference: Record<string, number[]> = JSON.parse(await Deno.readTextFile(path)).seemore;
  const model = new VisionLanguageModel({ ...DEFAULT_MODEL, vocab_size: 66 });
  const ours = Object.fromEntries(model.expectedShapes());
  assert.deepEqual(ours, reference);
  const total = Object.values(ours).reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
  assert.equal(total, model.variables().reduce((n, v) => n + v.size, 0));
  model.dispose();
});

Deno.test("causal masking: changing a later token never changes earlier logits", () => {
  const model = new VisionLanguageModel(tinyConfig(), 1);
  tf.tidy(() => {
    const images = tf.randomNormal([2, 3, 32, 32], 0, 1, "float32", 3) as tf.Tensor4D;
    const a = [[5, 9, 14, 20, 33, 40], [1, 2, 3, 4, 5, 6]];
    const b = a.map((row) => [...row.slice(0, 4), 60, 61]); // tokens 4 and 5 changed
    const la = model.forward(images, tf.tensor2d(a, undefined, "int32"), ctx).arraySync() as number[][][];
    const lb = model.forward(images, tf.tensor2d(b, undefined, "int32"), ctx).arraySync() as number[][][];
    for (let row = 0; row < 2; row++) {
      // positions 0 (image) .. 4 (after reading token 3) see only unchanged inputs
      for (let p = 0; p <= 4; p++) assertClose(la[row][p], lb[row][p], 1e-6, `row ${row} position ${p}`);
      assert(maxAbsDiff(la[row][5], lb[row][5]) > 1e-4, "a changed token must change its own position");
    }
  });
  model.dispose();
});

Deno.test("fused multi-head attention equals the original's separate heads", () => {
  const mha = new MultiHeadAttention({ nEmbd: 32, numHeads: 4, dropout: 0, isDecoder: true }, init);
  const state = mha.stateDict();
  const heads = [0, 1, 2, 3].map((h) => {
    const head = new Head(32, 8, 0, true, init);
    head.loadStateDict(stateUnder(state, `heads.${h}`));
    return head;
  });
  tf.tidy(() => {
    const x = tf.randomNormal([2, 5, 32], 0, 1, "float32", 11) as tf.Tensor3D;
    const fused = mha.forward(x, ctx);
    const concat = tf.concat(heads.map((h) => h.forward(x, ctx)), -1); // (B, T, C)
    const separate = mha.proj.forward(concat);
    assertClose(fused.dataSync(), separate.dataSync(), 1e-5, "attention output");
  });
});

Deno.test("Block.forwardCls (the ViT's last block, CLS row only) = forward at position 0, values and gradients", () => {
  for (const options of [{}, { preNorm: true, scaleByHeadSize: true }]) {
    const block = new Block({ nEmbd: 32, numHeads: 4, dropout: 0, isDecoder: false, ...options }, init);
    const x = tf.randomNormal([3, 6, 32], 0, 1, "float32", 12) as tf.Tensor3D; // (B, T, C)
    const w = tf.randomNormal([3, 1, 32], 0, 1, "float32", 13); // weights of a scalar loss
    const full = () => tf.slice(block.forward(x, ctx), [0, 0, 0], [3, 1, 32]); // (B, 1, C)
    const first = () => block.forwardCls(x, ctx); // (B, 1, C)
    const grads = (f: () => tf.Tensor) => tf.variableGrads(() => tf.sum(tf.mul(f(), w)), block.variables());
    const [a, b] = [grads(full), grads(first)];
    assertClose(a.value.dataSync(), b.value.dataSync(), 1e-5, "loss");
    for (const v of block.variables()) {
      assertClose(a.grads[v.name].dataSync(), b.grads[v.name].dataSync(), 1e-5, `gradient of ${v.name}`);
    }
    assert.deepEqual(first().shape, [3, 1, 32]);
    tf.dispose([x, w, a.value, b.value, ...Object.values(a.grads), ...Object.values(b.grads)]);
  }
  assert.throws(
    () =>
      new Block({ nEmbd: 32, numHeads: 4, dropout: 0, isDecoder: true }, init).forwardCls(
        tf.zeros([1, 2, 32]),
        ctx,
      ),
    /only for bidirectional/,
  );
});

Deno.test("dropout is on in training and off in evaluation", () => {
  const model = new VisionLanguageModel(tinyConfig(), 2);
  tf.tidy(() => {
    const images = tf.randomNormal([2, 3, 32, 32], 0, 1, "float32", 5) as tf.Tensor4D;
    const idx = tf.tensor2d([[1, 2, 3], [4, 5, 6]], undefined, "int32");
    const e1 = model.forward(images, idx, ForwardContext.eval()).dataSync();
    const e2 = model.forward(images, idx, ForwardContext.eval()).dataSync();
    assert.equal(maxAbsDiff(e1, e2), 0);
    const t1 = model.forward(images, idx, new ForwardContext(true, 1, 0)).dataSync();
    const t1again = model.forward(images, idx, new ForwardContext(true, 1, 0)).dataSync();
    const t2 = model.forward(images, idx, new ForwardContext(true, 1, 1)).dataSync();
    assert.equal(maxAbsDiff(t1, t1again), 0, "same seed and step, same masks");
    assert(maxAbsDiff(t1, t2) > 1e-4, "another step draws other masks");
    assert(maxAbsDiff(t1, e1) > 1e-4, "training differs from evaluation");
  });
  model.dispose();
});

Deno.test("a caption longer than the position table is a clear error", () => {
  const model = new VisionLanguageModel(tinyConfig({ block_positions: 8 }), 1);
  assert.throws(
    () => tf.tidy(() => model.forward(tf.zeros([1, 3, 32, 32]), tf.zeros([1, 8], "int32"), ctx)),
    /9 positions .* exceeds the position table of 8/,
  );
  model.dispose();
});

Deno.test("recipe switches: pre-norm residual and head-size attention scale", () => {
  tf.tidy(() => {
    const x = tf.randomNormal([2, 5, 32], 0, 1, "float32", 12) as tf.Tensor3D;
    const pre = new Block({ nEmbd: 32, numHeads: 4, dropout: 0, isDecoder: true, preNorm: true }, init);
    const h = tf.add(x, pre.attn.forward(pre.ln1.forward(x) as tf.Tensor3D, ctx));
    const expected = tf.add(h, pre.ffn.forward(pre.ln2.forward(h), ctx));
    assertClose(pre.forward(x, ctx).dataSync(), expected.dataSync(), 1e-5, "pre-norm block");

    const attention = { nEmbd: 32, numHeads: 4, dropout: 0, isDecoder: false };
    const wide = new MultiHeadAttention(attention, init);
    const narrow = new MultiHeadAttention({ ...attention, scaleByHeadSize: true }, init);
    const state = wide.stateDict();
    narrow.loadStateDict(state);
    // scaling by head_size (8) instead of n_embd (32) is the same as doubling the query weights
    const doubled: StateDict = new Map(
      [...state].map(([k, t]) => [k, k.includes("query") ? { ...t, data: t.data.map((v) => 2 * v) } : t]),
    );
    wide.loadStateDict(doubled);
    assertClose(narrow.forward(x, ctx).dataSync(), wide.forward(x, ctx).dataSync(), 1e-5, "head-size scale");
  });
});

Deno.test("grayscale: every channel holds the pixel's luma, ImageNet-normalised like the input", async () => {
  const { grayscale } = await import("../../lib/objective.ts");
  const { IMAGENET_MEAN, IMAGENET_STD } = await import("../../lib/config.ts");
  const rgb = [[1, 0, 0], [0, 1, 0], [0.2, 0.4, 0.6]]; // three pixels in [0, 1]
  const norm = (v: number, c: number) => (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
  tf.tidy(() => {
    // (1, 3, 1, 3): channel-major, the three pixels in a row
    const images = tf.tensor4d([0, 1, 2].flatMap((c) => rgb.map((p) => norm(p[c], c))), [1, 3, 1, 3]);
    const gray = grayscale(images).arraySync()[0];
    rgb.forEach((p, i) => {
      const luma = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
      for (let c = 0; c < 3; c++) {
        assert(Math.abs(gray[c][0][i] - norm(luma, c)) < 1e-5, `pixel ${i} channel ${c}`);
      }
    });
  });
});
