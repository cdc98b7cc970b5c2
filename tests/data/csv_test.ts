// CSV reading: the two columns in order, extra columns ignored, and every bad-input case named.

import assert from "node:assert/strict";
import { join } from "node:path";
import { readImageCaptionCsv } from "../../lib/data/csv.ts";

const dir = Deno.makeTempDirSync({ prefix: "seemore_csv_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

function csv(name: string, text: string): string {
  const path = join(dir, name);
  Deno.writeTextFileSync(path, text);
  return path;
}

Deno.test("reads the two columns in order, keeping text as text and ignoring extra columns", () => {
  const path = csv(
    "ok.csv",
    'id,b64string_images,caption,extra\n0,AAAA,a red circle.,x\n1,BBBB,"two lines,\nwith comma",y\n2,CCCC,123,z\n',
  );
  const table = readImageCaptionCsv(path);
  assert.equal(table.file, path);
  assert.deepEqual(table.images, ["AAAA", "BBBB", "CCCC"]);
  assert.deepEqual(table.captions, ["a red circle.", "two lines,\nwith comma", "123"]);
});

Deno.test("a missing file is named", () => {
  const path = join(dir, "nope.csv");
  assert.throws(() => readImageCaptionCsv(path), new RegExp(`${path}: no such file`));
});

Deno.test("an empty file and a header without rows are errors naming the file", () => {
  const empty = csv("empty.csv", "");
  assert.throws(() => readImageCaptionCsv(empty), new RegExp(`${empty}: the CSV is empty`));
  const header = csv("header.csv", "b64string_images,caption\n");
  assert.throws(
    () => readImageCaptionCsv(header),
    new RegExp(`${header}: the CSV has a header but no data rows`),
  );
});

Deno.test("a missing column is named, with the columns found", () => {
  const path = csv("cols.csv", "image,caption\nAAAA,hi\n");
  assert.throws(
    () => readImageCaptionCsv(path),
    (e: Error) =>
      e.message === `${path}: missing column "b64string_images" (columns found: "image", "caption")`,
  );
  const noCaption = csv("cols2.csv", "b64string_images,text\nAAAA,hi\n");
  assert.throws(
    () => readImageCaptionCsv(noCaption),
    /missing column "caption" \(columns found: "b64string_images", "text"\)/,
  );
});

Deno.test("a null or empty cell names file, data row and column", () => {
  const missing = csv("null.csv", "b64string_images,caption\nAAAA,one\nBBBB,\nCCCC,three\n");
  assert.throws(
    () => readImageCaptionCsv(missing),
    (e: Error) => e.message === `${missing}, row 2, column "caption": the cell is empty`,
  );
  const quoted = csv("quoted.csv", 'b64string_images,caption\nAAAA,one\nBBBB,two\nCCCC,""\n');
  assert.throws(
    () => readImageCaptionCsv(quoted),
    new RegExp(`${quoted}, row 3, column "caption": the cell is empty`),
  );
  const image = csv("image.csv", "b64string_images,caption\n,one\n");
  assert.throws(() => readImageCaptionCsv(image), /row 1, column "b64string_images": the cell is empty/);
});

Deno.test("a UTF-8 byte-order mark and CRLF line ends are accepted", () => {
  const path = csv("bom.csv", "\uFEFFb64string_images,caption\r\nAAAA,hi there\r\n");
  assert.deepEqual(readImageCaptionCsv(path).captions, ["hi there"]);
});
