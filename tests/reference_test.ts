// The committed fixtures are what the original PyTorch code computes: each script that made one is run
// again on the vendored original (tests/fixtures/reference) into a temporary folder, and the outputs are
// compared with the files the other tests read. Needs Debian's python3-torch; skipped without it, failed
// without it where SEEMORE_REQUIRE_TORCH=1 (CI).

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { maxAbsDiff, PYTHON, REQUIRE_TORCH, torchMissing } from "./helpers.ts";

const missing = await torchMissing();
const FIXTURES = fileURLToPath(new URL("./fixtures/", import.meta.url));

/** Runs one of the fixture scripts with `args` and fails with its stderr if it fails. */
async function python(script: string, ...args: string[]): Promise<void> {
  const r = await new Deno.Command(PYTHON, {
    args: [FIXTURES + script, ...args],
    stdout: "null",
    stderr: "piped",
  })
    .output();
  assert(r.success, `${script}: ${new TextDecoder().decode(r.stderr)}`);
}

function originalTest(name: string, fn: (dir: string) => Promise<void>): void {
  Deno.test({
    name,
    ignore: missing !== "" && !REQUIRE_TORCH,
    fn: async () => {
      assert(missing === "", `SEEMORE_REQUIRE_TORCH=1: ${missing}`);
      const dir = await Deno.makeTempDir();
      try {
        await fn(dir);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

originalTest("state_dict_keys.json is the vendored original's state_dict and vocabulary", async (dir) => {
  await python("reference/make_state_dict_keys.py", `${dir}/keys.json`);
  assert.deepEqual(
    await Deno.readFile(`${dir}/keys.json`),
    await Deno.readFile(`${FIXTURES}reference/state_dict_keys.json`),
  );
});

originalTest("pil_reference.json is what the original's base64_to_tensor gives", async (dir) => {
  await python("data/make_pil_reference.py", `${dir}/pil.json`);
  assert.deepEqual(
    await Deno.readFile(`${dir}/pil.json`),
    await Deno.readFile(`${FIXTURES}data/pil_reference.json`),
  );
});

originalTest("the parity fixtures are what the original seemore.py and seeMoE.py compute", async (dir) => {
  await python("make_parity_fixture.py", "--out", dir);
  for (const model of ["seemore", "seemoe"]) {
    const ours = `${FIXTURES}parity/${model}`, again = `${dir}/${model}`;
    // Weights come from seeded generators: the same bits.
    for (const file of ["config.json", "model.safetensors"]) {
      assert.deepEqual(await Deno.readFile(`${again}/${file}`), await Deno.readFile(`${ours}/${file}`), file);
    }
    // Outputs go through torch's BLAS, whose kernels (OPENBLAS_CORETYPE) round the last bits differently.
    const want = JSON.parse(await Deno.readTextFile(`${ours}/io.json`));
    const got = JSON.parse(await Deno.readTextFile(`${again}/io.json`));
    assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort());
    for (const key of ["images", "images_shape", "idx", "targets", "logits_shape", "image_embeds_shape"]) {
      assert.deepEqual(got[key], want[key], `${model} io.json ${key}`);
    }
    for (const key of ["logits", "image_embeds"]) {
      const d = maxAbsDiff(got[key], want[key]);
      assert(d < 1e-5, `${model} io.json ${key}: max |diff| ${d}`);
    }
    for (const key of ["loss_original", "loss_ignore_pad"]) {
      assert(Math.abs(got[key] - want[key]) < 1e-5, `${model} io.json ${key}: ${got[key]} vs ${want[key]}`);
    }
  }
});
