// MLP: the two-layer feed-forward network of the original (Linear → ReLU or GELU → Linear → Dropout).
// seeMoE's ViT blocks use it (with GELU, since they are not decoder blocks); seemore's own blocks use an
// un-named feed-forward without dropout, which lives in block.ts.

import * as tf from "@tensorflow/tfjs";
import {
  type Ctx,
  dropout,
  gelu,
  type Initialiser,
  Linear,
  type Parametrised,
  type StateDict,
} from "./ops.ts";

export class MLP implements Parametrised {
  readonly fc1: Linear; // net.0
  readonly fc2: Linear; // net.2

  constructor(
    readonly nEmbd: number,
    readonly dropoutRate: number,
    readonly isDecoder: boolean,
    init: Initialiser,
  ) {
    this.fc1 = new Linear(nEmbd, 4 * nEmbd, init);
    this.fc2 = new Linear(4 * nEmbd, nEmbd, init);
  }

  forward(x: tf.Tensor, ctx: Ctx): tf.Tensor {
    const h = this.fc1.forward(x); // (B, T, 4C)
    const a = this.isDecoder ? tf.relu(h) : gelu(h);
    return dropout(this.fc2.forward(a), this.dropoutRate, ctx); // (B, T, C)
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
