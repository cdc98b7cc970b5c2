// Models in and out of checkpoint folders: byte-identical round trips, PyTorch layouts landing in the
// right places, and clear errors when config and tensors disagree.

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { encodeSafetensors, loadCheckpoint, saveCheckpoint } from "../../lib/checkpoint.ts";
import { configJson, loadModel, saveModel } from "../../lib/model_files.ts";
import { ForwardContext } from "../../lib/model/module.ts";
import type { PatchEmbeddings } from "../../lib/model/patch_embeddings.ts";
import { VisionLanguageModel } from "../../lib/model/vision_language_model.ts";
import { Tokenizer } from "../../lib/tokenizer.ts";
import { assertClose, tinyConfig, useBackend } from "../helpers.ts";

await useBackend();
const vocab = Tokenizer.original().symbols as string[];

for (
  const [what, config] of [
    ["original", tinyConfig()],
    [
      "seeing: conv stem and word head",
      tinyConfig({ patch_stem: "conv", patch_size: 8, image_words: ["a", "red"] }),
    ],
  ] as const
) {
  Deno.test(`checkpoint round trip is byte-identical and gives the same logits (${what})`, async () => {
    const a = await Deno.makeTempDir();
    const b = await Deno.makeTempDir();
    const model = new VisionLanguageModel(config, 9);
    await saveModel(a, model, vocab);
    const { model: again } = await loadModel(a);
    await saveModel(b, again, vocab);
    for (const f of ["config.json", "model.safetensors"]) {
      assert.deepEqual(await Deno.readFile(`${a}/${f}`), await Deno.readFile(`${b}/${f}`), f);
    }
    tf.tidy(() => {
      const images = tf.randomNormal([1, 3, 32, 32], 0, 1, "float32", 2) as tf.Tensor4D;
      const idx = tf.tensor2d([[3, 4, 5]], undefined, "int32");
      assertClose(
        again.forward(images, idx, ForwardContext.eval()).dataSync(),
        model.forward(images, idx, ForwardContext.eval()).dataSync(),
        0,
      );
    });
    if (config.image_words.length > 0) {
      assert.deepEqual(again.config.image_words, config.image_words);
      assertClose(again.wordHead!.weight.dataSync(), model.wordHead!.weight.dataSync(), 0, "word head");
    }
    model.dispose();
    again.dispose();
  });
}

Deno.test("a safetensors file with PyTorch layouts lands in the right places", async () => {
  const dir = await Deno.makeTempDir();
  const model = new VisionLanguageModel(tinyConfig(), 1);
  // Fill every tensor with its flat index scaled, in PyTorch layout: [out, in] for Linear,
  // [out, 3, kh, kw] for the conv, one [head_size, C] per head.
  const state = model.stateDict();
  const tensors = [...state].map(([name, t], k) => ({
    name,
    shape: t.shape,
    data: Float32Array.from({ length: t.data.length }, (_, i) => (k * 1000 + i) / 1e6),
  }));
  await saveCheckpoint(dir, configJson(model.config, vocab), tensors);
  const { model: loaded } = await loadModel(dir);
  // lm_head: PyTorch weight[o][i] must be our internal w[i][o]
  const lm = tensors.find((t) => t.name === "decoder.lm_head.weight")!;
  const w = loaded.decoder.lmHead.weight.arraySync();
  assert.equal(w[5][7], lm.data[7 * 32 + 5]); // row 7 (output 7), column 5 (input 5)
  // head 2's query weight row r, column c → fused qkv[c][0·C + 2·hs + r]
  const q2 = tensors.find((t) => t.name === "decoder.blocks.1.attn.heads.2.query.weight")!;
  const qkv = loaded.decoder.blocks[1] as unknown as { attn: { qkv: tf.Variable } };
  assert.equal((qkv.attn.qkv.arraySync() as number[][])[3][2 * 8 + 4], q2.data[4 * 32 + 3]);
  // key of head 0 sits after all query columns
  const k0 = tensors.find((t) => t.name === "decoder.blocks.1.attn.heads.0.key.weight")!;
  assert.equal((qkv.attn.qkv.arraySync() as number[][])[6][32 + 1], k0.data[1 * 32 + 6]);
  // conv weight [out, c, kh, kw] → patch projection row (c, kh, kw), column out
  const conv = tensors.find((t) => t.name === "vision_encoder.patch_embedding.conv.weight")!;
  const pw = (loaded.visionEncoder.patchEmbedding as PatchEmbeddings).conv.weight.arraySync();
  const [o, c, kh, kw] = [9, 2, 3, 11];
  assert.equal(pw[c * 256 + kh * 16 + kw][o], conv.data[((o * 3 + c) * 16 + kh) * 16 + kw]);
  // and the whole state_dict comes back unchanged
  for (const t of tensors) assert.deepEqual(loaded.stateDict().get(t.name)!.data, t.data, t.name);
  model.dispose();
  loaded.dispose();
});

Deno.test("a checkpoint whose config and tensors disagree is a clear error naming the tensor", async () => {
  const dir = await Deno.makeTempDir();
  const model = new VisionLanguageModel(tinyConfig(), 1);
  await saveModel(dir, model, vocab);
  const { config, tensors } = await loadCheckpoint(dir);
  // config says 3 decoder layers, the weights hold 2
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...config, n_layer: 3 }));
  await assert.rejects(loadModel(dir), /decoder\.blocks\.2\.[a-z_.0-9]+/);
  // a tensor of the wrong shape
  const bad = [...tensors].map(([name, t]) => ({ name, shape: t.shape, data: t.data }));
  const i = bad.findIndex((t) => t.name === "decoder.ln_f.weight");
  bad[i] = { name: bad[i].name, shape: [31], data: bad[i].data.slice(0, 31) };
  await Deno.writeFile(`${dir}/model.safetensors`, encodeSafetensors(bad));
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  await assert.rejects(loadModel(dir), /decoder\.ln_f\.weight/);
  model.dispose();
});

Deno.test("bad config.json values are clear errors", async () => {
  const dir = await Deno.makeTempDir();
  const model = new VisionLanguageModel(tinyConfig(), 1);
  await saveModel(dir, model, vocab);
  const { config } = await loadCheckpoint(dir);
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ ...config, vocab: ["a", "b"] }, /last "vocab" entry must be "<pad>"/],
    [{ ...config, model_type: "gpt" }, /"model_type" must be one of "seemore", "seemoe", not "gpt"/],
    [{ ...config, n_embd: "wide" }, /"n_embd" must be a whole number from 1 to 65536, not "wide"/],
    // the fuzz test's minimal cases (tests/fuzz_test.ts): each once built a model, or failed inside tfjs
    // with a message that named neither the file nor the key
    [{ ...config, n_head: 0 }, /"n_head" must be a whole number from 1 to 65536, not 0/],
    [{ ...config, n_embd: 8.5 }, /"n_embd" must be a whole number from 1 to 65536, not 8.5/],
    [{ ...config, n_layer: 1.5 }, /"n_layer" must be a whole number from 0 to 1024, not 1.5/],
    [
      { ...config, block_positions: 0.5 },
      /"block_positions" must be a whole number from 1 to 1000000, not 0.5/,
    ],
    [{ ...config, n_head: 3 }, /"n_embd" 32 is not divisible by "n_head" 3/],
    [{ ...config, patch_size: undefined, img_size: 8 }, /"img_size" 8 is not a multiple of "patch_size" 16/],
    [{ ...config, patch_stem: "conv", patch_size: 2, img_size: 8 }, /"patch_size" 2 is not a multiple of 4/],
    [{ ...config, dropout: 1 }, /"dropout" must be a number from 0 to 1 \(excluded\), not 1/],
    [{ ...config, first_token_from_image: "yes" }, /"first_token_from_image" must be true or false/],
    [{ ...config, vocab: ["a", "a", "<pad>"] }, /"vocab": symbol "a" appears twice/],
    [{ ...config, vocab: ["ab", "<pad>"] }, /"vocab": symbol 0 is "ab"; only "<pad>" may be longer/],
    [
      { ...config, img_size: 2 ** 20, patch_size: 2 ** 20 },
      /"img_size" must be a whole number from 1 to 4096/,
    ],
    [
      { ...config, n_embd: 65536, n_layer: 1000 },
      /would hold \d+ parameters, more than the limit of 268435456/,
    ],
    [{ ...config, vocab_size: 12 }, /"vocab_size" is 12 but "vocab" lists 66/],
    [{ ...config, patch_stem: "hmlp" }, /"patch_stem" must be one of "linear", "conv"/],
    [{ ...config, patch_stem: "conv", patch_size: 6, img_size: 36 }, /"patch_size" 6 is not a multiple of 4/],
    [{ ...config, image_words: "red" }, /"image_words" must be a list of words/],
    [{ ...config, image_words: ["red", 3] }, /"image_words" must be a list of words/],
  ];
  for (const [json, pattern] of cases) {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(json));
    await assert.rejects(loadModel(dir), (e: Error) => {
      assert.match(e.message, new RegExp(`^${dir}/config.json: `));
      assert.match(e.message, pattern);
      return true;
    });
  }
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  await assert.rejects(loadModel(dir, "seemoe"), /holds a "seemore" model, not "seemoe"/);
  model.dispose();
});

Deno.test("a config.json describing a giant model is refused before anything is allocated", async () => {
  const dir = await Deno.makeTempDir();
  const model = new VisionLanguageModel(tinyConfig(), 1);
  await saveModel(dir, model, vocab);
  model.dispose();
  const { config } = await loadCheckpoint(dir);
  const before = tf.memory().numBytes;
  const giants: [Record<string, number>, RegExp][] = [
    [
      { n_embd: 1e9, n_head: 1 },
      /config\.json: "n_embd" must be a whole number from 1 to 65536, not 1000000000/,
    ],
    [
      { block_positions: 2 ** 40 },
      /config\.json: "block_positions" must be a whole number from 1 to 1000000/,
    ],
    // each size within its bound, the whole too large
    [
      { n_embd: 4096, n_head: 1, n_layer: 8 },
      /config\.json: the model would hold \d+ parameters, more than the limit of 268435456/,
    ],
  ];
  for (const [giant, message] of giants) {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...config, ...giant }));
    await assert.rejects(loadModel(dir), message);
  }
  assert.equal(tf.memory().numBytes, before);
});
