// One Adam step (torch.optim.Adam without weight decay):
//   m' = b1 m + (1-b1) g;  v' = b2 v + (1-b2) g²;  p' = p - lr/(1-b1^t) · m' / (√v' / √(1-b2^t) + eps)

import * as tf from "@tensorflow/tfjs-core";
import { type AdamKernelHyper, backendExtras, hasKernels, runKernel } from "./registry.ts";

export interface AdamHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** 1-based step number (after incrementing), for the bias corrections. */
  step: number;
}

export interface AdamResult {
  p: tf.Tensor;
  m: tf.Tensor;
  v: tf.Tensor;
}

/** One step for one parameter: new tensors for it and both moments (nothing written in place). */
export function adamStep(p: tf.Tensor, m: tf.Tensor, v: tf.Tensor, g: tf.Tensor, h: AdamHyper): AdamResult {
  for (const [name, t] of [["m", m], ["v", v], ["grad", g]] as const) {
    if (!tf.util.arraysEqual(t.shape, p.shape)) {
      throw new Error(`adamStep: ${name} shape [${t.shape}] differs from the parameter's [${p.shape}]`);
    }
  }
  const floats = [p, m, v, g].every((t) => t.dtype === "float32");
  if (!floats || !hasKernels("adam")) return adamComposite(p, m, v, g, h);
  const [pNew, mNew, vNew] = runKernel("adam", { p, m, v, g }, { ...kernelHyper(h) }) as tf.Tensor[];
  return { p: pNew, m: mNew, v: vNew };
}

/**
 * The step for every parameter at once, IN PLACE, where the backend offers it (one call for all); false,
 * having changed nothing, elsewhere (use adamStep then).
 */
export function adamStepAllInPlace(
  params: tf.Tensor[],
  ms: tf.Tensor[],
  vs: tf.Tensor[],
  grads: tf.Tensor[],
  h: AdamHyper,
): boolean {
  const inPlace = backendExtras().adamInPlace;
  return inPlace ? inPlace(params, ms, vs, grads, kernelHyper(h)) : false;
}

/** The kernels' form of the hyper-parameters: bias corrections folded into the step size and √bc2. */
function kernelHyper(h: AdamHyper): AdamKernelHyper {
  const bc1 = 1 - h.beta1 ** h.step, bc2 = 1 - h.beta2 ** h.step;
  return { beta1: h.beta1, beta2: h.beta2, stepSize: h.lr / bc1, sqrtBc2: Math.sqrt(bc2), eps: h.eps };
}

/** The same step from tfjs ops. */
export function adamComposite(
  p: tf.Tensor,
  m: tf.Tensor,
  v: tf.Tensor,
  g: tf.Tensor,
  h: AdamHyper,
): AdamResult {
  const bc1 = 1 - h.beta1 ** h.step, bc2 = 1 - h.beta2 ** h.step;
  return tf.tidy(() => {
    const mNew = tf.add(tf.mul(m, h.beta1), tf.mul(g, 1 - h.beta1)); // first moment
    const vNew = tf.add(tf.mul(v, h.beta2), tf.mul(tf.square(g), 1 - h.beta2)); // second moment
    const denom = tf.add(tf.div(tf.sqrt(vNew), Math.sqrt(bc2)), h.eps);
    const pNew = tf.sub(p, tf.mul(tf.div(mNew, denom), h.lr / bc1));
    return { p: pNew, m: mNew, v: vNew };
  });
}
