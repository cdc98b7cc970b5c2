// The whole-block kernel (kernels.c seemore_block / seemore_block_grad, on wasm) against the op-by-op
// block on the cpu backend, and against the layers' own fast path on wasm: the block's output and the
// gradients of its input and of all eleven parameters, for the decoder's block (causal) and the ViT's,
// with and without dropout (same seeds, so the same noise), pre-norm, the head-size scale, and seeMoE's
// ViT block (ReLU MLP; one kernel only in evaluation, where its MLP's dropout is off). The same
// for the block's first half alone (seemore_attention_half: seeMoE's blocks).

import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../../lib/backend.ts";
import { loadNative, type Native } from "../../lib/blas/native.ts";
import { attentionHalf, Block, type BlockConfig } from "../../lib/model/block.ts";
import { KERNELS as FUSED_KERNELS } from "../../lib/ops/registry.ts";
import { ForwardContext, Initialiser } from "../../lib/model/module.ts";
import { assertClose, assertEquals, BLAS_OK, onEachGemm, seeded, valuesOn } from "./helpers.ts";

const TOL = 1e-4;
const READY = BLAS_OK && loadNative().ok;
const NOTE = READY ? "" : " [ignored: needs OpenBLAS and a C compiler]";

/** The fast CPU path as lib/backend.ts sets it up: the C kernels registered with the ops. */
async function ready(): Promise<void> {
  const info = await initBackend("wasm");
  if (!tf.getKernel(FUSED_KERNELS.block, "wasm")) throw new Error(`block kernel missing: ${info.notes}`);
}

function tensor(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(seeded(tf.util.sizeFromShape(shape), seed), shape);
}

interface Case {
  name: string;
  causal: boolean;
  rate: number;
  training: boolean;
  options?: Partial<BlockConfig>;
  shape?: [number, number, number]; // (B, T, C); default (3, 7, 32)
}

const CASES: Case[] = [
  { name: "decoder block, dropout", causal: true, rate: 0.2, training: true },
  { name: "ViT block, dropout", causal: false, rate: 0.1, training: true },
  { name: "decoder block, eval", causal: true, rate: 0.2, training: false },
  {
    name: "pre-norm, head-size scale, dropout",
    causal: true,
    rate: 0.1,
    training: true,
    options: { preNorm: true, scaleByHeadSize: true },
  },
  // products of ≥ 2^20 multiply-adds: cut across the threads, by rows and by columns, the bias and GELU
  // done slice by slice
  {
    name: "decoder block, dropout, split products",
    causal: true,
    rate: 0.2,
    training: true,
    shape: [4, 40, 64],
  },
  { name: "ViT block, eval, split products", causal: false, rate: 0.1, training: false, shape: [4, 40, 64] },
  // seeMoE's ViT block (its MLP: ReLU, output dropout): one kernel in evaluation, its layers while training
  { name: "ReLU MLP block, eval", causal: false, rate: 0.1, training: false, options: { ffn: "mlp" } },
  {
    name: "ReLU MLP block, eval, split products",
    causal: false,
    rate: 0.1,
    training: false,
    options: { ffn: "mlp" },
    shape: [4, 40, 64],
  },
  {
    name: "ReLU MLP block, dropout (its layers)",
    causal: false,
    rate: 0.1,
    training: true,
    options: { ffn: "mlp" },
  },
];
const RELU_EVAL = CASES.findIndex((c) => c.name === "ReLU MLP block, eval");

/** What one run differentiates: a part of the case's block and the parameters it uses. */
interface Part {
  forward: (x: tf.Tensor3D, ctx: ForwardContext) => tf.Tensor;
  params: tf.Variable[];
}

/** A part's output, dx, then each of its parameters' gradients, on the case's block, input and seeds. */
function partRun(c: Case, part: (block: Block) => Part): () => tf.Tensor[] {
  return () => {
    const shape = c.shape ?? [3, 7, 32];
    const block = new Block({
      nEmbd: shape[2],
      numHeads: 4,
      dropout: c.rate,
      isDecoder: c.causal,
      ...c.options,
    }, new Initialiser(5));
    const { forward, params } = part(block);
    const x = tensor(shape, 70) as tf.Tensor3D; // (B, T, C)
    const w = tensor(shape, 71);
    const ctx = () => new ForwardContext(c.training, 9, 2); // the same seeds for every pass
    const run = (t: tf.Tensor) => forward(t as tf.Tensor3D, ctx());
    const loss = (t: tf.Tensor) => tf.sum(tf.mul(run(t), w)) as tf.Scalar;
    const out = run(x);
    const dx = tf.grad(loss)(x);
    const { grads } = tf.variableGrads(() => loss(x), params);
    const result = [out, dx, ...params.map((v) => grads[v.name])].map((t) => t.clone());
    block.variables().forEach((v) => v.dispose());
    return result;
  };
}

/** The whole block: 12 gradients (ln1, attention, ln2, feed-forward order). */
const blockRun = (c: Case) =>
  partRun(c, (block) => ({ forward: (x, ctx) => block.forward(x, ctx), params: block.variables() }));

Deno.test({
  name: `a whole block in one kernel each way equals the ops on cpu: output and all 12 gradients${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    await onEachGemm((loadNative() as { ok: true; native: Native }).native, async (library) => {
      for (const c of CASES) {
        const got = await valuesOn("wasm", blockRun(c));
        assertEquals(got.length, 13, `${library}, ${c.name}: outputs`);
        assertClose(got, await valuesOn("cpu", blockRun(c)), TOL, `${library}, ${c.name}`);
      }
    });
    for (const c of [CASES[0], CASES[RELU_EVAL]]) {
      const kernels = (await tf.profile(() => tf.dispose(blockRun(c)()))).kernels.map((k) => k.name);
      assertEquals(kernels.includes(FUSED_KERNELS.block), true, `${c.name}: the block kernel ran`);
      assertEquals(kernels.includes(FUSED_KERNELS.blockGrad), true, `${c.name}: its gradient kernel ran`);
    }
  },
});

// Bit for bit is what our code fixes here: the block kernel makes the same product calls (same library,
// shapes, slices and order) and the same elementwise loops as the layers do one kernel at a time, and a
// library gives the same bits for the same call. How those products round is checked against cpu above.
Deno.test({
  name: `the block kernel gives the layers' own fast path's numbers bit for bit${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    await compareWithLayers(tf.getKernel(FUSED_KERNELS.block, "wasm")!);
  },
});

async function compareWithLayers(
  config: tf.KernelConfig,
  run: (c: Case) => () => tf.Tensor[] = blockRun,
): Promise<void> {
  for (const c of CASES) {
    const fused = await valuesOn("wasm", run(c));
    tf.unregisterKernel(config.kernelName, "wasm"); // the op then runs its layers
    let layers: Float32Array[];
    try {
      layers = await valuesOn("wasm", run(c));
    } finally {
      tf.registerKernel(config);
    }
    fused.forEach((values, i) => {
      const differing = values.findIndex((v, j) => v !== layers[i][j]);
      assertEquals(differing, -1, `${c.name}: output ${i}, first differing element`);
    });
  }
}

/** The block's first half alone (seeMoE's blocks: attentionHalf): the gradients of ln1 and the attention. */
const halfRun = (c: Case) =>
  partRun(c, (block) => ({
    forward: (x, ctx) => attentionHalf(block.ln1, block.attn, x, ctx),
    params: [...block.ln1.variables(), ...block.attn.variables()],
  }));

Deno.test({
  name:
    `the attention half in one kernel each way equals the ops on cpu, and the layers' fast path bit for bit${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    await onEachGemm((loadNative() as { ok: true; native: Native }).native, async (library) => {
      for (const c of CASES) {
        const got = await valuesOn("wasm", halfRun(c));
        assertEquals(got.length, 7, `${library}, ${c.name}: outputs`);
        assertClose(got, await valuesOn("cpu", halfRun(c)), TOL, `${library}, ${c.name}`);
      }
      await compareWithLayers(tf.getKernel(FUSED_KERNELS.attentionHalf, "wasm")!, halfRun);
    });
    const kernels = (await tf.profile(() => tf.dispose(halfRun(CASES[0])()))).kernels.map((k) => k.name);
    assertEquals(kernels.includes(FUSED_KERNELS.attentionHalf), true, "the attention half's kernel ran");
    assertEquals(kernels.includes(FUSED_KERNELS.attentionHalfGrad), true, "its gradient kernel ran");
  },
});

Deno.test({
  name: `the block kernel refuses a parameter of the wrong shape, naming it${NOTE}`,
  ignore: !READY,
  async fn() {
    await ready();
    const block = new Block({ nEmbd: 32, numHeads: 4, dropout: 0, isDecoder: true }, new Initialiser(5));
    const x = tensor([2, 5, 32], 72);
    const [g1, b1, wqkv, wp, bp, g2, b2, w1, bh, w2, bf] = block.variables();
    const inputs = { x, g1, b1, wqkv, wp, bp, g2, b2, w1, bh: tf.zeros([31]), w2, bf };
    const attrs = {
      heads: 4,
      scale: 0.25,
      causal: true,
      preNorm: false,
      relu: false,
      eps: 1e-5,
      dropout: false,
      keep: 1,
    };
    let message = "";
    try {
      tf.engine().runKernel(FUSED_KERNELS.block, inputs, { ...attrs, seedAttention: 0, seedProjection: 0 });
    } catch (err) {
      message = String(err);
    }
    assertEquals(message.includes("bh [31]"), true, `error names the tensor: ${message}`);
    tf.dispose([x, inputs.bh, bh]);
    block.variables().forEach((v) => v.dispose());
  },
});

Deno.test("the block op passes its weights in the order the block kernel returns their gradients", async () => {
  const { BLOCK_WEIGHTS } = await import("../../lib/ops/block.ts");
  const { BLOCK_PARAMS } = await import("../../lib/blas/layout.ts");
  assertEquals(
    JSON.stringify(BLOCK_WEIGHTS),
    JSON.stringify(BLOCK_PARAMS),
    "BLOCK_WEIGHTS vs layout.ts BLOCK_PARAMS",
  );
});
