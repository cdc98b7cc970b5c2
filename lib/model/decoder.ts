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
import type { ModelConfig } from "../config.ts";
import type { KVCache } from "./attention.ts";
import { Block } from "./block.ts";
import { Embedding, LayerNorm, Linear } from "./layers.ts";
import { type ForwardContext, type Initialiser, Module } from "./module.ts";
import { MultiModalProjector } from "./projector.ts";

/** What the decoder needs of a block: seemore's Block and seeMoE's SparseMoEBlock both fit. */
export interface DecoderBlock extends Module {
  forward(x: tf.Tensor3D, ctx: ForwardContext, cache?: KVCache): tf.Tensor3D;
}

export interface DecoderOptions {
  /** With an image projection (the original's use_images; default true). */
  useImages?: boolean;
  /** The blocks' name in the state_dict and how to make one (default: seemore's causal Blocks). */
  blocks?: { name: string; make: () => DecoderBlock };
}

export class DecoderLanguageModel extends Module {
  readonly tokenEmbedding: Embedding; // (vocab, C)
  readonly positionEmbedding: Embedding; // (positions, C)
  readonly imageProjection: MultiModalProjector | null;
  readonly blocks: DecoderBlock[];
  readonly lnF: LayerNorm;
  readonly lmHead: Linear;

  constructor(readonly cfg: ModelConfig, init: Initialiser, opts: DecoderOptions = {}) {
    super();
    const { n_embd: C, vocab_size: vocab } = cfg;
    this.tokenEmbedding = this.add("token_embedding_table", new Embedding(vocab, C, init));
    this.positionEmbedding = this.add(
      "position_embedding_table",
      new Embedding(cfg.block_positions, C, init),
    );
    this.imageProjection = opts.useImages ?? true
      ? this.add("image_projection", new MultiModalProjector(C, cfg.image_embed_dim, cfg.dropout, init))
      : null;
    const block = () =>
      new Block({
        nEmbd: C,
        numHeads: cfg.n_head,
        dropout: cfg.dropout,
        isDecoder: true,
        preNorm: cfg.residual === "pre_norm",
        scaleByHeadSize: cfg.attention_scale === "head",
      }, init);
    const { name, make } = opts.blocks ?? { name: "blocks", make: block };
    this.blocks = this.addList(name, Array.from({ length: cfg.n_layer }, make));
    this.lnF = this.add("ln_f", new LayerNorm(C, init));
    this.lmHead = this.add("lm_head", new Linear(C, vocab, init));
  }

  /** Token ids (B, T) → embeddings (B, T, C), without positions. */
  embedTokens(idx: tf.Tensor2D): tf.Tensor3D {
    return this.tokenEmbedding.forward(idx) as tf.Tensor3D;
  }

  /** Visual features (B, V, D) → visual tokens (B, V, C). */
  projectImage(imageEmbeds: tf.Tensor3D, ctx: ForwardContext): tf.Tensor3D {
    if (!this.imageProjection) throw new Error("this decoder was built without an image projection");
    return this.imageProjection.forward(imageEmbeds, ctx) as tf.Tensor3D;
  }

  /**
   * Embeddings (B, T, C) at positions [start, start+T) → logits (B, T, vocab): positions added, the
   * blocks, ln_f, lm_head. With caches (one per block) earlier positions' keys and values are reused.
   */
  decode(x: tf.Tensor3D, start: number, ctx: ForwardContext, caches?: KVCache[]): tf.Tensor3D {
    const [, T, C] = x.shape;
    this.checkPositions(start, T);
    const pos = tf.slice(this.positionEmbedding.weight, [start, 0], [T, C]); // (T, C)
    let h = tf.add(x, pos) as tf.Tensor3D; // (B, T, C)
    this.blocks.forEach((block, i) => {
      h = block.forward(h, ctx, caches?.[i]);
    });
    return this.lmHead.forward(this.lnF.forward(h)) as tf.Tensor3D; // (B, T, vocab)
  }

  /** Throws unless positions [start, start+T) lie inside the position table. */
  checkPositions(start: number, T: number): void {
    if (start + T > this.cfg.block_positions) {
      throw new Error(
        `sequence of ${
          start + T
        } positions (visual tokens + caption) exceeds the position table of ${this.cfg.block_positions}`,
      );
    }
  }

  /** The original's forward: [visual tokens, caption tokens] → logits (B, V+T, vocab). */
  forward(idx: tf.Tensor2D, imageEmbeds: tf.Tensor3D | null, ctx: ForwardContext): tf.Tensor3D {
    let x = this.embedTokens(idx); // (B, T, C)
    if (this.imageProjection && imageEmbeds) {
      x = tf.concat([this.projectImage(imageEmbeds, ctx), x], 1) as tf.Tensor3D; // (B, V+T, C)
    }
    return this.decode(x, 0, ctx);
  }
}
