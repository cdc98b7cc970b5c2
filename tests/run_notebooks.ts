// Executes the notebooks in notebooks/ headlessly through Deno's real Jupyter kernel, with Debian's
// nbconvert (`/usr/bin/python3 -m nbconvert`, nbclient underneath), and fails if any cell raises.
//
//   deno task notebooks [--smoke] [--check] [--out DIR] [--timeout SECONDS] [NOTEBOOK.ipynb ...]
//
// --smoke (or SEEMORE_SMOKE=1 in the environment) runs each notebook's quick mode: tiny model, a few steps.
// --check first type-checks each notebook's code cells with `deno check` (the kernel itself does not).
// Executed copies (with outputs) go to DIR/<name>.ipynb and each notebook's own results (charts,
// summary.json) to DIR/<name>/; DIR defaults to runs/notebooks. The notebooks in notebooks/ are not touched.
//
// Needs: Debian's python3 with nbconvert and nbclient (apt-get install python3-nbconvert python3-nbclient
// python3-jupyter-client) and the Deno kernel (`deno jupyter --install`). /usr/bin/python3 is used on
// purpose: a pyenv or virtualenv python earlier on PATH may lack them.
//
// Deno's kernel sometimes sends an output after it reports the cell done, and nbclient then drops that
// output. So success is judged on exit status and on the files a notebook writes, never on its outputs.

import { parseArgs } from "node:util";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { declarationSource } from "../lib/notebook.ts";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const PYTHON = "/usr/bin/python3";

export interface NotebookResult {
  notebook: string;
  ok: boolean;
  seconds: number;
  executed: string; // the executed copy
  outDir: string; // what the notebook itself wrote
  log: string; // nbconvert's stderr, last lines
}

/** Why notebooks cannot run here (missing nbconvert or kernel), or null when they can. */
export async function missingTools(): Promise<string | null> {
  const install = "apt-get install python3-nbconvert python3-nbclient python3-jupyter-client";
  try {
    await Deno.stat(PYTHON);
  } catch {
    return `${PYTHON} not found: ${install}`;
  }
  const script =
    "import json, nbconvert, nbclient; from jupyter_client.kernelspec import find_kernel_specs; " +
    "print(json.dumps(find_kernel_specs()))";
  const out = await new Deno.Command(PYTHON, { args: ["-c", script], stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    const why = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1);
    return `${PYTHON} cannot load nbconvert, nbclient and jupyter_client (${why}): ${install}`;
  }
  const specs = JSON.parse(new TextDecoder().decode(out.stdout));
  if (!("deno" in specs)) return `the Deno Jupyter kernel is not installed: run \`deno jupyter --install\``;
  return null;
}

/** Runs one notebook; resolves with its result (never throws for a failing cell). */
export async function runNotebook(
  path: string,
  opts: { smoke: boolean; outRoot: string; timeoutSeconds: number },
): Promise<NotebookResult> {
  const name = basename(path).replace(/\.ipynb$/, "");
  const outDir = join(opts.outRoot, name);
  await Deno.mkdir(opts.outRoot, { recursive: true });
  const env: Record<string, string> = {
    NO_COLOR: "1", // the kernel inherits this: no ANSI colour codes in text outputs
    SEEMORE_NOTEBOOK_OUT: outDir,
    PATH: `/usr/bin:${Deno.env.get("PATH") ?? ""}`,
  };
  if (opts.smoke) env.SEEMORE_SMOKE = "1";
  const started = performance.now();
  const out = await new Deno.Command(PYTHON, {
    args: [
      "-m",
      "nbconvert",
      "--to",
      "notebook",
      "--execute",
      "--ExecutePreprocessor.kernel_name=deno",
      `--ExecutePreprocessor.timeout=${opts.timeoutSeconds}`,
      "--output-dir",
      opts.outRoot,
      "--output",
      `${name}.ipynb`,
      path,
    ],
    env,
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const log = new TextDecoder().decode(out.stderr).split("\n").slice(-40).join("\n");
  return {
    notebook: path,
    ok: out.success,
    seconds: (performance.now() - started) / 1000,
    executed: join(opts.outRoot, `${name}.ipynb`),
    outDir,
    log,
  };
}

/**
 * The code cells of a notebook as one TypeScript module, with its `../lib/` imports made absolute, so
 * `deno check` can type-check what the kernel (which does not type-check) will run.
 */
export function notebookModule(path: string): string {
  const nb = JSON.parse(Deno.readTextFileSync(path));
  const lib = new URL("../lib/", import.meta.url).href;
  const cells = (nb.cells as { cell_type: string; source: string | string[] }[])
    .filter((c) => c.cell_type === "code")
    .map((c) => [c.source].flat().join("").replaceAll('"../lib/', `"${lib}`));
  return cells.join("\n\n") + "\nexport {};\n";
}

/** Type-checks a notebook's code cells with `deno check`; resolves with the result and the compiler's output. */
export async function typeCheckNotebook(path: string): Promise<{ ok: boolean; log: string }> {
  const dir = await Deno.makeTempDir({ prefix: "seemore-nbcheck-" });
  try {
    const file = join(dir, `${basename(path).replace(/\.ipynb$/, "")}.ts`);
    await Deno.writeTextFile(file, notebookModule(path));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["check", "--quiet", "--config", join(ROOT, "deno.json"), file],
      env: { NO_COLOR: "1" },
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const log = new TextDecoder().decode(out.stderr).replaceAll(file, `${basename(path)} (code cells)`);
    return { ok: out.success, log };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A notebook as nbformat JSON: the parts these helpers read and change. */
export interface Notebook {
  cells: { cell_type: string; source: string | string[]; [key: string]: unknown }[];
  [key: string]: unknown;
}

const cellText = (cell: Notebook["cells"][number]) => [cell.source].flat().join("");

/** The first ```ts block of the first markdown cell whose text contains `marker`. */
export function markdownCode(nb: Notebook, marker: string, file: string): string {
  const cell = nb.cells.find((c) => c.cell_type === "markdown" && cellText(c).includes(marker));
  if (!cell) throw new Error(`${file}: no markdown cell mentions ${JSON.stringify(marker)}`);
  const block = cellText(cell).match(/```ts\n([\s\S]*?)\n```/);
  if (!block) {
    throw new Error(`${file}: the markdown cell with ${JSON.stringify(marker)} has no \`\`\`ts block`);
  }
  return block[1];
}

/**
 * A copy of `nb` in which the top-level declaration `name` (with the comment above it) is replaced by `code`:
 * what a reader does who pastes a markdown cell's code over a definition. Exactly one code cell must declare it.
 */
export function swapDeclaration(nb: Notebook, name: string, code: string, file: string): Notebook {
  const holders = nb.cells.flatMap((c, i) => {
    if (c.cell_type !== "code") return [];
    try {
      return [{ i, old: declarationSource(cellText(c), name) }];
    } catch {
      return [];
    }
  });
  if (holders.length !== 1) {
    throw new Error(`${file}: ${holders.length} code cells declare "${name}" at top level, expected one`);
  }
  const { i, old } = holders[0];
  const cells = nb.cells.map((
    c,
    j,
  ) => (j === i ? { ...c, source: cellText(c).replace(old, () => code) } : c));
  return { ...nb, cells };
}

/**
 * A folder for notebook variants, directly under the repository root: the kernel runs a notebook in its own
 * folder, and there `../lib/` and `../data/` resolve as they do from notebooks/ (and deno.json is found).
 * Remove it when done (`.notebook-variant-*` is git-ignored in case a run is killed first).
 */
export async function variantDir(): Promise<string> {
  return await Deno.makeTempDir({ dir: ROOT, prefix: ".notebook-variant-" });
}

/** The notebooks to run by default: notebooks/*.ipynb, sorted. */
export function defaultNotebooks(): string[] {
  const dir = join(ROOT, "notebooks");
  return [...Deno.readDirSync(dir)]
    .filter((e) => e.isFile && e.name.endsWith(".ipynb"))
    .map((e) => join(dir, e.name))
    .sort();
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      smoke: { type: "boolean" },
      check: { type: "boolean" },
      out: { type: "string" },
      timeout: { type: "string" },
    },
  });
  const smoke = values.smoke || Deno.env.get("SEEMORE_SMOKE") === "1";
  const outRoot = resolve(values.out ?? join(ROOT, "runs", "notebooks"));
  const timeoutSeconds = Number(values.timeout ?? (smoke ? 600 : 7200));
  if (!(timeoutSeconds > 0)) {
    throw new Error(`--timeout expects a positive number of seconds, got "${values.timeout}"`);
  }
  const missing = await missingTools();
  if (missing) {
    console.error(`error: ${missing}`);
    return 1;
  }
  const notebooks = positionals.length ? positionals.map((p) => resolve(p)) : defaultNotebooks();
  let failed = 0;
  for (const nb of notebooks) {
    if (values.check) {
      const checked = await typeCheckNotebook(nb);
      if (!checked.ok) {
        failed += 1;
        console.log(`FAIL  ${basename(nb)}  does not type-check\n${checked.log}`);
        continue;
      }
    }
    console.error(`${basename(nb)}: running${smoke ? " (smoke)" : ""}…`);
    const r = await runNotebook(nb, { smoke, outRoot, timeoutSeconds });
    if (r.ok) {
      console.log(
        `ok    ${basename(nb)}  ${r.seconds.toFixed(1)} s  → ${r.executed}, results in ${r.outDir}`,
      );
    } else {
      failed += 1;
      console.log(`FAIL  ${basename(nb)}  ${r.seconds.toFixed(1)} s\n${r.log}`);
    }
  }
  console.log(`${notebooks.length - failed} of ${notebooks.length} notebooks ran without a cell error`);
  return failed ? 1 : 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(2);
  }
}
