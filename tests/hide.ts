// Runs a child process that cannot see some shared libraries or programs: a private mount namespace
// (`unshare --mount`, root only) in which /dev/null is bound over each one's real file. Tests of what a
// machine without OpenBLAS, oneDNN or a compiler does use it; the files stay as they are for everyone else.

/** Why hiding cannot work here (not root, no unshare), or null when it can. */
export async function hidingAvailable(): Promise<string | null> {
  if (Deno.build.os !== "linux") return "hiding libraries needs Linux mount namespaces";
  try {
    const probe = await new Deno.Command("unshare", { args: ["--mount", "true"], stderr: "piped" }).output();
    return probe.success
      ? null
      : `unshare --mount is not permitted here (${new TextDecoder().decode(probe.stderr).trim()})`;
  } catch {
    return "unshare is not installed";
  }
}

/** The real file behind a library name (from ldconfig's cache) or a program on PATH, with links resolved. */
export async function realFile(name: string): Promise<string> {
  const text = async (cmd: string, args: string[]) =>
    new TextDecoder().decode((await new Deno.Command(cmd, { args, stdout: "piped" }).output()).stdout);
  let path: string | undefined;
  if (name.includes(".so")) {
    const line = (await text("ldconfig", ["-p"])).split("\n").find((l) => l.trim().startsWith(`${name} `));
    path = line?.split("=>")[1]?.trim();
  } else {
    path = (await text("sh", ["-c", `command -v ${name}`])).trim() || undefined;
  }
  if (!path) throw new Error(`tests/hide.ts: ${name} is not on this machine, nothing to hide`);
  return await Deno.realPath(path);
}

/**
 * Runs `command args` with `names` (library sonames or programs) unreadable; output is stdout + stderr,
 * also given apart.
 */
export async function hideFromChild(
  names: string[],
  command: string,
  opts: { args: string[]; env?: Record<string, string>; cwd?: string },
): Promise<{ code: number; output: string; stdout: string; stderr: string }> {
  const files = await Promise.all(names.map(realFile));
  const mounts = files.map((f) => `mount --bind /dev/null '${f}'`);
  const out = await new Deno.Command("unshare", {
    args: ["--mount", "sh", "-c", [...mounts, 'exec "$@"'].join(" && "), "sh", command, ...opts.args],
    env: opts.env,
    cwd: opts.cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  const [stdout, stderr] = [dec.decode(out.stdout), dec.decode(out.stderr)];
  return { code: out.code, output: stdout + stderr, stdout, stderr };
}
