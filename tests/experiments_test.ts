// The experiment scripts behind README figures (bench/experiments/) still run, on a small shapes set and a
// few steps: the figures themselves come from the commands in their headers, not from here.

import assert from "node:assert/strict";
import { makeSplits } from "../lib/data/shapes.ts";

const EXPERIMENTS = new URL("../bench/experiments/", import.meta.url).pathname;
const CLI = new URL("../lib/cli.ts", import.meta.url).pathname;

async function run(args: string[]): Promise<string> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  assert.equal(r.code, 0, dec.decode(r.stderr));
  return dec.decode(r.stdout);
}

const data = await Deno.makeTempDir();
// Like the bundled data: training scenes also show the extra colours and shapes.
const splits = makeSplits({ seed: 5, level: 1, train: 60, val: 6, test: 8, extraColours: 6, extraShapes: 4 });
for (const [split, csv] of Object.entries(splits)) {
  await Deno.writeTextFile(`${data}/${split}.csv`, csv);
}

Deno.test("shape_classifier.ts: accuracy on val and test at each evaluation", async () => {
  const out = await run([
    `${EXPERIMENTS}shape_classifier.ts`,
    ...["--data", data, "--steps", "2", "--eval-interval", "1", "--batch", "4", "--json"],
  ]);
  const r = JSON.parse(out.trim().split("\n").at(-1)!);
  assert.equal(r.stem, "conv");
  assert.deepEqual(r.results.map((x: { step: number }) => x.step), [1, 2]);
  for (const x of r.results) {
    // Shares of 6 val and 8 test images.
    assert(Number.isInteger(x.val * 6) && Number.isInteger(x.test * 8), JSON.stringify(x));
    assert(x.loss > 0);
  }
});

Deno.test("prompt_swap.ts: the true shape's share after the true and after a seen-pair colour", async () => {
  const ckpt = `${data}/run`;
  await run([
    CLI,
    "train",
    ...["--data", `${data}/train.csv`, "--val", `${data}/val.csv`, "--test", `${data}/test.csv`],
    ...["--steps", "2", "--batch", "4", "--eval-iters", "1", "--out", ckpt],
    ...["--n-embd", "16", "--image-embed-dim", "16", "--n-head", "2", "--n-layer", "1", "--num-blks", "1"],
    ...["--img-size", "32"],
  ]);
  const out = await run([`${EXPERIMENTS}prompt_swap.ts`, "--ckpt", ckpt, "--data", data, "--json"]);
  const r = JSON.parse(out.trim().split("\n").at(-1)!);
  assert.equal(r.rows, 8);
  assert.equal(r.held_out_rows, 8); // the test split holds only pairs never seen in training
  for (const key of ["true_shape_after_true_colour", "true_shape_after_swapped_colour"]) {
    assert(Number.isInteger(r[key] * 8) && r[key] >= 0 && r[key] <= 1, `${key} = ${r[key]}`);
  }
});

Deno.test("ema.ts: test scores of the last weights and of each average, and the last weights put back", async () => {
  const out = await run([
    `${EXPERIMENTS}ema.ts`,
    ...["--data", data, "--decays", "0.5,0.9", "--every", "1"],
    ...["--train", JSON.stringify({ max_iters: 3, batch_size: 4, eval_interval: 10, eval_iters: 1 })],
  ]);
  const r = JSON.parse(out.trim().split("\n").at(-1)!);
  assert.equal(r.steps, 3);
  for (const key of ["last", "ema_0.5", "ema_0.9", "last_again"]) {
    assert(Number.isInteger(r[key].exact * 8) && r[key].exact >= 0 && r[key].exact <= 1, `${key}: ${r[key]}`);
  }
  assert.deepEqual(r.last_again, r.last);
});
