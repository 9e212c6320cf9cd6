// API route of power drivers, added under /api/v1 through the API's extension hook:
//   POST /nodes/:ref/power   {action: "on"|"off"|"cycle"|"status"}  →  {mac, name, driver, action,
//                            state}; 502 when the BMC/switch/command fails, 409 when unset up.
// Status is a POST too: every action talks to the device, so each one needs the write token.
import type { Hono } from "hono";
import { registerApiExtension } from "../api.ts";
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import type { PowerAction } from "./driver.ts";
import { nodePower } from "./power.ts";

registerApiExtension((app: Hono, ctx: Context) => {
  app.post("/nodes/:ref/power", async (c) => {
    let b: { action?: unknown };
    try {
      b = await c.req.json();
    } catch (e) {
      throw new UserError(`request body is not valid JSON: ${(e as Error).message}`);
    }
    if (typeof b !== "object" || b === null || typeof b.action !== "string") {
      throw new UserError('field "action" must be one of on, off, cycle, status');
    }
    return c.json(await nodePower(ctx, c.req.param("ref"), b.action as PowerAction));
  });
});
