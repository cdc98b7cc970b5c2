// The command line end to end, as a user runs it: train on a CSV, evaluate, generate; and bad inputs
// fail with a message naming the file, row and column, leaving nothing half-written.

import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { TRAIN, trainSettings } from "../lib/cli.ts";
import { DEFAULT_TRAIN, RECIPES } from "../lib/config.ts";
import { decodeImage } from "../lib/data/images.ts";
import { parseFlags } from "../lib/flags.ts";
import { makeRows, rowsToCsv } from "../lib/data/shapes.ts";
import { generate, type GenerateOptions } from "../lib/generate.ts";
import { loadModel } from "../lib/model_files.ts";
import { Tokenizer } from "../lib/tokenizer.ts";
import { TINY_CLI_FLAGS, useBackend } from "./helpers.ts";

const CLI = new URL("../lib/cli.ts", import.meta.url).pathname;
const TINY = [
  ...TINY_CLI_FLAGS,
  "--img-size",
  "32",
];

async function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { NO_COLOR: "1", SEEMORE_BACKEND: "cpu" },
    stdout: "piped",
    stderr: "piped",
  });
  const r = await p.output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

/** What `generate` must print: the prompt and the caption generate() continues it with, in this process. */
async function expectedCaption(
  run: string,
  image: string,
  prompt: string,
  opts: Omit<GenerateOptions, "prompt">,
) {
  await useBackend("cpu"); // as the CLI runs here (SEEMORE_BACKEND=cpu)
  const { model, vocab } = await loadModel(run);
  const tokenizer = new Tokenizer(vocab);
  const S = model.config.img_size;
  const images = tf.tensor4d(await decodeImage(await Deno.readFile(image), S, { file: image }), [1, 3, S, S]);
  const promptIds = tokenizer.encode(prompt);
  const ids = generate(model, images, { ...opts, prompt: promptIds })[0];
  tf.dispose(images);
  model.dispose();
  assert(ids.length > 0, "the model generates at least one character after the prompt");
  return tokenizer.decode([...promptIds, ...ids]);
}

const dir = await Deno.makeTempDir();
await Deno.writeTextFile(`${dir}/train.csv`, rowsToCsv(makeRows(3, 1, "train", 24)));
await Deno.writeTextFile(`${dir}/val.csv`, rowsToCsv(makeRows(3, 1, "val", 4)));
const png = Uint8Array.from(atob(makeRows(3, 1, "val", 1)[0].image), (c) => c.charCodeAt(0));
await Deno.writeFile(`${dir}/image.png`, png);

Deno.test("train → eval → generate on a user's CSV", async () => {
  const run = `${dir}/run`;
  const t = await cli(
    "train",
    "--data",
    `${dir}/train.csv`,
    "--val",
    `${dir}/val.csv`,
    "--steps",
    "3",
    "--batch",
    "4",
    "--eval-iters",
    "1",
    "--eval-interval",
    "2",
    "--out",
    run,
    ...TINY,
  );
  assert.equal(t.code, 0, t.err);
  assert.match(t.out, /prediction \| truth/);
  for (
    const f of [
      "config.json",
      "model.safetensors",
      "metrics.csv",
      "optimizer.safetensors",
      "train_state.json",
    ]
  ) {
    await Deno.stat(`${run}/${f}`);
  }
  assert.equal(
    (await Deno.readTextFile(`${run}/metrics.csv`)).trim().split("\n")[0],
    "step,train_loss,val_loss,elapsed_s",
  );
  // the default recipe ("seeing"): conv stem, and a word head over the training captions' words
  const config = JSON.parse(await Deno.readTextFile(`${run}/config.json`));
  assert.equal(config.patch_stem, "conv");
  assert(config.image_words.length > 0 && config.image_words.every((w: string) => /^[a-z]+$/.test(w)));
  assert.equal(config.train.word_noise, 0.25);
  assert.equal(config.train.ema, 0.998, "the seeing recipe saves the weight average");

  const e = await cli("eval", "--ckpt", run, "--data", `${dir}/val.csv`, "--json");
  assert.equal(e.code, 0, e.err);
  const scores = JSON.parse(e.out);
  for (const k of ["loss", "exact_match", "char_accuracy", "n"]) assert.equal(typeof scores[k], "number", k);
  assert.equal(scores.n, 4);
  // level-2 captions: the scores name the attributes of both objects and the relation (no position)
  await Deno.writeTextFile(`${dir}/pairs.csv`, rowsToCsv(makeRows(3, 2, "test", 3)));
  const e2 = await cli("eval", "--ckpt", run, "--data", `${dir}/pairs.csv`, "--samples", "1");
  assert.equal(e2.code, 0, e2.err);
  assert.match(
    e2.out,
    /\n {2}per attribute: colour [\d.]+ % {2}shape [\d.]+ % {2}size [\d.]+ % {2}relation [\d.]+ %\n/,
  );

  const g = await cli(
    "generate",
    "--ckpt",
    run,
    "--image",
    `${dir}/image.png`,
    "--prompt",
    "a",
    "--max-tokens",
    "10",
  );
  assert.equal(g.code, 0, g.err);
  const greedy = await expectedCaption(run, `${dir}/image.png`, "a", { greedy: true, maxNewTokens: 10 });
  assert.equal(g.out, greedy + "\n");
  const s = await cli(
    "generate",
    "--ckpt",
    run,
    "--image",
    `${dir}/image.png`,
    "--temperature",
    "0.8",
    "--top-k",
    "5",
    "--top-p",
    "0.9",
    "--max-tokens",
    "5",
    "--seed",
    "3",
  );
  assert.equal(s.code, 0, s.err);
  const sampled = await expectedCaption(run, `${dir}/image.png`, "", {
    greedy: false,
    temperature: 0.8,
    topK: 5,
    topP: 0.9,
    maxNewTokens: 5,
    seed: 3,
  });
  assert.equal(s.out, sampled + "\n");

  const r = await cli(
    "train",
    "--data",
    `${dir}/train.csv`,
    "--val",
    `${dir}/val.csv`,
    "--steps",
    "4",
    "--resume",
    run,
    "--eval-iters",
    "1",
  );
  assert.equal(r.code, 0, r.err);
  assert.equal(JSON.parse(await Deno.readTextFile(`${run}/train_state.json`)).step, 4);
});

Deno.test("bad inputs fail clearly and write nothing", async () => {
  const cases: [string, string, RegExp][] = [
    ["missing-column.csv", "image,caption\nAAAA,a cat\n", /missing-column\.csv.*b64string_images/s],
    [
      "bad-base64.csv",
      `b64string_images,caption\n${btoa(String.fromCharCode(...png))},a dog\n@@@not base64@@@,a cat\n`,
      /bad-base64\.csv, row 2, column "b64string_images": not valid base64: character "@" at position 1/,
    ],
    [
      // Row 2's base64 check fails before row 1's image decoder does: the first bad row is named.
      "first-bad-row.csv",
      `b64string_images,caption\n${btoa("x".repeat(30))},a dog\n@@@not base64@@@,a cat\n`,
      /first-bad-row\.csv, row 1, column "b64string_images": not a PNG or JPEG image/,
    ],
    [
      "not-image.csv",
      `b64string_images,caption\n${btoa("hello, not an image at all")},a cat\n`,
      /not-image\.csv, row 1, column "b64string_images"/,
    ],
    [
      "bad-symbol.csv",
      `b64string_images,caption\n${btoa(String.fromCharCode(...png))},a café\n`,
      /bad-symbol\.csv, row 1, column "caption".*"é"/s,
    ],
    ["empty.csv", "b64string_images,caption\n", /empty\.csv/],
  ];
  for (const [name, text, pattern] of cases) {
    await Deno.writeTextFile(`${dir}/${name}`, text);
    const out = `${dir}/out-${name}`;
    // A new model takes its vocabulary from its training captions: an unknown symbol is a validation error.
    const files = name === "bad-symbol.csv"
      ? ["--data", `${dir}/train.csv`, "--val", `${dir}/${name}`]
      : ["--data", `${dir}/${name}`, "--val", `${dir}/val.csv`];
    const r = await cli("train", ...files, "--steps", "1", "--out", out, ...TINY);
    assert.equal(r.code, 1, `${name}: ${r.err}`);
    assert.match(r.err, pattern, name);
    await assert.rejects(Deno.stat(out), Deno.errors.NotFound, `${name}: nothing is written`);
  }
  // an empty validation split: one row, no --val
  await Deno.writeTextFile(
    `${dir}/one.csv`,
    `b64string_images,caption\n${btoa(String.fromCharCode(...png))},a cat.\n`,
  );
  const one = await cli("train", "--data", `${dir}/one.csv`, "--steps", "1", ...TINY);
  assert.equal(one.code, 1);
  assert.match(one.err, /one\.csv.*empty/s);
  // --data NAME names a bundled data set: an unknown one fails at once, naming it and the bundled ones
  for (
    const args of [
      ["train", "--data", "shapes3", "--out", `${dir}/out-shapes3`],
      ["eval", "--ckpt", `${dir}/none`, "--data", "shapes3"],
    ]
  ) {
    const r = await cli(...args);
    assert.equal(r.code, 1, r.err);
    assert.match(
      r.err,
      /--data shapes3: no bundled data set of that name .*bundled: shapes, shapes2/,
      args[0],
    );
    await assert.rejects(Deno.stat(`${dir}/out-shapes3`), Deno.errors.NotFound);
  }
  const usage = await cli("train", "--steps", "many");
  assert.equal(usage.code, 2);
  assert.match(usage.err, /--steps must be a whole number from 0 to 1000000000, not "many"/);
  const stem = await cli("train", "--patch-stem", "hmlp");
  assert.equal(stem.code, 2);
  assert.match(stem.err, /--patch-stem must be one of "linear", "conv"/);
  const init = await cli("train", "--init", "bogus");
  assert.equal(init.code, 2);
  assert.match(init.err, /--init must be one of "pytorch", "kaiming", not "bogus"/);
  const decay = await cli("train", "--decay-lr", "yes");
  assert.equal(decay.code, 2);
  assert.match(decay.err, /--decay-lr must be true or false/);
});

Deno.test("train's settings: the recipe, its changes for a bundled --data, then the flags", () => {
  const cfg = (...args: string[]) => trainSettings(parseFlags(args, TRAIN)).cfg;
  const seeing = RECIPES.seeing.train;
  for (const data of [[], ["--data", "shapes"], ["--data", "my/shapes2.csv"]]) {
    assert.equal(cfg(...data).max_iters, seeing.max_iters, data.join(" "));
    assert.equal(cfg(...data).word_loss, seeing.word_loss, data.join(" "));
  }
  // two objects: more steps, word loss 1 (README, "A model that sees"); the rest of the recipe stays
  const two = cfg("--data", "shapes2");
  const kept = [two.ema, two.word_noise, two.decay_lr];
  assert.deepEqual([two.max_iters, two.word_loss, ...kept], [9000, 1, seeing.ema, seeing.word_noise, true]);
  // flags still win, and another recipe has no such changes
  assert.equal(cfg("--data", "shapes2", "--steps", "100").max_iters, 100);
  assert.equal(cfg("--data", "shapes2", "--word-loss", "2").word_loss, 2);
  const original = cfg("--data", "shapes2", "--recipe", "original");
  assert.deepEqual([original.max_iters, original.word_loss], [
    DEFAULT_TRAIN.max_iters,
    DEFAULT_TRAIN.word_loss,
  ]);
});
