// Small C kernels (lib/blas/kernels.c) compiled with the system C compiler ($CC, default `cc`) on first
// use and opened through Deno FFI. The shared library is cached under $SEEMORE_CACHE_DIR, else
// $XDG_CACHE_HOME/seemore, ~/.cache/seemore or ./.cache/seemore, named by a hash of the source and the
// compile command, so an edited source is rebuilt and a stale build is never used. Flags are portable
// (-O3, SSE2 on x86-64); the elementwise loops carry their own AVX2 / AVX-512 builds, picked at load
// time (kernels.c, SIMD_CLONES). Without a compiler (or without --allow-run / --allow-ffi) loadNative()
// says why and callers use JS instead.
//
// Every function here checks its arguments' lengths before calling C: FFI does no bounds checks.

import { checkGemm, firstLine, readEnv } from "./ffi.ts";

const SOURCE_URL = new URL("./kernels.c", import.meta.url);
// -fno-trapping-math lets the branch-free maths vectorize, and -fno-math-errno lets sqrtf be the sqrt
// instruction (Adam's loop then vectorizes); results are unchanged (no FP traps or errno are used).
// -ffp-contract=off: no fused multiply-adds, so results do not depend on the compiler's choices (the
// exp, erf, GELU and softmax loops opt in: kernels.c, FUSED_MATH).
const CC_FLAGS = [
  "-O3",
  "-std=c99",
  "-fno-trapping-math",
  "-fno-math-errno",
  "-ffp-contract=off",
  "-Wno-psabi", // 64-byte vector helpers are always inlined: no call passes one
  "-shared",
  "-fPIC",
  // Never unmapped, even when Deno closes the library at exit: a helper thread of parallel_for may
  // still be returning from its last chunk then (it segfaulted in ~1 of 30 runs that exited right
  // after a threaded kernel).
  "-Wl,-z,nodelete",
];
const LIBS = ["-lm", "-ldl", "-pthread"];
const ABI_VERSION = 21;
const MAX_RANK = 8; // as in kernels.c

const SYMBOLS = {
  seemore_abi_version: { parameters: [], result: "i32" },
  seemore_bind_sgemm: { parameters: ["buffer"], result: "i32" },
  seemore_bind_dnnl: { parameters: ["buffer"], result: "i32" },
  seemore_use_dnnl: { parameters: ["i32"], result: "i32" },
  seemore_set_threads: { parameters: ["i32"], result: "i32" },
  seemore_jobs_shared: { parameters: [], result: "i64" },
  seemore_experts: {
    // heap, offsets (u32: w1, b1, w2, b2 per expert), counts (i32), E, x, h, y, mask (u8, or null),
    // noise states (f64[4] per expert, or null), keep, C, F -> 0 on success
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "f32",
      "i32",
      "i32",
    ],
    result: "i32",
  },
  seemore_experts_grad: {
    // heap, offsets (w1, b1, w2, b2), gradient offsets (dw1, db1, dw2, db2), counts, E, x, h, dy,
    // mask (or null), keep, dx, C, F -> 0 on success
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "f32",
      "buffer",
      "i32",
      "i32",
    ],
    result: "i32",
  },
  // heap, offsets (kernels.c's BLK_ order), attention noise states (or null), projection noise states
  // (or null), chunk, dims (6 i32 then 3 f32) -> 0 on success
  seemore_block: { parameters: ["buffer", "buffer", "buffer", "buffer", "i32", "buffer"], result: "i32" },
  // heap, offsets, has dropout, dims -> 0 on success
  seemore_block_grad: { parameters: ["buffer", "buffer", "i32", "buffer"], result: "i32" },
  // x, order (i32), inputs, N, M, C
  seemore_moe_dispatch: { parameters: ["buffer", "buffer", "buffer", "i32", "i32", "i32"], result: "void" },
  // dinputs, order (i32), dx, N, M, C
  seemore_moe_dispatch_grad: {
    parameters: ["buffer", "buffer", "buffer", "i32", "i32", "i32"],
    result: "void",
  },
  // merged, gates, rowOfSlot (i32), slotExpert (i32), out, N, k, C, E
  seemore_moe_combine: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "i32", "i32", "i32", "i32"],
    result: "void",
  },
  // dout, merged, gates, rowOfSlot, slotExpert, dmerged, dgates, N, k, M, C, E
  seemore_moe_combine_grad: {
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
    ],
    result: "void",
  },
  seemore_first_attention: {
    // x, w, q, a, ctx, out, probs, mask (u8, or null), noise states (or null), draws per chunk, B, T, C, H, scale, keep
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "f32",
    ],
    result: "i32",
  },
  seemore_first_attention_grad: {
    // dout, x, w, q, a, ctx, probs, mask (or null), dx, dw, B, T, C, H, scale, keep
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "f32",
    ],
    result: "i32",
  },
  // dst (rows, n), row (n), rows, n
  seemore_fill_rows: { parameters: ["buffer", "buffer", "i32", "i32"], result: "void" },
  seemore_sgemm: {
    // transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads -> 0 on success
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
      "i32",
    ],
    result: "i32",
  },
  seemore_sgemm_batch: {
    // transA, transB, m, n, k, a, aIndex (i32), b, bIndex (i32), beta, c, batch -> 0 on success
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "f32",
      "buffer",
      "i32",
    ],
    result: "i32",
  },
  seemore_uniform: {
    // state (f64[4], advanced), out, n
    parameters: ["buffer", "buffer", "i32"],
    result: "void",
  },
  seemore_dropout: {
    // x, y, mask (u8), n, keep, noise states (f64[4] per chunk of draws), draws per chunk
    parameters: ["buffer", "buffer", "buffer", "i32", "f32", "buffer", "i32"],
    result: "void",
  },
  seemore_dropout_grad: {
    // dy, mask (u8), dx, n, keep
    parameters: ["buffer", "buffer", "buffer", "i32", "f32"],
    result: "void",
  },
  seemore_attention: {
    // qkv, noise states (f64[4] per chunk of draws, or null), draws per chunk, out, probs, mask (u8, or null),
    // B, T, H, hs, scale, causal, keep
    parameters: [
      "buffer",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "i32",
      "f32",
    ],
    result: "i32",
  },
  seemore_decoder_step: {
    // weights, x, cache, logits, B, C, H, layers, V, t, max_t (cached positions), scale, eps, pre_norm -> 0 on success
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "f32",
      "i32",
    ],
    result: "i32",
  },
  seemore_attention_cached: {
    // qkv, k_past, v_past (or null), out, k_all, v_all, B, Tn, t_past, H, hs, scale, causal -> 0 on success
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "i32",
    ],
    result: "i32",
  },
  seemore_attention_grad: {
    // dout, qkv, probs, mask (u8, or null), dqkv, B, T, H, hs, scale, keep -> 0 on success
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "f32",
    ],
    result: "i32",
  },
  seemore_transpose32: {
    // src, dst, rank, shape (i32[rank]), perm (i32[rank])
    parameters: ["buffer", "buffer", "i32", "buffer", "buffer"],
    result: "void",
  },
  seemore_gather32: {
    // src, dst, outer, dim, inner, index (i32), n_index
    parameters: ["buffer", "buffer", "i32", "i32", "i32", "buffer", "i32"],
    result: "void",
  },
  seemore_sum: {
    // src, dst, groups, sizes (i32[groups]), reduced flags (i32[groups]) -> 0 on success
    parameters: ["buffer", "buffer", "i32", "buffer", "buffer"],
    result: "i32",
  },
  seemore_im2col3x3s2: {
    // x (B, H, W, C), cols (B, H/2, W/2, 9, C), B, H, W, C
    parameters: ["buffer", "buffer", "i32", "i32", "i32", "i32"],
    result: "void",
  },
  seemore_col2im3x3s2: {
    // dcols (B, H/2, W/2, 9, C), dx (B, H, W, C), B, H, W, C
    parameters: ["buffer", "buffer", "i32", "i32", "i32", "i32"],
    result: "void",
  },
  seemore_erf: { parameters: ["buffer", "buffer", "i32"], result: "void" },
  seemore_exp: { parameters: ["buffer", "buffer", "i32"], result: "void" },
  seemore_gelu: { parameters: ["buffer", "buffer", "i32"], result: "void" },
  seemore_gelu_grad: { parameters: ["buffer", "buffer", "buffer", "i32"], result: "void" },
  // x, dy, GELU(x), dy * GELU'(x), n
  seemore_gelu_with_grad: { parameters: ["buffer", "buffer", "buffer", "buffer", "i32"], result: "void" },
  seemore_relu_grad: { parameters: ["buffer", "buffer", "buffer", "i32"], result: "void" },
  seemore_layer_norm: {
    // x, g, b, y, mean, rstd, rows, cols, eps
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "i32", "i32", "f32"],
    result: "void",
  },
  seemore_layer_norm_grad: {
    // dy, x, g, mean, rstd, dx, dg, db, rows, cols -> 0 on success
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
    ],
    result: "i32",
  },
  seemore_adam: {
    // p, m, v, g, p', m', v', n, beta1, beta2, step size, sqrt(bias correction 2), eps
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "f32",
      "f32",
      "f32",
      "f32",
      "f32",
    ],
    result: "void",
  },
  seemore_adam_in_place: {
    // heap, byte offsets (u32: p, m, v, g per parameter), sizes (i32), count, beta1, beta2, step size,
    // sqrt(bias correction 2), eps -> 0 on success
    parameters: ["buffer", "buffer", "buffer", "i32", "f32", "f32", "f32", "f32", "f32"],
    result: "i32",
  },
} as const;

type NativeLibrary = Deno.DynamicLibrary<typeof SYMBOLS>;

/** Sizes of one multi-head attention: batch, positions, heads, head size (C = heads · head size). */
export interface AttentionDims {
  batch: number;
  positions: number;
  heads: number;
  headSize: number;
}

/** The compiled kernels. */
export interface Native {
  /** The shared library that was opened. */
  path: string;
  /**
   * Lets the C kernels call cblas_sgemm of the OpenBLAS at `libraryPath` (already opened by ffi.ts).
   * Returns false if it cannot be found; the attention kernels need it.
   */
  bindSgemm(libraryPath: string): boolean;
  /** Whether bindSgemm succeeded. */
  hasSgemm(): boolean;
  /**
   * Lets the products (sgemm, the blocks', the CLS attention's and the experts') run on oneDNN's
   * dnnl_sgemm from the library at `libraryPath` (libdnnl.so): 0 when it is in use, -1 when the library
   * does not open, -2 when it lacks dnnl_sgemm or its OpenMP runtime's omp_set_num_threads.
   */
  bindDnnl(libraryPath: string): number;
  /** Products through oneDNN (when bound) or OpenBLAS; returns whether oneDNN is now in use. */
  useDnnl(on: boolean): boolean;
  /** Whether the products run on oneDNN. */
  usingDnnl(): boolean;
  /**
   * c = op(a) @ op(b) + beta * c, row-major (as Blas.sgemm, alpha 1) on `threads` threads. With oneDNN
   * every product is cut into one slice per thread, run on our spinning helper threads; with OpenBLAS
   * only those up to 64 Mi multiply-adds are, and the bigger ones go to OpenBLAS's threads (kernels.c,
   * seemore_sgemm). Needs bindSgemm.
   */
  sgemm(
    transA: boolean,
    transB: boolean,
    dims: { m: number; n: number; k: number },
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: 0 | 1,
    c: Float32Array,
    ldc: number,
    threads: number,
  ): void;
  /**
   * c[i] = op(a[aIndex[i]]) @ op(b[bIndex[i]]) + beta * c[i] for every i, row-major, op(a) m×k and
   * op(b) k×n, the matrices packed one after another: a batched matmul in one call (needs bindSgemm).
   */
  sgemmBatch(
    transA: boolean,
    transB: boolean,
    dims: { m: number; n: number; k: number },
    a: Float32Array,
    aIndex: Int32Array,
    b: Float32Array,
    bIndex: Int32Array,
    beta: 0 | 1,
    c: Float32Array,
  ): void;
  /**
   * Threads the elementwise, layer-norm, Adam and attention kernels and the split products may use
   * (default 1; the helper threads start on first use, are kept, and work only on large tensors).
   * Returns the number now in use.
   */
  setThreads(n: number): number;
  /** The thread count setThreads last set. */
  threads(): number;
  /** Jobs that kernels splitting their work have shared with helper threads so far (tests: the split ran). */
  jobsShared(): number;
  /** tf.randomUniform(shape, 0, 1, "float32", seed)'s values, bit for bit, n of them. */
  uniform(seed: number, n: number): Float32Array;
  /**
   * tf.dropout(x, 1 - keep, undefined, seed): y = x · floor(u + keep) / keep with u that seed's
   * uniform noise; mask[i] = 1 where x[i] was kept.
   */
  dropout(x: Float32Array, seed: number, out: { y: Float32Array; mask: Uint8Array }, keep: number): void;
  /** dx = dy · (mask ? 1/keep : 0). */
  dropoutGrad(dy: Float32Array, mask: Uint8Array, dx: Float32Array, keep: number): void;
  /**
   * Attention from the fused projection qkv (B, T, 3C) into out (B, T, C); probs (B, H, T, T) gets the
   * softmax weights. With a dropout seed, the weights get tf.dropout's noise for (B, H, T, T) and
   * mask the kept flags (see kernels.c); with null, no dropout.
   */
  attention(
    qkv: Float32Array,
    seed: number | null,
    out: { out: Float32Array; probs: Float32Array; mask: Uint8Array | null },
    dims: AttentionDims,
    opts: { scale: number; causal: boolean; keep: number },
  ): void;
  /**
   * Attention of new positions (qkv (B, Tn, 3C), dims.positions = Tn) over `pastPositions` cached ones
   * (past k/v (B, H, tPast, hs), null when tPast = 0): writes the grown caches k/v (B, H, tPast+Tn, hs)
   * and out (B, Tn, C). Generation only: no dropout, no gradient.
   */
  attentionCached(
    qkv: Float32Array,
    past: { k: Float32Array; v: Float32Array } | null,
    out: { out: Float32Array; k: Float32Array; v: Float32Array },
    dims: AttentionDims & { pastPositions: number },
    opts: { scale: number; causal: boolean },
  ): void;
  /**
   * One new position through the whole decoder (generation; kernels.c, seemore_decoder_step): x (B, C)
   * without its position embedding → logits (B, V); writes the position's keys and values into `cache`.
   * `weights` is packed as decoderWeightCount() describes.
   */
  decoderStep(
    weights: Float32Array,
    x: Float32Array,
    cache: Float32Array,
    logits: Float32Array,
    dims: DecoderStepDims,
    position: number,
  ): void;
  /** Gradient of attention(): dqkv (B, T, 3C) from dout (B, T, C) and what the forward saved. */
  attentionGrad(
    dout: Float32Array,
    saved: { qkv: Float32Array; probs: Float32Array; mask: Uint8Array | null },
    dqkv: Float32Array,
    dims: AttentionDims,
    opts: { scale: number; keep: number },
  ): void;
  /** dst = transpose(src, perm), for 4-byte elements; shape is src's shape. */
  transpose32(src: Int32Array, dst: Int32Array, shape: number[], perm: number[]): void;
  /**
   * dst (outer, index.length, inner) = src (outer, dim, inner) gathered along the middle axis, for
   * 4-byte elements. Every index must lie in [0, dim) (checked).
   */
  gather32(
    src: Int32Array,
    dst: Int32Array,
    sizes: { outer: number; dim: number; inner: number },
    index: Int32Array,
  ): void;
  /** dst = sum of src over `axes` (dst holds the kept axes' elements), accumulated in double. */
  sum(src: Float32Array, dst: Float32Array, shape: number[], axes: number[]): void;
  /** im2col of a 3×3, stride 2, padding 1 convolution: x (B, H, W, C) → cols (B, H/2, W/2, 9, C). */
  im2col3x3s2(x: Float32Array, cols: Float32Array, shape: [number, number, number, number]): void;
  /** Its adjoint (the gradient): cols summed back onto the pixels they were read from, into dx (overwritten). */
  col2im3x3s2(cols: Float32Array, dx: Float32Array, shape: [number, number, number, number]): void;
  /** y = f(x) elementwise; x and y have the same length. */
  unary(op: "erf" | "exp" | "gelu", x: Float32Array, y: Float32Array): void;
  /** dx = dy * f'(x) for f = GELU or ReLU. */
  unaryGrad(op: "gelu" | "relu", x: Float32Array, dy: Float32Array, dx: Float32Array): void;
  /**
   * seeMoE's experts (Linear(C, F) → ReLU → Linear(F, C) → dropout), each on its group of rows of x
   * (counts[e] rows, groups in order), parameters on the wasm `heap` at `offsets` (w1, b1, w2, b2 per
   * expert): writes h = ReLU(x w1 + b1) and y; with seeds (one per expert), y is dropped out with each
   * expert's own noise and mask written. OpenBLAS must run on one thread (experts spread over ours).
   */
  experts(
    heap: Uint8Array,
    offsets: Uint32Array,
    counts: Int32Array,
    io: { x: Float32Array; h: Float32Array; y: Float32Array; mask: Uint8Array | null },
    dropout: { seeds: number[]; keep: number } | null,
    dims: { C: number; F: number },
  ): void;
  /**
   * Attention of position 0 only, from x (B, T, C) and the fused weight w [C, 3C] read in place:
   * q = x[:, 0] w[:, :C]; per head, softmax(scale q·k) (dropped out with seed's noise when given)
   * times v → out (B, C), with the key and value projections moved onto the query's side (a = q_h
   * Wk_h^T, ctx = the weighted sum of x's rows; kernels.c). q, a, ctx, probs and mask are kept for
   * firstAttentionGrad.
   */
  firstAttention(
    io: FirstAttentionArrays & { out: Float32Array; mask: Uint8Array | null },
    seed: number | null,
    dims: FirstAttentionDims,
  ): void;
  /** Its gradient: dx (B, T, C) and dw [C, 3C] from dout (B, C) and what firstAttention kept. */
  firstAttentionGrad(
    io: FirstAttentionArrays & {
      dout: Float32Array;
      mask: Uint8Array | null;
      dx: Float32Array;
      dw: Float32Array;
    },
    dims: FirstAttentionDims,
  ): void;
  /** dst (rows, row.length) = row repeated, rows split across the kernel threads. */
  fillRows(dst: Float32Array, row: Float32Array): void;
  /** seeMoE's dispatch: inputs[r] = x[order[r] mod N], x (N, C) → inputs (M, C). */
  moeDispatch(x: Float32Array, order: Int32Array, inputs: Float32Array, dims: MoEDims): void;
  /** Its gradient: dx[n] = the sum of the rows of dinputs that came from token n. */
  moeDispatchGrad(dinputs: Float32Array, order: Int32Array, dx: Float32Array, dims: MoEDims): void;
  /** seeMoE's combine: out[n] = Σ_j gates[n, e] · merged[row] over token n's kept slots (moe.ts). */
  moeCombine(io: MoECombineInputs, out: Float32Array, dims: MoEDims): void;
  /** Its gradient: dmerged (M, C) and dgates (N, E) from dout (N, C). */
  moeCombineGrad(
    io: MoECombineInputs,
    dout: Float32Array,
    grads: { dmerged: Float32Array; dgates: Float32Array },
    dims: MoEDims,
  ): void;
  /**
   * One transformer block with seemore's GELU feed-forward, forward (kernels.c, seemore_block): every
   * tensor is a region of the wasm heap at offsets[i], in the order of BLOCK_TENSORS; the forward pass
   * reads x and the parameters and writes out and the saved tensors. With seeds, dropout on the
   * attention weights and on the projection's output, each drawn as tf.dropout draws it for that seed.
   */
  block(
    heap: Uint8Array,
    offsets: Uint32Array,
    dims: BlockDims,
    seeds: { attention: number; projection: number } | null,
  ): void;
  /** The block's backward pass: reads dout and what the forward pass saved, writes dx and the gradients. */
  blockGrad(heap: Uint8Array, offsets: Uint32Array, dims: BlockDims, dropout: boolean): void;
  /** The gradient of experts(): dx, and dw1, db1, dw2, db2 per expert at gradOffsets on the heap. */
  expertsGrad(
    heap: Uint8Array,
    offsets: Uint32Array,
    gradOffsets: Uint32Array,
    counts: Int32Array,
    io: { x: Float32Array; h: Float32Array; dy: Float32Array; mask: Uint8Array | null; dx: Float32Array },
    keep: number,
    dims: { C: number; F: number },
  ): void;
  /** out = GELU(x) and dx = dy * GELU'(x) in one pass (one exp and one erf per element). */
  geluWithGrad(x: Float32Array, dy: Float32Array, out: Float32Array, dx: Float32Array): void;
  /** Layer norm over rows of `cols` values; also writes each row's mean and 1/sqrt(var + eps). */
  layerNorm(
    x: Float32Array,
    g: Float32Array,
    b: Float32Array,
    out: { y: Float32Array; mean: Float32Array; rstd: Float32Array },
    cols: number,
    eps: number,
  ): void;
  layerNormGrad(
    dy: Float32Array,
    x: Float32Array,
    g: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    out: { dx: Float32Array; dg: Float32Array; db: Float32Array },
  ): void;
  /** One Adam step into fresh arrays (see kernels.c for the formula). */
  adam(
    state: { p: Float32Array; m: Float32Array; v: Float32Array; g: Float32Array },
    out: { p: Float32Array; m: Float32Array; v: Float32Array },
    hyper: { beta1: number; beta2: number; stepSize: number; sqrtBc2: number; eps: number },
  ): void;
  /**
   * The same step for many parameters at once, in place, on the wasm heap `heap`: parameter i has
   * sizes[i] floats and offsets[4i..4i+3] are the byte offsets of its p, m, v (overwritten) and g.
   * Every region must lie in the heap and p, m, v must not overlap anything else (checked).
   */
  adamInPlace(
    heap: Uint8Array,
    offsets: Uint32Array,
    sizes: Int32Array,
    hyper: { beta1: number; beta2: number; stepSize: number; sqrtBc2: number; eps: number },
  ): void;
}

/**
 * Sizes of the decoder that decoderStep() runs: positions is the length of its position table, cached
 * how many positions the key/value cache holds (≤ positions: what one generation needs).
 */
export interface DecoderStepDims {
  batch: number;
  width: number;
  heads: number;
  layers: number;
  vocab: number;
  positions: number;
  cached: number;
  scale: number;
  eps: number;
  preNorm: boolean;
}

/** Floats of one decoder layer in decoderStep()'s packing (see kernels.c). */
function decoderLayerCount(width: number): number {
  const C = width, F = 4 * C;
  return 2 * C + 3 * C * C + C * C + C + 2 * C + C * F + F + F * C + C;
}

/** Floats of decoderStep()'s weights: the layers, then ln_f, the head and the position table. */
export function decoderWeightCount(d: DecoderStepDims): number {
  return d.layers * decoderLayerCount(d.width) + 2 * d.width + d.width * d.vocab + d.vocab +
    d.positions * d.width;
}

/** Floats of decoderStep()'s key/value cache: per layer keys and values, each (B, H, cached, hs). */
export function decoderCacheSize(d: DecoderStepDims): number {
  return d.layers * 2 * d.batch * d.cached * d.width;
}

/**
 * Why the C kernels are missing: "permission" (a Deno flag), "compiler" (it cannot be run), "build" (it
 * ran and failed; `reason` quotes its first error), "abi" (a stale library), "other".
 */
export type NativeFailure = "permission" | "compiler" | "build" | "abi" | "other";

export type NativeResult =
  | { ok: true; native: Native }
  | { ok: false; reason: string; cause: NativeFailure };

let cached: NativeResult | null = null;

/** Builds (once, cached on disk) and opens the C kernels. Never throws. */
export function loadNative(): NativeResult {
  if (cached) return cached;
  try {
    cached = openNative();
  } catch (err) {
    const cause = err instanceof BuildError ? err.kind : "other";
    cached = { ok: false, reason: `C kernels unavailable (${firstLine(err)}); using JS kernels`, cause };
  }
  return cached;
}

/** Forgets a failed loadNative(), so the next call tries again (after setup installed a compiler). */
export function forgetFailedNative(): void {
  if (cached && !cached.ok) cached = null;
}

/** The compiler the kernels are built with ($CC, default `cc`). */
export function nativeCompiler(): string {
  return readEnv("CC") ?? "cc";
}

/** Where the kernels built from the current source with the current compiler live (or will). */
export function nativeLibraryPath(): string {
  const source = Deno.readTextFileSync(SOURCE_URL);
  const compiler = nativeCompiler();
  const key = fnv1a64([source, compiler, ...CC_FLAGS, ...LIBS, Deno.build.target].join("\n"));
  return `${cacheDir()}/kernels-${key}.so`;
}

class BuildError extends Error {
  constructor(message: string, readonly kind: "compiler" | "build") {
    super(message);
  }
}

function openNative(): NativeResult {
  for (const name of ["ffi", "run", "read", "write"] as const) {
    if (Deno.permissions.querySync({ name }).state !== "granted") {
      return { ok: false, reason: `C kernels need --allow-${name}; using JS kernels`, cause: "permission" };
    }
  }
  const compiler = nativeCompiler();
  const path = nativeLibraryPath();
  if (!exists(path)) compile(compiler, path.slice(0, path.lastIndexOf("/")), path);
  const lib: NativeLibrary = Deno.dlopen(path, SYMBOLS);
  const version = lib.symbols.seemore_abi_version();
  if (version !== ABI_VERSION) {
    lib.close();
    return {
      ok: false,
      reason: `C kernels at ${path} report ABI ${version}, expected ${ABI_VERSION}`,
      cause: "abi",
    };
  }
  return { ok: true, native: wrap(path, lib) };
}

/** Compiles into a temporary file beside `path`, then renames it: no half-written library is ever seen. */
function compile(compiler: string, dir: string, path: string): void {
  Deno.mkdirSync(dir, { recursive: true });
  const sourcePath = decodeURIComponent(SOURCE_URL.pathname);
  const tmp = `${path}.${Deno.pid}.tmp`;
  let out: Deno.CommandOutput;
  try {
    out = new Deno.Command(compiler, {
      args: [...CC_FLAGS, "-o", tmp, sourcePath, ...LIBS],
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
  } catch (err) {
    throw new BuildError(`cannot run C compiler '${compiler}': ${firstLine(err)}`, "compiler");
  }
  if (!out.success) {
    try {
      Deno.removeSync(tmp);
    } catch { /* nothing was written */ }
    // The first error, not the first line: that may be "In file included from ..." or a warning.
    const lines = new TextDecoder().decode(out.stderr).trim().split("\n");
    const msg = lines.find((l) => /error|cannot find/.test(l)) ?? lines[0];
    throw new BuildError(`'${compiler}' failed on ${sourcePath}: ${msg}`, "build");
  }
  Deno.renameSync(tmp, path);
}

function wrap(path: string, lib: NativeLibrary): Native {
  const s = lib.symbols;
  let sgemmBound = false;
  return {
    path,
    bindSgemm(libraryPath) {
      if (!sgemmBound) sgemmBound = s.seemore_bind_sgemm(new TextEncoder().encode(libraryPath + "\0")) === 0;
      return sgemmBound;
    },
    hasSgemm: () => sgemmBound,
    bindDnnl: (libraryPath) => s.seemore_bind_dnnl(new TextEncoder().encode(libraryPath + "\0")),
    useDnnl: (on) => s.seemore_use_dnnl(on ? 1 : 0) === 1,
    usingDnnl: () => s.seemore_use_dnnl(-1) === 1,
    sgemm(transA, transB, { m, n, k }, a, lda, b, ldb, beta, c, ldc, threads) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: sgemm needs bindSgemm() first");
      checkGemm(transA, transB, m, n, k, a, lda, b, ldb, c, ldc);
      if (!Number.isInteger(threads) || threads < 1) {
        throw new Error(`lib/blas/native.ts: sgemm threads must be >= 1, got ${threads}`);
      }
      if (m === 0 || n === 0) return;
      const rc = s.seemore_sgemm(
        transA ? 1 : 0,
        transB ? 1 : 0,
        m,
        n,
        k,
        1,
        a,
        lda,
        b,
        ldb,
        beta,
        c,
        ldc,
        threads,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_sgemm failed (${rc})`);
    },
    sgemmBatch(transA, transB, { m, n, k }, a, aIndex, b, bIndex, beta, c) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: sgemmBatch needs bindSgemm() first");
      const batch = aIndex.length;
      if (bIndex.length !== batch) {
        throw new Error(
          `lib/blas/native.ts: sgemmBatch has ${batch} A indices but ${bIndex.length} B indices`,
        );
      }
      sameLength("sgemmBatch", batch * m * n, { c });
      checkIndices("sgemmBatch A", aIndex, a.length, m * k);
      checkIndices("sgemmBatch B", bIndex, b.length, k * n);
      const rc = s.seemore_sgemm_batch(
        transA ? 1 : 0,
        transB ? 1 : 0,
        m,
        n,
        k,
        a,
        aIndex,
        b,
        bIndex,
        beta,
        c,
        batch,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_sgemm_batch failed (${rc})`);
    },
    setThreads(n) {
      if (!Number.isInteger(n) || n < 1) {
        throw new Error(`lib/blas/native.ts: threads must be >= 1, got ${n}`);
      }
      return s.seemore_set_threads(n);
    },
    threads: () => s.seemore_set_threads(0),
    jobsShared: () => Number(s.seemore_jobs_shared()),
    uniform(seed, n) {
      const out = new Float32Array(n);
      s.seemore_uniform(aleaState(seed), out, n);
      return out;
    },
    dropout(x, seed, out, keep) {
      checkKeep(keep);
      sameLength("dropout", x.length, { y: out.y, mask: out.mask });
      s.seemore_dropout(x, out.y, out.mask, x.length, keep, aleaStates(seed, x.length), DRAW_CHUNK);
    },
    dropoutGrad(dy, mask, dx, keep) {
      checkKeep(keep);
      sameLength("dropoutGrad", dy.length, { dx, mask });
      s.seemore_dropout_grad(dy, mask, dx, dy.length, keep);
    },
    attention(qkv, seed, out, dims, opts) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: attention needs bindSgemm() first");
      checkKeep(opts.keep);
      const { qkvSize, outSize, probsSize } = attentionSizes(dims);
      sameLength("attention", qkvSize, { qkv });
      sameLength("attention", outSize, { out: out.out });
      sameLength("attention", probsSize, { probs: out.probs });
      if ((seed === null) !== (out.mask === null)) {
        throw new Error("lib/blas/native.ts: attention needs both a dropout seed and a mask, or neither");
      }
      if (out.mask) sameLength("attention", probsSize, { mask: out.mask });
      const { batch, positions, heads, headSize } = dims;
      const rc = s.seemore_attention(
        qkv,
        seed === null ? null : aleaStates(seed, probsSize),
        DRAW_CHUNK,
        out.out,
        out.probs,
        out.mask,
        batch,
        positions,
        heads,
        headSize,
        opts.scale,
        opts.causal ? 1 : 0,
        opts.keep,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_attention failed (${rc})`);
    },
    attentionCached(qkv, past, out, dims, opts) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: attentionCached needs bindSgemm() first");
      const { pastPositions, ...newDims } = dims;
      const tPast = pastPositions;
      if (!Number.isInteger(tPast) || tPast < 0 || (tPast === 0) !== (past === null)) {
        throw new Error(
          `lib/blas/native.ts: attentionCached: ${tPast} cached positions but cache ${
            past ? "given" : "missing"
          }`,
        );
      }
      const { qkvSize, outSize } = attentionSizes(newDims);
      const { batch, positions, heads, headSize } = newDims;
      const perPosition = batch * heads * headSize;
      sameLength("attentionCached", qkvSize, { qkv });
      sameLength("attentionCached", outSize, { out: out.out });
      sameLength("attentionCached", perPosition * (tPast + positions), { k: out.k, v: out.v });
      if (past) sameLength("attentionCached", perPosition * tPast, { pastK: past.k, pastV: past.v });
      const rc = s.seemore_attention_cached(
        qkv,
        past?.k ?? null,
        past?.v ?? null,
        out.out,
        out.k,
        out.v,
        batch,
        positions,
        tPast,
        heads,
        headSize,
        opts.scale,
        opts.causal ? 1 : 0,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_attention_cached failed (${rc})`);
    },
    decoderStep(weights, x, cache, logits, dims, position) {
      const { batch, width, heads, layers, vocab, positions, cached } = dims;
      if (
        ![batch, width, heads, layers, vocab, positions, cached].every((v) => Number.isInteger(v) && v > 0)
      ) {
        throw new Error(`lib/blas/native.ts: decoderStep: bad sizes ${JSON.stringify(dims)}`);
      }
      if (width % heads !== 0) throw new Error(`lib/blas/native.ts: decoderStep: ${width} % ${heads} heads`);
      if (!Number.isInteger(position) || position < 0 || position >= Math.min(positions, cached)) {
        throw new Error(
          `lib/blas/native.ts: decoderStep: position ${position} outside [0, ${Math.min(positions, cached)})`,
        );
      }
      sameLength("decoderStep", decoderWeightCount(dims), { weights });
      sameLength("decoderStep", batch * width, { x });
      sameLength("decoderStep", decoderCacheSize(dims), { cache });
      sameLength("decoderStep", batch * vocab, { logits });
      const rc = s.seemore_decoder_step(
        weights,
        x,
        cache,
        logits,
        batch,
        width,
        heads,
        layers,
        vocab,
        position,
        cached,
        dims.scale,
        dims.eps,
        dims.preNorm ? 1 : 0,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_decoder_step failed (${rc})`);
    },
    attentionGrad(dout, saved, dqkv, dims, opts) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: attentionGrad needs bindSgemm() first");
      checkKeep(opts.keep);
      const { qkvSize, outSize, probsSize } = attentionSizes(dims);
      sameLength("attentionGrad", qkvSize, { qkv: saved.qkv, dqkv });
      sameLength("attentionGrad", outSize, { dout });
      sameLength("attentionGrad", probsSize, { probs: saved.probs });
      if (saved.mask) sameLength("attentionGrad", probsSize, { mask: saved.mask });
      const { batch, positions, heads, headSize } = dims;
      const rc = s.seemore_attention_grad(
        dout,
        saved.qkv,
        saved.probs,
        saved.mask,
        dqkv,
        batch,
        positions,
        heads,
        headSize,
        opts.scale,
        opts.keep,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_attention_grad failed (${rc})`);
    },
    transpose32(src, dst, shape, perm) {
      const size = shape.reduce((a, b) => a * b, 1);
      checkPerm(shape, perm);
      if (src.length < size || dst.length < size) {
        throw new Error(
          `lib/blas/native.ts: transpose32 needs ${size} elements, got ${src.length} and ${dst.length}`,
        );
      }
      s.seemore_transpose32(src, dst, shape.length, Int32Array.from(shape), Int32Array.from(perm));
    },
    gather32(src, dst, { outer, dim, inner }, index) {
      for (const [name, v] of [["outer", outer], ["dim", dim], ["inner", inner]] as const) {
        if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) {
          throw new Error(`lib/blas/native.ts: gather32 ${name}=${v} is not a valid size`);
        }
      }
      for (let i = 0; i < index.length; i++) {
        if (!(index[i] >= 0 && index[i] < dim)) {
          throw new Error(`lib/blas/native.ts: gather index ${index[i]} is not in [0, ${dim - 1}]`);
        }
      }
      if (src.length < outer * dim * inner || dst.length < outer * index.length * inner) {
        throw new Error(
          `lib/blas/native.ts: gather32 needs ${outer * dim * inner} -> ${outer * index.length * inner} ` +
            `elements, got ${src.length} -> ${dst.length}`,
        );
      }
      s.seemore_gather32(src, dst, outer, dim, inner, index, index.length);
    },
    sum(src, dst, shape, axes) {
      const [sizes, reduced] = simplifyReduction(shape, axes);
      const size = shape.reduce((a, b) => a * b, 1);
      const kept = sizes.reduce((acc, d, g) => (reduced[g] ? acc : acc * d), 1);
      if (src.length < size || dst.length < kept) {
        throw new Error(
          `lib/blas/native.ts: sum needs ${size} -> ${kept} elements, got ${src.length} -> ${dst.length}`,
        );
      }
      if (sizes.length === 0) {
        dst[0] = src[0];
        return;
      }
      if (sizes.length > MAX_RANK) {
        throw new Error(`lib/blas/native.ts: sum over rank ${sizes.length} > ${MAX_RANK}`);
      }
      const rc = s.seemore_sum(
        src,
        dst,
        sizes.length,
        Int32Array.from(sizes),
        Int32Array.from(reduced, Number),
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_sum failed (${rc})`);
    },
    im2col3x3s2(x, cols, shape) {
      checkIm2col("im2col3x3s2", x, cols, shape);
      s.seemore_im2col3x3s2(x, cols, ...shape);
    },
    col2im3x3s2(cols, dx, shape) {
      checkIm2col("col2im3x3s2", dx, cols, shape);
      s.seemore_col2im3x3s2(cols, dx, ...shape);
    },
    unary(op, x, y) {
      sameLength(`${op}`, x.length, { y });
      const fn = op === "erf" ? s.seemore_erf : op === "exp" ? s.seemore_exp : s.seemore_gelu;
      fn(x, y, x.length);
    },
    unaryGrad(op, x, dy, dx) {
      sameLength(`${op} gradient`, x.length, { dy, dx });
      (op === "gelu" ? s.seemore_gelu_grad : s.seemore_relu_grad)(x, dy, dx, x.length);
    },
    experts(heap, offsets, counts, io, dropout, { C, F }) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: experts needs bindSgemm() first");
      const rows = checkExperts("experts", heap.byteLength, offsets, counts, [C * F, F, F * C, C]);
      sameLength("experts", rows * C, { x: io.x, y: io.y });
      sameLength("experts", rows * F, { h: io.h });
      if (dropout) {
        checkKeep(dropout.keep);
        if (!io.mask) throw new Error("lib/blas/native.ts: experts with dropout needs a mask");
        sameLength("experts", rows * C, { mask: io.mask });
        if (dropout.seeds.length !== counts.length) {
          throw new Error(
            `lib/blas/native.ts: experts needs one seed per expert, got ${dropout.seeds.length}`,
          );
        }
      }
      const states = dropout ? new Float64Array(4 * counts.length) : null;
      dropout?.seeds.forEach((seed, e) => states!.set(aleaState(seed), 4 * e));
      const rc = s.seemore_experts(
        heap,
        offsets,
        counts,
        counts.length,
        io.x,
        io.h,
        io.y,
        dropout ? io.mask : null,
        states,
        dropout?.keep ?? 1,
        C,
        F,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_experts failed (${rc})`);
    },
    block(heap, offsets, dims, seeds) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: block needs bindSgemm() first");
      checkBlock("block", heap.byteLength, offsets, dims, seeds !== null, false);
      const { B, T, C, heads } = dims;
      const att = seeds ? aleaStates(seeds.attention, B * heads * T * T) : null;
      const proj = seeds ? aleaStates(seeds.projection, B * T * C) : null;
      const rc = s.seemore_block(heap, offsets, att, proj, DRAW_CHUNK, blockDimsStruct(dims));
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_block failed (${rc})`);
    },
    blockGrad(heap, offsets, dims, dropout) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: blockGrad needs bindSgemm() first");
      checkBlock("blockGrad", heap.byteLength, offsets, dims, dropout, true);
      const rc = s.seemore_block_grad(heap, offsets, dropout ? 1 : 0, blockDimsStruct(dims));
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_block_grad failed (${rc})`);
    },
    expertsGrad(heap, offsets, gradOffsets, counts, io, keep, { C, F }) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: expertsGrad needs bindSgemm() first");
      const sizes = [C * F, F, F * C, C];
      const rows = checkExperts("expertsGrad", heap.byteLength, offsets, counts, sizes);
      checkExperts("expertsGrad (gradients)", heap.byteLength, gradOffsets, counts, sizes);
      sameLength("expertsGrad", rows * C, { x: io.x, dy: io.dy, dx: io.dx });
      sameLength("expertsGrad", rows * F, { h: io.h });
      if (io.mask) {
        checkKeep(keep);
        sameLength("expertsGrad", rows * C, { mask: io.mask });
      }
      const rc = s.seemore_experts_grad(
        heap,
        offsets,
        gradOffsets,
        counts,
        counts.length,
        io.x,
        io.h,
        io.dy,
        io.mask,
        keep,
        io.dx,
        C,
        F,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_experts_grad failed (${rc})`);
    },
    firstAttention(io, seed, dims) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: firstAttention needs bindSgemm() first");
      checkFirstAttention("firstAttention", dims, io, io.mask);
      sameLength("firstAttention", dims.B * dims.C, { out: io.out });
      if ((seed === null) !== (io.mask === null)) {
        throw new Error(
          "lib/blas/native.ts: firstAttention needs both a dropout seed and a mask, or neither",
        );
      }
      const { B, T, C, H, scale, keep } = dims;
      const noise = seed === null ? null : aleaStates(seed, B * H * T);
      const rc = s.seemore_first_attention(
        io.x,
        io.w,
        io.q,
        io.a,
        io.ctx,
        io.out,
        io.probs,
        io.mask,
        noise,
        DRAW_CHUNK,
        B,
        T,
        C,
        H,
        scale,
        keep,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_first_attention failed (${rc})`);
    },
    firstAttentionGrad(io, dims) {
      if (!sgemmBound) throw new Error("lib/blas/native.ts: firstAttentionGrad needs bindSgemm() first");
      checkFirstAttention("firstAttentionGrad", dims, io, io.mask);
      sameLength("firstAttentionGrad", dims.B * dims.C, { dout: io.dout });
      sameLength("firstAttentionGrad", dims.B * dims.T * dims.C, { dx: io.dx });
      sameLength("firstAttentionGrad", 3 * dims.C * dims.C, { dw: io.dw });
      const { B, T, C, H, scale, keep } = dims;
      const rc = s.seemore_first_attention_grad(
        io.dout,
        io.x,
        io.w,
        io.q,
        io.a,
        io.ctx,
        io.probs,
        io.mask,
        io.dx,
        io.dw,
        B,
        T,
        C,
        H,
        scale,
        keep,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_first_attention_grad failed (${rc})`);
    },
    fillRows(dst, row) {
      const rows = rowsOf("fillRows", dst.length, row.length);
      s.seemore_fill_rows(dst, row, rows, row.length);
    },
    moeDispatch(x, order, inputs, dims) {
      checkDispatch(order, dims, x, inputs);
      s.seemore_moe_dispatch(x, order, inputs, dims.N, dims.M, dims.C);
    },
    moeDispatchGrad(dinputs, order, dx, dims) {
      checkDispatch(order, dims, dx, dinputs);
      s.seemore_moe_dispatch_grad(dinputs, order, dx, dims.N, dims.M, dims.C);
    },
    moeCombine(io, out, dims) {
      checkCombine(io, dims, { out });
      const { N, C, k, E } = dims;
      s.seemore_moe_combine(io.merged, io.gates, io.rowOfSlot, io.slotExpert, out, N, k, C, E);
    },
    moeCombineGrad(io, dout, { dmerged, dgates }, dims) {
      checkCombine(io, dims, { dout });
      const { N, M, C, k, E } = dims;
      sameLength("moeCombineGrad", M * C, { dmerged });
      sameLength("moeCombineGrad", N * E, { dgates });
      s.seemore_moe_combine_grad(
        dout,
        io.merged,
        io.gates,
        io.rowOfSlot,
        io.slotExpert,
        dmerged,
        dgates,
        N,
        k,
        M,
        C,
        E,
      );
    },
    geluWithGrad(x, dy, out, dx) {
      sameLength("gelu with gradient", x.length, { dy, out, dx });
      s.seemore_gelu_with_grad(x, dy, out, dx, x.length);
    },
    layerNorm(x, g, b, out, cols, eps) {
      const rows = rowsOf("layerNorm", x.length, cols);
      sameLength("layerNorm", x.length, { y: out.y });
      sameLength("layerNorm", cols, { g, b });
      sameLength("layerNorm", rows, { mean: out.mean, rstd: out.rstd });
      s.seemore_layer_norm(x, g, b, out.y, out.mean, out.rstd, rows, cols, eps);
    },
    layerNormGrad(dy, x, g, mean, rstd, out) {
      const cols = g.length;
      const rows = rowsOf("layerNormGrad", x.length, cols);
      sameLength("layerNormGrad", x.length, { dy, dx: out.dx });
      sameLength("layerNormGrad", cols, { dg: out.dg, db: out.db });
      sameLength("layerNormGrad", rows, { mean, rstd });
      const rc = s.seemore_layer_norm_grad(dy, x, g, mean, rstd, out.dx, out.dg, out.db, rows, cols);
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_layer_norm_grad failed (${rc})`);
    },
    adam(state, out, h) {
      const n = state.p.length;
      sameLength("adam", n, { m: state.m, v: state.v, g: state.g, pOut: out.p, mOut: out.m, vOut: out.v });
      s.seemore_adam(
        state.p,
        state.m,
        state.v,
        state.g,
        out.p,
        out.m,
        out.v,
        n,
        h.beta1,
        h.beta2,
        h.stepSize,
        h.sqrtBc2,
        h.eps,
      );
    },
    adamInPlace(heap, offsets, sizes, h) {
      checkAdamRegions(heap.byteLength, offsets, sizes);
      const rc = s.seemore_adam_in_place(
        heap,
        offsets,
        sizes,
        sizes.length,
        h.beta1,
        h.beta2,
        h.stepSize,
        h.sqrtBc2,
        h.eps,
      );
      if (rc !== 0) throw new Error(`lib/blas/native.ts: seemore_adam_in_place failed (${rc})`);
    },
  };
}

/**
 * Throws unless every region of adamInPlace lies in the heap, 4-byte aligned, and no region it writes
 * (p, m, v) overlaps another region. Gradients are only read: they may share memory.
 */
function checkAdamRegions(heapBytes: number, offsets: Uint32Array, sizes: Int32Array): void {
  if (offsets.length !== 4 * sizes.length) {
    throw new Error(
      `lib/blas/native.ts: adamInPlace needs 4 offsets per size, got ${offsets.length} for ${sizes.length}`,
    );
  }
  const regions: [number, number, boolean][] = []; // [start, end, written]
  sizes.forEach((n, i) => {
    if (!Number.isInteger(n) || n < 0) throw new Error(`lib/blas/native.ts: adamInPlace size ${n}`);
    for (let j = 0; j < 4; j++) {
      const start = offsets[4 * i + j], end = start + 4 * n;
      if (start % 4 !== 0 || start === 0 || end > heapBytes) {
        throw new Error(
          `lib/blas/native.ts: adamInPlace region [${start}, ${end}) outside the heap of ${heapBytes} bytes`,
        );
      }
      regions.push([start, end, j < 3]);
    }
  });
  regions.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < regions.length; i++) {
    const [prev, cur] = [regions[i - 1], regions[i]];
    if (cur[0] < prev[1] && (prev[2] || cur[2])) {
      throw new Error(`lib/blas/native.ts: adamInPlace regions overlap at byte ${cur[0]}`);
    }
  }
}

/**
 * Groups neighbouring axes that are all reduced or all kept (size-1 axes dropped): the same
 * reduction on fewer, longer axes. Returns [sizes, reduced flags].
 */
export function simplifyReduction(shape: number[], axes: number[]): [number[], boolean[]] {
  const sizes: number[] = [], reduced: boolean[] = [];
  shape.forEach((d, i) => {
    if (d === 1) return;
    const r = axes.includes(i);
    if (reduced.length > 0 && reduced[reduced.length - 1] === r) sizes[sizes.length - 1] *= d;
    else {
      sizes.push(d);
      reduced.push(r);
    }
  });
  return [sizes, reduced];
}

/**
 * The state {c, s0, s1, s2} of seedrandom's Alea generator seeded with String(seed), as
 * tf.randomUniform seeds it (seedrandom 3.0.5's Alea and Mash, rewritten). kernels.c draws from it.
 */
export function aleaState(seed: number): Float64Array {
  if (!Number.isFinite(seed)) throw new Error(`lib/blas/native.ts: dropout seed ${seed} is not a number`);
  const mash = makeMash();
  const key = String(seed);
  const state = Float64Array.of(1, mash(" "), mash(" "), mash(" "));
  for (let i = 1; i <= 3; i++) {
    state[i] -= mash(key);
    if (state[i] < 0) state[i] += 1;
  }
  return state;
}

/**
 * Draws per chunk of dropout noise: each chunk starts from its own generator state (aleaStates), so
 * the C kernels draw the chunks on several threads and still give the one sequence of draws.
 */
const DRAW_CHUNK = 1 << 16;

// Alea's step is a multiply-with-carry of lag 3 (kernels.c: S' = (A·S0 + c) mod 2^32, c' = its carry).
// With V = A·(S0 + S1·2^32 + S2·2^64) + c, one step maps V to V·2^-32 modulo M = A·2^96 − 1 (the
// lag-r multiply-with-carry's modulus a·b^r − 1), and 2^-32 ≡ A·2^64 there since A·2^96 ≡ 1; so n
// steps multiply V by (A·2^64)^n mod M. 0 ≤ c < A holds throughout (c starts at 1), so V gives back
// c = V mod A and the S's from V div A.
const ALEA_A = 2091639n;
const ALEA_M = ALEA_A * (1n << 96n) - 1n;
const jumpFactors = new Map<number, bigint>(); // n → (A·2^64)^n mod M

function powMod(base: bigint, exp: number, mod: bigint): bigint {
  let result = 1n, b = base % mod, e = exp;
  while (e > 0) {
    if (e % 2 === 1) result = (result * b) % mod;
    b = (b * b) % mod;
    e = Math.floor(e / 2);
  }
  return result;
}

/** The Alea state {c, s0, s1, s2} advanced by `draws` draws (what tf.randomUniform would reach). */
export function aleaJump(state: Float64Array, draws: number): Float64Array {
  let factor = jumpFactors.get(draws);
  if (factor === undefined) {
    factor = powMod(ALEA_A << 64n, draws, ALEA_M);
    jumpFactors.set(draws, factor);
  }
  const word = (s: number) => BigInt(s * 2 ** 32); // s is a multiple of 2^-32: exact
  const v = ALEA_A * (word(state[1]) + (word(state[2]) << 32n) + (word(state[3]) << 64n)) + BigInt(state[0]);
  const next = (v * factor) % ALEA_M;
  const x = next / ALEA_A, mask = (1n << 32n) - 1n;
  const fraction = (w: bigint) => Number(w & mask) / 2 ** 32;
  return Float64Array.of(Number(next % ALEA_A), fraction(x), fraction(x >> 32n), fraction(x >> 64n));
}

/** The states at which each DRAW_CHUNK-long chunk of `n` draws from seed's noise starts, one after another. */
export function aleaStates(seed: number, n: number, chunk = DRAW_CHUNK): Float64Array {
  const chunks = Math.max(1, Math.ceil(n / chunk)); // at least the seeded state, even for no draws
  const states = new Float64Array(4 * chunks);
  let state = aleaState(seed);
  for (let i = 0; i < chunks; i++) {
    states.set(state, 4 * i);
    if (i + 1 < chunks) state = aleaJump(state, chunk);
  }
  return states;
}

/** Alea's string hash: each call folds `data` into the running value n and returns n / 2^32. */
function makeMash(): (data: string) => number {
  let n = 0xefc8249d;
  return (data: string) => {
    for (let i = 0; i < data.length; i++) {
      n += data.charCodeAt(i);
      let h = 0.02519603282416938 * n;
      n = h >>> 0;
      h -= n;
      h *= n;
      n = h >>> 0;
      h -= n;
      n += h * 0x100000000;
    }
    return (n >>> 0) * 2.3283064365386963e-10;
  };
}

/** Element counts of attention's tensors; throws on sizes that are not positive int32s. */
function attentionSizes(d: AttentionDims): { qkvSize: number; outSize: number; probsSize: number } {
  for (const [name, v] of Object.entries(d)) {
    if (!Number.isInteger(v) || v < 1 || v > 0x7fffffff) {
      throw new Error(`lib/blas/native.ts: attention ${name}=${v} is not a positive int32`);
    }
  }
  const C = d.heads * d.headSize;
  return {
    qkvSize: d.batch * d.positions * 3 * C,
    outSize: d.batch * d.positions * C,
    probsSize: d.batch * d.heads * d.positions * d.positions,
  };
}

function checkKeep(keep: number): void {
  if (!(keep > 0 && keep <= 1)) throw new Error(`lib/blas/native.ts: keep probability ${keep} not in (0, 1]`);
}

/** Throws unless every named array has exactly `n` elements (and n fits an int32). */
/** Image (B, H, W, C) and column (B, H/2, W/2, 9, C) buffers of an im2col call hold what the shape says. */
function checkIm2col(what: string, image: Float32Array, cols: Float32Array, [B, H, W, C]: number[]): void {
  if (H % 2 !== 0 || W % 2 !== 0) throw new Error(`lib/blas/native.ts: ${what} needs even H, W (${H}×${W})`);
  sameLength(`${what} image`, B * H * W * C, { image });
  sameLength(`${what} cols`, B * H * W * C / 4 * 9, { cols });
}

/** firstAttention's sizes: batch B, positions T, width C, H heads; the score scale and dropout's keep. */
export interface FirstAttentionDims {
  B: number;
  T: number;
  C: number;
  H: number;
  scale: number;
  keep: number;
}

/** firstAttention's input x, fused weight w, and what it keeps for the gradient (q, a, ctx, probs). */
export interface FirstAttentionArrays {
  x: Float32Array;
  w: Float32Array;
  q: Float32Array;
  a: Float32Array;
  ctx: Float32Array;
  probs: Float32Array;
}

function checkFirstAttention(
  what: string,
  { B, T, C, H, keep }: FirstAttentionDims,
  arrays: FirstAttentionArrays,
  mask: Uint8Array | null,
): void {
  if (C % H !== 0) throw new Error(`lib/blas/native.ts: ${what} width ${C} is not a multiple of ${H} heads`);
  checkKeep(keep);
  sameLength(what, B * T * C, { x: arrays.x });
  sameLength(what, 3 * C * C, { w: arrays.w });
  sameLength(what, B * C, { q: arrays.q });
  sameLength(what, B * H * C, { a: arrays.a, ctx: arrays.ctx });
  sameLength(what, B * H * T, { probs: arrays.probs });
  if (mask) sameLength(what, B * H * T, { mask });
}

/** Sizes of seeMoE's routing: N tokens of width C, k choices each, M expert rows, E experts. */
export interface MoEDims {
  N: number;
  M: number;
  C: number;
  k: number;
  E: number;
}

/** Combine's inputs: merged (M, C), gates (N, E), and each slot's expert row and expert (k·N). */
export interface MoECombineInputs {
  merged: Float32Array;
  gates: Float32Array;
  rowOfSlot: Int32Array;
  slotExpert: Int32Array;
}

/** Every value must lie in [lo, hi) (`range` says so in the error). */
function checkRange(
  what: string,
  values: Int32Array,
  lo: number,
  hi: number,
  range = `[${lo}, ${hi})`,
): void {
  for (const v of values) {
    if (!(v >= lo && v < hi)) throw new Error(`lib/blas/native.ts: ${what} ${v} outside ${range}`);
  }
}

function checkCombine(
  io: MoECombineInputs,
  { N, M, C, k, E }: MoEDims,
  nc: Record<string, Float32Array>,
): void {
  sameLength("moeCombine", M * C, { merged: io.merged });
  sameLength("moeCombine", N * E, { gates: io.gates });
  sameLength("moeCombine", N * C, nc);
  if (io.rowOfSlot.length !== k * N || io.slotExpert.length !== k * N) {
    throw new Error(`lib/blas/native.ts: moeCombine needs ${k * N} slots, got ${io.rowOfSlot.length}`);
  }
  checkRange("moeCombine row", io.rowOfSlot, -1, M);
  checkRange("moeCombine expert", io.slotExpert, 0, E);
}

function checkDispatch(order: Int32Array, { N, M, C, k }: MoEDims, nc: Float32Array, mc: Float32Array): void {
  sameLength("moeDispatch", N * C, { "(N, C) array": nc });
  sameLength("moeDispatch", M * C, { "(M, C) array": mc });
  if (order.length !== M) {
    throw new Error(`lib/blas/native.ts: moeDispatch needs ${M} rows, got ${order.length}`);
  }
  checkRange("moeDispatch slot", order, 0, k * N);
}

/**
 * Checks the experts' parameter regions (4 per expert, of `sizes` floats, inside the heap, 4-byte
 * aligned) and their row counts; returns the rows of all groups together.
 */
/** A block's sizes and settings (kernels.c's block_dims). */
export interface BlockDims {
  B: number;
  T: number;
  C: number;
  heads: number;
  preNorm: boolean;
  causal: boolean;
  scale: number;
  keep: number;
  eps: number;
}

/** A block's parameters, in kernels.c's BLK_G1 .. BLK_BF order. */
export const BLOCK_PARAMS = ["g1", "b1", "wqkv", "wp", "bp", "g2", "b2", "w1", "bh", "w2", "bf"] as const;

/** What the forward pass writes after `out`, in kernels.c's order: all of it is kept for the gradient. */
export const BLOCK_SAVED = [
  "a",
  "mean1",
  "rstd1",
  "qkv",
  "probs",
  "maskAtt",
  "merged",
  "maskProj",
  "x1",
  "n",
  "mean2",
  "rstd2",
  "h",
] as const;

/**
 * The tensors of seemore_block / seemore_block_grad, in kernels.c's BLK_ order: x, the parameters, what
 * the forward pass writes, its scratch, then (backward) dout, dx and the parameters' gradients.
 */
export const BLOCK_TENSORS = [
  "x",
  ...BLOCK_PARAMS,
  "out",
  ...BLOCK_SAVED,
  "scratch",
  "dout",
  "dx",
  ...BLOCK_PARAMS.map((p) => `d${p}` as const),
] as const;

/** The shape of a BLOCK_TENSORS entry other than the scratch (a gradient has its parameter's). */
export function blockShape(name: string, d: BlockDims, dropout: boolean): number[] {
  const { B, T, C, heads: H } = d;
  const base = name.startsWith("d") && name !== "dout" ? name.slice(1) : name;
  switch (base) {
    case "wqkv":
      return [C, 3 * C];
    case "wp":
      return [C, C];
    case "w1":
      return [C, 4 * C];
    case "bh":
      return [4 * C];
    case "w2":
      return [4 * C, C];
    case "g1":
    case "b1":
    case "bp":
    case "g2":
    case "b2":
    case "bf":
      return [C];
    case "mean1":
    case "rstd1":
    case "mean2":
    case "rstd2":
      return [B, T];
    case "qkv":
      return [B, T, 3 * C];
    case "probs":
      return [B, H, T, T];
    case "maskAtt":
      return dropout ? [B, H, T, T] : [0];
    case "maskProj":
      return dropout ? [B, T, C] : [0];
    case "h":
      return [B, T, 4 * C];
    default: // x, out, a, merged, x1, n, dout, dx
      return [B, T, C];
  }
}

/** Bytes of each BLOCK_TENSORS region (masks 1 byte an element; scratch: 5 R C floats forward, 12 R C backward). */
export function blockBytes(d: BlockDims, dropout: boolean, backward: boolean): number[] {
  return BLOCK_TENSORS.map((name) => {
    if (name === "scratch") return 4 * (backward ? 12 : 5) * d.B * d.T * d.C;
    const size = blockShape(name, d, dropout).reduce((a, b) => a * b, 1);
    return name.startsWith("mask") ? size : 4 * size;
  });
}

/** What seemore_block_grad does not read: the biases (their gradients are column sums) and the output. */
const NOT_IN_BACKWARD: readonly string[] = ["b1", "bp", "b2", "bh", "bf", "out"];

/** The regions a block call touches lie inside the heap (forward: up to the scratch; backward: all but the biases and out). */
function checkBlock(
  what: string,
  heapBytes: number,
  offsets: Uint32Array,
  d: BlockDims,
  dropout: boolean,
  backward: boolean,
): void {
  if (offsets.length !== BLOCK_TENSORS.length) {
    throw new Error(
      `lib/blas/native.ts: ${what} needs ${BLOCK_TENSORS.length} offsets, got ${offsets.length}`,
    );
  }
  if (d.C % d.heads !== 0 || [d.B, d.T, d.C, d.heads].some((n) => !Number.isInteger(n) || n < 1)) {
    throw new Error(`lib/blas/native.ts: ${what}: bad sizes ${JSON.stringify(d)}`);
  }
  if (dropout) checkKeep(d.keep);
  const sizes = blockBytes(d, dropout, backward);
  const lastForward = BLOCK_TENSORS.indexOf("scratch");
  BLOCK_TENSORS.forEach((name, i) => {
    const used = backward ? !NOT_IN_BACKWARD.includes(name) : i <= lastForward;
    if (!used || sizes[i] === 0) return;
    const start = offsets[i], end = start + sizes[i];
    if (start % 4 !== 0 || start === 0 || end > heapBytes) {
      throw new Error(
        `lib/blas/native.ts: ${what} ${name} region [${start}, ${end}) outside the heap of ${heapBytes} bytes`,
      );
    }
  });
}

/** block_dims as C lays it out: B, T, C, H, pre_norm, causal (int32), then scale, keep, eps (float32). */
function blockDimsStruct(d: BlockDims): Uint8Array {
  const buf = new ArrayBuffer(36);
  new Int32Array(buf, 0, 6).set([d.B, d.T, d.C, d.heads, d.preNorm ? 1 : 0, d.causal ? 1 : 0]);
  new Float32Array(buf, 24, 3).set([d.scale, d.keep, d.eps]);
  return new Uint8Array(buf);
}

function checkExperts(
  what: string,
  heapBytes: number,
  offsets: Uint32Array,
  counts: Int32Array,
  sizes: number[],
): number {
  if (offsets.length !== 4 * counts.length) {
    throw new Error(`lib/blas/native.ts: ${what} needs 4 offsets per expert, got ${offsets.length}`);
  }
  offsets.forEach((start, i) => {
    const end = start + 4 * sizes[i % 4];
    if (start % 4 !== 0 || start === 0 || end > heapBytes) {
      throw new Error(
        `lib/blas/native.ts: ${what} region [${start}, ${end}) outside the heap of ${heapBytes} bytes`,
      );
    }
  });
  let rows = 0;
  for (const n of counts) {
    if (!Number.isInteger(n) || n < 0) throw new Error(`lib/blas/native.ts: ${what} row count ${n}`);
    rows += n;
  }
  return rows;
}

/** Every index must pick a whole matrix of `size` floats inside an array of `length`. */
function checkIndices(what: string, index: Int32Array, length: number, size: number): void {
  const count = size > 0 ? Math.floor(length / size) : 0;
  checkRange(`${what} index`, index, 0, count, `its ${count} matrices`);
}

function sameLength(what: string, n: number, arrays: Record<string, Float32Array | Uint8Array>): void {
  if (!Number.isInteger(n) || n < 0 || n > 0x7fffffff) {
    throw new Error(`lib/blas/native.ts: ${what}: bad size ${n}`);
  }
  for (const [name, a] of Object.entries(arrays)) {
    if (a.length !== n) {
      throw new Error(`lib/blas/native.ts: ${what}: ${name} has ${a.length} elements, expected ${n}`);
    }
  }
}

function rowsOf(what: string, size: number, cols: number): number {
  if (!Number.isInteger(cols) || cols <= 0 || size % cols !== 0) {
    throw new Error(`lib/blas/native.ts: ${what}: ${size} elements are not rows of ${cols}`);
  }
  return size / cols;
}

function checkPerm(shape: number[], perm: number[]): void {
  const seen = new Set(perm);
  if (
    perm.length !== shape.length || seen.size !== perm.length ||
    perm.some((p) => !(p >= 0 && p < shape.length))
  ) {
    throw new Error(`lib/blas/native.ts: bad permutation [${perm}] for shape [${shape}]`);
  }
  if (shape.some((d) => !Number.isInteger(d) || d < 0 || d > 0x7fffffff)) {
    throw new Error(`lib/blas/native.ts: bad shape [${shape}]`);
  }
}

function cacheDir(): string {
  const explicit = readEnv("SEEMORE_CACHE_DIR");
  if (explicit) return explicit;
  const xdg = readEnv("XDG_CACHE_HOME");
  if (xdg) return `${xdg}/seemore`;
  const home = readEnv("HOME");
  if (home) return `${home}/.cache/seemore`;
  return `${Deno.cwd()}/.cache/seemore`;
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** 64-bit FNV-1a of a string, as 16 hex digits (a cache key, not a security measure). */
export function fnv1a64(text: string): string {
  let h = 0xcbf29ce484222325n;
  const bytes = new TextEncoder().encode(text);
  for (const byte of bytes) {
    h ^= BigInt(byte);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, "0");
}
