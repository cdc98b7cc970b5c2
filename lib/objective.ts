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
  const { ids, weights } = lossTargets(model, idx, targets, padLoss, extra.skip);
  let loss = crossEntropy(
    tf.reshape(logits, [B * L, vocab]) as tf.Tensor2D,
    tf.tensor1d(ids, "int32"),
    tf.tensor1d(weights, "float32"),
  );
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
 * Target id and weight (1 = counts) for every position of [visual tokens, caption]. The original
 * ignores the visual positions; with `first_token_from_image` the last visual position learns the
 * caption's first character, so a caption can be generated from the image alone. Characters flagged
 * in `skip` (B, T) are no target wherever they would be one. Pads count as `padLoss` says: "all" (the
 * original), "first" (the one that ends the caption) or "none".
 */
export function lossTargets(
  model: VisionLanguageModel,
  idx: tf.Tensor2D,
  targets: tf.Tensor2D,
  padLoss: PadLoss,
  skip?: Uint8Array,
): { ids: Int32Array; weights: Float32Array } {
  const [B, T] = idx.shape;
  const V = model.numVisualTokens;
  const pad = model.config.vocab_size - 1;
  const idxData = idx.dataSync();
  const tgtData = targets.dataSync();
  const L = V + T;
  const ids = new Int32Array(B * L);
  const weights = new Float32Array(B * L);
  for (let b = 0; b < B; b++) {
    if (model.config.first_token_from_image) {
      ids[b * L + V - 1] = idxData[b * T];
      weights[b * L + V - 1] = skip?.[b * T] ? 0 : 1;
    }
    let seenPad = false;
    for (let t = 0; t < T; t++) {
      const target = tgtData[b * T + t];
      const isPad = target === pad;
      const counts = (!isPad || padLoss === "all" || (padLoss === "first" && !seenPad)) &&
        !(t + 1 < T && skip?.[b * T + t + 1]); // target t is caption character t + 1
      if (isPad) seenPad = true;
      ids[b * L + V + t] = target;
      weights[b * L + V + t] = counts ? 1 : 0;
    }
  }
  return { ids, weights };
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
