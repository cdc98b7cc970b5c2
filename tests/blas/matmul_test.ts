// BatchMatMul and _FusedMatMul through OpenBLAS on the wasm backend, against tfjs's cpu backend:
// forward values, gradients, and a few Adam steps of a tiny MLP.

import * as tf from "@tensorflow/tfjs";
import { activeBlas, disableBlasKernels, enableBlasKernels } from "../../lib/blas/kernels.ts";
import { loadNative, type Native } from "../../lib/blas/native.ts";
import { chooseGemm, ONEDNN_HINT } from "../../lib/blas/onednn.ts";
import { initBackend } from "../../lib/backend.ts";
import { dense } from "../../lib/ops/dense.ts";
import {
  assertClose,
  assertEquals,
  assertWithinProductBound,
  BLAS_OK,
  dirtyHeap,
  exactProduct,
  onEachGemm,
  seeded,
  SKIP_NOTE,
  valuesOn,
} from "./helpers.ts";

const TOL = 1e-4;

async function enabled(): Promise<void> {
  const res = await enableBlasKernels();
  if (!res.ok) throw new Error(`enableBlasKernels failed: ${res.reason}`);
}

function tensor(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(seeded(tf.util.sizeFromShape(shape), seed), shape);
}

type Case = [number[], number[], boolean, boolean];

const MATMUL_CASES: Case[] = [
  [[5, 7], [7, 3], false, false],
  [[5, 7], [3, 7], false, true],
  [[7, 5], [7, 3], true, false],
  [[7, 5], [3, 7], true, true],
  [[4, 5, 7], [4, 7, 3], false, false],
  [[4, 5, 7], [4, 3, 7], false, true],
  [[4, 7, 5], [4, 7, 3], true, false],
  [[4, 7, 5], [4, 3, 7], true, true],
  [[1, 5, 7], [4, 7, 3], false, false], // A broadcast over the batch
  [[1, 7, 5], [4, 3, 7], true, true],
  [[4, 5, 7], [1, 7, 3], false, false], // B broadcast: one merged sgemm
  [[4, 5, 7], [7, 3], false, false], // rank-2 B under a rank-3 A
  [[4, 5, 7], [3, 7], false, true],
  [[4, 7, 5], [7, 3], true, false], // B shared but A transposed: per-batch calls
  [[2, 3, 5, 7], [2, 3, 4, 7], false, true],
  [[2, 3, 5, 7], [7, 4], false, false],
  [[3, 0], [0, 4], false, false], // empty inner dimension: zeros
  [[64, 96], [96, 80], false, false], // large enough for OpenBLAS's blocked path
];

Deno.test({
  name: `BatchMatMul (all transposes, batches, broadcasting) equals cpu${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enabled();
    for (const [aShape, bShape, ta, tb] of MATMUL_CASES) {
      const run = () => tf.matMul(tensor(aShape, 1), tensor(bShape, 2), ta, tb);
      const want = await valuesOn("cpu", run);
      dirtyHeap(want[0].length);
      const got = await valuesOn("wasm", run);
      assertClose(got, want, TOL, `matMul [${aShape}]${ta ? "ᵀ" : ""} @ [${bShape}]${tb ? "ᵀ" : ""}`);
    }
  },
});

Deno.test({
  name: `BatchMatMul broadcasts batch dims like numpy ([2,1]x[1,3])${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enabled();
    // tfjs's cpu kernel pairs batches by modulo here, so compare with explicitly tiled inputs.
    const want = await valuesOn("cpu", () => {
      const a = tf.tile(tensor([2, 1, 5, 7], 3), [1, 3, 1, 1]);
      const b = tf.tile(tensor([1, 3, 7, 4], 4), [2, 1, 1, 1]);
      return tf.matMul(a, b);
    });
    const got = await valuesOn("wasm", () => tf.matMul(tensor([2, 1, 5, 7], 3), tensor([1, 3, 7, 4], 4)));
    assertClose(got, want, TOL, "broadcast matMul");
  },
});

Deno.test({
  name: `matMul gradients (all transposes, 2-D and batched) equal cpu${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enabled();
    const cases = MATMUL_CASES.filter(([a, b]) => a.length === b.length && a[0] === b[0] && a[1] !== 0);
    for (const [aShape, bShape, ta, tb] of cases) {
      const run = () => {
        const a = tensor(aShape, 5), b = tensor(bShape, 6);
        const f = (x: tf.Tensor, y: tf.Tensor) => {
          const out = tf.matMul(x, y, ta, tb);
          return tf.sum(tf.mul(out, tensor(out.shape, 7)));
        };
        return tf.grads(f)([a, b]);
      };
      assertClose(
        await valuesOn("wasm", run),
        await valuesOn("cpu", run),
        TOL,
        `grads [${aShape}] @ [${bShape}]`,
      );
    }
  },
});

const ACTIVATIONS = ["linear", "relu", "relu6", "leakyrelu", "prelu", "sigmoid", "elu"] as const;

Deno.test({
  name: `_FusedMatMul with bias and activations (incl. transposeB, batch > 1) equals cpu${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enabled();
    const shapes: Case[] = [
      [[6, 9], [9, 5], false, false],
      [[6, 9], [5, 9], false, true], // stock wasm adds the bias wrongly here
      [[3, 6, 9], [3, 5, 9], false, true], // ... and here (batch > 1)
      [[3, 9, 6], [3, 9, 5], true, false],
      [[3, 9, 6], [1, 5, 9], true, true],
    ];
    const biasShapes = [[5], [1, 5], [6, 5], [6, 1], [1]];
    for (const [aShape, bShape, ta, tb] of shapes) {
      for (const activation of ACTIVATIONS) {
        for (const biasShape of biasShapes) {
          const run = () =>
            tf.fused.matMul({
              a: tensor(aShape, 8),
              b: tensor(bShape, 9),
              transposeA: ta,
              transposeB: tb,
              bias: tensor(biasShape, 10),
              activation,
              preluActivationWeights: activation === "prelu" ? tensor([5], 11) : undefined,
              leakyreluAlpha: 0.3,
            });
          const what = `fused [${aShape}]${ta ? "ᵀ" : ""} @ [${bShape}]${
            tb ? "ᵀ" : ""
          } + [${biasShape}] ${activation}`;
          assertClose(await valuesOn("wasm", run), await valuesOn("cpu", run), TOL, what);
        }
      }
    }
    // a bias over 600 rows of 300: the rows are filled on several threads (with the C kernels)
    const big = () =>
      tf.fused.matMul({ a: tensor([600, 7], 12), b: tensor([7, 300], 13), bias: tensor([300], 14) });
    assertClose(await valuesOn("wasm", big), await valuesOn("cpu", big), TOL, "fused 600x7 @ 7x300 + bias");
  },
});

Deno.test({
  name: `fused matMul gradients (bias, linear and relu) equal cpu${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enabled();
    for (const [ta, tb] of [[false, false], [false, true], [true, false], [true, true]]) {
      for (const activation of ["linear", "relu"] as const) {
        const run = () => {
          const a = tensor(ta ? [3, 9, 6] : [3, 6, 9], 12), b = tensor(tb ? [3, 5, 9] : [3, 9, 5], 13);
          const bias = tensor([5], 14);
          const f = (x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) => {
            const out = tf.fused.matMul({ a: x, b: y, transposeA: ta, transposeB: tb, bias: z, activation });
            return tf.sum(tf.mul(out, tensor(out.shape, 15)));
          };
          return tf.grads(f)([a, b, bias]);
        };
        assertClose(
          await valuesOn("wasm", run),
          await valuesOn("cpu", run),
          TOL,
          `fused grads ${ta} ${tb} ${activation}`,
        );
      }
    }
  },
});

/** Five Adam steps of a 2-layer MLP; returns the losses and the final weights. */
function trainTinyMlp(): tf.Tensor[] {
  const w1 = tf.variable(tf.mul(tensor([8, 16], 20), 0.5));
  const b1 = tf.variable(tf.mul(tensor([16], 21), 0.1));
  const w2 = tf.variable(tf.mul(tensor([16, 4], 22), 0.5));
  const b2 = tf.variable(tf.mul(tensor([4], 23), 0.1));
  const x = tensor([30, 8], 24), y = tensor([30, 4], 25); // 2-D: tfjs cannot take gradients of broadcast matmuls
  const opt = tf.train.adam(0.01);
  const losses: tf.Tensor[] = [];
  for (let step = 0; step < 5; step++) {
    const loss = opt.minimize(() => {
      const h = tf.relu(tf.add(tf.matMul(x, w1), b1)); // (30, 16)
      const out = tf.fused.matMul({ a: h, b: w2, bias: b2 }); // (30, 4)
      return tf.mean(tf.square(tf.sub(out, y))) as tf.Scalar;
    }, true)!;
    losses.push(loss);
  }
  const result = [...losses, w1, b1, w2, b2].map((t) => tf.clone(t));
  opt.dispose();
  tf.dispose([w1, b1, w2, b2, ...losses]);
  return result;
}

Deno.test({
  name: `five Adam steps of a tiny MLP equal cpu${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enabled();
    const want = await valuesOn("cpu", trainTinyMlp);
    const got = await valuesOn("wasm", trainTinyMlp);
    assertClose(got, want, TOL, "tiny MLP after Adam");
    // The loss went down: the steps did something.
    assertEquals(got[4][0] < got[0][0], true);
  },
});

Deno.test({
  name: `matMul kernels leak no wasm memory${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enabled();
    const before = tf.memory().numTensors;
    const dataIds = (tf.backend() as unknown as { numDataIds(): number }).numDataIds();
    tf.tidy(() => {
      tf.matMul(tensor([4, 5, 7], 1), tensor([7, 3], 2));
      tf.fused.matMul({
        a: tensor([4, 5, 7], 1),
        b: tensor([4, 3, 7], 2),
        transposeB: true,
        bias: tensor([3], 3),
      });
    });
    assertEquals(tf.memory().numTensors, before);
    assertEquals((tf.backend() as unknown as { numDataIds(): number }).numDataIds(), dataIds);
  },
});

Deno.test({
  name: `disableBlasKernels restores the stock kernels${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enabled();
    const ours = tf.getKernel("BatchMatMul", "wasm").kernelFunc;
    disableBlasKernels();
    const restored = tf.getKernel("BatchMatMul", "wasm").kernelFunc;
    assertEquals(restored === ours, false);
    const got = await valuesOn("wasm", () => tf.matMul(tensor([5, 7], 1), tensor([7, 3], 2)));
    const want = await valuesOn("cpu", () => tf.matMul(tensor([5, 7], 1), tensor([7, 3], 2)));
    assertClose(got, want, TOL, "stock matMul");
    await enabled();
    assertEquals(tf.getKernel("BatchMatMul", "wasm").kernelFunc === ours, true);
  },
});

const NATIVE = BLAS_OK ? loadNative() : null;

/** A test of the C kernels' products, given the kernels once they are enabled; ignored without them. */
function nativeTest(name: string, fn: (native: Native) => Promise<void>): void {
  Deno.test({
    name: `${name}${NATIVE?.ok ? "" : " (skipped: no C kernels)"}`,
    ignore: !NATIVE?.ok,
    async fn() {
      await enabled();
      await fn((NATIVE as { ok: true; native: Native }).native);
    },
  });
}

// The slices and the single call may round differently: which kernel a library runs for a block (and
// how it handles a block's edge) depends on the processor and on OPENBLAS_CORETYPE. Both must meet
// float32's error bound for a product; our code fixes only which slices are made.
nativeTest(
  "products cut into slices on our threads (by rows and by columns, every transpose, beta 0 and 1) and " +
    "on one thread are within float32's error bound of the exact product, on OpenBLAS and on oneDNN",
  async (native) => {
    const threads = native.threads();
    try {
      const references = new Map<string, ReturnType<typeof exactProduct>>(); // the same for both libraries
      await onEachGemm(native, (library) => slicesMeetProductBound(native, library, references));
    } finally {
      native.setThreads(threads);
    }
  },
);

function slicesMeetProductBound(
  native: Native,
  library: string,
  references: Map<string, ReturnType<typeof exactProduct>>,
): void {
  // m ≥ n: cut by rows (800: two 400-row halves, or 272 + 256 + 272 rows; 197: 96 + 101); n > m: by columns
  const cases = [
    [2, 800, 128, 512],
    [2, 197, 53, 300],
    [2, 40, 1000, 60],
    [2, 16, 2048, 64],
    [2, 128, 66, 912], // the LM head's weight gradient
    [3, 800, 128, 512], // three slices: more helpers than this machine's cores is still right
    [3, 16, 2048, 64],
  ];
  // Past 64 Mi multiply-adds OpenBLAS runs a product on its own threads; oneDNN's are cut too.
  if (library === "oneDNN") cases.push([2, 600, 2048, 64]);
  for (const [parts, m, n, k] of cases) {
    native.setThreads(parts);
    for (const [transA, transB] of [[false, false], [false, true], [true, false], [true, true]]) {
      for (const beta of [0, 1] as const) {
        const a = seeded(m * k, m + k), b = seeded(k * n, n + k), start = seeded(m * n, m + n);
        const lda = transA ? m : k, ldb = transB ? k : n;
        const one = start.slice(), cut = start.slice();
        native.sgemm(transA, transB, { m, n, k }, a, lda, b, ldb, beta, one, n, 1);
        const before = native.jobsShared();
        native.sgemm(transA, transB, { m, n, k }, a, lda, b, ldb, beta, cut, n, parts);
        const what = `${library} ${m}x${k}x${n} ${transA ? "T" : "N"}${transB ? "T" : "N"} beta ${beta}`;
        assertEquals(native.jobsShared() > before, true, `${what}, ${parts} slices: shared with a helper`);
        const product = { m, n, k, a, transA, b, transB, c0: beta ? start : null };
        const key = `${m} ${n} ${k} ${transA} ${transB} ${beta}`;
        const reference = references.get(key) ?? exactProduct(product);
        references.set(key, reference);
        assertWithinProductBound(one, product, `${what}, one thread`, reference);
        assertWithinProductBound(cut, product, `${what}, ${parts} slices`, reference);
      }
    }
  }
}

nativeTest(
  "matmuls and their gradients equal cpu with the products on OpenBLAS alone and on oneDNN",
  async (native) => {
    // the cases above, and products big enough to be cut across the threads (by rows, by columns)
    const big: Case[] = [[[800, 128], [128, 512], false, false], [[16, 512], [2048, 512], false, true]];
    await onEachGemm(native, async (library) => {
      for (const [aShape, bShape, ta, tb] of [...MATMUL_CASES, ...big]) {
        // tfjs has no gradient for a batch broadcast: those cases check the values alone
        const grads = JSON.stringify(aShape.slice(0, -2)) === JSON.stringify(bShape.slice(0, -2));
        const loss = (x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.matMul(x, y, ta, tb));
        const run = () => {
          const a = tensor(aShape, 5), b = tensor(bShape, 6);
          return [tf.matMul(a, b, ta, tb), ...(grads ? tf.grads(loss)([a, b]) : [])];
        };
        const what = `${library}: matMul [${aShape}]${ta ? "ᵀ" : ""} @ [${bShape}]${tb ? "ᵀ" : ""}`;
        assertClose(await valuesOn("wasm", run), await valuesOn("cpu", run), TOL, what);
      }
    });
  },
);

nativeTest(
  "a oneDNN that does not open leaves the products on OpenBLAS, saying why in one line",
  // deno-lint-ignore require-await
  async (native) => {
    const before = native.usingDnnl();
    try {
      const choice = chooseGemm(native, "/nonexistent/libdnnl.so.2");
      assertEquals(choice.onednn, null, "library");
      assertEquals(
        choice.note.includes("/nonexistent/libdnnl.so.2 does not open"),
        true,
        `note '${choice.note}'`,
      );
      assertEquals(choice.note.includes(ONEDNN_HINT), true, "install hint");
      assertEquals(choice.note.includes("\n"), false, "one line");
      assertEquals(native.usingDnnl(), false, "oneDNN not in use");
      assertEquals(chooseGemm(native, false).note, "products on OpenBLAS (oneDNN turned off)", "turned off");
    } finally {
      native.useDnnl(before); // the library bound before is still bound
    }
  },
);

// Where libdnnl is missing the oneDNN half of the tests above runs on OpenBLAS only; CI (.ci/run)
// installs it and sets SEEMORE_REQUIRE_ONEDNN=1, so that half must run there.
Deno.test({
  name: "oneDNN loads and runs the products (required where SEEMORE_REQUIRE_ONEDNN=1, as in CI)",
  ignore: Deno.env.get("SEEMORE_REQUIRE_ONEDNN") !== "1",
  async fn() {
    const result = await enableBlasKernels();
    assertEquals(result.gemm?.startsWith("products on oneDNN"), true, `gemm '${result.gemm}'`);
  },
});

Deno.test({
  name: `a matmul whose output grows the wasm heap still writes the right memory${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await enabled();
    const heap = () =>
      (tf.backend() as unknown as { wasm: { HEAPU8: Uint8Array } }).wasm.HEAPU8.buffer.byteLength;
    const before = heap();
    const rows = 1024, cols = Math.ceil(before / 4 / rows) + 1024; // output alone is larger than the heap
    const a = tf.tensor(seeded(rows, 16), [rows, 1]), b = tf.tensor(seeded(cols, 17), [1, cols]);
    const out = tf.matMul(a, b); // (rows, cols), an outer product
    assertEquals(heap() > before, true, "heap grew");
    const av = a.dataSync(), bv = b.dataSync();
    for (const r of [0, 517, rows - 1]) {
      const row = tf.tidy(() => tf.slice(out, [r, cols - 64], [1, 64]).dataSync());
      const want = Float32Array.from({ length: 64 }, (_, j) => av[r] * bv[cols - 64 + j]);
      assertClose([row as Float32Array], [want], 1e-6, `row ${r}`);
    }
    tf.dispose([a, b, out]);
  },
});

Deno.test({
  name: `enableBlasKernels({ threads }) sets OpenBLAS's thread count${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    disableBlasKernels();
    const res = await enableBlasKernels({ threads: 1 });
    assertEquals(res.ok, true, "enabled");
    assertEquals(activeBlas()!.numThreads(), 1, "threads");
    let threw = false;
    disableBlasKernels();
    try {
      await enableBlasKernels({ threads: 0 });
    } catch (err) {
      threw = String(err).includes("positive integer");
    }
    assertEquals(threw, true, "threads: 0 rejected");
    await enabled();
  },
});

Deno.test({
  name: `dense() is one kernel on the fast path, and its lazy gradient equals cpu's${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    await initBackend("wasm"); // as the CLI does: the dense kernel registered with the ops
    const run = () => {
      const x = tensor([3, 11, 40], 60), w = tensor([40, 24], 61), b = tensor([24], 62);
      const r = tensor([3, 11, 24], 63);
      const f = (xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) =>
        tf.sum(tf.mul(dense(xx, ww as tf.Tensor2D, bb as tf.Tensor1D), r));
      return [dense(x, w as tf.Tensor2D, b as tf.Tensor1D), ...tf.grads(f)([x, w, b])];
    };
    assertClose(await valuesOn("wasm", run), await valuesOn("cpu", run), TOL, "dense and its gradients");
    const x = tensor([3, 11, 40], 60), w = tensor([40, 24], 61) as tf.Tensor2D;
    const info = await tf.profile(() => tf.dispose(dense(x, w)));
    assertEquals(info.kernels.map((k) => k.name).join(","), "SeemoreDense", "one kernel on x as it is");
    // a layer fed by data: its input gets no gradient, so no product computes one
    const grad = await tf.profile(() =>
      tf.dispose(tf.grads((ww: tf.Tensor) => tf.sum(dense(x, ww as tf.Tensor2D)))([w]))
    );
    const products = grad.kernels.filter((k) => k.name === "BatchMatMul" || k.name === "_FusedMatMul");
    assertEquals(products.length, 1, "the weight's gradient alone");
    tf.dispose([x, w]);
  },
});
