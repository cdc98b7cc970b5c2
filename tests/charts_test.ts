// Tests for lib/charts.ts: the vega-lite specs hold the right data, every chart compiles and renders to
// SVG headlessly, PNGs come out of resvg, files are written whole, and bad numbers are refused with a
// message naming the chart, the row and the field.

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  attentionChart,
  attributeChart,
  captionsChart,
  chartBundle,
  expertUsageChart,
  imageBytes,
  lossChart,
  patchGridChart,
  routingChart,
  routingMapChart,
  type Spec,
  svgToPng,
  toSvg,
  usageFromMetrics,
  VEGA_LITE_MIME,
  VEGA_LITE_SCHEMA,
  writeChart,
} from "../lib/charts.ts";
import { normaliseByte } from "../lib/data/images.ts";

function throwsIncluding(fn: () => unknown, text: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(
      e instanceof Error && e.message.includes(text),
      `expected an error containing ${JSON.stringify(text)}, got ${e}`,
    );
    return true;
  });
}

// deno-lint-ignore no-explicit-any
const values = (spec: Spec) => (spec.data as any).values as Record<string, unknown>[];

/** A normalised (3, S, S) image: pixel (y, x) has bytes (x, y, 7) — easy to check after a round trip. */
function gradientImage(S: number): Float32Array {
  const out = new Float32Array(3 * S * S);
  for (let y = 0; y < S; y++) {
    for (let x = 0; x < S; x++) {
      const bytes = [x * 4 % 256, y * 4 % 256, 7];
      bytes.forEach((b, c) => out[c * S * S + y * S + x] = normaliseByte(b, c));
    }
  }
  return out;
}

/** Width and height from a PNG's IHDR chunk. */
function pngSize(png: Uint8Array): [number, number] {
  assert.deepEqual(
    [...png.slice(0, 8)],
    [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a],
    "not a PNG signature",
  );
  const view = new DataView(png.buffer, png.byteOffset);
  return [view.getUint32(16), view.getUint32(20)];
}

const LOSS_ROWS = [
  { step: 1, train_loss: 4.2, val_loss: 4.3 },
  { step: 10, train_loss: 2.1, val_loss: null },
  { step: 20, train_loss: 0.9, val_loss: 1.2 },
];

Deno.test("lossChart: one point per train loss and per measured validation loss, log scale when positive", () => {
  const spec = lossChart(LOSS_ROWS);
  assert.equal(spec.$schema, VEGA_LITE_SCHEMA);
  assert.deepEqual(values(spec), [
    { step: 1, split: "train", loss: 4.2 },
    { step: 1, split: "validation", loss: 4.3 },
    { step: 10, split: "train", loss: 2.1 },
    { step: 20, split: "train", loss: 0.9 },
    { step: 20, split: "validation", loss: 1.2 },
  ]);
  // deno-lint-ignore no-explicit-any
  assert.deepEqual((spec.encoding as any).y.scale, { type: "log" });
  assert.equal(spec.description, "loss against step: 3 points, step 20: train 0.9000, validation 1.2000");
  // A zero loss cannot go on a log axis.
  // deno-lint-ignore no-explicit-any
  assert.deepEqual((lossChart([{ step: 0, train_loss: 0, val_loss: null }]).encoding as any).y.scale, {
    zero: true,
  });
});

Deno.test("lossChart refuses a non-finite loss, naming the row and the field", () => {
  throwsIncluding(
    () => lossChart([LOSS_ROWS[0], { step: 2, train_loss: NaN, val_loss: null }]),
    'lossChart: row 2, field "train_loss"',
  );
  throwsIncluding(
    () => lossChart([{ step: 2, train_loss: 1, val_loss: Infinity }]),
    'row 1, field "val_loss"',
  );
});

Deno.test("toSvg renders a chart headlessly, with its title and its points", async () => {
  const svg = await toSvg(lossChart(LOSS_ROWS, { title: "A loss title" }));
  assert.match(svg, /^<svg[^>]*width="\d+"/);
  assert.ok(svg.includes("A loss title"));
  assert.ok(svg.includes("validation"));
});

Deno.test("expertUsageChart: shares per layer sum to 1, and snapshots are thinned evenly keeping the last", () => {
  const counts = [[3, 1, 0, 0], [1, 1, 1, 1]]; // 2 layers × 4 experts
  const one = expertUsageChart([{ step: 5, counts }]);
  const cells = values(one) as { y: string; x: string; value: number }[];
  assert.equal(cells.length, 8);
  assert.deepEqual(cells.filter((c) => c.y === "0").map((c) => c.value), [0.75, 0.25, 0, 0]);
  assert.deepEqual(cells.filter((c) => c.y === "1").map((c) => c.value), [0.25, 0.25, 0.25, 0.25]);
  assert.ok(one.description.includes("busiest expert per layer at step 5: 0 0"));

  const many = expertUsageChart(Array.from({ length: 10 }, (_, i) => ({ step: i * 10, counts })), {
    maxSnapshots: 4,
  });
  const steps = [...new Set((values(many) as { step: number }[]).map((c) => c.step))];
  assert.deepEqual(steps, [0, 30, 60, 90]);
  assert.ok("facet" in many);
});

Deno.test("usageFromMetrics takes each layer's share from rows with router statistics", () => {
  const rows = [
    { step: 1, train_loss: 4, val_loss: null },
    { step: 2, train_loss: 3, val_loss: 3.5, router: [{ share: [0.5, 0.5] }, { share: [1, 0] }] },
  ];
  assert.deepEqual(usageFromMetrics(rows), [{ step: 2, counts: [[0.5, 0.5], [1, 0]] }]);
  assert.deepEqual(usageFromMetrics([{ step: 1 }]), []);
});

Deno.test("expertUsageChart refuses ragged or non-finite counts", () => {
  throwsIncluding(() => expertUsageChart([]), "no snapshots");
  throwsIncluding(
    () => expertUsageChart([{ step: 0, counts: [[1, 2]] }, { step: 1, counts: [[1, 2, 3]] }]),
    "snapshot 2 counts row 1 has 3 values, expected 2",
  );
  throwsIncluding(
    () => expertUsageChart([{ step: 0, counts: [[1, NaN]] }]),
    "snapshot 1 counts row 1, column 2",
  );
});

Deno.test("attentionChart keeps repeated labels apart and checks the matrix against the labels", () => {
  const labels = ["IMG", "a", " ", "a"];
  const weights = labels.map((_, q) => labels.map((_, k) => (k <= q ? 1 / (q + 1) : 0)));
  const spec = attentionChart(weights, labels, labels);
  const cells = values(spec) as { x: string; y: string; value: number }[];
  assert.equal(cells.length, 16);
  assert.equal(new Set(cells.map((c) => c.x)).size, 4); // "a" twice stays two columns
  assert.deepEqual([...new Set(cells.map((c) => c.x))], ["0|IMG", "1|a", "2|␣", "3|a"]);
  throwsIncluding(
    () => attentionChart(weights, labels, labels.slice(1)),
    "attentionChart: weights row 1 has 4 values, expected 3",
  );
  throwsIncluding(() => attentionChart(weights.slice(1), labels, labels), "weights has 3 rows, expected 4");
});

Deno.test("routingChart: one cell per token and expert; the description counts chosen experts", () => {
  const gates = [[0.7, 0.3, 0, 0], [0, 0, 0.6, 0.4], [0.5, 0, 0.5, 0]];
  const spec = routingChart(gates, ["a", "b", "c"]);
  assert.equal(values(spec).length, 12);
  assert.ok(spec.description.includes("experts chosen per token: 2–2"));
  throwsIncluding(() => routingChart(gates, ["a", "b"]), "gates has 3 rows, expected 2");
});

Deno.test("routingChart draws an expert that was not chosen in white", async () => {
  const svg = await toSvg(routingChart([[1, 0]], ["a"]));
  const fills = svg.match(/fill="rgb\([^)]*\)"/g);
  assert.deepEqual(fills, ['fill="rgb(191, 54, 12)"', 'fill="rgb(255, 255, 255)"']);
});

Deno.test("routingMapChart: per layer and token, the expert with the largest gate, its gate and every choice", async () => {
  const gates = [
    [[0.7, 0.3, 0], [0, 0.4, 0.6]], // layer 0: tokens "a", " "
    [[0, 0, 1], [0.5, 0.5, 0]], // layer 1 (ties, here and in the tally, go to the lower expert)
  ];
  const spec = routingMapChart(gates, ["a", " "]);
  assert.deepEqual(values(spec), [
    { x: "0|a", y: "layer 0", expert: "0", gate: 0.7, chosen: "0: 0.70, 1: 0.30" },
    { x: "1|␣", y: "layer 0", expert: "2", gate: 0.6, chosen: "2: 0.60, 1: 0.40" },
    { x: "0|a", y: "layer 1", expert: "2", gate: 1, chosen: "2: 1.00" },
    { x: "1|␣", y: "layer 1", expert: "0", gate: 0.5, chosen: "0: 0.50, 1: 0.50" },
  ]);
  assert.ok(
    spec.description.includes("layer 0: expert 0 (1 of 2); layer 1: expert 0 (1 of 2)"),
    spec.description,
  );
  // deno-lint-ignore no-explicit-any
  assert.deepEqual((spec.layer as any)[0].encoding.color.scale.domain, ["0", "1", "2"]);
  const svg = await toSvg(spec);
  assert.equal(svg.match(/aria-roledescription="rect mark"/g)?.length, 4, "one cell per layer and token");
  const labels = svg.match(/aria-roledescription="text mark"[^>]*>(\d)<\/text>/g)?.map((t) => t.at(-8));
  assert.deepEqual(labels, ["0", "2", "2", "0"], "each cell names its expert");
});

Deno.test("routingMapChart refuses empty or ragged gates, naming the layer", () => {
  throwsIncluding(() => routingMapChart([], []), "routingMapChart: gates is empty");
  throwsIncluding(
    () => routingMapChart([[[1, 0]], [[1, 0], [0, 1]]], ["a"]),
    "layer 1 gates has 2 rows, expected 1",
  );
  throwsIncluding(() => routingMapChart([[[1, NaN]]], ["a"]), "layer 0 gates row 1, column 2");
});

Deno.test("imageBytes undoes the model's normalisation exactly", () => {
  const S = 8;
  const bytes = imageBytes(gradientImage(S), S);
  for (let y = 0; y < S; y++) {
    for (let x = 0; x < S; x++) {
      const i = (y * S + x) * 3;
      assert.deepEqual([...bytes.slice(i, i + 3)], [x * 4 % 256, y * 4 % 256, 7], `pixel (${y}, ${x})`);
    }
  }
  throwsIncluding(() => imageBytes(new Float32Array(10), S), "expected 3 × 8 × 8 = 192");
});

Deno.test("patchGridChart: the image, the cuts between patches, one label per patch; bad sizes refused", async () => {
  const S = 32, p = 16;
  const spec = await patchGridChart(gradientImage(S), { imgSize: S, patchSize: p, weights: [1, 2, 3, 4] });
  // deno-lint-ignore no-explicit-any
  const layers = spec.layer as any[];
  assert.match(layers[0].data.values[0].url, /^data:image\/png;base64,/);
  const labels = layers.at(-1).data.values as { index: number; cx: number; cy: number }[];
  assert.deepEqual(labels.map((l) => [l.index, l.cx, l.cy]), [[0, 8, 8], [1, 24, 8], [2, 8, 24], [
    3,
    24,
    24,
  ]]);
  assert.ok(
    spec.description.includes("2×2 = 4 patches") && spec.description.includes("most weight on patch 3"),
  );
  await assert.rejects(
    () => patchGridChart(gradientImage(S), { imgSize: S, patchSize: 10 }),
    /multiple of patch_size 10/,
  );
  await assert.rejects(
    () => patchGridChart(gradientImage(S), { imgSize: S, patchSize: p, weights: [1, 2] }),
    /weights has 2 values, expected one per patch \(4\)/,
  );
});

Deno.test("every chart kind compiles and renders to SVG", async () => {
  const image = gradientImage(32);
  const specs = [
    lossChart(LOSS_ROWS),
    expertUsageChart([{ step: 1, counts: [[1, 2], [2, 1]] }, { step: 2, counts: [[2, 2], [3, 1]] }]),
    routingChart([[1, 0], [0, 1]], ["x", "y"]),
    attentionChart([[1]], ["IMG"], ["IMG"]),
    await patchGridChart(image, { imgSize: 32, patchSize: 16 }),
    await captionsChart(
      [{ image, caption: "a red thing.", truth: "a red thing." }, { image, caption: "b" }],
      { imgSize: 32 },
    ),
    attributeChart([{ name: "a", exact_match: 0.5, attributes: SEEING }], { subtitle: "test split" }),
  ];
  for (const spec of specs) {
    const svg = await toSvg(spec);
    assert.match(svg, /^<svg/, spec.description);
    assert.ok(svg.endsWith("</svg>"), spec.description);
  }
});

Deno.test("captionsChart marks a caption ✓ (green) or ✗ (red) by whether it equals the truth", async () => {
  const image = gradientImage(16);
  const spec = await captionsChart([
    { image, caption: "right", truth: "right" },
    { image, caption: "wrong", truth: "other" },
    { image, caption: "no truth" },
  ], { imgSize: 16 });
  // deno-lint-ignore no-explicit-any
  const titles = (spec.concat as any[]).map((p) => [p.title.text, p.title.color]);
  assert.deepEqual(titles, [["✓ right", "#2e7d32"], ["✗ wrong", "#c62828"], ["no truth", "black"]]);
  assert.ok(spec.description.includes("1 of 2 right"), spec.description);
  await assert.rejects(() => captionsChart([], { imgSize: 16 }), /no images/);
});

Deno.test("captionsChart: a `correct` flag overrides the comparison with the truth", async () => {
  const image = gradientImage(16);
  const spec = await captionsChart([
    { image, caption: "a red star.", truth: "a red star", correct: true }, // e.g. judged by its attributes
    { image, caption: "same", truth: "same", correct: false },
    { image, caption: "judged without a truth", correct: true },
  ], { imgSize: 16 });
  // deno-lint-ignore no-explicit-any
  const titles = (spec.concat as any[]).map((p) => p.title.text);
  assert.deepEqual(titles, ["✓ a red star.", "✗ same", "✓ judged without a truth"]);
  assert.ok(spec.description.includes("2 of 3 right"), spec.description);
  const svg = await toSvg(spec);
  assert.ok(svg.includes("✓ a red star.") && svg.includes("✗ same"));
});

const SEEING = { colour: 0.98, shape: 0.96, size: 1, position: 1 };
const BLIND = { colour: 0.148, shape: 0.182, size: 0.506, position: 0.188 };

Deno.test("attributeChart: one bar per run and score, in order, missing attributes left out", async () => {
  const spec = attributeChart([
    { name: "seeing", exact_match: 0.956, attributes: SEEING },
    { name: "blind baseline", exact_match: 0, attributes: BLIND, color: "#999999" },
    { name: "no attributes", exact_match: 0.5 },
  ]);
  assert.deepEqual(
    values(spec).filter((v) => v.run === "blind baseline"),
    [
      { run: "blind baseline", score: "exact", accuracy: 0 },
      { run: "blind baseline", score: "colour", accuracy: 0.148 },
      { run: "blind baseline", score: "shape", accuracy: 0.182 },
      { run: "blind baseline", score: "size", accuracy: 0.506 },
      { run: "blind baseline", score: "position", accuracy: 0.188 },
    ],
  );
  assert.deepEqual(values(spec).filter((v) => v.run === "no attributes").map((v) => v.score), ["exact"]);
  // deno-lint-ignore no-explicit-any
  const enc = spec.encoding as any;
  assert.deepEqual([enc.x.field, enc.xOffset.field], ["score", "run"]);
  assert.deepEqual(enc.x.sort, ["exact", "colour", "shape", "size", "position"]);
  assert.deepEqual(enc.color.scale.domain, ["seeing", "blind baseline", "no attributes"]);
  assert.equal(enc.color.scale.range[1], "#999999");
  assert.ok(
    spec.description.includes("seeing: exact 95.6 %, colour 98.0 %") &&
      spec.description.includes("blind baseline: exact 0.0 %"),
    spec.description,
  );
  const svg = await toSvg(spec);
  assert.equal(svg.match(/<path[^>]*aria-roledescription="bar"/g)?.length, 11, "one bar per value");
});

Deno.test("attributeChart grouped by run: one group per run in the order given, one colour per score", () => {
  const runs = ["original", "+ patch tokens", "+ conv stem"].map((name, i) => ({
    name,
    exact_match: i / 4,
    attributes: SEEING,
  }));
  // deno-lint-ignore no-explicit-any
  const enc = attributeChart(runs, { groupBy: "run" }).encoding as any;
  assert.deepEqual([enc.x.field, enc.xOffset.field, enc.color.field], ["run", "score", "score"]);
  assert.deepEqual(enc.x.sort, ["original", "+ patch tokens", "+ conv stem"]);
});

Deno.test("attributeChart refuses no runs, repeated names and scores outside [0, 1], naming run and field", () => {
  throwsIncluding(() => attributeChart([]), "attributeChart: no runs");
  throwsIncluding(
    () => attributeChart([{ name: "a", exact_match: 0 }, { name: "a", exact_match: 1 }]),
    "two runs share a name",
  );
  throwsIncluding(
    () => attributeChart([{ name: "ok", exact_match: 0 }, { name: "bad", exact_match: 96 }]),
    'run 2 ("bad"), exact_match must lie in [0, 1], got 96',
  );
  throwsIncluding(
    () => attributeChart([{ name: "x", exact_match: 0, attributes: { ...SEEING, shape: NaN } }]),
    'attributeChart: run 1 ("x"), shape must be a finite number',
  );
});

Deno.test("svgToPng gives a PNG twice the SVG's size", async () => {
  const svg = await toSvg(lossChart(LOSS_ROWS));
  const [w, h] = [Number(svg.match(/width="(\d+)"/)![1]), Number(svg.match(/height="(\d+)"/)![1])];
  assert.deepEqual(pngSize(svgToPng(svg)), [2 * w, 2 * h]);
});

Deno.test("writeChart writes the SVG and the PNG and nothing else; a missing folder is a clear error", async () => {
  const dir = await Deno.makeTempDir();
  const paths = await writeChart(lossChart(LOSS_ROWS), join(dir, "loss"));
  assert.deepEqual(paths, { svg: join(dir, "loss.svg"), png: join(dir, "loss.png") });
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["loss.png", "loss.svg"]);
  assert.equal(await Deno.readTextFile(paths.svg), await toSvg(lossChart(LOSS_ROWS)));
  pngSize(await Deno.readFile(paths.png));
  await assert.rejects(
    () => writeChart(lossChart(LOSS_ROWS), join(dir, "no", "such", "loss")),
    /writeChart: cannot write/,
  );
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["loss.png", "loss.svg"]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("chartBundle: the vega-lite spec, its SVG and a line of text", async () => {
  const spec = lossChart(LOSS_ROWS);
  const bundle = await chartBundle(spec);
  assert.deepEqual(Object.keys(bundle).sort(), ["image/svg+xml", "text/plain", VEGA_LITE_MIME].sort());
  assert.equal(bundle[VEGA_LITE_MIME], spec);
  assert.equal(bundle["image/svg+xml"], await toSvg(spec));
  assert.equal(bundle["text/plain"], spec.description);
});
