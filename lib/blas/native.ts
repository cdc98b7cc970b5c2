// The C kernels (lib/blas/c/) compiled with the system C compiler ($CC, default `cc`) on first use and
// opened through Deno FFI. The shared library is cached under $SEEMORE_CACHE_DIR, else
// $XDG_CACHE_HOME/seemore, ~/.cache/seemore or ./.cache/seemore, named by a hash of every source file,
// the generated layout header and the compile command, so an edited source is rebuilt and a stale build
// is never used. Flags are portable (-O3, SSE2 on x86-64); the elementwise loops carry their own AVX2 /
// AVX-512 builds, picked at load time (c/vector.h, SIMD_CLONES). Without a compiler (or without
// --allow-run / --allow-ffi) loadNative() says why and callers use JS instead.
//
// Each family's symbols and checked wrappers live in native/<family>.ts, named after its c/<family>.c.

import { firstLine, readEnv } from "./ffi.ts";
import { layoutHeader } from "./layout.ts";
import { ADAM_SYMBOLS, type AdamKernels, adamKernels } from "./native/adam.ts";
import { ATTENTION_SYMBOLS, type AttentionKernels, attentionKernels } from "./native/attention.ts";
import { BLOCK_SYMBOLS, type BlockKernels, blockKernels } from "./native/block.ts";
import { I, type Shared } from "./native/common.ts";
import { DECODER_SYMBOLS, type DecoderKernels, decoderKernels } from "./native/decoder.ts";
import { DROPOUT_SYMBOLS, type DropoutKernels, dropoutKernels } from "./native/dropout.ts";
import { EXPERTS_SYMBOLS, type ExpertsKernels, expertsKernels } from "./native/experts.ts";
import {
  FIRST_ATTENTION_SYMBOLS,
  type FirstAttentionKernels,
  firstAttentionKernels,
} from "./native/first_attention.ts";
import { MEMORY_SYMBOLS, type MemoryKernels, memoryKernels } from "./native/memory.ts";
import { NORM_SYMBOLS, type NormKernels, normKernels } from "./native/norms.ts";
import { POOL_SYMBOLS, type PoolKernels, poolKernels } from "./native/pool.ts";
import { PRODUCT_SYMBOLS, type ProductKernels, productKernels } from "./native/products.ts";
import { VECTOR_MATH_SYMBOLS, type VectorMathKernels, vectorMathKernels } from "./native/vector_math.ts";

/** The C sources: every file in lib/blas/c/ goes into the cache key; kernels.c includes the others. */
const SOURCE_DIR = new URL("./c/", import.meta.url);
const UNITY_FILE = "kernels.c";
// -fno-trapping-math lets the branch-free maths vectorize, and -fno-math-errno lets sqrtf be the sqrt
// instruction (Adam's loop then vectorizes); results are unchanged (no FP traps or errno are used).
// -ffp-contract=off: no fused multiply-adds, so results do not depend on the compiler's choices (the
// exp, erf and softmax loops opt in: c/vector.h, FUSED_MATH).
const CC_FLAGS = [
  "-O3",
  "-std=c99",
  "-fno-trapping-math",
  "-fno-math-errno",
  "-ffp-contract=off",
  "-Wno-psabi", // 64-byte vector helpers are always inlined: no call passes one
  "-shared",
  "-fPIC",
  // Never unmapped, even when Deno closes the library at exit: a helper thread of the pool may still
  // be returning from its last chunk then (it segfaulted now and then in runs that exited right after
  // a threaded kernel).
  "-Wl,-z,nodelete",
];
const LIBS = ["-lm", "-ldl", "-pthread"];
/** Bumped when a C function's arguments change; the library reports it (seemore_abi_version). */
const ABI_VERSION = 27;

const SYMBOLS = {
  seemore_abi_version: { parameters: [], result: I },
  ...POOL_SYMBOLS,
  ...PRODUCT_SYMBOLS,
  ...MEMORY_SYMBOLS,
  ...VECTOR_MATH_SYMBOLS,
  ...NORM_SYMBOLS,
  ...ADAM_SYMBOLS,
  ...DROPOUT_SYMBOLS,
  ...ATTENTION_SYMBOLS,
  ...FIRST_ATTENTION_SYMBOLS,
  ...EXPERTS_SYMBOLS,
  ...DECODER_SYMBOLS,
  ...BLOCK_SYMBOLS,
} as const;

type NativeLibrary = Deno.DynamicLibrary<typeof SYMBOLS>;

/** The compiled kernels, family by family (each family's methods are documented in native/<family>.ts). */
export interface Native
  extends
    PoolKernels,
    ProductKernels,
    MemoryKernels,
    VectorMathKernels,
    NormKernels,
    AdamKernels,
    DropoutKernels,
    AttentionKernels,
    FirstAttentionKernels,
    ExpertsKernels,
    DecoderKernels,
    BlockKernels {
  /** The shared library that was opened. */
  path: string;
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

/** Where the kernels built from the current sources with the current compiler live (or will). */
export function nativeLibraryPath(): string {
  return `${cacheDir()}/kernels-${buildKey(readSources(), generatedHeader(), nativeCompiler())}.so`;
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
  if (!exists(path)) compile(compiler, generatedHeader(), cacheDir(), path);
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

/** The header the sources are compiled with (-include): the ABI version and layout.ts's tables. */
export function generatedHeader(): string {
  return `#define SEEMORE_ABI_VERSION ${ABI_VERSION}\n${layoutHeader()}`;
}

/** Every file of lib/blas/c/, by name, with its text. */
export function readSources(): { name: string; text: string }[] {
  return [...Deno.readDirSync(SOURCE_DIR)]
    .filter((entry) => entry.isFile)
    .map((entry) => entry.name)
    .sort()
    .map((name) => ({ name, text: Deno.readTextFileSync(new URL(name, SOURCE_DIR)) }));
}

/** The cache key: a hash of every source, the generated header and the compile command. */
export function buildKey(
  sources: { name: string; text: string }[],
  header: string,
  compiler: string,
): string {
  const parts = sources.flatMap(({ name, text }) => [name, text]);
  return fnv1a64([...parts, header, compiler, ...CC_FLAGS, ...LIBS, Deno.build.target].join("\n"));
}

/** Compiles into a temporary file beside `path`, then renames it: no half-written library is ever seen. */
function compile(compiler: string, header: string, dir: string, path: string): void {
  Deno.mkdirSync(dir, { recursive: true });
  const sourcePath = decodeURIComponent(new URL(UNITY_FILE, SOURCE_DIR).pathname);
  const tmp = `${path}.${Deno.pid}.tmp`, headerPath = `${tmp}.h`;
  Deno.writeTextFileSync(headerPath, header);
  let out: Deno.CommandOutput;
  try {
    out = new Deno.Command(compiler, {
      args: [...CC_FLAGS, "-include", headerPath, "-o", tmp, sourcePath, ...LIBS],
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
  } catch (err) {
    throw new BuildError(`cannot run C compiler '${compiler}': ${firstLine(err)}`, "compiler");
  } finally {
    Deno.removeSync(headerPath);
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

/** The checked wrappers of every family, over one opened library. */
function wrap(path: string, lib: NativeLibrary): Native {
  const s = lib.symbols, shared: Shared = { sgemmBound: false };
  return {
    path,
    ...poolKernels(s),
    ...productKernels(s, shared),
    ...memoryKernels(s),
    ...vectorMathKernels(s),
    ...normKernels(s),
    ...adamKernels(s),
    ...dropoutKernels(s),
    ...attentionKernels(s, shared),
    ...firstAttentionKernels(s, shared),
    ...expertsKernels(s, shared),
    ...decoderKernels(s),
    ...blockKernels(s, shared),
  };
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
