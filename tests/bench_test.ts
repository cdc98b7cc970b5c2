// The benchmark itself, on the tiny configuration (a few seconds): `bench --json` prints every figure,
// and `--compare-original --json` either times the original PyTorch model or says how to install it.

import assert from "node:assert/strict";
import { REQUIRE_TORCH } from "./helpers.ts";

const BENCH = new URL("../bench/bench.ts", import.meta.url).pathname;

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

function checkOurs(r: Record<string, unknown>): void {
  for (const key of OUR_KEYS) assert(key in r, `missing key ${key}`);
  for (const key of ["train_step_ms", "forward_ms", "generate_ms", "peak_rss_mib"]) {
    assert(typeof r[key] === "number" && (r[key] as number) > 0, `${key} = ${r[key]}`);
  }
  assert(r.generate_tokens === 40, `generated ${r.generate_tokens} tokens, expected 40`);
  assert(r.size === "tiny" && r.batch_size === 2, "the tiny configuration was used");
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

Deno.test("bench --compare-original --json: both figures and ratios, or the install hint", async () => {
  const r = await benchJson(["--compare-original", "--rounds", "1", "--torch-threads", "1"]);
  checkOurs(r.ours as Record<string, unknown>);
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
  const ratio = r.ratio as Record<string, number>;
  const ours = r.ours as Record<string, number>;
  const rounds = r.per_round as {
    ours: Record<string, number[]>;
    original: Record<string, Record<string, number[]>>;
  };
  // One round: the paired ratio is that round's ours / original, and those are also the medians.
  assert(
    Math.abs(ratio.train_step - rounds.ours.train[0] / rounds.original["1"].train[0]) < 1e-9,
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

Deno.test("bench --help prints its usage and runs nothing", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", BENCH, "--help"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert(out.success, "exit status 0");
  assert(text.includes("--compare-original") && text.includes("bench/README.md"), text);
  assert(!text.includes("train step "), "no benchmark ran");
});
