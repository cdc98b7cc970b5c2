// The data sets bundled in data/: `--data shapes2` names the folder data/shapes2/, whose train.csv,
// val.csv and test.csv are the three splits. Anything else given to --data is a CSV path, as before.

import { join } from "node:path";

/** The folder holding the bundled data sets (data/ at the repository root). */
export const DATA_ROOT = new URL("../../data/", import.meta.url).pathname;

/** What `train` uses without --data: level 1, one object per scene. */
export const DEFAULT_DATA = "shapes";

/** The CSV files of a run: training data, and the validation and test splits when there are any. */
export interface DataPaths {
  data: string;
  val?: string;
  test?: string;
}

/** A bundled name is a bare word (letters, digits, '_', '-'): no '/', no '.', so never a CSV path. */
export function isBundledName(value: string): boolean {
  return /^[A-Za-z0-9_-]+$/.test(value);
}

/** Names of the bundled data sets: the folders of `root` that hold a train.csv. */
export function bundledNames(root = DATA_ROOT): string[] {
  const names: string[] = [];
  for (const entry of Deno.readDirSync(root)) {
    if (entry.isDirectory && isFile(join(root, entry.name, "train.csv"))) names.push(entry.name);
  }
  return names.sort();
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** The three split files of a bundled data set; an unknown name or a missing file is an error naming it. */
export function bundledSplits(name: string, root = DATA_ROOT): Required<DataPaths> {
  const folder = join(root, name);
  if (!isFile(join(folder, "train.csv"))) {
    throw new Error(
      `--data ${name}: no bundled data set of that name in ${root} (bundled: ${
        bundledNames(root).join(", ")
      }; ` +
        `a CSV file is given by its path, e.g. ./${name}.csv)`,
    );
  }
  const paths = {
    data: join(folder, "train.csv"),
    val: join(folder, "val.csv"),
    test: join(folder, "test.csv"),
  };
  for (const path of Object.values(paths)) {
    if (!isFile(path)) throw new Error(`--data ${name}: the bundled data set lacks ${path}`);
  }
  return paths;
}

/**
 * The files `train` reads: a bundled name gives its three splits (--val / --test, when given, replace
 * its own); a CSV path gives just itself, with --val / --test as given.
 */
export function resolveTrainData(
  data: string = DEFAULT_DATA,
  val?: string,
  test?: string,
  root = DATA_ROOT,
): DataPaths {
  if (!isBundledName(data)) return { data, val, test };
  const splits = bundledSplits(data, root);
  return { data: splits.data, val: val ?? splits.val, test: test ?? splits.test };
}

/** The file `eval` scores: a bundled name gives its test split; a CSV path gives itself. */
export function resolveEvalData(data: string, root = DATA_ROOT): string {
  return isBundledName(data) ? bundledSplits(data, root).test : data;
}
