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
  /** Weight of the Switch-Transformer load-balancing loss added while training (0 = none, as the original). */
  aux_loss_coef: number;
  /** Expert capacity = ceil(factor · tokens · top_k / experts); tokens over it skip that expert (0 = no limit, as the original). */
  capacity_factor: number;
  /** Router noise in evaluation and generation too, as the original does (default false: noise only while training). */
  router_noise_in_eval: boolean;
  // Beyond the original (a checkpoint without these keys means the original's behaviour):
  /** "cls": one visual token, the ViT's CLS output (original); "patches": CLS and every patch token. */
  visual_tokens: "cls" | "patches";
  /** Train the last visual position to predict the caption's first character (original: false). */
  first_token_from_image: boolean;
  /** "width": attention scaled by n_embd^-0.5 (original); "head": by head_size^-0.5. */
  attention_scale: "width" | "head";
  /** "original": x = ln2(x + attn(ln1 x)); x += ffn(x). "pre_norm": x += attn(ln1 x); x += ffn(ln2 x). */
  residual: "original" | "pre_norm";
  /** "linear": one matmul per patch (original); "conv": two 3×3 convolutions first (lib/model/conv_patch_embeddings.ts). */
  patch_stem: "linear" | "conv";
  /** Words a head on the ViT's CLS feature learns to predict (train's `word_loss`; [] = no head, as the original). */
  image_words: string[];
}

/** Optimisation: not part of a checkpoint's architecture. */
export interface TrainConfig {
  batch_size: number;
  learning_rate: number;
  max_iters: number;
  eval_interval: number;
  eval_iters: number;
  /**
   * Save the run folder every save_interval steps (and at the end); 0 = only at the end. Each save replaces
   * the folder's files as one group, so a crash loses at most this many steps.
   */
  save_interval: number;
  val_batch_size: number;
  seed: number;
  /**
   * Which `<pad>` targets count in the loss. "all": every one, as the original (the model then spends
   * capacity predicting padding); "first": only the pad right after each caption, which is what
   * teaches the model to stop; "none": no pad target at all.
   */
  pad_loss: "all" | "first" | "none";
  /** Steps of linear learning-rate warm-up from 0 (the original: 0, full rate from the first step). */
  warmup_iters: number;
  /** After warm-up, decay the learning rate along a cosine to min_lr at max_iters (original: false, constant). */
  decay_lr: boolean;
  min_lr: number;
  /**
   * Probability that a caption word is swapped for a random training word while training, its own
   * characters not learned (lib/data/word_noise.ts; original: 0).
   */
  word_noise: number;
  /**
   * Weight of the image-side word loss: the ViT's CLS feature predicts which words the caption holds
   * (lib/data/caption_words.ts; original: 0). With it > 0 a new model gets `image_words` from the data.
   */
  word_loss: number;
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
  aux_loss_coef: 0,
  capacity_factor: 0,
  router_noise_in_eval: false,
  visual_tokens: "cls",
  first_token_from_image: false,
  attention_scale: "width",
  residual: "original",
  patch_stem: "linear",
  image_words: [],
};

export const DEFAULT_TRAIN: TrainConfig = {
  batch_size: 16,
  learning_rate: 1e-3,
  max_iters: 100,
  eval_interval: 10,
  eval_iters: 40,
  // A save writes the weights and twice as much Adam state; every 100 steps that is a small fraction of the
  // training time even for the original's model, and a crash loses at most 100 of its slow steps.
  save_interval: 100,
  val_batch_size: 8,
  seed: 1337,
  pad_loss: "first",
  warmup_iters: 0,
  decay_lr: false,
  min_lr: 1e-4,
  word_noise: 0,
  word_loss: 0,
};

/** ImageNet statistics the original normalises images with. */
export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;

/** The padding symbol: always the last token id. */
export const PAD = "<pad>";

/**
 * Named starting points for `deno task train --recipe NAME` (flags given after it still win).
 * - "original": the PyTorch original's architecture and schedule (plus our bug fixes). On the shapes data it
 *   learns caption statistics only: every image gets the same caption (see README, "A model that sees").
 * - "seeing": the CLI's default. A smaller ViT over 64×64 images, a small convolutional stem in front of
 *   16×16 patches, every patch token passed to the decoder, the usual pre-norm blocks with head-size
 *   attention scaling, the first character predicted from the image; trained with word noising, a word loss
 *   on grey copies of the images and a cosine learning-rate decay. It captions colour–shape pairs it never
 *   saw in training (README, "A model that sees").
 */
export const RECIPES: Record<string, { model: Partial<ModelConfig>; train: Partial<TrainConfig> }> = {
  original: { model: {}, train: {} },
  seeing: {
    model: {
      image_embed_dim: 128,
      n_layer: 4,
      img_size: 64,
      patch_size: 16,
      patch_stem: "conv",
      visual_tokens: "patches",
      first_token_from_image: true,
      attention_scale: "head",
      residual: "pre_norm",
    },
    train: {
      max_iters: 4800, // ≈ 6 minutes of training on a 2-core CPU (wasm + OpenBLAS + oneDNN: 365 s)
      eval_interval: 500,
      eval_iters: 5,
      save_interval: 500, // with each evaluation
      warmup_iters: 100,
      decay_lr: true,
      min_lr: 1e-4,
      word_noise: 0.25,
      word_loss: 1,
    },
  },
};
export const DEFAULT_RECIPE = "seeing";
