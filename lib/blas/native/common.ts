// What the per-family FFI files share: short names for the argument types of their symbol tables, the
// state the families share, and the size checks that stand before every call (FFI does no bounds
// checks: a wrong size would read or write past an array).

/** Deno FFI argument types, short, so a symbol table's parameter list fits one line. */
export const B = "buffer", I = "i32", F = "f32", I64 = "i64", VOID = "void";

/** The symbols of one family's table, as Deno.dlopen types them. */
export type Symbols<T extends Deno.ForeignLibraryInterface> = Deno.DynamicLibrary<T>["symbols"];

/** State the families share: whether the kernels can call OpenBLAS's sgemm (products.ts binds it). */
export interface Shared {
  sgemmBound: boolean;
}

/** The checks, with errors that name the family file they come from. */
export function checksFor(file: string) {
  const fail = (message: string): never => {
    throw new Error(`${file}: ${message}`);
  };
  return {
    fail,
    /** Throws unless OpenBLAS's sgemm is bound (the kernel multiplies). */
    needSgemm(shared: Shared, what: string): void {
      if (!shared.sgemmBound) fail(`${what} needs bindSgemm() first`);
    },
    /** Throws unless every named array has exactly `n` elements (and n fits an int32). */
    sameLength(
      what: string,
      n: number,
      arrays: Record<string, Float32Array | Uint8Array | Int32Array>,
    ): void {
      if (!Number.isInteger(n) || n < 0 || n > 0x7fffffff) fail(`${what}: bad size ${n}`);
      for (const [name, a] of Object.entries(arrays)) {
        if (a.length !== n) fail(`${what}: ${name} has ${a.length} elements, expected ${n}`);
      }
    },
    /** The number of rows of `cols` in `size` elements; throws unless it is whole. */
    rowsOf(what: string, size: number, cols: number): number {
      if (!Number.isInteger(cols) || cols <= 0 || size % cols !== 0) {
        fail(`${what}: ${size} elements are not rows of ${cols}`);
      }
      return size / cols;
    },
    /** Dropout's keep probability must lie in (0, 1]. */
    keep(keep: number): void {
      if (!(keep > 0 && keep <= 1)) fail(`keep probability ${keep} not in (0, 1]`);
    },
    /** Every value must lie in [lo, hi) (`range` says so in the error). */
    range(what: string, values: Int32Array, lo: number, hi: number, range = `[${lo}, ${hi})`): void {
      for (const v of values) if (!(v >= lo && v < hi)) fail(`${what} ${v} outside ${range}`);
    },
    /** A region of `bytes` at byte `start` of the wasm heap lies inside it, 4-byte aligned, not at 0. */
    region(what: string, heapBytes: number, start: number, bytes: number): void {
      const end = start + bytes;
      if (start % 4 !== 0 || start === 0 || end > heapBytes) {
        fail(`${what} region [${start}, ${end}) outside the heap of ${heapBytes} bytes`);
      }
    },
    /** Throws unless rc is 0 (a C kernel's return code). */
    ok(symbol: string, rc: number): void {
      if (rc !== 0) fail(`${symbol} failed (${rc})`);
    },
  };
}
