// Character-level tokenizer of seemore: one token per character (Unicode code point), ids are
// positions in a symbol list whose last entry is the padding symbol "<pad>".
// The original builds its 66-symbol vocabulary from tiny-shakespeare's input.txt.

/** The padding symbol: always the last token id (it also ends a caption). */
export const PAD = "<pad>";

/** Where a value came from, for error messages: a data file, its 1-based data row, a column. */
export interface CellLocation {
  file: string;
  row?: number; // 1-based, the header is not counted; absent for a lone file (e.g. an image)
  column?: string;
}

/** `file, row 3, column "caption"` — the prefix of every data error. */
export function describeLocation(where: CellLocation): string {
  if (where.row === undefined) return where.file;
  return `${where.file}, row ${where.row}, column "${where.column}"`;
}

/** The 65 characters of tiny-shakespeare, sorted by code point (the original's `chars`). */
const SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/** Sorted unique code points of some strings, compared by code point like Python's sorted(set(text)). */
function sortedUniqueChars(texts: Iterable<string>): string[] {
  const seen = new Set<string>();
  for (const text of texts) {
    for (const ch of text) seen.add(ch); // iterates code points, not UTF-16 units
  }
  return [...seen].sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);
}

/** Shows a character readably in an error message: "a", "\n", U+00A0. */
function showChar(ch: string): string {
  const code = ch.codePointAt(0)!;
  if (ch === "\n") return '"\\n"';
  if (ch === "\t") return '"\\t"';
  if (ch === "\r") return '"\\r"';
  const hex = `U+${code.toString(16).toUpperCase().padStart(4, "0")}`;
  return code < 0x20 || code === 0x7f || /\s/u.test(ch) ? hex : `"${ch}" (${hex})`;
}

export class Tokenizer {
  readonly symbols: readonly string[];
  readonly padId: number;
  private readonly stoi: Map<string, number>;

  /** symbols[i] is the text of token id i; every symbol but the last is one character; the last is PAD. */
  constructor(symbols: readonly string[]) {
    if (symbols.length < 1 || symbols[symbols.length - 1] !== PAD) {
      throw new Error(`Tokenizer: the last symbol must be "${PAD}" (got ${JSON.stringify(symbols.at(-1))})`);
    }
    const stoi = new Map<string, number>();
    symbols.forEach((symbol, id) => {
      if (stoi.has(symbol)) throw new Error(`Tokenizer: symbol ${JSON.stringify(symbol)} appears twice`);
      if (id < symbols.length - 1 && [...symbol].length !== 1) {
        throw new Error(
          `Tokenizer: symbol ${id} is ${
            JSON.stringify(symbol)
          }; only "${PAD}" may be longer than one character`,
        );
      }
      stoi.set(symbol, id);
    });
    this.symbols = Object.freeze([...symbols]);
    this.padId = symbols.length - 1;
    this.stoi = stoi;
  }

  /** The original's vocabulary: tiny-shakespeare's 65 characters + "<pad>" (id 65). */
  static original(): Tokenizer {
    return new Tokenizer([...SHAKESPEARE_CHARS, PAD]);
  }

  /** Sorted unique characters of a text + "<pad>", as the original builds its vocabulary. */
  static fromText(text: string): Tokenizer {
    return new Tokenizer([...sortedUniqueChars([text]), PAD]);
  }

  /** Sorted unique characters of all captions + "<pad>". */
  static fromCaptions(captions: Iterable<string>): Tokenizer {
    return new Tokenizer([...sortedUniqueChars(captions), PAD]);
  }

  get vocabSize(): number {
    return this.symbols.length;
  }

  /** One id per character; an unknown character is an error naming it (and where it came from). */
  encode(text: string, where?: CellLocation): number[] {
    const ids: number[] = [];
    let position = 0;
    for (const ch of text) {
      position += 1;
      const id = this.stoi.get(ch); // never "<pad>": ch is one character
      if (id === undefined) {
        const prefix = where ? `${describeLocation(where)}: ` : "";
        throw new Error(
          `${prefix}character ${showChar(ch)} at position ${position} is not in the vocabulary ` +
            `(${this.vocabSize - 1} characters + "${PAD}")`,
        );
      }
      ids.push(id);
    }
    return ids;
  }

  /** The text of some ids; "<pad>" ids are skipped. An id outside the vocabulary is an error. */
  decode(ids: Iterable<number>): string {
    let text = "";
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new Error(`Tokenizer.decode: id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
      }
      if (id !== this.padId) text += this.symbols[id];
    }
    return text;
  }
}
