// Reads seemore's training table: a CSV with a base64 image column and a caption column
// (other columns are ignored), via nodejs-polars, checking every cell before anything uses it.

import pl from "nodejs-polars";
import { Buffer } from "node:buffer";
import { describeLocation } from "../tokenizer.ts";
import { IMAGE_COLUMN } from "./images.ts";

export const CAPTION_COLUMN = "caption";

/** The two columns the original reads, in file order; row i here is data row i + 1 of the file. */
export interface ImageCaptionTable {
  file: string;
  images: string[]; // base64 PNG/JPEG
  captions: string[];
}

function readBytes(file: string): Uint8Array {
  try {
    return Deno.readFileSync(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${file}: no such file`);
    if (e instanceof Deno.errors.IsADirectory) throw new Error(`${file}: is a directory, not a CSV file`);
    throw new Error(`${file}: cannot read: ${(e as Error).message}`);
  }
}

/** One column as strings; a null (missing) or empty cell is an error naming file, row and column. */
function stringColumn(df: pl.DataFrame, file: string, column: string): string[] {
  const values = df.getColumn(column).toArray() as (string | null)[];
  return values.map((value, i) => {
    if (value === null || value === undefined || value.length === 0) {
      throw new Error(`${describeLocation({ file, row: i + 1, column })}: the cell is empty`);
    }
    return value;
  });
}

/** Reads `file` and returns its image and caption columns (every cell non-empty). */
export function readImageCaptionCsv(file: string): ImageCaptionTable {
  // Bytes, not the path: given a path that does not exist, polars would parse the path itself as CSV text.
  const bytes = readBytes(file);
  let df: pl.DataFrame;
  try {
    // inferSchemaLength 0: every column is text, so a caption like "123" stays "123".
    df = pl.readCSV(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), { inferSchemaLength: 0 });
  } catch (e) {
    const message = (e as Error).message;
    if (/empty/i.test(message)) throw new Error(`${file}: the CSV is empty (no header, no rows)`);
    throw new Error(`${file}: cannot parse as CSV: ${message}`);
  }
  const found = df.columns; // polars drops a UTF-8 byte-order mark itself
  for (const column of [IMAGE_COLUMN, CAPTION_COLUMN]) {
    if (!found.includes(column)) {
      throw new Error(
        `${file}: missing column "${column}" (columns found: ${found.map((n) => `"${n}"`).join(", ")})`,
      );
    }
  }
  if (df.height === 0) throw new Error(`${file}: the CSV has a header but no data rows`);
  return {
    file,
    images: stringColumn(df, file, IMAGE_COLUMN),
    captions: stringColumn(df, file, CAPTION_COLUMN),
  };
}
