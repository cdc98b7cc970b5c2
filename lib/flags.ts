// Command-line flags: the config keys' flags (lib/config.ts declares them) and each command's own, parsed
// into settings and printed as grouped --help, each flag with its default and a line of help.

import { parseArgs } from "node:util";
import { checkValue, type Group, type KeySpec, MODEL_KEYS, TRAIN_KEYS } from "./config.ts";

/** A bad command line: the CLI exits with status 2 and the usage hint. */
export class UsageError extends Error {}

/** A flag that is not a config key. */
export interface FlagSpec {
  help: string;
  group: Group;
  /** What the value is, for --help ("CSV", "DIR"); absent: a switch that takes no value. */
  value?: string;
  /** Shown as the default in --help. */
  default?: string;
}

/** One command's flags: its own, and the config keys it accepts. */
export interface Command {
  name: string;
  summary: string;
  flags: Record<string, FlagSpec>;
  /** Accept every config key with a flag (train). */
  configFlags?: boolean;
}

const GROUP_TITLES: Record<Group, string> = {
  data: "data",
  model: "model",
  recipe: "recipe (the seeing recipe's switches; --recipe original turns them all off)",
  seemoe: "seeMoE (--model seemoe)",
  training: "training",
  sampling: "sampling",
  output: "output",
};

type ConfigFlag = { key: string; spec: KeySpec<unknown>; scope: "model" | "train" };

/** Every config key that has a flag, by flag. */
export const CONFIG_FLAGS: Map<string, ConfigFlag> = new Map(
  [
    ...Object.entries(MODEL_KEYS).map(([key, spec]) => ({ key, spec, scope: "model" as const })),
    ...Object.entries(TRAIN_KEYS).map(([key, spec]) => ({ key, spec, scope: "train" as const })),
  ].filter((f) => (f.spec as KeySpec<unknown>).flag).map((
    f,
  ) => [(f.spec as KeySpec<unknown>).flag!, f as ConfigFlag]),
);

/** What a command line says: its own flags' values, and config values by scope. */
export interface ParsedFlags {
  own: Record<string, string | boolean | undefined>;
  model: Record<string, unknown>;
  train: Record<string, unknown>;
  help: boolean;
}

const isSwitch = (name: string, command: Command): boolean => {
  if (name === "help") return true;
  const own = command.flags[name];
  if (own) return own.value === undefined;
  const config = command.configFlags ? CONFIG_FLAGS.get(name) : undefined;
  return typeof config?.spec.default === "boolean";
};

/**
 * A boolean flag may be written `--x`, `--x true|false`, `--x=false` or `--no-x`; this turns every form
 * into `--x=true|false` for parseArgs.
 */
function normaliseSwitches(args: string[], command: Command): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const name = arg.startsWith("--") ? arg.slice(2).split("=")[0] : "";
    const negated = name.startsWith("no-") && isSwitch(name.slice(3), command);
    if (negated) out.push(`--${name.slice(3)}=false`);
    else if (!isSwitch(name, command) || arg.includes("=")) out.push(arg);
    else if (i + 1 < args.length && !args[i + 1].startsWith("--")) out.push(`--${name}=${args[++i]}`);
    else out.push(`--${name}=true`);
  }
  return out;
}

/** Parses a command line; errors are UsageErrors that name the flag. */
export function parseFlags(args: string[], command: Command): ParsedFlags {
  const names = [...Object.keys(command.flags), ...(command.configFlags ? CONFIG_FLAGS.keys() : []), "help"];
  const options = Object.fromEntries(names.map((n) => [n, { type: "string" as const }]));
  let values: Record<string, string | undefined>;
  try {
    values = parseArgs({ args: normaliseSwitches(args, command), options, strict: true }).values;
  } catch (e) {
    throw new UsageError(
      `${(e as Error).message.split("\n")[0]} (deno task ${command.name} --help lists them)`,
    );
  }
  if (values.help !== undefined && values.help !== "true" && values.help !== "false") {
    throw new UsageError(`--help takes no value`);
  }
  const parsed: ParsedFlags = { own: {}, model: {}, train: {}, help: values.help === "true" };
  for (const [name, raw] of Object.entries(values)) {
    if (raw === undefined || name === "help") continue;
    const own = command.flags[name];
    if (own) {
      if (own.value === undefined && raw !== "true" && raw !== "false") {
        throw new UsageError(`--${name} must be true or false, not "${raw}"`);
      }
      parsed.own[name] = own.value === undefined ? raw === "true" : raw;
      continue;
    }
    const { key, spec, scope } = CONFIG_FLAGS.get(name)!;
    try {
      parsed[scope][key] = checkValue(key, spec, raw, `--${name}`, true);
    } catch (e) {
      throw new UsageError((e as Error).message.replace(`--${name}: "${key}"`, `--${name}`));
    }
  }
  return parsed;
}

/** A number flag of a command's own (not a config key). */
export function numberFlag(parsed: ParsedFlags, name: string, fallback: number): number {
  const raw = parsed.own[name];
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (typeof raw !== "string" || raw.trim() === "" || !Number.isFinite(n)) {
    throw new UsageError(`--${name} expects a number, got "${raw}"`);
  }
  return n;
}

/** --help: the command's flags by group, each with its value, default and help. */
export function usage(command: Command, defaults: (key: string) => string = () => ""): string {
  const rows = new Map<Group, [string, string][]>();
  const add = (group: Group, left: string, help: string) =>
    rows.set(group, [...(rows.get(group) ?? []), [left, help]]);
  for (const [name, f] of Object.entries(command.flags)) {
    add(
      f.group,
      `--${name}${f.value ? ` ${f.value}` : ""}`,
      f.help + (f.default ? ` (default ${f.default})` : ""),
    );
  }
  if (command.configFlags) {
    for (const [flag, { key, spec }] of CONFIG_FLAGS) {
      const value = spec.choices
        ? spec.choices.join("|")
        : typeof spec.default === "boolean"
        ? ""
        : spec.integer
        ? "N"
        : "X";
      add(
        spec.group,
        `--${flag}${value ? ` ${value}` : ""}`,
        `${spec.help} (default ${defaults(key) || (spec.defaultText ?? String(spec.default))})`,
      );
    }
  }
  const width = Math.max(...[...rows.values()].flat().map(([left]) => left.length)) + 2;
  const sections = (Object.keys(GROUP_TITLES) as Group[]).filter((g) => rows.has(g)).map((g) =>
    [`${GROUP_TITLES[g]}:`, ...rows.get(g)!.map(([left, help]) => `  ${left.padEnd(width)}${help}`)].join(
      "\n",
    )
  );
  const help = `  ${"--help".padEnd(width)}this list`;
  return [`usage: deno task ${command.name} [options]`, command.summary, ...sections, help].join("\n\n");
}
