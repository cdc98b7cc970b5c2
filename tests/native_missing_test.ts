// Without the native libraries (no OpenBLAS, no oneDNN, no C compiler) the tests still pass: the native
// ones are ignored and one line says why, unless SEEMORE_REQUIRE_NATIVE=1 (as in CI), which fails them.
// A child process sees the libraries and the compiler as unreadable files (a private mount namespace
// with /dev/null bound over them), and an empty kernel cache, as a fresh machine would.

import assert from "node:assert/strict";
import { hideFromChild, hidingAvailable } from "./hide.ts";

const FILES = ["tests/blas/fused_test.ts", "tests/blas/matmul_test.ts"];
const why = await hidingAvailable();
const required = Deno.env.get("CI") === "true";

async function testWithoutNative(env: Record<string, string>) {
  const cache = await Deno.makeTempDir();
  try {
    return await hideFromChild(["libopenblas.so.0", "libdnnl.so.2", "cc"], Deno.execPath(), {
      args: ["test", "--allow-all", ...FILES],
      env: { ...env, SEEMORE_CACHE_DIR: cache, NO_COLOR: "1" },
    });
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
}

Deno.test({
  name: `without OpenBLAS, oneDNN and a compiler the native tests are skipped with one line saying why${
    why ? ` (skipped: ${why})` : ""
  }`,
  ignore: why !== null && !required,
  async fn() {
    if (why) throw new Error(why);
    const plain = await testWithoutNative({ SEEMORE_REQUIRE_NATIVE: "0", SEEMORE_REQUIRE_ONEDNN: "0" });
    assert.equal(plain.code, 0, plain.output);
    const lines = plain.output.split("\n").filter((l) => l.startsWith("native tests skipped: "));
    // one line per test file (each file loads the helpers once), the same line each time
    assert.ok(lines.length >= 1 && lines.length <= FILES.length, plain.output);
    assert.equal(new Set(lines).size, 1, lines.join("\n"));
    assert.match(lines[0], /OpenBLAS not found .*apt-get install libopenblas0-pthread/);
    assert.match(plain.output, /\| \d+ passed \| 0 failed \| \d+ ignored/);

    const strict = await testWithoutNative({ SEEMORE_REQUIRE_NATIVE: "1", SEEMORE_REQUIRE_ONEDNN: "0" });
    assert.notEqual(strict.code, 0, "SEEMORE_REQUIRE_NATIVE=1 turns the missing libraries into a failure");
    assert.match(strict.output, /OpenBLAS loads and the C kernels compile .* FAILED/);
  },
});
