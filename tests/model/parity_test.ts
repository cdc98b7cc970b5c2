// Parity with the original PyTorch code: the fixtures in tests/fixtures/parity were written by
// tests/fixtures/make_parity_fixture.py from the unmodified original (seemore.py, seeMoE.py) with
// every parameter randomised. Loading those weights, our model must give the same logits and losses.

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { loadModel } from "../../lib/model_files.ts";
import { ForwardContext } from "../../lib/model/module.ts";
import { assertClose, useBackend } from "../helpers.ts";
import { captionLoss } from "../../lib/objective.ts";

const FIXTURES = new URL("../fixtures/parity/", import.meta.url).pathname;

interface ParityIO {
  images: number[];
  images_shape: number[];
  idx: number[][];
  targets: number[][];
  logits: number[];
  logits_shape: number[];
  image_embeds: number[];
  loss_original: number;
  loss_ignore_pad: number;
}

export async function checkParity(kind: "seemore" | "seemoe") {
  await useBackend();
  const dir = FIXTURES + kind;
  const io: ParityIO = JSON.parse(await Deno.readTextFile(`${dir}/io.json`));
  const { model } = await loadModel(dir, kind);
  const images = tf.tensor4d(io.images, io.images_shape as [number, number, number, number]);
  const idx = tf.tensor2d(io.idx, undefined, "int32");
  const targets = tf.tensor2d(io.targets, undefined, "int32");
  const ctx = ForwardContext.eval();

  const embeds = tf.tidy(() => model.visionEncoder.forward(images, ctx).dataSync());
  assertClose(embeds, io.image_embeds, 1e-5, "ViT output");

  const logits = tf.tidy(() => model.forward(images, idx, ctx));
  assert.deepEqual(logits.shape, io.logits_shape);
  assertClose(logits.dataSync(), io.logits, 2e-5, "logits");

  const lossAll = tf.tidy(() => captionLoss(model, images, idx, targets, ctx, "all").dataSync()[0]);
  const lossNone = tf.tidy(() => captionLoss(model, images, idx, targets, ctx, "none").dataSync()[0]);
  assert(Math.abs(lossAll - io.loss_original) < 1e-5, `loss with pad ${lossAll} vs ${io.loss_original}`);
  assert(
    Math.abs(lossNone - io.loss_ignore_pad) < 1e-5,
    `loss without pad ${lossNone} vs ${io.loss_ignore_pad}`,
  );
  tf.dispose([images, idx, targets, logits]);
  model.dispose();
}

Deno.test("seemore: same weights and inputs give the original's logits and losses", () =>
  checkParity("seemore"));
