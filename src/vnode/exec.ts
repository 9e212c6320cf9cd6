// Running the host tools vnodes need (ip, sfdisk, mkfs.*, qemu): a missing tool is a clear error
// naming the Debian package to install; a failing one reports its stderr.
import { UserError } from "../errors.ts";

/** Debian package providing each tool (for the "install X" hint). */
export const packageOf: Record<string, string> = {
  "qemu-system-x86_64": "qemu-system-x86",
  ip: "iproute2",
  sfdisk: "fdisk",
  "mkfs.ext4": "e2fsprogs",
  "mkfs.vfat": "dosfstools",
  truncate: "coreutils",
};

export function missingTool(tool: string): UserError {
  const pkg = packageOf[tool];
  return new UserError(
    `${tool} not found${pkg ? `: install the Debian package ${pkg} (apt-get install ${pkg})` : ""}`,
    503,
  );
}

/** Runs a tool to completion; returns stdout. Throws UserError on a missing tool or non-zero exit. */
export async function runTool(
  tool: string,
  args: string[],
  opts: { stdin?: string; env?: Record<string, string> } = {},
): Promise<string> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(tool, {
      args,
      stdin: opts.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
      env: opts.env,
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw missingTool(tool);
    throw e;
  }
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  if (!out.success) {
    const err = dec.decode(out.stderr).trim() || dec.decode(out.stdout).trim();
    throw new Error(`${tool} ${args.join(" ")} failed (exit ${out.code}): ${err}`);
  }
  return dec.decode(out.stdout);
}

/** True when `tool` is on PATH (used to fail early, before creating anything). */
export function haveTool(tool: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${tool}`).isFile) return true;
    } catch { /* next */ }
  }
  return false;
}
