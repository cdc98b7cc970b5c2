// The command line's flags: every config key with a flag is accepted, checked against its spec and listed
// in --help with its default; switches take every usual form.

import assert from "node:assert/strict";
import { MODEL_KEYS, TRAIN_KEYS } from "../lib/config.ts";
import { type Command, CONFIG_FLAGS, parseFlags, usage, UsageError } from "../lib/flags.ts";

const COMMAND: Command = {
  name: "train",
  summary: "test",
  configFlags: true,
  flags: { data: { value: "CSV", group: "data", help: "d" }, blind: { group: "data", help: "b" } },
};

Deno.test("each config key with a flag parses into its scope, checked against its spec", () => {
  const f = parseFlags(
    ["--steps", "12", "--lr=0.5", "--model", "seemoe", "--data", "x.csv", "--blind"],
    COMMAND,
  );
  assert.deepEqual(f.train, { max_iters: 12, learning_rate: 0.5 });
  assert.deepEqual(f.model, { model_type: "seemoe" });
  assert.deepEqual(f.own, { data: "x.csv", blind: true });
  assert.throws(() => parseFlags(["--n-head", "2.5"], COMMAND), /--n-head must be a whole number/);
  assert.throws(
    () => parseFlags(["--dropout", "1"], COMMAND),
    /--dropout must be a number from 0 to 1 \(excluded\)/,
  );
  assert.throws(() => parseFlags(["--residual", "post"], COMMAND), UsageError);
  assert.deepEqual(parseFlags(["--init", "kaiming"], COMMAND).model, { init: "kaiming" });
  assert.deepEqual(parseFlags(["--init=pytorch"], COMMAND).model, { init: "pytorch" });
  assert.throws(
    () => parseFlags(["--init", "bogus"], COMMAND),
    (e: Error) =>
      e instanceof UsageError && e.message === `--init must be one of "pytorch", "kaiming", not "bogus"`,
  );
  assert.throws(() => parseFlags(["--nope"], COMMAND), /Unknown option '--nope'.*--help lists them/);
});

Deno.test("switches: --x, --x true|false, --x=false and --no-x", () => {
  const forms: [string[], boolean][] = [
    [["--decay-lr"], true],
    [["--decay-lr", "false"], false],
    [["--decay-lr=false"], false],
    [["--no-decay-lr"], false],
    [["--decay-lr", "--steps", "3"], true],
  ];
  for (const [args, value] of forms) {
    assert.equal(parseFlags(args, COMMAND).train.decay_lr, value, args.join(" "));
  }
  assert.equal(parseFlags(["--no-blind"], COMMAND).own.blind, false);
  assert.throws(
    () => parseFlags(["--decay-lr", "yes"], COMMAND),
    /--decay-lr must be true or false, not "yes"/,
  );
});

Deno.test("--help lists every flag, grouped, with its default", () => {
  const text = usage(COMMAND);
  for (const [flag, { spec }] of CONFIG_FLAGS) {
    const line = text.split("\n").find((l) =>
      l.trimStart().startsWith(`--${flag} `) || l.trim() === `--${flag}`
    );
    assert.ok(line, `--${flag} listed`);
    const shown = spec.default === undefined ? spec.defaultText : String(spec.default);
    assert.ok(shown && line!.includes(spec.help) && line!.includes(`(default ${shown})`), line);
  }
  for (const title of ["data:", "model:", "seeMoE (--model seemoe):", "training:"]) {
    assert.ok(text.includes(title), title);
  }
  assert.equal(parseFlags(["--help"], COMMAND).help, true);
});

Deno.test("every config key is declared once, with a default that passes its own check", async () => {
  const { checkValue } = await import("../lib/config.ts");
  const flags = new Set<string>();
  for (const [key, spec] of [...Object.entries(MODEL_KEYS), ...Object.entries(TRAIN_KEYS)]) {
    assert.deepEqual(checkValue(key, spec, spec.default, "defaults"), spec.default, key);
    if (spec.flag) {
      assert.ok(!flags.has(spec.flag), `--${spec.flag} used once`);
      flags.add(spec.flag);
    }
  }
});
