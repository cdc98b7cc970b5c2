// An exponential moving average of the weights (Polyak averaging, `ema` in the training settings): the
// saved checkpoint and the evaluation after training use the average of roughly the last 1/(1 - decay)
// steps' weights rather than the last step's, which the last updates' noise moves about. README, "A model
// that sees", measures what it does to held-out captions.
//
// The running sum starts at zero and is divided by 1 - keep^updates, as Adam corrects its moments, so early
// in a run the average is the weighted mean of the weights seen so far, not pulled towards zero. It is
// updated every EVERY steps with keep = decay^EVERY: nearly the same weighting at a quarter of the cost.

import * as tf from "@tensorflow/tfjs";
import type { NamedTensor } from "./checkpoint.ts";
import { namedState, restoreState, type SavedTensors } from "./optim.ts";

/** Steps between two updates of the average. */
export const EVERY = 4;

export class WeightAverage {
  private sums: tf.Variable[];
  private readonly keep: number;

  constructor(readonly params: tf.Variable[], readonly decay: number) {
    this.keep = decay ** EVERY;
    this.sums = params.map((p) => tf.tidy(() => tf.variable(tf.zerosLike(p), false)));
  }

  /** Updates of the average after `step` optimizer steps. */
  static updates(step: number): number {
    return Math.floor(step / EVERY);
  }

  /** Takes the weights in after optimizer step `step` (steps done) when it is an update's turn. */
  update(step: number): void {
    if (step % EVERY !== 0) return;
    const keep = this.keep;
    tf.tidy(() => this.sums.forEach((s, i) => s.assign(s.mul(keep).add(this.params[i].mul(1 - keep)))));
  }

  /** The average after `step` steps, one new tensor per parameter; before any update, the weights. */
  average(step: number): tf.Tensor[] {
    const n = WeightAverage.updates(step);
    if (n === 0) return this.params.map((p) => p.clone());
    const scale = 1 / (1 - this.keep ** n);
    return tf.tidy(() => this.sums.map((s) => s.mul(scale)));
  }

  /** Runs `f` with the average in the parameters, then puts the training weights back. */
  async withAverage<T>(step: number, f: () => Promise<T>): Promise<T> {
    const trained = this.params.map((p) => p.clone());
    this.apply(step);
    try {
      return await f();
    } finally {
      this.params.forEach((p, i) => p.assign(trained[i]));
      tf.dispose(trained);
    }
  }

  /** Puts the average into the parameters (the end of training). */
  apply(step: number): void {
    const avg = this.average(step);
    this.params.forEach((p, i) => p.assign(avg[i]));
    tf.dispose(avg);
  }

  /**
   * What --resume needs, as named tensors: the running sums (ema.<i>) and the training weights
   * (weights.<i>), in parameter order; the checkpoint's model file holds the average instead of the latter.
   */
  state(): NamedTensor[] {
    return [...namedState("ema", this.sums), ...namedState("weights", this.params)];
  }

  /** Restores state() into the running sums and the parameters. */
  load(tensors: SavedTensors, file: string): void {
    restoreState(tensors, "ema", this.sums, file);
    restoreState(tensors, "weights", this.params, file);
  }

  /** The tensors state() reads, to read them to the host first (WebGPU). */
  tensors(): tf.Variable[] {
    return [...this.sums, ...this.params];
  }

  dispose(): void {
    tf.dispose(this.sums);
  }
}
