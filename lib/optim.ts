// Adam, as torch.optim.Adam with its defaults (betas 0.9/0.999, eps 1e-8, no weight decay).
// Written out (rather than tf.train.adam) so its state — step count and both moment estimates, one
// pair per variable in model order — can be saved with a checkpoint and restored exactly on --resume.

import * as tf from "@tensorflow/tfjs";
import type { NamedTensor } from "./checkpoint.ts";
import { readData } from "./model/ops.ts";

export class Adam {
  step = 0;
  private m: tf.Variable[];
  private v: tf.Variable[];

  constructor(
    readonly params: tf.Variable[],
    public lr = 1e-3,
    readonly beta1 = 0.9,
    readonly beta2 = 0.999,
    readonly eps = 1e-8,
  ) {
    this.m = params.map((p) => tf.variable(tf.zerosLike(p), false));
    this.v = params.map((p) => tf.variable(tf.zerosLike(p), false));
  }

  /** One update from gradients given in the same order as `params`. */
  update(grads: tf.Tensor[]): void {
    this.step += 1;
    const bc1 = 1 - this.beta1 ** this.step;
    const bc2 = 1 - this.beta2 ** this.step;
    tf.tidy(() => {
      this.params.forEach((p, i) => {
        const g = grads[i];
        const m = tf.add(tf.mul(this.m[i], this.beta1), tf.mul(g, 1 - this.beta1)); // first moment
        const v = tf.add(tf.mul(this.v[i], this.beta2), tf.mul(tf.square(g), 1 - this.beta2)); // second moment
        const denom = tf.add(tf.div(tf.sqrt(v), Math.sqrt(bc2)), this.eps);
        p.assign(tf.sub(p, tf.mul(tf.div(m, denom), this.lr / bc1)));
        this.m[i].assign(m);
        this.v[i].assign(v);
      });
    });
  }

  /** State as named tensors (adam.m.<i>, adam.v.<i>) for a safetensors file; `step` goes alongside. */
  state(): NamedTensor[] {
    const named = (kind: string, vs: tf.Variable[]) =>
      vs.map((t, i) => ({ name: `adam.${kind}.${i}`, shape: t.shape, data: readData(t) }));
    return [...named("m", this.m), ...named("v", this.v)];
  }

  load(step: number, tensors: Map<string, { shape: number[]; data: Float32Array }>, file: string): void {
    const restore = (kind: string, vs: tf.Variable[]) =>
      vs.forEach((t, i) => {
        const s = tensors.get(`adam.${kind}.${i}`);
        if (!s || s.data.length !== t.size) {
          throw new Error(`${file}: optimizer tensor adam.${kind}.${i} is missing or mis-shaped`);
        }
        tf.tidy(() => t.assign(tf.tensor(s.data, t.shape)));
      });
    restore("m", this.m);
    restore("v", this.v);
    this.step = step;
  }

  dispose(): void {
    tf.dispose([...this.m, ...this.v]);
  }
}
