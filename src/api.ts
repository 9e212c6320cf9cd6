// PLACEHOLDER — replaced by its owner; signature is the contract.
import { Hono } from "hono";
import type { Context } from "./context.ts";
export function apiRoutes(_ctx: Context): Hono {
  return new Hono();
}
export function loadOrCreateToken(_path: string): Promise<string> {
  return Promise.resolve("");
}
