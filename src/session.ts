// Dashboard sessions: an admin logs in once with the API token (POST /login), and the browser
// then carries a session cookie instead of the token (HttpOnly: page scripts never see it;
// SameSite=Strict: no other site's page can make the browser send it; Path=/). Sessions live in
// the server's memory (a restart logs everyone out), each with a fixed expiry, at most
// `maxSessions` of them (the oldest gives way). The API accepts a session wherever it accepts the
// token (bearerAuth in src/api.ts); a write made with a session must also come from the
// dashboard's own origin (Origin header), on top of SameSite.
//   POST /login    token=<API token> (form or JSON)  → 200 {expires} + cookie, 401 wrong token
//   POST /logout   ends the session, clears the cookie
//   GET  /session  {loggedIn, expires, apiAuth}: what the dashboard may show and do
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { Context as HonoContext, Hono } from "hono";
import { getCookie } from "hono/cookie";
import { BodyRefusal, sourceOf, textUpTo } from "../netboot/httpbody.ts";
import { apiRouter } from "./apierror.ts";
import type { Context } from "./context.ts";
import { logger } from "./log.ts";

const log = logger("session");

export const sessionCookie = "netroot_session";

/** How long a login lasts (then the dashboard asks for the token again). */
export const sessionMaxAgeS = 12 * 3600;
/** Sessions held at once; past it, the oldest login gives way. */
const maxSessions = 256;

/** True when `given` is the API token (constant time). */
export function isApiToken(given: string | undefined, token: string): boolean {
  if (!given || !token) return false;
  const a = new TextEncoder().encode(given);
  const b = new TextEncoder().encode(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The server-side sessions: kept by the hash of their cookie value, with their expiry. */
export class Sessions {
  #expiry = new Map<string, number>();
  constructor(private readonly now: () => number = Date.now) {}

  #key(id: string): string {
    return createHash("sha256").update(id).digest("hex");
  }

  /** A new session: its cookie value and expiry (ms). */
  open(): { id: string; expires: number } {
    const now = this.now();
    for (const [k, exp] of this.#expiry) if (exp <= now) this.#expiry.delete(k);
    while (this.#expiry.size >= maxSessions) {
      this.#expiry.delete(this.#expiry.keys().next().value!); // Map order: oldest login first
    }
    const id = randomBytes(32).toString("hex");
    const expires = now + sessionMaxAgeS * 1000;
    this.#expiry.set(this.#key(id), expires);
    return { id, expires };
  }

  /** The expiry of the live session `id`, or undefined (unknown or expired). */
  check(id: string | undefined): number | undefined {
    if (!id || !/^[0-9a-f]{64}$/.test(id)) return undefined;
    const key = this.#key(id);
    const exp = this.#expiry.get(key);
    if (exp === undefined) return undefined;
    if (exp <= this.now()) {
      this.#expiry.delete(key);
      return undefined;
    }
    return exp;
  }

  close(id: string | undefined): void {
    if (id) this.#expiry.delete(this.#key(id));
  }

  get size(): number {
    return this.#expiry.size;
  }
}

/** The live session the request carries: its expiry, or undefined. */
export function sessionOf(ctx: Context, c: HonoContext): number | undefined {
  return ctx.sessions.check(getCookie(c, sessionCookie));
}

/** The request's live session as a check that holds until the session ends (a logout, its
 *  expiry), or undefined: for what outlives the request (an event stream). */
export function liveSession(ctx: Context, c: HonoContext): (() => boolean) | undefined {
  const id = getCookie(c, sessionCookie);
  if (ctx.sessions.check(id) === undefined) return undefined;
  return () => ctx.sessions.check(id) !== undefined;
}

/**
 * Whether a write comes from the page of this same server: the browser's Origin names the host
 * the request was sent to. (SameSite=Strict already keeps other sites' requests cookie-less; this
 * also refuses a cross-origin write from a sibling site on the same host name.)
 */
export function sameOrigin(c: HonoContext): boolean {
  const origin = c.req.header("origin");
  const host = c.req.header("host");
  if (!origin || !host || origin === "null") return false;
  try {
    return new URL(origin).host === host;
  } catch {
    return false;
  }
}

let machineName: string | undefined;

/**
 * Whether the request names this server in a way no other site can: by an IP address, localhost,
 * this machine's own name or the configured HTTP host, or with no Host at all (no browser sends
 * none). Under any other name the browser may be showing another site's page whose name its owner
 * made resolve to this server (DNS rebinding): same-origin to that page, which then reads what it
 * asks. The page has neither the token nor a session (the cookie belongs to this server's name).
 */
export function knownHost(ctx: Context, c: HonoContext): boolean {
  const host = c.req.header("host");
  if (host === undefined) return true;
  const name = /^(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::\d{1,5})?$/i.exec(host)?.[1].toLowerCase();
  if (!name) return false;
  if (name.startsWith("[") || /^\d{1,3}(\.\d{1,3}){3}$/.test(name)) return true; // never looked up
  if (machineName === undefined) {
    try {
      machineName = Deno.hostname().toLowerCase();
    } catch {
      machineName = ""; // no --allow-sys: addresses and localhost only
    }
  }
  return name === "localhost" || name === machineName ||
    name === ctx.config.http.host?.toLowerCase();
}

function cookie(c: HonoContext, value: string, maxAgeS: number): string {
  // Secure only when the browser reached us over HTTPS (a TLS proxy in front): a lab on plain
  // HTTP would otherwise never get the cookie back.
  const secure = new URL(c.req.url).protocol === "https:" ||
    c.req.header("x-forwarded-proto") === "https";
  return `${sessionCookie}=${value}; Path=/; Max-Age=${maxAgeS}; HttpOnly; SameSite=Strict` +
    (secure ? "; Secure" : "");
}

async function givenToken(c: HonoContext): Promise<string | undefined | BodyRefusal> {
  const type = c.req.header("content-type") ?? "";
  // anyone may post here: read no more than that, no longer than that
  const text = await textUpTo(c.req.raw, 4096, sourceOf(c));
  if (text instanceof BodyRefusal) return text;
  if (type.includes("application/json")) {
    try {
      const v = JSON.parse(text);
      return typeof v?.token === "string" ? v.token.trim() : undefined;
    } catch {
      return undefined;
    }
  }
  return new URLSearchParams(text).get("token")?.trim();
}

/** POST /login, POST /logout, GET /session (mounted at / by buildApp). */
export function sessionRoutes(ctx: Context): Hono {
  const app = apiRouter();
  let refusedLogins = 0, refusalLoggedAt = 0;
  app.post("/login", async (c) => {
    if (!sameOrigin(c)) {
      // curl and scripts send no Origin: tell them what they use instead of a session
      return c.json({
        error: "login refused: not posted from the dashboard's own page (Origin); scripts send " +
          "Authorization: Bearer <token> with each request instead",
      }, 403);
    }
    const given = await givenToken(c);
    if (given instanceof BodyRefusal) return c.json({ error: given.message }, given.status);
    if (!isApiToken(given, ctx.token)) {
      refusedLogins++;
      if (Date.now() - refusalLoggedAt >= 60_000) { // one line a minute, however many tries
        log.warn("dashboard login with a wrong token", { attempts: refusedLogins });
        refusalLoggedAt = Date.now();
        refusedLogins = 0;
      }
      return c.json({ error: `wrong token (it is in ${ctx.data.token} on the server)` }, 401);
    }
    const s = ctx.sessions.open();
    c.header("set-cookie", cookie(c, s.id, sessionMaxAgeS));
    c.header("cache-control", "no-store");
    return c.json({ loggedIn: true, expires: new Date(s.expires).toISOString() });
  });
  app.post("/logout", (c) => {
    if (!sameOrigin(c)) return c.json({ error: "cross-origin logout refused" }, 403);
    ctx.sessions.close(getCookie(c, sessionCookie));
    c.header("set-cookie", cookie(c, "", 0));
    return c.json({ loggedIn: false });
  });
  app.get("/session", (c) => {
    const exp = sessionOf(ctx, c);
    c.header("cache-control", "no-store");
    return c.json({
      loggedIn: exp !== undefined,
      expires: exp === undefined ? null : new Date(exp).toISOString(),
      apiAuth: ctx.config.api.auth,
    });
  });
  return app;
}
