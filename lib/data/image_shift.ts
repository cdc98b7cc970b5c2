// Image shifts for training: each image moved by a whole number of pixels, up to `max` each way, its edge
// pixels repeated into the space it leaves (the bundled scenes' background is one flat grey, so the shifted
// image is a scene the generator could have drawn). A caption's position words stay right as long as the
// shift is small next to the distance between positions.

/** Moves each (3, S, S) image of `pixels` (B of them, in place) by its own (dx, dy) drawn from `rand`. */
export function shiftImages(pixels: Float32Array, S: number, max: number, rand: () => number): void {
  if (max === 0) return;
  const plane = S * S;
  const B = pixels.length / (3 * plane);
  const source = new Float32Array(plane);
  const draw = () => Math.min(max, Math.floor(rand() * (2 * max + 1)) - max);
  const clamp = (i: number) => (i < 0 ? 0 : i >= S ? S - 1 : i);
  for (let b = 0; b < B; b++) {
    const dx = draw(), dy = draw();
    if (dx === 0 && dy === 0) continue;
    for (let c = 0; c < 3; c++) {
      const offset = (3 * b + c) * plane;
      source.set(pixels.subarray(offset, offset + plane));
      for (let y = 0; y < S; y++) {
        const row = clamp(y - dy) * S;
        for (let x = 0; x < S; x++) pixels[offset + y * S + x] = source[row + clamp(x - dx)];
      }
    }
  }
}
