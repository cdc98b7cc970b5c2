// Tests of --data's bundled names (lib/data/bundled.ts): a bare name gives data/NAME/'s three splits,
// a CSV path gives itself, and an unknown name or a missing split is an error naming it.

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  bundledNames,
  DATA_ROOT,
  isBundledName,
  resolveEvalData,
  resolveTrainData,
} from "../../lib/data/bundled.ts";

const split = (name: string, file: string) => join(DATA_ROOT, name, file);

Deno.test("--data shapes2 (and the default, shapes) gives the bundled train, val and test files", () => {
  assert.deepEqual(bundledNames(), ["shapes", "shapes2"]);
  for (const name of ["shapes", "shapes2"]) {
    const paths = resolveTrainData(name);
    assert.deepEqual(paths, {
      data: split(name, "train.csv"),
      val: split(name, "val.csv"),
      test: split(name, "test.csv"),
    });
    for (const path of Object.values(paths)) assert.ok(Deno.statSync(path).isFile, path);
    assert.equal(resolveEvalData(name), split(name, "test.csv"));
  }
  assert.deepEqual(resolveTrainData(), resolveTrainData("shapes"), "no --data: the level-1 set");
  // --val / --test replace the bundled set's own
  assert.deepEqual(resolveTrainData("shapes2", "my/val.csv"), {
    data: split("shapes2", "train.csv"),
    val: "my/val.csv",
    test: split("shapes2", "test.csv"),
  });
  assert.deepEqual(resolveTrainData("shapes2", undefined, "t.csv").test, "t.csv");
});

Deno.test("a CSV path is read as before: no bundled val or test", () => {
  for (const path of ["train.csv", "./shapes2", "data/shapes2/train.csv", "/tmp/x.csv"]) {
    assert.equal(isBundledName(path), false, path);
    assert.deepEqual(resolveTrainData(path), { data: path, val: undefined, test: undefined });
    assert.equal(resolveEvalData(path), path);
  }
  assert.deepEqual(resolveTrainData("a.csv", "v.csv", "t.csv"), {
    data: "a.csv",
    val: "v.csv",
    test: "t.csv",
  });
});

Deno.test("an unknown bundled name or a missing split is an error naming it", async () => {
  assert.throws(
    () => resolveTrainData("shapes3"),
    (e: Error) =>
      e.message.includes("--data shapes3: no bundled data set of that name") &&
      e.message.includes("bundled: shapes, shapes2") && e.message.includes("./shapes3.csv"),
  );
  assert.throws(() => resolveEvalData("nope"), /--data nope: no bundled data set/);
  const root = await Deno.makeTempDir();
  try {
    await Deno.mkdir(join(root, "half"));
    await Deno.writeTextFile(join(root, "half", "train.csv"), "b64string_images,caption\n");
    await Deno.writeTextFile(join(root, "half", "val.csv"), "b64string_images,caption\n");
    await Deno.mkdir(join(root, "empty"));
    assert.deepEqual(bundledNames(root), ["half"]);
    assert.throws(
      () => resolveTrainData("half", undefined, undefined, root),
      (e: Error) => e.message === `--data half: the bundled data set lacks ${join(root, "half", "test.csv")}`,
    );
    assert.throws(() => resolveEvalData("empty", root), /--data empty: no bundled data set .*bundled: half/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
