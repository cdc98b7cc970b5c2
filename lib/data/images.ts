// Images for seemore: base64 PNG/JPEG cells -> normalised float32 CHW arrays, the same numbers as the
// original's PIL path: Image.open -> convert("RGB") -> Resize((S, S)) -> ToTensor -> Normalize(ImageNet).
//
// - Decoding: sharp (libvips), ICC profiles ignored and no EXIF rotation, like PIL.Image.open.
// - convert("RGB"): grey is replicated, palettes are looked up, alpha is DROPPED (PIL does not
//   composite on white or black), so alpha is removed before anything else touches the pixels.
// - Resize: a port of Pillow's 8-bit bilinear resampler (Resample.c: a triangle filter widened by the
//   downscale factor, i.e. antialiased; 22-bit fixed-point weights; horizontal pass, then vertical,
//   each rounded to uint8). It matches Pillow 9.4 exactly (max difference 0 on PNGs; see
//   tests/data/images_test.ts). sharp's own resize (kernel "linear") differs from PIL by up to tens of
//   grey levels and would resize before dropping alpha, so it is not used.
// - Normalise: (byte / 255 - mean) / std in float32, the same float32 roundings as torchvision.

import sharp from "sharp";
import { Buffer } from "node:buffer";
import { IMAGENET_MEAN, IMAGENET_STD } from "../config.ts";
import { type CellLocation, describeLocation } from "../tokenizer.ts";

export const IMAGE_COLUMN = "b64string_images";

/** Formats PIL.Image.open also reads; anything else sharp could open (SVG, PDF, HEIF...) is refused. */
const ACCEPTED_FORMATS = new Set(["png", "jpeg", "gif", "webp", "tiff"]);

/**
 * The most pixels an image may declare: 2^24 (4096 × 4096, 48 MiB decoded). A few kilobytes of PNG can
 * declare 16000 × 16000 pixels of one colour, which would take gigabytes and many seconds to decode.
 */
export const MAX_IMAGE_PIXELS = 2 ** 24;

/** 8-bit RGB pixels, row-major, 3 bytes per pixel (HWC). */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array; // (H, W, 3)
}

// ---------------------------------------------------------------------------------------------
// base64 -> bytes -> RGB

/** Strict base64 (standard alphabet, padded to a multiple of 4); whitespace and line breaks allowed. */
export function parseBase64(b64: string, where: CellLocation): Uint8Array {
  const text = b64.replace(/[\t\n\r ]/g, "");
  const at = describeLocation(where);
  if (text.length === 0) throw new Error(`${at}: the cell holds no base64 data`);
  if (text.startsWith("data:")) {
    throw new Error(
      `${at}: the cell holds a data URL ("${text.slice(0, 30)}..."); store only the base64 part`,
    );
  }
  const bad = text.search(/[^A-Za-z0-9+/=]/);
  if (bad >= 0) {
    throw new Error(`${at}: not valid base64: character ${JSON.stringify(text[bad])} at position ${bad + 1}`);
  }
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
    throw new Error(`${at}: not valid base64: "=" padding may only appear at the end`);
  }
  if (text.length % 4 !== 0) {
    throw new Error(`${at}: not valid base64: length ${text.length} is not a multiple of 4 (truncated?)`);
  }
  const buffer = Buffer.from(text, "base64");
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

function describeStart(bytes: Uint8Array): string {
  const head = [...bytes.subarray(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
  return `${bytes.length} bytes starting ${head}`;
}

/** The format a file's first bytes announce, or undefined. */
function sniffFormat(bytes: Uint8Array): string | undefined {
  const starts = (...magic: number[]) => magic.every((b, i) => bytes[i] === b);
  if (starts(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return "png";
  if (starts(0xff, 0xd8, 0xff)) return "jpeg";
  if (starts(0x47, 0x49, 0x46, 0x38)) return "gif";
  return undefined;
}

/** sharp's (libvips') message on one line, repeated lines removed. */
function sharpMessage(e: unknown): string {
  const lines = String((e as Error).message ?? e).split("\n").map((l) => l.trim()).filter((l) => l);
  return [...new Set(lines)].join("; ");
}

/** Decodes a PNG/JPEG (grey, grey+alpha, RGB, RGBA, palette) to 8-bit RGB, dropping alpha. */
export async function decodeRgb(bytes: Uint8Array, where: CellLocation): Promise<RgbImage> {
  const at = describeLocation(where);
  const corrupt = (format: string, e: unknown) =>
    new Error(`${at}: cannot decode the ${format} image (corrupt or truncated?): ${sharpMessage(e)}`);
  if (bytes.length === 0) throw new Error(`${at}: the image is empty (0 bytes)`);
  // failOn "error": corrupt or truncated pixel data is an error (with "none", sharp returns a partly
  // grey image for a truncated file); mere warnings (odd metadata) are tolerated, as PIL does. The size
  // limit is ours (below), from the header, so that its message can give the size.
  const image = sharp(bytes, { failOn: "error", ignoreIcc: true, limitInputPixels: false });
  let format: string | undefined, width = 0, height = 0;
  try {
    ({ format, width, height } = await image.metadata());
  } catch (e) {
    const sniffed = sniffFormat(bytes);
    if (sniffed) throw corrupt(sniffed, e);
    throw new Error(`${at}: not a PNG or JPEG image (${describeStart(bytes)}): ${sharpMessage(e)}`);
  }
  if (!format || !ACCEPTED_FORMATS.has(format)) {
    throw new Error(`${at}: unsupported image format "${format}" (expected PNG or JPEG)`);
  }
  if (width * height > MAX_IMAGE_PIXELS) { // checked before decoding: the header alone declares the size
    throw new Error(
      `${at}: the ${format} image is ${width} × ${height} pixels, more than the limit of ` +
        `${MAX_IMAGE_PIXELS} (4096 × 4096); scale it down first`,
    );
  }
  try {
    const { data, info } = await image.removeAlpha().toColourspace("srgb").raw({ depth: "uchar" })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected 3`);
    return {
      width: info.width,
      height: info.height,
      data: new Uint8Array(data.buffer, data.byteOffset, data.length),
    };
  } catch (e) {
    throw corrupt(format, e);
  }
}

// ---------------------------------------------------------------------------------------------
// Pillow's bilinear resize, exactly

const PRECISION_BITS = 32 - 8 - 2; // Pillow's fixed-point weights for 8-bit images

interface Coefficients {
  ksize: number; // weights per output pixel
  first: Int32Array; // (out,) first input pixel used
  count: Int32Array; // (out,) number of input pixels used
  weights: Int32Array; // (out, ksize) fixed-point weights
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter. */
function bilinearCoefficients(inSize: number, outSize: number): Coefficients {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1); // widen the filter when downscaling (antialias)
  const support = 1.0 * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const invScale = 1.0 / filterScale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * invScale);
      k[x] = t < 1 ? 1 - t : 0;
      total += k[x];
    }
    for (let x = 0; x < xmax; x++) {
      const w = total !== 0 ? k[x] / total : k[x];
      weights[xx * ksize + x] = Math.trunc(
        w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS),
      );
    }
    first[xx] = xmin;
    count[xx] = xmax;
  }
  return { ksize, first, count, weights };
}

function clip8(sum: number): number {
  const v = sum >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function resampleHorizontal(src: RgbImage, outWidth: number): RgbImage {
  const { ksize, first, count, weights } = bilinearCoefficients(src.width, outWidth);
  const out = new Uint8Array(outWidth * src.height * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < src.height; y++) {
    const row = y * src.width * 3;
    for (let xx = 0; xx < outWidth; xx++) {
      let r = half, g = half, b = half;
      const w0 = xx * ksize;
      for (let x = 0; x < count[xx]; x++) {
        const w = weights[w0 + x];
        const p = row + (first[xx] + x) * 3;
        r += src.data[p] * w;
        g += src.data[p + 1] * w;
        b += src.data[p + 2] * w;
      }
      const o = (y * outWidth + xx) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return { width: outWidth, height: src.height, data: out };
}

function resampleVertical(src: RgbImage, outHeight: number): RgbImage {
  const { ksize, first, count, weights } = bilinearCoefficients(src.height, outHeight);
  const stride = src.width * 3;
  const out = new Uint8Array(src.width * outHeight * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < outHeight; yy++) {
    const w0 = yy * ksize;
    for (let i = 0; i < stride; i++) { // every channel of every pixel of the row
      let sum = half;
      for (let y = 0; y < count[yy]; y++) {
        sum += src.data[(first[yy] + y) * stride + i] * weights[w0 + y];
      }
      out[yy * stride + i] = clip8(sum);
    }
  }
  return { width: src.width, height: outHeight, data: out };
}

/** PIL's `image.resize((width, height), Image.BILINEAR)` on an RGB image, bit for bit. */
export function resizeBilinear(image: RgbImage, width: number, height: number): RgbImage {
  let out = image;
  if (width !== out.width) out = resampleHorizontal(out, width);
  if (height !== out.height) out = resampleVertical(out, height);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Normalisation

/** NORMALISED[c * 256 + byte] = float32((float32(byte / 255) - mean[c]) / std[c]), as torchvision computes. */
const NORMALISED = (() => {
  const table = new Float32Array(3 * 256);
  for (let c = 0; c < 3; c++) {
    const mean = Math.fround(IMAGENET_MEAN[c]);
    const std = Math.fround(IMAGENET_STD[c]);
    for (let byte = 0; byte < 256; byte++) {
      table[c * 256 + byte] = Math.fround(Math.fround(Math.fround(byte / 255) - mean) / std);
    }
  }
  return table;
})();

/** The normalised value of one 8-bit channel value (channel 0 = R, 1 = G, 2 = B). */
export function normaliseByte(byte: number, channel: number): number {
  return NORMALISED[channel * 256 + byte];
}

/** Writes an RGB image as normalised CHW floats into out[offset .. offset + 3*H*W]. */
export function writeNormalised(image: RgbImage, out: Float32Array, offset = 0): void {
  const plane = image.width * image.height;
  for (let i = 0; i < plane; i++) {
    out[offset + i] = NORMALISED[image.data[i * 3]]; // (3, H, W): R plane
    out[offset + plane + i] = NORMALISED[256 + image.data[i * 3 + 1]]; // G plane
    out[offset + 2 * plane + i] = NORMALISED[512 + image.data[i * 3 + 2]]; // B plane
  }
}

/** A black image, normalised: what a blind baseline sees. (3 * S * S,) CHW. */
export function blankImage(imgSize: number): Float32Array {
  const plane = imgSize * imgSize;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) out.fill(normaliseByte(0, c), c * plane, (c + 1) * plane);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Public entry points

function checkImgSize(imgSize: number): void {
  if (!Number.isInteger(imgSize) || imgSize < 1) {
    throw new Error(`img_size must be a positive integer, got ${imgSize}`);
  }
}

/** Image bytes -> (3 * S * S,) normalised CHW float32, the original's base64_to_tensor without the batch dim. */
export async function decodeImage(
  bytes: Uint8Array,
  imgSize: number,
  where: CellLocation,
): Promise<Float32Array> {
  checkImgSize(imgSize);
  const rgb = resizeBilinear(await decodeRgb(bytes, where), imgSize, imgSize);
  const out = new Float32Array(3 * imgSize * imgSize);
  writeNormalised(rgb, out);
  return out;
}

/** A base64 cell -> (3 * S * S,) normalised CHW float32. */
export async function decodeBase64Image(
  b64: string,
  imgSize: number,
  where: CellLocation,
): Promise<Float32Array> {
  return await decodeImage(parseBase64(b64, where), imgSize, where);
}

/**
 * Many base64 cells of one file (row i+1 holds b64s[i]) -> (N * 3 * S * S,) float32, image i at
 * offset i * 3 * S * S. `concurrency` images are in flight in sharp's thread pool at once. A bad cell
 * stops the decoding; the error names the file's first bad row, whichever in-flight row failed first.
 */
export async function decodeBase64Images(
  b64s: readonly string[],
  imgSize: number,
  file: string,
  { concurrency = 8, column = IMAGE_COLUMN }: { concurrency?: number; column?: string } = {},
): Promise<Float32Array> {
  checkImgSize(imgSize);
  const size = 3 * imgSize * imgSize;
  const out = new Float32Array(b64s.length * size);
  let next = 0;
  let badRow = Infinity; // the first bad row's index so far, and its error
  let badError: unknown = null;
  const worker = async () => {
    while (next < b64s.length && badRow === Infinity) {
      const i = next++;
      const where = { file, row: i + 1, column };
      try {
        const rgb = await decodeRgb(parseBase64(b64s[i], where), where);
        writeNormalised(resizeBilinear(rgb, imgSize, imgSize), out, i * size);
      } catch (error) {
        // Rows are taken in order, so once the rows in flight finish, every earlier row has been tried.
        if (i < badRow) [badRow, badError] = [i, error];
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, b64s.length)) }, worker));
  if (badRow !== Infinity) throw badError;
  return out;
}
