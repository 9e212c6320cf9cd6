// API routes of virtual nodes, added under /api/v1 through the API's extension hook:
//   GET    /vnodes                    list (spec + running state)
//   POST   /vnodes                    {name, ram?, cpus?, disks?: ["8G[template=ext4]"…], image?}
//   DELETE /vnodes/:ref               stop qemu, forget the node, delete its disks
//   GET    /nodes/:ref/console?offset=N   {text, offset}: serial output from byte N; offset = next N
//          (always needs the API token: the console shows the kernel command line, whose
//          per-boot token would let anyone forge the node's boot reports)
import { join } from "node:path";
import type { Hono } from "hono";
import { registerApiExtension, requireToken } from "../api.ts";
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import type { CreateRequest, VnodeManager } from "./manager.ts";

/** At most this much console text per answer; followers come back for the rest. */
const consoleChunk = 1024 * 1024;

export function registerVnodeApi(manager: (ctx: Context) => VnodeManager): void {
  registerApiExtension((app: Hono, ctx: Context) => {
    app.get("/vnodes", (c) => c.json(manager(ctx).list()));
    app.post("/vnodes", async (c) => {
      let b: CreateRequest;
      try {
        b = await c.req.json();
      } catch (e) {
        throw new UserError(`request body is not valid JSON: ${(e as Error).message}`);
      }
      if (typeof b !== "object" || b === null) {
        throw new UserError("request body must be an object");
      }
      if (b.disks !== undefined && !Array.isArray(b.disks)) {
        throw new UserError('field "disks" must be a list like ["8G[template=ext4]"]');
      }
      return c.json(await manager(ctx).create(b), 201);
    });
    app.delete("/vnodes/:ref", async (c) => {
      const m = manager(ctx);
      const node = m.node(c.req.param("ref"));
      await m.remove(node.mac);
      return c.json({ removed: node.mac, name: node.name });
    });
    app.get("/nodes/:ref/console", async (c) => {
      const refused = requireToken(c, ctx);
      if (refused) return refused;
      const node = ctx.nodes.get(c.req.param("ref"));
      if (!node.virtual) {
        throw new UserError(`node ${node.name} has no console here (only virtual nodes do)`, 404);
      }
      const q = c.req.query("offset") ?? "0";
      if (!/^\d+$/.test(q)) throw new UserError("query parameter offset must be a whole number");
      return c.json(await readConsole(join(ctx.data.vm(node.mac), "console.log"), Number(q)));
    });
  });
}

/** Reads the console log from `offset`; a log rotated (shorter than offset) restarts at 0. */
export async function readConsole(
  path: string,
  offset: number,
): Promise<{ text: string; offset: number }> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path);
  } catch {
    return { text: "", offset: 0 }; // not started yet
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
    return { text: new TextDecoder().decode(buf.subarray(0, n)), offset: offset + n };
  } finally {
    f.close();
  }
}
