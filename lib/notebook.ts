// Helpers for the notebooks in notebooks/ (Deno's Jupyter kernel):
//
//   source(path, ...names)   a lib/ file, or some of its top-level declarations, as a TypeScript code block
//   chart(spec)              a chart as one mime bundle (vega-lite v5 + SVG + text); end a cell with it
//   showChart(spec)          the same, shown at once (for use inside loops and callbacks)
//   LiveChart                a chart redrawn in place (one display_id) as data arrives, at most every few seconds
//   checkShape(...)          the original notebooks' shape checks: prints the shape, throws on a mismatch
//   settingsTable(...)       settings as a markdown table: value, the original recipe's where it differs, help
//   writeJson(path, value)   a result file a notebook leaves behind (what the notebook tests read)
//
// Nothing here needs the kernel except the display calls, which take an injectable display function so
// they can be tested with plain `deno test`.

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chartBundle, type Spec } from "./charts.ts";
import { type KeySpec, MODEL_KEYS, TRAIN_KEYS } from "./config.ts";

/** Repository root (this file lives in lib/). */
export const REPO_ROOT = dirname(dirname(fileURLToPath(import.meta.url)));

const DISPLAY = Symbol.for("Jupyter.display");

/** A value Deno's kernel shows as a mime bundle when a cell ends with it. */
export interface Displayable {
  [DISPLAY]: () => Record<string, unknown> | Promise<Record<string, unknown>>;
}

export interface DisplayOptions {
  raw?: boolean;
  display_id?: string;
  update?: boolean;
}
export type DisplayFn = (bundle: Record<string, unknown>, options: DisplayOptions) => Promise<void>;

/** Deno.jupyter.display, or a clear error outside the kernel. */
export function kernelDisplay(): DisplayFn {
  let jupyter: { display: DisplayFn } | undefined;
  try {
    jupyter = (Deno as unknown as { jupyter?: { display: DisplayFn } }).jupyter; // throws outside the kernel
  } catch {
    jupyter = undefined;
  }
  if (!jupyter?.display) {
    throw new Error("Deno.jupyter.display is not available: this runs only inside Deno's Jupyter kernel");
  }
  return (bundle, options) => jupyter.display(bundle, options);
}

function displayable(make: () => Record<string, unknown> | Promise<Record<string, unknown>>): Displayable {
  return { [DISPLAY]: make };
}

// ---------------------------------------------------------------------------------------------
// Source code as markdown.

const DECLARATION = (name: string) =>
  new RegExp(
    `^(export\\s+)?(default\\s+)?(abstract\\s+)?(async\\s+)?(class|function\\*?|interface|type|const|let|enum)\\s+${name}\\b`,
  );

/**
 * One top-level declaration of a TypeScript source text, with the comment block right above it.
 * It ends at the first later line that starts in column 0 with "}" or ")" (or at its own line when
 * that line ends with ";").
 */
export function declarationSource(text: string, name: string, file = "source"): string {
  const lines = text.split("\n");
  const start = lines.findIndex((line) => DECLARATION(name).test(line));
  if (start < 0) throw new Error(`${file}: no top-level declaration named "${name}"`);
  let first = start;
  while (first > 0 && /^\s*(\/\/|\/\*\*|\*|\*\/)/.test(lines[first - 1])) first--;
  let end = start;
  if (!lines[start].trimEnd().endsWith(";")) {
    end = lines.findIndex((line, i) => i > start && /^[})]/.test(line));
    if (end < 0) throw new Error(`${file}: the declaration "${name}" (line ${start + 1}) never closes`);
  }
  return lines.slice(first, end + 1).join("\n");
}

/** Reads a file of this repository (path relative to the root, e.g. "lib/model/mlp.ts"). */
export function readRepoFile(path: string): string {
  const full = join(REPO_ROOT, path);
  try {
    return Deno.readTextFileSync(full);
  } catch (e) {
    throw new Error(`${path}: cannot read (${(e as Error).message.split("\n")[0]})`);
  }
}

/** Markdown: a lib/ file, or only the named top-level declarations of it, as a TypeScript code block. */
export function sourceMarkdown(path: string, ...names: string[]): string {
  const text = readRepoFile(path);
  const body = names.length === 0
    ? text.trimEnd()
    : names.map((name) => declarationSource(text, name, path)).join("\n\n");
  const what = names.length === 0 ? "" : ` — ${names.map((n) => `\`${n}\``).join(", ")}`;
  return `**\`${path}\`**${what}\n\n\`\`\`ts\n${body}\n\`\`\`\n`;
}

/** A cell ending with `source("lib/model/mlp.ts", "MLP")` shows that code, rendered as markdown. */
export function source(path: string, ...names: string[]): Displayable {
  const md = sourceMarkdown(path, ...names);
  return displayable(() => ({ "text/markdown": md, "text/plain": md }));
}

// ---------------------------------------------------------------------------------------------
// Charts.

/** A cell ending with `chart(spec)` shows the chart (vega-lite for JupyterLab, SVG elsewhere, text). */
export function chart(spec: Spec): Displayable {
  return displayable(() => chartBundle(spec) as Promise<Record<string, unknown>>);
}

/** Shows a chart now (inside loops and callbacks, where a cell's last value is no use). */
export async function showChart(
  spec: Spec,
  options: DisplayOptions = {},
  display?: DisplayFn,
): Promise<void> {
  await (display ?? kernelDisplay())(await chartBundle(spec) as Record<string, unknown>, {
    raw: true,
    ...options,
  });
}

let liveCounter = 0;

/**
 * A chart that redraws in place as data arrives. `push(data)` remembers the newest data and draws it
 * unless a draw happened less than `minIntervalMs` ago (or is still running); `done()` makes sure the
 * newest data is on screen. The first draw creates the output, later ones update it (same display_id).
 */
export class LiveChart<T> {
  readonly id: string;
  draws = 0;
  private latest: { data: T } | null = null;
  private drawnVersion = 0;
  private version = 0;
  private lastDraw = -Infinity;
  private inFlight: Promise<void> | null = null;
  private error: Error | null = null;
  private readonly minIntervalMs: number;
  private readonly now: () => number;
  private readonly display: () => DisplayFn;

  constructor(
    private readonly render: (data: T) => Spec | Promise<Spec>,
    opts: { id?: string; minIntervalMs?: number; display?: DisplayFn; now?: () => number } = {},
  ) {
    liveCounter += 1;
    this.id = opts.id ?? `live-chart-${Date.now()}-${liveCounter}`;
    this.minIntervalMs = opts.minIntervalMs ?? 3000;
    this.now = opts.now ?? (() => performance.now());
    const given = opts.display;
    this.display = () => given ?? kernelDisplay();
  }

  /** New data; drawn now if the last draw is old enough, else at the next push or at done(). */
  push(data: T): void {
    if (this.error) throw this.error;
    this.latest = { data };
    this.version += 1;
    if (!this.inFlight && this.now() - this.lastDraw >= this.minIntervalMs) this.startDraw();
  }

  /** Waits for any draw in progress, then draws the newest data if it is not on screen yet. */
  async done(): Promise<void> {
    if (this.inFlight) await this.inFlight;
    if (this.version !== this.drawnVersion) {
      this.startDraw();
      await this.inFlight;
    }
    if (this.error) throw this.error;
  }

  private startDraw(): void {
    const { data } = this.latest!;
    const version = this.version;
    this.lastDraw = this.now();
    const update = this.draws > 0;
    this.draws += 1;
    this.inFlight = (async () => {
      try {
        const bundle = await chartBundle(await this.render(data));
        await this.display()(bundle as Record<string, unknown>, { raw: true, display_id: this.id, update });
        this.drawnVersion = version;
      } catch (e) {
        this.error = e as Error;
      } finally {
        this.inFlight = null;
      }
    })();
  }
}

// ---------------------------------------------------------------------------------------------
// Checks and results.

/** Every shape check that passed in this kernel, in order (a notebook writes these to its results). */
export const shapeChecks: { label: string; shape: number[] }[] = [];

/**
 * The original notebooks print `tensor.shape` after each component; here the expected shape is written
 * down too, and a mismatch stops the notebook. Returns the line it prints.
 */
export function checkShape(label: string, actual: readonly number[], expected: readonly number[]): string {
  const same = actual.length === expected.length && actual.every((d, i) => d === expected[i]);
  if (!same) {
    throw new Error(`${label}: shape [${actual.join(", ")}], expected [${expected.join(", ")}]`);
  }
  shapeChecks.push({ label, shape: [...actual] });
  const line = `${label}: [${actual.join(", ")}] ✓`;
  console.log(line);
  return line;
}

/** A setting's value as the table shows it. */
function shown(value: unknown): string {
  if (Array.isArray(value)) return value.length > 6 ? `${value.length} words` : JSON.stringify(value);
  return typeof value === "string" ? `"${value}"` : String(value);
}

/**
 * Markdown: one row per key of `config.ts`'s tables present in `settings` (model keys, then training keys, in
 * their declared order): the value, the default in bold where it differs (the defaults are the `original`
 * recipe), and the key's help. Keys the tables do not declare are refused, so a typo cannot pass unnoticed.
 */
export function settingsMarkdown(settings: Record<string, unknown>, title = "Hyper-parameters"): string {
  const specs = { ...MODEL_KEYS, ...TRAIN_KEYS } as Record<string, KeySpec<unknown>>;
  const unknown = Object.keys(settings).filter((k) => !(k in specs) && k !== "vocab_size");
  if (unknown.length) throw new Error(`settingsMarkdown: not a config key: ${unknown.join(", ")}`);
  const cell = (text: string) => text.replaceAll("|", "\\|").replaceAll("<", "&lt;");
  const rows = Object.entries(specs).filter(([key]) => key in settings).map(([key, spec]) => {
    const value = settings[key];
    const same = JSON.stringify(value) === JSON.stringify(spec.default);
    const original = same ? "same" : `**${shown(spec.default)}**`;
    return `| \`${key}\` | ${cell(shown(value))} | ${cell(original)} | ${cell(spec.help)} |`;
  });
  return [
    `**${title}**`,
    "",
    "| key | value | original recipe | what it does |",
    "|:--|:--|:--|:--|",
    ...rows,
  ]
    .join("\n") + "\n";
}

/** A cell ending with `settingsTable({...config, ...trainConfig})` shows the settings as a table. */
export function settingsTable(settings: Record<string, unknown>, title?: string): Displayable {
  const md = settingsMarkdown(settings, title);
  return displayable(() => ({ "text/markdown": md, "text/plain": md }));
}

/** Writes JSON (temp name, then renamed), making the folder if needed. */
export async function writeJson(path: string, value: unknown): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(value, null, 2) + "\n");
  await Deno.rename(tmp, path);
}
