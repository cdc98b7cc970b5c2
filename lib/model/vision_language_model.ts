// VisionLanguageModel: the whole of seemore — ViT image encoder → projector → decoder.
//
// forward(images, idx) gives logits for every position of [visual tokens, caption]. Parameters are saved
// and loaded under the original's state_dict names (`vision_encoder.*`, `decoder.*`), so weights move
// freely between this code and the PyTorch original. The training objective is in lib/objective.ts.

import * as tf from "@tensorflow/tfjs";
import { initOf, type ModelConfig } from "../config.ts";
import { DecoderLanguageModel } from "./decoder.ts";
import { kaimingInitLinears } from "./init.ts";
import { Linear } from "./layers.ts";
import { type ForwardContext, Initialiser, Module } from "./module.ts";
import { ViT } from "./vit.ts";

/** Linear weights start as the config's `init` says (initOf: absent, PyTorch's default for seemore). */
export class VisionLanguageModel extends Module {
  readonly visionEncoder: ViT;
  readonly decoder: DecoderLanguageModel;
  /** CLS feature → one logit per word of `config.image_words` (only when that list is not empty). */
  readonly wordHead: Linear | null;

  constructor(readonly config: ModelConfig, seed = 0) {
    super();
    const c = config;
    if (c.image_embed_dim % c.n_head !== 0) {
      throw new Error(`image_embed_dim ${c.image_embed_dim} must be divisible by n_head ${c.n_head}`);
    }
    const init = new Initialiser(seed);
    this.visionEncoder = this.add("vision_encoder", new ViT(c, init, this.vitFeedForward()));
    this.decoder = this.add("decoder", this.buildDecoder(init));
    const words = c.image_words ?? [];
    this.wordHead = words.length > 0
      ? this.add("word_head", new Linear(c.image_embed_dim, words.length, init))
      : null;
    if (initOf(c) === "kaiming") kaimingInitLinears(this, seed); // after every part is built (seeMoE's too)
  }

  /** seemore's ViT blocks use the GELU feed-forward; seeMoE overrides this. */
  protected vitFeedForward(): "gelu" | "mlp" {
    return "gelu";
  }

  protected buildDecoder(init: Initialiser): DecoderLanguageModel {
    return new DecoderLanguageModel(this.config, init);
  }

  /** Visual tokens per image (1 for the original's CLS-only encoder). */
  get numVisualTokens(): number {
    return this.visionEncoder.numVisualTokens;
  }

  /** images (B, 3, S, S) → the decoder's visual tokens (B, V, C): ViT features through the projector. */
  visualTokens(images: tf.Tensor4D, ctx: ForwardContext): tf.Tensor3D {
    return this.decoder.projectImage(this.visionEncoder.forward(images, ctx), ctx); // (B, V, C)
  }

  /** images (B, 3, S, S), idx (B, T) → logits (B, V+T, vocab). */
  forward(images: tf.Tensor4D, idx: tf.Tensor2D, ctx: ForwardContext): tf.Tensor3D {
    const imageEmbeds = this.visionEncoder.forward(images, ctx); // (B, V, D)
    return this.decoder.forward(idx, imageEmbeds, ctx);
  }

  /** images (B, 3, S, S) → (B, W): the word head's logits from each image's CLS feature. */
  wordLogits(images: tf.Tensor4D, ctx: ForwardContext): tf.Tensor2D {
    if (!this.wordHead) throw new Error("this model has no word head (config image_words is empty)");
    const features = this.visionEncoder.forward(images, ctx); // (B, V, D)
    const B = images.shape[0];
    const cls = tf.reshape(tf.slice(features, [0, 0, 0], [B, 1, -1]), [B, -1]); // (B, D)
    return this.wordHead.forward(cls) as tf.Tensor2D;
  }

  /** A loss the model adds to its objective while training (seeMoE's load balancing), or null. */
  auxLoss(): tf.Scalar | null {
    return null;
  }
}
