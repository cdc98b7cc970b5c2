// Adam, as torch.optim.Adam with its defaults (betas 0.9/0.999, eps 1e-8, no weight decay):
//   m' = b1 m + (1-b1) g;  v' = b2 v + (1-b2) g²;  p' = p - lr/(1-b1^t) · m' / (√v' / √(1-b2^t) + eps)
// Written out (rather than tf.train.adam) so its state — step count and both moment estimates, one
// pair per variable in model order — can be saved with a checkpoint and restored exactly on --resume.
// Where the backend offers it (the fast CPU path) every parameter is updated in ONE call, in place.

import * as tf from "@tensorflow/tfjs";
import type { NamedTensor } from "./checkpoint.ts";
import { readData } from "./model/module.ts";
import { adamStep, adamStepAllInPlace } from "./ops/adam.ts";
import { backendExtras } from "./ops/registry.ts";

/** minimize() applies the gradients handed over so far once they hold this many floats (4 MiB). */
const FLUSH_FLOATS = 1 << 20;

export class Adam {
  step = 0;
  private released = false;
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
    this.apply(this.params.map((_, i) => i), grads);
  }

  /**
   * One step on the loss f returns: its gradients and the update, the same numbers as variableGrads and
   * update(). Where the backend's backward pass hands each gradient over as soon as it is final (the
   * fast CPU path), its parameter is updated then and the gradient freed, so the gradients never all
   * exist at once (Adam is elementwise: the order of the updates changes nothing). A parameter the loss
   * does not reach gets a zero gradient. Returns the loss; the caller disposes it.
   */
  minimize(f: () => tf.Scalar): tf.Scalar {
    const { gradientsEach: each, releaseHostMemory } = backendExtras();
    // Before the first step: what start-up freed (building the model, reading the data) goes back to
    // the system, which would otherwise count it in the process's memory for good.
    if (!this.released) releaseHostMemory?.();
    this.released = true;
    const zeros = (i: number) => tf.zerosLike(this.params[i]);
    if (!each) {
      const { value, grads } = tf.variableGrads(f, this.params);
      const all = this.params.map((p, i) => grads[p.name] ?? zeros(i));
      this.update(all);
      tf.dispose(all);
      return value;
    }
    this.step += 1;
    const pending: { i: number; g: tf.Tensor }[] = [];
    let floats = 0;
    const flush = () => {
      this.apply(pending.map((p) => p.i), pending.map((p) => p.g));
      tf.dispose(pending.map((p) => p.g));
      pending.length = floats = 0;
    };
    const reached = new Set<number>();
    const value = each(f, this.params, (i, g) => {
      reached.add(i);
      pending.push({ i, g });
      floats += g.size;
      if (floats >= FLUSH_FLOATS) flush(); // a few calls per step, a few MiB held at most
    });
    this.params.forEach((_, i) => reached.has(i) || pending.push({ i, g: zeros(i) }));
    flush();
    return value;
  }

  /** The step (this.step) for the parameters at `indices`, from their gradients in the same order. */
  private apply(indices: number[], grads: tf.Tensor[]): void {
    if (indices.length === 0) return;
    const hyper = { lr: this.lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, step: this.step };
    const [ps, ms, vs] = [this.params, this.m, this.v].map((list) => indices.map((i) => list[i]));
    if (adamStepAllInPlace(ps, ms, vs, grads, hyper)) return;
    indices.forEach((i, j) => {
      // adamStep: the backend's kernel where it has one, the same formula in tfjs ops elsewhere.
      const next = adamStep(this.params[i], this.m[i], this.v[i], grads[j], hyper);
      this.params[i].assign(next.p);
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
    return [...namedState("adam.m", this.m), ...namedState("adam.v", this.v)];
  }

  load(step: number, tensors: SavedTensors, file: string): void {
    restoreState(tensors, "adam.m", this.m, file);
    restoreState(tensors, "adam.v", this.v, file);
    this.step = step;
  }

  dispose(): void {
    tf.dispose([...this.m, ...this.v]);
  }
}

/** Tensors read from a safetensors file, by name. */
export type SavedTensors = Map<string, { shape: number[]; data: Float32Array }>;

/** Training state as named tensors, `<prefix>.<i>` for vs[i]. */
export function namedState(prefix: string, vs: tf.Variable[]): NamedTensor[] {
  return vs.map((t, i) => ({ name: `${prefix}.${i}`, shape: t.shape, data: readData(t) }));
}

/** Restores namedState(prefix, vs) from `tensors`; a missing or mis-shaped tensor is named with its file. */
export function restoreState(tensors: SavedTensors, prefix: string, vs: tf.Variable[], file: string): void {
  vs.forEach((t, i) => {
    const s = tensors.get(`${prefix}.${i}`);
    if (!s || s.data.length !== t.size) {
      throw new Error(`${file}: training-state tensor ${prefix}.${i} is missing or mis-shaped`);
    }
    tf.tidy(() => t.assign(tf.tensor(s.data, t.shape)));
  });
}
