// Image shifts: every pixel moves by the drawn (dx, dy), the edge rows and columns fill the space left, and a
// training batch's shifts follow from (seed, step) like the rest of the batch.

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { shiftImages } from "../../lib/data/image_shift.ts";
import { ImageCaptionDataset, makeBatch } from "../../lib/data/batches.ts";
import { mulberry32 } from "../../lib/random.ts";

await tf.setBackend("cpu");

/** A (3, S, S) image whose pixel (c, y, x) holds 1000 c + S y + x: every value names its place. */
function numbered(S: number): Float32Array {
  return Float32Array.from({ length: 3 * S * S }, (_, i) => 1000 * Math.floor(i / (S * S)) + (i % (S * S)));
}

/** A generator that returns `values` in turn. */
const fixed = (values: number[]) => {
  let i = 0;
  return () => values[i++ % values.length];
};

Deno.test("a shift moves every pixel by (dx, dy) and repeats the edge into the space it leaves", () => {
  const S = 8;
  for (const [u, dx] of [[0, -2], [0.3, -1], [0.5, 0], [0.99, 2]] as const) {
    for (const [w, dy] of [[0, -2], [0.99, 2], [0.45, 0]] as const) {
      const image = numbered(S);
      shiftImages(image, S, 2, fixed([u, w])); // floor(u · 5) - 2 = dx, then dy
      for (let c = 0; c < 3; c++) {
        for (let y = 0; y < S; y++) {
          for (let x = 0; x < S; x++) {
            const sy = Math.min(S - 1, Math.max(0, y - dy)), sx = Math.min(S - 1, Math.max(0, x - dx));
            assert.equal(
              image[c * S * S + y * S + x],
              1000 * c + S * sy + sx,
              `(dx ${dx}, dy ${dy}) c${c} y${y} x${x}`,
            );
          }
        }
      }
    }
  }
});

Deno.test("each image of a batch gets its own shift; max 0 changes nothing", () => {
  const S = 6;
  const two = new Float32Array([...numbered(S), ...numbered(S)]);
  const same = two.slice();
  shiftImages(same, S, 0, () => assert.fail("max 0 draws nothing"));
  assert.deepEqual(same, two);
  shiftImages(two, S, 1, fixed([0.99, 0.5, 0, 0.5])); // first image right by 1, second left by 1
  assert.equal(two[1], 0); // image 0, (y 0, x 1) ← x 0
  assert.equal(two[0], 0); // the edge repeated
  const second = 3 * S * S;
  assert.equal(two[second + 0], 1); // image 1, (y 0, x 0) ← x 1
  assert.equal(two[second + S - 1], S - 1); // the right edge repeated
});

Deno.test("a dataset's shifted batch is its images moved, and the same draws give the same batch", () => {
  const S = 8;
  const one = numbered(S);
  const data = new ImageCaptionDataset({
    file: "shift.csv",
    imgSize: S,
    images: new Float32Array([...one, ...one.map((v) => -v)]),
    tokens: [[1, 2], [3, 4]],
    captions: ["ab", "cd"],
    padId: 0,
  });
  const read = (seed?: number) => {
    const shift = seed === undefined ? undefined : { max: 2, rand: mulberry32(seed) };
    const batch = makeBatch(data, [0, 1], undefined, shift);
    const pixels = batch.images.dataSync() as Float32Array;
    tf.dispose(batch);
    return pixels;
  };
  assert.deepEqual(read(), new Float32Array([...one, ...one.map((v) => -v)]));
  assert.deepEqual(read(7), read(7));
  const expected = new Float32Array([...one, ...one.map((v) => -v)]);
  shiftImages(expected, S, 2, mulberry32(7));
  assert.deepEqual(read(7), expected);
  assert.notDeepEqual(read(7), read());
});
