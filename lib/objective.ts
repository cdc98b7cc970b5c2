// The training objective: next-character cross-entropy over [visual tokens, caption], which targets count
// (the pad policy, word-noised characters, the caption's first character), the image-side word loss on
// grey copies of the images, and seeMoE's load-balancing loss.

import * as tf from "@tensorflow/tfjs";
import { IMAGENET_MEAN, IMAGENET_STD, type TrainConfig } from "./config.ts";
import type { ForwardContext } from "./model/module.ts";
import type { VisionLanguageModel } from "./model/vision_language_model.ts";

export type PadLoss = TrainConfig["pad_loss"];

/** Optional parts of a training loss. */
export interface LossExtras {
  /** (B, T) 1 where caption character t is not a target (a word swapped by word noising). */
  skip?: Uint8Array;
  /** (B, W) 1 where the caption holds word w of `config.image_words`. */
  words?: tf.Tensor2D;
  /** Weight of the image-side word loss (0 = off). */
  wordLoss?: number;
}

/**
 * Mean next-character cross-entropy of a batch (scalar), plus `wordLoss` times the word loss when
 * `words` (B, W) is given and the model has a word head: the ViT encodes a grey copy of each image and
 * its CLS feature predicts which words the caption holds (binary cross-entropy). Without colour to go by,
 * the head must name shapes from their outlines, so the encoder learns shape features that carry over to
 * colours a shape was never seen in. seeMoE adds aux_loss_coef times its balance loss while training.
 * Nothing is read back to the host.
 */
export function captionLoss(
  model: VisionLanguageModel,
  images: tf.Tensor4D,
  idx: tf.Tensor2D,
  targets: tf.Tensor2D,
  ctx: ForwardContext,
  padLoss: PadLoss,
  extra: LossExtras = {},
): tf.Scalar {
  const logits = model.forward(images, idx, ctx); // (B, V+T, vocab)
  const [B, L, vocab] = logits.shape;
  const { ids, weights } = lossTargetTensors(model, idx, targets, padLoss, extra.skip);
  let loss = crossEntropy(tf.reshape(logits, [B * L, vocab]) as tf.Tensor2D, ids, weights);
  if (model.wordHead && extra.words && extra.wordLoss) {
    const z = model.wordLogits(grayscale(images), ctx.branch("grey")); // (B, W) word logits, its own noise
    const bce = tf.mean(tf.sub(tf.softplus(z), tf.mul(z, extra.words))); // binary cross-entropy with logits
    loss = tf.add(loss, tf.mul(bce, extra.wordLoss));
  }
  const aux = model.auxLoss();
  if (aux) loss = tf.add(loss, tf.mul(aux, model.config.aux_loss_coef));
  return loss;
}

/**
 * Mean cross-entropy of `logits` (N, V) against integer `targets` (N), counting only rows whose
 * `weights` (N) is 1. Returns a scalar.
 */
export function crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D, weights: tf.Tensor1D): tf.Scalar {
  const vocab = logits.shape[1];
  const logProbs = tf.logSoftmax(logits); // (N, V)
  const picked = tf.sum(tf.mul(logProbs, tf.cast(tf.oneHot(targets, vocab), "float32")), -1); // (N)
  const total = tf.sum(tf.mul(picked, weights));
  return tf.div(tf.neg(total), tf.maximum(tf.sum(weights), 1)) as tf.Scalar;
}

/**
 * Target id and weight (1 = counts) for every position of [visual tokens, caption], (B·L) each, built
 * with tensor ops from the batch's ids (nothing read back). The original ignores the visual positions;
 * with `first_token_from_image` the last visual position learns the caption's first character, so a
 * caption can be generated from the image alone. Caption position t targets targets[b, t]; pads count as
 * `padLoss` says: "all" (the original), "first" (the one that ends the caption) or "none". Characters
 * flagged in `skip` (B, T) are no target wherever they would be one.
 */
export function lossTargetTensors(
  model: VisionLanguageModel,
  idx: tf.Tensor2D,
  targets: tf.Tensor2D,
  padLoss: PadLoss,
  skip?: Uint8Array,
): { ids: tf.Tensor1D; weights: tf.Tensor1D } {
  return tf.tidy(() => {
    const [B, T] = idx.shape;
    const V = model.numVisualTokens, first = model.config.first_token_from_image;
    const isPad = tf.cast(tf.equal(targets, model.config.vocab_size - 1), "float32"); // (B, T)
    let counts: tf.Tensor = padLoss === "all" ? tf.onesLike(isPad) : tf.sub(1, isPad); // (B, T)
    if (padLoss === "first") {
      counts = tf.add(counts, tf.mul(isPad, tf.cast(tf.equal(tf.cumsum(isPad, 1), 1), "float32")));
    }
    const visualWeights = new Float32Array(B * V); // (B, V)
    const captionKept = new Float32Array(B * T).fill(1); // (B, T): 0 where the next character is skipped
    for (let b = 0; b < B; b++) {
      if (first) visualWeights[b * V + V - 1] = skip?.[b * T] ? 0 : 1;
      for (let t = 0; t + 1 < T; t++) if (skip?.[b * T + t + 1]) captionKept[b * T + t] = 0;
    }
    const firstIds = tf.cast(tf.slice(idx, [0, 0], [B, 1]), "int32"); // (B, 1): the caption's first id
    const visualIds = first
      ? tf.concat([tf.zeros([B, V - 1], "int32"), firstIds], 1)
      : tf.zeros([B, V], "int32"); // (B, V)
    const ids = tf.concat([visualIds, tf.cast(targets, "int32")], 1); // (B, L)
    const weights = tf.concat([
      tf.tensor2d(visualWeights, [B, V]),
      tf.mul(counts, tf.tensor2d(captionKept, [B, T])),
    ], 1); // (B, L)
    return { ids: tf.reshape(ids, [-1]) as tf.Tensor1D, weights: tf.reshape(weights, [-1]) as tf.Tensor1D };
  });
}

/** lossTargetTensors() read back to the host (tests and tools; cpu and wasm). */
export function lossTargets(
  model: VisionLanguageModel,
  idx: tf.Tensor2D,
  targets: tf.Tensor2D,
  padLoss: PadLoss,
  skip?: Uint8Array,
): { ids: Int32Array; weights: Float32Array } {
  const { ids, weights } = lossTargetTensors(model, idx, targets, padLoss, skip);
  const out = { ids: Int32Array.from(ids.dataSync()), weights: Float32Array.from(weights.dataSync()) };
  tf.dispose([ids, weights]);
  return out;
}

/**
 * Normalised RGB images → the same images in grey (ITU-R BT.601 luma), normalised again. The word loss
 * looks at these, so the word head cannot tell a shape from its colour.
 */
export function grayscale(images: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => {
    const mean = tf.tensor4d([...IMAGENET_MEAN], [1, 3, 1, 1]);
    const std = tf.tensor4d([...IMAGENET_STD], [1, 3, 1, 1]);
    const rgb = tf.add(tf.mul(images, std), mean); // (B, 3, S, S) in [0, 1]
    const luma = tf.sum(tf.mul(rgb, tf.tensor4d([0.299, 0.587, 0.114], [1, 3, 1, 1])), 1, true); // (B, 1, S, S)
    return tf.div(tf.sub(luma, mean), std) as tf.Tensor4D; // (B, 3, S, S): luma in every channel
  });
}
