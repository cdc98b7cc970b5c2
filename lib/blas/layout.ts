// The order of the tensors that the C kernels take, declared once: the whole block (seemore_block,
// seemore_block_grad) and the decoder steps' weights (seemore_decoder_step, seemore_moe_decoder_step).
// The TypeScript side lays tensors out from these tables, and layoutHeader() writes the C side's indices
// and field lists from them (native.ts passes it to the compiler), so the two sides cannot drift apart.

/** A size in the tables: a multiple of one of the dims ("3C" = 3 × C). */
export type Size = `${"" | number}${"B" | "T" | "C" | "H" | "V" | "P" | "E"}`;

/** A Size as [multiple, dim], parsed once. */
const parsed = new Map<Size, [number, string]>();
function parseSize(size: Size): [number, string] {
  let p = parsed.get(size);
  if (!p) {
    const [, times, dim] = /^(\d*)([A-Z])$/.exec(size)!;
    parsed.set(size, p = [times === "" ? 1 : Number(times), dim]);
  }
  return p;
}

/** The value of a Size, given the dims it names. */
export function sizeOf(size: Size, dims: Readonly<Record<string, number>>): number {
  const [times, dim] = parseSize(size);
  if (!(dim in dims)) throw new Error(`lib/blas/layout.ts: size ${size} needs ${dim}`);
  return times * dims[dim];
}

/** Elements of a shape of Sizes. */
function elements(shape: readonly Size[], dims: Readonly<Record<string, number>>): number {
  let n = 1;
  for (const s of shape) n *= sizeOf(s, dims);
  return n;
}

/** The same as a C expression ("(3 * C)"). */
function cSize(size: Size): string {
  const [times, dim] = parseSize(size);
  return times === 1 ? `(${dim})` : `(${times} * ${dim})`;
}

// ---------------------------------------------------------------------------------------------
// The block: x, the parameters, what the forward pass writes, its scratch, then (backward) dout, dx
// and the parameters' gradients. B batch, T positions, C width, H heads.

/** A block's sizes and settings (block.c's block_dims). */
export interface BlockDims {
  B: number;
  T: number;
  C: number;
  heads: number;
  preNorm: boolean;
  causal: boolean;
  /** The feed-forward's activation is ReLU (seeMoE's ViT) instead of GELU. */
  relu: boolean;
  scale: number;
  keep: number;
  eps: number;
}

/** One tensor of a block call. */
interface BlockEntry {
  readonly name: string;
  readonly role: "input" | "param" | "output" | "saved" | "scratch";
  readonly shape: readonly Size[];
  /** A dropout mask: bool, and [0] without dropout. */
  readonly mask?: true;
  /** Not read by the backward pass (the biases' gradients are column sums; the output). */
  readonly forwardOnly?: true;
  /** The scratch's shape in the backward pass. */
  readonly backwardShape?: readonly Size[];
}

const FORWARD_TENSORS = [
  { name: "x", role: "input", shape: ["B", "T", "C"] },
  { name: "g1", role: "param", shape: ["C"] }, // ln1
  { name: "b1", role: "param", shape: ["C"], forwardOnly: true },
  { name: "wqkv", role: "param", shape: ["C", "3C"] }, // all heads' query | key | value
  { name: "wp", role: "param", shape: ["C", "C"] }, // the attention's output projection
  { name: "bp", role: "param", shape: ["C"], forwardOnly: true },
  { name: "g2", role: "param", shape: ["C"] }, // ln2
  { name: "b2", role: "param", shape: ["C"], forwardOnly: true },
  { name: "w1", role: "param", shape: ["C", "4C"] }, // the feed-forward
  { name: "bh", role: "param", shape: ["4C"], forwardOnly: true },
  { name: "w2", role: "param", shape: ["4C", "C"] },
  { name: "bf", role: "param", shape: ["C"], forwardOnly: true },
  { name: "out", role: "output", shape: ["B", "T", "C"], forwardOnly: true },
  { name: "a", role: "saved", shape: ["B", "T", "C"] }, // ln1(x)
  { name: "mean1", role: "saved", shape: ["B", "T"] },
  { name: "rstd1", role: "saved", shape: ["B", "T"] },
  { name: "qkv", role: "saved", shape: ["B", "T", "3C"] },
  { name: "probs", role: "saved", shape: ["B", "H", "T", "T"] },
  { name: "maskAtt", role: "saved", shape: ["B", "H", "T", "T"], mask: true },
  { name: "merged", role: "saved", shape: ["B", "T", "C"] }, // the heads side by side
  { name: "maskProj", role: "saved", shape: ["B", "T", "C"], mask: true },
  { name: "x1", role: "saved", shape: ["B", "T", "C"] }, // after the first residual
  { name: "n", role: "saved", shape: ["B", "T", "C"] }, // ln2(x1)
  { name: "mean2", role: "saved", shape: ["B", "T"] },
  { name: "rstd2", role: "saved", shape: ["B", "T"] },
  { name: "h", role: "saved", shape: ["B", "T", "4C"] }, // the feed-forward's hidden layer, before GELU
  { name: "scratch", role: "scratch", shape: ["B", "T", "5C"], backwardShape: ["B", "T", "12C"] }, // block.c's
] as const satisfies readonly BlockEntry[];

type Forward = typeof FORWARD_TENSORS[number];
type ParamName = Extract<Forward, { role: "param" }>["name"];
type SavedName = Extract<Forward, { role: "saved" }>["name"];

/** A block's parameters, in the kernel's order. */
export const BLOCK_PARAMS: readonly ParamName[] = FORWARD_TENSORS.filter((t) => t.role === "param").map((t) =>
  t.name as ParamName
);

/** What the forward pass writes after `out`, in the kernel's order: all of it is kept for the gradient. */
export const BLOCK_SAVED: readonly SavedName[] = FORWARD_TENSORS.filter((t) => t.role === "saved").map((t) =>
  t.name as SavedName
);

/**
 * The block's first half alone (seemore_attention_half and its gradient: seeMoE's blocks, whose second
 * half is the mixture), on the whole block's offsets (BLOCK_TENSORS): x1 = x + dropout(attention(LN1(x)
 * Wqkv) Wp + bp), its output in x1's place. It keeps LN1's statistics and the masks only: a, qkv and
 * merged are scratch, and the gradient computes them again.
 */
export const HALF_PARAMS = ["g1", "b1", "wqkv", "wp", "bp"] as const satisfies readonly ParamName[];
export const HALF_SAVED = ["mean1", "rstd1", "maskAtt", "maskProj"] as const satisfies readonly SavedName[];

/** The BLOCK_TENSORS each pass of the attention half reads or writes (it touches no other). */
export const HALF_TENSORS: { forward: readonly string[]; backward: readonly string[] } = {
  forward: ["x", ...HALF_PARAMS, "x1", ...HALF_SAVED, "scratch"],
  backward: [
    "x",
    "g1",
    "b1",
    "wqkv",
    "wp",
    ...HALF_SAVED,
    "scratch",
    "dout",
    "dx",
    ...HALF_PARAMS.map((p) => `d${p}`),
  ],
};

/** The tensors of seemore_block / seemore_block_grad, in order: offsets[i] is BLOCK_TENSORS[i]'s. */
export const BLOCK_TENSORS: readonly string[] = [
  ...FORWARD_TENSORS.map((t) => t.name),
  "dout",
  "dx",
  ...BLOCK_PARAMS.map((p) => `d${p}`),
];

/** The forward entry of each BLOCK_TENSORS name: itself, or what it is the gradient of (dout, dx: x's). */
const ENTRY = new Map<string, BlockEntry>(BLOCK_TENSORS.map((name) => {
  const base = name === "dout" || name === "dx" ? "x" : name;
  const entry = FORWARD_TENSORS.find((t) => t.name === base) ??
    FORWARD_TENSORS.find((t) => t.role === "param" && `d${t.name}` === base)!;
  return [name, entry];
}));

function forwardEntry(name: string): BlockEntry {
  const entry = ENTRY.get(name);
  if (!entry) throw new Error(`lib/blas/layout.ts: the block has no tensor ${name}`);
  return entry;
}

/** The shape of a BLOCK_TENSORS entry (a gradient has its parameter's; the scratch, the pass's). */
export function blockShape(name: string, d: BlockDims, dropout: boolean, backward = false): number[] {
  const entry = forwardEntry(name);
  if (entry.mask && !dropout) return [0];
  const dims = { B: d.B, T: d.T, C: d.C, H: d.heads };
  return ((backward && entry.backwardShape) || entry.shape).map((s) => sizeOf(s, dims));
}

/** The dtype of a BLOCK_TENSORS entry: the dropout masks are bool. */
export function blockDtype(name: string): "float32" | "bool" {
  return forwardEntry(name).mask ? "bool" : "float32";
}

/** Whether the backward pass reads or writes a BLOCK_TENSORS entry. */
export function usedInBackward(name: string): boolean {
  return !forwardEntry(name).forwardOnly;
}

/** Bytes of each BLOCK_TENSORS region (masks 1 byte an element, the rest float32). */
export function blockBytes(d: BlockDims, dropout: boolean, backward: boolean): number[] {
  const dims = { B: d.B, T: d.T, C: d.C, H: d.heads };
  return BLOCK_TENSORS.map((name) => {
    const entry = ENTRY.get(name)!;
    if (entry.mask) return dropout ? elements(entry.shape, dims) : 0;
    return 4 * elements((backward && entry.backwardShape) || entry.shape, dims);
  });
}

// ---------------------------------------------------------------------------------------------
// The decoder steps' weights (generation: seemore_decoder_step, seemore_moe_decoder_step), read in place:
// a tensor per entry, in this order: per layer its attention half, then seemore's feed-forward, or
// seeMoE's router and each of its experts' tensors; then the final ones. Names as the model's state dict
// has them (an expert's under the expert); matrices [in, out], row-major, as Linear keeps them
// (attn.qkv: all heads' query | key | value, no bias). C width, V vocabulary, P positions (the whole
// position table), E experts per layer.

/** One tensor of a decoder step. */
export interface StepTensor {
  readonly name: string;
  readonly shape: readonly Size[];
}

/** Both kinds of layer start with this: ln1, the fused projection and its output projection, ln2. */
export const DECODER_ATTENTION_TENSORS = [
  { name: "ln1.weight", shape: ["C"] },
  { name: "ln1.bias", shape: ["C"] },
  { name: "attn.qkv", shape: ["C", "3C"] },
  { name: "attn.proj.weight", shape: ["C", "C"] },
  { name: "attn.proj.bias", shape: ["C"] },
  { name: "ln2.weight", shape: ["C"] },
  { name: "ln2.bias", shape: ["C"] },
] as const satisfies readonly StepTensor[];

/** seemore's feed-forward (GELU). */
export const DECODER_FFN_TENSORS = [
  { name: "ffn.fc1.weight", shape: ["C", "4C"] },
  { name: "ffn.fc1.bias", shape: ["4C"] },
  { name: "ffn.fc2.weight", shape: ["4C", "C"] },
  { name: "ffn.fc2.bias", shape: ["C"] },
] as const satisfies readonly StepTensor[];

/** seeMoE's router (its noiseless logits: evaluation's routing). */
export const MOE_ROUTER_TENSORS = [
  { name: "router.weight", shape: ["C", "E"] },
  { name: "router.bias", shape: ["E"] },
] as const satisfies readonly StepTensor[];

/** One seeMoE expert (ReLU). */
export const MOE_EXPERT_TENSORS = [
  { name: "fc1.weight", shape: ["C", "4C"] },
  { name: "fc1.bias", shape: ["4C"] },
  { name: "fc2.weight", shape: ["4C", "C"] },
  { name: "fc2.bias", shape: ["C"] },
] as const satisfies readonly StepTensor[];

export const DECODER_FINAL_TENSORS = [
  { name: "ln_f.weight", shape: ["C"] },
  { name: "ln_f.bias", shape: ["C"] },
  { name: "lm_head.weight", shape: ["C", "V"] },
  { name: "lm_head.bias", shape: ["V"] },
  { name: "position_embedding", shape: ["P", "C"] },
] as const satisfies readonly StepTensor[];

/** The decoders a step runs: seemore's (GELU feed-forward) and seeMoE's (routed ReLU experts). */
export type DecoderKind = "dense" | "moe";

/** What a decoder step's tensors are: per layer (`block`), per expert of a layer, and at the end. */
export interface StepLayout {
  block: readonly StepTensor[];
  expert: readonly StepTensor[];
  final: readonly StepTensor[];
}

export const STEP_LAYOUTS: Readonly<Record<DecoderKind, StepLayout>> = {
  dense: {
    block: [...DECODER_ATTENTION_TENSORS, ...DECODER_FFN_TENSORS],
    expert: [],
    final: DECODER_FINAL_TENSORS,
  },
  moe: {
    block: [...DECODER_ATTENTION_TENSORS, ...MOE_ROUTER_TENSORS],
    expert: MOE_EXPERT_TENSORS,
    final: DECODER_FINAL_TENSORS,
  },
};

/**
 * Sizes of the decoder that a step runs: positions is the length of its position table, cached how
 * many positions the key/value cache holds (≤ positions: what one generation needs); experts and topK
 * are seeMoE's (experts per layer, experts per token; 0 for seemore).
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
  experts: number;
  topK: number;
}

/** One tensor of a step, in order: its layer and expert (null: none), name and shape. */
export interface StepPlace {
  name: string;
  layer: number | null;
  expert: number | null;
  shape: number[];
}

/** Every tensor a step of `kind` takes, in order. */
export function decoderStepTensors(kind: DecoderKind, d: DecoderStepDims): StepPlace[] {
  const dims = { C: d.width, V: d.vocab, P: d.positions, E: d.experts };
  const { block, expert, final } = STEP_LAYOUTS[kind];
  const place = (t: StepTensor, layer: number | null, e: number | null): StepPlace => ({
    name: t.name,
    layer,
    expert: e,
    shape: t.shape.map((s) => sizeOf(s, dims)),
  });
  const places: StepPlace[] = [];
  for (let l = 0; l < d.layers; l++) {
    places.push(...block.map((t) => place(t, l, null)));
    for (let e = 0; e < (kind === "moe" ? d.experts : 0); e++) {
      places.push(...expert.map((t) => place(t, l, e)));
    }
  }
  places.push(...final.map((t) => place(t, null, null)));
  return places;
}

/** Floats of the decoder step's key/value cache: per layer keys and values, each (B, H, cached, hs). */
export function decoderCacheSize(d: DecoderStepDims): number {
  return d.layers * 2 * d.batch * d.cached * d.width;
}

// ---------------------------------------------------------------------------------------------
// The C side of the tables.

/** A table name as a C identifier: "maskAtt" → "mask_att", "attn.proj.weight" → "attn_proj_weight". */
function cName(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`).replace(/\./g, "_");
}

/** `#define DECODER_..._TENSORS(X) X(name, floats) ...`: the fields in order, for X-macros in C. */
function xMacro(macro: string, tensors: readonly StepTensor[]): string {
  const fields = tensors.map((t) => `X(${cName(t.name)}, ${t.shape.map(cSize).join(" * ")})`);
  return `#define ${macro}(X) ${fields.join(" ")}`;
}

/** Sizes of one row of width 1: a region's bytes are then its floats per element of (B, T, C) times 4. */
const UNIT: BlockDims = {
  B: 1,
  T: 1,
  C: 1,
  heads: 1,
  preNorm: false,
  causal: false,
  relu: false,
  scale: 1,
  keep: 1,
  eps: 0,
};
const SCRATCH = BLOCK_TENSORS.indexOf("scratch");

/**
 * The header of #defines the C kernels are compiled with: BLK_<NAME> = the index of each
 * BLOCK_TENSORS entry in the offsets array, BLK_SCRATCH_FORWARD / _BACKWARD = the scratch's floats per
 * element of (B, T, C), and the decoder steps' tables (DECODER_ATTENTION_TENSORS, DECODER_FFN_TENSORS,
 * MOE_ROUTER_TENSORS, MOE_EXPERT_TENSORS, DECODER_FINAL_TENSORS) as X-macros of (field, floats).
 */
export function layoutHeader(): string {
  return [
    "/* Generated by lib/blas/layout.ts (layoutHeader) from its tables. */",
    ...BLOCK_TENSORS.map((name, i) => `#define BLK_${cName(name).toUpperCase()} ${i}`),
    `#define BLK_COUNT ${BLOCK_TENSORS.length}`,
    `#define BLK_SCRATCH_FORWARD ${blockBytes(UNIT, false, false)[SCRATCH] / 4}`,
    `#define BLK_SCRATCH_BACKWARD ${blockBytes(UNIT, false, true)[SCRATCH] / 4}`,
    xMacro("DECODER_ATTENTION_TENSORS", DECODER_ATTENTION_TENSORS),
    xMacro("DECODER_FFN_TENSORS", DECODER_FFN_TENSORS),
    xMacro("MOE_ROUTER_TENSORS", MOE_ROUTER_TENSORS),
    xMacro("MOE_EXPERT_TENSORS", MOE_EXPERT_TENSORS),
    xMacro("DECODER_FINAL_TENSORS", DECODER_FINAL_TENSORS),
    "",
  ].join("\n");
}

if (import.meta.main) console.log(layoutHeader());
