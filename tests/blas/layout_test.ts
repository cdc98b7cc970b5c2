// The tables of lib/blas/layout.ts and how the C side is built from them: the block's tensor order and
// shapes, the decoder steps' tensors, the generated header, the unity build and its cache key, and
// lib/blas importing nothing from outside itself.

import {
  BLOCK_PARAMS,
  BLOCK_SAVED,
  BLOCK_TENSORS,
  blockBytes,
  type BlockDims,
  blockShape,
  type DecoderStepDims,
  decoderStepTensors,
  HALF_PARAMS,
  HALF_SAVED,
  HALF_TENSORS,
  layoutHeader,
} from "../../lib/blas/layout.ts";
import { buildKey, generatedHeader, readSources } from "../../lib/blas/native.ts";
import { assertEquals } from "./helpers.ts";

const json = (v: unknown) => JSON.stringify(v);

Deno.test("the block's tensors: x, the parameters, out, what is saved, the scratch, then dout, dx and the gradients", () => {
  assertEquals(
    json(BLOCK_PARAMS),
    json(["g1", "b1", "wqkv", "wp", "bp", "g2", "b2", "w1", "bh", "w2", "bf"]),
  );
  assertEquals(
    json(BLOCK_SAVED),
    json([
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
    ]),
  );
  const grads = BLOCK_PARAMS.map((p) => `d${p}`);
  assertEquals(
    json(BLOCK_TENSORS),
    json(["x", ...BLOCK_PARAMS, "out", ...BLOCK_SAVED, "scratch", "dout", "dx", ...grads]),
  );
});

Deno.test("the attention half: the block's own tensors, its output in x1's place, keeping LN1's statistics and the masks", () => {
  assertEquals(json(HALF_PARAMS), json(["g1", "b1", "wqkv", "wp", "bp"]));
  assertEquals(json(HALF_SAVED), json(["mean1", "rstd1", "maskAtt", "maskProj"]));
  for (const pass of ["forward", "backward"] as const) {
    for (const name of HALF_TENSORS[pass]) {
      assertEquals(BLOCK_TENSORS.includes(name), true, `${pass}: ${name} is one of the block's tensors`);
    }
  }
  assertEquals(HALF_TENSORS.forward.includes("x1"), true, "the forward pass writes x1");
  for (const kept of ["a", "qkv", "probs", "merged"]) {
    assertEquals(HALF_TENSORS.backward.includes(kept), false, `the gradient does not read ${kept}`);
  }
});

Deno.test("the block's shapes and bytes, with and without dropout, forward and backward", () => {
  const d: BlockDims = {
    B: 2,
    T: 3,
    C: 8,
    heads: 2,
    preNorm: false,
    relu: false,
    causal: true,
    scale: 1,
    keep: 0.9,
    eps: 1e-5,
  };
  const expected: Record<string, number[]> = {
    x: [2, 3, 8],
    g1: [8],
    wqkv: [8, 24],
    wp: [8, 8],
    w1: [8, 32],
    bh: [32],
    w2: [32, 8],
    mean1: [2, 3],
    qkv: [2, 3, 24],
    probs: [2, 2, 3, 3],
    maskAtt: [2, 2, 3, 3],
    maskProj: [2, 3, 8],
    h: [2, 3, 32],
    dwqkv: [8, 24],
    dbh: [32],
    dout: [2, 3, 8],
    dx: [2, 3, 8],
  };
  for (const [name, shape] of Object.entries(expected)) {
    assertEquals(json(blockShape(name, d, true)), json(shape), name);
  }
  assertEquals(json(blockShape("maskAtt", d, false)), json([0]), "maskAtt without dropout");
  const at = (name: string) => BLOCK_TENSORS.indexOf(name);
  const forward = blockBytes(d, true, false), backward = blockBytes(d, true, true);
  assertEquals(forward[at("scratch")], 4 * 5 * 2 * 3 * 8, "forward scratch: 5 C floats a row");
  assertEquals(backward[at("scratch")], 4 * 12 * 2 * 3 * 8, "backward scratch: 12 C floats a row");
  assertEquals(forward[at("maskProj")], 2 * 3 * 8, "a mask is one byte an element");
  assertEquals(forward[at("probs")], 4 * 2 * 2 * 3 * 3, "probs: float32");
});

Deno.test("the generated header gives each block tensor its BLOCK_TENSORS index, once", () => {
  const header = layoutHeader();
  const defines = [...header.matchAll(/^#define BLK_(\w+) (\d+)$/gm)].map((m) =>
    [m[1], Number(m[2])] as const
  );
  const indices = new Map(
    defines.filter(([name]) => !["COUNT", "SCRATCH_FORWARD", "SCRATCH_BACKWARD"].includes(name)),
  );
  assertEquals(indices.size, BLOCK_TENSORS.length, "one BLK_ index per tensor, no two names alike");
  const cName = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase();
  BLOCK_TENSORS.forEach((name, i) => assertEquals(indices.get(cName(name)), i, `BLK_${cName(name)}`));
  assertEquals(new Map(defines).get("COUNT"), BLOCK_TENSORS.length, "BLK_COUNT");
  assertEquals(new Map(defines).get("SCRATCH_FORWARD"), 5, "BLK_SCRATCH_FORWARD");
  assertEquals(new Map(defines).get("SCRATCH_BACKWARD"), 12, "BLK_SCRATCH_BACKWARD");
  assertEquals(generatedHeader().includes(header), true, "the compiled header holds the layout");
});

Deno.test("the C files take the tensors' order from the generated header only", () => {
  for (const { name, text } of readSources()) {
    assertEquals(
      /(#define|enum\s*\{[^}]*)\s*BLK_[A-Z]/.test(text),
      false,
      `${name} declares BLK_ indices itself`,
    );
    assertEquals(
      /#define\s+(DECODER|MOE)_[A-Z]+_TENSORS/.test(text),
      false,
      `${name} declares a decoder step's order`,
    );
  }
  const decoder = readSources().find((s) => s.name === "decoder.c")!.text;
  for (const table of ["DECODER_ATTENTION", "DECODER_FFN", "MOE_ROUTER", "MOE_EXPERT", "DECODER_FINAL"]) {
    assertEquals(decoder.includes(`${table}_TENSORS(TAKE)`), true, `decoder.c walks ${table}_TENSORS`);
  }
});

Deno.test("the decoder steps' tensors: per layer the attention half, then the feed-forward or the router and each expert, then the final ones", () => {
  const d: DecoderStepDims = {
    batch: 1,
    width: 8,
    heads: 2,
    layers: 2,
    vocab: 11,
    positions: 7,
    cached: 7,
    scale: 1,
    eps: 1e-5,
    preNorm: false,
    experts: 3,
    topK: 2,
  };
  const attention = [
    "ln1.weight 8",
    "ln1.bias 8",
    "attn.qkv 8,24",
    "attn.proj.weight 8,8",
    "attn.proj.bias 8",
    "ln2.weight 8",
    "ln2.bias 8",
  ];
  const ffn = ["ffn.fc1.weight 8,32", "ffn.fc1.bias 32", "ffn.fc2.weight 32,8", "ffn.fc2.bias 8"];
  const router = ["router.weight 8,3", "router.bias 3"];
  const expert = ["fc1.weight 8,32", "fc1.bias 32", "fc2.weight 32,8", "fc2.bias 8"];
  const final = [
    "ln_f.weight 8",
    "ln_f.bias 8",
    "lm_head.weight 8,11",
    "lm_head.bias 11",
    "position_embedding 7,8",
  ];
  const listed = (kind: "dense" | "moe") =>
    decoderStepTensors(kind, d).map((p) => `${p.layer}/${p.expert} ${p.name} ${p.shape}`);
  const at = (layer: number | null, expert: number | null, names: string[]) =>
    names.map((n) => `${layer}/${expert} ${n}`);
  assertEquals(
    json(listed("dense")),
    json([0, 1].flatMap((l) => at(l, null, [...attention, ...ffn])).concat(at(null, null, final))),
  );
  const moeLayer = (
    l: number,
  ) => [...at(l, null, [...attention, ...router]), ...[0, 1, 2].flatMap((e) => at(l, e, expert))];
  assertEquals(json(listed("moe")), json([...moeLayer(0), ...moeLayer(1), ...at(null, null, final)]));
});

Deno.test("kernels.c includes every other C file once, and the cache key covers every file and the header", () => {
  const sources = readSources();
  const unity = sources.find((s) => s.name === "kernels.c")!.text;
  const included = [...unity.matchAll(/^#include "(\w+\.c)"/gm)].map((m) => m[1]).sort();
  const families = sources.map((s) => s.name).filter((n) => n.endsWith(".c") && n !== "kernels.c").sort();
  assertEquals(json(included), json(families), "the .c files kernels.c includes");
  const header = generatedHeader(), key = buildKey(sources, header, "cc");
  for (let i = 0; i < sources.length; i++) {
    const edited = sources.map((s, j) => (j === i ? { ...s, text: s.text + " " } : s));
    assertEquals(buildKey(edited, header, "cc") !== key, true, `the key changes with ${sources[i].name}`);
  }
  assertEquals(buildKey(sources, header + " ", "cc") !== key, true, "the key changes with the header");
  assertEquals(buildKey(sources, header, "clang") !== key, true, "the key changes with the compiler");
});

Deno.test("lib/blas imports nothing from outside lib/blas but tfjs", () => {
  const root = new URL("../../lib/blas/", import.meta.url);
  const walk = (dir: URL): URL[] =>
    [...Deno.readDirSync(dir)].flatMap((e) =>
      e.isDirectory ? walk(new URL(`${e.name}/`, dir)) : e.name.endsWith(".ts") ? [new URL(e.name, dir)] : []
    );
  const files = walk(root);
  assertEquals(files.length > 20, true, "files found");
  for (const file of files) {
    const text = Deno.readTextFileSync(file);
    for (const [, spec] of text.matchAll(/(?:import|export)[^;]*?from\s+"([^"]+)"/g)) {
      const inside = spec.startsWith(".") ? new URL(spec, file).href.startsWith(root.href) : false;
      const tfjs = spec.startsWith("@tensorflow/");
      assertEquals(inside || tfjs, true, `${file.pathname.split("lib/blas/")[1]} imports ${spec}`);
    }
  }
});
