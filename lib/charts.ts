// Charts for training runs and notebooks, as vega-lite v5 specs.
//
//   lossChart          train / validation loss against step
//   expertUsageChart   seeMoE: share of routed tokens per expert, a layer × expert heat-map (one panel per snapshot)
//   routingChart       seeMoE: the router's gate weights for each token of one batch
//   routingMapChart    seeMoE: each layer's strongest expert for each token of one sequence (layers × tokens)
//   attentionChart     attention weights (queries × keys), e.g. a caption attending to its image token(s)
//   patchGridChart     an input image cut into its ViT patches (optionally shaded by a weight per patch)
//   captionsChart      a few images with the model's caption (title, marked ✓ or ✗) and the truth (subtitle)
//   attributeChart     shapes captions: exact match and per-attribute accuracy of several runs, grouped bars
//
// A spec is plain JSON. toSvg() renders it headlessly with vega (no browser, no canvas); svgToPng() turns
// the SVG into a PNG with resvg; writeChart() writes both next to each other; chartBundle() makes the one
// Jupyter mime bundle a notebook shows (vega-lite for JupyterLab, SVG for every other front end, text).
// Each spec's `description` is a one-line summary in words: the bundle's text/plain.

import { Resvg } from "@resvg/resvg-js";
import sharp from "sharp";
import { Buffer } from "node:buffer";
import process from "node:process";
import { IMAGENET_MEAN, IMAGENET_STD } from "./config.ts";

export const VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json";
export const VEGA_LITE_MIME = "application/vnd.vegalite.v5+json";

/** A vega-lite v5 specification (JSON). */
export type Spec = { $schema: string; description: string; [key: string]: unknown };

/** The mime bundle one chart is shown as in a notebook. */
export interface ChartBundle {
  [VEGA_LITE_MIME]: Spec;
  "image/svg+xml": string;
  "text/plain": string;
  [key: string]: unknown;
}

// ---------------------------------------------------------------------------------------------
// Checks: charts refuse bad numbers with a message naming the chart, the row and the field.

function checkFinite(chart: string, value: unknown, where: string): number {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new Error(
      `${chart}: ${where} must be a finite number, got ${JSON.stringify(value) ?? String(value)}`,
    );
  }
  return value;
}

function checkMatrix(
  chart: string,
  name: string,
  m: readonly (readonly number[])[],
  rows: number,
  cols: number,
) {
  if (m.length !== rows) throw new Error(`${chart}: ${name} has ${m.length} rows, expected ${rows}`);
  m.forEach((row, r) => {
    if (row.length !== cols) {
      throw new Error(`${chart}: ${name} row ${r + 1} has ${row.length} values, expected ${cols}`);
    }
    row.forEach((v, c) => checkFinite(chart, v, `${name} row ${r + 1}, column ${c + 1}`));
  });
}

/** Labels of a categorical axis that keep their order and may repeat ("a", " ", "a"): "007|a". */
function indexedLabels(labels: readonly string[]): string[] {
  const width = String(labels.length).length;
  return labels.map((s, i) => `${String(i).padStart(width, "0")}|${s === " " ? "␣" : s === "\n" ? "⏎" : s}`);
}
/** Vega expression showing only the text after "|" of an indexed label. */
const SHOW_LABEL = "slice(datum.label, indexof(datum.label, '|') + 1)";

// ---------------------------------------------------------------------------------------------
// Loss against step.

export interface LossPoint {
  step: number;
  train_loss: number;
  val_loss: number | null;
}

export function lossChart(
  rows: readonly LossPoint[],
  opts: { title?: string; width?: number; height?: number; logScale?: boolean } = {},
): Spec {
  const chart = "lossChart";
  const values: { step: number; split: string; loss: number }[] = [];
  rows.forEach((r, i) => {
    const step = checkFinite(chart, r.step, `row ${i + 1}, field "step"`);
    values.push({
      step,
      split: "train",
      loss: checkFinite(chart, r.train_loss, `row ${i + 1}, field "train_loss"`),
    });
    if (r.val_loss !== null && r.val_loss !== undefined) {
      values.push({
        step,
        split: "validation",
        loss: checkFinite(chart, r.val_loss, `row ${i + 1}, field "val_loss"`),
      });
    }
  });
  const log = (opts.logScale ?? true) && values.every((v) => v.loss > 0);
  const last = rows.at(-1);
  const description = last
    ? `loss against step: ${rows.length} points, step ${last.step}: train ${last.train_loss.toFixed(4)}` +
      (last.val_loss !== null && last.val_loss !== undefined
        ? `, validation ${last.val_loss.toFixed(4)}`
        : "")
    : "loss against step: no points yet";
  return {
    $schema: VEGA_LITE_SCHEMA,
    description,
    title: opts.title ?? "Loss",
    width: opts.width ?? 460,
    height: opts.height ?? 240,
    data: { values },
    mark: { type: "line", point: true, tooltip: true },
    encoding: {
      x: { field: "step", type: "quantitative", title: "optimizer step" },
      y: {
        field: "loss",
        type: "quantitative",
        title: log ? "cross-entropy (log scale)" : "cross-entropy",
        scale: log ? { type: "log" } : { zero: true },
      },
      color: {
        field: "split",
        type: "nominal",
        title: null,
        scale: { domain: ["train", "validation"], range: ["#1e88e5", "#e53935"] },
      },
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Heat-maps: expert usage, routing, attention.

interface HeatCell {
  x: string;
  y: string;
  value: number;
  [key: string]: unknown;
}

function heatLayer(
  title: { x: string; y: string; value: string },
  opts: {
    scheme?: string;
    range?: string[];
    domain?: [number, number];
    indexed?: boolean;
    percent?: boolean;
  },
): Record<string, unknown> {
  const labelExpr = opts.indexed ? { labelExpr: SHOW_LABEL } : {};
  return {
    mark: { type: "rect", tooltip: true },
    encoding: {
      x: { field: "x", type: "ordinal", sort: null, title: title.x, axis: { labelAngle: 0, ...labelExpr } },
      y: { field: "y", type: "ordinal", sort: null, title: title.y, axis: labelExpr },
      color: {
        field: "value",
        type: "quantitative",
        title: title.value,
        scale: {
          // An explicit range blends in Lab: in vega's default (HCL) white has no defined chroma and the
          // low end comes out tinted instead of white.
          ...(opts.range ? { range: opts.range, interpolate: "lab" } : { scheme: opts.scheme ?? "blues" }),
          ...(opts.domain ? { domain: opts.domain } : {}),
        },
        legend: opts.percent ? { format: ".0%" } : {},
      },
    },
  };
}

/** Expert usage of one moment in training: counts[layer][expert] = tokens routed to that expert. */
export interface ExpertUsageSnapshot {
  step: number;
  counts: readonly (readonly number[])[];
}

/**
 * Share of routed tokens per expert in each decoder layer (each row sums to 1). With several snapshots
 * (e.g. one per evaluation) the chart shows up to `maxSnapshots` of them side by side, evenly picked, the
 * last always included, so routing can be watched as it changes over training.
 */
export function expertUsageChart(
  snapshots: readonly ExpertUsageSnapshot[],
  opts: { title?: string; maxSnapshots?: number; cellSize?: number } = {},
): Spec {
  const chart = "expertUsageChart";
  if (snapshots.length === 0) throw new Error(`${chart}: no snapshots to draw`);
  const layers = snapshots[0].counts.length;
  const experts = snapshots[0].counts[0]?.length ?? 0;
  if (layers === 0 || experts === 0) throw new Error(`${chart}: snapshot 1 has no layers or no experts`);
  snapshots.forEach((s, i) => {
    checkFinite(chart, s.step, `snapshot ${i + 1}, field "step"`);
    checkMatrix(chart, `snapshot ${i + 1} counts`, s.counts, layers, experts);
  });
  const picked = pickEvenly(snapshots, opts.maxSnapshots ?? 6);
  const values: HeatCell[] = [];
  for (const s of picked) {
    s.counts.forEach((row, layer) => {
      const total = row.reduce((a, b) => a + b, 0);
      row.forEach((count, expert) => {
        values.push({
          step: s.step,
          x: String(expert),
          y: String(layer),
          value: total > 0 ? count / total : 0,
          tokens: count,
        });
      });
    });
  }
  const last = picked.at(-1)!;
  const busiest = last.counts.map((row) => row.indexOf(Math.max(...row)));
  const size = opts.cellSize ?? 22;
  const heat = heatLayer({ x: "expert", y: "decoder layer", value: "share" }, {
    scheme: "blues",
    percent: true,
  });
  const description = `expert usage (share of routed tokens, ${layers} layers × ${experts} experts, ` +
    `uniform = ${(100 / experts).toFixed(1)} %) at step${picked.length > 1 ? "s" : ""} ` +
    `${picked.map((s) => s.step).join(", ")}; busiest expert per layer at step ${last.step}: ${
      busiest.join(" ")
    }`;
  const title = opts.title ?? "Expert usage: share of routed tokens";
  if (picked.length === 1) {
    return {
      $schema: VEGA_LITE_SCHEMA,
      description,
      title: { text: title, subtitle: `step ${last.step}` },
      data: { values },
      width: experts * size,
      height: layers * size,
      ...heat,
    };
  }
  return {
    $schema: VEGA_LITE_SCHEMA,
    description,
    title,
    data: { values },
    facet: { field: "step", type: "ordinal", title: "optimizer step" },
    columns: 3, // wrap: six panels side by side are wider than a notebook
    spec: { width: experts * size, height: layers * size, ...heat },
    resolve: { scale: { color: "shared" } },
  };
}

/**
 * Expert-usage snapshots from training metrics whose rows carry seeMoE router statistics (one entry per
 * MoE layer, each with a `share` per expert); rows without them are skipped. [] for a dense model.
 */
export function usageFromMetrics(
  rows: readonly { step: number; router?: readonly { share: readonly number[] }[] }[],
): ExpertUsageSnapshot[] {
  return rows.filter((r) => r.router && r.router.length > 0)
    .map((r) => ({ step: r.step, counts: r.router!.map((layer) => layer.share) }));
}

/** Up to n items, evenly spaced, first and last included. */
function pickEvenly<T>(items: readonly T[], n: number): T[] {
  if (items.length <= n) return [...items];
  if (n <= 1) return [items[items.length - 1]];
  const out: T[] = [];
  for (let i = 0; i < n; i++) out.push(items[Math.round((i * (items.length - 1)) / (n - 1))]);
  return out;
}

/**
 * How one batch is routed: gates[token][expert] is the router's weight for that expert (0 when the
 * expert was not among the token's top-k). `tokens` labels the rows (e.g. the characters).
 */
export function routingChart(
  gates: readonly (readonly number[])[],
  tokens: readonly string[],
  opts: { title?: string; cellSize?: number } = {},
): Spec {
  const chart = "routingChart";
  const experts = gates[0]?.length ?? 0;
  if (gates.length === 0 || experts === 0) throw new Error(`${chart}: gates is empty`);
  checkMatrix(chart, "gates", gates, tokens.length, experts);
  const rows = indexedLabels(tokens);
  const values: HeatCell[] = [];
  gates.forEach((row, t) => row.forEach((g, e) => values.push({ x: String(e), y: rows[t], value: g })));
  const chosen = gates.map((row) => row.filter((g) => g > 0).length);
  const size = opts.cellSize ?? 16;
  return {
    $schema: VEGA_LITE_SCHEMA,
    description: `router gates for ${tokens.length} tokens × ${experts} experts; experts chosen per token: ` +
      `${Math.min(...chosen)}–${Math.max(...chosen)}`,
    title: opts.title ?? "Router: gate weight of each expert for each token",
    data: { values },
    width: experts * size * 1.5,
    height: tokens.length * size,
    ...heatLayer({ x: "expert", y: "token", value: "gate" }, {
      range: ["#ffffff", "#bf360c"],
      domain: [0, 1],
      indexed: true,
    }),
  };
}

/**
 * How one sequence is routed through every MoE layer: gates[layer][token][expert] (0 for experts not chosen).
 * One row per layer, one column per token; a cell is coloured by the expert with the largest gate and labelled
 * with its number, paler the less of the token that expert takes (top-k shares each token).
 */
export function routingMapChart(
  gates: readonly (readonly (readonly number[])[])[],
  tokens: readonly string[],
  opts: { title?: string; subtitle?: string; cellSize?: number } = {},
): Spec {
  const chart = "routingMapChart";
  const experts = gates[0]?.[0]?.length ?? 0;
  if (gates.length === 0 || experts === 0) throw new Error(`${chart}: gates is empty`);
  gates.forEach((layer, l) => checkMatrix(chart, `layer ${l} gates`, layer, tokens.length, experts));
  const columns = indexedLabels(tokens);
  const values: { x: string; y: string; expert: string; gate: number; chosen: string }[] = [];
  const busiest: string[] = [];
  gates.forEach((layer, l) => {
    const tally = new Array<number>(experts).fill(0);
    layer.forEach((row, t) => {
      const top = row.indexOf(Math.max(...row));
      tally[top] += 1;
      const chosen = row.map((g, e) => [e, g]).filter(([, g]) => g > 0).sort((a, b) => b[1] - a[1]);
      values.push({
        x: columns[t],
        y: `layer ${l}`,
        expert: String(top),
        gate: row[top],
        chosen: chosen.map(([e, g]) => `${e}: ${g.toFixed(2)}`).join(", "),
      });
    });
    const most = tally.indexOf(Math.max(...tally));
    busiest.push(`layer ${l}: expert ${most} (${tally[most]} of ${tokens.length})`);
  });
  const size = opts.cellSize ?? 14;
  const x = {
    field: "x",
    type: "ordinal",
    sort: null,
    title: "token",
    axis: { labelAngle: 0, labelExpr: SHOW_LABEL, labelFontSize: 9 },
  };
  const y = { field: "y", type: "ordinal", sort: null, title: null };
  const title = opts.title ?? "Strongest expert for each token, per layer";
  return {
    $schema: VEGA_LITE_SCHEMA,
    description: `routing of ${tokens.length} tokens through ${gates.length} layers of ${experts} experts; ` +
      `most frequent strongest expert per layer: ${busiest.join("; ")}`,
    title: opts.subtitle ? { text: title, subtitle: opts.subtitle } : title,
    data: { values },
    width: tokens.length * size,
    height: gates.length * size * 1.6,
    encoding: { x, y },
    layer: [
      {
        mark: { type: "rect", tooltip: { content: "data" } },
        encoding: {
          color: {
            field: "expert",
            type: "nominal",
            title: "expert",
            scale: { domain: Array.from({ length: experts }, (_, e) => String(e)), scheme: "category10" },
          },
          opacity: {
            field: "gate",
            type: "quantitative",
            scale: { domain: [0, 1], range: [0.2, 1] },
            legend: null, // the gate itself is in the tooltip
          },
        },
      },
      {
        mark: { type: "text", fontSize: 8, color: "black" },
        encoding: { text: { field: "expert", type: "nominal" } },
      },
    ],
  };
}

/**
 * Attention weights (queries × keys), e.g. averaged over heads. Labels name each position; the same label
 * may appear more than once (characters repeat).
 */
export function attentionChart(
  weights: readonly (readonly number[])[],
  queryLabels: readonly string[],
  keyLabels: readonly string[],
  opts: { title?: string; subtitle?: string; cellSize?: number } = {},
): Spec {
  const chart = "attentionChart";
  checkMatrix(chart, "weights", weights, queryLabels.length, keyLabels.length);
  const qs = indexedLabels(queryLabels);
  const ks = indexedLabels(keyLabels);
  const values: HeatCell[] = [];
  weights.forEach((row, q) => row.forEach((w, k) => values.push({ x: ks[k], y: qs[q], value: w })));
  const size = opts.cellSize ?? 12;
  const title = opts.title ?? "Attention";
  return {
    $schema: VEGA_LITE_SCHEMA,
    description: `${title}: ${queryLabels.length} queries × ${keyLabels.length} keys` +
      (opts.subtitle ? ` (${opts.subtitle})` : ""),
    title: opts.subtitle ? { text: title, subtitle: opts.subtitle } : title,
    data: { values },
    width: keyLabels.length * size,
    height: queryLabels.length * size,
    ...heatLayer(
      { x: "key (attended to)", y: "query (attending)", value: "weight" },
      { scheme: "viridis", domain: [0, 1], indexed: true },
    ),
  };
}

// ---------------------------------------------------------------------------------------------
// Images.

/** A normalised (3, S, S) CHW image (as the model sees it) back to 8-bit RGB, (S, S, 3) HWC. */
export function imageBytes(chw: Float32Array, imgSize: number): Uint8Array {
  const plane = imgSize * imgSize;
  if (chw.length !== 3 * plane) {
    throw new Error(
      `imageBytes: image has ${chw.length} values, expected 3 × ${imgSize} × ${imgSize} = ${3 * plane}`,
    );
  }
  const out = new Uint8Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < plane; i++) {
      const v = (chw[c * plane + i] * IMAGENET_STD[c] + IMAGENET_MEAN[c]) * 255;
      out[i * 3 + c] = Math.max(0, Math.min(255, Math.round(v)));
    }
  }
  return out;
}

/** A normalised (3, S, S) image as a PNG data URL, enlarged `scale` times with crisp (nearest) pixels. */
export async function imageDataUrl(chw: Float32Array, imgSize: number, scale = 1): Promise<string> {
  const raw = Buffer.from(imageBytes(chw, imgSize));
  const size = imgSize * scale;
  const png = await sharp(raw, { raw: { width: imgSize, height: imgSize, channels: 3 } })
    .resize(size, size, { kernel: "nearest" })
    .png()
    .toBuffer();
  return `data:image/png;base64,${png.toString("base64")}`;
}

function imageLayer(url: string, imgSize: number, px: number): Record<string, unknown> {
  const domain = [0, imgSize];
  return {
    data: { values: [{ x: imgSize / 2, y: imgSize / 2, url }] },
    mark: { type: "image", width: px, height: px },
    encoding: {
      x: { field: "x", type: "quantitative", scale: { domain, nice: false }, axis: null },
      y: { field: "y", type: "quantitative", scale: { domain, nice: false, reverse: true }, axis: null },
      url: { field: "url", type: "nominal" },
    },
  };
}

/**
 * The image a ViT sees, cut into patchSize × patchSize patches (numbered in the row-major order the
 * model reads them, after its CLS token). With `weights` (one per patch, e.g. attention from the CLS
 * token) each patch is shaded: the brighter the patch, the more weight.
 */
export async function patchGridChart(
  image: Float32Array,
  opts: { imgSize: number; patchSize: number; weights?: readonly number[]; title?: string; scale?: number },
): Promise<Spec> {
  const { imgSize: S, patchSize: p, weights } = opts;
  const g = checkPatchGrid(S, p, weights);
  const scale = opts.scale ?? 3;
  const px = S * scale;
  const url = await imageDataUrl(image, S, scale);
  const patches = patchCells(g, p, weights);
  const layers: Record<string, unknown>[] = [imageLayer(url, S, px)];
  if (weights) layers.push(patchShadeLayer(patches, weights, S));
  layers.push(...patchLinesAndNumbers(patches, g, p, S, Math.max(8, Math.round(p * scale / 4))));
  const description = `${S}×${S} image cut into ${g}×${g} = ${g * g} patches of ${p}×${p} pixels` +
    (weights ? `; most weight on patch ${weights.indexOf(Math.max(...weights))}` : "");
  return {
    $schema: VEGA_LITE_SCHEMA,
    description,
    title: opts.title ?? `${g * g} patches of ${p}×${p} pixels`,
    width: px,
    height: px,
    layer: layers,
    config: { view: { stroke: null } },
  };
}

/** The patches per side of an S-pixel image cut into p-pixel patches; refuses a bad size or weights. */
function checkPatchGrid(S: number, p: number, weights?: readonly number[]): number {
  const chart = "patchGridChart";
  if (!(S > 0 && p > 0 && S % p === 0)) {
    throw new Error(`${chart}: img_size ${S} must be a positive multiple of patch_size ${p}`);
  }
  const g = S / p;
  if (weights) {
    if (weights.length !== g * g) {
      throw new Error(`${chart}: weights has ${weights.length} values, expected one per patch (${g * g})`);
    }
    weights.forEach((w, i) => checkFinite(chart, w, `weights[${i}]`));
  }
  return g;
}

/** Each of the g × g patches, row-major: its number, corners, centre and weight (0 without weights). */
function patchCells(g: number, p: number, weights?: readonly number[]) {
  return Array.from({ length: g * g }, (_, i) => ({
    index: i,
    x: (i % g) * p,
    x2: (i % g + 1) * p,
    y: Math.floor(i / g) * p,
    y2: (Math.floor(i / g) + 1) * p,
    cx: (i % g + 0.5) * p,
    cy: (Math.floor(i / g) + 0.5) * p,
    weight: weights ? weights[i] : 0,
  }));
}

/** A position on the S-pixel image, x rightwards and y downwards as in the image layer, without an axis. */
function pixelChannel(field: string, axis: "x" | "y", S: number) {
  const domain = [0, S];
  return {
    field,
    type: "quantitative",
    scale: { domain, nice: false, ...(axis === "y" ? { reverse: true } : {}) },
    axis: null,
  };
}

/** Each patch darkened by how far its weight falls below the largest (the brightest has the most). */
function patchShadeLayer(
  patches: ReturnType<typeof patchCells>,
  weights: readonly number[],
  S: number,
): Record<string, unknown> {
  const max = Math.max(...weights, 1e-12);
  return {
    data: { values: patches.map((q) => ({ ...q, dim: 0.75 * (1 - q.weight / max) })) },
    mark: { type: "rect", color: "black", tooltip: true },
    encoding: {
      x: pixelChannel("x", "x", S),
      x2: { field: "x2" },
      y: pixelChannel("y", "y", S),
      y2: { field: "y2" },
      opacity: { field: "dim", type: "quantitative", scale: null, legend: null },
      tooltip: [{ field: "index", title: "patch" }, { field: "weight", format: ".3f" }],
    },
  };
}

/** White lines on the cuts between patches, and each patch's number at its centre. */
function patchLinesAndNumbers(
  patches: ReturnType<typeof patchCells>,
  g: number,
  p: number,
  S: number,
  fontSize: number,
): Record<string, unknown>[] {
  const cuts = Array.from({ length: g - 1 }, (_, i) => ({ at: (i + 1) * p }));
  const xy = (field: string, axis: "x" | "y") => pixelChannel(field, axis, S);
  return [
    {
      data: { values: cuts },
      mark: { type: "rule", color: "white", opacity: 0.8 },
      encoding: { x: xy("at", "x") },
    },
    {
      data: { values: cuts },
      mark: { type: "rule", color: "white", opacity: 0.8 },
      encoding: { y: xy("at", "y") },
    },
    {
      data: { values: patches },
      mark: { type: "text", color: "white", opacity: 0.7, fontSize },
      encoding: { x: xy("cx", "x"), y: xy("cy", "y"), text: { field: "index", type: "nominal" } },
    },
  ];
}

/** One image with what the model said about it and, optionally, the truth. */
export interface CaptionedImage {
  image: Float32Array; // (3, S, S) normalised
  caption: string; // the model's
  truth?: string;
  /** Whether the caption is right (default: it equals the truth, when a truth is given). */
  correct?: boolean;
}

/** Right (true), wrong (false) or unknown (null: no truth and no verdict given). */
function verdict(item: CaptionedImage): boolean | null {
  return item.correct ?? (item.truth === undefined ? null : item.caption === item.truth);
}

/**
 * A gallery: each image titled with the model's caption, marked ✓ (green) when right and ✗ (red) when
 * wrong, the truth below it.
 */
export async function captionsChart(
  items: readonly CaptionedImage[],
  opts: { imgSize: number; columns?: number; scale?: number; title?: string },
): Promise<Spec> {
  if (items.length === 0) throw new Error("captionsChart: no images");
  const scale = opts.scale ?? 2;
  const px = opts.imgSize * scale;
  const panels = await Promise.all(items.map(async (item) => {
    const right = verdict(item);
    const mark = right === null ? "" : right ? "✓ " : "✗ ";
    return {
      title: {
        text: mark + (item.caption || "(empty)"),
        ...(item.truth !== undefined ? { subtitle: `truth: ${item.truth}` } : {}),
        color: right === null ? "black" : right ? "#2e7d32" : "#c62828",
        fontSize: 11,
        subtitleFontSize: 10,
        // No `limit`: without a canvas vega over-estimates text width and would cut captions short.
      },
      width: Math.max(px + 48, 240),
      height: px,
      ...imageLayer(await imageDataUrl(item.image, opts.imgSize, scale), opts.imgSize, px),
    };
  }));
  const judged = items.map(verdict).filter((v) => v !== null);
  const right = judged.filter((v) => v).length;
  return {
    $schema: VEGA_LITE_SCHEMA,
    description: `captions for ${items.length} images` +
      (judged.length ? ` (${right} of ${judged.length} right)` : "") +
      ": " + items.map((i) => JSON.stringify(i.caption)).join(", "),
    title: opts.title ?? "Captions",
    columns: opts.columns ?? 3,
    concat: panels,
    // Panels are laid out by their image size only: vega's headless text measure over-estimates the
    // caption titles and would space the panels far apart. The captions fit within a panel's width.
    bounds: "flush",
    spacing: { column: 24, row: 52 },
    config: { view: { stroke: null } },
  };
}

// ---------------------------------------------------------------------------------------------
// Caption scores on the shapes grammar.

/** One captioner's scores: exact match and the accuracy of each attribute (null: no truth states it). */
export interface AttributeScores {
  name: string;
  exact_match: number;
  attributes?: {
    colour: number | null;
    shape: number | null;
    size: number | null;
    position: number | null;
  };
  /** The bars' colour (default: the next colour of a fixed palette, blue first, then grey). */
  color?: string;
}

/** The bars of attributeChart, in order. */
export const SCORE_BARS = ["exact", "colour", "shape", "size", "position"] as const;

const PALETTE = ["#1e88e5", "#9e9e9e", "#fb8c00", "#43a047", "#8e24aa", "#e53935", "#00acc1", "#6d4c41"];

/**
 * Grouped bars of exact match and per-attribute accuracy (0–1), one colour per run: e.g. a model next to
 * the blind baseline (`groupBy: "attribute"`, the default), or a series of runs each adding one change
 * (`groupBy: "run"`: one group per run, in the order given, one colour per score).
 */
export function attributeChart(
  runs: readonly AttributeScores[],
  opts: {
    title?: string;
    subtitle?: string;
    groupBy?: "attribute" | "run";
    width?: number;
    height?: number;
  } = {},
): Spec {
  const chart = "attributeChart";
  if (runs.length === 0) throw new Error(`${chart}: no runs to draw`);
  const names = runs.map((r) => r.name);
  if (new Set(names).size !== names.length) throw new Error(`${chart}: two runs share a name`);
  const values: { run: string; score: string; accuracy: number }[] = [];
  runs.forEach((r, i) => {
    const scores: Record<string, number | null | undefined> = { exact: r.exact_match, ...r.attributes };
    for (const score of SCORE_BARS) {
      const v = scores[score];
      if (v === null || v === undefined) continue;
      const where = `run ${i + 1} ("${r.name}"), ${score === "exact" ? "exact_match" : score}`;
      const accuracy = checkFinite(chart, v, where);
      if (accuracy < 0 || accuracy > 1) throw new Error(`${chart}: ${where} must lie in [0, 1], got ${v}`);
      values.push({ run: r.name, score, accuracy });
    }
  });
  const byRun = opts.groupBy === "run";
  const scores = SCORE_BARS.filter((s) => values.some((v) => v.score === s));
  const colours = byRun
    ? scores.map((_, i) => PALETTE[(i + 2) % PALETTE.length])
    : runs.map((r, i) => r.color ?? PALETTE[i % PALETTE.length]);
  const group = { field: byRun ? "run" : "score", type: "nominal", sort: byRun ? names : scores };
  const within = { field: byRun ? "score" : "run", type: "nominal", sort: byRun ? scores : names };
  const pct = (v: number) => `${(100 * v).toFixed(1)} %`;
  const description = "exact match and attribute accuracy: " + runs.map((r) =>
    `${r.name}: ` +
    values.filter((v) => v.run === r.name).map((v) => `${v.score} ${pct(v.accuracy)}`).join(", ")
  ).join("; ");
  const encoding = {
    // Run names are long: slanted, never cut (vega's headless text measure over-estimates widths).
    x: {
      ...group,
      title: null,
      axis: byRun ? { labelAngle: -20, labelAlign: "right", labelLimit: 0 } : { labelAngle: 0 },
    },
    xOffset: within,
    y: {
      field: "accuracy",
      type: "quantitative",
      title: "share right",
      scale: { domain: [0, 1] },
      axis: { format: ".0%" },
    },
    color: { ...within, title: null, scale: { domain: within.sort, range: colours } },
  };
  const groups = byRun ? runs.length : scores.length;
  const perGroup = byRun ? scores.length : runs.length;
  return {
    $schema: VEGA_LITE_SCHEMA,
    description,
    title: opts.subtitle ? { text: opts.title ?? "Caption scores", subtitle: opts.subtitle } : opts.title ??
      "Caption scores",
    width: opts.width ?? Math.max(360, groups * (perGroup * 18 + 24)),
    height: opts.height ?? 220,
    data: { values },
    encoding,
    layer: [
      { mark: { type: "bar", tooltip: true } },
      {
        mark: { type: "text", dy: -4, fontSize: 8, baseline: "bottom" },
        encoding: {
          text: { field: "accuracy", type: "quantitative", format: ".0%" },
          color: { value: "#333" },
        },
      },
    ],
  };
}

// ---------------------------------------------------------------------------------------------
// Rendering.

let renderer: Promise<{ vega: typeof import("vega"); vl: typeof import("vega-lite") }> | null = null;

/**
 * vega and vega-lite, loaded on first use. Loading vega pulls in node-fetch 2, whose dependency on Node's
 * deprecated `punycode` module prints a DeprecationWarning on stderr (in the CLI, in notebook cells):
 * Node deprecation warnings are muted while these two modules load, and only then.
 */
function loadVega() {
  renderer ??= (async () => {
    const before = process.noDeprecation;
    process.noDeprecation = true;
    try {
      return { vega: await import("vega"), vl: await import("vega-lite") };
    } finally {
      process.noDeprecation = before;
    }
  })();
  return renderer;
}

/** Renders a vega-lite spec to SVG headlessly (vega's "none" renderer: no DOM, no canvas). */
export async function toSvg(spec: Spec): Promise<string> {
  const { vega, vl } = await loadVega();
  // deno-lint-ignore no-explicit-any
  const compiled = vl.compile(spec as any).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** SVG text → PNG bytes (resvg; `zoom` 2 for a sharp picture on high-density screens). */
export function svgToPng(svg: string, zoom = 2): Uint8Array {
  const resvg = new Resvg(svg, {
    fitTo: { mode: "zoom", value: zoom },
    background: "white",
    font: { loadSystemFonts: true },
  });
  return resvg.render().asPng();
}

/** Writes `<base>.svg` and `<base>.png` (temp names, then renamed: nothing half-written). Returns both paths. */
export async function writeChart(spec: Spec, base: string): Promise<{ svg: string; png: string }> {
  const svg = await toSvg(spec);
  const png = svgToPng(svg);
  const files: [string, Uint8Array][] = [
    [`${base}.svg`, new TextEncoder().encode(svg)],
    [`${base}.png`, png],
  ];
  const temps = files.map(([path]) => `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`);
  try {
    for (let i = 0; i < files.length; i++) await Deno.writeFile(temps[i], files[i][1]);
    for (let i = 0; i < files.length; i++) await Deno.rename(temps[i], files[i][0]);
  } catch (e) {
    for (const t of temps) await Deno.remove(t).catch(() => {});
    throw new Error(`writeChart: cannot write ${base}.svg/.png: ${(e as Error).message}`);
  }
  return { svg: files[0][0], png: files[1][0] };
}

/** The mime bundle of one chart: vega-lite v5 spec, its SVG rendering, and a line of text. */
export async function chartBundle(spec: Spec): Promise<ChartBundle> {
  return {
    [VEGA_LITE_MIME]: spec,
    "image/svg+xml": await toSvg(spec),
    "text/plain": spec.description,
  };
}
