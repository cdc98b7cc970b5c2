// Scores of generated captions against their truths: pure functions on strings, no model code. Any
// captions; for captions of the shapes grammar, lib/data/shapes_score.ts scores each attribute too.

/** Throws unless there are as many predictions as truths, and some. */
export function checkInputs(preds: string[], truths: string[], fn: string): void {
  if (preds.length !== truths.length) {
    throw new Error(`${fn}: ${preds.length} predictions but ${truths.length} truths`);
  }
  if (truths.length === 0) throw new Error(`${fn}: no captions to score`);
}

function mean(values: number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** The caption part of a generated text: up to and including the first '.', trimmed. */
export function firstSentence(text: string): string {
  const end = text.indexOf(".");
  return (end < 0 ? text : text.slice(0, end + 1)).trim();
}

/** Fraction of predictions equal to their truth, character for character. */
export function exactMatch(preds: string[], truths: string[]): number {
  checkInputs(preds, truths, "exactMatch");
  return mean(preds.map((p, i) => (p === truths[i] ? 1 : 0)));
}

/**
 * Per caption: the number of positions i where pred[i] === truth[i], divided by
 * max(len(pred), len(truth)) (so missing or extra characters count as errors; two empty strings
 * score 1). Averaged over captions. Characters are Unicode code points.
 */
export function charAccuracy(preds: string[], truths: string[]): number {
  checkInputs(preds, truths, "charAccuracy");
  return mean(preds.map((pred, i) => {
    const p = Array.from(pred);
    const t = Array.from(truths[i]);
    const longest = Math.max(p.length, t.length);
    if (longest === 0) return 1;
    let matches = 0;
    for (let j = 0; j < Math.min(p.length, t.length); j++) if (p[j] === t[j]) matches++;
    return matches / longest;
  }));
}
