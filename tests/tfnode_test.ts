// tfjs-node-gpu's failures are one line each, naming the missing piece and the fix: package not
// installed, install script unfinished (no libtensorflow or addon), CUDA libraries not found, no
// driver, no GPU. The package layouts are built in a temporary folder as an unfinished install leaves
// them; the library checks dlopen real libraries (libc stands in for one that is present).

import assert from "node:assert/strict";
import { initBackend } from "../lib/backend.ts";
import { tfNodeCheck, tfNodeProblem } from "../lib/tfnode/check.ts";

const PKG = "@tensorflow/tfjs-node-gpu";

/** A project folder whose node_modules holds tfjs-node-gpu with the given files (relative to it). */
async function project(files: string[]): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "seemore-tfnode-" });
  for (const f of files) {
    const path = `${root}/node_modules/${PKG}/${f}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(path, f === "package.json" ? `{"name":"${PKG}","version":"4.22.0"}` : "");
  }
  return `${root}/`;
}

const COMPLETE = ["package.json", "deps/lib/libtensorflow.so.2.9.1", "lib/napi-v8/tfjs_binding.node"];

function oneLine(problem: string | null): string {
  assert(problem !== null, "a problem is reported");
  assert(!problem.includes("\n"), `one line: ${problem}`);
  return problem;
}

Deno.test("tfjs-node-gpu: each missing piece is reported in one line with its fix", async () => {
  const roots: string[] = [];
  const at = async (files: string[]) => {
    roots.push(await project(files));
    return roots.at(-1)!;
  };
  try {
    assert.match(
      oneLine(tfNodeProblem("tensorflow-gpu", { root: await at([]) })),
      /^npm package @tensorflow\/tfjs-node-gpu is not installed \(install it with: deno install --allow-scripts=npm:@tensorflow\/tfjs-node-gpu@4\.22\.0 /,
    );
    // What `npm i --ignore-scripts` or a failed download leaves: the package, nothing native.
    assert.equal(
      oneLine(tfNodeProblem("tensorflow-gpu", { root: await at(["package.json"]) })),
      "@tensorflow/tfjs-node-gpu is installed but its install script did not finish: libtensorflow 2.9.1 " +
        "(deps/lib) and its addon (lib/napi-v*) missing; retry with: rm -f " +
        "node_modules/.deno/@tensorflow+tfjs-node-gpu@4.22.0/.scripts-run && " +
        "deno install --allow-scripts=npm:@tensorflow/tfjs-node-gpu@4.22.0",
    );
    assert.match(
      oneLine(tfNodeProblem("tensorflow-gpu", { root: await at(COMPLETE.slice(0, 2)) })),
      /did not finish: its addon \(lib\/napi-v\*\) missing;/,
    );
    const complete = await at(COMPLETE);
    assert.equal(
      oneLine(
        tfNodeProblem("tensorflow-gpu", {
          root: complete,
          libraries: ["libc.so.6", "libseemore-absent.so.11"],
        }),
      ),
      "CUDA 11 / cuDNN 8 runtime libraries not found: libseemore-absent.so.11 (TensorFlow would run on the CPU; " +
        "install them or add their folder to LD_LIBRARY_PATH)",
    );
    const found = { root: complete, libraries: ["libc.so.6"] };
    assert.equal(
      oneLine(tfNodeProblem("tensorflow-gpu", { ...found, driver: "libseemore-absent.so.1" })),
      "no NVIDIA driver: libseemore-absent.so.1 not found",
    );
    assert.equal(
      oneLine(
        tfNodeProblem("tensorflow-gpu", { ...found, driver: "libc.so.6", device: "/nonexistent/nvidia0" }),
      ),
      "no NVIDIA GPU visible (/nonexistent/nvidia0 missing; in a container, start it with --gpus all)",
    );
    assert.equal(
      tfNodeProblem("tensorflow-gpu", { ...found, driver: "libc.so.6", device: "/dev/null" }),
      null,
    );
    // The CPU package needs no CUDA.
    assert.equal(tfNodeProblem("tensorflow", { root: await at([]) })?.startsWith("npm package"), true);
    // The stage each failure stands at (setup --gpu installs the first two, reports the rest).
    const stage = async (files: string[], o = {}) =>
      tfNodeCheck("tensorflow-gpu", { root: await at(files), ...o }).stage;
    assert.equal(await stage([]), "package");
    assert.equal(await stage(["package.json"]), "script");
    assert.equal(await stage(COMPLETE, { libraries: ["libseemore-absent.so.11"] }), "libraries");
    assert.equal(await stage(COMPLETE, { libraries: [], driver: "libseemore-absent.so.1" }), "driver");
    assert.equal(
      await stage(COMPLETE, { libraries: [], driver: "libc.so.6", device: "/nonexistent" }),
      "device",
    );
    assert.equal(await stage(COMPLETE, { libraries: [], driver: "libc.so.6", device: "/dev/null" }), "ready");
  } finally {
    for (const r of roots) await Deno.remove(r, { recursive: true });
  }
});

Deno.test("--backend tensorflow-gpu without the package: one line saying how to install it", async () => {
  const problem = tfNodeProblem("tensorflow-gpu");
  if (problem === null || !problem.startsWith("npm package")) return; // installed here: nothing to check
  await assert.rejects(() => initBackend("tensorflow-gpu"), (e: Error) => {
    assert.equal(e.message, `backend tensorflow-gpu is not available: ${problem}`);
    assert(!e.message.includes("\n"));
    return true;
  });
});
