// PLACEHOLDER — replaced by its owner; signature is the contract.
import { Hono } from "hono";
import type { Context } from "./context.ts";
export function dashboardRoutes(_ctx: Context): Hono {
  return new Hono();
}
