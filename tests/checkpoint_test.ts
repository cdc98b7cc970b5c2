// Tests for lib/checkpoint.ts: safetensors bytes against hand-built files and files written by
// Python's safetensors, validation errors, atomic saves (a group of files committed through a redo
// journal) and checkpoint/model shape checks.

// node: built-ins rather than jsr:@std, which this machine cannot fetch.
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  checkTensors,
  COMMIT_FILE,
  decodeSafetensors,
  encodeSafetensors,
  loadCheckpoint,
  type NamedTensor,
  readCommitted,
  recoverFolder,
  saveCheckpoint,
} from "../lib/checkpoint.ts";

// ---------------------------------------------------------------------------------------------
// hand-built files, written byte by byte per the format

/** 8-byte little-endian header length, the header text, then the data buffer. */
function buildFile(header: string, data: Uint8Array = new Uint8Array()): Uint8Array {
  const headerBytes = new TextEncoder().encode(header);
  const n = headerBytes.length;
  const out = new Uint8Array(8 + n + data.length);
  for (let i = 0; i < 4; i++) out[i] = (n >>> (8 * i)) & 0xff; // bytes 4..7 stay 0
  out.set(headerBytes, 8);
  out.set(data, 8 + n);
  return out;
}

function f32Bytes(values: number[]): Uint8Array {
  const out = new Uint8Array(4 * values.length);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setFloat32(4 * i, v, true));
  return out;
}

function u16Bytes(values: number[]): Uint8Array {
  const out = new Uint8Array(2 * values.length);
  values.forEach((v, i) => {
    out[2 * i] = v & 0xff;
    out[2 * i + 1] = v >> 8;
  });
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function entry(dtype: string, shape: number[], begin: number, end: number): string {
  return `{"dtype":"${dtype}","shape":[${shape}],"data_offsets":[${begin},${end}]}`;
}

function assertMessageHas(error: unknown, parts: string[]): void {
  assert.ok(error instanceof Error, `expected an Error, got ${error}`);
  for (const part of parts) {
    assert.ok(error.message.includes(part), `message ${JSON.stringify(error.message)} lacks "${part}"`);
  }
}

/** Asserts that fn throws an Error whose message contains every part. */
function assertThrowsWith(fn: () => unknown, ...parts: string[]): void {
  try {
    fn();
  } catch (e) {
    return assertMessageHas(e, parts);
  }
  assert.fail(`expected an error mentioning ${parts.join(", ")}`);
}

async function assertRejectsWith(fn: () => Promise<unknown>, ...parts: string[]): Promise<void> {
  try {
    await fn();
  } catch (e) {
    return assertMessageHas(e, parts);
  }
  assert.fail(`expected a rejection mentioning ${parts.join(", ")}`);
}

function decodeBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

const t = (name: string, shape: number[], values: number[]): NamedTensor => ({
  name,
  shape,
  data: new Float32Array(values),
});

// ---------------------------------------------------------------------------------------------
// encoding: byte-identical to the reference implementation

Deno.test("encode matches the reference library's own serialisation examples", () => {
  const data = f32Bytes([0, 1, 2, 3, 4, 5]);
  // 64-byte header: already a multiple of 8, no padding.
  const header1 = `{"attn.0":${entry("F32", [1, 2, 3], 0, 24)}}`;
  assert.deepEqual(header1.length, 64);
  assert.deepEqual(encodeSafetensors([t("attn.0", [1, 2, 3], [0, 1, 2, 3, 4, 5])]), buildFile(header1, data));
  // 65 bytes: padded with 7 spaces to 72 so the data starts 8-byte aligned.
  const header2 = `{"attn0":${entry("F32", [1, 1, 2, 3], 0, 24)}}` + " ".repeat(7);
  const out2 = encodeSafetensors([t("attn0", [1, 1, 2, 3], [0, 1, 2, 3, 4, 5])]);
  assert.deepEqual(out2.slice(0, 8), new Uint8Array([72, 0, 0, 0, 0, 0, 0, 0]));
  assert.deepEqual(out2, buildFile(header2, data));
  // No tensors, with and without metadata.
  assert.deepEqual(encodeSafetensors([]), buildFile("{}      "));
  assert.deepEqual(
    encodeSafetensors([], { framework: "pt" }),
    buildFile(`{"__metadata__":{"framework":"pt"}}     `),
  );
});

// Written by Python safetensors 0.8.0 (numpy 2.4.6):
//   save({"b": [0.5, -1.25, 3e-8, 1e30], "a": arange(6).reshape(2, 3) - 2.5, "10": [-0.0],
//         "9": zeros((0, 3)), "w\ufffd": [7.0], "w\U0001F600": [[8.0, 9.0]]},  # all float32
//        metadata={"format": "pt"})
const PYTHON_FILE = decodeBase64(
  "eAEAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJmb3JtYXQiOiJwdCJ9LCIxMCI6eyJkdHlwZSI6IkYzMiIsInNoYXBlIjpbMV0sImRhdGFf" +
    "b2Zmc2V0cyI6WzAsNF19LCI5Ijp7ImR0eXBlIjoiRjMyIiwic2hhcGUiOlswLDNdLCJkYXRhX29mZnNldHMiOls0LDRdfSwiYSI6eyJk" +
    "dHlwZSI6IkYzMiIsInNoYXBlIjpbMiwzXSwiZGF0YV9vZmZzZXRzIjpbNCwyOF19LCJiIjp7ImR0eXBlIjoiRjMyIiwic2hhcGUiOls0" +
    "XSwiZGF0YV9vZmZzZXRzIjpbMjgsNDRdfSwid++/vSI6eyJkdHlwZSI6IkYzMiIsInNoYXBlIjpbMV0sImRhdGFfb2Zmc2V0cyI6WzQ0" +
    "LDQ4XX0sInfwn5iAIjp7ImR0eXBlIjoiRjMyIiwic2hhcGUiOlsxLDJdLCJkYXRhX29mZnNldHMiOls0OCw1Nl19fSAgICAgAAAAgAAA" +
    "IMAAAMC/AAAAvwAAAD8AAMA/AAAgQAAAAD8AAKC/WdkAM8rySXEAAOBAAAAAQQAAEEE=",
);

Deno.test("encode is byte-identical to Python safetensors (name order by UTF-8 bytes, metadata, -0)", () => {
  const tensors = [
    t("b", [4], [0.5, -1.25, 3e-8, 1e30]),
    t("a", [2, 3], [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]),
    t("10", [1], [-0]),
    t("9", [0, 3], []),
    t("w\u{1F600}", [1, 2], [8, 9]), // JS string order would put this before "w\ufffd"
    t("w\ufffd", [1], [7]),
  ];
  assert.deepEqual(encodeSafetensors(tensors, { format: "pt" }), PYTHON_FILE);
});

Deno.test("decode reads the Python-written file", () => {
  const got = decodeSafetensors(PYTHON_FILE, "python.safetensors");
  assert.deepEqual([...got.keys()].sort(), ["10", "9", "a", "b", "w\u{1F600}", "w\ufffd"].sort());
  assert.deepEqual(got.get("a"), {
    shape: [2, 3],
    data: new Float32Array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]),
  });
  assert.deepEqual(got.get("b")!.data, new Float32Array([0.5, -1.25, 3e-8, 1e30]));
  assert.ok(Object.is(got.get("10")!.data[0], -0));
  assert.deepEqual(got.get("9"), { shape: [0, 3], data: new Float32Array(0) });
  assert.deepEqual(got.get("w\u{1F600}"), { shape: [1, 2], data: new Float32Array([8, 9]) });
});

// ---------------------------------------------------------------------------------------------
// decoding a hand-built file

Deno.test("decode: hand-built file with a Linear [out, in] weight and a bias, unaligned data", () => {
  // Entries out of name order, header length 125 (odd): the data buffer starts at byte 133.
  let header = `{"weight":${entry("F32", [2, 3], 0, 24)},"bias":${entry("F32", [4], 24, 40)}}`;
  header += " ".repeat(125 - header.length);
  const data = concat(f32Bytes([1, 2, 3, 4, 5, 6]), f32Bytes([0.1, -0.2, 0.3, -0.4]));
  const file = buildFile(header, data);
  assert.deepEqual(file.length, 8 + 125 + 40);
  // Decode from a view at an odd offset of a larger buffer, so nothing lines up by chance.
  const shifted = new Uint8Array(file.length + 1);
  shifted.set(file, 1);
  const got = decodeSafetensors(shifted.subarray(1), "hand.safetensors");

  assert.deepEqual([...got.keys()].sort(), ["bias", "weight"]);
  const weight = got.get("weight")!;
  assert.deepEqual(weight.shape, [2, 3]); // [out, in], not transposed
  assert.deepEqual(weight.data, new Float32Array([1, 2, 3, 4, 5, 6]));
  assert.deepEqual(weight.data[1 * 3 + 0], 4); // row 1 (second output), column 0 (first input)
  assert.deepEqual(got.get("bias")!.shape, [4]);
  assert.deepEqual(got.get("bias")!.data, new Float32Array([0.1, -0.2, 0.3, -0.4]));
  // Copies, aligned, not views into the file.
  assert.deepEqual(weight.data.byteOffset, 0);
  shifted.fill(0);
  assert.deepEqual(weight.data[0], 1);
});

Deno.test("decode converts F16, BF16 and F64 tensors to F32", () => {
  const f16 = u16Bytes([0x3c00, 0xc000, 0x3555, 0x0001, 0x7c00, 0x8000]);
  const bf16 = u16Bytes([0x3f80, 0xc040]);
  const f64 = new Uint8Array(8);
  new DataView(f64.buffer).setFloat64(0, 0.1, true);
  const header = `{"h":${entry("F16", [6], 0, 12)},"b":${entry("BF16", [2], 12, 16)},` +
    `"d":${entry("F64", [1], 16, 24)}}`;
  const got = decodeSafetensors(buildFile(header, concat(f16, bf16, f64)), "mixed.safetensors");
  const h = got.get("h")!.data;
  assert.deepEqual([h[0], h[1], h[3], h[4]], [1, -2, 2 ** -24, Infinity]);
  assert.ok(Math.abs(h[2] - 0.33325) < 1e-5);
  assert.ok(Object.is(h[5], -0));
  assert.deepEqual(got.get("b")!.data, new Float32Array([1, -3]));
  assert.deepEqual(got.get("d")!.data, new Float32Array([0.1]));
});

// ---------------------------------------------------------------------------------------------
// decoding bad files

Deno.test("decode rejects broken files, naming the file and the tensor", () => {
  const file = "bad.safetensors";
  const good = (header: string, data: Uint8Array) => () => decodeSafetensors(buildFile(header, data), file);

  assertThrowsWith(() => decodeSafetensors(new Uint8Array(5), file), file, "shorter than the 8-byte");

  const oversized = new Uint8Array(16);
  new DataView(oversized.buffer).setBigUint64(0, 200_000_000n, true);
  assertThrowsWith(() => decodeSafetensors(oversized, file), file, "oversized header");

  const pastEnd = new Uint8Array(20);
  pastEnd[0] = 100;
  assertThrowsWith(() => decodeSafetensors(pastEnd, file), file, "header length 100", "truncated");

  assertThrowsWith(good(`{"w": {"dtype": "F32",`, new Uint8Array()), file, "not valid JSON");
  assertThrowsWith(good(`[1, 2]`, new Uint8Array()), file, "not a JSON object");
  const badUtf8 = buildFile("{}", new Uint8Array());
  badUtf8[9] = 0xff; // "}" replaced by a byte that is never valid UTF-8
  assertThrowsWith(() => decodeSafetensors(badUtf8, file), file, "UTF-8");

  assertThrowsWith(good(`{"ids":${entry("I32", [2], 0, 8)}}`, new Uint8Array(8)), file, `"ids"`, "I32");
  assertThrowsWith(good(`{"q":${entry("Q4", [2], 0, 8)}}`, new Uint8Array(8)), file, `"q"`, "unknown dtype");
  assertThrowsWith(
    good(`{"w":${entry("F32", [2, 3], 0, 20)}}`, new Uint8Array(20)),
    file,
    `"w"`,
    "needs 24 bytes",
    "span 20",
  );
  assertThrowsWith(
    good(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}}`, new Uint8Array(8)),
    file,
    `"w"`,
  );
  assertThrowsWith(
    good(`{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, new Uint8Array(8)),
    file,
    `"w"`,
  );

  // Truncated: the last tensor runs past the end of the data buffer.
  const header = `{"a":${entry("F32", [2], 0, 8)},"b":${entry("F32", [3], 8, 20)}}`;
  assertThrowsWith(good(header, new Uint8Array(16)), file, `"b"`, "outside the 16-byte data buffer");
  assertThrowsWith(
    () => decodeSafetensors(buildFile(header, new Uint8Array(20)).slice(0, -1), file),
    file,
    `"b"`,
  );

  // Overlap, gap, trailing bytes.
  const overlap = `{"a":${entry("F32", [2], 0, 8)},"b":${entry("F32", [2], 4, 12)}}`;
  assertThrowsWith(good(overlap, new Uint8Array(12)), file, `"b"`, `"a"`, "overlap");
  const gap = `{"a":${entry("F32", [1], 0, 4)},"b":${entry("F32", [1], 8, 12)}}`;
  assertThrowsWith(good(gap, new Uint8Array(12)), file, `"b"`, "gap");
  assertThrowsWith(good(`{"a":${entry("F32", [1], 0, 4)}}`, new Uint8Array(8)), file, "4 bytes after");

  assertThrowsWith(good(`{"__metadata__":{"n":1}}`, new Uint8Array()), file, "__metadata__");
});

// ---------------------------------------------------------------------------------------------
// encoding bad input

Deno.test("encode rejects tensors whose data does not match their shape, and bad names", () => {
  assertThrowsWith(
    () => encodeSafetensors([t("fc.weight", [2, 3], [1, 2, 3, 4, 5])]),
    `"fc.weight"`,
    "[2, 3]",
    "5 values",
  );
  assertThrowsWith(() => encodeSafetensors([t("x", [1], [1]), t("x", [1], [2])]), `"x"`, "twice");
  assertThrowsWith(() => encodeSafetensors([t("__metadata__", [1], [1])]), "reserved");
  assertThrowsWith(() => encodeSafetensors([t("s", [1.5], [1])]), `"s"`, "invalid shape");
  assertThrowsWith(() => encodeSafetensors([t("", [1], [1])]), "empty name");
});

// ---------------------------------------------------------------------------------------------
// checkpoint folders

const CONFIG = {
  model_type: "seemore",
  n_embd: 8,
  learning_rate: 0.001,
  vocab: ["a", "<pad>"],
  nested: { x: 1 },
};
const TENSORS = [
  t("lm_head.weight", [3, 2], [1, 2, 3, 4, 5, 6]),
  t("lm_head.bias", [3], [0.5, 0, -0.5]),
  t("blocks.0.ln.weight", [2], [1, 1]),
];

Deno.test("save -> load -> save gives byte-identical files", async () => {
  const root = await Deno.makeTempDir();
  try {
    const first = join(root, "run", "ckpt-1"); // missing parents are created
    await saveCheckpoint(first, CONFIG, TENSORS);
    const configText = await Deno.readTextFile(join(first, "config.json"));
    assert.deepEqual(configText, JSON.stringify(CONFIG, null, 2) + "\n");
    assert.ok(configText.includes('\n  "n_embd": 8,'));

    const loaded = await loadCheckpoint(first);
    assert.deepEqual(loaded.config, CONFIG);
    assert.deepEqual(loaded.tensors.get("lm_head.weight"), { shape: [3, 2], data: TENSORS[0].data });

    const second = join(root, "ckpt-2");
    const again = [...loaded.tensors].map(([name, v]) => ({ name, ...v }));
    await saveCheckpoint(second, loaded.config, again);
    for (const name of ["config.json", "model.safetensors"]) {
      assert.deepEqual(await Deno.readFile(join(second, name)), await Deno.readFile(join(first, name)));
    }
    const files = [...Deno.readDirSync(second)].map((e) => e.name).sort();
    assert.deepEqual(files, ["config.json", "model.safetensors"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a failed save leaves no partial files and keeps the previous checkpoint", async () => {
  const root = await Deno.makeTempDir();
  try {
    // Rejected before the disk is touched: not even the folder appears.
    const fresh = join(root, "fresh");
    const bad = [...TENSORS, t("broken", [2, 2], [1, 2, 3])];
    await assertRejectsWith(() => saveCheckpoint(fresh, CONFIG, bad), "model.safetensors", `"broken"`);
    await assert.rejects(() => Deno.stat(fresh), Deno.errors.NotFound);

    // Over an existing checkpoint: old files untouched, no temporaries.
    const dir = join(root, "existing");
    await saveCheckpoint(dir, CONFIG, TENSORS);
    const before = await Deno.readFile(join(dir, "model.safetensors"));
    await assert.rejects(() => saveCheckpoint(dir, { ...CONFIG, n_embd: 16 }, bad));
    await assertRejectsWith(() => saveCheckpoint(dir, { lr: NaN }, TENSORS), "config.json", "NaN");
    assert.deepEqual(await Deno.readFile(join(dir, "model.safetensors")), before);
    assert.deepEqual((await loadCheckpoint(dir)).config, CONFIG);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "config.json",
      "model.safetensors",
    ]);

    // A failure while writing (the target name is a non-empty folder): temporaries are removed.
    const blocked = join(root, "blocked");
    await Deno.mkdir(join(blocked, "model.safetensors", "inside"), { recursive: true });
    await assertRejectsWith(() => saveCheckpoint(blocked, CONFIG, TENSORS), blocked);
    assert.deepEqual([...Deno.readDirSync(blocked)].map((e) => e.name), ["model.safetensors"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("load reports missing folders and files and bad config.json, naming them", async () => {
  const root = await Deno.makeTempDir();
  try {
    const missing = join(root, "nope");
    await assertRejectsWith(() => loadCheckpoint(missing), missing, "not found");
    await Deno.writeTextFile(join(root, "file"), "x");
    await assertRejectsWith(() => loadCheckpoint(join(root, "file")), "not a folder");

    const dir = join(root, "ckpt");
    await Deno.mkdir(dir);
    await assertRejectsWith(() => loadCheckpoint(dir), join(dir, "config.json"), "missing config.json");
    await Deno.writeTextFile(join(dir, "config.json"), '{"n_embd": 8,}');
    await assertRejectsWith(() => loadCheckpoint(dir), join(dir, "config.json"), "invalid JSON");
    await Deno.writeTextFile(join(dir, "config.json"), "[1]");
    await assertRejectsWith(() => loadCheckpoint(dir), join(dir, "config.json"), "JSON object");
    await Deno.writeTextFile(join(dir, "config.json"), '{"n_embd": 8}');
    await assertRejectsWith(
      () => loadCheckpoint(dir),
      join(dir, "model.safetensors"),
      "missing model.safetensors",
    );

    // A truncated weights file names the file and the tensor cut short.
    const bytes = encodeSafetensors(TENSORS);
    await Deno.writeFile(join(dir, "model.safetensors"), bytes.slice(0, -2));
    await assertRejectsWith(() => loadCheckpoint(dir), join(dir, "model.safetensors"), `"lm_head.weight"`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// checkTensors

Deno.test("checkTensors accepts a match and lists missing, unexpected and mis-shaped tensors", () => {
  const expected = new Map<string, number[]>([["fc.weight", [4, 3]], ["fc.bias", [4]], ["ln.weight", [3]]]);
  const shapes = (entries: [string, number[]][]) => new Map(entries.map(([n, shape]) => [n, { shape }]));
  checkTensors(expected, shapes([["fc.bias", [4]], ["ln.weight", [3]], ["fc.weight", [4, 3]]]), "ok");

  assertThrowsWith(
    () => checkTensors(expected, shapes([["fc.weight", [4, 3]], ["ln.weight", [3]]]), "c/model.safetensors"),
    "c/model.safetensors",
    `missing tensor "fc.bias"`,
    "[4]",
  );
  assertThrowsWith(
    () =>
      checkTensors(
        expected,
        shapes([["fc.weight", [4, 3]], ["fc.bias", [4]], ["ln.weight", [3]], ["extra", [2, 2]]]),
        "f",
      ),
    `unexpected tensor "extra"`,
    "[2, 2]",
  );
  assertThrowsWith(
    () =>
      checkTensors(expected, shapes([["fc.weight", [3, 4]], ["fc.bias", [4, 1]], ["ln.weight", [3]]]), "f"),
    `tensor "fc.weight" has shape [3, 4], expected [4, 3]`,
    `tensor "fc.bias" has shape [4, 1], expected [4]`,
  );
  assertThrowsWith( // fewer dimensions than expected, matching as far as they go
    () => checkTensors(expected, shapes([["fc.weight", [4]], ["fc.bias", [4]], ["ln.weight", [3]]]), "f"),
    `tensor "fc.weight" has shape [4], expected [4, 3]`,
  );
});

// ---------------------------------------------------------------------------------------------
// group commits: a crash at any point leaves all the old files or all the new ones

type Folder = Map<string, Uint8Array>;

/** The folder's files; read again if a rename (running on another thread) moved one meanwhile. */
function readFolderSync(dir: string): Folder {
  const names = () => [...Deno.readDirSync(dir)].map((e) => e.name).sort().join("/");
  for (;;) {
    const before = names();
    try {
      const out: Folder = new Map(before.split("/").map((n) => [n, Deno.readFileSync(join(dir, n))]));
      if (names() === before) return out;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
}

/** A training run's save: config and weights plus the files --resume needs, all differing per version. */
function runSave(dir: string, version: number): Promise<void> {
  const tensors = TENSORS.map((x) => ({ ...x, data: x.data.map((v) => v + version) }));
  const text = (s: string) => new TextEncoder().encode(s);
  return saveCheckpoint(dir, { ...CONFIG, step: version }, tensors, [
    ["optimizer.safetensors", encodeSafetensors([t("adam.m.0", [2], [version, -version])])],
    ["train_state.json", text(`{"step": ${version}}\n`)],
    ["metrics.csv", text(`step\n${version}\n`)],
  ]);
}
const RUN_FILES = [
  "config.json",
  "metrics.csv",
  "model.safetensors",
  "optimizer.safetensors",
  "train_state.json",
];

Deno.test("a save interrupted at any point reads as all the old files or all the new, and rolls forward", async () => {
  const root = await Deno.makeTempDir();
  try {
    const dir = join(root, "run");
    await runSave(dir, 1);
    const old = readFolderSync(dir);
    // Slow the commit down (the documented test hook) and copy the folder, synchronously, between its
    // steps: each copy is exactly what a crash at that moment would leave on disk.
    Deno.env.set("SEEMORE_TEST_SLOW_SAVE_MS", "40");
    const images: Folder[] = [];
    let done = false;
    const saving = runSave(dir, 2).finally(() => done = true);
    while (!done) {
      const image = readFolderSync(dir);
      const key = (f: Folder) => [...f.keys()].sort().join(" ");
      if (images.length === 0 || key(images.at(-1)!) !== key(image)) images.push(image);
      await new Promise((r) => setTimeout(r, 2));
    }
    await saving;
    Deno.env.delete("SEEMORE_TEST_SLOW_SAVE_MS");
    const fresh = readFolderSync(dir);
    assert.deepEqual([...fresh.keys()].sort(), RUN_FILES, "after a save only its files remain");

    const isTemp = (name: string) => name.endsWith(".tmp");
    const pending = images.filter((f) => f.has(COMMIT_FILE));
    assert.ok(
      images.some((f) => !f.has(COMMIT_FILE) && [...f.keys()].some(isTemp)),
      "seen: temporaries only",
    );
    assert.ok(
      pending.some((f) => [...f.keys()].filter(isTemp).length === RUN_FILES.length),
      "seen: committed",
    );
    assert.ok(pending.some((f) => [...f.keys()].filter(isTemp).length === 1), "seen: one rename left");

    for (const [i, image] of images.entries()) {
      const crash = join(root, `crash-${i}`);
      Deno.mkdirSync(crash);
      for (const [name, bytes] of image) Deno.writeFileSync(join(crash, name), bytes);
      const what = `crash image ${i}: ${[...image.keys()].sort().join(", ")}`;
      // Readers see one whole version: the new one from the moment the commit record exists.
      const committed = i >= images.findIndex((f) => f.has(COMMIT_FILE));
      const expected = committed ? fresh : old;
      for (const name of RUN_FILES) {
        assert.deepEqual(await readCommitted(crash, name), expected.get(name), what);
      }
      const loaded = await loadCheckpoint(crash);
      assert.equal(loaded.config.step, committed ? 2 : 1, what);
      // The writer's recovery leaves exactly that version, with no record or temporaries.
      await recoverFolder(crash);
      const recovered = readFolderSync(crash);
      assert.deepEqual([...recovered.keys()].sort(), RUN_FILES, what);
      for (const name of RUN_FILES) assert.deepEqual(recovered.get(name), expected.get(name), what);
      // ... and the next save goes through.
      await runSave(crash, 3);
      assert.equal((await loadCheckpoint(crash)).config.step, 3, what);
    }
    console.log(`${images.length} crash images checked, ${pending.length} with a pending commit record`);
  } finally {
    Deno.env.delete("SEEMORE_TEST_SLOW_SAVE_MS");
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a damaged commit record is reported, naming it", async () => {
  const root = await Deno.makeTempDir();
  try {
    await runSave(root, 1);
    await Deno.writeTextFile(join(root, COMMIT_FILE), "{not json");
    await assertRejectsWith(() => loadCheckpoint(root), COMMIT_FILE, "not valid JSON");
    await Deno.writeTextFile(join(root, COMMIT_FILE), `{"files": [{"temp": "../x", "name": "config.json"}]}`);
    await assertRejectsWith(() => recoverFolder(root), COMMIT_FILE, "pairs");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
