// Live timelines: GET /api/v1/events?mac=…&since=ID asked with `accept: text/event-stream` (what a
// browser's EventSource sends) answers with server-sent events, one `id:`/`data:` message per
// event (the JSON of GET /events), from event `since` (or the browser's Last-Event-ID) on, then
// each new one as it is recorded: the stream wakes on src/events.ts followEvents, nothing polls.
// Every stream is bounded: at most `maxStreams` open per server (503 past it), of which at most
// `maxAnonymous` opened without the API token or a dashboard session (`anonymousPerAddress` of
// them from one address), each closed after
// `lifetimeMs` (EventSource reconnects by itself, with Last-Event-ID, so nothing is missed), a
// comment every `heartbeatMs` (a client that went away without closing is found by the failed
// write), and closed when more than `maxQueuedBytes` wait for a client that does not read. A
// client that closes its side cancels the stream, which stops everything it held; a stopping
// server ends them all (ctx.changes "closing"), else its HTTP shutdown would wait for them.
import type { Db } from "./db.ts";
import { eventsAfter, followEvents, listEvents } from "./events.ts";
import { Shares } from "../netboot/shares.ts";

export interface StreamLimits {
  maxStreams: number;
  /** Streams opened without the token or a session. Reads are open by default, so anyone on the
   *  boot network may open streams: without this share, one neighbour holding all 32 refused the
   *  admin's dashboard its live timeline for as long as it liked. */
  maxAnonymous: number;
  /** Of those, from one address: one neighbour holding all 24 left every dashboard not logged
   *  in (reads are open: it shows all but the actions) without its live timeline, for good. */
  anonymousPerAddress: number;
  lifetimeMs: number;
  heartbeatMs: number;
  maxQueuedBytes: number;
}

export const defaultStreamLimits: StreamLimits = {
  maxStreams: 32,
  maxAnonymous: 24,
  anonymousPerAddress: 4,
  lifetimeMs: 10 * 60_000,
  heartbeatMs: 15_000,
  maxQueuedBytes: 1024 * 1024,
};

/** Who asked for a stream. */
export interface StreamClient {
  /** Asked with the API token or a dashboard session. */
  admin?: boolean;
  /** Whether what let the client in still holds (its session; reads open to all), checked at each
   *  send: the stream ends once it does not, and EventSource asks again as what it is now. A
   *  stream went on for up to its lifetime after a logout, every event of the lab to the
   *  logged-out browser's other tabs, and to every neighbour after a reload to api.auth all. */
  allowed?: () => boolean;
  /** The client's address, for the share of a client without either (undefined: the server
   *  machine itself, as for Shares). */
  source?: string;
}

/** Events read per database query; a backlog is sent in batches of this many. */
const batch = 500;
/** New events are read at most this often (a boot writes bursts of them). */
const coalesceMs = 100;

export interface EventStreams {
  /** Streams open now. */
  readonly open: number;
  /** The SSE response for `mac`'s events (all events without one) after id `since` (undefined:
   *  only events recorded from now on), to `client`. */
  respond(filter: { mac?: string; since?: number }, client?: StreamClient): Response;
  /** Ends every open stream (the server is stopping: an HTTP shutdown waits for open responses). */
  closeAll(): void;
}

/** The event streams of one server (its route table makes one). */
export function eventStreams(db: Db, limits: StreamLimits = defaultStreamLimits): EventStreams {
  let open = 0, anonymous = 0;
  const enc = new TextEncoder();
  const stops = new Set<() => void>();
  const perAddress = new Shares();
  const refuse = (error: string) =>
    Response.json({ error }, { status: 503, headers: { "retry-after": "10" } });
  const respond = (
    filter: { mac?: string; since?: number },
    client: StreamClient = {},
  ): Response => {
    const { admin = false, allowed = () => true } = client;
    if (open >= limits.maxStreams || (!admin && anonymous >= limits.maxAnonymous)) {
      return refuse(`too many event streams open (${limits.maxStreams}): try again later`);
    }
    // The server machine's own clients (a local proxy) share the total only, as for HTTP.
    const share = admin ? undefined : client.source;
    if (share !== undefined && !perAddress.take(share, limits.anonymousPerAddress)) {
      return refuse(
        `${limits.anonymousPerAddress} event streams open from ${share} without the API token: ` +
          "close one, or log in",
      );
    }
    open++;
    if (!admin) anonymous++;
    let last = filter.since ?? listEvents(db, { mac: filter.mac, limit: 1 })[0]?.id ?? 0;
    let stopped = false;
    let pending: ReturnType<typeof setTimeout> | undefined;
    let out: ReadableStreamDefaultController<Uint8Array>;
    const timers: ReturnType<typeof setTimeout>[] = [];
    let unfollow = () => {};
    const stop = (closeIt: boolean) => {
      if (stopped) return;
      stopped = true;
      open--;
      if (!admin) anonymous--;
      if (share !== undefined) perAddress.give(share);
      stops.delete(stopAndClose);
      unfollow();
      clearTimeout(pending);
      for (const t of timers) clearTimeout(t);
      if (closeIt) {
        try {
          out.close();
        } catch { /* already closed */ }
      }
    };
    const stopAndClose = () => stop(true);
    stops.add(stopAndClose);
    const send = (text: string) => {
      if (stopped) return;
      if (!allowed()) return stop(true);
      try {
        out.enqueue(enc.encode(text));
      } catch {
        return stop(false); // the client is gone
      }
      if ((out.desiredSize ?? 0) < -limits.maxQueuedBytes) stop(true); // not reading: let go
    };
    const flush = () => {
      pending = undefined;
      if (stopped) return;
      // The oldest `batch` after `last`, not listEvents' newest: a longer backlog came as its
      // newest 500 only, and the events before them (a reconnect after a busy minute) were lost.
      const rows = eventsAfter(db, { mac: filter.mac, afterId: last, limit: batch });
      for (const e of rows) {
        send(`id: ${e.id}\ndata: ${JSON.stringify(e)}\n\n`);
        last = e.id;
      }
      if (rows.length === batch) pending = setTimeout(flush, 0); // more backlog
    };
    const wake = () => {
      pending ??= setTimeout(flush, coalesceMs);
    };
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        out = controller;
        unfollow = followEvents(db, wake);
        timers.push(setInterval(() => send(": keepalive\n\n"), limits.heartbeatMs));
        timers.push(setTimeout(() => stop(true), limits.lifetimeMs));
        send("retry: 3000\n\n");
        flush();
      },
      cancel: () => stop(false),
    }, new ByteLengthQueuingStrategy({ highWaterMark: 64 * 1024 }));
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
        "x-accel-buffering": "no",
      },
    });
  };
  return {
    get open() {
      return open;
    },
    respond,
    closeAll: () => {
      for (const stop of [...stops]) stop();
    },
  };
}
