// Tests for the notebook helpers (lib/notebook.ts) and for the notebooks themselves: all three run in
// smoke mode through Deno's real Jupyter kernel (tests/run_notebooks.ts), and what their cells write to
// disk is checked. Outputs inside the executed notebooks are not asserted on: Deno's kernel can send one
// after reporting a cell done, and nbclient drops it.
//
// Running them needs Debian's python3 with nbconvert and the Deno kernel; without those the run is skipped
// with a message, unless SEEMORE_REQUIRE_NOTEBOOKS=1 (CI), which turns a missing tool into a failure.

import assert from "node:assert/strict";
import { join } from "node:path";
import { lossChart } from "../lib/charts.ts";
import {
  checkShape,
  declarationSource,
  type DisplayFn,
  type DisplayOptions,
  kernelDisplay,
  LiveChart,
  settingsMarkdown,
  shapeChecks,
  sourceMarkdown,
  writeJson,
} from "../lib/notebook.ts";
import { DEFAULT_MODEL, DEFAULT_TRAIN } from "../lib/config.ts";
import {
  defaultNotebooks,
  markdownCode,
  missingTools,
  type Notebook,
  notebookModule,
  runNotebook,
  swapDeclaration,
  typeCheckNotebook,
  variantDir,
} from "./run_notebooks.ts";

// ---------------------------------------------------------------------------------------------
// Helpers.

function messageCheck(text: string) {
  return (e: unknown) => {
    assert.ok(
      e instanceof Error && e.message.includes(text),
      `expected an error containing ${JSON.stringify(text)}, got ${e}`,
    );
    return true;
  };
}
/** assert.throws, with an Error whose message contains `text`. */
function throwsIncluding(fn: () => unknown, text: string): void {
  assert.throws(fn, messageCheck(text));
}
async function rejectsIncluding(fn: () => Promise<unknown>, text: string): Promise<void> {
  await assert.rejects(fn, messageCheck(text));
}

const SAMPLE = `import x from "y";

/** Adds. */
export function add(a: number, b: number): number {
  return a + b;
}

// A class.
export class Thing {
  value = 1;
}

export const ONE = 1;

export const wrapped = make((a: number) => {
  return a;
}) as (a: number) => number;
`;

Deno.test("declarationSource cuts out one declaration with its comment", () => {
  assert.deepEqual(
    declarationSource(SAMPLE, "add"),
    "/** Adds. */\nexport function add(a: number, b: number): number {\n  return a + b;\n}",
  );
  assert.deepEqual(declarationSource(SAMPLE, "Thing"), "// A class.\nexport class Thing {\n  value = 1;\n}");
  assert.deepEqual(declarationSource(SAMPLE, "ONE"), "export const ONE = 1;");
  assert.deepEqual(declarationSource(SAMPLE, "wrapped").split("\n").at(-1), "}) as (a: number) => number;");
});

Deno.test("declarationSource names the file and the missing declaration", () => {
  throwsIncluding(
    () => declarationSource(SAMPLE, "Missing", "lib/x.ts"),
    'lib/x.ts: no top-level declaration named "Missing"',
  );
  // "Thin" must not match "Thing".
  throwsIncluding(() => declarationSource(SAMPLE, "Thin", "lib/x.ts"), '"Thin"');
});

Deno.test("sourceMarkdown shows real lib/ code as a TypeScript block", () => {
  const md = sourceMarkdown("lib/model/mlp.ts", "MLP");
  assert(md.startsWith("**`lib/model/mlp.ts`** — `MLP`\n\n```ts\n"));
  assert(md.includes("\nexport class MLP extends TwoLayerMLP {"));
  assert(md.trimEnd().endsWith("}\n```"));
  throwsIncluding(() => sourceMarkdown("lib/no_such_file.ts"), "lib/no_such_file.ts: cannot read");
});

Deno.test("checkShape passes equal shapes, records them, and throws on a mismatch", () => {
  const before = shapeChecks.length;
  assert.deepEqual(checkShape("ViT", [4, 512], [4, 512]), "ViT: [4, 512] ✓");
  assert.deepEqual(shapeChecks.length, before + 1);
  throwsIncluding(
    () => checkShape("ViT", [4, 1, 512], [4, 512]),
    "ViT: shape [4, 1, 512], expected [4, 512]",
  );
  assert.deepEqual(shapeChecks.length, before + 1);
});

Deno.test("settingsMarkdown: config.ts's keys in order, the default in bold where a value differs, the help", () => {
  const md = settingsMarkdown({ max_iters: 4800, ...DEFAULT_MODEL, residual: "pre_norm", pad_loss: "first" });
  const lines = md.split("\n");
  const row = (key: string) => lines.find((l) => l.startsWith(`| \`${key}\` |`));
  assert.equal(row("residual")?.split(" | ").slice(1, 3).join(" | "), '"pre_norm" | **"original"**');
  assert.equal(row("max_iters"), "| `max_iters` | 4800 | **100** | optimizer steps in all |");
  assert.ok(row("n_embd")?.startsWith("| `n_embd` | 128 | same | decoder width"));
  assert.ok(row("pad_loss")?.includes("&lt;pad> targets"), "a < would start an HTML tag in markdown");
  assert.ok(row("residual")?.includes("x = ln2(x + attn(ln1 x))"));
  // Model keys first, then training keys, each in config.ts's order; keys not given are left out.
  const keys = lines.filter((l) => l.startsWith("| `")).map((l) => l.split("`")[1]);
  assert.deepEqual(keys.slice(0, 2), ["model_type", "n_embd"]);
  assert.deepEqual(keys.slice(-2), ["max_iters", "pad_loss"]);
  assert.ok(!keys.includes("learning_rate"));
  throwsIncluding(() => settingsMarkdown({ ...DEFAULT_TRAIN, n_layers: 4 }), "not a config key: n_layers");
});

Deno.test("outside the Jupyter kernel, showing a chart is a clear error", () => {
  throwsIncluding(() => kernelDisplay(), "only inside Deno's Jupyter kernel");
});

Deno.test("writeJson writes the value and leaves no temporary file", async () => {
  const dir = await Deno.makeTempDir();
  await writeJson(join(dir, "sub", "summary.json"), { a: 1 });
  assert.deepEqual(JSON.parse(await Deno.readTextFile(join(dir, "sub", "summary.json"))), { a: 1 });
  assert.deepEqual([...Deno.readDirSync(join(dir, "sub"))].map((e) => e.name), ["summary.json"]);
  await Deno.remove(dir, { recursive: true });
});

/** A display function that records what it is given (the kernel's is only there inside Jupyter). */
function recorder() {
  const calls: { bundle: Record<string, unknown>; options: DisplayOptions }[] = [];
  const display: DisplayFn = (bundle, options) => {
    calls.push({ bundle, options });
    return Promise.resolve();
  };
  return { calls, display };
}

const rows = (n: number) =>
  Array.from({ length: n }, (_, i) => ({ step: i, train_loss: 4 - i * 0.1, val_loss: null }));

Deno.test("LiveChart draws at most once per interval, updates in place, and shows the newest data at done()", async () => {
  let clock = 0;
  const { calls, display } = recorder();
  const live = new LiveChart((n: number) => lossChart(rows(n)), {
    id: "loss",
    minIntervalMs: 3000,
    display,
    now: () => clock,
  });
  live.push(1); // first data: drawn at once
  await live.done();
  clock = 1000;
  live.push(2); // too soon: only remembered
  clock = 2000;
  live.push(3);
  assert.deepEqual(live.draws, 1);
  clock = 3500;
  live.push(4); // interval passed: drawn
  assert.deepEqual(live.draws, 2);
  clock = 3600;
  live.push(5); // too soon, but done() must still show it
  await live.done();
  assert.deepEqual(live.draws, 3);
  assert.deepEqual(calls.map((c) => c.options), [
    { raw: true, display_id: "loss", update: false },
    { raw: true, display_id: "loss", update: true },
    { raw: true, display_id: "loss", update: true },
  ]);
  assert.deepEqual(calls.map((c) => c.bundle["text/plain"]), [
    lossChart(rows(1)).description,
    lossChart(rows(4)).description,
    lossChart(rows(5)).description,
  ]);
  assert.match(calls[2].bundle["image/svg+xml"] as string, /^<svg/);
  await live.done(); // nothing new: no further draw
  assert.deepEqual(calls.length, 3);
});

Deno.test("LiveChart reports a failing render at done()", async () => {
  const { display } = recorder();
  const live = new LiveChart((_: number) => lossChart([{ step: 0, train_loss: NaN, val_loss: null }]), {
    display,
  });
  live.push(1);
  await rejectsIncluding(() => live.done(), 'row 1, field "train_loss"');
});

// ---------------------------------------------------------------------------------------------
// The committed notebooks: no outputs (see notebooks/README.md), the Deno kernel, a parameters cell.

Deno.test("committed notebooks carry no outputs, name the Deno kernel and have a parameters cell", () => {
  for (const path of defaultNotebooks()) {
    const nb = JSON.parse(Deno.readTextFileSync(path));
    assert.equal(nb.metadata?.kernelspec?.name, "deno", `${path}: kernelspec`);
    const code = nb.cells.filter((c: { cell_type: string }) => c.cell_type === "code");
    code.forEach((c: { outputs: unknown[]; execution_count: number | null }, i: number) => {
      assert.deepEqual(
        c.outputs,
        [],
        `${path}: code cell ${i + 1} has outputs (clear them before committing)`,
      );
      assert.equal(c.execution_count, null, `${path}: code cell ${i + 1} has an execution count`);
    });
    const parameters = code.filter((c: { metadata: { tags?: string[] } }) =>
      c.metadata.tags?.includes("parameters")
    );
    assert.equal(parameters.length, 1, `${path}: expected one cell tagged "parameters"`);
    const text = [parameters[0].source].flat().join(""); // nbformat allows a string or a list of lines
    assert.ok(text.includes('Deno.env.get("SEEMORE_SMOKE") === "1"'), `${path}: smoke switch`);
  }
});

Deno.test("notebookModule joins the code cells and points ../lib/ imports at this repository", () => {
  const module = notebookModule(defaultNotebooks().find((p) => p.endsWith("seemore_concise.ipynb"))!);
  assert.ok(!module.includes('"../lib/'), "a relative lib import is left");
  assert.ok(module.includes(`"${new URL("../lib/config.ts", import.meta.url).href}"`));
  assert.ok(module.includes("class AssembledVLM extends VisionLanguageModel"));
});

Deno.test("the notebooks' code type-checks against lib/ (the kernel does not type-check)", async () => {
  for (const path of defaultNotebooks()) {
    const r = await typeCheckNotebook(path);
    assert.ok(r.ok, `${path}:\n${r.log}`);
  }
});

Deno.test("typeCheckNotebook reports a type error in a code cell", async () => {
  const dir = await Deno.makeTempDir({ prefix: "seemore-nb-type-" });
  const cell = (source: string) => ({
    cell_type: "code",
    metadata: {},
    execution_count: null,
    outputs: [],
    source,
  });
  const nb = {
    cells: [
      cell('import { Tokenizer } from "../lib/tokenizer.ts";'),
      cell("const n: number = Tokenizer.original();"),
    ],
  };
  await Deno.writeTextFile(join(dir, "bad.ipynb"), JSON.stringify(nb));
  const r = await typeCheckNotebook(join(dir, "bad.ipynb"));
  assert.equal(r.ok, false);
  assert.ok(r.log.includes("TS2322") && r.log.includes("bad.ipynb (code cells)"), r.log);
  await Deno.remove(dir, { recursive: true });
});

const code = (source: string) => ({
  cell_type: "code",
  source,
  outputs: [],
  execution_count: null,
  metadata: {},
});
const markdown = (source: string) => ({ cell_type: "markdown", source, metadata: {} });

Deno.test("markdownCode finds a markdown cell's ts block; swapDeclaration replaces one declaration in one cell", () => {
  const nb: Notebook = {
    cells: [
      code("const a = 1;\n\nfunction make(x: number): number {\n  return x;\n}\n\nconst b = make(a);"),
      markdown(
        "### A hack\n\nTry this:\n\n```ts\nfunction make(x: number): number {\n  return 2 * x;\n}\n```\n",
      ),
      code("console.log(b);"),
    ],
  };
  const hack = markdownCode(nb, "A hack", "nb.ipynb");
  assert.equal(hack, "function make(x: number): number {\n  return 2 * x;\n}");
  const swapped = swapDeclaration(nb, "make", hack, "nb.ipynb");
  assert.equal(
    swapped.cells[0].source,
    "const a = 1;\n\nfunction make(x: number): number {\n  return 2 * x;\n}\n\nconst b = make(a);",
  );
  assert.deepEqual(swapped.cells.slice(1), nb.cells.slice(1));
  assert.notEqual(nb.cells[0].source, swapped.cells[0].source, "the original is left as it was");
  throwsIncluding(
    () => markdownCode(nb, "No such heading", "nb.ipynb"),
    'nb.ipynb: no markdown cell mentions "No such heading"',
  );
  throwsIncluding(() => swapDeclaration(nb, "missing", hack, "nb.ipynb"), '0 code cells declare "missing"');
  const twice: Notebook = { cells: [nb.cells[0], nb.cells[0]] };
  throwsIncluding(() => swapDeclaration(twice, "make", hack, "nb.ipynb"), '2 code cells declare "make"');
});

// ---------------------------------------------------------------------------------------------
// The notebooks, executed by the real kernel.

const missing = await missingTools();
const name = (path: string) => path.split("/").at(-1)!;
/** Charts each notebook writes beyond the loss, captions and attributes every one writes. */
const EXTRA_CHARTS: Record<string, string[]> = {
  "seemore_concise.ipynb": [],
  "seemore_from_scratch.ipynb": [
    "attention.svg",
    "blind.svg",
    "ladder.svg",
    "seeing_loss.svg",
    "seeing_captions.svg",
  ],
  "seemoe_from_scratch.ipynb": ["expert_usage.svg", "routing.svg", "routing_map.svg", "routing_trained.svg"],
};
const required = Deno.env.get("SEEMORE_REQUIRE_NOTEBOOKS") === "1";
if (missing && !required) console.warn(`notebook execution tests skipped: ${missing}`);

Deno.test({
  name: "all notebooks run in smoke mode and write their results",
  ignore: missing !== null && !required,
  sanitizeResources: false,
  async fn() {
    if (missing) throw new Error(missing);
    const outRoot = await Deno.makeTempDir({ prefix: "seemore-notebooks-" });
    const notebooks = defaultNotebooks();
    const names = notebooks.map((p) => p.split("/").at(-1));
    for (
      const expected of ["seemoe_from_scratch.ipynb", "seemore_concise.ipynb", "seemore_from_scratch.ipynb"]
    ) {
      assert(names.includes(expected), `notebooks/${expected} is missing`);
    }
    for (const nb of notebooks) {
      const r = await runNotebook(nb, { smoke: true, outRoot, timeoutSeconds: 600 });
      assert(r.ok, `${nb} failed:\n${r.log}`);
      const summary = JSON.parse(await Deno.readTextFile(join(r.outDir, "summary.json")));
      assert.deepEqual(summary.smoke, true, `${nb}: summary.json says smoke ${summary.smoke}`);
      assert(summary.steps > 0 && Number.isFinite(summary.final.train_loss), `${nb}: no finite final loss`);
      assert(summary.captions.length > 0, `${nb}: no captions`);
      assert(Number.isFinite(summary.test.exact_match), `${nb}: no held-out test score`);
      assert(Number.isFinite(summary.blind.attributes.colour), `${nb}: no blind baseline`);
      const files = [
        "loss.svg",
        "loss.png",
        "captions.svg",
        "attributes.svg",
        ...(EXTRA_CHARTS[name(nb)] ?? []),
      ];
      for (const file of files) {
        const bytes = await Deno.readFile(join(r.outDir, file));
        if (file.endsWith(".svg")) {
          assert.ok(new TextDecoder().decode(bytes.slice(0, 200)).includes("<svg"), `${file} is not an SVG`);
        } else assert.deepEqual([...bytes.slice(1, 4)], [0x50, 0x4e, 0x47], `${file} is not a PNG`);
      }
      if (nb.endsWith("seemore_concise.ipynb")) {
        assert.equal(summary.recipe, "seeing", "the concise notebook trains the seeing recipe by default");
        assert.deepEqual(summary.projector.slice(0, 1), ["decoder.image_projection.net.0.weight"]);
      }
      if (nb.endsWith("seemore_from_scratch.ipynb")) {
        const labels = summary.shape_checks.map((c: { label: string }) => c.label);
        for (
          const label of [
            "PatchEmbeddings",
            "MLP",
            "Head",
            "MultiHeadAttention",
            "Block",
            "generated sequence",
          ]
        ) {
          assert(labels.includes(label), `seemore_from_scratch: shape check "${label}" did not run`);
        }
        assert(summary.distinct_test_captions >= 1, "seemore_from_scratch: no count of distinct captions");
        assert(
          Number.isFinite(summary.seeing.test.exact_match),
          "seemore_from_scratch: the seeing model's score",
        );
        assert(summary.seeing.captions.length > 0, "seemore_from_scratch: the seeing model's captions");
      }
      if (nb.endsWith("seemoe_from_scratch.ipynb")) {
        assert.equal(summary.init, "pytorch", "seeMoE trains with PyTorch's default initialisation");
        const { tokens, strongest } = summary.routed;
        assert(strongest.length >= 1 && strongest.every((l: number[]) => l.length === tokens.length));
      }
    }
    await Deno.remove(outRoot, { recursive: true });
  },
});

const CONCISE = defaultNotebooks().find((p) => p.endsWith("seemore_concise.ipynb"))!;
const HACK = "A hack to try: a one-layer projector";

Deno.test({
  name: "the concise notebook's one-layer projector hack runs: its code block swapped in for makeProjector",
  ignore: missing !== null && !required,
  sanitizeResources: false,
  async fn() {
    if (missing) throw new Error(missing);
    const nb = JSON.parse(await Deno.readTextFile(CONCISE)) as Notebook;
    const variant = swapDeclaration(nb, "makeProjector", markdownCode(nb, HACK, CONCISE), CONCISE);
    const dir = await variantDir();
    try {
      const file = join(dir, "seemore_concise_linear_projector.ipynb");
      await Deno.writeTextFile(file, JSON.stringify(variant, null, 1));
      const checked = await typeCheckNotebook(file);
      assert.ok(checked.ok, checked.log);
      const r = await runNotebook(file, { smoke: true, outRoot: join(dir, "out"), timeoutSeconds: 600 });
      assert.ok(r.ok, `the hacked notebook failed:\n${r.log}`);
      const summary = JSON.parse(await Deno.readTextFile(join(r.outDir, "summary.json")));
      assert.deepEqual(summary.projector, [
        "decoder.image_projection.proj.weight",
        "decoder.image_projection.proj.bias",
      ]);
      assert.ok(Number.isFinite(summary.test.exact_match), "no test score");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "the notebook runner fails when a cell raises",
  ignore: missing !== null && !required,
  sanitizeResources: false,
  async fn() {
    if (missing) throw new Error(missing);
    const dir = await Deno.makeTempDir({ prefix: "seemore-nb-fail-" });
    const nb = {
      cells: [
        { cell_type: "code", id: "ok", metadata: {}, execution_count: null, outputs: [], source: ["1 + 1"] },
        {
          cell_type: "code",
          id: "boom",
          metadata: {},
          execution_count: null,
          outputs: [],
          source: ['throw new Error("boom from a cell")'],
        },
      ],
      metadata: { kernelspec: { name: "deno", display_name: "Deno", language: "typescript" } },
      nbformat: 4,
      nbformat_minor: 5,
    };
    await Deno.writeTextFile(join(dir, "fails.ipynb"), JSON.stringify(nb));
    const r = await runNotebook(join(dir, "fails.ipynb"), {
      smoke: true,
      outRoot: join(dir, "out"),
      timeoutSeconds: 120,
    });
    assert.deepEqual(r.ok, false);
    assert.ok(r.log.includes("boom from a cell"), `missing ${JSON.stringify("boom from a cell")}`);
    await Deno.remove(dir, { recursive: true });
  },
});
