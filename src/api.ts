// JSON REST API under /api/v1. Writes (any method but GET/HEAD) need `Authorization: Bearer
// <token>`, the token being generated on first start into <data>/token (mode 0600); reads need it
// too with --api-auth all (config api.auth), and always for what shows secrets (a virtual node's
// console shows its kernel command line, boot token included: requireToken).
// Errors are `{error}` with 400 (bad input), 401, 404, 409 (conflict) or 500.
import { timingSafeEqual } from "node:crypto";
import { Hono } from "hono";
import type { Context as HonoContext } from "hono";
import { apiErrorResponse } from "./apierror.ts";
import type { Context } from "./context.ts";
import { UserError } from "./errors.ts";
import { listEvents } from "./events.ts";
import { imageRoutes } from "./images/api.ts";
import { logger } from "./log.ts";
import { asMac, type NodeInfo } from "./nodes.ts";

const log = logger("api");
const started = Date.now();

export type ApiExtension = (app: Hono, ctx: Context) => void;
const extensions: ApiExtension[] = [];

/** Lets later components add routes under /api/v1 (e.g. /vnodes, /nodes/:ref/console) without
 *  editing this file. Call at module load time: extensions are applied when apiRoutes() builds
 *  the app. */
export function registerApiExtension(fn: ApiExtension): void {
  extensions.push(fn);
}

/** Reads the token, creating it (32 random bytes, hex, mode 0600) when absent or unreadable. */
export async function loadOrCreateToken(path: string): Promise<string> {
  try {
    const token = (await Deno.readTextFile(path)).trim();
    if (/^[0-9a-f]{64}$/.test(token)) {
      if (((await Deno.stat(path)).mode ?? 0) & 0o077) {
        await Deno.chmod(path, 0o600);
        log.warn("token file was readable by others: mode set to 0600", { path });
      }
      return token;
    }
    log.warn("token file is malformed: writing a new token", { path });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const token = Array.from(
    crypto.getRandomValues(new Uint8Array(32)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  // Written aside then renamed: a crash never leaves an empty or partial token file.
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, token + "\n", { mode: 0o600 });
  await Deno.chmod(tmp, 0o600);
  await Deno.rename(tmp, path);
  return token;
}

function tokenMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(\S+)$/i.exec(header ?? "");
  if (!m || !token) return false;
  const a = new TextEncoder().encode(m[1]);
  const b = new TextEncoder().encode(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** A 401 answer when the request does not carry the API token, else undefined. */
export function requireToken(c: HonoContext, ctx: Context): Response | undefined {
  if (tokenMatches(c.req.header("authorization"), ctx.token)) return undefined;
  return c.json({
    error: "missing or wrong API token: send Authorization: Bearer <token> " +
      `(the token is in ${ctx.data.token} on the server)`,
  }, 401);
}

/** The request body as a JSON object, or a 400 that says what is wrong. */
async function body(req: Request): Promise<Record<string, unknown>> {
  const text = await req.text();
  if (!text.trim()) return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new UserError(`request body is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new UserError("request body must be a JSON object");
  }
  return v as Record<string, unknown>;
}

function str(v: unknown, field: string, required: true): string;
function str(v: unknown, field: string, required?: false): string | undefined;
function str(v: unknown, field: string, required = false): string | undefined {
  if (v === undefined || v === null) {
    if (required) throw new UserError(`missing field "${field}"`);
    return undefined;
  }
  if (typeof v !== "string") throw new UserError(`field "${field}" must be a string`);
  return v;
}

function bool(v: unknown, field: string): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw new UserError(`field "${field}" must be true or false`);
  return v;
}

function int(v: string | undefined, field: string, dflt: number, max: number): number {
  if (v === undefined || v === "") return dflt;
  if (!/^\d+$/.test(v)) throw new UserError(`query parameter ${field} must be a whole number`);
  return Math.min(Number(v), max);
}

export function apiRoutes(ctx: Context): Hono {
  const app = new Hono();
  const { nodes } = ctx;

  app.onError(apiErrorResponse);

  app.use("*", async (c, next) => {
    const read = c.req.method === "GET" || c.req.method === "HEAD";
    if (!read || ctx.config.api.auth === "all") {
      const refused = requireToken(c, ctx);
      if (refused) return refused;
    }
    await next();
  });

  app.get("/health", (c) => {
    const count = (t: string) =>
      (ctx.db.prepare(`SELECT count(*) AS n FROM ${t}`).get() as { n: number }).n;
    return c.json({
      ok: true,
      uptimeSeconds: Math.round((Date.now() - started) / 1000),
      nodes: count("nodes"),
      images: count("images"),
    });
  });

  app.route("/images", imageRoutes(ctx));

  // Node list entries carry the last timeline event (for `node ls` and the dashboard).
  const lastEvents = () => {
    const rows = ctx.db.prepare(
      `SELECT mac, ts, kind FROM events
       WHERE id IN (SELECT max(id) FROM events WHERE mac IS NOT NULL GROUP BY mac)`,
    ).all() as { mac: string; ts: string; kind: string }[];
    return new Map(rows.map((r) => [r.mac, { ts: r.ts, kind: r.kind }]));
  };
  const withLast = (list: NodeInfo[]) => {
    const last = lastEvents();
    return list.map((n) => ({ ...n, lastEvent: last.get(n.mac) ?? null }));
  };

  app.get("/nodes", (c) => c.json(withLast(nodes.list())));

  app.post("/nodes", async (c) => {
    const b = await body(c.req.raw);
    const node = nodes.add(str(b.mac, "mac", true), {
      name: str(b.name, "name"),
      model: str(b.model, "model"),
      image: str(b.image, "image"),
      virtual: bool(b.virtual, "virtual"),
    });
    return c.json(node, 201);
  });

  app.get("/nodes/:ref", (c) => c.json(withLast([nodes.get(c.req.param("ref"))])[0]));

  app.patch("/nodes/:ref", async (c) => {
    const b = await body(c.req.raw);
    const unknown = Object.keys(b).filter((k) => k !== "name");
    if (unknown.length) {
      throw new UserError(
        `cannot change ${
          unknown.join(", ")
        } here (only name; settings: PATCH /nodes/:ref/config; image: POST /deploy)`,
      );
    }
    return c.json(nodes.rename(c.req.param("ref"), str(b.name, "name", true)));
  });

  app.delete("/nodes/:ref", (c) => {
    const node = nodes.get(c.req.param("ref"));
    nodes.forget(node.mac);
    return c.json({ forgotten: node.mac, name: node.name });
  });

  app.patch("/nodes/:ref/config", async (c) => {
    const b = await body(c.req.raw);
    return c.json(nodes.configure(c.req.param("ref"), b as Record<string, string | null>));
  });

  app.post("/deploy", async (c) => {
    const b = await body(c.req.raw);
    const refs = b.nodes;
    if (!Array.isArray(refs) || refs.some((r) => typeof r !== "string")) {
      throw new UserError('field "nodes" must be an array of node names or MACs');
    }
    const result = await nodes.deploy(refs as string[], str(b.image, "image", true), {
      reboot: bool(b.reboot, "reboot"),
      force: bool(b.force, "force"),
    });
    return c.json(result);
  });

  app.post("/nodes/:ref/reboot", async (c) => {
    const b = await body(c.req.raw);
    return c.json(await nodes.reboot(c.req.param("ref"), str(b.cause, "cause") ?? "user request"));
  });

  /** A node ref for the events filter: MACs of forgotten nodes still have a timeline. */
  const macOf = (ref: string) => asMac(ref) ?? nodes.get(ref).mac;
  const events = (c: { req: { query(k: string): string | undefined } }, mac?: string) =>
    listEvents(ctx.db, {
      mac,
      sinceId: int(c.req.query("since"), "since", 0, Number.MAX_SAFE_INTEGER),
      limit: int(c.req.query("limit"), "limit", 200, 10000),
    });

  app.get("/events", (c) => {
    const ref = c.req.query("mac") ?? c.req.query("node");
    return c.json(events(c, ref ? macOf(ref) : undefined));
  });
  app.get("/nodes/:ref/events", (c) => c.json(events(c, macOf(c.req.param("ref")))));

  for (const ext of extensions) ext(app, ctx);

  app.all("*", (c) => c.json({ error: `no such API route: ${c.req.method} ${c.req.path}` }, 404));
  return app;
}
