// The fused GELU / layer norm / Adam ops (C kernels on wasm) against the same maths from tfjs ops on
// the cpu backend: forward values, gradients, and several Adam steps; Adam.minimize's gradients applied
// one by one during the backward pass against all of them at the end, bit for bit.

import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../../lib/backend.ts";
import { loadBlas } from "../../lib/blas/ffi.ts";
import { gelu, geluComposite as geluOps, geluWithGrad, relu } from "../../lib/ops/activations.ts";
import { adamComposite as adamOps, adamStep } from "../../lib/ops/adam.ts";
import { geluDense } from "../../lib/ops/dense.ts";
import { experts, moeCombine, moeDispatch } from "../../lib/ops/experts.ts";
import { layerNorm, layerNormComposite as layerNormOps } from "../../lib/ops/layer_norm.ts";
import { backendExtras, KERNELS as FUSED_KERNELS } from "../../lib/ops/registry.ts";
import { buildModel } from "../../lib/model/factory.ts";
import { ForwardContext } from "../../lib/model/module.ts";
import { captionLoss } from "../../lib/objective.ts";
import { tinyConfig } from "../helpers.ts";
import { loadNative, type Native } from "../../lib/blas/native.ts";
import { Adam } from "../../lib/optim.ts";
import { EVERY, WeightAverage } from "../../lib/weight_average.ts";
import assert from "node:assert/strict";
import { assertClose, assertEquals, BLAS_OK, onEachGemm, seeded, valuesOn } from "./helpers.ts";

const TOL = 1e-4;
const READY = BLAS_OK && loadNative().ok;
const NOTE = READY ? "" : " [ignored: needs OpenBLAS and a C compiler]";

function tensor(shape: number[], seed: number, scale = 1): tf.Tensor {
  return tf.tensor(seeded(tf.util.sizeFromShape(shape), seed).map((v) => v * scale), shape);
}

/** Runs fn on wasm and returns the names of the kernels it ran. */
async function kernelsRun(fn: () => tf.Tensor | tf.Tensor[]): Promise<string[]> {
  const info = await tf.profile(() => {
    const out = fn();
    tf.dispose(out);
  });
  return info.kernels.map((k) => k.name);
}

/** The fast CPU path as lib/backend.ts sets it up: the C kernels registered with the ops. */
async function ready(): Promise<void> {
  const info = await initBackend("wasm");
  if (!tf.getKernel(FUSED_KERNELS.gelu, "wasm")) throw new Error(`fused kernels missing: ${info.notes}`);
}

// Where OpenBLAS or a compiler is missing the tests above and below are ignored, so a C file that
// no longer compiles would pass unseen; CI (.ci/run) installs both and sets SEEMORE_REQUIRE_NATIVE=1.
Deno.test({
  name: "OpenBLAS loads and the C kernels compile (required where SEEMORE_REQUIRE_NATIVE=1, as in CI)",
  ignore: Deno.env.get("SEEMORE_REQUIRE_NATIVE") !== "1",
  fn() {
    const blas = loadBlas(), native = loadNative();
    if (!blas.ok) throw new Error(blas.reason);
    if (!native.ok) throw new Error(native.reason);
  },
});

Deno.test({
  name: `gelu (fused C) equals the tfjs-op GELU on cpu, values and gradient${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const x = () => tensor([4, 7, 33], 70, 4); // values in [-4, 4)
    const w = () => tensor([4, 7, 33], 71);
    const fused = () => [gelu(x()), tf.grad((t: tf.Tensor) => tf.sum(tf.mul(gelu(t), w())))(x())];
    const plain = () => [geluOps(x()), tf.grad((t: tf.Tensor) => tf.sum(tf.mul(geluOps(t), w())))(x())];
    assertClose(await valuesOn("wasm", fused), await valuesOn("cpu", plain), TOL, "gelu");
    const names = await kernelsRun(() => tf.grad((t: tf.Tensor) => tf.sum(gelu(t)))(x()));
    assertEquals(
      names.includes(FUSED_KERNELS.gelu) && names.includes(FUSED_KERNELS.geluGrad),
      true,
      "fused kernels ran",
    );
  },
});

Deno.test({
  name: `geluWithGrad gives gelu's values and gradient bit for bit; geluDense's gradients equal cpu's${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const x = tensor([5, 6, 37], 72, 4), dy = tensor([5, 6, 37], 73); // 37: vector lanes and a tail
    const [out, dx] = geluWithGrad(x, dy);
    const plainDx = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(gelu(t), dy)))(x);
    assertClose([out.dataSync() as Float32Array], [gelu(x).dataSync() as Float32Array], 0, "GELU");
    assertClose([dx.dataSync() as Float32Array], [plainDx.dataSync() as Float32Array], 0, "GELU gradient");
    tf.dispose([x, dy, out, dx, plainDx]);

    // the same value gives the same bits in a vector's lanes and in the padded last part-vector
    const values = seeded(16, 78).map((v) => v * 6);
    const row = tf.tensor1d([...values, ...values, ...values.slice(0, 5)]); // 37: two vectors and 5 more
    const [y, g] = geluWithGrad(row, tf.onesLike(row));
    for (const [name, t] of [["GELU", y], ["gradient", g]] as const) {
      const v = t.dataSync();
      for (let i = 16; i < 37; i++) assertEquals(v[i], v[i - 16], `${name} at ${i}`);
    }
    tf.dispose([row, y, g]);

    {
      const h = () => tensor([3, 5, 24], 74, 3), w = () => tensor([24, 7], 75), b = () => tensor([7], 76);
      const r = () => tensor([3, 5, 7], 77);
      const run = () => {
        const f = (hh: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) =>
          tf.sum(tf.mul(geluDense(hh, ww as tf.Tensor2D, bb as tf.Tensor1D), r()));
        return [geluDense(h(), w() as tf.Tensor2D, b() as tf.Tensor1D), ...tf.grads(f)([h(), w(), b()])];
      };
      assertClose(await valuesOn("wasm", run), await valuesOn("cpu", run), TOL, "geluDense");
      const names = await kernelsRun(() =>
        tf.grads((hh: tf.Tensor) => tf.sum(geluDense(hh, w() as tf.Tensor2D, b() as tf.Tensor1D)))([h()])
      );
      assertEquals(names.includes(FUSED_KERNELS.geluWithGrad), true, "GELU recomputed with its gradient");
    }
  },
});

// 9 tokens with 2 choices each (slots 0..17, slot j·9 + n), 17 of the slots (7 was dropped) grouped by
// expert: counts 5, 0 (expert 1 gets no rows), 9, 3.
const EXPERT_ROUTE = {
  order: Int32Array.of(3, 12, 0, 15, 9, 1, 4, 17, 2, 10, 6, 13, 8, 16, 11, 5, 14),
  rowOfSlot: new Int32Array(18), // not read by the experts
  slotExpert: new Int32Array(18),
  tokens: 9,
  choices: 2,
};
const EXPERT_COUNTS = [5, 0, 9, 3];

Deno.test({
  name:
    `experts (one C kernel) equal each expert's ops on cpu: each expert's rows gathered, values, all gradients, dropout, an empty group${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const native = (loadNative() as { ok: true; native: Native }).native;
    const threads = native.threads();
    native.setThreads(2); // experts spread over both threads
    try {
      const C = 8, F = 32, counts = EXPERT_COUNTS, route = EXPERT_ROUTE;
      const M = counts.reduce((a, b) => a + b, 0);
      for (const training of [false, true]) {
        // the op: its kernel on wasm, its composite (dispatch, then each expert's own ops) on cpu
        const run = () => () => {
          const x = tensor([route.tokens, C], 100, 2) as tf.Tensor2D, r = tensor([M, C], 101);
          const params = counts.map((_, e) => ({
            w1: tensor([C, F], 110 + e) as tf.Tensor2D,
            b1: tensor([F], 120 + e) as tf.Tensor1D,
            w2: tensor([F, C], 130 + e) as tf.Tensor2D,
            b2: tensor([C], 140 + e) as tf.Tensor1D,
          }));
          const seeds = counts.map((_, e) => 4000 + e);
          const f = (...ts: tf.Tensor[]) => {
            const [xx, ...ws] = ts;
            const ps = params.map((_, e) => ({
              w1: ws[4 * e] as tf.Tensor2D,
              b1: ws[4 * e + 1] as tf.Tensor1D,
              w2: ws[4 * e + 2] as tf.Tensor2D,
              b2: ws[4 * e + 3] as tf.Tensor1D,
            }));
            const noise = training ? { rate: 0.3, seeds } : null;
            return tf.sum(tf.mul(experts(xx as tf.Tensor2D, route, counts, ps, noise), r));
          };
          return tf.grads(f)([x, ...params.flatMap((p) => [p.w1, p.b1, p.w2, p.b2])]);
        };
        const want = await valuesOn("cpu", run());
        await onEachGemm(
          native,
          async (library) =>
            assertClose(
              await valuesOn("wasm", run()),
              want,
              TOL,
              `experts, training ${training}, ${library}`,
            ),
        );
      }
      tf.tidy(() => { // the kernel checks each parameter's shape and the rows (the C code trusts them)
        const ok = {
          w1: tf.zeros([C, F]) as tf.Tensor2D,
          b1: tf.zeros([F]) as tf.Tensor1D,
          w2: tf.zeros([F, C]) as tf.Tensor2D,
          b2: tf.zeros([C]) as tf.Tensor1D,
        };
        const x = tf.zeros([3, C]) as tf.Tensor2D;
        const three = { ...route, order: Int32Array.of(0, 4, 2), tokens: 3 };
        assert.throws(
          () => experts(x, three, [3], [{ ...ok, w2: tf.zeros([F, C + 1]) as tf.Tensor2D }], null),
          /w2_0 must be float32 \[32,8\]/,
        );
        assert.throws(
          () => experts(x, { ...three, order: Int32Array.of(0, 6, 2) }, [3], [ok], null),
          /slot 6 outside/,
        );
        assert.equal(experts(x, three, [3], [ok], null).shape.join(), `3,${C}`);
      });
    } finally {
      native.setThreads(threads);
    }
  },
});

Deno.test({
  name:
    `the experts' gradient recomputes the hidden layer bit for bit: the same gradients as from the forward's own${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready(); // binds the products the kernels call
    const native = (loadNative() as { ok: true; native: Native }).native;
    const C = 8, F = 32, counts = Int32Array.from(EXPERT_COUNTS), E = counts.length;
    const route = { rows: EXPERT_ROUTE.order, tokens: EXPERT_ROUTE.tokens, choices: 2 };
    const M = route.rows.length, N = route.tokens;
    // The parameters and their gradients as regions of a heap, one after another.
    const sizes = [C * F, F, F * C, C];
    const heap = new Uint8Array(4 * (2 * E * sizes.reduce((a, b) => a + b, 0)) + 64);
    let at = 16;
    const place = () =>
      Uint32Array.from({ length: 4 * E }, (_, i) => ((at += 4 * sizes[i % 4]) - 4 * sizes[i % 4]));
    const offsets = place(), gradOffsets = place();
    const floats = new Float32Array(heap.buffer);
    offsets.forEach((o, i) => floats.set(seeded(sizes[i % 4], 200 + i), o / 4));
    const x = seeded(N * C, 210), dy = seeded(M * C, 211);
    const keptH = new Float32Array(M * F), y = new Float32Array(M * C), mask = new Uint8Array(M * C);
    const seeds = EXPERT_COUNTS.map((_, e) => 500 + e);
    native.experts(heap, offsets, counts, route, { x, h: keptH, y, mask }, { seeds, keep: 0.7 }, { C, F });
    const gradients = (h: Float32Array | null) => {
      const dx = new Float32Array(N * C);
      native.expertsGrad(heap, offsets, gradOffsets, counts, route, { x, h, dy, mask, dx }, 0.7, { C, F });
      return [dx, ...Array.from(gradOffsets, (o, i) => floats.slice(o / 4, o / 4 + sizes[i % 4]))];
    };
    const fromKept = gradients(keptH), recomputed = gradients(null);
    assertEquals(fromKept.some((g) => g.some((v) => v !== 0)), true, "gradients are not all zero");
    fromKept.forEach((g, i) => {
      const same = g.every((v, j) => Object.is(v, recomputed[i][j]));
      assertEquals(same, true, `gradient ${i} (0: dx, then dw1, db1, dw2, db2 per expert) bit for bit`);
    });
  },
});

Deno.test({
  name:
    `moeDispatch / moeCombine give the routing's sums and their gradients, dropped slots included (combine in C)${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    // 3 tokens, 2 choices, 3 experts; slot j·3 + n. Slot 4 (token 1's second choice) was dropped.
    const N = 3, C = 4, E = 3;
    const slotExpert = Int32Array.of(0, 2, 1, 1, 0, 2);
    const order = Int32Array.of(0, 3, 2, 1, 5); // rows grouped by expert: e0 {0}, e1 {2, 3}, e2 {1, 5}
    const rowOfSlot = Int32Array.of(0, 3, 2, 1, -1, 4);
    const route = { order, rowOfSlot, slotExpert, tokens: N, choices: 2 };
    const M = order.length;
    const x = tensor([N, C], 150) as tf.Tensor2D, w = tensor([M, C], 151);
    const merged = tensor([M, C], 152) as tf.Tensor2D, gates = tensor([N, E], 153) as tf.Tensor2D;
    const dout = tensor([N, C], 154);
    const xs = x.dataSync(),
      ws = w.dataSync(),
      ms = merged.dataSync(),
      gs = gates.dataSync(),
      ds = dout.dataSync();

    const inputs = moeDispatch(x, route).dataSync();
    const dx = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(moeDispatch(t as tf.Tensor2D, route), w)))(x)
      .dataSync();
    const wantInputs = new Float32Array(M * C), wantDx = new Float32Array(N * C);
    order.forEach((slot, r) => {
      for (let c = 0; c < C; c++) {
        wantInputs[r * C + c] = xs[(slot % N) * C + c];
        wantDx[(slot % N) * C + c] += ws[r * C + c];
      }
    });
    assertClose([inputs as Float32Array, dx as Float32Array], [wantInputs, wantDx], 1e-6, "dispatch");

    const out = moeCombine(merged, gates, route).dataSync();
    const [dm, dg] = tf.grads((m: tf.Tensor, g: tf.Tensor) =>
      tf.sum(tf.mul(moeCombine(m as tf.Tensor2D, g as tf.Tensor2D, route), dout))
    )([merged, gates]);
    const wantOut = new Float32Array(N * C),
      wantDm = new Float32Array(M * C),
      wantDg = new Float32Array(N * E);
    rowOfSlot.forEach((row, slot) => {
      if (row < 0) return;
      const n = slot % N, e = slotExpert[slot], g = gs[n * E + e];
      for (let c = 0; c < C; c++) {
        wantOut[n * C + c] += g * ms[row * C + c];
        wantDm[row * C + c] = g * ds[n * C + c];
        wantDg[n * E + e] += ds[n * C + c] * ms[row * C + c];
      }
    });
    assertClose(
      [out as Float32Array, dm.dataSync() as Float32Array, dg.dataSync() as Float32Array],
      [wantOut, wantDm, wantDg],
      1e-5,
      "combine",
    );
    assert.throws(
      () => moeCombine(merged, gates, { ...route, slotExpert: Int32Array.of(0, 2, 1, 1, 0, 3) }),
      /expert 3/,
    );
  },
});

Deno.test({
  name: `relu (gradient in C) equals tf.relu on cpu, values and gradient${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const x = () => tensor([4, 7, 33], 60, 4);
    const w = () => tensor([4, 7, 33], 61);
    const grads = (f: (t: tf.Tensor) => tf.Tensor) => () => [
      f(x()),
      tf.grad((t) => tf.sum(tf.mul(f(t), w())))(x()),
    ];
    assertClose(await valuesOn("wasm", grads(relu)), await valuesOn("cpu", grads(tf.relu)), 0, "relu");
    const names = await kernelsRun(() => tf.grad((t: tf.Tensor) => tf.sum(relu(t)))(x()));
    assertEquals(names.includes(FUSED_KERNELS.reluGrad) && !names.includes("Step"), true, `kernels ${names}`);
  },
});

Deno.test({
  name: `layerNorm (fused C) equals the tfjs-op layer norm on cpu, values and all gradients${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    for (const shape of [[3, 5, 48], [6, 16], [2, 2, 3, 130]]) {
      const C = shape[shape.length - 1];
      const inputs = () => [tensor(shape, 72, 3), tf.add(1, tensor([C], 73, 0.5)), tensor([C], 74, 0.5)];
      const w = () => tensor(shape, 75);
      const with_ = (ln: typeof layerNorm) => () => {
        const [x, g, b] = inputs();
        const f = (a: tf.Tensor, c: tf.Tensor, d: tf.Tensor) => tf.sum(tf.mul(ln(a, c, d), w()));
        return [ln(x, g, b), ...tf.grads(f)([x, g, b])];
      };
      assertClose(
        await valuesOn("wasm", with_(layerNorm)),
        await valuesOn("cpu", with_(layerNormOps)),
        TOL,
        `layerNorm [${shape}]`,
      );
    }
    const names = await kernelsRun(() => layerNorm(tensor([2, 8], 76), tf.ones([8]), tf.zeros([8])));
    assertEquals(names.includes(FUSED_KERNELS.layerNorm), true, "fused kernel ran");
  },
});

Deno.test({
  name: `adamStep (fused C) equals the tfjs-op Adam on cpu over 4 steps${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const steps = (step: typeof adamStep) => () => {
      let p = tensor([37, 29], 77), m = tf.zeros([37, 29]), v = tf.zeros([37, 29]);
      for (let t = 1; t <= 4; t++) {
        const g = tensor([37, 29], 80 + t, 0.1 * t);
        ({ p, m, v } = step(p, m, v, g, { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, step: t }));
      }
      return [p, m, v];
    };
    assertClose(await valuesOn("wasm", steps(adamStep)), await valuesOn("cpu", steps(adamOps)), TOL, "adam");
    const names = await kernelsRun(() => {
      const r = adamStep(tf.ones([4]), tf.zeros([4]), tf.zeros([4]), tf.ones([4]), {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 1,
      });
      return [r.p, r.m, r.v];
    });
    assertEquals(names.includes(FUSED_KERNELS.adam), true, "fused kernel ran");
  },
});

Deno.test({
  name:
    `Adam.update on the fast path: all parameters in place, = per-parameter adamStep; a kept clone stays${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const shapes = [[37, 29], [5], [300, 400]]; // the last is split across threads
    const run = (keepClone: boolean) => {
      const params = shapes.map((s, i) => tf.tidy(() => tf.variable(tensor(s, 90 + i))));
      const opt = new Adam(params, 1e-2);
      const clone = keepClone ? tf.clone(params[0]) : null;
      const before = clone?.dataSync().slice();
      for (let t = 1; t <= 3; t++) {
        const grads = shapes.map((s, i) => tensor(s, 100 + 10 * t + i, 0.1 * t));
        opt.update(grads);
        tf.dispose(grads);
      }
      if (clone) assertClose([clone.dataSync() as Float32Array], [before as Float32Array], 0, "the clone");
      const out = params.map((p) => p.dataSync().slice() as Float32Array);
      tf.dispose([...params, ...(clone ? [clone] : [])]);
      opt.dispose();
      return out;
    };
    const expected = await valuesOn("cpu", () => {
      const ps = shapes.map((s, i) => tensor(s, 90 + i));
      let ms = shapes.map((s) => tf.zeros(s)), vs = shapes.map((s) => tf.zeros(s)), cur = ps;
      for (let t = 1; t <= 3; t++) {
        const next = cur.map((p, i) =>
          adamOps(p, ms[i], vs[i], tensor(shapes[i], 100 + 10 * t + i, 0.1 * t), {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: t,
          })
        );
        [cur, ms, vs] = [next.map((r) => r.p), next.map((r) => r.m), next.map((r) => r.v)];
      }
      return cur;
    });
    const kernels = await kernelsRun(() => {
      const p = tf.tidy(() => tf.variable(tf.ones([4])));
      const opt = new Adam([p]);
      opt.update([tf.ones([4])]);
      opt.dispose();
      return [p];
    });
    assertEquals(kernels.includes(FUSED_KERNELS.adam), false, "in place: no per-parameter kernel");
    assertClose(run(false), expected, TOL, "in place");
    assertClose(run(true), expected, TOL, "with a clone kept (per-parameter path)");
  },
});

Deno.test({
  name:
    `after a save with a weight average (train --ema), Adam still updates every parameter in place${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const params = [[6, 5], [7]].map((s, i) => tf.tidy(() => tf.variable(tensor(s, 50 + i))));
    const opt = new Adam(params);
    const average = new WeightAverage(params, 0.9);
    for (let step = 1; step <= EVERY; step++) average.update(step);
    await average.withAverage(EVERY, () => Promise.resolve()); // what saveRun does
    const grads = params.map((p, i) => tensor(p.shape, 60 + i));
    const kernels = await kernelsRun(() => {
      opt.update(grads);
      return [];
    });
    assertEquals(kernels.includes(FUSED_KERNELS.adam), false, "in place: no per-parameter kernel");
    tf.dispose([...params, ...grads]);
    opt.dispose();
    average.dispose();
  },
});

Deno.test({
  name: `adamInPlace refuses regions outside the heap or overlapping ones it would write${NOTE}`,
  ignore: !READY,
  fn() {
    const native = loadNative();
    if (!native.ok) throw new Error(native.reason);
    const heap = new Uint8Array(4096);
    const h = { beta1: 0.9, beta2: 0.999, stepSize: 1e-3, sqrtBc2: 1, eps: 1e-8 };
    const call = (offsets: number[], sizes: number[]) =>
      native.native.adamInPlace(heap, Uint32Array.from(offsets), Int32Array.from(sizes), h);
    call([16, 64, 112, 160], [8]); // fine
    call([16, 64, 112, 160, 208, 256, 304, 160], [8, 8]); // two parameters may share a gradient
    assert.throws(() => call([16, 32, 112, 160], [8]), /overlap/);
    assert.throws(() => call([16, 64, 112, 4090], [8]), /outside the heap/);
    assert.throws(() => call([16, 64, 112], [8]), /4 offsets per size/);
  },
});

Deno.test({
  name: `sgemmBatch multiplies each pair it is given and refuses indices past its arrays${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready(); // binds sgemm
    const native = (loadNative() as { ok: true; native: Native }).native;
    const a = Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8]); // two 2×2 matrices
    const b = Float32Array.from([1, 0, 0, 1, 0, 1, 1, 0]); // identity, swap
    const c = new Float32Array(12);
    const dims = { m: 2, n: 2, k: 2 };
    native.sgemmBatch(false, false, dims, a, Int32Array.of(0, 1, 1), b, Int32Array.of(1, 0, 1), 0, c);
    assertClose([c], [Float32Array.from([2, 1, 4, 3, 5, 6, 7, 8, 6, 5, 8, 7])], 0, "a[i] @ b[j]");
    assert.throws(
      () => native.sgemmBatch(false, false, dims, a, Int32Array.of(0, 2, 1), b, Int32Array.of(0, 0, 0), 0, c),
      /index 2 outside its 2 matrices/,
    );
    assert.throws(
      () => native.sgemmBatch(false, false, dims, a, Int32Array.of(0, 1), b, Int32Array.of(0, 0), 0, c),
      /sgemmBatch/,
    );
  },
});

Deno.test({
  name: `the C kernels split across 2 threads give the same results: gelu, layer norm, Adam, erf${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const native = (loadNative() as { ok: true; native: Native }).native;
    const threads = native.threads(), shared = native.jobsShared();
    native.setThreads(2); // sizes below are several chunks of 65536 elements, so helpers start
    try {
      const shape = [300, 1024];
      const run = (fused: boolean) => () => {
        const x = tensor(shape, 96, 4), g = tensor([1024], 97), b = tensor([1024], 98);
        const w = tensor(shape, 99);
        const geluF = fused ? gelu : geluOps, lnF = fused ? layerNorm : layerNormOps;
        const adamF = fused ? adamStep : adamOps;
        const dGelu = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(geluF(t), w)))(x);
        const next = adamF(x, tf.mul(w, 0.1), tf.square(w), dGelu, {
          lr: 1e-2,
          beta1: 0.9,
          beta2: 0.999,
          eps: 1e-8,
          step: 3,
        });
        return [geluF(x), dGelu, lnF(x, g, b), next.p, next.m, next.v, tf.erf(x)];
      };
      assertClose(
        await valuesOn("wasm", run(true)),
        await valuesOn("cpu", run(false)),
        TOL,
        "threaded kernels",
      );
      assertEquals(native.jobsShared() > shared, true, "work shared with helper threads");
    } finally {
      native.setThreads(threads);
    }
  },
});

Deno.test({
  name: `Erf and Exp kernels (C) equal cpu${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const run = () => [tf.erf(tensor([1000], 90, 5)), tf.exp(tensor([1000], 91, 20))];
    assertClose(await valuesOn("wasm", run), await valuesOn("cpu", run), TOL, "erf/exp");
  },
});

Deno.test("on the cpu backend the fused ops fall back to tfjs ops", async () => {
  await tf.setBackend("cpu");
  try {
    const x = tensor([3, 8], 92, 2), g = tensor([8], 93), b = tensor([8], 94);
    assertClose([gelu(x).dataSync() as Float32Array], [geluOps(x).dataSync() as Float32Array], 0, "gelu");
    assertClose(
      [layerNorm(x, g, b).dataSync() as Float32Array],
      [layerNormOps(x, g, b).dataSync() as Float32Array],
      0,
      "ln",
    );
    let threw = false;
    try {
      layerNorm(x, tensor([7], 95), b);
    } catch (err) {
      threw = String(err).includes("must be [8]");
    }
    assertEquals(threw, true, "bad gain shape rejected");
    tf.dispose([x, g, b]);
  } finally {
    await tf.setBackend("wasm");
  }
});

Deno.test({
  name:
    `Adam.minimize on the fast path (each gradient applied when final) = variableGrads + update, bit for bit${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    assertEquals(backendExtras().gradientsEach !== undefined, true, "the backward pass hands gradients over");
    // seeMoE with a word head the caption loss does not use: its parameters get zero gradients.
    const config = tinyConfig({
      model_type: "seemoe",
      num_experts: 4,
      top_k: 2,
      image_words: ["red", "star"],
    });
    const images = tf.randomNormal([3, 3, 32, 32], 0, 1, "float32", 5) as tf.Tensor4D;
    const idx = tf.randomUniform([3, 9], 0, 65, "int32", 6) as tf.Tensor2D;
    const targets = tf.randomUniform([3, 9], 0, 66, "int32", 7) as tf.Tensor2D;
    const train = (each: boolean) => {
      const model = buildModel(config, 3);
      const opt = new Adam(model.variables(), 1e-2);
      const losses: number[] = [];
      for (let step = 0; step < 3; step++) {
        const f = () => captionLoss(model, images, idx, targets, new ForwardContext(true, 1, step), "first");
        if (each) {
          const before = tf.memory().numTensors;
          const loss = opt.minimize(f);
          losses.push(loss.dataSync()[0]);
          loss.dispose();
          // The first step leaves each MoE layer's routing (SparseMoE.lastRouting, for its statistics).
          if (step > 0) assertEquals(tf.memory().numTensors, before, "tensors left by a step");
        } else {
          const { value, grads } = tf.variableGrads(f, opt.params);
          const all = opt.params.map((p) => grads[p.name] ?? tf.zerosLike(p));
          assertEquals(all.length > Object.keys(grads).length, true, "a parameter without a gradient");
          opt.update(all);
          losses.push(value.dataSync()[0]);
          tf.dispose([value, ...all]);
        }
      }
      const weights = model.variables().map((v) => v.dataSync().slice() as Float32Array);
      opt.dispose();
      model.dispose();
      return [Float32Array.from(losses), ...weights];
    };
    const whole = train(false), each = train(true);
    whole.forEach((values, i) => {
      const differing = values.findIndex((v, j) => !Object.is(v, each[i][j]));
      assertEquals(differing, -1, `${i === 0 ? "losses" : `weight ${i - 1}`}: first differing element`);
    });
    tf.dispose([images, idx, targets]);
  },
});
