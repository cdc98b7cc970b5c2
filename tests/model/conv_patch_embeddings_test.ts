// The conv patch stem: its im2col convolution is a real 3×3 / stride 2 / padding 1 convolution (forward
// and gradients, against tfjs's conv2d), and its weights travel in PyTorch's Conv2d layout.

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { conv3x3Stride2, ConvPatchEmbeddings } from "../../lib/model/conv_patch_embeddings.ts";
import { Initialiser } from "../../lib/model/module.ts";
import { Linear } from "../../lib/model/layers.ts";
import { assertClose } from "../helpers.ts";

await tf.setBackend("cpu"); // the reference conv2d and its gradients live on cpu

/** tfjs's own convolution with our Linear's weights ([(dy, dx, c), out] is conv2d's [3, 3, c, out]). */
function reference(x: tf.Tensor4D, lin: Linear): tf.Tensor4D {
  const filter = tf.reshape(lin.weight, [3, 3, lin.nIn / 9, lin.nOut]) as tf.Tensor4D;
  return tf.add(tf.conv2d(x, filter, 2, [[0, 0], [1, 1], [1, 1], [0, 0]]), lin.bias!) as tf.Tensor4D;
}

Deno.test("conv3x3Stride2 = conv2d (3×3, stride 2, padding 1): values and gradients", () => {
  const lin = new Linear(9 * 4, 5, new Initialiser(3));
  const x = tf.randomNormal([2, 10, 6, 4], 0, 1, "float32", 7) as tf.Tensor4D; // not square, 4 channels
  const ours = conv3x3Stride2(x, lin);
  const ref = reference(x, lin);
  assert.deepEqual(ours.shape, [2, 5, 3, 5]);
  assertClose(ours.dataSync(), ref.dataSync(), 1e-5, "output");
  const dy = tf.randomNormal(ours.shape, 0, 1, "float32", 8);
  const grads = (f: (x: tf.Tensor4D, lin: Linear) => tf.Tensor) =>
    tf.grads((xx: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => {
      const l = Object.assign(Object.create(Linear.prototype), {
        weight: w,
        bias: b,
        nIn: lin.nIn,
        nOut: lin.nOut,
      });
      return tf.sum(tf.mul(f(xx as tf.Tensor4D, l), dy));
    })([x, lin.weight, lin.bias!]);
  const g1 = grads(conv3x3Stride2), g2 = grads(reference);
  ["input", "weight", "bias"].forEach((what, i) =>
    assertClose(g1[i].dataSync(), g2[i].dataSync(), 1e-4, what)
  );
  assert.throws(() => conv3x3Stride2(tf.zeros([1, 5, 4, 4]) as tf.Tensor4D, lin), /even height and width/);
  tf.dispose([x, ours, ref, dy, ...g1, ...g2]);
  lin.variables().forEach((v) => v.dispose());
});

Deno.test("ConvPatchEmbeddings: shapes, and the stem equals two Conv2d + GELU + a patch projection", () => {
  const stem = new ConvPatchEmbeddings(32, 8, 16, new Initialiser(5));
  const images = tf.randomNormal([3, 3, 32, 32], 0, 1, "float32", 9) as tf.Tensor4D;
  const out = stem.forward(images);
  assert.deepEqual(out.shape, [3, 16, 16]); // (B, (32/8)², D)
  // by hand: NHWC, conv+GELU twice, then each 2×2 cell block of the 8×8 map flattened row-major
  const gelu = (t: tf.Tensor) => tf.mul(tf.mul(t, 0.5), tf.add(1, tf.erf(tf.div(t, Math.SQRT2))));
  const f = gelu(
    reference(gelu(reference(tf.transpose(images, [0, 2, 3, 1]), stem.conv1)) as tf.Tensor4D, stem.conv2),
  );
  const c2 = stem.conv2.nOut;
  const patches = tf.reshape(tf.transpose(tf.reshape(f, [3, 4, 2, 4, 2, c2]), [0, 1, 3, 2, 4, 5]), [
    48,
    4 * c2,
  ]);
  const expected = tf.reshape(stem.proj.forward(patches), [3, 16, 16]);
  assertClose(out.dataSync(), expected.dataSync(), 1e-4, "stem output");
  tf.dispose([images, out, f, patches, expected]);
});

Deno.test("ConvPatchEmbeddings saves Conv2d weights [out, in, 3, 3] and loads them back", () => {
  const a = new ConvPatchEmbeddings(16, 8, 16, new Initialiser(1));
  const state = a.stateDict();
  assert.deepEqual([...state.keys()].sort(), [
    "conv1.bias",
    "conv1.weight",
    "conv2.bias",
    "conv2.weight",
    "proj.bias",
    "proj.weight",
  ]);
  assert.deepEqual(state.get("conv1.weight")!.shape, [a.conv1.nOut, 3, 3, 3]);
  // PyTorch's weight[o, c, dy, dx] is our w[(dy, dx, c), o]
  const w = state.get("conv2.weight")!;
  const [o, c, dy, dx] = [3, 5, 2, 1];
  const C = a.conv2.nIn / 9;
  assert.equal(
    w.data[((o * C + c) * 3 + dy) * 3 + dx],
    (a.conv2.weight.arraySync() as number[][])[(dy * 3 + dx) * C + c][o],
  );
  const b = new ConvPatchEmbeddings(16, 8, 16, new Initialiser(2));
  b.loadStateDict(state);
  const images = tf.randomNormal([2, 3, 16, 16], 0, 1, "float32", 3) as tf.Tensor4D;
  assertClose(b.forward(images).dataSync(), a.forward(images).dataSync(), 0, "same weights, same output");
  assert.throws(() => new ConvPatchEmbeddings(24, 6, 16, new Initialiser(1)), /divisible by 4/);
});
