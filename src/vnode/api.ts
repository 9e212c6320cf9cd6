// API routes of virtual nodes (mounted by buildApp at /api/v1/vnodes; a node's console is
// src/consolelog.ts):
//   GET    /vnodes                    list (spec + running state)
//   POST   /vnodes                    {name, ram?, cpus?, disks?: ["8G[template=ext4]"…], image?}
//   DELETE /vnodes/:ref               stop qemu, forget the node, delete its disks
import type { Hono } from "hono";
import { jsonBody } from "../api.ts";
import { apiRouter } from "../apierror.ts";
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import { type CreateRequest, vnodeManager } from "./manager.ts";

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
