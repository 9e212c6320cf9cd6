// Host tools the lab runs to completion (apt-get, dpkg-deb, depmod, cpio…): stdout as bytes, a
// failure as an error carrying the tool's stderr.
export async function runTool(
  cmd: string,
  args: string[],
  opts: { cwd?: string; stdin?: Uint8Array } = {},
): Promise<Uint8Array> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: opts.cwd,
    stdin: opts.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Feed stdin while output is being read: a large output would otherwise fill the pipe and
  // deadlock both sides.
  const feeding = opts.stdin
    ? (async () => {
      const w = child.stdin.getWriter();
      await w.write(opts.stdin!);
      await w.close();
    })()
    : undefined;
  const out = await child.output();
  await feeding;
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (rc ${out.code}): ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return out.stdout;
}

/** runTool's stdout as text. */
export async function runText(cmd: string, args: string[], cwd?: string): Promise<string> {
  return new TextDecoder().decode(await runTool(cmd, args, { cwd }));
}
