// ViT: the image encoder. Patches become tokens, a learned CLS token is put in front, learned position
// embeddings are added, a few bidirectional Blocks mix them, and a final LayerNorm is applied.
//
// The original hands the decoder ONE visual token: the normalised CLS output (B, D). With
// `visualTokens = "patches"` every token (CLS and all patches, (B, 1+N, D)) is kept instead, as
// LLaVA-style models do; the original's setting is "cls".

import * as tf from "@tensorflow/tfjs";
import { Block, type BlockOptions, type FeedForwardKind } from "./block.ts";
import {
  type Ctx,
  dropout,
  type Initialiser,
  LayerNorm,
  Param,
  type Parametrised,
  type StateDict,
} from "./ops.ts";
import { ConvPatchEmbeddings } from "./conv_patch_embeddings.ts";
import { PatchEmbeddings } from "./patch_embeddings.ts";

export type VisualTokens = "cls" | "patches";
/** "linear": the original's one-matmul patch embedding; "conv": ConvPatchEmbeddings. */
export type PatchStem = "linear" | "conv";

export class ViT implements Parametrised {
  readonly patchEmbedding: PatchEmbeddings | ConvPatchEmbeddings;
  readonly clsToken: Param; // (1, 1, D)
  readonly posEmbedding: Param; // (1, 1+N, D)
  readonly blocks: Block[];
  readonly layerNorm: LayerNorm;

  constructor(
    imgSize: number,
    patchSize: number,
    readonly numHiddens: number,
    numHeads: number,
    numBlks: number,
    readonly embDropout: number,
    blkDropout: number,
    init: Initialiser,
    readonly visualTokens: VisualTokens = "cls",
    ffnKind: FeedForwardKind = "gelu",
    blockOptions: BlockOptions = {},
    patchStem: PatchStem = "linear",
  ) {
    this.patchEmbedding = patchStem === "conv"
      ? new ConvPatchEmbeddings(imgSize, patchSize, numHiddens, init)
      : new PatchEmbeddings(imgSize, patchSize, numHiddens, init);
    const n = this.patchEmbedding.numPatches + 1;
    this.clsToken = new Param([1, 1, numHiddens], init.zeros([1, 1, numHiddens]));
    this.posEmbedding = new Param([1, n, numHiddens], init.normal([1, n, numHiddens]));
    this.blocks = Array.from(
      { length: numBlks },
      () => new Block(numHiddens, numHeads, blkDropout, false, init, ffnKind, blockOptions),
    );
    this.layerNorm = new LayerNorm(numHiddens, init);
  }

  /** How many visual tokens forward() returns per image. */
  get numVisualTokens(): number {
    return this.visualTokens === "cls" ? 1 : this.patchEmbedding.numPatches + 1;
  }

  /** images (B, 3, S, S) → visual features (B, V, D), V = numVisualTokens. */
  forward(images: tf.Tensor4D, ctx: Ctx): tf.Tensor3D {
    const B = images.shape[0];
    const D = this.numHiddens;
    const patches = this.patchEmbedding.forward(images); // (B, N, D)
    const cls = tf.add(tf.zeros([B, 1, D]), this.clsToken.v); // (B, 1, D)
    let x = tf.add(tf.concat([cls, patches], 1), this.posEmbedding.v) as tf.Tensor3D; // (B, 1+N, D)
    x = dropout(x, this.embDropout, ctx) as tf.Tensor3D;
    const clsOnly = this.visualTokens === "cls";
    this.blocks.forEach((block, i) => {
      // Only the CLS token leaves the ViT: the last block computes its row alone (the same numbers).
      x = clsOnly && i === this.blocks.length - 1 ? block.forwardFirst(x, ctx) : block.forward(x, ctx); // (B, 1+N, D) or (B, 1, D)
    });
    if (clsOnly && this.blocks.length === 0) x = tf.slice(x, [0, 0, 0], [B, 1, D]); // (B, 1, D)
    return this.layerNorm.forward(x) as tf.Tensor3D; // (B, V, D)
  }

  variables(): tf.Variable[] {
    return [
      ...this.patchEmbedding.variables(),
      ...this.clsToken.variables(),
      ...this.posEmbedding.variables(),
      ...this.blocks.flatMap((b) => b.variables()),
      ...this.layerNorm.variables(),
    ];
  }
  saveState(prefix: string, out: StateDict): void {
    this.clsToken.saveState(`${prefix}.cls_token`, out);
    this.posEmbedding.saveState(`${prefix}.pos_embedding`, out);
    this.patchEmbedding.saveState(`${prefix}.patch_embedding`, out);
    this.blocks.forEach((b, i) => b.saveState(`${prefix}.blocks.${i}`, out));
    this.layerNorm.saveState(`${prefix}.layer_norm`, out);
  }
  loadState(prefix: string, state: StateDict): void {
    this.clsToken.loadState(`${prefix}.cls_token`, state);
    this.posEmbedding.loadState(`${prefix}.pos_embedding`, state);
    this.patchEmbedding.loadState(`${prefix}.patch_embedding`, state);
    this.blocks.forEach((b, i) => b.loadState(`${prefix}.blocks.${i}`, state));
    this.layerNorm.loadState(`${prefix}.layer_norm`, state);
  }
}
