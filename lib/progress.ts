// A one-line terminal progress bar: steps done, loss, steps per second, and the time left. On a terminal it
// redraws in place; elsewhere (CI logs, notebooks) it prints a plain line now and then.

export class ProgressBar {
  private readonly tty: boolean;
  private readonly started = performance.now();
  private lastLine = -Infinity; // off a terminal: the first step's line at once, then one every 10 s
  /** The first update (steps done, wall clock): the time left is measured from there. */
  private first: { done: number; at: number } | null = null;

  constructor(readonly total: number, readonly label = "train", readonly width = 30) {
    this.tty = Deno.stderr.isTerminal();
  }

  update(done: number, fields: Record<string, string | number>, stepsPerSecond: number): void {
    const now = performance.now();
    const line = this.format(done, fields, stepsPerSecond, now);
    if (this.tty) {
      Deno.stderr.writeSync(new TextEncoder().encode(`\r${line}\x1b[K`));
    } else if (now - this.lastLine > 10_000 || done === this.total) {
      console.error(line);
      this.lastLine = now;
    }
  }

  /** The bar's line after `done` steps at wall-clock time `now` (ms). */
  format(done: number, fields: Record<string, string | number>, stepsPerSecond: number, now: number): string {
    this.first ??= { done, at: now };
    const frac = Math.min(1, done / this.total);
    const filled = Math.round(frac * this.width);
    const bar = "█".repeat(filled) + "·".repeat(this.width - filled);
    const extra = Object.entries(fields).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(4) : v}`);
    const left = this.secondsLeft(done, now);
    return `${this.label} [${bar}] ${done}/${this.total} ${extra.join("  ")}  ${
      stepsPerSecond.toFixed(2)
    } steps/s${left === null ? "" : `  ETA ${clock(left)}`}`;
  }

  /**
   * Wall-clock seconds until `total`, at the pace since the first update (evaluations included), or null
   * before there is a pace to go by.
   */
  private secondsLeft(done: number, now: number): number | null {
    if (!this.first || done <= this.first.done) return null;
    const perStep = (now - this.first.at) / 1000 / (done - this.first.done);
    return Math.max(0, this.total - done) * perStep;
  }

  finish(): void {
    if (this.tty) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
    const s = ((performance.now() - this.started) / 1000).toFixed(1);
    console.error(`${this.label}: done in ${s} s`);
  }
}

/** Seconds as h:mm:ss, or m:ss under an hour. */
export function clock(seconds: number): string {
  const s = Math.round(seconds);
  const [h, m, r] = [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60];
  const two = (n: number) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
}

/** Seconds in words, rounded to what matters: "40 s", "6 min", "1 h 54 min". */
export function duration(seconds: number): string {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  const min = Math.round(seconds / 60);
  if (min < 60) return `${min} min`;
  return `${Math.floor(min / 60)} h ${min % 60} min`;
}
