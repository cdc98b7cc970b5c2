// Adam, as torch.optim.Adam with its defaults (betas 0.9/0.999, eps 1e-8, no weight decay):
//   m' = b1 m + (1-b1) g;  v' = b2 v + (1-b2) g²;  p' = p - lr/(1-b1^t) · m' / (√v' / √(1-b2^t) + eps)
// Written out (rather than tf.train.adam) so its state — step count and both moment estimates, one
// pair per variable in model order — can be saved with a checkpoint and restored exactly on --resume.
// Where the backend offers it (the fast CPU path) every parameter is updated in ONE call, in place.

import * as tf from "@tensorflow/tfjs";
import type { NamedTensor } from "./checkpoint.ts";
import { readData } from "./model/module.ts";
import { adamStep, adamStepAllInPlace } from "./ops/adam.ts";

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
    const zeros = (p: tf.Variable) => tf.tidy(() => tf.variable(tf.zerosLike(p), false));
    this.m = params.map(zeros);
    this.v = params.map(zeros);
  }

  /** One update from gradients given in the same order as `params`. */
  update(grads: tf.Tensor[]): void {
    this.step += 1;
    const hyper = { lr: this.lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, step: this.step };
    if (adamStepAllInPlace(this.params, this.m, this.v, grads, hyper)) return;
    this.params.forEach((p, i) => {
      // adamStep: the backend's kernel where it has one, the same formula in tfjs ops elsewhere.
      const next = adamStep(p, this.m[i], this.v[i], grads[i], hyper);
      p.assign(next.p);
      this.m[i].assign(next.m);
      this.v[i].assign(next.v);
      tf.dispose([next.p, next.m, next.v]);
    });
  }

  /** The moment tensors (m, then v), to read them to the host before state(). */
  moments(): tf.Variable[] {
    return [...this.m, ...this.v];
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
