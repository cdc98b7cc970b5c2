// A one-line terminal progress bar: steps done, loss, steps per second. On a terminal it redraws in
// place; elsewhere (CI logs, notebooks) it prints a plain line now and then.

export class ProgressBar {
  private readonly tty: boolean;
  private readonly started = performance.now();
  private lastLine = -Infinity; // off a terminal: the first step's line at once, then one every 10 s

  constructor(readonly total: number, readonly label = "train", readonly width = 30) {
    this.tty = Deno.stderr.isTerminal();
  }

  update(done: number, fields: Record<string, string | number>, stepsPerSecond: number): void {
    const frac = Math.min(1, done / this.total);
    const filled = Math.round(frac * this.width);
    const bar = "█".repeat(filled) + "·".repeat(this.width - filled);
    const extra = Object.entries(fields).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(4) : v}`);
    const line = `${this.label} [${bar}] ${done}/${this.total} ${extra.join("  ")}  ${
      stepsPerSecond.toFixed(2)
    } steps/s`;
    const now = performance.now();
    if (this.tty) {
      Deno.stderr.writeSync(new TextEncoder().encode(`\r${line}\x1b[K`));
    } else if (now - this.lastLine > 10_000 || done === this.total) {
      console.error(line);
      this.lastLine = now;
    }
  }

  finish(): void {
    if (this.tty) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
    const s = ((performance.now() - this.started) / 1000).toFixed(1);
    console.error(`${this.label}: done in ${s} s`);
  }
}
