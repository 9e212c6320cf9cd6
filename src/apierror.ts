// One mapping of a thrown error onto the API's `{error}` replies, shared by every router under
// /api/v1 (each is an apiRouter(): one mounted on its own, as in tests, answers the same way).
import { Hono } from "hono";
import type { Context as HonoContext } from "hono";
import { UserError } from "./errors.ts";
import { logger } from "./log.ts";

const log = logger("api");

/** 400 bad input, the UserError's own status, 409 for a uniqueness race, else 500 (logged). */
export function apiErrorResponse(err: Error, c: HonoContext): Response {
  if (err instanceof UserError) return c.json({ error: err.message }, err.status);
  if (err instanceof SyntaxError || (err as { code?: string }).code?.startsWith("ERR_PARSE")) {
    return c.json({ error: err.message }, 400);
  }
  // A concurrent writer won a uniqueness or reference race that our checks passed.
  // node:sqlite: prepared statements set errstr; exec() errors carry only the message.
  const sqlite = err as { code?: string; errstr?: string };
  if (
    sqlite.errstr === "constraint failed" ||
    (sqlite.code === "ERR_SQLITE_ERROR" && / constraint failed\b/.test(err.message))
  ) {
    return c.json({ error: err.message }, 409);
  }
  log.error("request failed", { method: c.req.method, path: c.req.path, error: err.stack });
  return c.json({ error: `internal error: ${err.message}` }, 500);
}

/** A router for /api/v1: what its handlers throw becomes the `{error}` reply above. */
export function apiRouter(): Hono {
  const app = new Hono();
  app.onError(apiErrorResponse);
  return app;
}

/** The `{error}` 404 for a path no router has. */
export function noSuchRoute(c: HonoContext): Response {
  return c.json({ error: `no such API route: ${c.req.method} ${c.req.path}` }, 404);
}
