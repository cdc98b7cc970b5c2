// `deno task setup`, `deno task doctor` and the main job's own check of the fast CPU path.
//
// The "missing" cases run in a child process that cannot see the libraries (tests/hide.ts: `unshare
// --mount`, then /dev/null bound over OpenBLAS, oneDNN or the C compiler inside the child's own mount
// namespace; nothing changes for the rest of the machine). That needs root and apt-get; elsewhere those
// tests are skipped with one line, except under CI (CI set), where they must run. Nothing here installs or
// removes packages: setup runs with --dry-run, train with SEEMORE_NO_SETUP=1.

import assert from "node:assert/strict";
import { REFERENCE_STEPS_PER_S, SpeedReport } from "../lib/fast_path.ts";
import { clock, duration, ProgressBar } from "../lib/progress.ts";
import { kernelDirs, planGpu, planSetup, probeFastPath, shellLine, type System } from "../lib/setup.ts";
import { tfNodeCheck } from "../lib/tfnode/check.ts";
import { makeRows, rowsToCsv } from "../lib/data/shapes.ts";
import { TINY_CLI_FLAGS } from "./helpers.ts";
import { hideFromChild, hidingAvailable, realFile } from "./hide.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const SETUP = `${ROOT}lib/setup.ts`;
const DOCTOR = `${ROOT}lib/doctor.ts`;
const CLI = `${ROOT}lib/cli.ts`;
const dec = new TextDecoder();

const HIDE = { openblas: "libopenblas.so.0", onednn: "libdnnl.so.2", compiler: "cc" } as const;

/**
 * Runs deno with `args` in a child that cannot see the `hide` parts, with an empty kernel cache; variables
 * that would point the loaders elsewhere are emptied (an empty one counts as unset).
 */
async function runHidden(hide: (keyof typeof HIDE)[], args: string[], env: Record<string, string> = {}) {
  const r = await hideFromChild(hide.map((h) => HIDE[h]), Deno.execPath(), {
    args,
    env: {
      CC: "",
      SEEMORE_OPENBLAS: "",
      SEEMORE_ONEDNN: "",
      SEEMORE_NO_SETUP: "",
      SEEMORE_BLAS: "",
      NO_COLOR: "1",
      SEEMORE_CACHE_DIR: await Deno.makeTempDir(),
      ...env,
    },
  });
  return { code: r.code, out: r.stdout, err: r.stderr };
}

const hasApt = (Deno.env.get("PATH") ?? "").split(":").some((d) => {
  try {
    return Deno.statSync(`${d}/apt-get`).isFile;
  } catch {
    return false;
  }
});
const why = hasApt ? await hidingAvailable() : "these tests expect apt-get";
const REQUIRED = Boolean(Deno.env.get("CI"));
if (why && !REQUIRED) console.warn(`setup tests that hide libraries skipped: ${why}`);
const hiding = { ignore: why !== null && !REQUIRED };

/** The packages of the `apt-get install` line among a dry run's commands. */
function installed(stdout: string): string[] | null {
  const line = stdout.split("\n").find((l) => /apt-get install /.test(l));
  return line
    ? line.split(" ").filter((w) => !w.startsWith("-")).slice(line.startsWith("sudo") ? 3 : 2)
    : null;
}

// ---------------------------------------------------------------------------------------------
// setup --dry-run with parts hidden

Deno.test({
  name: "setup --dry-run lists exactly the missing packages: all three hidden",
  ...hiding,
  fn: async () => {
    const r = await runHidden(["openblas", "onednn", "compiler"], [
      "run",
      "-A",
      SETUP,
      "--dry-run",
      "--only",
      "fast",
    ]);
    assert.equal(r.code, 0, r.err);
    const lines = r.out.trim().split("\n");
    assert.equal(lines[0], "apt-get update -qq", r.out);
    assert.deepEqual(installed(r.out), ["libopenblas0-pthread", "libdnnl2", "gcc"], r.out);
    assert.equal(lines.length, 2, `commands only: ${r.out}`);
  },
});

Deno.test({
  name: "setup --dry-run lists exactly the missing packages: oneDNN hidden",
  ...hiding,
  fn: async () => {
    const r = await runHidden(["onednn"], ["run", "-A", SETUP, "--dry-run", "--only", "fast"]);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(installed(r.out), ["libdnnl2"], r.out);
  },
});

Deno.test({
  name: "setup --dry-run lists exactly the missing packages: the compiler hidden, kernels not yet built",
  ...hiding,
  fn: async () => {
    const r = await runHidden(["compiler"], ["run", "-A", SETUP, "--dry-run", "--only", "fast"]);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(installed(r.out), ["gcc"], r.out);
  },
});

Deno.test("setup --dry-run prints no command when the fast path is all there", {
  ignore: probeFastPath().needs.length > 0 && !REQUIRED,
}, async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SETUP, "--dry-run", "--only", "fast"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0);
  assert.equal(dec.decode(out.stdout), "", "no commands");
  assert.match(dec.decode(out.stderr), /nothing to do/);
});

Deno.test("setup installs nothing for a library a variable names: SEEMORE_OPENBLAS=/nonexistent", {
  ignore: probeFastPath().needs.length > 0 && !REQUIRED,
}, async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SETUP, "--dry-run", "--only", "fast"],
    env: { SEEMORE_OPENBLAS: "/nonexistent/libopenblas.so.0" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(dec.decode(out.stdout), "", "no apt-get: a package would not change what the variable names");
  assert.match(
    dec.decode(out.stderr),
    /setup: not fixable by a package: OpenBLAS not found \(tried SEEMORE_OPENBLAS=\/nonexistent/,
  );
});

// ---------------------------------------------------------------------------------------------
// doctor

Deno.test({
  name: "doctor reports a hidden OpenBLAS as missing, with the package that brings it back",
  ...hiding,
  fn: async () => {
    const r = await runHidden(["openblas"], ["run", "-A", DOCTOR, "--json"], { SEEMORE_BACKEND: "wasm" });
    assert.equal(r.code, 0, r.err);
    const report = JSON.parse(r.out);
    assert.deepEqual(
      report.backends.map((b: { name: string }) => b.name),
      ["wasm + OpenBLAS + oneDNN", "wasm", "cpu", "webgpu", "tensorflow", "tensorflow-gpu"],
    );
    const fast = report.backends[0];
    assert.equal(fast.available, false);
    assert.match(fast.detail, /OpenBLAS ✗ \(OpenBLAS not found/);
    assert.match(fast.detail, /oneDNN \d+\.\d+\.\d+ at \//, "oneDNN still found");
    assert.match(fast.fix, /apt-get install -y -qq --no-install-recommends libopenblas0-pthread \(or/);
    assert.equal(report.backends[1].available, true, "plain wasm works");
    assert.equal(report.pick.backend, "wasm");
    assert.equal(report.pick.path, "stock");
    assert(report.pick.train_step_ms > 0);
  },
});

Deno.test({
  name: "doctor's lines: one per backend, then the pick; the fast path available when nothing is hidden",
  ...hiding,
  fn: async () => {
    const r = await runHidden([], ["run", "-A", DOCTOR], { SEEMORE_BACKEND: "wasm" });
    assert.equal(r.code, 0, r.err);
    const lines = r.out.trim().split("\n");
    assert.equal(lines.length, 7, r.out);
    assert.match(
      lines[0],
      /^wasm \+ OpenBLAS \+ oneDNN {2}available: OpenBLAS .* threads; oneDNN .*C kernels built now/,
    );
    assert.match(lines[6], /^train picks: wasm \+ OpenBLAS \+ C kernels \+ oneDNN; .*: \d+\.\d ms$/);
  },
});

// ---------------------------------------------------------------------------------------------
// The main job without the fast path

Deno.test({
  name: "train without the fast path and SEEMORE_NO_SETUP=1: says what to run and how long, then trains",
  ...hiding,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    await Deno.writeTextFile(`${dir}/train.csv`, rowsToCsv(makeRows(3, 1, "train", 24)));
    await Deno.writeTextFile(`${dir}/val.csv`, rowsToCsv(makeRows(3, 1, "val", 4)));
    const args = ["run", "-A", CLI, "train", "--data", `${dir}/train.csv`, "--val", `${dir}/val.csv`];
    const r = await runHidden(
      ["openblas", "onednn", "compiler"],
      [
        ...args,
        "--steps",
        "4",
        "--batch",
        "4",
        "--eval-iters",
        "1",
        "--out",
        `${dir}/run`,
        "--backend",
        "wasm",
        ...TINY_CLI_FLAGS,
      ],
      { SEEMORE_NO_SETUP: "1" },
    );
    assert.equal(r.code, 0, r.err);
    const fix =
      "apt-get update -qq && apt-get install -y -qq --no-install-recommends libopenblas0-pthread libdnnl2 gcc";
    assert(
      r.err.includes(
        `fast CPU path: OpenBLAS, oneDNN, a C compiler for the kernels missing; this job runs on stock wasm, ≈ 18× slower`,
      ),
      r.err,
    );
    assert(r.err.includes(`to fix: ${fix}`), r.err);
    const m =
      /this run: 4 steps at ([\d.]+) steps\/s ≈ (.+?); with the fast path ≈ (.+?) \(18× faster: .*\): run `(.+)`/
        .exec(r.err);
    assert(m, `no time estimate in:\n${r.err}`);
    assert.equal(m[4], fix);
    assert(/^backend: wasm \(OpenBLAS not found/m.test(r.err), "stock wasm");
    assert(r.err.includes("train: done"), "it trained");
    assert(r.err.includes("ETA 0:00"), "the bar shows the time left");
    await Deno.stat(`${dir}/run/model.safetensors`);
  },
});

// ---------------------------------------------------------------------------------------------
// The plan for other systems (no side effects: the facts are given)

const APT_ROOT: System = { os: "linux", manager: "apt", root: true, sudo: false };

Deno.test("plan: root installs with apt-get directly", () => {
  const p = planSetup(["openblas", "compiler", "libc-dev"], false, APT_ROOT, "/x/deno");
  assert.deepEqual(p.install, [
    ["apt-get", "update", "-qq"],
    [
      "apt-get",
      "install",
      "-y",
      "-qq",
      "--no-install-recommends",
      "libopenblas0-pthread",
      "gcc",
      "libc6-dev",
    ],
  ]);
  assert.equal(p.promptFree, true);
  assert.deepEqual(p.manual, []);
  assert.equal(p.kernel, null);
});

Deno.test("plan: passwordless sudo installs with sudo -n; a password means the user runs it", () => {
  const sudo = planSetup(["onednn"], false, { ...APT_ROOT, root: false, sudo: true }, "/x/deno");
  assert.deepEqual(sudo.install[1].slice(0, 4), ["sudo", "-n", "apt-get", "install"]);
  assert.equal(sudo.promptFree, true);
  const none = planSetup(["onednn"], true, { ...APT_ROOT, root: false, sudo: false }, "/x/deno");
  assert.deepEqual(none.install, [], "nothing run that would prompt");
  assert.equal(none.promptFree, false);
  assert.deepEqual(none.manual, [
    "sudo apt-get update -qq",
    "sudo apt-get install -y -qq --no-install-recommends libdnnl2",
  ]);
  assert.deepEqual(none.kernel, ["/x/deno", "jupyter", "--install", "--force"], "the kernel needs no root");
});

Deno.test("plan: macOS says brew install openblas and which parts are Linux-only", () => {
  const p = planSetup(["openblas", "onednn", "compiler"], false, {
    os: "darwin",
    manager: "brew",
    root: false,
    sudo: false,
  }, "/x/deno");
  assert.deepEqual(p.install, []);
  assert.deepEqual(p.manual, ["brew install openblas"]);
  assert.equal(p.unsupported.length, 2);
  assert(p.unsupported.every((u) => u.includes("Linux only today")), p.unsupported.join("\n"));
});

Deno.test("plan: a Linux without apt-get is told what to install", () => {
  const p = planSetup(
    ["openblas"],
    false,
    { os: "linux", manager: null, root: true, sudo: false },
    "/x/deno",
  );
  assert.deepEqual(p.install, []);
  assert.match(p.unsupported[0], /no apt-get here: install OpenBLAS \(libopenblas\.so\.0\)/);
});

// ---------------------------------------------------------------------------------------------
// The GPU part (--gpu): tfjs-node-gpu's install with Deno; nothing is installed here (--dry-run)

Deno.test("plan: --gpu installs tfjs-node-gpu with its script allowed; a failed script is retried", () => {
  const allow = "--allow-scripts=npm:@tensorflow/tfjs-node-gpu@4.22.0";
  assert.deepEqual(planGpu("package", "/x/deno"), [
    ["/x/deno", "install", allow, "npm:@tensorflow/tfjs-node-gpu@4.22.0"],
  ]);
  // Deno marks a package's script as run even when it failed: the mark goes first.
  assert.deepEqual(planGpu("script", "/x/deno"), [
    ["rm", "-f", "node_modules/.deno/@tensorflow+tfjs-node-gpu@4.22.0/.scripts-run"],
    ["/x/deno", "install", allow],
  ]);
  for (const stage of ["libraries", "driver", "device", "ready"] as const) {
    assert.deepEqual(planGpu(stage, "/x/deno"), [], `${stage}: not Deno's to install`);
  }
});

Deno.test("setup --gpu --dry-run prints the install commands for where tfjs-node-gpu stands", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SETUP, "--only", "gpu", "--dry-run"],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, dec.decode(out.stderr));
  const { stage } = tfNodeCheck("tensorflow-gpu");
  const expected = planGpu(stage, Deno.execPath()).map((argv) => `${shellLine(argv)}\n`).join("");
  assert.equal(dec.decode(out.stdout), expected, `stage ${stage}`);
  if (stage === "package") {
    assert.match(expected, /install --allow-scripts=npm:@tensorflow\/tfjs-node-gpu@4\.22\.0 npm:/);
  }
});

// ---------------------------------------------------------------------------------------------
// Deno's Jupyter kernel, registered for real into a temporary data folder

const systemKernel = kernelDirs().slice(-2).some((d) => {
  try {
    return Deno.statSync(`${d}/deno/kernel.json`).isFile;
  } catch {
    return false;
  }
});

Deno.test("setup --only kernel registers this deno's kernel once; a second run does nothing", {
  ignore: systemKernel, // a system-wide Deno kernelspec would answer first
}, async () => {
  const data = await Deno.makeTempDir();
  const env = { XDG_DATA_HOME: data, HOME: data, JUPYTER_PATH: "", JUPYTER_DATA_DIR: "", NO_COLOR: "1" };
  const run = async (...flags: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", SETUP, "--only", "kernel", ...flags],
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: out.code, out: dec.decode(out.stdout), err: dec.decode(out.stderr) };
  };
  const dry = await run("--dry-run");
  assert.equal(dry.out, `${Deno.execPath()} jupyter --install --force\n`);
  const first = await run();
  assert.equal(first.code, 0, first.err);
  assert.match(first.err, /registered Deno's Jupyter kernel/);
  const spec = JSON.parse(await Deno.readTextFile(`${data}/jupyter/kernels/deno/kernel.json`));
  assert.equal(await Deno.realPath(spec.argv[0]), await Deno.realPath(Deno.execPath()), "this deno");
  const second = await run();
  assert.equal(second.code, 0, second.err);
  assert.doesNotMatch(second.err, /registered/);
  assert.match(second.out, /Jupyter kernel: ✓ deno \S+, .*\/jupyter\/kernels\/deno\nnothing to do/);
});

Deno.test("setup and doctor answer --help without doing anything", async () => {
  for (const [file, words] of [[SETUP, "--dry-run"], [DOCTOR, "--json"]]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", file, "--help"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0);
    const text = dec.decode(out.stdout);
    assert(text.includes(words) && !text.includes("available:") && !text.includes("✓"), text);
  }
});

// ---------------------------------------------------------------------------------------------
// The time estimates

Deno.test("SpeedReport: this run's time from the steps after the first, and with the fast path", () => {
  const lines: string[] = [];
  const r = new SpeedReport(4800, "stock", "apt-get install x", (l) => lines.push(l));
  r.onStep(1, 5); // the first step (warm-up) is not counted
  for (let done = 2; done <= 10; done++) r.onStep(done, 5 + (done - 1) * 1.4);
  assert.equal(lines.length, 0, "not before ten steps after the first");
  r.onStep(11, 5 + 10 * 1.4);
  r.onStep(12, 100);
  assert.equal(lines.length, 1, "said once");
  const rate = 10 / 14; // 0.714 steps/s
  const fast = rate * REFERENCE_STEPS_PER_S.fast / REFERENCE_STEPS_PER_S.stock;
  assert.equal(
    lines[0],
    `this run: 4800 steps at 0.71 steps/s ≈ ${duration(4800 / rate)}; with the fast path ≈ ` +
      `${duration(4800 / fast)} (18× faster: the seeing recipe's ratio on the reference machine, ` +
      "bench/README.md): run `apt-get install x`",
  );
  assert.equal(duration(4800 / rate), "1 h 52 min");
});

Deno.test("SpeedReport: a resumed run counts its own steps; a short run reports at its end", () => {
  const lines: string[] = [];
  const resumed = new SpeedReport(100, "no-onednn", "fix", (l) => lines.push(l));
  for (let done = 91; done <= 100; done++) resumed.onStep(done, done);
  assert.match(
    lines[0],
    /^this run: 10 steps at 1\.00 steps\/s ≈ 10 s; with the fast path ≈ 10 s \(4 % faster/,
  );
  const short = new SpeedReport(1, "stock", "fix", (l) => lines.push(l));
  short.onStep(1, 2);
  assert.match(lines[1], /^this run: 1 steps at 0\.50 steps\/s ≈ 2 s/);
});

Deno.test("the progress bar shows the time left at the pace since its first update", () => {
  const bar = new ProgressBar(100);
  assert.doesNotMatch(bar.format(1, { loss: 1 }, 1, 0), /ETA/, "no pace yet");
  assert.match(bar.format(11, { loss: 1 }, 1, 10_000), / {2}ETA 1:29$/); // 89 steps at 1 s
  assert.match(bar.format(21, { loss: 1 }, 1, 20_000 + 3600_000), / {2}ETA 3:58:19$/); // 79 steps at 181 s
  assert.equal(clock(3725), "1:02:05");
  assert.equal(duration(59), "59 s");
  assert.equal(duration(366), "6 min");
});

// ---------------------------------------------------------------------------------------------
// Re-probing after an install, in the same process

Deno.test("probeFastPath(true) finds libraries that appeared after the first probe (as after an install)", {
  ignore: probeFastPath().needs.length > 0 && !REQUIRED,
}, async () => {
  const dir = await Deno.makeTempDir();
  const blas = await realFile("libopenblas.so.0");
  const dnnl = await realFile("libdnnl.so.2");
  const script = `
    import { probeFastPath } from "${ROOT}lib/setup.ts";
    const found = (s) => [s.openblas.ok, s.onednn.ok];
    const before = found(probeFastPath());
    await Deno.copyFile("${blas}", "${dir}/libopenblas.so.0");
    await Deno.copyFile("${dnnl}", "${dir}/libdnnl.so.2");
    const cached = found(probeFastPath());
    const after = found(probeFastPath(true));
    console.log(JSON.stringify({ before, cached, after }));`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    env: { SEEMORE_OPENBLAS: `${dir}/libopenblas.so.0`, SEEMORE_ONEDNN: `${dir}/libdnnl.so.2` },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, dec.decode(out.stderr));
  const r = JSON.parse(dec.decode(out.stdout));
  assert.deepEqual(r.before, [false, false], "[OpenBLAS, oneDNN] not there yet");
  assert.deepEqual(r.cached, [false, true], "OpenBLAS's failure is remembered until asked to retry");
  assert.deepEqual(r.after, [true, true], "found on the retry");
});
