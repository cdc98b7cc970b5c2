// The benchmark itself, on the tiny configuration (a few seconds): `bench --json` prints every figure,
// and `--compare-original --json` either times the original PyTorch model on our batch shapes, on the
// device asked for, or says how to install torch. This machine has no GPU: the CUDA path is checked only
// for its error where torch sees none.

import assert from "node:assert/strict";
import { PYTHON, REQUIRE_TORCH, torchMissing } from "./helpers.ts";

const BENCH = new URL("../bench/bench.ts", import.meta.url).pathname;
const ORIGINAL_STEP = new URL("../bench/original_step.py", import.meta.url).pathname;
const TORCH_MISSING = await torchMissing();
/** Whether torch sees a CUDA GPU here (false where torch is missing). */
const HAS_CUDA = TORCH_MISSING === "" &&
  (await pythonOut(["-c", "import torch; print(torch.cuda.is_available())"]))
      .stdout.trim() === "True";

async function pythonOut(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(PYTHON, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

async function benchJson(args: string[], env: Record<string, string> = {}): Promise<Record<string, unknown>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", BENCH, "--size", "tiny", "--json", ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) throw new Error(`bench failed: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(stdout.split("\n").at(-1)!);
}

const OUR_KEYS = [
  "backend",
  "model_type",
  "batch_size",
  "caption_length",
  "train_step_ms",
  "forward_ms",
  "generate_ms",
  "generate_tokens",
  "generate_tokens_per_s",
  "peak_rss_mib",
  "train_step_gflop",
  "original_step_gflop",
  "train_gflop_per_s",
];

function checkOurs(r: Record<string, unknown>, batch = 2): void {
  for (const key of OUR_KEYS) assert(key in r, `missing key ${key}`);
  for (const key of ["train_step_ms", "forward_ms", "generate_ms", "peak_rss_mib"]) {
    assert(typeof r[key] === "number" && (r[key] as number) > 0, `${key} = ${r[key]}`);
  }
  assert(r.generate_tokens === 40, `generated ${r.generate_tokens} tokens, expected 40`);
  assert(r.size === "tiny" && r.caption_length === 8, "the tiny configuration was used");
  assert.equal(r.batch_size, batch, "our batch size");
}

Deno.test("bench --json --size tiny prints every figure", async () => {
  const r = await benchJson(["--steps", "2", "--profile"]);
  checkOurs(r);
  const profile = r.profile as { kernels: { name: string; ms: number; calls: number }[]; wall_ms: number };
  assert(profile.kernels.length > 0 && profile.kernels.every((k) => k.calls > 0), "kernel profile listed");
  assert(
    profile.kernels.some((k) => k.name === "BatchMatMul" || k.name === "_FusedMatMul"),
    "matmuls profiled",
  );
});

Deno.test("bench --layers: the blocks run layer by layer, so the profile lists their layers' kernels", async () => {
  const kernels = async (args: string[]) => {
    const r = await benchJson(["--steps", "1", "--profile", ...args]);
    return (r.profile as { kernels: { name: string }[] }).kernels.map((k) => k.name);
  };
  const whole = await kernels([]);
  if (!whole.includes("SeemoreBlock")) {
    // No C kernels here: the blocks run layer by layer anyway. CI has them (SEEMORE_REQUIRE_NATIVE=1).
    assert(
      Deno.env.get("SEEMORE_REQUIRE_NATIVE") !== "1",
      "SEEMORE_REQUIRE_NATIVE=1: no SeemoreBlock kernel",
    );
    return;
  }
  const layers = await kernels(["--layers"]);
  assert(!layers.includes("SeemoreBlock") && !layers.includes("SeemoreBlockGrad"), "no whole-block kernel");
  assert(
    layers.includes("SeemoreAttention") && layers.includes("SeemoreLayerNormGrad"),
    "the layers' kernels",
  );
});

Deno.test("bench --compare-original --json: both figures and ratios on our batch shapes, or the install hint", async () => {
  const r = await benchJson(["--compare-original", "--rounds", "1", "--torch-threads", "1", "--batch", "3"]);
  checkOurs(r.ours as Record<string, unknown>, 3);
  if (r.original === null) {
    // No torch: the install hint. CI installs torch and sets SEEMORE_REQUIRE_TORCH=1: the original must run.
    const why = String(r.original_unavailable);
    assert(!REQUIRE_TORCH, `SEEMORE_REQUIRE_TORCH=1 but the original did not run: ${why}`);
    assert(why.includes("apt-get install python3-torch"), why);
    return;
  }
  const o = r.original as Record<string, number>;
  for (const key of ["train_step_ms", "forward_ms", "generate_ms", "peak_rss_mib"]) {
    assert(o[key] > 0, `original ${key} = ${o[key]}`);
  }
  // The original timed our batch (--batch 3) and our caption length (the tiny configuration's 8).
  assert.equal(o.batch_size, 3, "the original's batch");
  assert.equal(o.caption_length, 8, "the original's caption length");
  // --torch-device auto: the original's own choice, cuda where torch sees a GPU.
  const device = (r.original as Record<string, unknown>).device;
  assert.equal(device, HAS_CUDA ? "cuda" : "cpu");
  if (!HAS_CUDA) assert.equal((r.original as Record<string, unknown>).gpu, null);
  if (!HAS_CUDA) assert.equal((r.original as Record<string, unknown>).peak_cuda_mib, null);
  const ratio = r.ratio as Record<string, number>;
  const ours = r.ours as Record<string, number>;
  const rounds = r.per_round as {
    ours: Record<string, number[]>;
    original: Record<string, Record<string, number[]>>;
  };
  // One round: the paired ratio is that round's ours / original, and those are also the medians.
  const threads = String(o.train_step_threads); // 1 (--torch-threads) on the CPU; torch's default on CUDA
  assert(
    Math.abs(ratio.train_step - rounds.ours.train[0] / rounds.original[threads].train[0]) < 1e-9,
    "paired ratio",
  );
  assert(Math.abs(ratio.train_step - ours.train_step_ms / o.train_step_ms) < 1e-9, "train ratio");
  assert.equal(r.repeat, 2);
  assert(Math.abs(ratio.generate_speedup * ratio.generate - 1) < 1e-9, "generate ratio and speed-up agree");
});

Deno.test("bench --compare-original without a usable Python reports ours and how to install torch", async () => {
  const r = await benchJson(["--compare-original", "--rounds", "1"], {
    SEEMORE_PYTHON: "/nonexistent/python3",
  });
  checkOurs(r.ours as Record<string, unknown>);
  assert.equal(r.original, null);
  assert(
    String(r.original_unavailable).includes("apt-get install python3-torch"),
    String(r.original_unavailable),
  );
});

Deno.test({
  name: "original_step.py --device cpu: times the batch shapes it is given, on the CPU",
  ignore: TORCH_MISSING !== "" && !REQUIRE_TORCH,
  fn: async () => {
    assert.equal(TORCH_MISSING, "", TORCH_MISSING);
    const args = ["--size", "tiny", "--device", "cpu", "--batch", "3", "--caption", "5", "--rounds", "1"];
    const out = await pythonOut([ORIGINAL_STEP, ...args, "--threads", "1"]);
    assert.equal(out.code, 0, out.stderr);
    const r = JSON.parse(out.stdout.trim());
    assert.equal(r.device, "cpu");
    assert.equal(r.gpu, null);
    assert.equal(r.peak_cuda_mib, null);
    assert.equal(r.batch, 3, "batch");
    assert.equal(r.caption, 5, "caption length");
    for (const key of ["train_step_ms", "forward_ms", "generate_ms", "peak_rss_mib"]) {
      assert(r[key] > 0, `${key} = ${r[key]}`);
    }
  },
});

Deno.test({
  name: "original_step.py --device cuda without a GPU: one JSON line that says so, and exit status 4",
  ignore: HAS_CUDA || (TORCH_MISSING !== "" && !REQUIRE_TORCH),
  fn: async () => {
    assert.equal(TORCH_MISSING, "", TORCH_MISSING);
    const out = await pythonOut([ORIGINAL_STEP, "--size", "tiny", "--device", "cuda", "--serve"]);
    assert.equal(out.code, 4, out.stderr);
    const lines = out.stdout.trim().split("\n");
    assert.equal(lines.length, 1, out.stdout);
    const msg = JSON.parse(lines[0]);
    assert.deepEqual(Object.keys(msg), ["error"]);
    assert.match(msg.error, /--device cuda: torch .* sees no CUDA GPU/);
  },
});

Deno.test({
  name:
    "bench --compare-original --torch-device cuda without a GPU reports ours and why the original did not run",
  ignore: HAS_CUDA || (TORCH_MISSING !== "" && !REQUIRE_TORCH),
  fn: async () => {
    const r = await benchJson(["--compare-original", "--rounds", "1", "--torch-device", "cuda"]);
    checkOurs(r.ours as Record<string, unknown>);
    assert.equal(r.original, null);
    assert.match(String(r.original_unavailable), /sees no CUDA GPU/);
  },
});

Deno.test("bench --torch-device takes auto, cpu or cuda", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", BENCH, "--size", "tiny", "--compare-original", "--torch-device", "gpu"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(!out.success, "exit status non-zero");
  const stderr = new TextDecoder().decode(out.stderr);
  assert(stderr.includes(`--torch-device must be auto, cpu or cuda, got "gpu"`), stderr);
});

Deno.test("bench --help prints its usage and runs nothing", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", BENCH, "--help"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert(out.success, "exit status 0");
  assert(text.includes("--compare-original") && text.includes("bench/README.md"), text);
  assert(text.includes("--torch-device auto|cpu|cuda"), text);
  assert(!text.includes("train step "), "no benchmark ran");
});
