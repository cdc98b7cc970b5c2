// Does the text prior veto unseen colour–shape pairs? For each test image (all held-out pairs) a trained
// checkpoint continues the prompt "a <size> <colour> " greedily, once with the true colour and once with a
// colour whose pair with that shape occurs in the training captions; the next word is its shape. If the
// swapped prompt names the true shape far more often, the decoder sees the shape but refuses to write it
// after a colour it never saw it with (README, "A model that sees").
//
//   deno run -A --v8-flags=--max-semi-space-size=4 bench/experiments/prompt_swap.ts --ckpt runs/RUN
//
// --data DIR holds test.csv (the images asked about) and train.csv (which pairs were seen); default
// data/shapes. The swapped colour is the first of lib/data/shapes.ts COLOURS, other than the true one,
// seen with the shape in training. --json prints the result as one JSON line.

import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { initBackend } from "../../lib/backend.ts";
import { ImageCaptionDataset } from "../../lib/data/batches.ts";
import { readImageCaptionCsv } from "../../lib/data/csv.ts";
import { COLOURS, parseCaption, type SceneAttrs } from "../../lib/data/shapes.ts";
import { generate } from "../../lib/generate.ts";
import { loadModel } from "../../lib/model_files.ts";
import { Tokenizer } from "../../lib/tokenizer.ts";

const { values: v } = parseArgs({
  options: {
    ckpt: { type: "string" },
    data: { type: "string", default: "data/shapes" },
    batch: { type: "string", default: "64" },
    backend: { type: "string" },
    json: { type: "boolean", default: false },
  },
});
if (!v.ckpt) throw new Error("usage: prompt_swap.ts --ckpt DIR [--data DIR] [--batch N] [--json]");

await initBackend(v.backend);
const { model, vocab } = await loadModel(v.ckpt);
const tokenizer = new Tokenizer(vocab);

/** The one object of a single-object caption. */
function thingOf(caption: string, where: string): SceneAttrs["objects"][number] {
  const attrs = parseCaption(caption);
  if (!attrs || attrs.objects.length !== 1) throw new Error(`${where}: not a one-shape caption: ${caption}`);
  return attrs.objects[0];
}

const trainFile = `${v.data}/train.csv`, testFile = `${v.data}/test.csv`;
const seen = new Set(
  readImageCaptionCsv(trainFile).captions.map((c, i) => {
    const t = thingOf(c, `${trainFile}, row ${i + 1}`);
    return `${t.colour} ${t.shape}`;
  }),
);
const test = await ImageCaptionDataset.fromCsv(testFile, tokenizer, model.config.img_size, {
  maxLen: model.config.block_positions,
  visualTokens: model.numVisualTokens,
});
const things = test.captions.map((c, i) => thingOf(c, `${testFile}, row ${i + 1}`));

/** The word the model writes after `prompt(row)` for each test row, rows sharing a prompt in one batch. */
function nextWords(prompt: (row: number) => string): string[] {
  const words = new Array<string>(test.length);
  const groups = new Map<string, number[]>();
  things.forEach((_, row) => groups.set(prompt(row), [...(groups.get(prompt(row)) ?? []), row]));
  const batch = Number(v.batch), S = model.config.img_size, size = 3 * S * S;
  for (const [text, rows] of groups) {
    for (let start = 0; start < rows.length; start += batch) {
      const part = rows.slice(start, start + batch);
      const pixels = new Float32Array(part.length * size);
      part.forEach((row, b) => pixels.set(test.image(row), b * size));
      const images = tf.tensor4d(pixels, [part.length, 3, S, S]);
      const ids = generate(model, images, { greedy: true, maxNewTokens: 12, prompt: tokenizer.encode(text) });
      images.dispose();
      part.forEach((row, b) => (words[row] = tokenizer.decode(ids[b]).split(/[ .]/)[0]));
    }
  }
  return words;
}

const swapped = things.map((t) => COLOURS.find((c) => c !== t.colour && seen.has(`${c} ${t.shape}`)));
const heldOut = things.filter((t) => !seen.has(`${t.colour} ${t.shape}`)).length;
const share = (words: string[]) => words.filter((w, row) => w === things[row].shape).length / words.length;
const trueColour = share(nextWords((row) => `a ${things[row].size} ${things[row].colour} `));
const swappedColour = share(
  nextWords((row) => `a ${things[row].size} ${swapped[row] ?? things[row].colour} `),
);

const result = {
  ckpt: v.ckpt,
  rows: test.length,
  held_out_rows: heldOut,
  true_shape_after_true_colour: trueColour,
  true_shape_after_swapped_colour: swappedColour,
};
if (v.json) console.log(JSON.stringify(result));
else {
  console.log(`${test.length} test images (${heldOut} of them held-out pairs), shape named right:`);
  console.log(`  after the true colour     ${(100 * trueColour).toFixed(1)} %`);
  console.log(`  after a seen-pair colour  ${(100 * swappedColour).toFixed(1)} %`);
}
model.dispose();
