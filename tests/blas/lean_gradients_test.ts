// The lean backward pass (lib/blas/lean_gradients.ts) against tfjs's own engine.gradients: the same
// gradients on graphs with shared inputs, reused tensors, custom gradients that pass dy through,
// unconnected variables and nested gradients; fewer live tensors during the pass; nothing leaked. And
// leanGradientsEach: each gradient handed over once, when no node left reads its variable.

import * as tf from "@tensorflow/tfjs";
import {
  installLeanGradients,
  leanGradientsEach,
  leanGradientsInstalled,
  uninstallLeanGradients,
} from "../../lib/blas/lean_gradients.ts";
import { assertClose, assertEquals, seeded } from "./helpers.ts";

function tensor(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(seeded(tf.util.sizeFromShape(shape), seed), shape);
}

/** Passes its input through; its gradient hands dy back unchanged (the same tensor object). */
const passThrough = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const x = args[0] as tf.Tensor;
  return { value: tf.mul(x, 1), gradFunc: (dy: tf.Tensor) => dy };
}) as (x: tf.Tensor) => tf.Tensor;

/** Live tensors seen from inside the backward pass (set by `probe`'s gradient, which runs last). */
let liveInBackward = 0;
const probe = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const x = args[0] as tf.Tensor;
  return {
    value: tf.mul(x, 1),
    gradFunc: (dy: tf.Tensor) => {
      liveInBackward = tf.memory().numTensors;
      return tf.mul(dy, 1);
    },
  };
}) as (x: tf.Tensor) => tf.Tensor;

/** A small two-layer network with a reused weight, a pass-through op and a softmax. */
function loss(w1: tf.Variable, w2: tf.Variable, x: tf.Tensor): tf.Scalar {
  const h = tf.relu(probe(tf.matMul(x as tf.Tensor2D, w1 as tf.Tensor2D))); // (4, 6)
  const h2 = passThrough(tf.add(h, tf.matMul(h, tf.transpose(tf.matMul(w2, w1))))); // (4, 6), reuses w1
  const p = tf.softmax(tf.matMul(h2 as tf.Tensor2D, tf.transpose(w1) as tf.Tensor2D)); // (4, 5)
  return tf.add(tf.sum(tf.mul(p, p)), tf.sum(tf.mul(h2, 0.01))) as tf.Scalar;
}

function run(lean: boolean): { grads: Float32Array[]; live: number; leaked: number } {
  if (lean) installLeanGradients();
  else uninstallLeanGradients();
  const x = tensor([4, 5], 90);
  const w1 = tf.variable(tensor([5, 6], 91));
  const w2 = tf.variable(tensor([6, 5], 92));
  const unused = tf.variable(tensor([3], 93));
  const before = tf.memory().numTensors;
  const { value, grads } = tf.variableGrads(() => loss(w1, w2, x), [w1, w2, unused]);
  const out = [value, grads[w1.name], grads[w2.name]].map((t) => Float32Array.from(t.dataSync()));
  tf.dispose([value, ...Object.values(grads)]);
  const leaked = tf.memory().numTensors - before;
  tf.dispose([x, w1, w2, unused]);
  return { grads: out, live: liveInBackward, leaked };
}

Deno.test("lean gradients: the same values as tfjs's own, fewer live tensors, nothing leaked", () => {
  restoring(() => {
    const plain = run(false);
    const lean = run(true);
    assertClose(lean.grads, plain.grads, 0, "gradients");
    assertEquals(lean.leaked, 0, "tensors left after the step (lean)");
    assertEquals(plain.leaked, 0, "tensors left after the step (tfjs)");
    if (!(lean.live < plain.live)) {
      throw new Error(`live tensors late in the backward pass: lean ${lean.live}, tfjs ${plain.live}`);
    }
  });
});

/** Runs fn, then puts the lean backward pass back the way it was. */
function restoring(fn: () => void): void {
  const wasInstalled = leanGradientsInstalled();
  try {
    fn();
  } finally {
    if (wasInstalled) installLeanGradients();
    else uninstallLeanGradients();
  }
}

Deno.test("lean gradients: tf.grad with an explicit dy, and gradients of gradients", () => {
  restoring(() => {
    installLeanGradients();
    const x = tensor([7], 94);
    const dy = tensor([7], 95);
    const f = (t: tf.Tensor) => tf.mul(tf.sin(t), t);
    const withDy = tf.grad(f)(x, dy); // dy belongs to the caller: must survive
    const second = tf.grad((t: tf.Tensor) => tf.grad(f)(t))(x); // nested: falls back to tfjs's own
    uninstallLeanGradients();
    const withDyRef = tf.grad(f)(x, dy);
    const secondRef = tf.grad((t: tf.Tensor) => tf.grad(f)(t))(x);
    assertEquals(dy.isDisposed, false, "caller's dy disposed");
    assertClose(
      [withDy.dataSync() as Float32Array, second.dataSync() as Float32Array],
      [
        withDyRef.dataSync() as Float32Array,
        secondRef.dataSync() as Float32Array,
      ],
      0,
      "gradients",
    );
    tf.dispose([x, dy, withDy, second, withDyRef, secondRef]);
  });
});

Deno.test("lean gradients: no path from x to y is the same clear error", () => {
  restoring(() => {
    installLeanGradients();
    const x = tensor([3], 96);
    let message = "";
    try {
      tf.grad((_t: tf.Tensor) => tf.scalar(1))(x);
    } catch (e) {
      message = (e as Error).message;
    }
    assertEquals(message.startsWith("Cannot compute gradient of y=f(x) with respect to x"), true, message);
    x.dispose();
  });
});

Deno.test("leanGradientsEach: each gradient once, as soon as no node left reads its variable, the same values", () => {
  restoring(() => {
    installLeanGradients();
    const x = tensor([4, 5], 90);
    const w1 = tf.variable(tensor([5, 6], 91));
    const w2 = tf.variable(tensor([6, 5], 92));
    const unused = tf.variable(tensor([3], 93));
    const { grads } = tf.variableGrads(() => loss(w1, w2, x), [w1, w2, unused]);
    const want = [w1, w2].map((w) => Float32Array.from(grads[w.name].dataSync()));
    tf.dispose(Object.values(grads));
    const before = tf.memory().numTensors;
    // Each gradient as handed over; and the other variables' values at that moment (to see when it came).
    const got = new Map<number, Float32Array>(), order: number[] = [];
    const value = leanGradientsEach(() => loss(w1, w2, x), [w1, w2, unused], (i, g) => {
      got.set(i, Float32Array.from(g.dataSync()));
      order.push(i);
      g.dispose();
    });
    value.dispose();
    assertEquals(
      JSON.stringify(order),
      JSON.stringify([1, 0]),
      "w2 (read only late in the loss) first, w1 last",
    );
    assertClose([got.get(0)!, got.get(1)!], want, 0, "gradients");
    assertEquals(tf.memory().numTensors, before, "tensors left after the pass");
    tf.dispose([x, w1, w2, unused]);
  });
});

Deno.test("leanGradientsEach: a variable changed in place when its gradient arrives changes nothing after", () => {
  restoring(() => {
    installLeanGradients();
    const x = tensor([4, 5], 90);
    const w1 = tf.variable(tensor([5, 6], 91));
    const w2 = tf.variable(tensor([6, 5], 92));
    const { grads } = tf.variableGrads(() => loss(w1, w2, x), [w1, w2]);
    const want = Float32Array.from(grads[w1.name].dataSync());
    tf.dispose(Object.values(grads));
    let w1Grad = new Float32Array(0);
    leanGradientsEach(() => loss(w1, w2, x), [w1, w2], (i, g) => {
      if (i === 0) w1Grad = Float32Array.from(g.dataSync());
      // Overwrite w2's memory (as an optimizer's in-place step would): w1's gradient, still to come, reads w2.
      else tf.tidy(() => w2.assign(tf.mul(w2, 0)));
      g.dispose();
    }).dispose();
    assertClose([w1Grad], [want], 0, "w1's gradient, computed after w2 changed");
    tf.dispose([x, w1, w2]);
  });
});
