// Elementwise kernels and the fused layers that are one C call each: Erf and Exp (replacing the stock
// ones), GELU and its gradient, ReLU's gradient, layer norm, Adam (and its in-place form over all
// parameters), dropout, and im2col for the patch convolution.

import * as tf from "@tensorflow/tfjs-core";
import {
  active,
  activeNative,
  boolView,
  floatView,
  type KernelArgs,
  stock,
  type TensorInfo,
  wasmOf,
} from "./common.ts";

export function unaryKernel(name: string, op: "erf" | "exp"): tf.KernelFunc {
  return ((args: KernelArgs) => {
    const x = args.inputs.x as TensorInfo;
    if (x.dtype !== "float32" || !active.native) return stock(name, args);
    const backend = wasmOf(args.backend);
    const out = backend.makeOutput(x.shape, "float32");
    active.native.unary(op, floatView(backend, x, "x"), floatView(backend, out, "out"));
    return out;
  }) as tf.KernelFunc;
}

/** inputs x (B, H, W, C) → cols (B·H/2·W/2, 9C): im2col of a 3×3 / stride 2 / padding 1 convolution. */
export function im2colKernel(args: KernelArgs): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  const [B, H, W, C] = x.shape;
  const backend = wasmOf(args.backend);
  const cols = backend.makeOutput([B * (H / 2) * (W / 2), 9 * C], "float32");
  active.native!.im2col3x3s2(floatView(backend, x, "im2col x"), floatView(backend, cols, "cols"), [
    B,
    H,
    W,
    C,
  ]);
  return cols;
}

/** inputs dcols (B·H/2·W/2, 9C) and x (for its shape) → dx (B, H, W, C): im2col's gradient. */
export function col2imKernel(args: KernelArgs): TensorInfo {
  const { x, dcols } = args.inputs as { x: TensorInfo; dcols: TensorInfo };
  const [B, H, W, C] = x.shape;
  const backend = wasmOf(args.backend);
  const dx = backend.makeOutput(x.shape, "float32");
  active.native!.col2im3x3s2(floatView(backend, dcols, "dcols"), floatView(backend, dx, "dx"), [B, H, W, C]);
  return dx;
}

export function geluKernel(args: KernelArgs): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  const backend = wasmOf(args.backend);
  const out = backend.makeOutput(x.shape, "float32");
  active.native!.unary("gelu", floatView(backend, x, "gelu x"), floatView(backend, out, "out"));
  return out;
}

/** inputs x, dy → dx = dy * f'(x), for f = GELU or ReLU. */
export function unaryGradKernel(op: "gelu" | "relu"): (args: KernelArgs) => TensorInfo {
  return (args) => {
    const { x, dy } = args.inputs as { x: TensorInfo; dy: TensorInfo };
    const backend = wasmOf(args.backend);
    const dx = backend.makeOutput(x.shape, "float32");
    active.native!.unaryGrad(
      op,
      floatView(backend, x, `${op} x`),
      floatView(backend, dy, `${op} dy`),
      floatView(backend, dx, "dx"),
    );
    return dx;
  };
}

/** inputs x, dy → [GELU(x), dy * GELU'(x)]. */
export function geluWithGradKernel(args: KernelArgs): TensorInfo[] {
  const { x, dy } = args.inputs as { x: TensorInfo; dy: TensorInfo };
  const backend = wasmOf(args.backend);
  const out = backend.makeOutput(x.shape, "float32");
  const dx = backend.makeOutput(x.shape, "float32");
  active.native!.geluWithGrad(
    floatView(backend, x, "gelu x"),
    floatView(backend, dy, "gelu dy"),
    floatView(backend, out, "out"),
    floatView(backend, dx, "dx"),
  );
  return [out, dx];
}

/** inputs x (..., C), g (C), b (C); attrs eps → [y (..., C), mean (...), rstd (...)]. */
export function layerNormKernel(args: KernelArgs): TensorInfo[] {
  const { x, g, b } = args.inputs as { x: TensorInfo; g: TensorInfo; b: TensorInfo };
  const backend = wasmOf(args.backend);
  const cols = x.shape[x.shape.length - 1];
  const rowShape = x.shape.slice(0, -1);
  const y = backend.makeOutput(x.shape, "float32");
  const mean = backend.makeOutput(rowShape, "float32");
  const rstd = backend.makeOutput(rowShape, "float32");
  active.native!.layerNorm(
    floatView(backend, x, "layerNorm x"),
    floatView(backend, g, "layerNorm gain"),
    floatView(backend, b, "layerNorm bias"),
    {
      y: floatView(backend, y, "y"),
      mean: floatView(backend, mean, "mean"),
      rstd: floatView(backend, rstd, "rstd"),
    },
    cols,
    args.attrs?.eps as number,
  );
  return [y, mean, rstd];
}

/** inputs dy, x, g, mean, rstd → [dx, dg, db]. */
export function layerNormGradKernel(args: KernelArgs): TensorInfo[] {
  const { dy, x, g, mean, rstd } = args.inputs as Record<string, TensorInfo>;
  const backend = wasmOf(args.backend);
  const dx = backend.makeOutput(x.shape, "float32");
  const dg = backend.makeOutput(g.shape, "float32");
  const db = backend.makeOutput(g.shape, "float32");
  active.native!.layerNormGrad(
    floatView(backend, dy, "layerNorm dy"),
    floatView(backend, x, "layerNorm x"),
    floatView(backend, g, "layerNorm gain"),
    floatView(backend, mean, "layerNorm mean"),
    floatView(backend, rstd, "layerNorm rstd"),
    { dx: floatView(backend, dx, "dx"), dg: floatView(backend, dg, "dg"), db: floatView(backend, db, "db") },
  );
  return [dx, dg, db];
}

/** inputs p, m, v, g (same shape); attrs beta1, beta2, stepSize, sqrtBc2, eps → [p', m', v']. */
export function adamKernel(args: KernelArgs): TensorInfo[] {
  const { p, m, v, g } = args.inputs as Record<string, TensorInfo>;
  const attrs = args.attrs as Record<string, number>;
  const backend = wasmOf(args.backend);
  const outs = [p, m, v].map(() => backend.makeOutput(p.shape, "float32"));
  const [pOut, mOut, vOut] = outs.map((o) => floatView(backend, o, "adam out"));
  active.native!.adam(
    {
      p: floatView(backend, p, "adam param"),
      m: floatView(backend, m, "adam m"),
      v: floatView(backend, v, "adam v"),
      g: floatView(backend, g, "adam grad"),
    },
    { p: pOut, m: mOut, v: vOut },
    {
      beta1: attrs.beta1,
      beta2: attrs.beta2,
      stepSize: attrs.stepSize,
      sqrtBc2: attrs.sqrtBc2,
      eps: attrs.eps,
    },
  );
  return outs;
}

/**
 * One Adam step for all `params` in ONE C call that overwrites the parameters and their moments in
 * their wasm memory (no new tensors, no assign). Only where nothing else shares that memory: false
 * (and nothing done) off the fast path, for a non-float tensor, or when a parameter or moment's data
 * is also held by another tensor (a clone the caller kept: it must not change).
 */
export function adamInPlace(
  params: tf.Tensor[],
  ms: tf.Tensor[],
  vs: tf.Tensor[],
  grads: tf.Tensor[],
  hyper: { beta1: number; beta2: number; stepSize: number; sqrtBc2: number; eps: number },
): boolean {
  const c = activeNative();
  if (!c) return false;
  const backend = wasmOf(tf.backend());
  const offsets = new Uint32Array(4 * params.length);
  const sizes = new Int32Array(params.length);
  for (let i = 0; i < params.length; i++) {
    const group = [params[i], ms[i], vs[i], grads[i]];
    if (group.some((t) => t.dtype !== "float32" || !tf.util.arraysEqual(t.shape, params[i].shape))) {
      return false;
    }
    for (let j = 0; j < 4; j++) {
      const data = backend.dataIdMap.get(group[j].dataId);
      if (!data || data.memoryOffset == null || (j < 3 && data.refCount !== 1)) return false;
      offsets[4 * i + j] = data.memoryOffset;
    }
    sizes[i] = params[i].size;
  }
  c.adamInPlace(backend.wasm.HEAPU8, offsets, sizes, hyper);
  return true;
}

/** inputs x; attrs keep, seed (tf.dropout's) → [y (float32), mask (bool)]. */
export function dropoutKernel(args: KernelArgs): TensorInfo[] {
  const { x } = args.inputs as { x: TensorInfo };
  const backend = wasmOf(args.backend);
  const y = backend.makeOutput(x.shape, "float32");
  const mask = backend.makeOutput(x.shape, "bool");
  active.native!.dropout(
    floatView(backend, x, "dropout x"),
    args.attrs?.seed as number,
    { y: floatView(backend, y, "y"), mask: boolView(backend, mask, "mask") },
    args.attrs?.keep as number,
  );
  return [y, mask];
}

/** inputs dy, mask (bool); attrs keep → dx. */
export function dropoutGradKernel(args: KernelArgs): TensorInfo {
  const { dy, mask } = args.inputs as { dy: TensorInfo; mask: TensorInfo };
  const backend = wasmOf(args.backend);
  const dx = backend.makeOutput(dy.shape, "float32");
  active.native!.dropoutGrad(
    floatView(backend, dy, "dropout dy"),
    boolView(backend, mask, "dropout mask"),
    floatView(backend, dx, "dx"),
    args.attrs?.keep as number,
  );
  return dx;
}
