// Scoring captions of the shapes grammar (lib/data/shapes.ts): each attribute the truth states (colour,
// shape and size of every object, the position, the relation) on its own, the most frequent confusions,
// and what a captioner that never looks at the image scores.

import { charAccuracy, checkInputs, exactMatch } from "../metrics.ts";
import { parseCaption, type SceneAttrs } from "./shapes.ts";

export const ATTRIBUTES = ["colour", "shape", "size", "position", "relation"] as const;
export type Attribute = typeof ATTRIBUTES[number];

/** What a prediction has where it does not parse or lacks the truth's object. */
export const MISSING = "(none)";

/** Plain code-point order (no locale), so results are the same everywhere. */
function byText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** One attribute the truth states, with what the prediction says in the same place. */
interface SlotComparison {
  attribute: Attribute;
  truth: string;
  predicted: string; // MISSING if the prediction does not state it
}

/** Objects are compared in order of mention: the truth's i-th object against the prediction's. */
function compareSlots(pred: SceneAttrs | null, truth: SceneAttrs): SlotComparison[] {
  const out: SlotComparison[] = [];
  truth.objects.forEach((t, i) => {
    const p = pred?.objects[i];
    for (const attribute of ["colour", "shape", "size"] as const) {
      out.push({ attribute, truth: t[attribute], predicted: p?.[attribute] ?? MISSING });
    }
  });
  if (truth.position) {
    out.push({ attribute: "position", truth: truth.position, predicted: pred?.position ?? MISSING });
  }
  if (truth.relation) {
    out.push({ attribute: "relation", truth: truth.relation, predicted: pred?.relation ?? MISSING });
  }
  return out;
}

/** Slot comparisons over all captions whose truth parses; `n` counts those captions. */
function compareAll(preds: string[], truths: string[]) {
  const slots: SlotComparison[] = [];
  let n = 0;
  let parsed = 0;
  truths.forEach((text, i) => {
    const truth = parseCaption(text);
    if (!truth) return;
    const pred = parseCaption(preds[i]);
    n++;
    if (pred) parsed++;
    slots.push(...compareSlots(pred, truth));
  });
  return { slots, n, parsed };
}

export interface AttributeAccuracy {
  n: number; // captions whose truth parses (the others are skipped)
  parsed: number | null; // fraction of their predictions that parse
  colour: number | null; // null: no truth states this attribute
  shape: number | null;
  size: number | null;
  position: number | null;
  relation: number | null;
}

/**
 * Accuracy of each attribute, over captions whose truth is in the grammar. A prediction that does
 * not parse (or names fewer objects) counts wrong for every attribute it does not state.
 */
export function attributeAccuracy(preds: string[], truths: string[]): AttributeAccuracy {
  checkInputs(preds, truths, "attributeAccuracy");
  const { slots, n, parsed } = compareAll(preds, truths);
  const accuracy = (attribute: Attribute): number | null => {
    const mine = slots.filter((s) => s.attribute === attribute);
    return mine.length === 0 ? null : mine.filter((s) => s.predicted === s.truth).length / mine.length;
  };
  return {
    n,
    parsed: n === 0 ? null : parsed / n,
    colour: accuracy("colour"),
    shape: accuracy("shape"),
    size: accuracy("size"),
    position: accuracy("position"),
    relation: accuracy("relation"),
  };
}

export interface Confusion {
  truth: string;
  predicted: string;
  count: number;
}

/**
 * The `topN` most frequent wrong (truth -> predicted) pairs of each attribute, most frequent
 * first (ties: alphabetical by truth, then predicted). Only attributes some truth states appear.
 */
export function confusions(
  preds: string[],
  truths: string[],
  topN = 5,
): Partial<Record<Attribute, Confusion[]>> {
  checkInputs(preds, truths, "confusions");
  const { slots } = compareAll(preds, truths);
  const out: Partial<Record<Attribute, Confusion[]>> = {};
  for (const attribute of ATTRIBUTES) {
    const mine = slots.filter((s) => s.attribute === attribute);
    if (mine.length === 0) continue;
    const counts = new Map<string, Confusion>();
    for (const s of mine.filter((s) => s.predicted !== s.truth)) {
      const key = `${s.truth}\u0000${s.predicted}`;
      const entry = counts.get(key) ?? { truth: s.truth, predicted: s.predicted, count: 0 };
      entry.count++;
      counts.set(key, entry);
    }
    out[attribute] = [...counts.values()].sort((a, b) =>
      b.count - a.count || byText(a.truth, b.truth) || byText(a.predicted, b.predicted)
    ).slice(0, topN);
  }
  return out;
}

export interface Summary {
  exact_match: number;
  char_accuracy: number;
  n: number;
  attributes?: AttributeAccuracy; // only when some truth is in the grammar
  confusions?: Partial<Record<Attribute, Confusion[]>>;
}

export function summarize(preds: string[], truths: string[], topN = 5): Summary {
  const summary: Summary = {
    exact_match: exactMatch(preds, truths),
    char_accuracy: charAccuracy(preds, truths),
    n: truths.length,
  };
  const attributes = attributeAccuracy(preds, truths);
  if (attributes.n > 0) {
    summary.attributes = attributes;
    summary.confusions = confusions(preds, truths, topN);
  }
  return summary;
}

/** The scores of a captioner that never looks at the image. */
export interface BlindBaseline {
  constant_caption: string; // the most frequent training caption (ties: alphabetical)
  train_frequency: number; // its share of the training captions
  summary: Summary; // scores on the evaluated captions of always answering constant_caption
  best_constant_exact_match: number; // share of the most frequent evaluated caption (an oracle's constant)
}

function mostFrequent(captions: string[]): [string, number] {
  const counts = new Map<string, number>();
  for (const c of captions) counts.set(c, (counts.get(c) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || byText(a[0], b[0]))[0];
}

export function blindBaseline(trainCaptions: string[], evalCaptions: string[]): BlindBaseline {
  if (trainCaptions.length === 0) throw new Error("blindBaseline: no training captions");
  if (evalCaptions.length === 0) throw new Error("blindBaseline: no captions to score");
  const [caption, count] = mostFrequent(trainCaptions);
  return {
    constant_caption: caption,
    train_frequency: count / trainCaptions.length,
    summary: summarize(evalCaptions.map(() => caption), evalCaptions),
    best_constant_exact_match: mostFrequent(evalCaptions)[1] / evalCaptions.length,
  };
}
