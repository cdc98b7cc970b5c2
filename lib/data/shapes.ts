// A synthetic captioning data set that can only be solved by looking at the image.
//
// Scenes hold 1–3 coloured shapes on a plain dark background. Each scene has one caption from a
// small grammar ("a small red circle at the left."), drawn as SVG and rasterised with resvg to a
// 96×96 PNG. Everything is driven by a seeded generator, so the same seed gives the same bytes.
// A fixed set of colour–shape pairs is held out of train/val and used only in test, so a test
// score measures whether the model composes what it sees rather than recalls captions. Training scenes
// may also draw from extra colours and shapes (`extraColours`, `extraShapes`) that val and test never
// show: more partners per shape and per colour in training, the same held-out test.
//
// The grammar (all lowercase, only letters, space, ',' and '.'):
//   thing  := "a " size " " colour " " shape
//   level 1: thing " at the left|right|top|bottom" "."   or   thing " in the centre."
//   level 2: thing " above|below|left of|right of " thing "."
//            (the large object is named first; between equal sizes, the colour earlier in COLOURS)
//   level 3: one of the above, or three objects in a row, named left to right:
//            thing ", " thing " and " thing "."

import { Resvg } from "@resvg/resvg-js";
import { Buffer } from "node:buffer";
import { mulberry32 } from "../random.ts";

// ---------------------------------------------------------------------------------------------
// Vocabulary of the scenes

export const SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross"] as const;
export const COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"] as const;
/** Colours and shapes only training scenes may hold (the first `extraColours` / `extraShapes` of each). */
export const EXTRA_COLOURS = ["pink", "white", "cyan", "brown", "lime", "teal"] as const;
export const EXTRA_SHAPES = ["heart", "ring", "arrow", "moon"] as const;
/** Every colour a caption may name, in mention order (the base colours first). */
export const ALL_COLOURS = [...COLOURS, ...EXTRA_COLOURS] as const;
export const ALL_SHAPES = [...SHAPES, ...EXTRA_SHAPES] as const;
export const SIZES = ["small", "large"] as const;
export const POSITIONS = ["left", "right", "top", "bottom", "centre"] as const;
export const RELATIONS = ["above", "below", "left of", "right of"] as const;

export type Shape = typeof ALL_SHAPES[number];
export type Colour = typeof ALL_COLOURS[number];
export type Size = typeof SIZES[number];
export type Position = typeof POSITIONS[number];
export type Relation = typeof RELATIONS[number];
export type Level = 1 | 2 | 3;
export type Split = "train" | "val" | "test";

/** One object as a caption names it. */
export interface Thing {
  size: Size;
  colour: Colour;
  shape: Shape;
}

/** What a caption says: 1 object + position, 2 objects + relation, or 3 objects left to right. */
export interface SceneAttrs {
  objects: Thing[];
  position?: Position; // only with one object
  relation?: Relation; // only with two objects: objects[0] <relation> objects[1]
}

/** A thing placed on the canvas: centre (x, y) and half-extent r, in pixels. */
export interface PlacedThing extends Thing {
  x: number;
  y: number;
  r: number;
}

/** A full scene: what the caption says plus how it is drawn. */
export interface Scene {
  attrs: SceneAttrs;
  placed: PlacedThing[];
  background: string; // CSS colour of the canvas
}

export const IMAGE_SIZE = 96;

/** Fill colours, chosen to stay distinct from each other and from the dark background. */
export const COLOUR_HEX: Record<Colour, string> = {
  red: "#e53935",
  orange: "#fb8c00",
  yellow: "#fdd835",
  green: "#43a047",
  blue: "#1e88e5",
  purple: "#a03cc8",
  pink: "#f48fb1",
  white: "#eeeeee",
  cyan: "#26c6da",
  brown: "#8d6e63",
  lime: "#c0ca33",
  teal: "#00897b",
};

/** What the objects of a split are drawn from: the base lists, plus extras in training. */
export interface Palette {
  colours: readonly Colour[];
  shapes: readonly Shape[];
}

export const BASE_PALETTE: Palette = { colours: COLOURS, shapes: SHAPES };

/** Extra colours and shapes for training scenes (0 and 0: the base palette). */
export interface Extras {
  colours: number;
  shapes: number;
}

/** The palette of a split: val and test always use the base lists; train adds the first `extras`. */
export function paletteOf(split: Split, extras: Extras = { colours: 0, shapes: 0 }): Palette {
  if (
    !Number.isInteger(extras.colours) || extras.colours < 0 || extras.colours > EXTRA_COLOURS.length ||
    !Number.isInteger(extras.shapes) || extras.shapes < 0 || extras.shapes > EXTRA_SHAPES.length
  ) {
    throw new Error(
      `shapes: extra colours must be 0..${EXTRA_COLOURS.length} and extra shapes 0..${EXTRA_SHAPES.length}, ` +
        `got ${extras.colours} and ${extras.shapes}`,
    );
  }
  if (split !== "train") return BASE_PALETTE;
  return {
    colours: [...COLOURS, ...EXTRA_COLOURS.slice(0, extras.colours)],
    shapes: [...SHAPES, ...EXTRA_SHAPES.slice(0, extras.shapes)],
  };
}

/**
 * Colour–shape pairs never shown in train or val; every test scene holds at least one.
 * Each colour and each shape is held out exactly once, so all of them are still seen in training.
 */
export const HELD_OUT_PAIRS: ReadonlyArray<readonly [Colour, Shape]> = [
  ["red", "star"],
  ["orange", "circle"],
  ["yellow", "cross"],
  ["green", "triangle"],
  ["blue", "diamond"],
  ["purple", "square"],
];

export function isHeldOut(thing: Pick<Thing, "colour" | "shape">): boolean {
  return HELD_OUT_PAIRS.some(([c, s]) => c === thing.colour && s === thing.shape);
}

// ---------------------------------------------------------------------------------------------
// Seeded random numbers (mulberry32 seeded by FNV-1a of a string): small, fast, reproducible.

export type Rng = () => number; // uniform in [0, 1)

function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** A generator for one named stream of one seed: `createRng(7, "train")`. */
export function createRng(seed: number, stream = ""): Rng {
  return mulberry32(fnv1a(`${seed}:${stream}`));
}

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[Math.floor(rng() * items.length)];
}

function uniform(rng: Rng, lo: number, hi: number): number {
  return lo + (hi - lo) * rng();
}

/** Coordinates are kept to one decimal so the SVG text (and so the PNG) is stable. */
function round1(v: number): number {
  return Math.round(v * 10) / 10;
}

// ---------------------------------------------------------------------------------------------
// Scene sampling

const SMALL_R = 8; // half-extent of a small object, ±1 px
const LARGE_R = 14; // half-extent of a large object, ±1 px (never above 15: rows stay apart)

/** Where a single object sits (its centre before a ±4 px jitter). */
const POSITION_CENTRE: Record<Position, [number, number]> = {
  left: [22, 48],
  right: [74, 48],
  top: [48, 22],
  bottom: [48, 74],
  centre: [48, 48],
};

function sampleThing(rng: Rng, palette: Palette): Thing {
  return { size: pick(rng, SIZES), colour: pick(rng, palette.colours), shape: pick(rng, palette.shapes) };
}

/** Things for one scene: distinct colours; train/val avoid held-out pairs, test needs one. */
function sampleThings(rng: Rng, count: number, split: Split, palette: Palette): Thing[] {
  for (;;) {
    const things = Array.from({ length: count }, () => sampleThing(rng, palette));
    const colours = new Set(things.map((t) => t.colour));
    if (colours.size !== count) continue;
    const heldOut = things.some(isHeldOut);
    if (split === "test" ? heldOut : !heldOut) return things;
  }
}

function radius(rng: Rng, size: Size): number {
  return round1((size === "small" ? SMALL_R : LARGE_R) + uniform(rng, -1, 1));
}

function place(rng: Rng, thing: Thing, x: number, y: number): PlacedThing {
  return { ...thing, x: round1(x), y: round1(y), r: radius(rng, thing.size) };
}

/** What a sampler returns: the caption's attributes plus the drawn objects. */
type Sampled = SceneAttrs & { placed: PlacedThing[] };

/** Order of mention in a pair: large before small, then by the colour's place in ALL_COLOURS. */
function mentionOrder(a: Thing, b: Thing): number {
  const bySize = SIZES.indexOf(b.size) - SIZES.indexOf(a.size);
  return bySize !== 0 ? bySize : ALL_COLOURS.indexOf(a.colour) - ALL_COLOURS.indexOf(b.colour);
}

function sampleSingle(rng: Rng, split: Split, palette: Palette): Sampled {
  const [thing] = sampleThings(rng, 1, split, palette);
  const position = pick(rng, POSITIONS);
  const [cx, cy] = POSITION_CENTRE[position];
  const placed = place(rng, thing, cx + uniform(rng, -4, 4), cy + uniform(rng, -4, 4));
  return { objects: [thing], position, placed: [placed] };
}

/**
 * Two objects, one clearly beside or above the other: centres 48 px apart along the relation's
 * axis, at most 6 px apart across it, so their boxes never overlap.
 */
function samplePair(rng: Rng, split: Split, palette: Palette): Sampled {
  const [a, b] = sampleThings(rng, 2, split, palette).sort(mentionOrder);
  const relation = pick(rng, RELATIONS);
  const line = 48 + uniform(rng, -16, 16); // the shared column (or row)
  const near = 24 + uniform(rng, -3, 3); // the centre nearer the top (or left)
  const far = 72 + uniform(rng, -3, 3);
  const firstNear = relation === "above" || relation === "left of";
  const [ta, tb] = firstNear ? [near, far] : [far, near];
  const vertical = relation === "above" || relation === "below";
  const across = () => line + uniform(rng, -3, 3);
  const placed = vertical
    ? [place(rng, a, across(), ta), place(rng, b, across(), tb)]
    : [place(rng, a, ta, across()), place(rng, b, tb, across())];
  return { objects: [a, b], relation, placed };
}

/** Three objects in a row at x = 16, 48, 80, named left to right. */
function sampleRow(rng: Rng, split: Split, palette: Palette): Sampled {
  const things = sampleThings(rng, 3, split, palette);
  const row = 48 + uniform(rng, -14, 14);
  const placed = things.map((t, i) => place(rng, t, 16 + 32 * i, row + uniform(rng, -3, 3)));
  return { objects: things, placed };
}

/**
 * Sample one scene of a difficulty level for a split (test scenes hold a held-out pair), its objects
 * drawn from `palette` (default: the split's base palette).
 */
export function sampleScene(rng: Rng, level: Level, split: Split, palette = paletteOf(split)): Scene {
  const count = level === 1 ? 1 : level === 2 ? 2 : 1 + Math.floor(rng() * 3);
  const sampled = count === 1
    ? sampleSingle(rng, split, palette)
    : count === 2
    ? samplePair(rng, split, palette)
    : sampleRow(rng, split, palette);
  const { placed, ...attrs } = sampled;
  const grey = 40 + Math.floor(rng() * 13); // a plain dark-grey canvas, 40..52
  return { attrs, placed, background: `rgb(${grey},${grey},${grey})` };
}

// ---------------------------------------------------------------------------------------------
// Drawing

function polygon(points: Array<[number, number]>, fill: string): string {
  const text = points.map(([x, y]) => `${round1(x)},${round1(y)}`).join(" ");
  return `<polygon points="${text}" fill="${fill}"/>`;
}

/** SVG markup of one object; every shape stays inside the box (x ± r, y ± r). */
export function drawThing(t: PlacedThing): string {
  const { x, y, r } = t;
  const fill = COLOUR_HEX[t.colour];
  switch (t.shape) {
    case "circle":
      return `<circle cx="${x}" cy="${y}" r="${r}" fill="${fill}"/>`;
    case "square": {
      const s = round1(0.85 * r);
      return `<rect x="${round1(x - s)}" y="${round1(y - s)}" width="${2 * s}" height="${
        2 * s
      }" fill="${fill}"/>`;
    }
    case "triangle":
      return polygon([[x, y - r], [x + r, y + r], [x - r, y + r]], fill);
    case "diamond":
      return polygon([[x, y - r], [x + 0.7 * r, y], [x, y + r], [x - 0.7 * r, y]], fill);
    case "star": {
      const points: Array<[number, number]> = [];
      for (let i = 0; i < 10; i++) {
        const radius = i % 2 === 0 ? r : 0.45 * r;
        const angle = -Math.PI / 2 + (i * Math.PI) / 5;
        points.push([x + radius * Math.cos(angle), y + radius * Math.sin(angle)]);
      }
      return polygon(points, fill);
    }
    case "cross": {
      const w = 0.33 * r; // half-width of an arm
      return polygon([
        [x - w, y - r],
        [x + w, y - r],
        [x + w, y - w],
        [x + r, y - w],
        [x + r, y + w],
        [x + w, y + w],
        [x + w, y + r],
        [x - w, y + r],
        [x - w, y + w],
        [x - r, y + w],
        [x - r, y - w],
        [x - w, y - w],
      ], fill);
    }
    case "heart": { // the classic parametric heart, scaled into the box
      const points: Array<[number, number]> = [];
      for (let i = 0; i < 24; i++) {
        const t = (i * 2 * Math.PI) / 24;
        const hx = 16 * Math.sin(t) ** 3;
        const hy = 13 * Math.cos(t) - 5 * Math.cos(2 * t) - 2 * Math.cos(3 * t) - Math.cos(4 * t);
        points.push([x + (r * hx) / 17, y - (r * (hy + 2.5)) / 15]);
      }
      return polygon(points, fill);
    }
    case "ring": { // a circle's outline, 0.4 r wide, inside the box
      const w = round1(0.4 * r);
      return `<circle cx="${x}" cy="${y}" r="${round1(r - w / 2)}" fill="none" stroke="${fill}" ` +
        `stroke-width="${w}"/>`;
    }
    case "arrow": // pointing up
      return polygon([
        [x, y - r],
        [x + r, y],
        [x + 0.4 * r, y],
        [x + 0.4 * r, y + r],
        [x - 0.4 * r, y + r],
        [x - 0.4 * r, y],
        [x - r, y],
      ], fill);
    case "moon": { // a crescent: the left half-disc less a shallower arc, horns to the right
      const [top, bottom] = [round1(y - r), round1(y + r)];
      return `<path d="M${x},${top} A${r},${r} 0 0 0 ${x},${bottom} A${round1(1.25 * r)},${
        round1(1.25 * r)
      } 0 0 1 ${x},${top} Z" fill="${fill}"/>`;
    }
  }
}

export function sceneToSvg(scene: Scene): string {
  const body = scene.placed.map(drawThing).join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${IMAGE_SIZE}" height="${IMAGE_SIZE}" ` +
    `viewBox="0 0 ${IMAGE_SIZE} ${IMAGE_SIZE}"><rect width="${IMAGE_SIZE}" height="${IMAGE_SIZE}" ` +
    `fill="${scene.background}"/>${body}</svg>`;
}

/** Rasterise SVG text to PNG bytes at its own size (96×96 for our scenes). */
export function svgToPng(svg: string): Uint8Array {
  const resvg = new Resvg(svg, { fitTo: { mode: "original" }, font: { loadSystemFonts: false } });
  return new Uint8Array(resvg.render().asPng());
}

export function renderScene(scene: Scene): Uint8Array {
  return svgToPng(sceneToSvg(scene));
}

// ---------------------------------------------------------------------------------------------
// Captions: writing and parsing

const POSITION_PHRASE: Record<Position, string> = {
  left: "at the left",
  right: "at the right",
  top: "at the top",
  bottom: "at the bottom",
  centre: "in the centre",
};

function thingText(t: Thing): string {
  return `a ${t.size} ${t.colour} ${t.shape}`;
}

/** The one caption the grammar gives a scene. */
export function captionOf(attrs: SceneAttrs): string {
  const [a, b, c] = attrs.objects;
  switch (attrs.objects.length) {
    case 1:
      return `${thingText(a)} ${POSITION_PHRASE[attrs.position!]}.`;
    case 2:
      return `${thingText(a)} ${attrs.relation} ${thingText(b)}.`;
    case 3:
      return `${thingText(a)}, ${thingText(b)} and ${thingText(c)}.`;
    default:
      throw new Error(`captionOf: a scene holds 1 to 3 objects, got ${attrs.objects.length}`);
  }
}

const THING_RE = `a (${SIZES.join("|")}) (${ALL_COLOURS.join("|")}) (${ALL_SHAPES.join("|")})`;
const SINGLE_RE = new RegExp(`^${THING_RE} (${Object.values(POSITION_PHRASE).join("|")})\\.$`);
const PAIR_RE = new RegExp(`^${THING_RE} (${RELATIONS.join("|")}) ${THING_RE}\\.$`);
const ROW_RE = new RegExp(`^${THING_RE}, ${THING_RE} and ${THING_RE}\\.$`);

function thingAt(m: RegExpMatchArray, i: number): Thing {
  return { size: m[i] as Size, colour: m[i + 1] as Colour, shape: m[i + 2] as Shape };
}

/** The attributes a caption states, or null if the text is outside the grammar. */
export function parseCaption(text: string): SceneAttrs | null {
  const s = text.trim();
  let m = s.match(SINGLE_RE);
  if (m) {
    const position = POSITIONS.find((p) => POSITION_PHRASE[p] === m![4])!;
    return { objects: [thingAt(m, 1)], position };
  }
  m = s.match(PAIR_RE);
  if (m) return { objects: [thingAt(m, 1), thingAt(m, 5)], relation: m[4] as Relation };
  m = s.match(ROW_RE);
  if (m) return { objects: [thingAt(m, 1), thingAt(m, 4), thingAt(m, 7)] };
  return null;
}

// ---------------------------------------------------------------------------------------------
// Splits and CSV text (the original's schema: b64string_images, caption)

export interface ShapesRow {
  image: string; // base64 PNG
  caption: string;
}

export interface ShapesOptions {
  seed: number;
  level: Level;
  train: number;
  val: number;
  test: number;
  /** Extra colours / shapes in training scenes only (default 0: the base palette everywhere). */
  extraColours?: number;
  extraShapes?: number;
}

/**
 * `n` rows of one split. Each split draws from its own stream of the seed, so the first k rows of a
 * split do not depend on how many rows it (or any other split) has. `extras` widen the training palette
 * only (paletteOf); val and test rows do not depend on them.
 */
export function makeRows(
  seed: number,
  level: Level,
  split: Split,
  n: number,
  extras: Extras = { colours: 0, shapes: 0 },
): ShapesRow[] {
  const rng = createRng(seed, `level${level}:${split}`);
  const palette = paletteOf(split, extras);
  const rows: ShapesRow[] = [];
  for (let i = 0; i < n; i++) {
    const scene = sampleScene(rng, level, split, palette);
    const png = renderScene(scene);
    rows.push({ image: Buffer.from(png).toString("base64"), caption: captionOf(scene.attrs) });
  }
  return rows;
}

/** RFC 4180 field: quoted (with doubled quotes) only when it holds a comma, quote or line break. */
export function csvField(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

export const CSV_HEADER = "b64string_images,caption";

export function rowsToCsv(rows: ShapesRow[]): string {
  const lines = rows.map((r) => `${csvField(r.image)},${csvField(r.caption)}`);
  return [CSV_HEADER, ...lines].join("\n") + "\n";
}

function checkOptions(o: ShapesOptions): void {
  if (!Number.isSafeInteger(o.seed)) throw new Error(`shapes: seed must be an integer, got ${o.seed}`);
  if (![1, 2, 3].includes(o.level)) throw new Error(`shapes: level must be 1, 2 or 3, got ${o.level}`);
  for (const split of ["train", "val", "test"] as const) {
    const n = o[split];
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new Error(`shapes: --${split} must be a whole number >= 0, got ${n}`);
    }
  }
  paletteOf("train", extrasOf(o)); // checks the extras
}

function extrasOf(o: ShapesOptions): Extras {
  return { colours: o.extraColours ?? 0, shapes: o.extraShapes ?? 0 };
}

/** CSV text of all three splits. */
export function makeSplits(o: ShapesOptions): Record<Split, string> {
  checkOptions(o);
  return {
    train: rowsToCsv(makeRows(o.seed, o.level, "train", o.train, extrasOf(o))),
    val: rowsToCsv(makeRows(o.seed, o.level, "val", o.val)),
    test: rowsToCsv(makeRows(o.seed, o.level, "test", o.test)),
  };
}
