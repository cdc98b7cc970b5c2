// Tests of the shapes data set: reproducibility, the caption grammar, the geometry behind each
// caption, the held-out split, the PNGs, and the bundled CSVs in data/shapes/ (level 1)
// and data/shapes2/ (level 2).

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import pl from "nodejs-polars";
import sharp from "sharp";
import {
  ALL_COLOURS,
  ALL_SHAPES,
  captionOf,
  COLOUR_HEX,
  COLOURS,
  createRng,
  CSV_HEADER,
  csvField,
  drawThing,
  EXTRA_COLOURS,
  EXTRA_SHAPES,
  isHeldOut,
  type Level,
  makeRows,
  makeSplits,
  paletteOf,
  parseCaption,
  type PlacedThing,
  renderScene,
  rowsToCsv,
  sampleScene,
  type Scene,
  SHAPES,
  type Split,
  svgToPng,
} from "../../lib/data/shapes.ts";
import { parseOptions } from "../../lib/data/make_shapes.ts";
import { Tokenizer } from "../../lib/tokenizer.ts";

/** A bundled data set (data/shapes: level 1, data/shapes2: level 2) and the command in its README. */
interface Bundle {
  name: string;
  dir: string;
  command: string;
  options: ReturnType<typeof parseOptions>;
  extras: { colours: number; shapes: number };
}

async function bundle(name: string): Promise<Bundle> {
  const dir = new URL(`../../data/${name}/`, import.meta.url).pathname;
  const command = (await Deno.readTextFile(join(dir, "README.md")))
    .match(/^deno run -A lib\/data\/make_shapes\.ts (.*)$/m)![1];
  const options = parseOptions(command.split(" "));
  return {
    name,
    dir,
    command,
    options,
    extras: { colours: options.extraColours!, shapes: options.extraShapes! },
  };
}

const BUNDLES = [await bundle("shapes"), await bundle("shapes2")];
const LEVELS: Level[] = [1, 2, 3];

function readCsv(b: Bundle, split: Split): pl.DataFrame {
  return pl.readCSV(join(b.dir, `${split}.csv`));
}

function pairKey(colour: string, shape: string): string {
  return `${colour} ${shape}`;
}

async function decodePng(png: Uint8Array) {
  const { data, info } = await sharp(Buffer.from(png)).raw().toBuffer({ resolveWithObject: true });
  const pixel = (x: number, y: number) =>
    Array.from(data.subarray((y * info.width + x) * info.channels, (y * info.width + x) * info.channels + 3));
  return { info, pixel };
}

function hexToRgb(hex: string): number[] {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

// ---------------------------------------------------------------------------------------------

Deno.test("same seed gives the same CSV bytes; another seed gives other bytes", () => {
  for (const level of LEVELS) {
    const options = { seed: 7, level, train: 6, val: 3, test: 3 };
    const a = makeSplits(options);
    const b = makeSplits(options);
    const c = makeSplits({ ...options, seed: 8 });
    for (const split of ["train", "val", "test"] as const) {
      assert.equal(a[split], b[split], `level ${level} ${split}: same seed`);
      assert.notEqual(a[split], c[split], `level ${level} ${split}: other seed`);
    }
  }
});

Deno.test("the first rows of a split do not depend on how many rows are asked for", () => {
  const few = makeRows(3, 2, "test", 4);
  const more = makeRows(3, 2, "test", 9);
  assert.deepEqual(more.slice(0, 4), few);
});

Deno.test("the bundled CSVs start with the rows their documented command makes", async () => {
  const flags = ["out", "seed", "level", "train", "val", "test", "extra-colours", "extra-shapes"];
  for (const b of BUNDLES) {
    // README's command names every option (none left to the defaults)
    const named = b.command.match(/--[a-z-]+/g)!.sort();
    assert.deepEqual(named, flags.map((f) => `--${f}`).sort(), b.command);
    for (const split of ["train", "val", "test"] as const) {
      const text = await Deno.readTextFile(join(b.dir, `${split}.csv`));
      const rows = makeRows(b.options.seed, b.options.level, split, 25, b.extras);
      const expected = rowsToCsv(rows);
      assert.equal(text.slice(0, expected.length), expected, `${b.name} ${split}`);
      // the rows compared include training scenes drawn from the extra colours and shapes
      const extra = rows.some((r) =>
        [...EXTRA_COLOURS, ...EXTRA_SHAPES].some((w) => r.caption.includes(` ${w} `))
      );
      assert.equal(extra, split === "train", `${b.name} ${split}`);
    }
  }
  // the defaults (`deno task shapes`) are data/shapes's command; data/shapes2's differs only in level and out
  const [shapes, shapes2] = BUNDLES;
  assert.deepEqual(parseOptions([]), shapes.options, "`deno task shapes` runs data/shapes's command");
  assert.deepEqual(shapes2.options, { ...shapes.options, level: 2, out: "data/shapes2" }, shapes2.command);
});

Deno.test("every caption parses back to its scene, in the vocabulary, for each level", () => {
  const original = Tokenizer.original(); // what `train` uses when every caption fits it
  const wide = paletteOf("train", { colours: EXTRA_COLOURS.length, shapes: EXTRA_SHAPES.length });
  for (const word of [...ALL_COLOURS, ...ALL_SHAPES]) assert.match(word, /^[a-z]+$/);
  for (const level of LEVELS) {
    for (const [split, palette] of [["train", undefined], ["test", undefined], ["train", wide]] as const) {
      const rng = createRng(11, `parse-${level}-${split}-${palette ? "wide" : "base"}`);
      for (let i = 0; i < 300; i++) {
        const scene = sampleScene(rng, level, split, palette);
        const caption = captionOf(scene.attrs);
        assert.match(caption, /^[a-z ,]+\.$/);
        assert.doesNotThrow(() => original.encode(caption), caption);
        assert.deepEqual(parseCaption(caption), scene.attrs, caption);
        if (level === 1) assert.ok(caption.length < 60, caption);
      }
    }
  }
});

Deno.test("parseCaption rejects text outside the grammar", () => {
  assert.deepEqual(parseCaption("  a small red circle at the left. "), {
    objects: [{ size: "small", colour: "red", shape: "circle" }],
    position: "left",
  });
  for (
    const text of [
      "",
      "a small red circle at the left",
      "a tiny red circle at the left.",
      "a small mauve circle at the left.",
      "A small red circle at the left.",
      "a small red circle in the left.",
      "a small red circle above.",
      "a small red circle above a blue square.",
      "a small red circle, a large blue square.",
      "a small red circle at the left. a large blue square at the top.",
    ]
  ) assert.equal(parseCaption(text), null, JSON.stringify(text));
});

// ---------------------------------------------------------------------------------------------
// The drawing says what the caption says

function box(t: PlacedThing) {
  return { left: t.x - t.r, right: t.x + t.r, top: t.y - t.r, bottom: t.y + t.r };
}

function apart(a: PlacedThing, b: PlacedThing): boolean {
  const p = box(a), q = box(b);
  return p.right < q.left || q.right < p.left || p.bottom < q.top || q.bottom < p.top;
}

function checkGeometry(scene: Scene): void {
  const { attrs, placed } = scene;
  const what = captionOf(attrs);
  assert.deepEqual(placed.map(({ size, colour, shape }) => ({ size, colour, shape })), attrs.objects, what);
  for (const t of placed) {
    const b = box(t);
    assert.ok(b.left >= 0 && b.top >= 0 && b.right <= 96 && b.bottom <= 96, `inside the canvas: ${what}`);
    assert.ok(t.size === "small" ? t.r <= 9 : t.r >= 13, `size: ${what}`);
  }
  for (let i = 0; i < placed.length; i++) {
    for (let j = i + 1; j < placed.length; j++) assert.ok(apart(placed[i], placed[j]), `overlap: ${what}`);
  }
  assert.equal(new Set(attrs.objects.map((o) => o.colour)).size, attrs.objects.length, `colours: ${what}`);
  if (placed.length === 1) {
    const [{ x, y }] = placed;
    const mid = (v: number) => v >= 40 && v <= 56;
    const ok = {
      left: x < 30 && mid(y),
      right: x > 66 && mid(y),
      top: y < 30 && mid(x),
      bottom: y > 66 && mid(x),
      centre: mid(x) && mid(y),
    }[attrs.position!];
    assert.ok(ok, `position: ${what} at (${x}, ${y})`);
  } else if (placed.length === 2) {
    const [a, b] = placed.map(box);
    const [p, q] = placed;
    const ok = {
      "above": a.bottom < b.top && Math.abs(p.x - q.x) <= 6,
      "below": b.bottom < a.top && Math.abs(p.x - q.x) <= 6,
      "left of": a.right < b.left && Math.abs(p.y - q.y) <= 6,
      "right of": b.right < a.left && Math.abs(p.y - q.y) <= 6,
    }[attrs.relation!];
    assert.ok(ok, `relation: ${what}`);
    // named in a fixed order: large first, then by colour
    const first = p.size === "large" && q.size === "small" ||
      p.size === q.size && ALL_COLOURS.indexOf(p.colour) < ALL_COLOURS.indexOf(q.colour);
    assert.ok(first, `order of mention: ${what}`);
  } else {
    const [a, b, c] = placed;
    assert.ok(a.x < b.x && b.x < c.x, `left to right: ${what}`);
    assert.ok(Math.max(a.y, b.y, c.y) - Math.min(a.y, b.y, c.y) <= 6, `in a row: ${what}`);
  }
}

Deno.test("objects sit where their caption says, apart from each other", () => {
  const wide = paletteOf("train", { colours: EXTRA_COLOURS.length, shapes: EXTRA_SHAPES.length });
  for (const level of LEVELS) {
    const rng = createRng(12, `geometry-${level}`);
    for (let i = 0; i < 300; i++) checkGeometry(sampleScene(rng, level, i % 2 ? "train" : "test"));
    for (let i = 0; i < 100; i++) checkGeometry(sampleScene(rng, level, "train", wide));
  }
});

Deno.test("every shape, extras included, is drawn inside its box (x ± r, y ± r)", async () => {
  const shapes = [...SHAPES, ...EXTRA_SHAPES];
  for (const shape of shapes) {
    for (const r of [7, 15]) {
      const thing: PlacedThing = {
        size: r < 10 ? "small" : "large",
        colour: "white",
        shape,
        x: 48,
        y: 48,
        r,
      };
      const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96">` +
        `<rect width="96" height="96" fill="rgb(0,0,0)"/>${drawThing(thing)}</svg>`;
      const { pixel } = await decodePng(svgToPng(svg));
      let inside = 0;
      for (let y = 0; y < 96; y++) {
        for (let x = 0; x < 96; x++) {
          const lit = pixel(x, y).some((v) => v > 0);
          // pixel (x, y) covers [x, x + 1) × [y, y + 1): it may be touched only if it meets the box
          const meets = x + 1 > 48 - r && x < 48 + r && y + 1 > 48 - r && y < 48 + r;
          assert.ok(!lit || meets, `${shape} r ${r}: pixel (${x}, ${y}) outside the box is drawn`);
          if (lit) inside++;
        }
      }
      assert.ok(inside > r * r * 0.5, `${shape} r ${r}: only ${inside} pixels drawn`);
    }
  }
});

Deno.test("extra colours and shapes appear in training scenes only; val and test do not depend on them", () => {
  const extras = { colours: 6, shapes: 4 };
  for (const level of LEVELS) {
    for (const split of ["val", "test"] as const) {
      assert.deepEqual(
        makeRows(5, level, split, 6, extras),
        makeRows(5, level, split, 6),
        `${level} ${split}`,
      );
    }
    const seen = new Set<string>();
    const rng = createRng(14, `extras-${level}`);
    for (let i = 0; i < 400; i++) {
      const { attrs } = sampleScene(rng, level, "train", paletteOf("train", extras));
      assert.ok(!attrs.objects.some(isHeldOut), captionOf(attrs));
      assert.deepEqual(parseCaption(captionOf(attrs)), attrs, captionOf(attrs));
      for (const o of attrs.objects) seen.add(o.colour).add(o.shape);
    }
    for (const word of [...EXTRA_COLOURS, ...EXTRA_SHAPES]) {
      assert.ok(seen.has(word), `level ${level}: ${word}`);
    }
  }
  assert.deepEqual(paletteOf("train", { colours: 2, shapes: 1 }), {
    colours: [...COLOURS, "pink", "white"],
    shapes: [...SHAPES, "heart"],
  });
  assert.deepEqual(paletteOf("test", extras), paletteOf("test"));
  assert.throws(() => paletteOf("train", { colours: 7, shapes: 0 }), /extra colours must be 0\.\.6/);
  assert.throws(
    () => makeSplits({ seed: 1, level: 1, train: 1, val: 1, test: 1, extraShapes: -1 }),
    /extra shapes 0\.\.4/,
  );
});

Deno.test("held-out colour-shape pairs appear only in test scenes, and every test scene has one", () => {
  for (const level of LEVELS) {
    const rng = createRng(13, `held-out-${level}`);
    for (let i = 0; i < 200; i++) {
      for (const split of ["train", "val"] as const) {
        const { attrs } = sampleScene(rng, level, split);
        assert.ok(!attrs.objects.some(isHeldOut), `${split}: ${captionOf(attrs)}`);
      }
      const { attrs } = sampleScene(rng, level, "test");
      assert.ok(attrs.objects.some(isHeldOut), `test: ${captionOf(attrs)}`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Images

Deno.test("a scene renders to a 96x96 PNG with its colours where it drew them", async () => {
  const scene: Scene = {
    attrs: { objects: [{ size: "large", colour: "blue", shape: "square" }], position: "left" },
    placed: [{ size: "large", colour: "blue", shape: "square", x: 22, y: 48, r: 14 }],
    background: "rgb(44,44,44)",
  };
  const { info, pixel } = await decodePng(renderScene(scene));
  assert.equal(info.width, 96);
  assert.equal(info.height, 96);
  assert.deepEqual(pixel(22, 48), hexToRgb(COLOUR_HEX.blue));
  assert.deepEqual(pixel(80, 48), [44, 44, 44]);
  assert.deepEqual(pixel(22, 10), [44, 44, 44]);
});

Deno.test("images of the bundled CSVs decode to 96x96", async () => {
  for (const b of BUNDLES) {
    for (const split of ["train", "test"] as const) {
      const images = readCsv(b, split).getColumn("b64string_images").toArray().slice(0, 3) as string[];
      for (const b64 of images) {
        const { info } = await decodePng(Buffer.from(b64, "base64"));
        assert.deepEqual([info.width, info.height], [96, 96], `${b.name} ${split}`);
      }
    }
  }
});

// ---------------------------------------------------------------------------------------------
// CSV text and the bundled files

Deno.test("CSV fields are quoted only when needed and read back by a CSV reader", async () => {
  assert.equal(csvField("a b."), "a b.");
  assert.equal(csvField("a, b"), '"a, b"');
  assert.equal(csvField('say "hi"'), '"say ""hi"""');
  const rows = makeRows(5, 3, "train", 12); // level 3: some captions hold commas
  assert.ok(rows.some((r) => r.caption.includes(",")));
  const text = rowsToCsv(rows);
  assert.ok(text.startsWith(CSV_HEADER + "\n"));
  const file = await Deno.makeTempFile({ suffix: ".csv" });
  try {
    await Deno.writeTextFile(file, text);
    const df = pl.readCSV(file);
    assert.deepEqual(df.columns, ["b64string_images", "caption"]);
    assert.deepEqual(df.getColumn("caption").toArray(), rows.map((r) => r.caption));
    assert.deepEqual(df.getColumn("b64string_images").toArray(), rows.map((r) => r.image));
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("bundled CSVs: schema, sizes, captions in the grammar of their level", async () => {
  for (const b of BUNDLES) {
    let bytes = 0;
    for (const split of ["train", "val", "test"] as const) {
      bytes += (await Deno.stat(join(b.dir, `${split}.csv`))).size;
      const df = readCsv(b, split);
      assert.deepEqual(df.columns, ["b64string_images", "caption"]);
      assert.equal(df.height, b.options[split], `${b.name} ${split}`);
      for (const caption of df.getColumn("caption").toArray() as string[]) {
        const attrs = parseCaption(caption);
        assert.ok(attrs && attrs.objects.length === b.options.level, `${b.name} ${split}: ${caption}`);
        if (b.options.level === 2) assert.ok(attrs.relation, `${b.name} ${split}: ${caption}`);
      }
    }
    assert.ok(bytes < 30e6, `${b.name}: ${bytes} bytes`); // a clone stays small: 20000 rows of level 2 are 27 MB
  }
});

Deno.test("bundled CSVs: no test pair occurs in train; val and test hold only the base colours and shapes", () => {
  for (const b of BUNDLES) {
    const pairsOf = (split: Split) =>
      (readCsv(b, split).getColumn("caption").toArray() as string[]).map((c) =>
        parseCaption(c)!.objects.map((o) => pairKey(o.colour, o.shape))
      );
    const trainPairs = new Set(pairsOf("train").flat());
    const basePairs = [...trainPairs].filter((p) =>
      COLOURS.some((c) => SHAPES.some((s) => p === pairKey(c, s)))
    );
    assert.equal(basePairs.length, 30, b.name); // 6 colours x 6 shapes, less the 6 held out
    // with the training-only extras: 12 colours x 10 shapes, less the 6 held out
    assert.equal(trainPairs.size, (6 + b.extras.colours) * (6 + b.extras.shapes) - 6, b.name);
    for (const pairs of pairsOf("test")) {
      assert.ok(pairs.some((p) => !trainPairs.has(p)), `${b.name}: test holds only seen pairs: ${pairs}`);
    }
    for (const pairs of pairsOf("val")) {
      for (const p of pairs) {
        assert.ok(basePairs.includes(p), `${b.name}: val pair not a seen base pair: ${p}`);
      }
    }
    for (const pairs of pairsOf("test")) {
      for (const p of pairs) assert.ok(COLOURS.some((c) => SHAPES.some((s) => p === pairKey(c, s))), p);
    }
  }
});

Deno.test("bundled CSVs: every test scene holds a held-out pair, no train or val scene holds one", () => {
  for (const b of BUNDLES) {
    for (const split of ["train", "val", "test"] as const) {
      const captions = readCsv(b, split).getColumn("caption").toArray() as string[];
      for (const caption of captions) {
        const heldOut = parseCaption(caption)!.objects.filter(isHeldOut).length;
        assert.ok(split === "test" ? heldOut >= 1 : heldOut === 0, `${b.name} ${split}: ${caption}`);
      }
    }
  }
  // in level 2, a test scene's other object may be a seen pair: both kinds of test scene are there
  const test2 = readCsv(BUNDLES[1], "test").getColumn("caption").toArray() as string[];
  const both = test2.filter((c) => parseCaption(c)!.objects.every(isHeldOut)).length;
  assert.ok(
    both > 0 && both < test2.length,
    `${both} of ${test2.length} test scenes hold two held-out pairs`,
  );
});

// ---------------------------------------------------------------------------------------------
// The command-line script

Deno.test("make_shapes: options are checked with clear errors", () => {
  assert.deepEqual(parseOptions(["--seed", "3", "--level", "2", "--train", "10"]), {
    out: "data/shapes",
    seed: 3,
    level: 2,
    train: 10,
    val: 300,
    test: 500,
    extraColours: 6,
    extraShapes: 4,
  });
  assert.equal(parseOptions(["--extra-colours", "0", "--extra-shapes", "2"]).extraShapes, 2);
  assert.throws(() => parseOptions(["--seed", "abc"]), /--seed must be a whole number/);
  assert.throws(() => parseOptions(["--bogus", "1"]), /make_shapes: .*bogus/);
  assert.throws(
    () => makeSplits({ seed: 1, level: 4 as Level, train: 1, val: 1, test: 1 }),
    /level must be 1, 2 or 3/,
  );
  assert.throws(() => makeSplits({ seed: 1, level: 1, train: -1, val: 1, test: 1 }), /--train must be/);
});

Deno.test("make_shapes: the script writes the three CSVs (an empty one too) and nothing else", async () => {
  const out = await Deno.makeTempDir();
  try {
    const script = new URL("../../lib/data/make_shapes.ts", import.meta.url).pathname;
    const options = [
      "--out",
      out,
      "--seed",
      "9",
      "--level",
      "3",
      "--train",
      "4",
      "--val",
      "0",
      "--test",
      "2",
    ];
    const extras = ["--extra-colours", "2", "--extra-shapes", "1"];
    const result = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...options, ...extras],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
    const expected = makeSplits({
      seed: 9,
      level: 3,
      train: 4,
      val: 0,
      test: 2,
      extraColours: 2,
      extraShapes: 1,
    });
    const names = [];
    for await (const entry of Deno.readDir(out)) names.push(entry.name);
    assert.deepEqual(names.sort(), ["test.csv", "train.csv", "val.csv"]);
    for (const split of ["train", "val", "test"] as const) {
      assert.equal(await Deno.readTextFile(join(out, `${split}.csv`)), expected[split]);
    }
    // An empty split has no blind baseline (null); the others still get theirs.
    const report = JSON.parse(new TextDecoder().decode(result.stdout));
    assert.equal(report.blind_val, null);
    assert.equal(report.blind_test.summary.n, 2, JSON.stringify(report.blind_test));
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
