// DecoderLanguageModel: a character-level, decoder-only transformer (nanoGPT's shape) that reads
// visual tokens first and then the caption.
//
//   token ids (B, T) ──embed──┐
//   visual feats (B, V, D) ──projector──> (B, V, C) ──concat──> (B, V+T, C) + positions
//                                                     ──causal Blocks──> ln_f ──lm_head──> logits
//
// Generation runs through the same code with a KV cache (see lib/generate.ts): each new token costs
// one position's work, and gives exactly what recomputing the whole sequence would. (The original's
// generate() re-adds position embeddings and re-runs the blocks on their own outputs every step and
// skips ln_f, so its samples do not come from the model it trained; that is fixed here.)

import * as tf from "@tensorflow/tfjs";
import { type KVCache } from "./attention.ts";
import { Block, type BlockOptions } from "./block.ts";
import {
  type Ctx,
  embed,
  type Initialiser,
  LayerNorm,
  Linear,
  Param,
  type Parametrised,
  type StateDict,
} from "./ops.ts";
import { MultiModalProjector } from "./projector.ts";

/** What the decoder needs of a block: seemore's Block and seeMoE's SparseMoEBlock both fit. */
export interface DecoderBlock extends Parametrised {
  forward(x: tf.Tensor3D, ctx: Ctx, cache?: KVCache): tf.Tensor3D;
}

export interface DecoderOptions {
  nEmbd: number;
  imageEmbedDim: number;
  vocabSize: number;
  numHeads: number;
  nLayer: number;
  dropout: number;
  blockPositions: number;
  useImages: boolean;
  blockOptions?: BlockOptions;
}

export class DecoderLanguageModel implements Parametrised {
  readonly tokenEmbedding: Param; // (vocab, C)
  readonly positionEmbedding: Param; // (positions, C)
  readonly imageProjection: MultiModalProjector | null;
  readonly blocks: DecoderBlock[];
  readonly lnF: LayerNorm;
  readonly lmHead: Linear;
  /** The state_dict name of the block list ("blocks" here, "sparseMoEBlocks" in seeMoE). */
  readonly blocksKey: string = "blocks";

  constructor(
    readonly opts: DecoderOptions,
    init: Initialiser,
    makeBlock?: () => DecoderBlock,
    blocksKey?: string,
  ) {
    const { nEmbd: C, vocabSize, blockPositions } = opts;
    this.tokenEmbedding = new Param([vocabSize, C], init.normal([vocabSize, C]), ".weight");
    this.positionEmbedding = new Param([blockPositions, C], init.normal([blockPositions, C]), ".weight");
    this.imageProjection = opts.useImages
      ? new MultiModalProjector(C, opts.imageEmbedDim, opts.dropout, init)
      : null;
    const build = makeBlock ??
      (() => new Block(C, opts.numHeads, opts.dropout, true, init, "gelu", opts.blockOptions));
    this.blocks = Array.from({ length: opts.nLayer }, build);
    if (blocksKey) this.blocksKey = blocksKey;
    this.lnF = new LayerNorm(C, init);
    this.lmHead = new Linear(C, vocabSize, init);
  }

  /** Token ids (B, T) → embeddings (B, T, C), without positions. */
  embedTokens(idx: tf.Tensor2D): tf.Tensor3D {
    return embed(idx, this.tokenEmbedding.v as tf.Tensor2D) as tf.Tensor3D;
  }

  /** Visual features (B, V, D) → visual tokens (B, V, C). */
  projectImage(imageEmbeds: tf.Tensor3D, ctx: Ctx): tf.Tensor3D {
    if (!this.imageProjection) throw new Error("this decoder was built without an image projection");
    return this.imageProjection.forward(imageEmbeds, ctx) as tf.Tensor3D;
  }

  /**
   * Embeddings (B, T, C) occupying positions [start, start+T) → logits (B, T, vocab).
   * With caches (one per block) the keys/values of earlier positions are reused and extended.
   */
  run(x: tf.Tensor3D, start: number, ctx: Ctx, caches?: KVCache[]): tf.Tensor3D {
    const [, T, C] = x.shape;
    this.checkPositions(start, T);
    const pos = tf.slice(this.positionEmbedding.v, [start, 0], [T, C]); // (T, C)
    let h = tf.add(x, pos) as tf.Tensor3D; // (B, T, C)
    this.blocks.forEach((block, i) => {
      h = block.forward(h, ctx, caches?.[i]);
    });
    return this.lmHead.forward(this.lnF.forward(h)) as tf.Tensor3D; // (B, T, vocab)
  }

  /** Throws unless positions [start, start+T) lie inside the position table. */
  checkPositions(start: number, T: number): void {
    if (start + T > this.opts.blockPositions) {
      throw new Error(
        `sequence of ${
          start + T
        } positions (visual tokens + caption) exceeds the position table of ${this.opts.blockPositions}`,
      );
    }
  }

  /** The original's forward: [visual tokens, caption tokens] → logits (B, V+T, vocab). */
  forward(idx: tf.Tensor2D, imageEmbeds: tf.Tensor3D | null, ctx: Ctx): tf.Tensor3D {
    let x = this.embedTokens(idx); // (B, T, C)
    if (this.imageProjection && imageEmbeds) {
      x = tf.concat([this.projectImage(imageEmbeds, ctx), x], 1) as tf.Tensor3D; // (B, V+T, C)
    }
    return this.run(x, 0, ctx);
  }

  variables(): tf.Variable[] {
    return [
      ...this.tokenEmbedding.variables(),
      ...this.positionEmbedding.variables(),
      ...(this.imageProjection?.variables() ?? []),
      ...this.blocks.flatMap((b) => b.variables()),
      ...this.lnF.variables(),
      ...this.lmHead.variables(),
    ];
  }
  saveState(prefix: string, out: StateDict): void {
    this.tokenEmbedding.saveState(`${prefix}.token_embedding_table`, out);
    this.positionEmbedding.saveState(`${prefix}.position_embedding_table`, out);
    this.imageProjection?.saveState(`${prefix}.image_projection`, out);
    this.blocks.forEach((b, i) => b.saveState(`${prefix}.${this.blocksKey}.${i}`, out));
    this.lnF.saveState(`${prefix}.ln_f`, out);
    this.lmHead.saveState(`${prefix}.lm_head`, out);
  }
  loadState(prefix: string, state: StateDict): void {
    this.tokenEmbedding.loadState(`${prefix}.token_embedding_table`, state);
    this.positionEmbedding.loadState(`${prefix}.position_embedding_table`, state);
    this.imageProjection?.loadState(`${prefix}.image_projection`, state);
    this.blocks.forEach((b, i) => b.loadState(`${prefix}.${this.blocksKey}.${i}`, state));
    this.lnF.loadState(`${prefix}.ln_f`, state);
    this.lmHead.loadState(`${prefix}.lm_head`, state);
  }
}
