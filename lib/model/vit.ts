// ViT: the image encoder. Patches become tokens, a learned CLS token is put in front, learned position
// embeddings are added, a few bidirectional Blocks mix them, and a final LayerNorm is applied.
//
// The original hands the decoder ONE visual token: the normalised CLS output (B, D). With
// `visual_tokens: "patches"` every token (CLS and all patches, (B, 1+N, D)) is kept instead, as
// LLaVA-style models do.

import * as tf from "@tensorflow/tfjs";
import type { ModelConfig } from "../config.ts";
import { Block } from "./block.ts";
import { ConvPatchEmbeddings } from "./conv_patch_embeddings.ts";
import { LayerNorm } from "./layers.ts";
import { type ForwardContext, type Initialiser, Module } from "./module.ts";
import { PatchEmbeddings } from "./patch_embeddings.ts";

export class ViT extends Module {
  readonly patchEmbedding: PatchEmbeddings | ConvPatchEmbeddings;
  readonly clsToken: tf.Variable; // (1, 1, D)
  readonly posEmbedding: tf.Variable; // (1, 1+N, D)
  readonly blocks: Block[];
  readonly layerNorm: LayerNorm;

  /** `ffn`: the blocks' feed-forward ("mlp" in seeMoE's ViT). */
  constructor(readonly cfg: ModelConfig, init: Initialiser, ffn: "gelu" | "mlp" = "gelu") {
    super();
    const { img_size: S, patch_size: p, image_embed_dim: D } = cfg;
    this.patchEmbedding = this.add(
      "patch_embedding",
      cfg.patch_stem === "conv" ? new ConvPatchEmbeddings(S, p, D, init) : new PatchEmbeddings(S, p, D, init),
    );
    const n = this.patchEmbedding.numPatches + 1;
    this.clsToken = this.addParameter("cls_token", init.zeros([1, 1, D]));
    this.posEmbedding = this.addParameter("pos_embedding", init.normal([1, n, D]));
    const block = () =>
      new Block({
        nEmbd: D,
        numHeads: cfg.n_head,
        dropout: cfg.blk_dropout,
        isDecoder: false,
        ffn,
        preNorm: cfg.residual === "pre_norm",
        scaleByHeadSize: cfg.attention_scale === "head",
      }, init);
    this.blocks = this.addList("blocks", Array.from({ length: cfg.num_blks }, block));
    this.layerNorm = this.add("layer_norm", new LayerNorm(D, init));
  }

  /** How many visual tokens forward() returns per image. */
  get numVisualTokens(): number {
    return this.cfg.visual_tokens === "cls" ? 1 : this.patchEmbedding.numPatches + 1;
  }

  /** images (B, 3, S, S) → visual features (B, V, D), V = numVisualTokens. */
  forward(images: tf.Tensor4D, ctx: ForwardContext): tf.Tensor3D {
    const B = images.shape[0];
    const D = this.cfg.image_embed_dim;
    let x = tf.tidy(() => { // the embeddings before the dropout go at once
      const patches = this.patchEmbedding.forward(images); // (B, N, D)
      const cls = tf.add(tf.zeros([B, 1, D]), this.clsToken); // (B, 1, D)
      const tokens = tf.add(tf.concat([cls, patches], 1), this.posEmbedding); // (B, 1+N, D)
      return this.dropout(tokens, this.cfg.emb_dropout, ctx, "embedding") as tf.Tensor3D;
    });
    const clsOnly = this.cfg.visual_tokens === "cls";
    this.blocks.forEach((block, i) => {
      // Only the CLS token leaves the ViT: the last block computes its row alone (the same numbers).
      x = clsOnly && i === this.blocks.length - 1 ? block.forwardCls(x, ctx) : block.forward(x, ctx); // (B, 1+N, D) or (B, 1, D)
    });
    if (clsOnly && this.blocks.length === 0) x = tf.slice(x, [0, 0, 0], [B, 1, D]); // (B, 1, D)
    return this.layerNorm.forward(x) as tf.Tensor3D; // (B, V, D)
  }
}
