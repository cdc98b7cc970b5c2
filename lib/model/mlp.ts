// MLP: the two-layer feed-forward network of the original (Linear → ReLU or GELU → Linear → Dropout),
// saved as `net.0` / `net.2`. seeMoE's ViT blocks use it (ReLU, since the original builds it with its
// default is_decoder=True); seemore's own blocks use an unnamed feed-forward without dropout (block.ts).
//
// `TwoLayerNet` is the shape all three of the original's `net = Sequential(Linear, act, Linear, Dropout)`
// modules share: MLP here, MultiModalProjector (projector.ts) and seeMoE's Expert (moe.ts).

import * as tf from "@tensorflow/tfjs";
import {
  type Ctx,
  dropout,
  gelu,
  type Initialiser,
  Linear,
  type Parametrised,
  relu,
  type StateDict,
} from "./ops.ts";

export class TwoLayerNet implements Parametrised {
  readonly fc1: Linear; // net.0
  readonly fc2: Linear; // net.2

  constructor(
    nIn: number,
    nHidden: number,
    nOut: number,
    readonly activation: "relu" | "gelu",
    readonly dropoutRate: number,
    init: Initialiser,
  ) {
    this.fc1 = new Linear(nIn, nHidden, init);
    this.fc2 = new Linear(nHidden, nOut, init);
  }

  /** (..., nIn) → (..., nOut) */
  forward(x: tf.Tensor, ctx: Ctx): tf.Tensor {
    const h = this.fc1.forward(x); // (..., nHidden)
    const a = this.activation === "relu" ? relu(h) : gelu(h);
    return dropout(this.fc2.forward(a), this.dropoutRate, ctx); // (..., nOut)
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

/** The original's MLP(n_embd, dropout, is_decoder): C → 4C → C, ReLU in decoders, GELU elsewhere. */
export class MLP extends TwoLayerNet {
  constructor(readonly nEmbd: number, dropoutRate: number, readonly isDecoder: boolean, init: Initialiser) {
    super(nEmbd, 4 * nEmbd, nEmbd, isDecoder ? "relu" : "gelu", dropoutRate, init);
  }
}
