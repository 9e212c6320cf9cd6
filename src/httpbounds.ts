// Bounds on what anyone who reaches the HTTP port can hold: connections and request bodies.
//
// Connections. Deno.serve takes
// every connection the kernel hands it and keeps it for as long as the peer likes, a request head
// that never ends included. One host on the boot network could then hold every file descriptor
// of the server (20,000 connections: nothing else can open a file) or its memory (a stalled
// request body costs ~170 KiB: 2,000 of them took 340 MiB), with no credentials at all.
//
// So the accept loop is ours (Deno.listen) and each accepted connection is served by Deno's own
// HTTP server for one connection (serveHttpOnConnection: the same hyper server Deno.serve runs,
// reached through Deno's internals, since Deno has no public API for it), which lets us
//  - refuse a connection past `perSource` open ones from the same address (loopback excepted:
//    local tools and a local reverse proxy) or past `total` in all, by closing it at once;
//  - close a connection idle for `idleMs` with no request under way: a request head that never
//    ends, or a keep-alive connection nobody uses (nginx does the same with its header and
//    keep-alive timeouts). A request under way (a kernel download to a slow node, an event
//    stream) is never cut.
// Where Deno lacks that internal (another Deno than tools/ pins), Deno.serve runs unbounded and
// a warning says so.
//
// Bodies. The routes open to anyone read theirs with textUpTo: a size, a deadline, and a number
// read at once, in all and per address (`bodyLimits`).
import type { Context as HonoContext } from "hono";
import { logger } from "./log.ts";

const log = logger("http");

/** A client on the server machine itself (the CLI, a local reverse proxy): no share per address
 *  applies to it. Only the loopback addresses themselves: the rest of 127/8 is as any other
 *  source (and lets tests stand for many hosts). */
export function isLocalClient(address: string): boolean {
  return address === "127.0.0.1" || address === "::1" || address === "::ffff:127.0.0.1";
}

export interface ConnectionLimits {
  /** Open connections from one address (isLocalClient excepted). A node uses one or two at a
   *  time, a dashboard a handful: 64 leaves room for a few clients behind one NAT address. */
  perSource: number;
  /** Open connections in all: above a 1,000-node boot storm's, far below the descriptor limit. */
  total: number;
  /** A connection with no request under way for this long is closed. */
  idleMs: number;
}

export const connectionLimits: ConnectionLimits = { perSource: 64, total: 4096, idleMs: 60_000 };

export interface HttpListener {
  addr: Deno.NetAddr;
  /** Connections open now. */
  open(): number;
  /** Connections refused so far for a limit. */
  refused(): number;
  /** Stops accepting and ends every connection once its requests are answered. */
  shutdown(): Promise<void>;
}

interface ConnectionServer {
  finished: Promise<void>;
  shutdown(): Promise<void>;
}

type ServeOnConnection = (
  conn: Deno.Conn,
  signal: AbortSignal | undefined,
  handler: Deno.ServeHandler,
  onError: (e: unknown) => Response | Promise<Response>,
  onListen: () => void,
) => ConnectionServer;

// deno-lint-ignore no-explicit-any
const internals = (Deno as any)[(Deno as any).internal] as Record<string, unknown> | undefined;
const serveOnConnection = internals?.serveHttpOnConnection as ServeOnConnection | undefined;

const defaultOnError = (e: unknown) => {
  log.error("handler failed", { error: String(e) });
  return new Response("Internal Server Error", { status: 500 });
};

/** Listens on `hostname:port` (0: any free port) and serves `handler` within `limits`. */
export function listenBounded(opts: {
  hostname: string;
  port: number;
  handler: Deno.ServeHandler;
  limits?: ConnectionLimits;
}): HttpListener {
  const limits = opts.limits ?? connectionLimits;
  if (!serveOnConnection) return unbounded(opts);
  const listener = Deno.listen({ hostname: opts.hostname, port: opts.port });
  const bySource = new Map<string, number>();
  const servers = new Set<ConnectionServer>();
  let open = 0, refused = 0, lastWarned = 0, stopping = false;

  const refuse = (conn: Deno.Conn, source: string, why: string) => {
    refused++;
    conn.close();
    if (Date.now() - lastWarned > 60_000) {
      lastWarned = Date.now();
      log.warn("connections refused", { source, reason: why, refused });
    }
  };

  const serve = (conn: Deno.Conn) => {
    const source = (conn.remoteAddr as Deno.NetAddr).hostname;
    const local = isLocalClient(source);
    const mine = bySource.get(source) ?? 0;
    if (open >= limits.total) return refuse(conn, source, `${limits.total} connections open`);
    if (!local && mine >= limits.perSource) {
      return refuse(conn, source, `${limits.perSource} connections open from this address`);
    }
    open++;
    if (!local) bySource.set(source, mine + 1);
    let underWay = 0;
    let idle: ReturnType<typeof setTimeout> | undefined;
    // A graceful shutdown of the connection: it closes one that is idle or still sending its
    // request head at once, and it is harmless once the connection has ended (an abort signal
    // is not: Deno throws from inside its listener then).
    const armIdle = () => {
      clearTimeout(idle);
      idle = setTimeout(() => underWay === 0 && server.shutdown().catch(() => {}), limits.idleMs);
    };
    const handler: Deno.ServeHandler = (req, info) => {
      underWay++;
      clearTimeout(idle);
      info.completed.catch(() => {}).finally(() => --underWay === 0 && armIdle());
      return opts.handler(req, info);
    };
    const server = serveOnConnection(conn, undefined, handler, defaultOnError, () => {});
    servers.add(server);
    armIdle();
    server.finished.catch(() => {}).then(() => {
      clearTimeout(idle);
      underWay = -1; // ended: a late completion must not arm the timer again
      servers.delete(server);
      open--;
      if (!local) {
        const n = (bySource.get(source) ?? 1) - 1;
        if (n > 0) bySource.set(source, n);
        else bySource.delete(source);
      }
    });
  };

  const accepting = (async () => {
    while (!stopping) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (stopping || e instanceof Deno.errors.BadResource) return;
        // Out of descriptors (EMFILE) or a connection reset before it was taken: go on, after a
        // pause so that an error that repeats does not spin.
        log.warn("accept failed", { error: (e as Error).message });
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (stopping) conn.close();
      else serve(conn);
    }
  })();

  return {
    addr: listener.addr as Deno.NetAddr,
    open: () => open,
    refused: () => refused,
    async shutdown() {
      if (stopping) return;
      stopping = true;
      listener.close();
      await accepting;
      await Promise.all([...servers].map((s) => s.shutdown().catch(() => {})));
    },
  };
}

let warnedUnbounded = false;

function unbounded(opts: Parameters<typeof listenBounded>[0]): HttpListener {
  if (!warnedUnbounded) {
    warnedUnbounded = true;
    log.warn(
      "this Deno has no per-connection HTTP server: connections are not limited (see tools/)",
      { deno: Deno.version.deno },
    );
  }
  const server = Deno.serve(
    { hostname: opts.hostname, port: opts.port, onListen: () => {} },
    opts.handler,
  );
  return { addr: server.addr, open: () => 0, refused: () => 0, shutdown: () => server.shutdown() };
}

/** The sender's address as Deno.serve saw it, loopback included (rate limits' key). */
export function sourceOf(c: HonoContext): string | undefined {
  return (c.env as Deno.ServeHandlerInfo<Deno.NetAddr> | undefined)?.remoteAddr?.hostname;
}

/** Why a request body was not read: it is larger than allowed, too slow, or too many are being
 *  read already. */
export class BodyRefusal {
  constructor(readonly status: 408 | 413 | 503, readonly message: string) {}
}

/** Bounds on reading the bodies of routes open to anyone on the network (a node's report, the
 *  dashboard's login form): each is a few hundred bytes sent at once, and a body under way holds
 *  ~170 KiB of the server (Deno's read buffers) for as long as its sender likes. */
export const bodyLimits = { deadlineMs: 10_000, readers: 256, readersPerSource: 8 };

const bodyReaders = new Map<string, number>();
let bodyReadersInAll = 0;

/** The request body as text, at most `max` bytes of it, within `bodyLimits` (`source`: the
 *  sender's address, for its share of the readers). */
export async function textUpTo(
  req: Request,
  max: number,
  source = "",
): Promise<string | BodyRefusal> {
  const tooLarge = new BodyRefusal(413, `request body larger than ${max} bytes`);
  if (Number(req.headers.get("content-length") ?? 0) > max) return tooLarge;
  if (!req.body) return "";
  const mine = bodyReaders.get(source) ?? 0;
  if (
    bodyReadersInAll >= bodyLimits.readers ||
    (!isLocalClient(source) && mine >= bodyLimits.readersPerSource)
  ) {
    return new BodyRefusal(503, "too many request bodies under way: try again later");
  }
  bodyReadersInAll++;
  bodyReaders.set(source, mine + 1);
  const reader = req.body.getReader();
  const tooSlow = () =>
    new BodyRefusal(408, `request body not received within ${bodyLimits.deadlineMs / 1000} s`);
  let late = false;
  const deadline = setTimeout(() => {
    late = true;
    reader.cancel().catch(() => {});
  }, bodyLimits.deadlineMs);
  try {
    const chunks: Uint8Array[] = [];
    let size = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (late) return tooSlow();
      if (done) break;
      size += value.length;
      if (size > max) {
        reader.cancel().catch(() => {});
        return tooLarge;
      }
      chunks.push(value);
    }
    const all = new Uint8Array(size);
    let at = 0;
    for (const chunk of chunks) {
      all.set(chunk, at);
      at += chunk.length;
    }
    return new TextDecoder().decode(all);
  } catch (e) {
    if (late) return tooSlow();
    throw e;
  } finally {
    clearTimeout(deadline);
    bodyReadersInAll--;
    const n = (bodyReaders.get(source) ?? 1) - 1;
    if (n > 0) bodyReaders.set(source, n);
    else bodyReaders.delete(source);
  }
}
