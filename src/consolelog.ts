// A node's console logs, whoever writes them: qemu's serial chardev for a virtual node
// (`vm/console.log`, rotated when the VM starts) or the netconsole receiver for any node with
// `console.netconsole=true` (`console/netconsole.log`, rotated as it grows, src/netconsole.ts).
// Both are bounded the same way (one file up to `consoleRotateBytes`, then it becomes `.1`,
// replacing the older one; the serial one is also checked while its VM runs, src/vnode/manager.ts)
// and read the same way, by GET /api/v1/nodes/:ref/console:
//   GET /nodes/:ref/console?offset=N[&source=serial|netconsole]   {text, offset, source}
//       text from byte N; offset = where the next read starts; a log rotated since (shorter than
//       N) restarts at 0. Without source: the netconsole log when the node has
//       console.netconsole=true, else a virtual node's serial console. Always needs the API
//       token: both show the kernel command line, whose per-boot token would let anyone forge
//       the node's boot reports.
import { join } from "node:path";
import type { Hono } from "hono";
import { bearerAuth } from "./api.ts";
import { apiRouter } from "./apierror.ts";
import type { Context } from "./context.ts";
import type { DataDir } from "./datadir.ts";
import { UserError } from "./errors.ts";

export const CONSOLE_SOURCES = ["serial", "netconsole"] as const;
export type ConsoleSource = typeof CONSOLE_SOURCES[number];

/** A console log past this size becomes `<log>.1`: at most twice this per node and source. */
export const consoleRotateBytes = 16 * 1024 * 1024;

/** At most this much console text per answer; followers come back for the rest. */
const consoleChunk = 1024 * 1024;

export function consoleLogPath(data: DataDir, mac: string, source: ConsoleSource): string {
  return source === "serial"
    ? join(data.vm(mac), "console.log")
    : join(data.console(mac), "netconsole.log");
}

/** Moves `path` to `path.1` (replacing it) when `path` plus `incoming` bytes would pass `limit`;
 *  returns the size `path` has afterwards. */
export async function rotateConsole(
  path: string,
  incoming = 0,
  limit = consoleRotateBytes,
): Promise<number> {
  const size = await Deno.stat(path).then((s) => s.size, () => 0);
  if (size === 0 || size + incoming <= limit) return size;
  await Deno.rename(path, `${path}.1`);
  return 0;
}

/** Reads the console log from `offset`; a log rotated (shorter than offset) restarts at 0.
 *  `size`: the log's size when read, so a reader knows whether more is waiting (a read's text
 *  is at most 1 MiB of bytes, fewer characters) and where the log ended when it began reading. */
export async function readConsole(
  path: string,
  offset: number,
): Promise<{ text: string; offset: number; size: number }> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path);
  } catch {
    return { text: "", offset: 0, size: 0 }; // not started yet
  }
  try {
    const size = (await f.stat()).size;
    if (offset > size) offset = 0;
    const buf = new Uint8Array(Math.min(consoleChunk, size - offset));
    await f.seek(offset, Deno.SeekMode.Start);
    let n = 0;
    while (n < buf.length) {
      const r = await f.read(buf.subarray(n));
      if (r === null) break;
      n += r;
    }
    // A read ends at a character's end: a character cut by the chunk or by a write still under way
    // (qemu writes as the guest does) became two U+FFFD, one at each side; its bytes wait for the
    // next read.
    const whole = utf8Whole(buf.subarray(0, n));
    return {
      text: new TextDecoder().decode(buf.subarray(0, whole)),
      offset: offset + whole,
      size,
    };
  } finally {
    f.close();
  }
}

/** How many of `bytes` end with a whole UTF-8 character: all, unless the last lead byte in the last
 *  three starts a character longer than what follows it. */
function utf8Whole(bytes: Uint8Array): number {
  for (let i = bytes.length - 1; i >= Math.max(0, bytes.length - 3); i--) {
    const b = bytes[i];
    if ((b & 0xc0) === 0x80) continue; // a continuation byte: look further back
    const size = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return i + size > bytes.length ? i : bytes.length;
  }
  return bytes.length;
}

export function consoleRoutes(ctx: Context): Hono {
  return apiRouter().get("/:ref/console", bearerAuth(ctx, { reads: true }), async (c) => {
    const node = ctx.nodes.get(c.req.param("ref"));
    const q = c.req.query("offset") ?? "0";
    if (!/^\d+$/.test(q)) throw new UserError("query parameter offset must be a whole number");
    const asked = c.req.query("source");
    if (asked !== undefined && !(CONSOLE_SOURCES as readonly string[]).includes(asked)) {
      throw new UserError(`query parameter source must be serial or netconsole, got "${asked}"`);
    }
    const netconsole = node.settings["console.netconsole"] === "true";
    const source = (asked as ConsoleSource | undefined) ??
      (netconsole ? "netconsole" : node.virtual ? "serial" : undefined);
    if (!source || (source === "serial" && !node.virtual)) {
      throw new UserError(
        `node ${node.name} has no ${source ?? ""}${source ? " " : ""}console here: only ` +
          "virtual nodes have a serial one; set console.netconsole=true for the kernel's " +
          "netconsole (from its next boot)",
        404,
      );
    }
    const r = await readConsole(consoleLogPath(ctx.data, node.mac, source), Number(q));
    return c.json({ ...r, source });
  });
}
