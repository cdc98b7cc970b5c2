// The fused attention and dropout kernels (C on wasm, reading q/k/v in place) against the op-by-op
// versions on the cpu backend: MultiHeadAttention's output and every gradient, with and without
// the causal mask and dropout (same seeds, so the same dropout noise); with a KV cache, position by
// position as generation runs it; and dropout on its own.

import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../../lib/backend.ts";
import { attention } from "../../lib/ops/attention.ts";
import { dropout } from "../../lib/ops/dropout.ts";
import { hasKernels, KERNELS as FUSED_KERNELS } from "../../lib/ops/registry.ts";
import { aleaJump, aleaState } from "../../lib/blas/native/alea.ts";
import { loadNative, type Native } from "../../lib/blas/native.ts";
import { type KVCache, MultiHeadAttention } from "../../lib/model/attention.ts";
import { ForwardContext, Initialiser } from "../../lib/model/module.ts";
import { assertClose, assertEquals, BLAS_OK, onEachGemm, seeded, valuesOn } from "./helpers.ts";

const TOL = 1e-4;
const READY = BLAS_OK && loadNative().ok;
const NOTE = READY ? "" : " [ignored: needs OpenBLAS and a C compiler]";

function tensor(shape: number[], seed: number, scale = 1): tf.Tensor {
  return tf.tensor(seeded(tf.util.sizeFromShape(shape), seed).map((v) => v * scale), shape);
}

/** The fast CPU path as lib/backend.ts sets it up: the C kernels registered with the ops. */
async function ready(): Promise<void> {
  const info = await initBackend("wasm");
  if (!tf.getKernel(FUSED_KERNELS.attention, "wasm")) {
    throw new Error(`fused attention missing: ${info.notes}`);
  }
}

/** Output and gradients (input, then each weight) of one attention layer, built fresh on the active backend. */
function attentionRun(C: number, heads: number, causal: boolean, rate: number, training: boolean) {
  return (): tf.Tensor[] => {
    const mha = new MultiHeadAttention(
      { nEmbd: C, numHeads: heads, dropout: rate, isDecoder: causal },
      new Initialiser(7),
    );
    const x = tensor([3, 6, C], 80, 2) as tf.Tensor3D; // (B, T, C)
    const w = tensor([3, 6, C], 81);
    const loss = () => tf.sum(tf.mul(mha.forward(x, new ForwardContext(training, 5, 2)), w)) as tf.Scalar;
    const out = mha.forward(x, new ForwardContext(training, 5, 2));
    const dx = tf.grad((t: tf.Tensor) =>
      tf.sum(tf.mul(mha.forward(t as tf.Tensor3D, new ForwardContext(training, 5, 2)), w))
    )(x);
    const { grads } = tf.variableGrads(loss, mha.variables());
    const result = [out, dx, ...mha.variables().map((v) => grads[v.name])];
    const copies = result.map((t) => t.clone());
    mha.variables().forEach((v) => v.dispose());
    return copies;
  };
}

for (const causal of [false, true]) {
  for (const [rate, training] of [[0, false], [0.25, true]] as const) {
    Deno.test({
      name: `attention (fused C) equals the ops on cpu: ${causal ? "causal" : "bidirectional"}, ` +
        `dropout ${training ? rate : "off"}, output and all gradients${NOTE}`,
      ignore: !READY,
      async fn() {
        await ready();
        const fused = await valuesOn("wasm", attentionRun(12, 3, causal, rate, training));
        const plain = await valuesOn("cpu", attentionRun(12, 3, causal, rate, training));
        assertClose(fused, plain, TOL, "attention");
        // The fused path really ran on wasm (and the cpu backend has no such kernel).
        const info = await tf.profile(() => tf.dispose(attentionRun(12, 3, causal, rate, training)()));
        const names = new Set(info.kernels.map((k) => k.name));
        assertEquals(
          names.has(FUSED_KERNELS.attention) && names.has(FUSED_KERNELS.attentionGrad),
          true,
          "ran",
        );
      },
    });
  }
}

Deno.test({
  name:
    `attention split across 2 threads (64 heads, 2 chunks of noise) equals the ops on cpu, with dropout${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const native = (loadNative() as { ok: true; native: Native }).native;
    const threads = native.threads(), shared = native.jobsShared();
    native.setThreads(2);
    try {
      const run = () => {
        const mha = new MultiHeadAttention(
          { nEmbd: 32, numHeads: 8, dropout: 0.2, isDecoder: true },
          new Initialiser(9),
        );
        // B·H = 64 heads: 4 chunks of 16; 64·40² = 102,400 dropout draws: 2 chunks of noise
        const x = tensor([8, 40, 32], 88, 2) as tf.Tensor3D;
        const w = tensor([8, 40, 32], 89);
        const f = (t: tf.Tensor) =>
          tf.sum(tf.mul(mha.forward(t as tf.Tensor3D, new ForwardContext(true, 3, 1)), w));
        const out = [mha.forward(x, new ForwardContext(true, 3, 1)), tf.grad(f)(x)];
        mha.variables().forEach((v) => v.dispose());
        return out;
      };
      assertClose(await valuesOn("wasm", run), await valuesOn("cpu", run), TOL, "threaded attention");
      assertEquals(native.jobsShared() > shared, true, "work shared with helper threads");
    } finally {
      native.setThreads(threads);
    }
  },
});

/** forwardCls's output and gradients (input, then each weight) on the active backend. */
function firstRun(rate: number, training: boolean) {
  return (): tf.Tensor[] => {
    const mha = new MultiHeadAttention(
      { nEmbd: 32, numHeads: 4, dropout: rate, isDecoder: false },
      new Initialiser(12),
    );
    const x = tensor([5, 9, 32], 90, 2) as tf.Tensor3D; // (B, T, C)
    const w = tensor([5, 1, 32], 91);
    const f = (t: tf.Tensor) =>
      tf.sum(tf.mul(mha.forwardCls(t as tf.Tensor3D, new ForwardContext(training, 6, 3)), w));
    const out = mha.forwardCls(x, new ForwardContext(training, 6, 3));
    const dx = tf.grad(f)(x);
    const { grads } = tf.variableGrads(() => f(x) as tf.Scalar, mha.variables());
    const result = [out, dx, ...mha.variables().map((v) => grads[v.name])].map((t) => t.clone());
    mha.variables().forEach((v) => v.dispose());
    return result;
  };
}

for (const [rate, training] of [[0, false], [0.25, true]] as const) {
  Deno.test({
    name: `first-position attention (fused C, weight read in place) equals the ops on cpu, dropout ${
      training ? rate : "off"
    }, 2 threads${NOTE}`,
    ignore: !READY,
    async fn() {
      await ready();
      const native = (loadNative() as { ok: true; native: Native }).native;
      const threads = native.threads();
      native.setThreads(2);
      try {
        await onEachGemm(native, async (library) =>
          assertClose(
            await valuesOn("wasm", firstRun(rate, training)),
            await valuesOn("cpu", firstRun(rate, training)),
            TOL,
            `first, ${library}`,
          ));
        const info = await tf.profile(() => tf.dispose(firstRun(rate, training)()));
        const names = new Set(info.kernels.map((k) => k.name));
        assertEquals(
          names.has(FUSED_KERNELS.firstAttention) && names.has(FUSED_KERNELS.firstAttentionGrad),
          true,
          "ran",
        );
      } finally {
        native.setThreads(threads);
      }
    },
  });
}

/** Feeds 3 positions, then 1, 1, 2 more through a cached attention layer: every output and the final cache. */
function cachedRun(causal: boolean) {
  return (): tf.Tensor[] => {
    const mha = new MultiHeadAttention(
      { nEmbd: 12, numHeads: 3, dropout: 0.1, isDecoder: causal },
      new Initialiser(8),
    );
    const cache: KVCache = { k: null, v: null };
    const outs: tf.Tensor[] = [];
    for (const [i, n] of [3, 1, 1, 2].entries()) {
      const x = tensor([2, n, 12], 84 + i, 2) as tf.Tensor3D; // (B, n, C)
      outs.push(mha.forward(x, ForwardContext.eval(), cache));
    }
    const result = [...outs, cache.k!.clone(), cache.v!.clone()];
    tf.dispose([cache.k!, cache.v!, ...mha.variables()]);
    return result;
  };
}

for (const causal of [true, false]) {
  Deno.test({
    name: `attention with a KV cache (fused C) equals the ops on cpu, ${
      causal ? "causal" : "bidirectional"
    }${NOTE}`,
    ignore: !READY,
    async fn() {
      await ready();
      const fused = await valuesOn("wasm", cachedRun(causal));
      assertClose(fused, await valuesOn("cpu", cachedRun(causal)), TOL, "cached attention");
      const info = await tf.profile(() => tf.dispose(cachedRun(causal)()));
      assertEquals(
        info.kernels.some((k) => k.name === FUSED_KERNELS.attentionCached),
        true,
        "fused kernel ran",
      );
    },
  });
}

Deno.test({
  name: `the C noise generator gives tf.randomUniform's values bit for bit${NOTE}`,
  ignore: !READY,
  fn() {
    const native = (loadNative() as { ok: true; native: Native }).native;
    for (const [seed, n] of [[0, 1000], [1, 1000], [1234, 100_000], [4294967295, 1000], [2.5, 1000]]) {
      const ours = native.uniform(seed, n);
      const theirs = tf.tidy(() => tf.randomUniform([n], 0, 1, "float32", seed).dataSync());
      for (let i = 0; i < ours.length; i++) {
        if (!Object.is(ours[i], theirs[i])) {
          throw new Error(`seed ${seed}, value ${i}: ${ours[i]} vs ${theirs[i]}`);
        }
      }
    }
  },
});

Deno.test("aleaJump(state, n) is the Alea state after n draws", () => {
  // seedrandom's Alea step, in doubles, as tf.randomUniform runs it
  const step = (g: Float64Array) => {
    const t = 2091639 * g[1] + g[0] * 2.3283064365386963e-10;
    g[1] = g[2];
    g[2] = g[3];
    g[0] = t | 0;
    g[3] = t - g[0];
  };
  for (const seed of [0, 1234, 4294967295, 2.5]) {
    const g = aleaState(seed);
    let done = 0;
    for (const n of [0, 1, 2, 3, 10, 1000, 65536, 100_003]) {
      while (done < n) {
        step(g);
        done++;
      }
      const jumped = aleaJump(aleaState(seed), n);
      for (let i = 0; i < 4; i++) {
        if (jumped[i] !== g[i]) {
          throw new Error(`seed ${seed}, ${n} draws: state[${i}] ${jumped[i]} vs ${g[i]}`);
        }
      }
    }
  }
});

Deno.test({
  name: `dropout (fused C) gives tf.dropout's numbers with the same seed, values and gradient${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const x = () => tensor([50, 7, 9], 82, 3);
    const w = () => tensor([50, 7, 9], 83);
    const run = (f: (t: tf.Tensor) => tf.Tensor) => () => [
      f(x()),
      tf.grad((t: tf.Tensor) => tf.sum(tf.mul(f(t), w())))(x()),
    ];
    for (const rate of [0.1, 0.3, 0.5, 0.9]) {
      const fused = await valuesOn("wasm", run((t) => dropout(t, { rate, seed: 1234 })));
      const plain = await valuesOn("cpu", run((t) => tf.dropout(t, rate, undefined, 1234)));
      assertClose(fused, plain, 1e-6, `dropout ${rate}`);
      const dropped = fused[0].filter((v) => v === 0).length / fused[0].length;
      assertEquals(Math.abs(dropped - rate) < 0.05, true, `about ${rate} dropped (${dropped})`);
    }
    // 300,300 draws: 5 chunks of noise (the last one short), drawn on 2 threads
    const native = (loadNative() as { ok: true; native: Native }).native;
    const threads = native.threads();
    native.setThreads(2);
    try {
      const big = () => tensor([300, 1001], 84, 3);
      const fused = await valuesOn("wasm", () => [dropout(big(), { rate: 0.3, seed: 99 })]);
      assertClose(
        fused,
        await valuesOn("cpu", () => [tf.dropout(big(), 0.3, undefined, 99)]),
        1e-6,
        "dropout, 5 chunks",
      );
    } finally {
      native.setThreads(threads);
    }
  },
});

Deno.test({
  name: `attention (fused C) rejects a qkv width that is not 3 × heads × head size${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    assertEquals(hasKernels("attention", "attentionGrad"), true, "fused attention available");
    let message = "";
    try {
      tf.tidy(() => attention(tf.zeros([2, 4, 10]) as tf.Tensor3D, { heads: 3, scale: 1, causal: false }));
    } catch (e) {
      message = (e as Error).message;
    }
    assertEquals(message.includes("qkv [2,4,10]"), true, `error names the tensor: ${message}`);
  },
});

Deno.test({
  name:
    `attention's gradient recomputes the softmax weights bit for bit: the same dqkv as from the forward's own${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready(); // binds the products the kernels call
    const native = (loadNative() as { ok: true; native: Native }).native;
    const dims = { batch: 3, positions: 9, heads: 4, headSize: 8 };
    const C = dims.heads * dims.headSize, rows = dims.batch * dims.positions;
    const weights = dims.batch * dims.heads * dims.positions * dims.positions;
    const qkv = seeded(rows * 3 * C, 300), dout = seeded(rows * C, 301);
    for (const causal of [false, true]) {
      for (const seed of [null, 77]) {
        const keep = seed === null ? 1 : 0.8;
        const kept = new Float32Array(weights), mask = seed === null ? null : new Uint8Array(weights);
        const out = new Float32Array(rows * C);
        native.attention(qkv, seed, { out, probs: kept, mask }, dims, { scale: 0.3, causal, keep });
        const grad = (probs: Float32Array | null) => {
          const dqkv = new Float32Array(rows * 3 * C);
          native.attentionGrad(dout, { qkv, probs, mask }, dqkv, dims, { scale: 0.3, causal, keep });
          return dqkv;
        };
        const fromKept = grad(kept), recomputed = grad(null);
        assertEquals(fromKept.some((v) => v !== 0), true, "a gradient");
        const differing = fromKept.findIndex((v, i) => !Object.is(v, recomputed[i]));
        assertEquals(differing, -1, `causal ${causal}, dropout ${seed !== null}: first differing element`);
      }
    }
  },
});
