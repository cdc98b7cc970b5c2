// Word noising: while training, each word of an input caption is, with probability `rate`, swapped for
// the word in the same place (k-th word for k-th word) of another training caption drawn at random — the
// unigram distribution of that position; the swapped word's own characters are not learned (no loss on
// them). Everything after it still is. (When no other caption is that long, any training word is drawn.)
//
// Why: a character model learns the captions' statistics as well as the images. On the shapes data no
// training caption says "red star", so after "a large red " the text alone rules "star" out, and that
// prior beats what the image shows: the model captions a red star as a red square. Noising the words
// before a target is the neural version of smoothing an n-gram model (Xie et al. 2017, "Data Noising as
// Smoothing in Neural Network Language Models"): word pairs never seen in training no longer get zero
// probability, so the image decides. The images and the targets of unswapped words stay as they are;
// no swapped word is ever a target. Drawing from the same position matters for a character model: in
// captions that follow a pattern, the k-th word is mostly a word of the same kind (a colour for a colour),
// so "orange c" is followed by "ircle" in training — an orange circle never is — and the letters after a
// shared first letter are read from the image, not from the colour word in front.

/** A word is a maximal run of these characters; spaces and punctuation are never swapped. */
const WORD_CHAR = /^[\p{L}\p{N}'-]$/u;

/** [start, end) of each word in a caption's token ids. */
export function wordSpans(ids: readonly number[], isWordChar: readonly boolean[]): [number, number][] {
  const spans: [number, number][] = [];
  let start = -1;
  ids.forEach((id, i) => {
    if (isWordChar[id] && start < 0) start = i;
    if (!isWordChar[id] && start >= 0) {
      spans.push([start, i]);
      start = -1;
    }
  });
  if (start >= 0) spans.push([start, ids.length]);
  return spans;
}

/** A caption after noising: its ids, and a flag per character that is no target (part of a swapped word). */
export interface NoisedCaption {
  ids: number[];
  skip: Uint8Array; // (ids.length,) 1 = this character is not learned
}

export class WordNoise {
  private readonly isWordChar: boolean[];
  private readonly pool: number[][] = []; // every word occurrence of the training captions
  private readonly byPosition: number[][][] = []; // byPosition[k]: the k-th word of every caption that has one

  /** `maxLength`: the longest caption the decoder has positions for (longer results are not used). */
  constructor(
    captions: readonly (readonly number[])[],
    vocab: readonly string[],
    readonly rate: number,
    readonly maxLength = Infinity,
  ) {
    if (!(rate >= 0 && rate <= 1)) throw new Error(`word noise rate must be in [0, 1], got ${rate}`);
    this.isWordChar = vocab.map((symbol) => WORD_CHAR.test(symbol));
    for (const ids of captions) {
      wordSpans(ids, this.isWordChar).forEach(([s, e], k) => {
        const word = ids.slice(s, e);
        this.pool.push(word);
        (this.byPosition[k] ??= []).push(word);
      });
    }
  }

  /**
   * Noises one caption with the random numbers in [0, 1) that `rand` draws. A result longer than
   * `maxLength` (it would not fit the decoder's positions) is dropped: the caption stays as it is.
   */
  apply(ids: readonly number[], rand: () => number): NoisedCaption {
    const out: number[] = [];
    const skip: number[] = [];
    let last = 0;
    for (const [k, [s, e]] of wordSpans(ids, this.isWordChar).entries()) {
      out.push(...ids.slice(last, s));
      skip.push(...new Array(s - last).fill(0));
      const swap = this.pool.length > 0 && rand() < this.rate;
      const from = this.byPosition[k] ?? this.pool;
      const word = swap ? from[Math.floor(rand() * from.length)] : ids.slice(s, e);
      out.push(...word);
      skip.push(...new Array(word.length).fill(swap ? 1 : 0));
      last = e;
    }
    out.push(...ids.slice(last));
    skip.push(...new Array(ids.length - last).fill(0));
    if (out.length > this.maxLength) return { ids: [...ids], skip: new Uint8Array(ids.length) };
    return { ids: out, skip: Uint8Array.from(skip) };
  }
}
