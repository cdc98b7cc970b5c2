// MultiModalProjector: turns visual features (width image_embed_dim) into "visual tokens" of the
// decoder's width n_embd, with a two-layer GELU MLP (Linear → GELU → Linear → Dropout).

import type * as tf from "@tensorflow/tfjs";
import {
  type Ctx,
  dropout,
  gelu,
  type Initialiser,
  Linear,
  type Parametrised,
  type StateDict,
} from "./ops.ts";

export class MultiModalProjector implements Parametrised {
  readonly fc1: Linear; // net.0
  readonly fc2: Linear; // net.2

  constructor(
    readonly nEmbd: number,
    readonly imageEmbedDim: number,
    readonly dropoutRate: number,
    init: Initialiser,
  ) {
    this.fc1 = new Linear(imageEmbedDim, 4 * imageEmbedDim, init);
    this.fc2 = new Linear(4 * imageEmbedDim, nEmbd, init);
  }

  /** (B, V, D) → (B, V, C) */
  forward(x: tf.Tensor, ctx: Ctx): tf.Tensor {
    const h = gelu(this.fc1.forward(x)); // (B, V, 4D)
    return dropout(this.fc2.forward(h), this.dropoutRate, ctx); // (B, V, C)
  }

  variables(): tf.Variable[] {
    return [...this.fc1.variables(), ...this.fc2.variables()];
  }
  saveState(prefix: string, out: StateDict): void {
    this.fc1.saveState(`${prefix}.net.0`, out);
    this.fc2.saveState(`${prefix}.net.2`, out);
  }
  loadState(prefix: string, state: StateDict): void {
    this.fc1.loadState(`${prefix}.net.0`, state);
    this.fc2.loadState(`${prefix}.net.2`, state);
  }
}
