// The word-loss labels: a caption's words, the training vocabulary of words, multi-hot targets.

import assert from "node:assert/strict";
import { captionVocabulary, wordsOf, wordTargets } from "../../lib/data/caption_words.ts";

Deno.test("wordsOf splits on spaces and punctuation, keeping apostrophes and hyphens", () => {
  assert.deepEqual(wordsOf("a small red circle, left of a dog's toy-box."), [
    "a",
    "small",
    "red",
    "circle",
    "left",
    "of",
    "a",
    "dog's",
    "toy-box",
  ]);
  assert.deepEqual(wordsOf(" ... "), []);
});

Deno.test("captionVocabulary: most captions first, counted once per caption, capped", () => {
  const captions = ["a red star.", "a blue star.", "a red a red square."];
  assert.deepEqual(captionVocabulary(captions), ["a", "red", "star", "blue", "square"]);
  assert.deepEqual(captionVocabulary(captions, 2), ["a", "red"]);
});

Deno.test("wordTargets marks the words each caption holds and ignores unknown ones", () => {
  const words = ["a", "red", "star"];
  assert.deepEqual([...wordTargets(["a red star.", "a blue square.", "red red"], words)], [
    1,
    1,
    1,
    1,
    0,
    0,
    0,
    1,
    0,
  ]);
});
