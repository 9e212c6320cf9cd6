// The HTTP listener, with bounds on what anyone who reaches the port can hold. Deno.serve takes
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
// The bodies of the routes open to anyone are bounded where they are read: netboot/httpbody.ts.
import { Shares } from "../netboot/shares.ts";
import { logger } from "./log.ts";

const log = logger("http");

export interface ConnectionLimits {
  /** Open connections from one address (isLocalClient excepted), and requests under way from it
   *  (HTTP/2 carries many on one connection). A node uses one or two at a time, a dashboard a
   *  handful: 64 leaves room for a few clients behind one NAT address. */
  perSource: number;
  /** Open connections in all: above a 1,000-node boot storm's, far below the descriptor limit. */
  total: number;
  /** A connection with no request under way for this long is closed. */
  idleMs: number;
}

export const connectionLimits: ConnectionLimits = { perSource: 64, total: 4096, idleMs: 60_000 };

/** Time for a last answer to leave before its connection is cut at shutdown: Deno counts an
 *  answer given whole (not a stream) as sent before it has written it, and a cancel drops what is
 *  unwritten. Short: a stop waits that long after each connection's last answer. */
const graceMs = 250;

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

/** What Deno's per-connection server uses of its abort signal: it adds one listener, its cancel. */
interface CancelHook {
  addEventListener(type: "abort", cancel: () => void): void;
}

type ServeOnConnection = (
  conn: Deno.Conn,
  signal: CancelHook | undefined,
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
  const connections = new Shares();
  // Requests under way by address: a connection carries one at a time with HTTP/1.1, but Deno
  // also speaks HTTP/2 to a client that starts with its preface (no browser or iPXE does without
  // TLS), and then one connection carried 200 at once: 64 connections, 12,800 requests. An
  // address holds at most `perSource` requests under way, whatever the protocol.
  const requests = new Shares();
  /** Each open connection's end (its counts given back), and what closes it at shutdown once no
   *  request is under way on it. */
  const open = new Map<Promise<void>, () => void>();
  let refused = 0, lastWarned = 0, stopping = false;

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
    if (open.size >= limits.total) return refuse(conn, source, `${limits.total} connections open`);
    if (!connections.take(source, limits.perSource)) {
      return refuse(conn, source, `${limits.perSource} connections open from this address`);
    }
    let underWay = 0, lastDone = Date.now();
    let idle: ReturnType<typeof setTimeout> | undefined;
    // The connection is closed by Deno's cancel, the one an abort signal would run, called here
    // rather than from a signal's listener: once the connection has ended the cancel throws (its
    // resource is gone), and from a listener that would be an uncaught error, the process's end.
    // Not by a graceful shutdown of the connection: that waits for the body of a request answered
    // without reading it (a 401 to a POST), and a client that declares a body and never sends it
    // held its connection for ever, idle or not, and held the listener's shutdown as long.
    let cancel = () => {};
    const closeIfIdle = () => {
      if (underWay !== 0) return;
      try {
        cancel();
      } catch { /* it ended meanwhile */ }
    };
    // A cancel drops what Deno has not yet written of the last answer: a connection is closed
    // `graceMs` after its last answer at the soonest (the idle time, or less when stopping).
    const armIdle = () => {
      clearTimeout(idle);
      const after = stopping ? Math.max(0, lastDone + graceMs - Date.now()) : limits.idleMs;
      idle = setTimeout(closeIfIdle, after);
    };
    const handler: Deno.ServeHandler = (req, info) => {
      if (!requests.take(source, limits.perSource)) {
        return new Response(`${limits.perSource} requests under way from this address\n`, {
          status: 503,
          headers: { "retry-after": "10" },
        });
      }
      underWay++;
      clearTimeout(idle);
      info.completed.catch(() => {}).finally(() => {
        lastDone = Date.now();
        if (--underWay === 0) armIdle();
        requests.give(source);
      });
      return opts.handler(req, info);
    };
    const hook: CancelHook = { addEventListener: (_, f) => (cancel = f) };
    const server = serveOnConnection(conn, hook, handler, defaultOnError, () => {});
    armIdle();
    const ended = server.finished.catch(() => {}).then(() => {
      clearTimeout(idle);
      underWay = -1; // ended: a late completion must not arm the timer again
      open.delete(ended);
      connections.give(source);
    });
    open.set(ended, () => underWay === 0 && armIdle());
  };

  const accepting = (async () => {
    while (!stopping) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (stopping || e instanceof Deno.errors.BadResource) return;
        // A connection reset before it was taken (Deno's accept asks for its peer: ENOTCONN) is
        // that connection's end, not the listener's: the next one is taken at once. A pause
        // there let anyone stop the accepting, 100 ms for each reset connection sent.
        if (
          e instanceof Deno.errors.NotConnected || e instanceof Deno.errors.ConnectionReset ||
          e instanceof Deno.errors.ConnectionAborted
        ) continue;
        // Out of descriptors (EMFILE): go on, after a pause so that an error that repeats does
        // not spin.
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
    open: () => open.size,
    refused: () => refused,
    async shutdown() {
      if (stopping) return;
      stopping = true;
      listener.close();
      await accepting;
      for (const drain of open.values()) drain();
      await Promise.all(open.keys());
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
