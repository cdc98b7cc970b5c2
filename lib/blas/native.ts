// Small C kernels (lib/blas/kernels.c) compiled with the system C compiler ($CC, default `cc`) on first
// use and opened through Deno FFI. The shared library is cached under $SEEMORE_CACHE_DIR, else
// $XDG_CACHE_HOME/seemore, ~/.cache/seemore or ./.cache/seemore, named by a hash of the source and the
// compile command, so an edited source is rebuilt and a stale build is never used. Flags are portable
// (-O3, SSE2 on x86-64): an -march=x86-64-v3 build measured 3-10x SLOWER on this VM. Without a
// compiler (or without --allow-run / --allow-ffi) loadNative() says why and callers use JS instead.
//
// Every function here checks its arguments' lengths before calling C: FFI does no bounds checks.

const SOURCE_URL = new URL("./kernels.c", import.meta.url);
// -fno-trapping-math lets the branch-free maths vectorize; results are unchanged (no FP traps are used).
const CC_FLAGS = ["-O3", "-std=c99", "-fno-trapping-math", "-shared", "-fPIC"];
const LIBS = ["-lm"];
const ABI_VERSION = 1;
const MAX_RANK = 8; // as in kernels.c

const SYMBOLS = {
  seemore_abi_version: { parameters: [], result: "i32" },
  seemore_transpose32: {
    // src, dst, rank, shape (i32[rank]), perm (i32[rank])
    parameters: ["buffer", "buffer", "i32", "buffer", "buffer"],
    result: "void",
  },
  seemore_sum: {
    // src, dst, groups, sizes (i32[groups]), reduced flags (i32[groups]) -> 0 on success
    parameters: ["buffer", "buffer", "i32", "buffer", "buffer"],
    result: "i32",
  },
  seemore_erf: { parameters: ["buffer", "buffer", "i32"], result: "void" },
  seemore_exp: { parameters: ["buffer", "buffer", "i32"], result: "void" },
  seemore_gelu: { parameters: ["buffer", "buffer", "i32"], result: "void" },
  seemore_gelu_grad: { parameters: ["buffer", "buffer", "buffer", "i32"], result: "void" },
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
} as const;

type NativeLibrary = Deno.DynamicLibrary<typeof SYMBOLS>;

/** The compiled kernels. */
export interface Native {
  /** The shared library that was opened. */
  path: string;
  /** dst = transpose(src, perm), for 4-byte elements; shape is src's shape. */
  transpose32(src: Int32Array, dst: Int32Array, shape: number[], perm: number[]): void;
  /** dst = sum of src over `axes` (dst holds the kept axes' elements), accumulated in double. */
  sum(src: Float32Array, dst: Float32Array, shape: number[], axes: number[]): void;
  /** y = f(x) elementwise; x and y have the same length. */
  unary(op: "erf" | "exp" | "gelu", x: Float32Array, y: Float32Array): void;
  /** dx = dy * gelu'(x). */
  geluGrad(x: Float32Array, dy: Float32Array, dx: Float32Array): void;
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
}

export type NativeResult = { ok: true; native: Native } | { ok: false; reason: string };

let cached: NativeResult | null = null;

/** Builds (once, cached on disk) and opens the C kernels. Never throws. */
export function loadNative(): NativeResult {
  if (cached) return cached;
  try {
    cached = openNative();
  } catch (err) {
    cached = { ok: false, reason: `C kernels unavailable (${firstLine(err)}); using JS kernels` };
  }
  return cached;
}

function openNative(): NativeResult {
  for (const name of ["ffi", "run", "read", "write"] as const) {
    if (Deno.permissions.querySync({ name }).state !== "granted") {
      return { ok: false, reason: `C kernels need --allow-${name}; using JS kernels` };
    }
  }
  const source = Deno.readTextFileSync(SOURCE_URL);
  const compiler = envOr("CC", "cc");
  const key = fnv1a64([source, compiler, ...CC_FLAGS, ...LIBS, Deno.build.target].join("\n"));
  const dir = cacheDir();
  const path = `${dir}/kernels-${key}.so`;
  if (!exists(path)) compile(compiler, dir, path);
  const lib: NativeLibrary = Deno.dlopen(path, SYMBOLS);
  const version = lib.symbols.seemore_abi_version();
  if (version !== ABI_VERSION) {
    lib.close();
    return { ok: false, reason: `C kernels at ${path} report ABI ${version}, expected ${ABI_VERSION}` };
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
    throw new Error(`cannot run C compiler '${compiler}': ${firstLine(err)}`);
  }
  if (!out.success) {
    try {
      Deno.removeSync(tmp);
    } catch { /* nothing was written */ }
    const msg = new TextDecoder().decode(out.stderr).trim().split("\n")[0];
    throw new Error(`'${compiler}' failed on ${sourcePath}: ${msg}`);
  }
  Deno.renameSync(tmp, path);
}

function wrap(path: string, lib: NativeLibrary): Native {
  const s = lib.symbols;
  return {
    path,
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
    unary(op, x, y) {
      sameLength(`${op}`, x.length, { y });
      const fn = op === "erf" ? s.seemore_erf : op === "exp" ? s.seemore_exp : s.seemore_gelu;
      fn(x, y, x.length);
    },
    geluGrad(x, dy, dx) {
      sameLength("geluGrad", x.length, { dy, dx });
      s.seemore_gelu_grad(x, dy, dx, x.length);
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
  };
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

/** Throws unless every named array has exactly `n` elements (and n fits an int32). */
function sameLength(what: string, n: number, arrays: Record<string, Float32Array>): void {
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
  const explicit = envOr("SEEMORE_CACHE_DIR", "");
  if (explicit) return explicit;
  const xdg = envOr("XDG_CACHE_HOME", "");
  if (xdg) return `${xdg}/seemore`;
  const home = envOr("HOME", "");
  if (home) return `${home}/.cache/seemore`;
  return `${Deno.cwd()}/.cache/seemore`;
}

function envOr(name: string, fallback: string): string {
  try {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") return fallback;
    return Deno.env.get(name) || fallback;
  } catch {
    return fallback;
  }
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

function firstLine(err: unknown): string {
  return String(err instanceof Error ? err.message : err).split("\n")[0];
}
