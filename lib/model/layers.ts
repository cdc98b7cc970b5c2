// The torch.nn layers the original builds from: Linear, LayerNorm and Embedding, with PyTorch's names
// and default initialisation. Linear weights are kept [in, out] (so x @ W is a plain matmul) and saved
// in PyTorch's [out, in].

import type * as tf from "@tensorflow/tfjs";
import { dense, embed } from "../ops/dense.ts";
import { layerNorm } from "../ops/layer_norm.ts";
import { type Initialiser, Module, type ParamLayout, transpose2d } from "./module.ts";

/** A Linear weight: [in, out] here, [out, in] in the state_dict (or `savedShape`, the same values). */
export function transposedWeight(savedShape?: number[]): ParamLayout {
  return {
    save: (
      key,
      data,
      [nIn, nOut],
    ) => [[key, { shape: savedShape ?? [nOut, nIn], data: transpose2d(data, nIn, nOut) }]],
    load: (key, state, [nIn, nOut]) => transpose2d(state.get(key)!.data, nOut, nIn),
  };
}

export interface LinearOptions {
  bias?: boolean;
  /** How the weight is saved (default: PyTorch's [out, in]). */
  weightLayout?: ParamLayout;
}

/** nn.Linear: x (..., in) → (..., out). */
export class Linear extends Module {
  readonly weight: tf.Variable<tf.Rank.R2>; // [in, out]
  readonly bias: tf.Variable<tf.Rank.R1> | null;

  constructor(readonly nIn: number, readonly nOut: number, init: Initialiser, opts: LinearOptions = {}) {
    super();
    const w = init.uniformFanIn([nIn, nOut], nIn);
    this.weight = this.addParameter("weight", w, opts.weightLayout ?? transposedWeight());
    this.bias = opts.bias === false ? null : this.addParameter("bias", init.uniformFanIn([nOut], nIn));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return dense(x, this.weight, this.bias ?? undefined); // (..., nOut)
  }
}

/** nn.LayerNorm over the last axis: gain `weight` and `bias`. */
export class LayerNorm extends Module {
  readonly weight: tf.Variable<tf.Rank.R1>;
  readonly bias: tf.Variable<tf.Rank.R1>;

  constructor(readonly width: number, init: Initialiser) {
    super();
    this.weight = this.addParameter("weight", init.ones([width]));
    this.bias = this.addParameter("bias", init.zeros([width]));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return layerNorm(x, this.weight, this.bias); // (..., C)
  }
}

/** nn.Embedding: a table of `count` rows of width `width`, N(0, 1) at the start. */
export class Embedding extends Module {
  readonly weight: tf.Variable<tf.Rank.R2>; // (count, width)

  constructor(readonly count: number, readonly width: number, init: Initialiser) {
    super();
    this.weight = this.addParameter("weight", init.normal([count, width]));
  }

  /** ids (...) → (..., width) */
  forward(ids: tf.Tensor): tf.Tensor {
    return embed(ids, this.weight);
  }
}
