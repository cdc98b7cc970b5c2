// Image decoding: bit-exact against the original's PIL + torchvision path, every PNG colour type, and
// clear errors for bad base64, non-images and truncated files.

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import sharp from "sharp";
import {
  blankImage,
  decodeBase64Image,
  decodeBase64Images,
  decodeImage,
  MAX_IMAGE_PIXELS,
  normaliseByte,
  resizeBilinear,
} from "../../lib/data/images.ts";
import { greyPng, zerosZlib } from "../helpers.ts";

const WHERE = { file: "data/train.csv", row: 4, column: "b64string_images" };
const AT = 'data/train.csv, row 4, column "b64string_images"';

interface ReferenceCase {
  name: string;
  mode: string;
  img_size: number;
  b64: string;
  expected_f32le_b64: string;
}

/** Written by tests/fixtures/data/make_pil_reference.py from the original's base64_to_tensor. */
const REFERENCE: ReferenceCase[] = JSON.parse(
  Deno.readTextFileSync(new URL("../fixtures/data/pil_reference.json", import.meta.url)),
);

function float32s(b64: string): Float32Array {
  const bytes = Buffer.from(b64, "base64");
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

/** A flat-colour image encoded by sharp; channels 1 (grey), 2 (grey+alpha), 3, 4 (RGBA). */
async function flatImage(
  values: number[],
  format: "png" | "jpeg" | "palette",
  width = 20,
  height = 14,
): Promise<Uint8Array> {
  const channels = values.length as 1 | 2 | 3 | 4;
  const raw = new Uint8Array(width * height * channels).map((_, i) => values[i % channels]);
  const image = sharp(raw, { raw: { width, height, channels } });
  const encoded = format === "jpeg"
    ? image.jpeg({ quality: 95 })
    : image.png(format === "palette" ? { palette: true, colours: 4, dither: 0 } : {});
  return new Uint8Array(await encoded.toBuffer());
}

function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("base64");
}

/** Checks out is (3, S, S) with every pixel of channel c equal to normaliseByte(rgb[c], c). */
function assertFlat(out: Float32Array, size: number, rgb: number[]): void {
  assert.equal(out.length, 3 * size * size);
  for (let c = 0; c < 3; c++) {
    const plane = out.subarray(c * size * size, (c + 1) * size * size);
    assert.ok(plane.every((v) => v === normaliseByte(rgb[c], c)), `channel ${c} should be ${rgb[c]}`);
  }
}

Deno.test("bit-exact with the original's base64_to_tensor (PIL + torchvision) on every colour type", async () => {
  const modes = new Set(REFERENCE.map((c) => c.mode));
  for (const mode of ["RGB", "L", "LA", "RGBA", "P"]) {
    assert.ok(modes.has(mode), `fixture covers mode ${mode}`);
  }
  for (const c of REFERENCE) {
    const expected = float32s(c.expected_f32le_b64);
    const got = await decodeBase64Image(c.b64, c.img_size, WHERE);
    assert.equal(got.length, 3 * c.img_size * c.img_size, c.name);
    const maxDiff = got.reduce((m, v, i) => Math.max(m, Math.abs(v - expected[i])), 0);
    assert.equal(maxDiff, 0, `${c.name} (${c.mode}): max difference ${maxDiff}`);
  }
});

Deno.test("normalisation matches torchvision's float32 values", () => {
  // torchvision: Normalize(ImageNet)(ToTensor()(pixel)) for pixels 0, 128, 255 (printed by torch 1.13).
  const torch = [
    [-2.1179039478302, 0.07406462728977203, 2.248908281326294],
    [-2.0357141494750977, 0.20518219470977783, 2.4285714626312256],
    [-1.804444432258606, 0.4264925718307495, 2.640000104904175],
  ];
  for (let c = 0; c < 3; c++) {
    assert.deepEqual([0, 128, 255].map((b) => normaliseByte(b, c)), torch[c]);
  }
});

Deno.test("flat grey, RGB, palette PNGs decode to their exact colour at any size", async () => {
  assertFlat(await decodeImage(await flatImage([77], "png"), 8, WHERE), 8, [77, 77, 77]);
  assertFlat(await decodeImage(await flatImage([10, 200, 99], "png"), 8, WHERE), 8, [10, 200, 99]);
  assertFlat(await decodeImage(await flatImage([10, 200, 99], "png", 3, 5), 12, WHERE), 12, [10, 200, 99]);
  const palette = await flatImage([250, 40, 0], "palette");
  assert.equal((await sharp(palette).metadata()).isPalette, true);
  assertFlat(await decodeImage(palette, 8, WHERE), 8, [250, 40, 0]);
});

Deno.test("alpha is dropped, not composited (PIL's convert('RGB'))", async () => {
  // Fully transparent pixels keep their colour: compositing on white or black would change it.
  assertFlat(await decodeImage(await flatImage([200, 100, 50, 0], "png"), 8, WHERE), 8, [200, 100, 50]);
  assertFlat(await decodeImage(await flatImage([60, 128], "png"), 8, WHERE), 8, [60, 60, 60]);
});

Deno.test("a JPEG decodes to (3, S, S) within JPEG's error of its colour", async () => {
  const out = await decodeImage(await flatImage([30, 144, 255], "jpeg", 32, 24), 16, WHERE);
  assert.equal(out.length, 3 * 16 * 16);
  for (let c = 0; c < 3; c++) {
    const target = [30, 144, 255][c];
    const low = normaliseByte(Math.max(target - 3, 0), c), high = normaliseByte(Math.min(target + 3, 255), c);
    const plane = out.subarray(c * 256, (c + 1) * 256);
    assert.ok(plane.every((v) => v >= low && v <= high), `JPEG channel ${c} near ${target}`);
  }
});

Deno.test("resizeBilinear keeps the image when the size is unchanged and averages when shrinking", () => {
  const data = new Uint8Array([0, 0, 0, 255, 255, 255, 0, 0, 0, 255, 255, 255]); // 2x2 stripes
  const image = { width: 2, height: 2, data };
  assert.equal(resizeBilinear(image, 2, 2).data, data);
  assert.deepEqual([...resizeBilinear(image, 1, 1).data], [128, 128, 128]); // PIL rounds 127.5 up
});

Deno.test("blankImage is a black image, normalised", () => {
  assertFlat(blankImage(4), 4, [0, 0, 0]);
});

Deno.test("bad base64 is an error naming file, row and column", async () => {
  const cases: [string, RegExp][] = [
    ["iVBOR!w0KGgo=", /not valid base64: character "!" at position 6/],
    ["iVBORw0KGgo", /length 11 is not a multiple of 4/],
    ["iV=BORw0KGgo", /padding may only appear at the end/],
    ["  \n", /holds no base64 data/],
    ["data:image/png;base64,iVBORw0KGgo=", /holds a data URL/],
  ];
  for (const [b64, message] of cases) {
    await assert.rejects(decodeBase64Image(b64, 8, WHERE), (e: Error) => {
      assert.ok(e.message.startsWith(AT), e.message);
      assert.match(e.message, message);
      return true;
    });
  }
});

Deno.test("bytes that are not an image are an error naming the cell", async () => {
  const text = toBase64(new TextEncoder().encode("just a caption, not a picture"));
  await assert.rejects(decodeBase64Image(text, 8, WHERE), (e: Error) => {
    assert.ok(
      e.message.startsWith(`${AT}: not a PNG or JPEG image (29 bytes starting 6a 75 73 74`),
      e.message,
    );
    return true;
  });
  const svg = toBase64(
    new TextEncoder().encode('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'),
  );
  await assert.rejects(decodeBase64Image(svg, 8, WHERE), new RegExp(`${AT}: unsupported image format "svg"`));
});

Deno.test("a truncated PNG or JPEG is an error, not a partly grey image", async () => {
  const noise = new Uint8Array(40 * 30 * 3).map((_, i) => (i * 2654435761) >>> 24);
  const png = new Uint8Array(
    await sharp(noise, { raw: { width: 40, height: 30, channels: 3 } }).png().toBuffer(),
  );
  const jpeg = new Uint8Array(
    await sharp(noise, { raw: { width: 40, height: 30, channels: 3 } }).jpeg().toBuffer(),
  );
  for (const [name, bytes] of [["png", png], ["jpeg", jpeg]] as const) {
    for (const keep of [0.1, 0.5, 0.97]) {
      const cut = bytes.subarray(0, Math.floor(bytes.length * keep));
      await assert.rejects(decodeImage(cut, 8, WHERE), (e: Error) => {
        assert.ok(
          e.message.startsWith(`${AT}: cannot decode the ${name} image (corrupt or truncated?)`),
          e.message,
        );
        return true;
      });
    }
  }
  const pngHeader = png.subarray(0, 30);
  await assert.rejects(
    decodeImage(pngHeader, 8, WHERE),
    /cannot decode the png image \(corrupt or truncated\?\)/,
  );
});

Deno.test("an empty image file is an error naming it (the fuzz test's minimal case)", async () => {
  // sharp's own "Input Bit Array is empty" named no file: what `generate --image empty.png` printed
  await assert.rejects(
    decodeImage(new Uint8Array(), 8, { file: "empty.png" }),
    /^Error: empty\.png: the image is empty/,
  );
  await assert.rejects(
    decodeImage(new Uint8Array(), 8, WHERE),
    new RegExp(`^Error: ${AT}: the image is empty`),
  );
});

Deno.test("an image declaring more than MAX_IMAGE_PIXELS is refused from its header, before decoding", async () => {
  // 1-bit grey, all black: 3 kB of PNG that decode to 50 MB of RGB (a 31 kB 16000 × 16000 PNG took 23 s
  // and 1.1 GB before this limit)
  const width = 8192, height = MAX_IMAGE_PIXELS / width + 1;
  const bomb = greyPng(width, height, 1, zerosZlib((width / 8 + 1) * height));
  assert.ok(bomb.length < 4096, `${bomb.length} bytes`);
  await assert.rejects(decodeImage(bomb, 8, WHERE), (e: Error) => {
    assert.equal(
      e.message,
      `${AT}: the png image is 8192 × 2049 pixels, more than the limit of 16777216 (4096 × 4096); ` +
        "scale it down first",
    );
    return true;
  });
  // sizes libpng itself would refuse are refused the same way, not as "corrupt"
  await assert.rejects(
    decodeImage(greyPng(2_000_000, 10, 8, bomb.subarray(0, 0)), 8, WHERE),
    /2000000 × 10 pixels/,
  );
  // one row less is within the limit and decodes
  const fits = greyPng(width, height - 1, 1, zerosZlib((width / 8 + 1) * (height - 1)));
  assert.equal((await decodeImage(fits, 8, WHERE)).length, 3 * 8 * 8);
});

Deno.test("decodeBase64Images keeps row order and names the first bad row", async () => {
  const colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 99, 199], [50, 50, 50]];
  const b64s = await Promise.all(colours.map(async (rgb) => toBase64(await flatImage(rgb, "png", 6, 6))));
  const out = await decodeBase64Images(b64s, 4, "x.csv", { concurrency: 3 });
  assert.equal(out.length, 5 * 3 * 16);
  colours.forEach((rgb, i) => assertFlat(out.subarray(i * 48, (i + 1) * 48), 4, rgb));

  const broken = [...b64s.slice(0, 3), "####", b64s[4]];
  await assert.rejects(
    decodeBase64Images(broken, 4, "x.csv", { concurrency: 1 }),
    /^Error: x\.csv, row 4, column "b64string_images": not valid base64/,
  );
  // Row 2 fails in the decoder (later), row 4 already in its base64 check: the first bad row is named.
  const notImage = toBase64(new TextEncoder().encode("not an image"));
  const twoBad = [b64s[0], notImage, b64s[2], "####", b64s[4]];
  for (const concurrency of [1, 3, 8]) {
    await assert.rejects(
      decodeBase64Images(twoBad, 4, "x.csv", { concurrency }),
      /^Error: x\.csv, row 2, column "b64string_images": not a PNG or JPEG image/,
      `concurrency ${concurrency}`,
    );
  }
});
