// Property-based fuzzing (fast-check) of every loader that reads a user's file: safetensors bytes, checkpoint
// folders, config.json, CSV rows and the images in their cells. Each mutated input must either load or fail
// with a plain Error whose message names the file (and the row and column, key or tensor where one is at
// fault): no other exception type, no crash, no case slower than CASE_MS, no allocation beyond what the input
// holds. fast-check abandons a case whose promise is still pending after CASE_MS (a hang in sharp or polars,
// or in an await); a synchronous endless loop cannot be interrupted in-process and stalls the run instead.
//
// Seeded, so every run tries the same cases. SEEMORE_FUZZ_RUNS=N tries N cases per loader (the normal run
// tries RUNS below), SEEMORE_FUZZ_SEED=S draws other cases. A failure prints fast-check's seed and shrunk
// counterexample; the minimal case then goes into a regression test beside the loader's own tests.

import * as tf from "@tensorflow/tfjs";
import fc from "fast-check";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import zlib from "node:zlib";
import sharp from "sharp";
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from "../lib/checkpoint.ts";
import { DEFAULT_MODEL, type ModelConfig, PAD } from "../lib/config.ts";
import { ImageCaptionDataset } from "../lib/data/batches.ts";
import { readImageCaptionCsv } from "../lib/data/csv.ts";
import { decodeImage, IMAGE_COLUMN, MAX_IMAGE_PIXELS } from "../lib/data/images.ts";
import { MAX_IMG_SIZE, MAX_PARAMETERS, MODEL_KEYS, parameterCount, parseConfig } from "../lib/config.ts";
import { buildModel } from "../lib/model/factory.ts";
import { configJson, loadModel } from "../lib/model_files.ts";
import { VisionLanguageModel } from "../lib/model/vision_language_model.ts";
import { Tokenizer } from "../lib/tokenizer.ts";
import { greyPng, tinyConfig, useBackend, zerosZlib } from "./helpers.ts";

await useBackend();

const SEED = Number(Deno.env.get("SEEMORE_FUZZ_SEED") ?? 20250611);
const RUNS_OVERRIDE = Deno.env.get("SEEMORE_FUZZ_RUNS");
/** Cases per loader in the normal test run: a few seconds in all on two busy cores. */
const RUNS = {
  safetensors: 1000,
  checkpoint: 100,
  config: 1000,
  configFolder: 100,
  image: 150,
  csv: 100,
  csvBytes: 200,
};
const CASE_MS = 5000; // far above any honest case; a slower one is a hang or a giant allocation

function runsFor(loader: keyof typeof RUNS): number {
  if (RUNS_OVERRIDE === undefined) return RUNS[loader];
  const runs = Number(RUNS_OVERRIDE);
  if (!Number.isSafeInteger(runs) || runs < 1) {
    throw new Error(`SEEMORE_FUZZ_RUNS=${RUNS_OVERRIDE}: not a count`);
  }
  return runs;
}

const dir = Deno.makeTempDirSync({ prefix: "seemore_fuzz_" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

// ---------------------------------------------------------------------------------------------
// the harness: run one case, classify its outcome, count

interface Tally {
  tried: number;
  loaded: number;
  refused: number;
  skipped: number; // valid but too slow to try here (the reason is printed)
}

function newTally(): Tally {
  return { tried: 0, loaded: 0, refused: 0, skipped: 0 };
}

function report(loader: string, tally: Tally, started: number, skipped = ""): void {
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(
    `fuzz ${loader}: ${tally.tried} cases (seed ${SEED}, ${seconds} s): ${tally.loaded} loaded, ` +
      `${tally.refused} refused with a named error` +
      (tally.skipped ? `, ${tally.skipped} skipped: ${skipped}` : ""),
  );
}

/** Runs one case: its value, or the plain Error it threw. Anything else thrown, or a slow case, fails. */
async function attempt<T>(tally: Tally, run: () => T | Promise<T>): Promise<{ value: T } | { error: Error }> {
  tally.tried++;
  const t0 = performance.now();
  let outcome: { value: T } | { error: Error };
  try {
    outcome = { value: await run() };
    tally.loaded++;
  } catch (e) {
    if (!(e instanceof Error) || Object.getPrototypeOf(e) !== Error.prototype) {
      const kind = e instanceof Error ? e.constructor.name : typeof e;
      throw new Error(`threw a ${kind}, not a plain Error: ${e instanceof Error ? e.message : String(e)}`);
    }
    outcome = { error: e };
    tally.refused++;
  }
  const ms = performance.now() - t0;
  if (ms > CASE_MS) throw new Error(`one case took ${ms.toFixed(0)} ms (limit ${CASE_MS} ms)`);
  return outcome;
}

function assertStartsWith(message: string, prefix: string): void {
  assert.ok(message.startsWith(prefix), `message does not start with ${JSON.stringify(prefix)}:\n${message}`);
}

function numel(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/** "byte 17 = 0xff, ..." with the positions flipBytes uses. */
function describeEdits(edits: [number, number][], within: number): string {
  return edits.map(([at, value]) => `byte ${at % within} = 0x${value.toString(16)}`).join(", ");
}

/** Applies byte edits: each (position, value) overwrites one byte (position taken modulo the length). */
function flipBytes(bytes: Uint8Array, edits: [number, number][], within = bytes.length): Uint8Array {
  const out = bytes.slice();
  if (out.length === 0) return out;
  for (const [at, value] of edits) out[at % Math.min(within, out.length)] = value;
  return out;
}

/** Bytes with how they were made: fast-check reports the recipe, not thousands of numbers. */
interface Made {
  bytes: Uint8Array;
  how: string;
}

function made(bytes: Uint8Array, how: string): Made {
  return { bytes, how, [fc.toStringMethod]: () => `${how} (${bytes.length} bytes)` } as Made;
}

const byteEdits = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), {
  minLength: 1,
  maxLength: 8,
});

/** Numbers and near-numbers that break size checks: huge, negative, fractional, unsafe, not numbers. */
const nastyNumber = fc.oneof(
  fc.integer({ min: -4, max: 64 }),
  fc.constantFrom(0, -1, 0.5, 1.5, -0, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53, 2 ** 53 + 2, 2 ** 64, 1e9, 1e300),
  fc.double(),
  fc.constantFrom("8", "", null, true, false, [], {}, [8]),
);

// ---------------------------------------------------------------------------------------------
// a tiny model: its config.json and its valid model.safetensors

const VOCAB = [..."abc .", PAD];
const TINY = tinyConfig({
  n_embd: 8,
  image_embed_dim: 8,
  n_head: 2,
  n_layer: 1,
  num_blks: 1,
  img_size: 8,
  patch_size: 4,
  block_positions: 16,
  vocab_size: VOCAB.length,
});
const TINY_JSON = JSON.parse(JSON.stringify(configJson(TINY, VOCAB))) as Record<string, unknown>;
const TINY_TENSORS: NamedTensor[] = (() => {
  const model = new VisionLanguageModel(TINY, 3);
  const tensors = [...model.stateDict()].map(([name, t]) => ({ name, shape: t.shape, data: t.data }));
  model.dispose();
  return tensors;
})();
const VALID_WEIGHTS = encodeSafetensors(TINY_TENSORS);

// ---------------------------------------------------------------------------------------------
// model.safetensors

/** A safetensors file from header bytes, a data buffer and (optionally) a lying header length. */
function withHeaderText(text: Uint8Array, data: Uint8Array, lengthLie?: bigint): Uint8Array {
  const out = new Uint8Array(8 + text.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthLie ?? BigInt(text.length), true);
  out.set(text, 8);
  out.set(data, 8 + text.length);
  return out;
}

function safetensorsBytes(header: unknown, data: Uint8Array, lengthLie?: bigint): Uint8Array {
  return withHeaderText(new TextEncoder().encode(JSON.stringify(header) ?? ""), data, lengthLie);
}

const VALID_HEADER_LENGTH = Number(new DataView(VALID_WEIGHTS.buffer).getBigUint64(0, true));
const VALID_HEADER: Record<string, Record<string, unknown>> = JSON.parse(
  new TextDecoder().decode(VALID_WEIGHTS.subarray(8, 8 + VALID_HEADER_LENGTH)),
);
const VALID_DATA = VALID_WEIGHTS.subarray(8 + VALID_HEADER_LENGTH);
const DTYPES = ["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "F8_E4M3", "I64", "f32", "F128", ""];

const dtypeValue = fc.oneof(fc.constantFrom(...DTYPES), fc.string({ maxLength: 6 }), fc.jsonValue());
const shapeValue = fc.oneof(
  fc.array(fc.integer({ min: 0, max: 40 }), { maxLength: 4 }),
  fc.array(nastyNumber, { maxLength: 4 }),
  fc.constantFrom([2 ** 40], [2 ** 20, 2 ** 20, 2 ** 20], [2 ** 26, 2 ** 26], [0, 2 ** 53], [2 ** 62]),
  fc.jsonValue(),
);
const offsetValue = fc.oneof(
  fc.tuple(
    fc.integer({ min: 0, max: VALID_DATA.length + 64 }),
    fc.integer({ min: 0, max: VALID_DATA.length + 64 }),
  ),
  fc.tuple(nastyNumber, nastyNumber),
  fc.array(fc.nat(), { maxLength: 3 }),
  fc.jsonValue(),
);

/** One structural edit of the header: a field of a tensor's entry, a whole entry, or the metadata. */
const headerEdit = fc.oneof(
  fc.record({ kind: fc.constant("dtype" as const), tensor: fc.nat(), value: dtypeValue }),
  fc.record({ kind: fc.constant("shape" as const), tensor: fc.nat(), value: shapeValue }),
  fc.record({ kind: fc.constant("data_offsets" as const), tensor: fc.nat(), value: offsetValue }),
  fc.record({
    kind: fc.constant("delete-field" as const),
    tensor: fc.nat(),
    value: fc.constantFrom("dtype", "shape", "data_offsets"),
  }),
  fc.record({ kind: fc.constant("delete" as const), tensor: fc.nat(), value: fc.constant(null) }),
  fc.record({
    kind: fc.constant("copy" as const),
    tensor: fc.nat(),
    value: fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom("__proto__", "constructor", "__metadata__")),
  }),
  // a self-consistent entry that lies about its size: shape × dtype = data_offsets, far past the file
  fc.record({
    kind: fc.constant("huge" as const),
    tensor: fc.nat(),
    value: fc.oneof(
      fc.constantFrom([2 ** 40], [2 ** 20, 2 ** 20], [2 ** 28], [2 ** 16, 2 ** 16, 4], [2 ** 49]),
      fc.array(fc.integer({ min: 1, max: 2 ** 16 }), { minLength: 1, maxLength: 3 }),
    ),
  }),
  fc.record({ kind: fc.constant("swap-offsets" as const), tensor: fc.nat(), value: fc.nat() }),
  fc.record({ kind: fc.constant("entry" as const), tensor: fc.nat(), value: fc.jsonValue() }),
  fc.record({ kind: fc.constant("metadata" as const), tensor: fc.nat(), value: fc.jsonValue() }),
);
type HeaderEdit = typeof headerEdit extends fc.Arbitrary<infer T> ? T : never;

function editHeader(edits: HeaderEdit[]): Record<string, unknown> {
  const header: Record<string, unknown> = structuredClone(VALID_HEADER);
  for (const { kind, tensor, value } of edits) {
    const names = Object.keys(header).filter((n) => n !== "__metadata__");
    if (names.length === 0) break;
    const name = names[tensor % names.length];
    const entry = header[name];
    const fields = typeof entry === "object" && entry !== null ? entry as Record<string, unknown> : undefined;
    if (kind === "delete") delete header[name];
    else if (kind === "copy") { // beside the original, or under a name JavaScript objects treat specially
      header[(value as string).startsWith("__") ? value as string : name + value] = structuredClone(entry);
    } else if (kind === "huge" && fields && Array.isArray(fields.data_offsets)) {
      const begin = fields.data_offsets[0] as number;
      fields.dtype = "F32";
      fields.shape = value;
      fields.data_offsets = [begin, begin + 4 * numel(value as number[])];
    } else if (kind === "entry") header[name] = value;
    else if (kind === "metadata") header.__metadata__ = value;
    else if (kind === "swap-offsets" && fields) {
      const other = header[names[(value as number) % names.length]] as Record<string, unknown>;
      if (typeof other === "object" && other !== null) {
        [fields.data_offsets, other.data_offsets] = [other.data_offsets, fields.data_offsets];
      }
    } else if (kind === "delete-field" && fields) delete fields[value as string];
    else if (fields) fields[kind] = value;
  }
  return header;
}

/** The data buffer, cut short, extended or left alone. */
const dataEdit = fc.oneof(
  fc.constant({ cut: 0, extra: new Uint8Array() }),
  fc.record({ cut: fc.integer({ min: 1, max: 64 }), extra: fc.constant(new Uint8Array()) }),
  fc.record({ cut: fc.constant(0), extra: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
);

const lengthLie = fc.oneof(
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  fc.constantFrom(2n ** 64n - 1n, 2n ** 63n, 100_000_001n, 0n),
  fc.integer({ min: -16, max: 16 }).map((d) => BigInt(Math.max(0, VALID_HEADER_LENGTH + d))),
);

/** Mutated safetensors files, from structured header edits down to random bytes. */
const mutatedSafetensors: fc.Arbitrary<Made> = fc.oneof(
  // structured: a header whose entries lie, over a whole, short or long data buffer
  fc.tuple(fc.array(headerEdit, { minLength: 1, maxLength: 4 }), dataEdit, fc.option(lengthLie, { freq: 4 }))
    .map(([edits, { cut, extra }, lie]) => {
      const data = new Uint8Array([...VALID_DATA.subarray(0, VALID_DATA.length - cut), ...extra]);
      const how = `header edits ${JSON.stringify(edits)}, data buffer cut by ${cut} and ${extra.length} ` +
        `bytes added, header length ${lie ?? "true"}`;
      return made(safetensorsBytes(editHeader(edits), data, lie ?? undefined), how);
    }),
  // a valid file whose first 8 bytes lie about the header length
  lengthLie.map((lie) => {
    const out = VALID_WEIGHTS.slice();
    new DataView(out.buffer).setBigUint64(0, lie, true);
    return made(out, `a valid file whose header length says ${lie}`);
  }),
  // a header that is not the JSON object it should be
  fc.oneof(
    fc.jsonValue().map((v) => JSON.stringify(v) ?? ""),
    fc.string({ unit: "binary", maxLength: 40 }),
    fc.nat().map((cut) => JSON.stringify(VALID_HEADER).slice(0, cut % 200)),
  ).map((text) =>
    made(withHeaderText(new TextEncoder().encode(text), VALID_DATA), `header ${JSON.stringify(text)}`)
  ),
  fc.uint8Array({ maxLength: 40 }).map((bytes) =>
    made(withHeaderText(bytes, VALID_DATA), `header bytes [${bytes}]`)
  ),
  // random bytes flipped in the header or anywhere
  fc.tuple(byteEdits, fc.boolean()).map(([edits, headerOnly]) => {
    const within = headerOnly ? 8 + VALID_HEADER_LENGTH : VALID_WEIGHTS.length;
    return made(
      flipBytes(VALID_WEIGHTS, edits, within),
      `a valid file with bytes set ${describeEdits(edits, within)}`,
    );
  }),
  // truncated anywhere
  fc.nat().map((cut) =>
    made(VALID_WEIGHTS.subarray(0, cut % VALID_WEIGHTS.length), "a valid file cut short")
  ),
  // noise
  fc.uint8Array({ maxLength: 64 }).map((bytes) => made(bytes, `bytes [${bytes}]`)),
);

Deno.test("fuzz: decodeSafetensors loads or names the file, never reading or allocating past the file", async () => {
  const file = "fuzz/model.safetensors";
  const tally = newTally();
  const started = performance.now();
  await fc.assert(
    fc.asyncProperty(mutatedSafetensors, async ({ bytes }) => {
      const outcome = await attempt(tally, () => decodeSafetensors(bytes, file));
      if ("error" in outcome) return assertStartsWith(outcome.error.message, `${file}: `);
      let floats = 0;
      for (const [name, t] of outcome.value) {
        assert.equal(t.data.length, numel(t.shape), `tensor "${name}": data and shape disagree`);
        floats += t.data.length;
      }
      // every loaded value came from at least 2 bytes of the file (F16/BF16), so no lying size got through
      assert.ok(2 * floats <= bytes.length, `${floats} floats loaded from ${bytes.length} bytes`);
    }),
    { numRuns: runsFor("safetensors"), seed: SEED, timeout: CASE_MS },
  );
  report("decodeSafetensors", tally, started);
});

// ---------------------------------------------------------------------------------------------
// checkpoint folders: a valid config.json beside a mutated model.safetensors

/** A well-formed file whose tensors do not fit the model: names dropped, renamed, added, reshaped. */
const tensorEdit = fc.record({
  kind: fc.constantFrom("drop", "rename", "add", "reshape"),
  tensor: fc.nat(),
  shape: fc.array(fc.integer({ min: 0, max: 9 }), { maxLength: 4 }),
});

function misfitTensors(edits: { kind: string; tensor: number; shape: number[] }[]) {
  const tensors = TINY_TENSORS.map((t) => ({ ...t }));
  for (const { kind, tensor, shape } of edits) {
    if (tensors.length === 0) break;
    const i = tensor % tensors.length;
    const t = tensors[i];
    if (kind === "drop") tensors.splice(i, 1);
    else if (kind === "rename") tensors[i] = { ...t, name: `${t.name}_` };
    else if (kind === "reshape") tensors[i] = { ...t, shape, data: new Float32Array(numel(shape)) };
    else if (!tensors.some((u) => u.name === `extra.${i}`)) {
      tensors.push({ name: `extra.${i}`, shape, data: new Float32Array(numel(shape)) });
    }
  }
  // what the error must name: each tensor missing, of another shape, or not the model's
  const got = new Map(tensors.map((t) => [t.name, t.shape.join()]));
  const want = new Map(TINY_TENSORS.map((t) => [t.name, t.shape.join()]));
  const misfits = [
    ...[...want].filter(([name, shape]) => got.get(name) !== shape).map(([name]) => name),
    ...[...got.keys()].filter((name) => !want.has(name)),
  ];
  return { ...made(encodeSafetensors(tensors), `tensor edits ${JSON.stringify(edits)}`), misfits };
}

const checkpointCase = fc.oneof(
  mutatedSafetensors.map((file) => ({ ...file, misfits: [] as string[] })),
  fc.array(tensorEdit, { minLength: 1, maxLength: 4 }).map(misfitTensors),
);

Deno.test("fuzz: loadModel on a damaged model.safetensors loads or names the file and the tensor", async () => {
  const folder = join(dir, "checkpoint");
  Deno.mkdirSync(folder);
  Deno.writeTextFileSync(join(folder, "config.json"), JSON.stringify(TINY_JSON));
  const file = join(folder, "model.safetensors");
  const tally = newTally();
  const started = performance.now();
  await fc.assert(
    fc.asyncProperty(checkpointCase, async ({ bytes, misfits }) => {
      Deno.writeFileSync(file, bytes);
      const before = tf.memory().numTensors;
      const outcome = await attempt(tally, () => loadModel(folder));
      if ("value" in outcome) outcome.value.model.dispose();
      assert.equal(tf.memory().numTensors, before, "a model left tensors behind");
      if ("error" in outcome) {
        const message = outcome.error.message;
        assertStartsWith(message, `${file}: `);
        for (const name of misfits) assert.ok(message.includes(`"${name}"`), `no "${name}" in:\n${message}`);
      }
    }),
    { numRuns: runsFor("checkpoint"), seed: SEED, timeout: CASE_MS },
  );
  report("loadModel (model.safetensors)", tally, started);
});

// ---------------------------------------------------------------------------------------------
// config.json

const CONFIG_KEYS = [...Object.keys(TINY_JSON), "vocab_size", "num_experts", "top_k", "extra_key"];

/** A value for a config key: any JSON, a nasty number, or a word one of the choice keys accepts. */
const configValue = fc.oneof(
  { weight: 3, arbitrary: nastyNumber },
  { weight: 2, arbitrary: fc.jsonValue() },
  { weight: 1, arbitrary: fc.constantFrom("cls", "patches", "conv", "linear", "head", "pre_norm", "seemoe") },
  {
    weight: 1,
    arbitrary: fc.array(fc.oneof(fc.string({ maxLength: 2 }), fc.constant(PAD), fc.integer()), {
      maxLength: 6,
    }),
  },
);

/** Sizes grown by a factor that keeps them whole and divisible: valid, but perhaps giant. */
const SIZE_KEYS = [
  "n_embd",
  "image_embed_dim",
  "n_layer",
  "num_blks",
  "block_positions",
  "img_size",
  "num_experts",
];
const grownSize = fc.record({
  key: fc.constantFrom(...SIZE_KEYS),
  factor: fc.integer({ min: 1, max: 30 }).chain((e) => fc.integer({ min: 2 ** (e - 1) + 1, max: 2 ** e })),
})
  .map(({ key, factor }) => ({ key, value: (TINY_JSON[key] as number) * factor as unknown }));

const keyEdit = fc.record({
  key: fc.constantFrom(...CONFIG_KEYS),
  value: fc.option(configValue, { freq: 5 }),
});

/** The vocabulary with one symbol replaced (by a repeat, "<pad>", several characters, none), or img_size
 * at its bound. */
const nearMiss = fc.oneof(
  fc.record({ at: fc.nat(), symbol: fc.oneof(fc.constantFrom(...VOCAB), fc.string({ maxLength: 3 })) })
    .map(({ at, symbol }) => ({
      key: "vocab",
      value: VOCAB.with(at % (VOCAB.length - 1), symbol) as unknown,
    })),
  fc.constantFrom(4092, 4096, 4100, 8192, 2 ** 20).map((value) => ({
    key: "img_size",
    value: value as unknown,
  })),
);

/** Up to three keys set to a new value, removed (null) or grown. */
const configEdits = fc.array(
  fc.oneof(
    { weight: 4, arbitrary: keyEdit },
    { weight: 1, arbitrary: grownSize },
    { weight: 1, arbitrary: nearMiss },
  ),
  { minLength: 1, maxLength: 3 },
);

/** The same without grown sizes: loadModel would spend seconds building a model just within the bounds. */
const smallConfigEdits = fc.array(keyEdit, { minLength: 1, maxLength: 3 });

/** A whole config of small sizes and random switches, mostly consistent: widths n_head × k, img_size
 * patches × patch_size. */
const smallConfig = fc.record({
  model_type: fc.constantFrom("seemore", "seemoe"),
  n_head: fc.integer({ min: 1, max: 4 }),
  headWidth: fc.integer({ min: 1, max: 12 }),
  imageHeadWidth: fc.integer({ min: 1, max: 24 }),
  n_layer: fc.integer({ min: 0, max: 2 }),
  num_blks: fc.integer({ min: 0, max: 2 }),
  patches: fc.integer({ min: 1, max: 4 }), // per side
  patch_size: fc.integer({ min: 1, max: 16 }),
  block_positions: fc.integer({ min: 1, max: 32 }),
  num_experts: fc.integer({ min: 1, max: 4 }),
  top_k: fc.integer({ min: 1, max: 4 }),
  dropout: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
  visual_tokens: fc.constantFrom("cls", "patches"),
  attention_scale: fc.constantFrom("width", "head"),
  residual: fc.constantFrom("original", "pre_norm"),
  patch_stem: fc.constantFrom("linear", "conv"),
  first_token_from_image: fc.boolean(),
  image_words: fc.subarray(["red", "star", "left"]),
}).map(({ headWidth, imageHeadWidth, patches, ...c }) => ({
  ...c,
  n_embd: c.n_head * headWidth,
  image_embed_dim: c.n_head * imageHeadWidth,
  img_size: patches * c.patch_size,
  vocab: VOCAB,
} as Record<string, unknown>));

function editConfig(edits: { key: string; value: unknown }[]): Record<string, unknown> {
  const json = structuredClone(TINY_JSON);
  for (const { key, value } of edits) {
    if (value === null) delete json[key];
    else json[key] = value;
  }
  return json;
}

/**
 * Each value of an accepted config has the type of its default (a key without a default, such as `init`: absent
 * or one of its choices); dropouts are probabilities.
 */
function assertWellTyped(model: ModelConfig): void {
  for (const [key, value] of Object.entries(DEFAULT_MODEL)) {
    if (value === undefined) continue; // checked below
    const got = model[key as keyof ModelConfig];
    assert.equal(typeof got, typeof value, `"${key}" is ${JSON.stringify(got)}`);
    assert.equal(Array.isArray(got), Array.isArray(value), `"${key}" is ${JSON.stringify(got)}`);
  }
  for (const [key, spec] of Object.entries(MODEL_KEYS)) {
    if (spec.default !== undefined) continue;
    const got = (model as unknown as Record<string, unknown>)[key];
    const choices = (spec as { choices?: readonly unknown[] }).choices;
    assert.ok(got === undefined || (choices ?? []).includes(got), `"${key}" is ${JSON.stringify(got)}`);
  }
  for (const key of ["dropout", "emb_dropout", "blk_dropout"] as const) {
    assert.ok(model[key] >= 0 && model[key] < 1, `"${key}" is ${model[key]}`);
  }
}

/** A config to parse, with the keys an error may blame, reported as its JSON. */
function configCase(json: Record<string, unknown>, keys: string[]) {
  return { json, keys, [fc.toStringMethod]: () => JSON.stringify(json) };
}
const edited = (edits: { key: string; value: unknown }[]) =>
  configCase(editConfig(edits), edits.map((e) => e.key));
const whole = (json: Record<string, unknown>) => configCase(json, Object.keys(json));

function assertNamesAKey(message: string, keys: string[]): void {
  assert.ok(keys.some((k) => message.includes(`"${k}"`)), `names none of ${keys.join(", ")}:\n${message}`);
}

Deno.test("fuzz: parseConfig accepts a buildable config within the bounds, or names the file and a key", async () => {
  const file = "fuzz/config.json";
  const tally = newTally();
  const started = performance.now();
  await fc.assert(
    fc.asyncProperty(fc.oneof(configEdits.map(edited), smallConfig.map(whole)), async ({ json, keys }) => {
      const outcome = await attempt(tally, () => parseConfig(json, file));
      if ("error" in outcome) {
        assertStartsWith(outcome.error.message, `${file}: `);
        return assertNamesAKey(outcome.error.message, keys);
      }
      // what is accepted is within the bounds, and a small one builds the model it describes, of the size
      // counted (n_layer 1.5 once built one layer)
      const { model, vocab } = outcome.value;
      assertWellTyped(model);
      new Tokenizer(vocab); // the vocabulary makes a tokenizer: one character per symbol, none twice
      const n = parameterCount(model);
      assert.ok(n <= MAX_PARAMETERS, `a config of ${n} parameters was accepted`);
      assert.ok(model.img_size <= MAX_IMG_SIZE, `img_size ${model.img_size} was accepted`);
      if (n > 100_000) return;
      const built = buildModel(model);
      const held = built.variables().reduce((sum, v) => sum + v.size, 0);
      built.dispose();
      assert.equal(held, n, "the built model holds another number of parameters than its config describes");
    }),
    { numRuns: runsFor("config"), seed: SEED, timeout: CASE_MS },
  );
  report("parseConfig", tally, started);
});

/**
 * Parameters beyond which a valid model takes seconds to build (a key left out means the original's
 * value: image_embed_dim 512 with num_blks 14 is 44 M parameters). parseConfig's test holds them to the bounds.
 */
const BIG = 2 ** 22;

function isBig(text: string): boolean {
  try {
    return parameterCount(parseConfig(JSON.parse(text), "config.json").model) > BIG;
  } catch {
    return false;
  }
}

Deno.test("fuzz: loadModel on a mutated config.json builds the model or names config.json or the tensors", async () => {
  const folder = join(dir, "config");
  Deno.mkdirSync(folder);
  Deno.writeFileSync(join(folder, "model.safetensors"), VALID_WEIGHTS);
  const configFile = join(folder, "config.json");
  const tally = newTally();
  const started = performance.now();
  const configText = fc.oneof(
    {
      weight: 8,
      arbitrary: smallConfigEdits.map((edits) => ({ text: JSON.stringify(editConfig(edits)), edits })),
    },
    { weight: 1, arbitrary: fc.jsonValue().map((v) => ({ text: JSON.stringify(v) ?? "", edits: [] })) },
    {
      weight: 1,
      arbitrary: fc.string({ unit: "binary", maxLength: 30 }).map((text) => ({ text, edits: [] })),
    },
  );
  await fc.assert(
    fc.asyncProperty(configText, async ({ text, edits }) => {
      if (isBig(text)) return void tally.skipped++;
      Deno.writeTextFileSync(configFile, text);
      const before = tf.memory().numTensors;
      const outcome = await attempt(tally, () => loadModel(folder));
      if ("value" in outcome) outcome.value.model.dispose();
      assert.equal(tf.memory().numTensors, before, "a model left tensors behind");
      if (!("error" in outcome)) return;
      const message = outcome.error.message;
      if (message.startsWith(`${folder}/model.safetensors: `)) return; // the config describes another model
      assertStartsWith(message, `${configFile}: `);
      if (edits.length > 0 && !message.includes("invalid JSON")) {
        assertNamesAKey(
          message,
          edits.map((e) => e.key),
        );
      }
    }),
    { numRuns: runsFor("configFolder"), seed: SEED, timeout: CASE_MS },
  );
  report("loadModel (config.json)", tally, started, `valid configs of over ${BIG} parameters`);
});

// ---------------------------------------------------------------------------------------------
// images: PNG/JPEG bytes, valid, damaged, or declaring giant sizes

async function encoded(
  width: number,
  height: number,
  channels: 1 | 2 | 3 | 4,
  format: string,
): Promise<Uint8Array> {
  const raw = new Uint8Array(width * height * channels).map((_, i) => (i * 37) % 256);
  const image = sharp(raw, { raw: { width, height, channels } });
  const out = format === "jpeg"
    ? image.jpeg()
    : format === "gif"
    ? image.gif()
    : image.png(format === "palette" ? { palette: true, colours: 4 } : {});
  return new Uint8Array(await out.toBuffer());
}

const VALID_IMAGES = [
  await encoded(5, 7, 1, "png"),
  await encoded(9, 4, 4, "png"),
  await encoded(6, 6, 3, "palette"),
  await encoded(12, 10, 3, "jpeg"),
  await encoded(4, 4, 3, "gif"),
];
const SHORT_IDAT = zlib.deflateSync(new Uint8Array(4 * 5)); // 4 rows of 4 grey pixels: too few for most sizes

interface ImageCase extends Made {
  pristine: boolean; // a valid image within the size limit, which must decode
  pixels?: number; // the size a built PNG declares
}

const VALID_IMAGE = fc.nat({ max: VALID_IMAGES.length - 1 }); // an index into VALID_IMAGES

/** A side length: small, or so large that two of them pass MAX_IMAGE_PIXELS (4097² > 2^24). */
const side = fc.oneof(fc.integer({ min: 1, max: 16 }), fc.integer({ min: 4097, max: 20000 }));

/** A grey PNG declaring width × height: all its black pixels (a few kB however large), or too few. */
const declaredSize: fc.Arbitrary<ImageCase> = fc.oneof(
  fc.record({ width: side, height: side, bitDepth: fc.constantFrom(1, 8) }).map(
    ({ width, height, bitDepth }) => {
      const bytes = greyPng(
        width,
        height,
        bitDepth,
        zerosZlib((Math.ceil((width * bitDepth) / 8) + 1) * height),
      );
      const how = `a black ${width} × ${height} PNG, ${bitDepth} bit`;
      return { ...made(bytes, how), pristine: width * height <= MAX_IMAGE_PIXELS, pixels: width * height };
    },
  ),
  fc.record({
    width: fc.oneof(side, fc.integer({ min: 0, max: 2 ** 31 - 1 })),
    height: fc.oneof(side, fc.integer({ min: 0, max: 2 ** 31 - 1 })),
  }).map(({ width, height }) => ({
    ...made(greyPng(width, height, 8, SHORT_IDAT), `a PNG declaring ${width} × ${height} with 16 pixels`),
    pristine: false,
    pixels: width * height,
  })),
);

/** Mutated image bytes: flipped, cut short, extended, declaring giant sizes, noise. */
const mutatedImage: fc.Arbitrary<ImageCase> = fc.oneof(
  VALID_IMAGE.map((i) => ({ ...made(VALID_IMAGES[i], `valid image ${i}`), pristine: true })),
  fc.tuple(VALID_IMAGE, byteEdits).map(([i, edits]) => ({
    ...made(
      flipBytes(VALID_IMAGES[i], edits),
      `valid image ${i} with bytes set ${describeEdits(edits, VALID_IMAGES[i].length)}`,
    ),
    pristine: false,
  })),
  fc.tuple(VALID_IMAGE, fc.nat()).map(([i, cut]) => ({
    ...made(VALID_IMAGES[i].subarray(0, cut % VALID_IMAGES[i].length), `valid image ${i} cut short`),
    pristine: false,
  })),
  fc.tuple(VALID_IMAGE, fc.uint8Array({ minLength: 1, maxLength: 32 })).map(([i, extra]) => ({
    ...made(new Uint8Array([...VALID_IMAGES[i], ...extra]), `valid image ${i} + [${extra}]`),
    pristine: false,
  })),
  declaredSize,
  fc.uint8Array({ maxLength: 64 }).map((bytes) => ({ ...made(bytes, `bytes [${bytes}]`), pristine: false })),
);

Deno.test("fuzz: decodeImage decodes or names the file, row and column", async () => {
  const where = { file: "fuzz/data.csv", row: 3, column: IMAGE_COLUMN };
  const at = `fuzz/data.csv, row 3, column "${IMAGE_COLUMN}": `;
  const tally = newTally();
  const started = performance.now();
  await fc.assert(
    fc.asyncProperty(mutatedImage, async ({ bytes, pristine, pixels }) => {
      const outcome = await attempt(tally, () => decodeImage(bytes, 8, where));
      if ("error" in outcome) {
        assert.ok(!pristine, `a valid image was refused: ${outcome.error.message}`);
        return assertStartsWith(outcome.error.message, at);
      }
      assert.ok(!(pixels! > MAX_IMAGE_PIXELS), `an image of ${pixels} pixels was decoded`);
      assert.equal(outcome.value.length, 3 * 8 * 8);
      assert.ok(outcome.value.every(Number.isFinite), "non-finite pixel values");
    }),
    { numRuns: runsFor("image"), seed: SEED, timeout: CASE_MS },
  );
  report("decodeImage", tally, started);
});

// ---------------------------------------------------------------------------------------------
// CSV rows: base64 images and captions, through ImageCaptionDataset.fromCsv

const CSV_TOKENIZER = new Tokenizer(VOCAB);
const MAX_LEN = 24; // decoder positions: captions up to 23 characters fit beside the visual token
const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64");

/** A base64 cell: a valid image, its base64 text damaged, a damaged image, or any text. */
const imageCell: fc.Arbitrary<{ text: string; pristine: boolean }> = fc.oneof(
  {
    weight: 10,
    arbitrary: VALID_IMAGE.map((i) => ({ text: b64(VALID_IMAGES[i]), pristine: true })),
  },
  {
    weight: 2,
    arbitrary: mutatedImage.map(({ bytes, pristine }) => ({ text: b64(bytes), pristine })),
  },
  {
    weight: 2,
    arbitrary: fc.tuple(
      VALID_IMAGE.map((i) => VALID_IMAGES[i]),
      fc.nat(),
      fc.nat(),
      fc.constantFrom("", "=", "==", "!", "-", "_", " ", "\n", "A", "data:image/png;base64,", "é", "\0"),
    ).map(([bytes, at, cut, insert]) => {
      const text = b64(bytes);
      const i = at % text.length;
      return { text: text.slice(0, i) + insert + text.slice(i + (cut % 3)), pristine: false };
    }),
  },
  {
    weight: 1,
    arbitrary: fc.string({ unit: "binary", maxLength: 12 }).map((text) => ({ text, pristine: false })),
  },
);

/** A caption: in the vocabulary and short enough, or not. */
const captionCell: fc.Arbitrary<{ text: string; pristine: boolean }> = fc.oneof(
  {
    weight: 12,
    arbitrary: fc.string({ unit: fc.constantFrom(..."abc ."), minLength: 1, maxLength: 23 }).map((text) => ({
      text,
      pristine: true,
    })),
  },
  {
    weight: 1,
    arbitrary: fc.string({ unit: fc.constantFrom(..."abc ."), minLength: 24, maxLength: 40 }).map((text) => ({
      text,
      pristine: false,
    })),
  },
  {
    weight: 2,
    arbitrary: fc.string({ unit: "binary", maxLength: 12 }).map((text) => ({ text, pristine: false })),
  },
);

/** CSV quoting for one cell (always quoted when it holds a separator, a quote or a line break). */
function quote(text: string, always: boolean): string {
  return always || /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

const csvCase = fc.record({
  rows: fc.array(fc.record({ image: imageCell, caption: captionCell, extra: fc.string({ maxLength: 4 }) }), {
    minLength: 1,
    maxLength: 4,
  }),
  columns: fc.oneof(
    { weight: 4, arbitrary: fc.shuffledSubarray([IMAGE_COLUMN, "caption", "id"], { minLength: 2 }) },
    { weight: 1, arbitrary: fc.shuffledSubarray([IMAGE_COLUMN, "caption", "id", "Caption", ""]) },
  ),
  quoteAll: fc.boolean(),
  bom: fc.boolean(),
  lineEnd: fc.constantFrom("\n", "\r\n"),
  // structural damage: a stray character inserted into the CSV text (a quote, a separator, a line break)
  damage: fc.oneof(
    { weight: 3, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.tuple(fc.nat(), fc.constantFrom('"', ",", "\n", "\r", '""', "\0", "\ufeff")) },
  ),
});
type CsvCase = typeof csvCase extends fc.Arbitrary<infer T> ? T : never;

function csvText({ rows, columns, quoteAll, bom, lineEnd, damage }: CsvCase): string {
  const cell = (row: CsvCase["rows"][number], column: string) =>
    column === IMAGE_COLUMN ? row.image.text : column === "caption" ? row.caption.text : row.extra;
  const lines = [
    columns.join(","),
    ...rows.map((row) => columns.map((c) => quote(cell(row, c), quoteAll)).join(",")),
  ];
  let text = (bom ? "\ufeff" : "") + lines.join(lineEnd) + lineEnd;
  if (damage) {
    const [at, insert] = damage;
    const i = at % text.length;
    text = text.slice(0, i) + insert + text.slice(i);
  }
  return text;
}

Deno.test("fuzz: ImageCaptionDataset.fromCsv loads or names the file (and the row and column at fault)", async () => {
  const path = join(dir, "data.csv");
  const tally = newTally();
  const started = performance.now();
  await fc.assert(
    fc.asyncProperty(csvCase, async (c) => {
      Deno.writeTextFileSync(path, csvText(c));
      const outcome = await attempt(
        tally,
        () => ImageCaptionDataset.fromCsv(path, CSV_TOKENIZER, 8, { maxLen: MAX_LEN, concurrency: 2 }),
      );
      const wellFormed = !c.damage && c.columns.includes(IMAGE_COLUMN) && c.columns.includes("caption");
      if ("value" in outcome) {
        const data = outcome.value;
        assert.equal(data.images.length, data.length * 3 * 8 * 8);
        assert.ok(data.images.every(Number.isFinite), "non-finite pixel values");
        if (wellFormed) assert.deepEqual(data.captions, c.rows.map((r) => r.caption.text));
        return;
      }
      const message = outcome.error.message;
      assertStartsWith(message, path);
      if (!wellFormed) return;
      // a well-formed table fails only on a damaged cell, and says which
      const cellAt = message.match(/^[^\n]*?, row (\d+), column "([^"]+)": /);
      assert.ok(cellAt, `a well-formed table failed without naming a cell:\n${message}`);
      const row = c.rows[Number(cellAt[1]) - 1];
      assert.ok(row, `row ${cellAt[1]} is not in the table:\n${message}`);
      const pristine = cellAt[2] === IMAGE_COLUMN ? row.image.pristine : row.caption.pristine;
      assert.ok(!pristine, `the named cell is valid:\n${message}`);
    }),
    { numRuns: runsFor("csv"), seed: SEED, timeout: CASE_MS },
  );
  report("ImageCaptionDataset.fromCsv", tally, started);
});

Deno.test("fuzz: readImageCaptionCsv on damaged bytes reads the two columns or names the file", async () => {
  const path = join(dir, "bytes.csv");
  const valid = new TextEncoder().encode(
    csvText({
      rows: [0, 1, 2].map((i) => ({
        image: { text: b64(VALID_IMAGES[i]), pristine: true },
        caption: { text: "a b.", pristine: true },
        extra: `"${i}"`,
      })),
      columns: ["id", IMAGE_COLUMN, "caption"],
      quoteAll: false,
      bom: false,
      lineEnd: "\n",
      damage: null,
    }),
  );
  const bytes = fc.oneof(
    fc.tuple(byteEdits, fc.boolean()).map(([edits, header]) =>
      flipBytes(valid, edits, header ? 40 : valid.length)
    ),
    fc.nat().map((cut) => valid.subarray(0, cut % valid.length)),
    fc.uint8Array({ maxLength: 64 }),
    fc.string({ unit: "binary", maxLength: 64 }).map((text) => new TextEncoder().encode(text)),
  );
  const tally = newTally();
  const started = performance.now();
  await fc.assert(
    fc.asyncProperty(bytes, async (data) => {
      Deno.writeFileSync(path, data);
      const outcome = await attempt(tally, () => readImageCaptionCsv(path));
      if ("error" in outcome) return assertStartsWith(outcome.error.message, path);
      const table = outcome.value;
      assert.ok(table.images.length > 0 && table.images.length === table.captions.length);
      assert.ok(
        [...table.images, ...table.captions].every((cell) => typeof cell === "string" && cell.length > 0),
      );
    }),
    { numRuns: runsFor("csvBytes"), seed: SEED, timeout: CASE_MS },
  );
  report("readImageCaptionCsv", tally, started);
});
