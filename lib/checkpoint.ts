// Checkpoint I/O, independent of the model: a checkpoint is a folder holding `config.json`
// (the architecture, pretty-printed) and `model.safetensors` (the weights, F32).
//
// safetensors layout: 8-byte little-endian u64 header length N | N bytes of UTF-8 JSON header |
// data buffer. Each header entry is {"dtype", "shape", "data_offsets": [begin, end]} with offsets
// relative to the data buffer; an optional "__metadata__" entry maps strings to strings.
// We write exactly what Python's safetensors writes: tensors sorted by name (byte order), packed
// contiguously, header JSON without spaces and padded with spaces to a multiple of 8 bytes.
// Plain typed arrays only: the model converts to and from tfjs tensors.

import { basename, join } from "node:path";

export interface NamedTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export interface LoadedTensor {
  shape: number[];
  data: Float32Array;
}

export const CONFIG_FILE = "config.json";
export const WEIGHTS_FILE = "model.safetensors";

const MAX_HEADER_BYTES = 100_000_000; // the reference implementation's limit
const HEADER_ALIGN = 8;
const METADATA_KEY = "__metadata__";

/** Bytes per element of every safetensors dtype; the float ones are the ones we can load. */
const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};
const LOADABLE_DTYPES = ["F32", "F16", "BF16", "F64"];

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const utf8 = new TextEncoder();

// ---------------------------------------------------------------------------------------------
// helpers

function fail(file: string, message: string): never {
  throw new Error(`${file}: ${message}`);
}

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function isShape(shape: unknown): shape is number[] {
  return Array.isArray(shape) && shape.every((d) => Number.isSafeInteger(d) && d >= 0);
}

function numel(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/** Order of Rust's String comparison: by UTF-8 bytes (differs from JS `<` outside the BMP). */
function compareUtf8(a: string, b: string): number {
  const x = utf8.encode(a), y = utf8.encode(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

// ---------------------------------------------------------------------------------------------
// encode

function checkTensorToWrite(t: NamedTensor, seen: Set<string>, file: string): void {
  if (typeof t.name !== "string" || t.name.length === 0) fail(file, "a tensor has an empty name");
  if (t.name === METADATA_KEY) fail(file, `"${METADATA_KEY}" is reserved and cannot name a tensor`);
  if (seen.has(t.name)) fail(file, `tensor "${t.name}" appears twice`);
  seen.add(t.name);
  if (!isShape(t.shape)) {
    fail(file, `tensor "${t.name}" has an invalid shape ${JSON.stringify(t.shape)}`);
  }
  if (!(t.data instanceof Float32Array)) fail(file, `tensor "${t.name}" data is not a Float32Array`);
  const n = numel(t.shape);
  if (t.data.length !== n) {
    fail(
      file,
      `tensor "${t.name}" has shape ${shapeText(t.shape)} (${n} values) but its data holds ` +
        `${t.data.length} values`,
    );
  }
}

/** The JSON header, keys in the order given (JSON.stringify would move integer-like keys first). */
function headerJson(
  sorted: NamedTensor[],
  offsets: [number, number][],
  metadata?: Record<string, string>,
): string {
  const entries: string[] = [];
  if (metadata !== undefined) {
    const keys = Object.keys(metadata).sort(compareUtf8);
    const pairs = keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`);
    entries.push(`"${METADATA_KEY}":{${pairs.join(",")}}`);
  }
  sorted.forEach((t, i) => {
    const [begin, end] = offsets[i];
    entries.push(
      `${JSON.stringify(t.name)}:{"dtype":"F32","shape":[${t.shape.join(",")}],` +
        `"data_offsets":[${begin},${end}]}`,
    );
  });
  return `{${entries.join(",")}}`;
}

function writeFloats(out: Uint8Array, at: number, data: Float32Array): void {
  if (LITTLE_ENDIAN_HOST) {
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at);
    return;
  }
  const view = new DataView(out.buffer, out.byteOffset + at, data.byteLength);
  for (let i = 0; i < data.length; i++) view.setFloat32(4 * i, data[i], true);
}

function encodeFor(
  tensors: NamedTensor[],
  metadata: Record<string, string> | undefined,
  file: string,
): Uint8Array {
  const seen = new Set<string>();
  for (const t of tensors) checkTensorToWrite(t, seen, file);
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") fail(file, `metadata "${k}" is not a string`);
    }
  }
  const sorted = [...tensors].sort((a, b) => compareUtf8(a.name, b.name));
  const offsets: [number, number][] = [];
  let dataBytes = 0;
  for (const t of sorted) {
    offsets.push([dataBytes, dataBytes + t.data.byteLength]);
    dataBytes += t.data.byteLength;
  }
  let header = headerJson(sorted, offsets, metadata);
  const headerBytes0 = utf8.encode(header).length;
  header += " ".repeat((HEADER_ALIGN - (headerBytes0 % HEADER_ALIGN)) % HEADER_ALIGN);
  const headerBytes = utf8.encode(header);

  const out = new Uint8Array(8 + headerBytes.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  const dataStart = 8 + headerBytes.length;
  sorted.forEach((t, i) => writeFloats(out, dataStart + offsets[i][0], t.data));
  return out;
}

/** Serialises F32 tensors to safetensors bytes (sorted by name, as Python's safetensors does). */
export function encodeSafetensors(tensors: NamedTensor[], metadata?: Record<string, string>): Uint8Array {
  return encodeFor(tensors, metadata, "safetensors");
}

// ---------------------------------------------------------------------------------------------
// decode

interface HeaderEntry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

function readHeader(bytes: Uint8Array, file: string): { header: Record<string, unknown>; dataStart: number } {
  if (bytes.length < 8) {
    fail(file, `file is ${bytes.length} bytes, shorter than the 8-byte header length (not safetensors?)`);
  }
  const n64 = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER_BYTES)) {
    fail(file, `oversized header: it declares ${n64} bytes (limit ${MAX_HEADER_BYTES}); not safetensors?`);
  }
  const n = Number(n64);
  if (8 + n > bytes.length) {
    fail(file, `header length ${n} runs past the end of the file (${bytes.length} bytes): truncated file?`);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n));
  } catch {
    fail(file, "header is not valid UTF-8");
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    fail(file, `header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail(file, "header is not a JSON object");
  }
  return { header: header as Record<string, unknown>, dataStart: 8 + n };
}

function checkMetadata(value: unknown, file: string): void {
  const ok = typeof value === "object" && value !== null && !Array.isArray(value) &&
    Object.values(value).every((v) => typeof v === "string");
  if (!ok) fail(file, `"${METADATA_KEY}" must map strings to strings`);
}

function parseEntry(name: string, value: unknown, file: string): HeaderEntry {
  const where = `tensor "${name}"`;
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    fail(file, `${where}: header entry is not an object`);
  }
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (typeof dtype !== "string") fail(file, `${where}: missing dtype`);
  if (!(dtype in DTYPE_BYTES)) fail(file, `${where}: unknown dtype ${JSON.stringify(dtype)}`);
  if (!LOADABLE_DTYPES.includes(dtype)) {
    fail(file, `${where}: dtype ${dtype} is not supported (only ${LOADABLE_DTYPES.join(", ")})`);
  }
  if (!isShape(shape)) fail(file, `${where}: invalid shape ${JSON.stringify(shape)}`);
  if (!isShape(offsets) || offsets.length !== 2) {
    fail(file, `${where}: data_offsets must be two non-negative integers, got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets;
  if (end < begin) fail(file, `${where}: data_offsets [${begin}, ${end}] end before they begin`);
  const nbytes = numel(shape) * DTYPE_BYTES[dtype];
  if (!Number.isSafeInteger(nbytes) || end - begin !== nbytes) {
    fail(
      file,
      `${where}: shape ${shapeText(shape)} × ${dtype} needs ${nbytes} bytes but data_offsets ` +
        `[${begin}, ${end}] span ${end - begin}`,
    );
  }
  return { name, dtype, shape, begin, end };
}

/** Every tensor inside the data buffer, none overlapping, no gaps, nothing after the last one. */
function checkLayout(entries: HeaderEntry[], dataLength: number, file: string): void {
  for (const e of entries) {
    if (e.end > dataLength) {
      fail(
        file,
        `tensor "${e.name}": data_offsets [${e.begin}, ${e.end}] lie outside the ${dataLength}-byte ` +
          `data buffer (truncated file?)`,
      );
    }
  }
  const byOffset = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let position = 0;
  let previous: HeaderEntry | undefined;
  for (const e of byOffset) {
    if (e.begin < position) {
      fail(
        file,
        `tensor "${e.name}": data_offsets [${e.begin}, ${e.end}] overlap those of tensor ` +
          `"${previous!.name}" [${previous!.begin}, ${previous!.end}]`,
      );
    }
    if (e.begin > position) {
      fail(file, `tensor "${e.name}": gap of ${e.begin - position} unused bytes before its data`);
    }
    position = e.end;
    previous = e;
  }
  if (position !== dataLength) {
    fail(file, `${dataLength - position} bytes after the last tensor's data (corrupt file?)`);
  }
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24; // zero and subnormals
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** Copies a tensor's bytes into a fresh (hence aligned) Float32Array, converting F16/BF16/F64. */
function toFloat32(raw: Uint8Array, dtype: string, n: number): Float32Array {
  const out = new Float32Array(n);
  if (dtype === "F32" && LITTLE_ENDIAN_HOST) {
    new Uint8Array(out.buffer).set(raw);
    return out;
  }
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (dtype === "F32") {
    for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
  } else if (dtype === "F64") {
    for (let i = 0; i < n; i++) out[i] = view.getFloat64(8 * i, true);
  } else if (dtype === "F16") {
    for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
  } else { // BF16: the top 16 bits of an F32
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) bits[i] = view.getUint16(2 * i, true) << 16;
  }
  return out;
}

/** Parses and validates safetensors bytes; `file` names the source in every error. */
export function decodeSafetensors(bytes: Uint8Array, file: string): Map<string, LoadedTensor> {
  const { header, dataStart } = readHeader(bytes, file);
  const entries: HeaderEntry[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === METADATA_KEY) checkMetadata(value, file);
    else entries.push(parseEntry(name, value, file));
  }
  const data = bytes.subarray(dataStart);
  checkLayout(entries, data.length, file);

  const tensors = new Map<string, LoadedTensor>();
  for (const e of entries) {
    const raw = data.subarray(e.begin, e.end);
    tensors.set(e.name, { shape: e.shape, data: toFloat32(raw, e.dtype, numel(e.shape)) });
  }
  return tensors;
}

// ---------------------------------------------------------------------------------------------
// checking a checkpoint against a model

const MAX_LISTED = 20;

/** Throws unless `got` holds exactly the `expected` names, each with the expected shape. */
export function checkTensors(
  expected: Map<string, number[]>,
  got: Map<string, { shape: number[] }>,
  file: string,
): void {
  const problems: string[] = [];
  for (const [name, shape] of expected) {
    const found = got.get(name);
    if (found === undefined) {
      problems.push(`missing tensor "${name}" (expected shape ${shapeText(shape)})`);
    } else if (
      found.shape.length !== shape.length || found.shape.some((d, i) => d !== shape[i])
    ) {
      problems.push(
        `tensor "${name}" has shape ${shapeText(found.shape)}, expected ${shapeText(shape)}`,
      );
    }
  }
  for (const [name, t] of got) {
    if (!expected.has(name)) problems.push(`unexpected tensor "${name}" (shape ${shapeText(t.shape)})`);
  }
  if (problems.length === 0) return;
  const listed = problems.slice(0, MAX_LISTED);
  if (problems.length > MAX_LISTED) listed.push(`... and ${problems.length - MAX_LISTED} more`);
  fail(file, `checkpoint does not match the model:\n  ${listed.join("\n  ")}`);
}

// ---------------------------------------------------------------------------------------------
// checkpoint folders

function configText(config: Record<string, unknown>, file: string): string {
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    fail(file, "config must be a plain object");
  }
  const text = JSON.stringify(config, (key, value) => {
    if (typeof value === "number" && !Number.isFinite(value)) {
      fail(file, `config value "${key}" is ${value}, which JSON cannot hold`);
    }
    return value;
  }, 2);
  return text + "\n";
}

// ---------------------------------------------------------------------------------------------
// committing a group of files: a redo journal
//
// A checkpoint's files (config, weights and, for a training run, optimizer state and metrics) must change
// together: after a crash at any moment the folder holds all the old files or all the new ones.
//   1. every new file is written under a temporary name beside its target and fsynced;
//   2. a commit record naming each (temporary, target) pair is written, fsynced and renamed to
//      COMMIT_FILE — the commit point;
//   3. each temporary is renamed onto its target;
//   4. the record is removed.
// A crash before 2 leaves the old files (and temporaries, removed by the next commit or recovery). A crash
// after it leaves the record: readers read through it (a listed temporary that still exists is the file's
// new content) and recoverFolder rolls it forward (renames what is left, removes the record).

/** The commit record of a checkpoint folder while a group of files is being replaced. */
export const COMMIT_FILE = ".commit.json";
/** Temporaries: `.<name>.<uuid>.tmp`. */
const TEMP_NAME = /^\..+\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.tmp$/;

interface PendingFile {
  temp: string; // names inside the folder, so a moved folder still recovers
  name: string;
}

function tempName(name: string): string {
  return `.${name}.${crypto.randomUUID()}.tmp`;
}

async function writeSynced(path: string, bytes: Uint8Array): Promise<void> {
  using f = await Deno.open(path, { write: true, createNew: true });
  let written = 0;
  while (written < bytes.length) written += await f.write(bytes.subarray(written));
  await f.syncData();
}

/** Makes renames and removals in `dir` durable (best effort: not every platform can open a folder). */
async function syncFolder(dir: string): Promise<void> {
  try {
    using d = await Deno.open(dir, { read: true });
    await d.sync();
  } catch {
    // Windows cannot fsync a folder; a process crash loses nothing without it.
  }
}

/**
 * Test hook: SEEMORE_TEST_SLOW_SAVE_MS=N sleeps N ms before each step of a commit after the temporaries
 * are written (before the record, before each rename, before removing the record), so that a test can
 * kill the process inside a checkpoint write. Unset, it costs nothing.
 */
function slowSaveMs(): number {
  const name = "SEEMORE_TEST_SLOW_SAVE_MS";
  try {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") return 0;
    return Number(Deno.env.get(name) ?? 0) || 0;
  } catch {
    return 0;
  }
}

/** The pending commit record of `dir`, or undefined when there is none. */
async function readCommitRecord(dir: string): Promise<PendingFile[] | undefined> {
  const path = join(dir, COMMIT_FILE);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    fail(path, `cannot read the commit record: ${(e as Error).message}`);
  }
  let files: unknown;
  try {
    files = JSON.parse(text).files;
  } catch (e) {
    fail(path, `commit record is not valid JSON: ${(e as Error).message}`);
  }
  const ok = Array.isArray(files) &&
    files.every((f) =>
      typeof f?.temp === "string" && TEMP_NAME.test(f.temp) && typeof f?.name === "string" &&
      f.name === basename(f.name) && !f.name.startsWith(".")
    );
  if (!ok) fail(path, `commit record must list {"temp", "name"} pairs of files in ${dir}`);
  return files as PendingFile[];
}

/**
 * Finishes a commit that a crash interrupted (renames what the record lists, removes the record) and
 * removes temporaries left by a crash before a commit point. For the one process that writes `dir`;
 * readers need not call it (loadCheckpoint and readCommitted read through a pending record).
 */
export async function recoverFolder(dir: string): Promise<void> {
  const pending = await readCommitRecord(dir);
  if (pending) {
    for (const { temp, name } of pending) {
      try {
        await Deno.rename(join(dir, temp), join(dir, name));
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
        // Renamed before the crash; the target must then be there.
        await Deno.stat(join(dir, name)).catch(() =>
          fail(join(dir, name), `missing, and so is ${temp}, which ${join(dir, COMMIT_FILE)} names`)
        );
      }
    }
    await syncFolder(dir);
    await Deno.remove(join(dir, COMMIT_FILE));
  }
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile && TEMP_NAME.test(entry.name)) await Deno.remove(join(dir, entry.name));
  }
  await syncFolder(dir);
}

/**
 * Replaces the files `[name, bytes]` in `dir` (which must exist) as one group: after a crash at any
 * moment the folder reads as all the old files or all the new ones. A pending commit is finished first.
 */
export async function commitFiles(dir: string, files: [string, Uint8Array][]): Promise<void> {
  await recoverFolder(dir);
  const pending: PendingFile[] = files.map(([name]) => ({ temp: tempName(name), name }));
  const slow = slowSaveMs();
  const pause = () => slow > 0 ? new Promise((r) => setTimeout(r, slow)) : Promise.resolve();
  const recordTemp = tempName(COMMIT_FILE);
  try {
    for (const [name] of files) {
      const info = await Deno.lstat(join(dir, name)).catch(() => undefined);
      if (info && !info.isFile) fail(join(dir, name), "cannot replace it: not a regular file");
    }
    for (let i = 0; i < files.length; i++) await writeSynced(join(dir, pending[i].temp), files[i][1]);
    await pause();
    await writeSynced(join(dir, recordTemp), utf8.encode(JSON.stringify({ files: pending }) + "\n"));
  } catch (e) {
    for (const temp of [...pending.map((p) => p.temp), recordTemp]) {
      await Deno.remove(join(dir, temp)).catch(() => {});
    }
    throw e;
  }
  await Deno.rename(join(dir, recordTemp), join(dir, COMMIT_FILE)); // the commit point
  await syncFolder(dir);
  for (const { temp, name } of pending) {
    await pause();
    await Deno.rename(join(dir, temp), join(dir, name));
  }
  await syncFolder(dir);
  await pause();
  await Deno.remove(join(dir, COMMIT_FILE));
  await syncFolder(dir);
}

/**
 * Reads `name` from a checkpoint folder as last committed: through a pending commit record, if any,
 * without changing the folder (so it is safe while another process saves there).
 */
export async function readCommitted(dir: string, name: string): Promise<Uint8Array> {
  const path = join(dir, name);
  const pending = (await readCommitRecord(dir))?.find((f) => f.name === name);
  if (pending) {
    try {
      return await Deno.readFile(join(dir, pending.temp));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) fail(path, `cannot read: ${(e as Error).message}`);
      // already renamed onto `name`
    }
  }
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) fail(path, `missing ${name} in checkpoint folder ${dir}`);
    fail(path, `cannot read: ${(e as Error).message}`);
  }
}

/**
 * Saves `config.json` and `model.safetensors` into `dir` (created if missing), with any `alongside` files
 * (e.g. a training run's optimizer state), as one group: never half-written, never mixed with an older save.
 */
export async function saveCheckpoint(
  dir: string,
  config: Record<string, unknown>,
  tensors: NamedTensor[],
  alongside: [string, Uint8Array][] = [],
): Promise<void> {
  // Everything is validated and encoded before the disk is touched.
  const configBytes = utf8.encode(configText(config, join(dir, CONFIG_FILE)));
  const weightBytes = encodeFor(tensors, undefined, join(dir, WEIGHTS_FILE));
  try {
    await Deno.mkdir(dir, { recursive: true });
    await commitFiles(dir, [[WEIGHTS_FILE, weightBytes], [CONFIG_FILE, configBytes], ...alongside]);
  } catch (e) {
    throw new Error(`${dir}: could not save checkpoint: ${(e as Error).message}`, { cause: e });
  }
}

/** Loads a checkpoint folder; every error names the folder or file at fault. */
export async function loadCheckpoint(
  dir: string,
): Promise<{ config: Record<string, unknown>; tensors: Map<string, LoadedTensor> }> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) fail(dir, "checkpoint folder not found");
    fail(dir, `cannot open checkpoint folder: ${(e as Error).message}`);
  }
  if (!info.isDirectory) fail(dir, "checkpoint path is not a folder");

  const configPath = join(dir, CONFIG_FILE);
  const configBytes = await readCommitted(dir, CONFIG_FILE);
  let config: unknown;
  try {
    config = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(configBytes));
  } catch (e) {
    fail(configPath, `invalid JSON: ${(e as Error).message}`);
  }
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    fail(configPath, "expected a JSON object");
  }

  const weightsPath = join(dir, WEIGHTS_FILE);
  const tensors = decodeSafetensors(await readCommitted(dir, WEIGHTS_FILE), weightsPath);
  return { config: config as Record<string, unknown>, tensors };
}
