// iproute2's `ip`, run as a child: `args`, or with `batch` its commands fed on stdin (`-batch -`,
// one process for many changes). Throws ip's own message when it fails.
export async function runIp(args: string[], batch?: string): Promise<string> {
  const child = new Deno.Command("ip", {
    args: batch === undefined ? args : [...args, "-batch", "-"],
    stdin: batch === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (batch !== undefined) {
    const w = child.stdin.getWriter();
    // (should ip exit early, its status says why)
    await w.write(new TextEncoder().encode(batch)).then(() => w.close()).catch(() => {});
  }
  const out = await child.output();
  if (!out.success) {
    throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout);
}
