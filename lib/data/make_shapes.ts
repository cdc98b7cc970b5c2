// Writes the synthetic shapes data set (train.csv, val.csv, test.csv) and prints blind baselines.
//
//   deno run -A lib/data/make_shapes.ts --out data/shapes --seed 1337 --level 1 \
//     --train 20000 --val 300 --test 500 --extra-colours 6 --extra-shapes 4
//
// Those are the defaults (`deno task shapes`), which made data/shapes; data/shapes2 is the same with
// --level 2 --out data/shapes2. --extra-colours / --extra-shapes add that many of shapes.ts's
// EXTRA_COLOURS / EXTRA_SHAPES to the training scenes only (val and test keep the six colours and six
// shapes): each held-out shape is then seen with more colours in training.
//
// All three files are built in memory first, then written to temporary files and renamed, so an
// error leaves nothing half-written on disk.

import { join } from "node:path";
import { parseArgs } from "node:util";
import { type Level, makeSplits, type ShapesOptions, type Split } from "./shapes.ts";
import { blindBaseline } from "./shapes_score.ts";

const DEFAULTS = {
  out: "data/shapes",
  seed: 1337,
  level: 1,
  train: 20000,
  val: 300,
  test: 500,
  "extra-colours": 6,
  "extra-shapes": 4,
};

function toInteger(name: string, value: unknown): number {
  const n = Number(value);
  if (value === "" || !Number.isSafeInteger(n)) {
    throw new Error(`make_shapes: --${name} must be a whole number, got ${JSON.stringify(value)}`);
  }
  return n;
}

export function parseOptions(args: string[]): ShapesOptions & { out: string } {
  const names = ["out", "seed", "level", "train", "val", "test", "extra-colours", "extra-shapes"] as const;
  let values: Partial<Record<typeof names[number], string>>;
  try {
    const options = Object.fromEntries(names.map((n) => [n, { type: "string" as const }]));
    values = parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new Error(
      `make_shapes: ${(err as Error).message} (known: ${names.map((n) => "--" + n).join(" ")})`,
    );
  }
  return {
    out: values.out ?? DEFAULTS.out,
    seed: toInteger("seed", values.seed ?? DEFAULTS.seed),
    level: toInteger("level", values.level ?? DEFAULTS.level) as Level,
    train: toInteger("train", values.train ?? DEFAULTS.train),
    val: toInteger("val", values.val ?? DEFAULTS.val),
    test: toInteger("test", values.test ?? DEFAULTS.test),
    extraColours: toInteger("extra-colours", values["extra-colours"] ?? DEFAULTS["extra-colours"]),
    extraShapes: toInteger("extra-shapes", values["extra-shapes"] ?? DEFAULTS["extra-shapes"]),
  };
}

/** Captions of a CSV text we wrote ourselves (the caption is the last field of each line). */
function captionsOf(csv: string): string[] {
  return csv.trimEnd().split("\n").slice(1).map((line) => {
    const field = line.slice(line.indexOf(",") + 1);
    return field.startsWith('"') ? field.slice(1, -1).replaceAll('""', '"') : field;
  });
}

/** The blind baseline of one split, or null when a split is empty. */
function baseline(train: string[], captions: string[]) {
  return train.length > 0 && captions.length > 0 ? blindBaseline(train, captions) : null;
}

async function main(): Promise<void> {
  const options = parseOptions(Deno.args);
  const splits = makeSplits(options);
  await Deno.mkdir(options.out, { recursive: true });
  const names: Split[] = ["train", "val", "test"];
  const tmp = (name: Split) => join(options.out, `${name}.csv.tmp`);
  try {
    for (const name of names) await Deno.writeTextFile(tmp(name), splits[name]);
  } catch (err) {
    for (const name of names) await Deno.remove(tmp(name)).catch(() => {});
    throw err;
  }
  for (const name of names) await Deno.rename(tmp(name), join(options.out, `${name}.csv`));
  const train = captionsOf(splits.train);
  const report = {
    options,
    bytes: Object.fromEntries(names.map((n) => [n, new TextEncoder().encode(splits[n]).length])),
    distinct_captions: Object.fromEntries(names.map((n) => [n, new Set(captionsOf(splits[n])).size])),
    blind_val: baseline(train, captionsOf(splits.val)),
    blind_test: baseline(train, captionsOf(splits.test)),
  };
  console.log(JSON.stringify(report, null, 2));
}

if (import.meta.main) await main();
