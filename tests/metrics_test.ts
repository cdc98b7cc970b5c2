// Tests of the caption metrics (lib/metrics.ts) and the shapes grammar's scoring (lib/data/shapes_score.ts)
// on hand-made predictions with hand-computed answers.

import assert from "node:assert/strict";
import {
  attributeAccuracy,
  blindBaseline,
  confusions,
  MISSING,
  summarize,
} from "../lib/data/shapes_score.ts";
import { charAccuracy, exactMatch, firstSentence } from "../lib/metrics.ts";

function close(actual: number | null | undefined, expected: number): void {
  assert.ok(typeof actual === "number" && Math.abs(actual - expected) < 1e-12, `${actual} != ${expected}`);
}

// Four captions in the grammar and one outside it, with hand-made predictions:
const TRUTHS = [
  "a small red circle at the left.", //               pred: shape wrong
  "a large blue star in the centre.", //               pred: colour and position wrong
  "a large blue square above a small green triangle.", // pred: relation wrong
  "a small yellow cross at the bottom.", //            pred: does not parse
  "hello world.", //                                   outside the grammar: skipped by attributes
];
const PREDS = [
  "a small red square at the left.",
  "a large green star at the top.",
  "a large blue square below a small green triangle.",
  "a small yellow cross at the",
  "hello world.",
];

Deno.test("exactMatch counts identical strings", () => {
  assert.equal(exactMatch(["a", "b", "c", "d"], ["a", "x", "c", "y"]), 0.5);
  assert.equal(exactMatch(PREDS, TRUTHS), 1 / 5);
  assert.equal(exactMatch(["a."], ["a. "]), 0);
});

Deno.test("charAccuracy: matches at the same position over the longer length", () => {
  close(charAccuracy(["abc"], ["abd"]), 2 / 3);
  close(charAccuracy(["ab"], ["abcd"]), 2 / 4);
  close(charAccuracy(["abcde"], ["abc"]), 3 / 5);
  close(charAccuracy(["xabc"], ["abc"]), 0); // a shift misaligns every character
  close(charAccuracy([""], [""]), 1);
  close(charAccuracy(["abc", "ab", "abcde", ""], ["abd", "abcd", "abc", ""]), 83 / 120);
});

Deno.test("inputs of different lengths, or none, are rejected", () => {
  assert.throws(() => exactMatch(["a"], ["a", "b"]), /exactMatch: 1 predictions but 2 truths/);
  assert.throws(() => charAccuracy([], []), /charAccuracy: no captions/);
  assert.throws(() => summarize(["a", "b"], ["a"]), /exactMatch: 2 predictions but 1 truths/);
});

Deno.test("attributeAccuracy scores each stated attribute over captions in the grammar", () => {
  const acc = attributeAccuracy(PREDS, TRUTHS);
  assert.equal(acc.n, 4);
  close(acc.parsed, 3 / 4);
  // object slots: red circle, blue star, blue square, green triangle, yellow cross
  close(acc.colour, 3 / 5); // wrong: blue->green, yellow->(none)
  close(acc.shape, 3 / 5); // wrong: circle->square, cross->(none)
  close(acc.size, 4 / 5); // wrong: small->(none)
  close(acc.position, 1 / 3); // left right; centre->top and bottom->(none) wrong
  close(acc.relation, 0); // above->below
});

Deno.test("attributeAccuracy: a prediction naming fewer objects loses the missing ones", () => {
  const acc = attributeAccuracy(
    ["a large blue square at the left."],
    ["a large blue square above a small green triangle."],
  );
  close(acc.colour, 1 / 2);
  close(acc.shape, 1 / 2);
  close(acc.size, 1 / 2);
  close(acc.relation, 0);
  assert.equal(acc.position, null); // the truth states no position
});

Deno.test("confusions list the most frequent wrong pairs, ties alphabetical", () => {
  const c = confusions(PREDS, TRUTHS);
  assert.deepEqual(c.colour, [
    { truth: "blue", predicted: "green", count: 1 },
    { truth: "yellow", predicted: MISSING, count: 1 },
  ]);
  assert.deepEqual(c.shape, [
    { truth: "circle", predicted: "square", count: 1 },
    { truth: "cross", predicted: MISSING, count: 1 },
  ]);
  assert.deepEqual(c.position, [
    { truth: "bottom", predicted: MISSING, count: 1 },
    { truth: "centre", predicted: "top", count: 1 },
  ]);
  assert.deepEqual(c.relation, [{ truth: "above", predicted: "below", count: 1 }]);

  const truths = [
    "a small red circle at the left.",
    "a small red circle at the left.",
    "a small blue circle at the left.",
    "a small green circle at the left.",
  ];
  const preds = [
    "a small orange circle at the left.",
    "a small orange circle at the left.",
    "a small purple circle at the left.",
    "a small green circle at the left.",
  ];
  assert.deepEqual(confusions(preds, truths, 1).colour, [{ truth: "red", predicted: "orange", count: 2 }]);
  assert.deepEqual(confusions(preds, truths).shape, []);
  assert.equal(confusions(preds, truths).relation, undefined);
});

Deno.test("summarize: attribute parts only when some truth is in the grammar", () => {
  const s = summarize(PREDS, TRUTHS);
  close(s.exact_match, 1 / 5);
  assert.equal(s.n, 5);
  close(s.char_accuracy, charAccuracy(PREDS, TRUTHS));
  assert.equal(s.attributes?.n, 4);
  close(s.attributes?.colour, 3 / 5);
  assert.deepEqual(s.confusions?.relation, [{ truth: "above", predicted: "below", count: 1 }]);

  const plain = summarize(["hello there", "abc"], ["hello world", "abc"]);
  assert.deepEqual(Object.keys(plain).sort(), ["char_accuracy", "exact_match", "n"]);
  close(plain.exact_match, 1 / 2);
  close(plain.char_accuracy, (6 / 11 + 1) / 2); // only "hello " lines up
});

Deno.test("firstSentence keeps the caption up to its first full stop", () => {
  assert.equal(firstSentence(" a small red circle at the left. a large"), "a small red circle at the left.");
  assert.equal(firstSentence("no stop here "), "no stop here");
});

Deno.test("blindBaseline: always answering the commonest training caption", () => {
  const b = blindBaseline(["x", "y", "y"], ["y", "z", "z", "z"]);
  assert.equal(b.constant_caption, "y");
  close(b.train_frequency, 2 / 3);
  close(b.summary.exact_match, 1 / 4);
  close(b.best_constant_exact_match, 3 / 4);
  assert.equal(b.summary.attributes, undefined);
  assert.throws(() => blindBaseline([], ["a"]), /no training captions/);
});
