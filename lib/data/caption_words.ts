// The words of the training captions, and for each caption which of them it contains: the labels of
// the image-side word loss (lib/model/vision_language_model.ts, `word_loss`).
//
// A caption's words say what is in its image, independently of their order. Predicting them straight
// from the image encoder's CLS feature (multi-label, as in Joulin et al. 2016, "Learning Visual Features
// from Large Weakly Supervised Data") hands the encoder a direct signal for every word, shape names
// included, instead of one that reaches it only through the decoder's attention. The model computes it on
// grey copies of the images (VisionLanguageModel.loss), so shape words must be read from outlines alone.

/** A word is a maximal run of letters, digits, apostrophes and hyphens. */
const WORD = /[\p{L}\p{N}'-]+/gu;

export function wordsOf(caption: string): string[] {
  return caption.match(WORD) ?? [];
}

/** The `max` most frequent words of the captions (ties in first-seen order). */
export function captionVocabulary(captions: readonly string[], max = 1024): string[] {
  const counts = new Map<string, number>();
  for (const caption of captions) {
    for (const w of new Set(wordsOf(caption))) counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  return [...counts].sort((a, b) => b[1] - a[1]).slice(0, max).map(([w]) => w);
}

/** (B, W) row-major: 1 where caption b contains word w. */
export function wordTargets(captions: readonly string[], words: readonly string[]): Float32Array {
  const index = new Map(words.map((w, i) => [w, i]));
  const out = new Float32Array(captions.length * words.length);
  captions.forEach((caption, b) => {
    for (const w of wordsOf(caption)) {
      const i = index.get(w);
      if (i !== undefined) out[b * words.length + i] = 1;
    }
  });
  return out;
}
