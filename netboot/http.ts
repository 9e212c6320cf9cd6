// PLACEHOLDER — replaced by its owner; signature is the contract.
import { Hono } from "hono";
import type { Context } from "../src/context.ts";
export function bootRoutes(_ctx: Context): Hono {
  return new Hono();
}
