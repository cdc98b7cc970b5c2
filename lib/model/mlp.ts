// Two-layer feed-forward networks, Linear → activation → Linear (→ Dropout). The original writes four:
// seemore's block feed-forward (GELU, no dropout, saved as `ffn.0` / `ffn.2`), `MLP` (seeMoE's ViT blocks:
// ReLU since the original builds it with is_decoder=True, dropout 0.1, `net.0` / `net.2`), the
// `MultiModalProjector` (projector.ts) and seeMoE's `Expert` (moe.ts). All are this one class.

import * as tf from "@tensorflow/tfjs";
import { relu } from "../ops/activations.ts";
import { dense, geluDense } from "../ops/dense.ts";
import { Linear } from "./layers.ts";
import { type ForwardContext, type Initialiser, Module } from "./module.ts";

export interface TwoLayerConfig {
  nIn: number;
  nHidden: number;
  nOut: number;
  activation: "relu" | "gelu";
  dropout: number;
  /** The two Linears' names in the state_dict: "net" gives net.0 / net.2, "" gives 0 / 2. */
  prefix: "net" | "";
}

export class TwoLayerMLP extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(readonly cfg: TwoLayerConfig, init: Initialiser) {
    super();
    const name = (i: number) => (cfg.prefix ? `${cfg.prefix}.${i}` : `${i}`);
    this.fc1 = this.add(name(0), new Linear(cfg.nIn, cfg.nHidden, init));
    this.fc2 = this.add(name(2), new Linear(cfg.nHidden, cfg.nOut, init));
  }

  /**
   * (..., nIn) → (..., nOut). In a tidy: the ops keep what their gradients need (h for GELU, ReLU's
   * output for ReLU), and the rest (h before ReLU, the output before dropout) goes at once.
   */
  forward(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    return tf.tidy(() => {
      const h = this.fc1.forward(x); // (..., nHidden)
      const { weight, bias } = this.fc2;
      const y = this.cfg.activation === "gelu"
        ? geluDense(h, weight, bias!) // fc2(GELU(h)), keeping only h for the backward pass
        : dense(relu(h), weight, bias ?? undefined);
      return this.dropout(y, this.cfg.dropout, ctx, "output"); // (..., nOut)
    });
  }
}

/** seemore's block feed-forward: Linear(C, 4C) → GELU → Linear(4C, C), saved as ffn.0 / ffn.2. */
export class FeedForward extends TwoLayerMLP {
  constructor(nEmbd: number, init: Initialiser) {
    super({ nIn: nEmbd, nHidden: 4 * nEmbd, nOut: nEmbd, activation: "gelu", dropout: 0, prefix: "" }, init);
  }
}

/** The original's MLP(n_embd, dropout, is_decoder): C → 4C → C, ReLU in decoders, GELU elsewhere. */
export class MLP extends TwoLayerMLP {
  constructor(nEmbd: number, dropout: number, isDecoder: boolean, init: Initialiser) {
    const activation = isDecoder ? "relu" : "gelu";
    super({ nIn: nEmbd, nHidden: 4 * nEmbd, nOut: nEmbd, activation, dropout, prefix: "net" }, init);
  }
}
