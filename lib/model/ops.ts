// Small tensor helpers shared by the model files.
//
// Two things live here besides plain maths:
// - `Linear`, `LayerNorm`, `Embedding`: parameter holders that know their PyTorch names and layouts,
//   so every model file can save and load the original's state_dict without caring how we store weights.
// - `Ctx`: what a forward pass needs to know (training or not, and a seeded source of dropout masks),
//   so the same weights and the same step always give the same numbers.
//
// Weights are stored the way the fast path wants them (Linear as [in, out], so `x @ W` is a plain
// untransposed matmul) and converted to the original's layouts ([out, in]) only when saved or loaded.

import * as tf from "@tensorflow/tfjs";

/** A tensor in the original PyTorch layout, as stored in a checkpoint. */
export interface StateTensor {
  shape: number[];
  data: Float32Array;
}
export type StateDict = Map<string, StateTensor>;

/** Anything that owns parameters: lists them, saves them and loads them under PyTorch names. */
export interface Parametrised {
  /** Trainable variables (internal layout). */
  variables(): tf.Variable[];
  /** Write this module's tensors (PyTorch names and layouts) into `out` under `prefix`. */
  saveState(prefix: string, out: StateDict): void;
  /** Read this module's tensors from `state` (already checked for names and shapes). */
  loadState(prefix: string, state: StateDict): void;
}

// ---------------------------------------------------------------------------------------------
// Forward-pass context: training flag and reproducible dropout.

/** Everything a forward pass needs besides its inputs. */
export class Ctx {
  private counter = 0;
  /**
   * @param training dropout on (and, for seeMoE, router noise on)
   * @param seed     with `step`, fixes every random mask drawn in this pass
   */
  constructor(readonly training: boolean, readonly seed = 0, readonly step = 0) {}

  static eval(): Ctx {
    return new Ctx(false);
  }

  /** A fresh integer seed for the next random op of this pass (same order ⇒ same seeds). */
  nextSeed(): number {
    this.counter += 1;
    return hash32(this.seed, this.step, this.counter);
  }
}

/** Mixes three integers into one 32-bit seed (a few rounds of a murmur-style finaliser). */
export function hash32(a: number, b: number, c: number): number {
  let h = (a ^ 0x9e3779b9) >>> 0;
  for (const v of [b, c]) {
    h = Math.imul(h ^ (v >>> 0), 0x85ebca6b) >>> 0;
    h = (h ^ (h >>> 13)) >>> 0;
    h = Math.imul(h, 0xc2b2ae35) >>> 0;
    h = (h ^ (h >>> 16)) >>> 0;
  }
  return h;
}

/**
 * Inverted dropout, active only while training: tf.dropout with the pass's next seed (one C kernel
 * on the fast CPU path, same numbers; lib/blas/fused.ts).
 */
export function dropout(x: tf.Tensor, rate: number, ctx: Ctx): tf.Tensor {
  if (!ctx.training || rate <= 0) return x;
  return fusedDropout(x, rate, ctx.nextSeed());
}

// ---------------------------------------------------------------------------------------------
// Maths.

/**
 * `a @ b` for 2-D tensors whose gradient uses only untransposed matmuls. The stock wasm backend
 * runs transposed matmuls on a slow scalar path; an explicit transpose followed by a plain matmul
 * is several times faster there, and costs little elsewhere.
 */
export const matmul2d = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [a, b, save] = args as [tf.Tensor2D, tf.Tensor2D, tf.GradSaveFunc];
  save([a, b]);
  return {
    value: tf.matMul(a, b), // (M, N)
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sa, sb] = saved as tf.Tensor2D[];
      return [
        tf.matMul(dy as tf.Tensor2D, tf.transpose(sb)), // (M, K)
        tf.matMul(tf.transpose(sa), dy as tf.Tensor2D), // (K, N)
      ];
    },
  };
}) as (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor2D;

/**
 * Set by lib/backend.ts when matmuls run on OpenBLAS: transposed matmuls are then as fast as plain ones,
 * so tfjs's own gradient (and a bias fused into the matmul) beat matmul2d's explicit transposes.
 */
let fastMatmul = false;
export function useFastMatmul(on: boolean): void {
  fastMatmul = on;
}

/**
 * `x @ W (+ b)` straight through the OpenBLAS matmul kernel, for any leading shape of x: one kernel
 * instead of the reshapes tf.fused.matMul puts around it, and one sgemm over all rows. Its gradient
 * (registered below) is lazy per input, so a dense layer fed by data (the patch embedding, the one-hot
 * token lookup) never computes the gradient of its input, which tf.fused.matMul's customGrad always
 * does. Null where that route does not apply.
 */
function directMatmul(x: tf.Tensor, w: tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor | null {
  if (!fastDense()) return null;
  const inputs: tf.NamedTensorMap = bias ? { a: x, b: w, bias } : { a: x, b: w };
  return tf.engine().runKernel("_FusedMatMul", inputs, { transposeA: false, transposeB: false }) as tf.Tensor;
}

// tfjs registers no gradient for _FusedMatMul (tf.fused.matMul carries its own). This one covers what
// directMatmul runs: a (..., in) @ b [in, out] + bias, no transposes, no activation.
tf.registerGradient({
  kernelName: "_FusedMatMul",
  inputsToSave: ["a", "b"],
  gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[], attrs: tf.NamedAttrMap) => {
    const [a, b] = saved;
    const activation = attrs.activation ?? "linear";
    if (attrs.transposeA || attrs.transposeB || activation !== "linear" || b.rank !== 2) {
      throw new Error("lib/model/ops.ts: _FusedMatMul gradient covers only dense layers (x @ W + b)");
    }
    const g = dy as tf.Tensor; // (..., out)
    return {
      a: () => tf.matMul(g, b, false, true), // (..., in)
      b: () => weightGrad(a, g), // [in, out]
      bias: () => biasGrad(g), // [out]
    };
  },
});

/** Whether dense layers go straight to the OpenBLAS kernel (wasm with lib/blas enabled). */
function fastDense(): boolean {
  return fastMatmul && tf.getBackend() === "wasm" && blasKernelsEnabled();
}

/** Whether ops now run under a gradient tape (inside tf.grad / variableGrads' forward pass). */
function recordingGradients(): boolean {
  return (tf.engine() as unknown as { state: { gradientDepth: number } }).state.gradientDepth > 0;
}

/** The gradient of x @ W with respect to W: x (..., in), dy (..., out) → [in, out], summed over rows. */
function weightGrad(x: tf.Tensor, dy: tf.Tensor): tf.Tensor {
  const rowsX = tf.reshape(x, [-1, x.shape[x.rank - 1]]),
    rowsDy = tf.reshape(dy, [-1, dy.shape[dy.rank - 1]]);
  return tf.matMul(rowsX, rowsDy, true, false); // [in, out]
}

/** The gradient of x @ W + b with respect to b: dy (..., out) summed over all leading axes → [out]. */
function biasGrad(dy: tf.Tensor): tf.Tensor {
  return tf.sum(dy, Array.from({ length: dy.rank - 1 }, (_, i) => i));
}

/**
 * dense(gelu(h), w, b) — the second half of a feed-forward — keeping only h for the backward pass:
 * there one C kernel gives GELU(h) again and GELU's gradient together (one exp and one erf per
 * element, as a plain GELU gradient costs alone). On the fast path that frees the feed-forward's
 * widest activation (B, T, 4C) between the passes (≈ 22 MB of the original config's step) at no
 * extra time; without a gradient tape, or off the fast path, it is plain dense(gelu(h), w, b).
 * The same numbers either way.
 */
export function geluDense(h: tf.Tensor, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor {
  if (!recordingGradients() || !fastDense() || !hasGeluWithGrad()) return dense(gelu(h), w, b);
  return geluDenseRecomputed(h, w, b);
}

const geluDenseRecomputed = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [h, w, b, save] = args as [tf.Tensor, tf.Tensor2D, tf.Tensor1D, tf.GradSaveFunc];
  save([h, w]);
  return {
    value: dense(gelu(h), w, b), // (..., out)
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sh, sw] = saved as [tf.Tensor, tf.Tensor2D];
      const [g, dh] = geluWithGrad(sh, tf.matMul(dy, sw, false, true)); // GELU(h), dL/dh: (..., in)
      return [
        dh,
        weightGrad(g, dy), // [in, out], from GELU(h) recomputed
        biasGrad(dy), // [out]
      ];
    },
  };
}) as (h: tf.Tensor, w: tf.Tensor2D, b: tf.Tensor1D) => tf.Tensor;

/** `a @ b` for 2-D tensors, plus an optional bias row, by whichever route is fastest here. */
function matmulBias(a: tf.Tensor2D, b: tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor2D {
  if (fastMatmul) return (directMatmul(a, b, bias) ?? tf.fused.matMul({ a, b, bias })) as tf.Tensor2D;
  const y = matmul2d(a, b);
  return bias ? tf.add(y, bias) : y;
}

/** `x @ W (+ b)` over the last axis of x, any leading shape; W is [in, out]. */
export function dense(x: tf.Tensor, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor {
  const direct = directMatmul(x, w, b); // (..., out)
  if (direct) return direct;
  const lead = x.shape.slice(0, -1);
  const [nIn, nOut] = w.shape;
  const x2 = tf.reshape(x, [-1, nIn]) as tf.Tensor2D; // (N, in)
  return tf.reshape(matmulBias(x2, w, b), [...lead, nOut]); // (..., out)
}

// GELU (exact erf form, as PyTorch's nn.GELU()), ReLU and LayerNorm (biased variance, eps 1e-5) come from
// lib/blas/fused.ts: C kernels (for ReLU, its gradient) when the fast CPU path is on, tfjs ops otherwise.
import {
  dropout as fusedDropout,
  gelu,
  geluWithGrad,
  hasGeluWithGrad,
  layerNorm,
  relu,
} from "../blas/fused.ts";
import { blasKernelsEnabled } from "../blas/kernels.ts";
export { gelu, layerNorm, relu };

/**
 * Row lookup `table[ids]` as a one-hot matmul, so its gradient is a matmul too (the wasm backend has
 * no kernel for the scatter-add that a gather's gradient needs).
 */
export function embed(ids: tf.Tensor, table: tf.Tensor2D): tf.Tensor {
  const [vocab, width] = table.shape;
  const oneHot = tf.cast(tf.oneHot(tf.reshape(ids, [-1]) as tf.Tensor1D, vocab), "float32") as tf.Tensor2D; // (N, V)
  return tf.reshape(matmulBias(oneHot, table), [...ids.shape, width]); // (..., C)
}

/**
 * Mean cross-entropy of `logits` (N, V) against integer `targets` (N), counting only rows whose
 * `weights` (N) is 1. Returns a scalar.
 */
export function crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D, weights: tf.Tensor1D): tf.Scalar {
  const vocab = logits.shape[1];
  const logProbs = tf.logSoftmax(logits); // (N, V)
  const picked = tf.sum(tf.mul(logProbs, tf.cast(tf.oneHot(targets, vocab), "float32")), -1); // (N)
  const total = tf.sum(tf.mul(picked, weights));
  return tf.div(tf.neg(total), tf.maximum(tf.sum(weights), 1)) as tf.Scalar;
}

// ---------------------------------------------------------------------------------------------
// Parameter holders.

/** Seeded initialisers for one model: each call gets its own seed derived from the model seed. */
export class Initialiser {
  private counter = 0;
  constructor(readonly seed: number) {}

  private next(): number {
    this.counter += 1;
    return hash32(this.seed, 0x5eed, this.counter);
  }
  /** U(-1/sqrt(fanIn), 1/sqrt(fanIn)), PyTorch's default for Linear weights and biases. */
  uniformFanIn(shape: number[], fanIn: number): tf.Tensor {
    const bound = 1 / Math.sqrt(fanIn);
    return tf.randomUniform(shape, -bound, bound, "float32", this.next());
  }
  normal(shape: number[], std = 1): tf.Tensor {
    return tf.randomNormal(shape, 0, std, "float32", this.next());
  }
  /** Kaiming-normal for a [in, out] weight (fan-in mode, gain sqrt(2)), as seeMoE's main applies. */
  kaiming(shape: [number, number]): tf.Tensor {
    return this.normal(shape, Math.sqrt(2 / shape[0]));
  }
  zeros(shape: number[]): tf.Tensor {
    return tf.zeros(shape);
  }
  ones(shape: number[]): tf.Tensor {
    return tf.ones(shape);
  }
}

function variable(t: tf.Tensor, name: string): tf.Variable {
  const v = tf.variable(t, true, `${name}_${nextVariableId()}`);
  t.dispose();
  return v;
}
let variableCounter = 0;
function nextVariableId(): number {
  variableCounter += 1;
  return variableCounter;
}

/** Copies a 2-D row-major matrix into its transpose. */
export function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  }
  return out;
}

/** Reads a variable's values as an owned Float32Array. */
export function readData(t: tf.Tensor): Float32Array {
  return new Float32Array(t.dataSync() as Float32Array);
}

/** Replaces a variable's values (shape must match). */
export function assign(v: tf.Variable, shape: number[], data: Float32Array): void {
  tf.tidy(() => v.assign(tf.tensor(data, shape)));
}

/** nn.Linear: weight stored [in, out] here, [out, in] in the state_dict. */
export class Linear implements Parametrised {
  readonly w: tf.Variable<tf.Rank.R2>;
  readonly b: tf.Variable<tf.Rank.R1> | null;

  constructor(
    readonly nIn: number,
    readonly nOut: number,
    init: Initialiser,
    opts: { bias?: boolean; kaiming?: boolean } = {},
  ) {
    const weight = opts.kaiming ? init.kaiming([nIn, nOut]) : init.uniformFanIn([nIn, nOut], nIn);
    this.w = variable(weight, "w") as tf.Variable<tf.Rank.R2>;
    this.b = opts.bias === false
      ? null
      : variable(init.uniformFanIn([nOut], nIn), "b") as tf.Variable<tf.Rank.R1>;
  }

  forward(x: tf.Tensor): tf.Tensor {
    return dense(x, this.w, this.b ?? undefined); // (..., nOut)
  }

  variables(): tf.Variable[] {
    return this.b ? [this.w, this.b] : [this.w];
  }

  saveState(prefix: string, out: StateDict): void {
    out.set(`${prefix}.weight`, {
      shape: [this.nOut, this.nIn],
      data: transpose2d(readData(this.w), this.nIn, this.nOut),
    });
    if (this.b) out.set(`${prefix}.bias`, { shape: [this.nOut], data: readData(this.b) });
  }

  loadState(prefix: string, state: StateDict): void {
    const w = state.get(`${prefix}.weight`)!;
    assign(this.w, [this.nIn, this.nOut], transpose2d(w.data, this.nOut, this.nIn));
    if (this.b) assign(this.b, [this.nOut], state.get(`${prefix}.bias`)!.data);
  }
}

/** nn.LayerNorm with its weight (gain) and bias. */
export class LayerNorm implements Parametrised {
  readonly g: tf.Variable<tf.Rank.R1>;
  readonly b: tf.Variable<tf.Rank.R1>;

  constructor(readonly width: number, init: Initialiser) {
    this.g = variable(init.ones([width]), "ln_g") as tf.Variable<tf.Rank.R1>;
    this.b = variable(init.zeros([width]), "ln_b") as tf.Variable<tf.Rank.R1>;
  }

  forward(x: tf.Tensor): tf.Tensor {
    return layerNorm(x, this.g, this.b);
  }

  variables(): tf.Variable[] {
    return [this.g, this.b];
  }

  saveState(prefix: string, out: StateDict): void {
    out.set(`${prefix}.weight`, { shape: [this.width], data: readData(this.g) });
    out.set(`${prefix}.bias`, { shape: [this.width], data: readData(this.b) });
  }

  loadState(prefix: string, state: StateDict): void {
    assign(this.g, [this.width], state.get(`${prefix}.weight`)!.data);
    assign(this.b, [this.width], state.get(`${prefix}.bias`)!.data);
  }
}

/** A free parameter tensor (nn.Parameter / nn.Embedding weight), same layout in both worlds. */
export class Param implements Parametrised {
  readonly v: tf.Variable;

  constructor(readonly shape: number[], initial: tf.Tensor, readonly suffix = "") {
    this.v = variable(initial, "p");
  }

  variables(): tf.Variable[] {
    return [this.v];
  }

  saveState(prefix: string, out: StateDict): void {
    out.set(prefix + this.suffix, { shape: this.shape, data: readData(this.v) });
  }

  loadState(prefix: string, state: StateDict): void {
    assign(this.v, this.shape, state.get(prefix + this.suffix)!.data);
  }
}
