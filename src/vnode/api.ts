// API routes of virtual nodes (mounted by buildApp: vnodeRoutes at /api/v1/vnodes, consoleRoutes
// at /api/v1/nodes):
//   GET    /vnodes                    list (spec + running state)
//   POST   /vnodes                    {name, ram?, cpus?, disks?: ["8G[template=ext4]"…], image?}
//   DELETE /vnodes/:ref               stop qemu, forget the node, delete its disks
//   GET    /nodes/:ref/console?offset=N   {text, offset}: serial output from byte N; offset = next N
//          (always needs the API token: the console shows the kernel command line, whose
//          per-boot token would let anyone forge the node's boot reports)
import { join } from "node:path";
import type { Hono } from "hono";
import { bearerAuth, jsonBody } from "../api.ts";
import { apiRouter } from "../apierror.ts";
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import { type CreateRequest, vnodeManager } from "./manager.ts";

/** At most this much console text per answer; followers come back for the rest. */
const consoleChunk = 1024 * 1024;

export function vnodeRoutes(ctx: Context): Hono {
  const app = apiRouter();
  app.get("/", (c) => c.json(vnodeManager(ctx).list()));
  app.post("/", async (c) => {
    const b = await jsonBody(c.req.raw) as unknown as CreateRequest;
    if (b.disks !== undefined && !Array.isArray(b.disks)) {
      throw new UserError('field "disks" must be a list like ["8G[template=ext4]"]');
    }
    return c.json(await vnodeManager(ctx).create(b), 201);
  });
  app.delete("/:ref", async (c) => {
    const m = vnodeManager(ctx);
    const node = m.node(c.req.param("ref"));
    await m.remove(node.mac);
    return c.json({ removed: node.mac, name: node.name });
  });
  return app;
}

export function consoleRoutes(ctx: Context): Hono {
  return apiRouter().get("/:ref/console", bearerAuth(ctx, { reads: true }), async (c) => {
    const node = ctx.nodes.get(c.req.param("ref"));
    if (!node.virtual) {
      throw new UserError(`node ${node.name} has no console here (only virtual nodes do)`, 404);
    }
    const q = c.req.query("offset") ?? "0";
    if (!/^\d+$/.test(q)) throw new UserError("query parameter offset must be a whole number");
    return c.json(await readConsole(join(ctx.data.vm(node.mac), "console.log"), Number(q)));
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
