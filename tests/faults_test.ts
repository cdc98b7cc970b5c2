// Faults during training lose nothing: `deno task train` as a child process, killed with SIGKILL at seeded
// random moments (also inside a checkpoint write), always leaves a run folder that `eval` loads and
// `train --resume` continues, to the very weights of a run never interrupted; Ctrl-C saves and exits; a
// NaN loss stops the run with an error and the last good save in place.

import assert from "node:assert/strict";
import { COMMIT_FILE, readCommitted } from "../lib/checkpoint.ts";
import { makeRows, rowsToCsv } from "../lib/data/shapes.ts";
import { mulberry32 } from "../lib/random.ts";
import { TINY_CLI_FLAGS } from "./helpers.ts";

const CLI = new URL("../lib/cli.ts", import.meta.url).pathname;
const dir = await Deno.makeTempDir();
const trainCsv = `${dir}/train.csv`;
const valCsv = `${dir}/val.csv`;
await Deno.writeTextFile(trainCsv, rowsToCsv(makeRows(3, 1, "train", 24)));
await Deno.writeTextFile(valCsv, rowsToCsv(makeRows(3, 1, "val", 4)));
const DATA = ["--data", trainCsv, "--val", valCsv, "--batch", "4", "--eval-iters", "1", "--img-size", "32"];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function spawn(args: string[], env: Record<string, string> = {}): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

async function finish(
  child: Deno.ChildProcess,
): Promise<{ status: Deno.CommandStatus; out: string; err: string }> {
  const [status, out, err] = await Promise.all([
    child.status,
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
  ]);
  return { status, out, err };
}

async function cli(...args: string[]) {
  return await finish(spawn(args));
}

/** The step of the run folder's last complete save (read through a pending commit, as --resume does). */
async function savedStep(run: string): Promise<number | undefined> {
  try {
    return JSON.parse(new TextDecoder().decode(await readCommitted(run, "train_state.json"))).step;
  } catch {
    return undefined;
  }
}

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

/** What a crash left in the folder: a commit record (with temporaries not yet renamed), temporaries, or neither. */
function folderState(run: string): string {
  const names = [...Deno.readDirSync(run)].map((e) => e.name);
  const temps = names.filter((n) => n.endsWith(".tmp")).length;
  if (names.includes(COMMIT_FILE)) return `inside a commit (${temps} renames left)`;
  return temps > 0 ? `while writing temporaries (${temps})` : "between saves";
}

/** Polls `ready` until it holds; fails, with the child's output, if the child exits first. */
async function waitFor(
  ready: () => Promise<boolean>,
  child: { exited: boolean; err: () => Promise<string> },
) {
  while (!(await ready())) {
    if (child.exited) assert.fail(`the child exited early:\n${await child.err()}`);
    await sleep(2);
  }
}

Deno.test("SIGKILL at random moments, also inside saves: each folder loads and resumes, to the uninterrupted run's weights", async () => {
  const STEPS = 60; // more than six children get through (each makes a few steps before its kill)
  const args = [
    ...DATA,
    ...TINY_CLI_FLAGS,
    "--steps",
    `${STEPS}`,
    "--eval-interval",
    "5",
    "--save-interval",
    "2",
  ];
  const reference = cli("train", ...args, "--out", `${dir}/reference`); // runs alongside the kills
  const run = `${dir}/killed`;
  // SEEMORE_TEST_SLOW_SAVE_MS (a test hook of lib/checkpoint.ts) sleeps between the steps of each save, so
  // that saves take a good part of the time and a kill can be aimed between two renames.
  const slow = { SEEMORE_TEST_SLOW_SAVE_MS: "40" };
  const rand = mulberry32(20261206);
  const log: string[] = [];
  let step = 0;
  for (let kill = 0; kill < 6; kill++) {
    const child = spawn(["train", ...args, ...(kill === 0 ? ["--out", run] : ["--resume", run])], slow);
    const output = finish(child);
    const watch = { exited: false, err: async () => (await output).err };
    output.then(() => watch.exited = true);
    // Wait for this child's first save (for a resumed child, proof that it continued), then pick a moment.
    await waitFor(async () => (await savedStep(run) ?? 0) > step, watch);
    const inSave = kill % 2 === 1;
    if (inSave) { // the commit record exists: the renames are under way (≥ 6 pauses of 40 ms)
      await waitFor(() => exists(`${run}/${COMMIT_FILE}`), watch);
      await sleep(rand() * 120);
    } else { // anywhere: in a step, an evaluation or a save
      await sleep(rand() * 800);
    }
    child.kill("SIGKILL");
    const { status, err } = await output;
    assert.equal(status.signal, "SIGKILL", `kill ${kill}: the child ended before it was killed\n${err}`);
    const state = folderState(run);

    const e = await cli("eval", "--ckpt", run, "--data", valCsv, "--json");
    assert.equal(e.status.code, 0, `kill ${kill} (${state}): eval fails\n${e.err}`);
    assert.equal(JSON.parse(e.out).n, 4);
    const now = (await savedStep(run))!;
    assert(now > step, `kill ${kill}: the folder went back from step ${step} to ${now}`);
    step = now;
    log.push(`kill ${kill} ${inSave ? "(aimed at a save)" : "(anywhere)       "} at step ${step}: ${state}`);
  }
  assert(
    log.some((l) => l.includes("inside a commit")),
    `no kill landed inside a commit:\n${log.join("\n")}`,
  );
  const last = await cli("train", ...args, "--resume", run);
  assert.equal(last.status.code, 0, last.err);
  assert.equal(await savedStep(run), STEPS);
  const ref = await reference;
  assert.equal(ref.status.code, 0, ref.err);
  // Bit-identical weights and moments: every resume started from one whole save (a model from one step
  // with the optimizer of another would drift).
  for (const f of ["model.safetensors", "optimizer.safetensors"]) {
    const [a, b] = [await Deno.readFile(`${run}/${f}`), await Deno.readFile(`${dir}/reference/${f}`)];
    assert(
      a.length === b.length && a.every((x, i) => x === b[i]),
      `${f} differs from the uninterrupted run's`,
    );
  }
  console.log(`${log.length} kills survived:\n  ${log.join("\n  ")}`);
});

Deno.test("Ctrl-C saves and exits with the line to continue; --resume then finishes", async () => {
  const run = `${dir}/sigint`;
  // No saves on the way (--save-interval 0): the folder can only come from the save that Ctrl-C makes.
  const child = spawn([
    "train",
    ...DATA,
    ...TINY_CLI_FLAGS,
    "--steps",
    "100000",
    "--save-interval",
    "0",
    "--out",
    run,
  ]);
  // Wait until training has taken a step (the progress line), then interrupt.
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!/train \[/.test(seen)) {
    const { value, done } = await reader.read();
    if (done) assert.fail(`the child exited early:\n${seen}`);
    seen += value;
  }
  child.kill("SIGINT");
  const drain = (async () => {
    for (let r = await reader.read(); !r.done; r = await reader.read()) seen += r.value;
  })();
  const [status, out] = await Promise.all([child.status, new Response(child.stdout).text(), drain]);
  assert.equal(status.code, 0, seen);
  const said = out.match(/interrupted at step (\d+); saved to (.*) \(continue with --resume (.*)\)/);
  assert(said, out);
  assert.deepEqual([said[2], said[3]], [run, run]);
  const step = Number(said[1]);
  assert.equal(await savedStep(run), step, "the folder holds the step it stopped at");
  assert.deepEqual(
    [...Deno.readDirSync(run)].filter((e) => e.name.startsWith(".")),
    [],
    "no commit left over",
  );

  const resumed = await cli("train", ...DATA, "--steps", `${step + 2}`, "--resume", run);
  assert.equal(resumed.status.code, 0, resumed.err);
  assert.match(resumed.out, /checkpoint: /);
  assert.equal(await savedStep(run), step + 2);
});

Deno.test("a NaN loss stops the run: exit status 1, an error naming the step and loss, the last save kept", async () => {
  const run = `${dir}/nan`;
  // A learning rate of 1e30 takes the weights to ≈ 1e30 in step 1 (saved: its loss was fine); the forward
  // pass of step 2 overflows.
  const r = await cli(
    "train",
    ...DATA,
    ...TINY_CLI_FLAGS,
    "--steps",
    "10",
    "--lr",
    "1e30",
    "--warmup",
    "0",
    "--save-interval",
    "1",
    "--out",
    run,
  );
  assert.equal(r.status.code, 1, r.err);
  assert.match(
    r.err,
    /error: training stopped: the loss of step 2 is (NaN|-?Infinity) \(.*nan keeps step 1\)/,
  );
  assert.equal(await savedStep(run), 1);
  const e = await cli("eval", "--ckpt", run, "--data", valCsv, "--json");
  assert.equal(e.status.code, 0, e.err);
});
