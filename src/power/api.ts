// API route of power drivers (mounted under /api/v1/nodes by buildApp):
//   POST /nodes/:ref/power   {action: "on"|"off"|"cycle"|"status"}  →  {mac, name, driver, action,
//                            state}; 502 when the BMC/switch/command fails, 409 when unset up.
// Status is a POST too: every action talks to the device, so each one needs the write token.
import type { Hono } from "hono";
import { jsonBody } from "../api.ts";
import { apiRouter } from "../apierror.ts";
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import type { PowerAction } from "./driver.ts";
import { nodePower } from "./power.ts";

export function powerRoutes(ctx: Context): Hono {
  return apiRouter().post("/:ref/power", async (c) => {
    const b = await jsonBody(c.req.raw);
    if (typeof b.action !== "string") {
      throw new UserError('field "action" must be one of on, off, cycle, status');
    }
    return c.json(await nodePower(ctx, c.req.param("ref"), b.action as PowerAction));
  });
}
