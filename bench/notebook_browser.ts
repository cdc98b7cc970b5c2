/// <reference lib="dom" />
// Opens executed notebooks in the classic Jupyter notebook in headless Chromium, checks that every chart
// output drew, and saves a full-page screenshot of each: the browser check behind notebooks/README.md.
//
//   deno task notebooks --out runs/notebooks                   # executed copies with their outputs
//   deno run -A bench/notebook_browser.ts [--out DIR] runs/notebooks/*.ipynb
//
// A chart output counts as drawn when its <svg> is in the page with marks in it and a size over 50 px.
// Needs: Debian's python3-notebook (the classic notebook server), nbformat (to trust the copies, without
// which the classic notebook shows no SVG) and a Chromium (`apt-get install chromium`, or $CHROMIUM).
// The notebooks are copied to a temporary folder first; the originals are not touched. Exit status 1 when a
// chart did not draw.

// An inline npm: import on purpose: this optional check would otherwise make every run install puppeteer-core.
// deno-lint-ignore no-import-prefix
import puppeteer, { type Browser } from "npm:puppeteer-core@24.10.0";
import { parseArgs } from "node:util";
import { basename, resolve } from "node:path";

const PYTHON = "/usr/bin/python3";
const CHROMIUM = Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium";

interface ChartCheck {
  drawn: boolean;
  width: number;
  height: number;
  marks: number;
  text: string; // the first longer text in the chart (a title or a label), to say which one it is
}

/** Starts the classic notebook server on `dir`; resolves with its URL once it answers. */
async function startServer(dir: string, token: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const child = new Deno.Command(PYTHON, {
    args: [
      "-m",
      "notebook",
      "--no-browser",
      `--port=${port}`,
      `--NotebookApp.token=${token}`,
      "--allow-root",
      `--notebook-dir=${dir}`,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    child.kill("SIGTERM");
    await child.status;
  };
  for (let i = 0; i < 100; i++) {
    try {
      const r = await fetch(`${url}/api?token=${token}`);
      await r.body?.cancel();
      if (r.ok) return { url, stop };
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 200));
  }
  await stop();
  throw new Error(`the classic notebook server did not start on port ${port} (${PYTHON} -m notebook)`);
}

/** Marks the copies trusted: the classic notebook renders SVG outputs only in trusted notebooks. */
async function trust(paths: string[]): Promise<void> {
  const script = "import sys, nbformat\nfrom nbformat.sign import NotebookNotary\nn = NotebookNotary()\n" +
    "for p in sys.argv[1:]:\n    nb = nbformat.read(p, as_version=4); n.sign(nb)\n";
  const out = await new Deno.Command(PYTHON, { args: ["-c", script, ...paths], stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`could not trust the copies: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/** Opens one notebook, checks its chart outputs, and writes `<out>/<name>.png`. */
async function checkNotebook(
  browser: Browser,
  url: string,
  name: string,
  out: string,
): Promise<ChartCheck[]> {
  const page = await browser.newPage();
  try {
    await page.setViewport({ width: 1400, height: 1000 });
    await page.goto(`${url}/notebooks/${encodeURIComponent(name)}`, {
      waitUntil: "networkidle2",
      timeout: 120_000,
    });
    await page.waitForSelector(".output_subarea", { timeout: 60_000 });
    await new Promise((r) => setTimeout(r, 5000)); // the outputs render cell by cell after the first
    const charts = await page.evaluate(() =>
      [...document.querySelectorAll(".output_svg")].map((o) => {
        const svg = o.querySelector("svg");
        const box = svg?.getBoundingClientRect();
        const marks = svg ? svg.querySelectorAll("path, rect, image, text").length : 0;
        const text = svg
          ? [...svg.querySelectorAll("text")].map((t) => t.textContent ?? "").find((t) => t.length > 12) ?? ""
          : "";
        const width = Math.round(box?.width ?? 0), height = Math.round(box?.height ?? 0);
        return {
          drawn: width > 50 && height > 50 && marks > 3,
          width,
          height,
          marks,
          text: text.slice(0, 70),
        };
      })
    );
    // The classic notebook scrolls inside #site: let the page grow so that the screenshot holds all of it.
    await page.addStyleTag({
      content: "#site{height:auto!important;overflow:visible!important} #header{display:none!important}",
    });
    await page.screenshot({ path: `${out}/${name.replace(/\.ipynb$/, "")}.png`, fullPage: true });
    return charts;
  } finally {
    await page.close();
  }
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: { out: { type: "string" } },
    allowPositionals: true,
  });
  if (positionals.length === 0) {
    console.error("usage: deno run -A bench/notebook_browser.ts [--out DIR] EXECUTED.ipynb ...");
    return 2;
  }
  const out = resolve(values.out ?? "runs/notebook_screens");
  await Deno.mkdir(out, { recursive: true });
  const dir = await Deno.makeTempDir({ prefix: "seemore-browser-" });
  const names = positionals.map((p) => basename(p));
  for (const p of positionals) await Deno.copyFile(p, `${dir}/${basename(p)}`);
  await trust(names.map((n) => `${dir}/${n}`));
  const token = crypto.randomUUID();
  const server = await startServer(dir, token);
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu"],
    headless: true,
  });
  let failed = 0;
  try {
    const page = await browser.newPage(); // log in once: the token becomes a cookie
    await page.goto(`${server.url}/?token=${token}`, { waitUntil: "networkidle2" });
    await page.close();
    for (const name of names) {
      const charts = await checkNotebook(browser, server.url, name, out);
      const bad = charts.filter((c) => !c.drawn);
      failed += bad.length;
      console.log(
        `${bad.length === 0 ? "ok  " : "FAIL"}  ${name}: ${
          charts.length - bad.length
        } of ${charts.length} charts drawn → ${out}/${name.replace(/\.ipynb$/, "")}.png`,
      );
      for (const c of charts) {
        console.log(`        ${c.drawn ? "✓" : "✗"} ${c.width}×${c.height}, ${c.marks} marks  ${c.text}`);
      }
    }
  } finally {
    await browser.close();
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
  return failed === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
