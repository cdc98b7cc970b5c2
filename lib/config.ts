// Hyper-parameters of seemore, named as in the original PyTorch code, with its defaults.
// One place holds them; the model, the trainer, the CLI and checkpoints all read this shape.

export type ModelType = "seemore" | "seemoe";

/** Architecture: what a checkpoint's config.json stores (plus `model_type` and `vocab`). */
export interface ModelConfig {
  model_type: ModelType;
  n_embd: number; // decoder width
  image_embed_dim: number; // ViT width (the original's num_hiddens)
  n_head: number; // heads in both the ViT and the decoder
  n_layer: number; // decoder blocks
  num_blks: number; // ViT blocks
  img_size: number; // images are resized to img_size × img_size
  patch_size: number;
  dropout: number; // decoder attention / projector dropout
  emb_dropout: number; // ViT dropout after position embeddings
  blk_dropout: number; // ViT block dropout
  block_positions: number; // rows of the decoder position table (the original's hard-coded 1000)
  vocab_size: number;
  // seeMoE only
  num_experts: number;
  top_k: number;
  // Beyond the original (a checkpoint without these keys means the original's behaviour):
  /** "cls": one visual token, the ViT's CLS output (original); "patches": CLS and every patch token. */
  visual_tokens: "cls" | "patches";
  /** Train the last visual position to predict the caption's first character (original: false). */
  first_token_from_image: boolean;
}

/** Optimisation: not part of a checkpoint's architecture. */
export interface TrainConfig {
  batch_size: number;
  learning_rate: number;
  max_iters: number;
  eval_interval: number;
  eval_iters: number;
  val_batch_size: number;
  seed: number;
  /**
   * Which `<pad>` targets count in the loss. "all": every one, as the original (the model then spends
   * capacity predicting padding); "first": only the pad right after each caption, which is what
   * teaches the model to stop; "none": no pad target at all.
   */
  pad_loss: "all" | "first" | "none";
}

export const DEFAULT_MODEL: Omit<ModelConfig, "vocab_size"> = {
  model_type: "seemore",
  n_embd: 128,
  image_embed_dim: 512,
  n_head: 8,
  n_layer: 8,
  num_blks: 3,
  img_size: 96,
  patch_size: 16,
  dropout: 0.1,
  emb_dropout: 0.1,
  blk_dropout: 0.1,
  block_positions: 1000,
  num_experts: 8,
  top_k: 2,
  visual_tokens: "cls",
  first_token_from_image: false,
};

export const DEFAULT_TRAIN: TrainConfig = {
  batch_size: 16,
  learning_rate: 1e-3,
  max_iters: 100,
  eval_interval: 10,
  eval_iters: 40,
  val_batch_size: 8,
  seed: 1337,
  pad_loss: "first",
};

/** ImageNet statistics the original normalises images with. */
export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;

/** The padding symbol: always the last token id. */
export const PAD = "<pad>";
