// lib/ reads top-down (../shared/LAYOUT.md): front doors → jobs (train, evaluate, generate) → the model →
// the ops (the seam) → leaves (kernels, data, config, ...). A file may import its own layer or those below,
// never above; only the backend's setup code may reach into lib/blas.

import assert from "node:assert/strict";

/** lib/'s layers, bottom first: a path (file, or folder ending in "/") belongs to the first layer naming it. */
const LAYERS: [string, string[]][] = [
  ["leaves", [
    "random.ts",
    "tokenizer.ts",
    "config.ts",
    "metrics.ts",
    "checkpoint.ts",
    "progress.ts",
    "charts.ts",
    "readback.ts",
    "data/",
    "blas/",
    "webgpu/",
    "tfnode/",
  ]],
  ["ops", ["ops/"]],
  ["model", ["model/"]],
  ["around the model", [
    "objective.ts",
    "optim.ts",
    "weight_average.ts",
    "run_log.ts",
    "model_files.ts",
    "backend.ts",
  ]],
  ["jobs", ["train.ts", "evaluate.ts", "generate.ts", "setup.ts"]],
  ["front doors", ["fast_path.ts", "doctor.ts", "flags.ts", "notebook.ts", "cli.ts"]],
];
/** The files that may import lib/blas: they start the backend and check the fast path. */
const BLAS_USERS = ["backend.ts", "setup.ts", "fast_path.ts", "doctor.ts"];

const LIB = new URL("../lib/", import.meta.url);

function layerOf(path: string): number {
  const i = LAYERS.findIndex(([, paths]) =>
    paths.some((p) => (p.endsWith("/") ? path.startsWith(p) : path === p))
  );
  if (i < 0) throw new Error(`lib/${path} is in no layer of tests/layering_test.ts: add it`);
  return i;
}

function libFiles(dir = LIB, prefix = ""): string[] {
  return [...Deno.readDirSync(dir)].flatMap((e) =>
    e.isDirectory
      ? libFiles(new URL(`${e.name}/`, dir), `${prefix}${e.name}/`)
      : e.name.endsWith(".ts")
      ? [`${prefix}${e.name}`]
      : []
  );
}

/** The lib/ files a file imports (relative imports only). */
function importsOf(path: string): string[] {
  const text = Deno.readTextFileSync(new URL(path, LIB));
  const here = new URL(path, LIB);
  return [...text.matchAll(/(?:import|export)(?:[^;]*?from)?\s*"(\.[^"]+)"/g)]
    .map(([, spec]) => new URL(spec, here).href.slice(LIB.href.length));
}

Deno.test("lib/ imports flow one way: never up a layer, and only the backend's setup reaches lib/blas", () => {
  const files = libFiles();
  assert.ok(files.length > 50, "lib/ files found");
  const wrong: string[] = [];
  for (const file of files) {
    for (const target of importsOf(file)) {
      if (layerOf(target) > layerOf(file)) {
        wrong.push(`${file} (${LAYERS[layerOf(file)][0]}) imports ${target} (${LAYERS[layerOf(target)][0]})`);
      }
      if (target.startsWith("blas/") && !file.startsWith("blas/") && !BLAS_USERS.includes(file)) {
        wrong.push(`${file} imports ${target}`);
      }
    }
  }
  assert.deepEqual(wrong, []);
});

Deno.test("the model asks no questions about the backend", () => {
  for (const file of libFiles().filter((f) => f.startsWith("model/"))) {
    const code = Deno.readTextFileSync(new URL(file, LIB)).split("\n").filter((l) =>
      !l.trimStart().startsWith("//")
    );
    const asks = code.filter((l) => /getBackend|hasKernels|\bblas\b|registry\.ts|backend\.ts/.test(l));
    assert.deepEqual(asks, [], file);
  }
});
