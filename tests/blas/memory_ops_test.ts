// Transpose, Identity, Unpack, Slice, GatherV2 and Sum on the wasm heap (JS and C versions) against tfjs's cpu
// backend.

import * as tf from "@tensorflow/tfjs";
import { disableBlasKernels, enableBlasKernels } from "../../lib/blas/kernels.ts";
import { simplifyTranspose, sumInto, transposeInto } from "../../lib/blas/kernels/memory_ops.ts";
import { loadNative } from "../../lib/blas/native.ts";
import { assertClose, assertEquals, BLAS_OK, seeded, SKIP_NOTE, valuesOn } from "./helpers.ts";

const TRANSPOSES: [number[], number[]][] = [
  [[5, 7], [1, 0]],
  [[40, 70], [1, 0]], // several 32x32 tiles
  [[2, 3, 4], [0, 2, 1]],
  [[2, 3, 4], [2, 0, 1]],
  [[2, 3, 4, 5], [0, 2, 1, 3]], // (B, T, H, D) -> (B, H, T, D)
  [[2, 3, 4, 5], [3, 1, 2, 0]],
  [[2, 1, 3, 1, 4], [4, 3, 2, 1, 0]], // size-1 axes
  [[2, 3, 2, 4, 2, 3], [0, 2, 4, 1, 3, 5]], // patchify-like rank 6
  [[2, 3, 2, 4, 2, 3], [5, 4, 3, 2, 1, 0]],
  [[1, 1, 6], [2, 0, 1]],
  [[3, 4], [0, 1]], // identity permutation
  [[4, 3, 6, 16, 6, 16], [0, 2, 4, 1, 3, 5]], // the ViT's patches, big enough to be shared among threads
  [[8, 300, 200], [0, 2, 1]], // tiled, one 300 x 200 tile grid per thread's share
];

/** Reference transpose by index arithmetic. */
function referenceTranspose(src: Int32Array, shape: number[], perm: number[]): Int32Array {
  const outShape = perm.map((p) => shape[p]);
  const inStrides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
  const out = new Int32Array(src.length);
  const coord = new Array(shape.length).fill(0);
  for (let i = 0; i < src.length; i++) {
    let rest = i;
    for (let d = outShape.length - 1; d >= 0; d--) {
      coord[d] = rest % outShape[d];
      rest = Math.floor(rest / outShape[d]);
    }
    out[i] = coord.reduce((acc, c, d) => acc + c * inStrides[perm[d]], 0);
  }
  return out.map((j) => src[j]);
}

function iota(n: number): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => i * 7 + 3);
}

Deno.test("simplifyTranspose drops size-1 axes and merges neighbours", () => {
  assertEquals(
    JSON.stringify(simplifyTranspose([2, 3, 4, 5], [0, 2, 3, 1])),
    JSON.stringify([[2, 3, 20], [0, 2, 1]]),
  );
  assertEquals(JSON.stringify(simplifyTranspose([2, 1, 3], [2, 1, 0])), JSON.stringify([[2, 3], [1, 0]]));
  assertEquals(JSON.stringify(simplifyTranspose([4, 5], [0, 1])), JSON.stringify([[20], [0]]));
});

Deno.test("JS transposeInto matches index arithmetic", () => {
  for (const [shape, perm] of TRANSPOSES) {
    const src = iota(shape.reduce((a, b) => a * b, 1));
    const dst = new Int32Array(src.length);
    transposeInto(src, dst, shape, perm);
    assertEquals(
      dst.join(),
      referenceTranspose(src, shape, perm).join(),
      `transpose [${shape}] by [${perm}]`,
    );
  }
});

const native = loadNative();

Deno.test({
  name: `C transpose32 matches index arithmetic${native.ok ? "" : " [ignored: no C compiler]"}`,
  ignore: !native.ok,
  fn() {
    if (!native.ok) return;
    for (const [shape, perm] of TRANSPOSES) {
      const src = iota(shape.reduce((a, b) => a * b, 1));
      const dst = new Int32Array(src.length);
      const [s, p] = simplifyTranspose(shape, perm);
      if (s.length <= 1) continue;
      native.native.transpose32(src, dst, s, p);
      assertEquals(
        dst.join(),
        referenceTranspose(src, shape, perm).join(),
        `C transpose [${shape}] by [${perm}]`,
      );
    }
    let threw = false;
    try {
      native.native.transpose32(new Int32Array(5), new Int32Array(6), [2, 3], [1, 0]);
    } catch {
      threw = true;
    }
    assertEquals(threw, true, "short buffer rejected");
  },
});

Deno.test({
  name: `Transpose kernel (float32, int32, bool) equals cpu${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enableBlasKernels();
    for (const [shape, perm] of TRANSPOSES) {
      const size = shape.reduce((a, b) => a * b, 1);
      const run = () => {
        const x = tf.tensor(seeded(size, 30), shape);
        const xi = tf.tensor(iota(size), shape, "int32");
        const xb = tf.greater(x, 0);
        return [tf.transpose(x, perm), tf.transpose(xi, perm), tf.transpose(xb, perm)];
      };
      assertClose(
        await valuesOn("wasm", run),
        await valuesOn("cpu", run),
        0,
        `transpose [${shape}] by [${perm}]`,
      );
    }
  },
});

Deno.test({
  name: `Identity shares the buffer safely: a clone outlives its source${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enableBlasKernels();
    const before = tf.memory().numTensors;
    const x = tf.tensor(seeded(12, 31), [3, 4]);
    const y = tf.clone(x);
    x.dispose();
    tf.tidy(() => tf.fill([12], NaN).dataSync()); // reuse freed memory if it was freed
    assertClose([y.dataSync() as Float32Array], [seeded(12, 31)], 0, "clone after dispose");
    y.dispose();
    assertEquals(tf.memory().numTensors, before);
  },
});

Deno.test({
  name: `Unpack kernel equals cpu on every axis${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enableBlasKernels();
    for (const axis of [0, 1, 2, -1]) {
      const run = () => [
        ...tf.unstack(tf.tensor(seeded(60, 32), [3, 4, 5]), axis),
        ...tf.unstack(tf.tensor(iota(60), [3, 4, 5], "int32"), axis),
        ...tf.unstack(tf.tensor(seeded(3 * 100 * 2, 33), [3, 100, 2]), axis), // long runs use set()
      ];
      assertClose(await valuesOn("wasm", run), await valuesOn("cpu", run), 0, `unstack axis ${axis}`);
    }
  },
});

Deno.test({
  name: `GatherV2 kernel equals cpu on every axis, float32 and int32, and rejects bad indices${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enableBlasKernels();
    const index = tf.tensor1d([2, 0, 2, 1], "int32");
    for (const axis of [0, 1, 2]) {
      const run = () => [
        tf.gather(tf.tensor(seeded(60, 36), [3, 4, 5]), index, axis),
        tf.gather(tf.tensor(iota(60), [3, 4, 5], "int32"), index, axis),
        tf.gather(
          tf.tensor(seeded(3 * 3 * 100, 37), [3, 3, 100]),
          tf.tensor2d([[2, 0], [1, 1]], [2, 2], "int32"),
          axis,
        ),
      ];
      assertClose(await valuesOn("wasm", run), await valuesOn("cpu", run), 0, `gather axis ${axis}`);
    }
    let message = "";
    try {
      tf.tidy(() => tf.gather(tf.zeros([3, 2]), tf.tensor1d([0, 3], "int32")));
    } catch (e) {
      message = (e as Error).message;
    }
    assertEquals(message.includes("index value 3 is not in [0, 2]"), true, message);
    index.dispose();
  },
});

Deno.test({
  name: `gradients through stack/unstack and transpose equal cpu${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enableBlasKernels();
    const run = () => {
      const f = (x: tf.Tensor) => {
        const parts = tf.unstack(tf.transpose(x, [0, 2, 1, 3]), 1); // 3 x (2, 4, 5)
        const joined = tf.stack(parts.map((p, i) => tf.mul(p, i + 1)), 2); // (2, 4, 3, 5)
        return tf.sum(tf.mul(joined, tf.tensor(seeded(120, 35), [2, 4, 3, 5])));
      };
      return tf.grad(f)(tf.tensor(seeded(120, 34), [2, 4, 3, 5]));
    };
    assertClose(
      await valuesOn("wasm", run),
      await valuesOn("cpu", run),
      1e-6,
      "grad through unstack/transpose",
    );
  },
});

const SUMS: [number[], number[]][] = [
  [[7, 9], [0]], // bias gradient: column sums
  [[7, 9], [1]],
  [[7, 9], [0, 1]],
  [[3, 4, 5], [1]],
  [[3, 4, 5], [0, 2]],
  [[2, 1, 3, 4], [0, 1]],
  [[2, 3, 4, 5], [0, 1, 2]],
  [[1, 1], [0]],
  [[300, 700], [0]], // column sums split across threads
  [[40, 5000], [0]], // ... in several column blocks per thread
];

Deno.test("JS sumInto and C sum match a double-precision reference", () => {
  for (const [shape, axes] of SUMS) {
    const size = shape.reduce((a, b) => a * b, 1);
    const src = seeded(size, 50);
    const outShape = shape.map((d, i) => (axes.includes(i) ? 1 : d));
    const want = new Float64Array(outShape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < size; i++) {
      let rest = i, o = 0, stride = 1;
      for (let d = shape.length - 1; d >= 0; d--) {
        const c = rest % shape[d];
        rest = Math.floor(rest / shape[d]);
        if (!axes.includes(d)) o += c * stride;
        stride *= outShape[d];
      }
      want[o] += src[i];
    }
    const js = new Float32Array(want.length);
    sumInto(src, js, shape, axes);
    assertClose([js], [Float32Array.from(want)], 1e-6, `JS sum [${shape}] over [${axes}]`);
    if (native.ok) {
      const threads = native.native.threads();
      for (const n of [1, 2]) {
        native.native.setThreads(n);
        const c = new Float32Array(want.length);
        native.native.sum(src, c, shape, axes);
        assertClose([c], [Float32Array.from(want)], 1e-6, `C sum [${shape}] over [${axes}], ${n} thread(s)`);
      }
      native.native.setThreads(threads);
    }
  }
});

Deno.test({
  name: `Sum (with keepDims) and SplitV kernels equal cpu${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enableBlasKernels();
    for (const [shape, axes] of SUMS) {
      const size = shape.reduce((a, b) => a * b, 1);
      const run = () => [
        tf.sum(tf.tensor(seeded(size, 51), shape), axes),
        tf.sum(tf.tensor(seeded(size, 52), shape), axes, true),
        tf.sum(tf.tensor(iota(size), shape, "int32"), axes), // stock kernel
      ];
      assertClose(
        await valuesOn("wasm", run),
        await valuesOn("cpu", run),
        1e-5,
        `sum [${shape}] over [${axes}]`,
      );
    }
    for (
      const [shape, splits, axis] of [[[4, 12], 3, -1], [[4, 12], [5, 2, 5], 1], [[6, 2, 3], [1, 5], 0], [
        [2, 3, 200],
        [100, 100],
        2,
      ]] as [number[], number | number[], number][]
    ) {
      const size = shape.reduce((a, b) => a * b, 1);
      const run = () => [
        ...tf.split(tf.tensor(seeded(size, 53), shape), splits, axis),
        ...tf.split(tf.tensor(iota(size), shape, "int32"), splits, axis),
      ];
      assertClose(
        await valuesOn("wasm", run),
        await valuesOn("cpu", run),
        0,
        `split [${shape}] by ${splits} on ${axis}`,
      );
    }
  },
});

Deno.test({
  name: `Slice kernel equals cpu (runs, strides, -1 sizes, int32 and bool)${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enableBlasKernels();
    const cases: [number[], number[], number[]][] = [
      [[16, 37, 512], [0, 0, 0], [16, 1, 512]], // the ViT's CLS row
      [[64, 128], [0, 0], [50, 128]], // position rows: one contiguous run
      [[64, 128], [3, 5], [7, 100]],
      [[2, 3, 4, 5], [1, 0, 2, 1], [1, -1, 2, 3]],
      [[2, 3, 4, 5, 6], [0, 1, 1, 0, 2], [2, 2, 3, 5, 4]],
      [[10], [4], [-1]],
      [[4, 6], [1, 2], [0, 3]], // empty
    ];
    for (const [shape, begin, size] of cases) {
      const n = shape.reduce((a, b) => a * b, 1);
      const run = () => [
        tf.slice(tf.tensor(seeded(n, 54), shape), begin, size),
        tf.slice(tf.tensor(iota(n), shape, "int32"), begin, size),
        tf.cast(tf.slice(tf.greater(tf.tensor(seeded(n, 55), shape), 0), begin, size), "int32"),
      ];
      assertClose(
        await valuesOn("wasm", run),
        await valuesOn("cpu", run),
        0,
        `slice [${shape}] at [${begin}] size [${size}]`,
      );
    }
  },
});

Deno.test({
  name: `JS-only kernels (native: false) equal cpu${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    disableBlasKernels();
    const res = await enableBlasKernels({ native: false });
    try {
      assertEquals(res.ok, true, "enabled");
      assertEquals(res.native, "", "no C kernels");
      const run = () => {
        const x = tf.tensor(seeded(2 * 3 * 4 * 5, 60), [2, 3, 4, 5]);
        return [
          tf.transpose(x, [0, 2, 1, 3]),
          tf.transpose(x, [3, 1, 2, 0]),
          tf.sum(x, [0, 2]),
          tf.sum(x, -1),
        ];
      };
      assertClose(await valuesOn("wasm", run), await valuesOn("cpu", run), 1e-5, "JS kernels");
    } finally {
      disableBlasKernels();
      await enableBlasKernels();
    }
  },
});
