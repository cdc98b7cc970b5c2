// Tokenizer: the original's vocabulary, round trips, and clear errors for unknown characters.

import assert from "node:assert/strict";
import { PAD } from "../../lib/config.ts";
import { describeLocation, Tokenizer } from "../../lib/tokenizer.ts";

// The original's vocabulary and its source text, vendored with the original code (MIT).
const REFERENCE = new URL("../fixtures/reference/", import.meta.url);

Deno.test("original(): 65 characters + <pad> at id 65", () => {
  const tok = Tokenizer.original();
  assert.equal(tok.vocabSize, 66);
  assert.equal(tok.padId, 65);
  assert.equal(tok.symbols[65], PAD);
  assert.equal(tok.symbols[0], "\n");
  assert.equal(tok.symbols[1], " ");
  assert.deepEqual(tok.encode("Hi!"), [20, 47, 2]);
});

Deno.test("original() equals the original's vocabulary (tests/fixtures/reference/state_dict_keys.json)", () => {
  const reference = JSON.parse(Deno.readTextFileSync(new URL("state_dict_keys.json", REFERENCE)));
  assert.deepEqual([...Tokenizer.original().symbols], reference.seemore_vocab);
  assert.deepEqual([...Tokenizer.original().symbols], reference.seemoe_vocab);
});

Deno.test("fromText(tiny-shakespeare input.txt) rebuilds the original vocabulary", () => {
  const shakespeare = Deno.readTextFileSync(new URL("seemore-pytorch/input.txt", REFERENCE));
  assert.deepEqual(Tokenizer.fromText(shakespeare).symbols, Tokenizer.original().symbols);
});

Deno.test("fromCaptions: sorted unique characters + pad; encode/decode round trip", () => {
  const tok = Tokenizer.fromCaptions(["a red circle.", "a blue square."]);
  assert.deepEqual(tok.symbols, [" ", ".", "a", "b", "c", "d", "e", "i", "l", "q", "r", "s", "u", PAD]);
  for (const text of ["a red circle.", "square", ""]) assert.equal(tok.decode(tok.encode(text)), text);
  assert.deepEqual(tok.encode("ab."), [2, 3, 1]);
});

Deno.test("sorting is by code point, as Python's sorted(set(text))", () => {
  // UTF-16 order would put the emoji (a surrogate pair, 0xD83D...) before U+FFFF.
  const tok = Tokenizer.fromText("b\u{1F600}a\uFFFFa");
  assert.deepEqual(tok.symbols, ["a", "b", "\uFFFF", "\u{1F600}", PAD]);
  assert.deepEqual(tok.encode("\u{1F600}a"), [3, 0]); // one id per code point
  assert.equal(tok.decode([3, 0]), "\u{1F600}a");
});

Deno.test("decode skips <pad> and rejects ids outside the vocabulary", () => {
  const tok = Tokenizer.original();
  assert.equal(tok.decode([...tok.encode("To be"), tok.padId, tok.padId]), "To be");
  assert.throws(() => tok.decode([66]), /id 66 is outside the vocabulary \(0\.\.65\)/);
  assert.throws(() => tok.decode([-1]), /outside the vocabulary/);
});

Deno.test("encode names an unknown character, its position, and where it came from", () => {
  const tok = Tokenizer.original();
  assert.throws(
    () => tok.encode("caf\u00e9"),
    /character "\u00e9" \(U\+00E9\) at position 4 is not in the vocabulary/,
  );
  const where = { file: "data/x.csv", row: 7, column: "caption" };
  assert.throws(
    () => tok.encode("a\tb", where),
    (e: Error) =>
      e.message.startsWith('data/x.csv, row 7, column "caption": character "\\t" at position 2') &&
      e.message.endsWith('is not in the vocabulary (65 characters + "<pad>")'),
  );
  assert.throws(() => tok.encode("a\u00a0b"), /character U\+00A0 at position 2/); // invisible: code only
  assert.throws(() => tok.encode("<pad>"), /"<" \(U\+003C\) at position 1/); // "<pad>" is not a character
  assert.equal(describeLocation(where), 'data/x.csv, row 7, column "caption"');
});

Deno.test("the constructor checks its symbol list", () => {
  assert.throws(() => new Tokenizer(["a", "b"]), /last symbol must be "<pad>"/);
  assert.throws(() => new Tokenizer(["a", "a", PAD]), /appears twice/);
  assert.throws(() => new Tokenizer(["ab", PAD]), /only "<pad>" may be longer/);
  assert.equal(new Tokenizer([PAD]).vocabSize, 1);
});
