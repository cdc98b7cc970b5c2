// Reading tensors back to the host on any backend, WebGPU under Deno included (a leaf: tensors only).
//
// WebGPU can only read asynchronously (`await tensor.data()`); cpu and wasm can also read synchronously
// (`dataSync()`), which keeps sync APIs such as generate() simple. So code that must read values in
// the middle of its work (sampling one token after another) is written once as a *readback
// generator*: it yields each tensor it needs read, and gets the values back. readSync() drives it with
// dataSync, readAsync() with `await data()`:
//
//   function* firstRow(x: tf.Tensor2D): Readback<number> { return (yield tf.slice(x, 0, 1))[0]; }
//   readSync(firstRow(x));          // cpu, wasm
//   await readAsync(firstRow(x));   // any backend
//
// A yielded tensor belongs to the driver, which disposes it after reading.

import type * as tf from "@tensorflow/tfjs-core";

/** A computation that yields tensors to be read and receives their values (as float32). */
export type Readback<T> = Generator<tf.Tensor, T, Float32Array>;

/** Runs a readback generator with synchronous reads (cpu, wasm, tfjs-node). */
export function readSync<T>(g: Readback<T>): T {
  let step = g.next();
  while (!step.done) {
    const t = step.value;
    let values: Float32Array;
    try {
      values = Float32Array.from(t.dataSync());
    } catch (e) {
      t.dispose();
      g.return(undefined as T); // run the generator's finally blocks
      throw e;
    }
    t.dispose();
    step = g.next(values);
  }
  return step.value;
}

/** Runs a readback generator with asynchronous reads (every backend). */
export async function readAsync<T>(g: Readback<T>): Promise<T> {
  let step = g.next();
  while (!step.done) {
    const t = step.value;
    let values: Float32Array;
    try {
      values = Float32Array.from(await t.data());
    } catch (e) {
      t.dispose();
      g.return(undefined as T);
      throw e;
    }
    t.dispose();
    step = g.next(values);
  }
  return step.value;
}

/**
 * Reads `tensors` to the host now, so that later synchronous reads of them (dataSync, and the
 * stateDict()/saveState() code built on it) succeed on WebGPU too: the backend keeps the values.
 */
export async function toHost(tensors: tf.Tensor[]): Promise<void> {
  await Promise.all(tensors.map((t) => t.data()));
}

/** The first value of `t`, read asynchronously (any backend); `t` is disposed. */
export async function readNumber(t: tf.Tensor): Promise<number> {
  try {
    return (await t.data())[0] as number;
  } finally {
    t.dispose();
  }
}
