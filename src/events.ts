// The events table: every component appends here (progress replaces its own previous row); per
// node it is the boot timeline. Nothing a sender on the boot network can cause grows it without
// bound: events caused by senders on the boot network (all unauthenticated: a boot token is
// anyone's for a script fetch) go through a per-source-address rate limit (recordFromSource), and
// a periodic prune keeps the table within an age and a count per node (startEventRetention).
import { type Db, tx } from "./db.ts";
import type { EventKind } from "./eventkinds.ts";
import { logger } from "./log.ts";

const log = logger("events");

export interface Event {
  id: number;
  mac: string | null;
  ts: string;
  /** An EventKind, or a kind an older server wrote. */
  kind: string;
  detail: Record<string, unknown>;
}

/** Sees every event a database's writers record, suppressed ones included (src/metrics.ts
 *  counts them: the events are where things happen, so the counters need no hooks of their own). */
export type EventObserver = (kind: EventKind, detail: Record<string, unknown>) => void;
const observers = new WeakMap<Db, EventObserver>();

/** Sets the observer of `db`'s events (one per database); returns its removal. */
export function observeEvents(db: Db, observer: EventObserver): () => void {
  observers.set(db, observer);
  return () => {
    if (observers.get(db) === observer) observers.delete(db);
  };
}

function observe(db: Db, kind: EventKind, detail: Record<string, unknown>): void {
  const o = observers.get(db);
  if (!o) return;
  try {
    o(kind, detail);
  } catch (e) {
    log.warn("event observer failed", { kind, error: (e as Error).message });
  }
}

/** Wakes whoever follows `db`'s events (the API's event streams) after new rows. */
type Follower = () => void;
const followers = new WeakMap<Db, Set<Follower>>();

/** Calls `wake` after every new event of `db` (it must read them later, not synchronously: the
 *  writer's transaction may still be open). Returns the unfollow. */
export function followEvents(db: Db, wake: Follower): () => void {
  let set = followers.get(db);
  if (!set) followers.set(db, set = new Set());
  set.add(wake);
  return () => void set.delete(wake);
}

/** Tells the followers that events were appended (writers that insert rows themselves). */
export function eventsAppended(db: Db): void {
  const set = followers.get(db);
  if (!set) return;
  for (const wake of set) {
    try {
      wake();
    } catch (e) {
      log.warn("event follower failed", { error: (e as Error).message });
    }
  }
}

export function recordEvent(
  db: Db,
  mac: string | null,
  kind: EventKind,
  detail: Record<string, unknown> = {},
): void {
  db.prepare("INSERT INTO events (mac, ts, kind, detail) VALUES (?, ?, ?, ?)")
    .run(mac, new Date().toISOString(), kind, JSON.stringify(detail));
  observe(db, kind, detail);
  eventsAppended(db);
}

/** recordEvent with its statement prepared once and the time given (a hot path: DHCP). */
export function eventRecorder(
  db: Db,
): (mac: string | null, kind: EventKind, detail: Record<string, unknown>, at: number) => void {
  const insert = db.prepare("INSERT INTO events (mac, ts, kind, detail) VALUES (?, ?, ?, ?)");
  return (mac, kind, detail, at) => {
    insert.run(mac, new Date(at).toISOString(), kind, JSON.stringify(detail));
    observe(db, kind, detail);
    eventsAppended(db);
  };
}

/**
 * Progress (a hybrid copy's percentage): replaces the node's newest event when it is progress of
 * the same kind, so a copy is one timeline row that moves to the end with each report (a new id:
 * `node log --follow` and the dashboard see the update) instead of an event per second.
 */
export function recordProgress(
  db: Db,
  mac: string,
  kind: EventKind,
  detail: Record<string, unknown>,
): void {
  tx(db, () => {
    db.prepare(
      `DELETE FROM events WHERE id = (SELECT id FROM events WHERE mac = ? ORDER BY id DESC LIMIT 1)
       AND kind = ?`,
    ).run(mac, kind);
    recordEvent(db, mac, kind, detail);
  });
}

/**
 * The WHERE clause's start and its parameter for one MAC's events or everyone's: two statements,
 * never `(:mac IS NULL OR mac = :mac)`, which SQLite does not plan through the index on (mac, id):
 * a MAC's events were found by walking every node's, all of them for a MAC with few or none (1M
 * events: 150 ms of the server's only thread for each open read naming any MAC).
 */
function macFilter(mac: string | undefined): { where: string; params: { mac?: string } } {
  return mac === undefined
    ? { where: "", params: {} }
    : { where: "mac = :mac AND ", params: { mac } };
}

export function listEvents(
  db: Db,
  opts: { mac?: string; sinceId?: number; limit?: number } = {},
): Event[] {
  const { where, params } = macFilter(opts.mac);
  const rows = db.prepare(
    `SELECT id, mac, ts, kind, detail FROM events
     WHERE ${where}id > :since ORDER BY id DESC LIMIT :limit`,
  ).all({ ...params, since: opts.sinceId ?? 0, limit: opts.limit ?? 1000 }) as EventRow[];
  return rows.reverse().map((r) => ({ ...r, detail: JSON.parse(r.detail) }));
}

type EventRow = { id: number; mac: string | null; ts: string; kind: string; detail: string };

/** The oldest `limit` events after id `afterId` (and up to `upToId`), oldest first: what reads
 *  forward a page at a time (a stream's backlog, a long answer). */
export function eventsAfter(
  db: Db,
  opts: { mac?: string; afterId: number; upToId?: number; limit: number },
): Event[] {
  const { where, params } = macFilter(opts.mac);
  const rows = db.prepare(
    `SELECT id, mac, ts, kind, detail FROM events
     WHERE ${where}id > :after AND id <= :upTo ORDER BY id LIMIT :limit`,
  ).all({
    ...params,
    after: opts.afterId,
    upTo: opts.upToId ?? Number.MAX_SAFE_INTEGER,
    limit: opts.limit,
  }) as EventRow[];
  return rows.map((r) => ({ ...r, detail: JSON.parse(r.detail) }));
}

/**
 * The events listEvents answers now, read `page` at a time, oldest first, by each call of the
 * returned function ([]: no more): for an answer too large to build whole. Rows deleted meanwhile
 * (retention, a progress row replaced) are left out; rows recorded meanwhile are not in it.
 */
export function eventPages(
  db: Db,
  opts: { mac?: string; sinceId?: number; limit?: number },
  page: number,
): () => Event[] {
  const { where, params } = macFilter(opts.mac);
  const window = db.prepare(
    `SELECT min(id) AS first, max(id) AS last FROM (SELECT id FROM events
       WHERE ${where}id > :since ORDER BY id DESC LIMIT :limit)`,
  ).get({ ...params, since: opts.sinceId ?? 0, limit: opts.limit ?? 1000 }) as {
    first: number | null;
    last: number | null;
  };
  if (window.first === null || window.last === null) return () => [];
  const last = window.last;
  let after = window.first - 1;
  return () => {
    if (after >= last) return [];
    const rows = eventsAfter(db, { mac: opts.mac, afterId: after, upToId: last, limit: page });
    after = rows.length === page ? rows[rows.length - 1].id : last;
    return rows;
  };
}

/** The newest event of each registered node (node lists show it): one look-up in the index on
 *  (mac, id) per node. Grouping every event by MAC read that whole index at each node list or
 *  node page, open reads the dashboard polls: 95 ms of the server's only thread at 1M events. */
export function lastEventByMac(db: Db): Map<string, { ts: string; kind: string }> {
  const rows = db.prepare(
    `SELECT n.mac, e.ts, e.kind FROM nodes n
     JOIN events e ON e.id = (SELECT max(id) FROM events WHERE mac = n.mac)`,
  ).all() as { mac: string; ts: string; kind: string }[];
  return new Map(rows.map((r) => [r.mac, { ts: r.ts, kind: r.kind }]));
}

// ---- rate limit per source address ----

/** The key a sender is limited by: its IPv4 address, or its IPv6 /64 (one host can hold a whole
 *  /64, so finer keys would give it as many budgets as it likes). */
export function sourceKey(address: string | undefined): string {
  if (!address) return "unknown";
  const a = address.replace(/^::ffff:(?=\d+\.)/i, "");
  if (!a.includes(":")) return a;
  const [head, tail = ""] = a.toLowerCase().split("::");
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const groups = [
    ...left,
    ...Array(Math.max(0, 8 - left.length - right.length)).fill("0"),
    ...right,
  ];
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, "")).join(":")}::/64`;
}

interface Bucket {
  tokens: number;
  at: number;
  suppressed: number;
}

/**
 * Token buckets per source: `burst` events at once, refilled at `perMinute`. The table of sources
 * is bounded too (a sender can forge source addresses): past `maxSources`, new sources share one
 * bucket ("other"), so a flood from forged addresses is limited as one sender.
 */
export class SourceLimiter {
  #buckets = new Map<string, Bucket>();
  constructor(
    readonly burst = 10,
    readonly perMinute = 6,
    readonly maxSources = 1024,
    private readonly now: () => number = Date.now,
  ) {}

  /** True when `source` may record one more event now; else its suppressed count goes up. */
  allow(source: string): boolean {
    const now = this.now();
    let key = source;
    if (!this.#buckets.has(key) && this.#buckets.size >= this.maxSources) key = "other";
    let b = this.#buckets.get(key);
    if (!b) this.#buckets.set(key, b = { tokens: this.burst, at: now, suppressed: 0 });
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) * this.perMinute) / 60_000);
    b.at = now;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return true;
    }
    b.suppressed++;
    return false;
  }

  /** What was suppressed since the last call, busiest sources first; sources whose bucket has
   *  refilled are forgotten (the table only holds senders that are still busy). */
  drain(): { total: number; sources: [string, number][] } {
    const now = this.now();
    const sources: [string, number][] = [];
    let total = 0;
    for (const [key, b] of this.#buckets) {
      if (b.suppressed) {
        sources.push([key, b.suppressed]);
        total += b.suppressed;
        b.suppressed = 0;
      } else if (b.tokens + ((now - b.at) * this.perMinute) / 60_000 >= this.burst) {
        this.#buckets.delete(key);
      }
    }
    sources.sort((a, b) => b[1] - a[1]);
    return { total, sources };
  }

  get sources(): number {
    return this.#buckets.size;
  }
}

/**
 * What a source may record: `refusal` for what refused or unknown senders cause (unknown MACs and
 * clients, refused boots, bad reports: 10 at once, then 6 a minute); `node` for the timeline of a
 * registered node (boot files served, stage reports: a boot makes about 5 plus its reports, up to
 * ~120 with a hybrid copy's progress, so 200 at once, then 60 a minute).
 */
export type Budget = "refusal" | "node";
const budgets: Record<Budget, [burst: number, perMinute: number]> = {
  refusal: [10, 6],
  node: [200, 60],
};

/** How often (at most) a summary of suppressed events is written. */
const summaryMs = 60_000;
const gates = new WeakMap<
  Db,
  { limiters: Record<Budget | "dhcp", SourceLimiter>; summarizedAt: number }
>();

function gateFor(db: Db) {
  let g = gates.get(db);
  if (!g) {
    const limiters = {
      refusal: new SourceLimiter(...budgets.refusal),
      node: new SourceLimiter(...budgets.node),
      // One bucket per registered MAC that DHCP is busy with (see recordDhcpAllowed).
      dhcp: new SourceLimiter(...budgets.node, 16_384),
    };
    gates.set(db, g = { limiters, summarizedAt: Date.now() });
  }
  return g;
}

/**
 * Records an event caused by a sender at `source` (its IP address) on the boot network, within
 * the sender's `budget`. A source past its budget is counted instead, and one
 * `events.suppressed` event a minute says how many were dropped from which addresses. False when
 * the event was suppressed.
 */
export function recordFromSource(
  db: Db,
  source: string | undefined,
  mac: string | null,
  // EventKind once netboot/tftp/server.ts types its `record(kind)` helper (the other call sites
  // already pass kinds from the list).
  kind: EventKind,
  detail: Record<string, unknown> = {},
  budget: Budget = "refusal",
): boolean {
  const g = gateFor(db);
  const allowed = g.limiters[budget].allow(sourceKey(source));
  if (allowed) recordEvent(db, mac, kind as EventKind, detail);
  else observe(db, kind, detail); // counted even when the timeline does not keep it
  if (Date.now() - g.summarizedAt >= summaryMs) recordSuppressed(db);
  return allowed;
}

/**
 * Whether a DHCP event, or a node's address move (`node.address`, which DHCP leases and script
 * fetches cause), may be recorded: within its MAC's `node` budget (200 at once, then 60 a
 * minute). A DHCP packet has no source address to limit by (a client has none before its lease:
 * 0.0.0.0), so the claimed MAC stands in. That is sound here and nowhere else: DHCP records events
 * (and address moves) only for registered MACs (an unknown one is registered at most
 * `registerRate` a minute and `registerMax` in all, and ignored past them), so spoofed packets
 * claiming any number of MACs add at most 60 events a minute per node, and cannot push a node's
 * real history out of its `maxPerNode` in seconds. A suppressed event is counted in the
 * `events.suppressed` summary ("dhcp <mac>") and by the metrics.
 */
export function recordDhcpAllowed(
  db: Db,
  mac: string | null,
  kind: EventKind,
  detail: Record<string, unknown>,
): boolean {
  const g = gateFor(db);
  const allowed = g.limiters.dhcp.allow(`dhcp ${mac ?? "server"}`);
  if (!allowed) observe(db, kind, detail);
  if (Date.now() - g.summarizedAt >= summaryMs) recordSuppressed(db);
  return allowed;
}

/** Writes the `events.suppressed` summary (when anything was suppressed since the last one). */
export function recordSuppressed(db: Db): void {
  const g = gateFor(db);
  g.summarizedAt = Date.now();
  const counts = new Map<string, number>();
  for (const l of Object.values(g.limiters)) {
    for (const [s, n] of l.drain().sources) counts.set(s, (counts.get(s) ?? 0) + n);
  }
  const sources = [...counts].sort((a, b) => b[1] - a[1]);
  const total = sources.reduce((a, [, n]) => a + n, 0);
  if (!total) return;
  const top = sources.slice(0, 10);
  recordEvent(db, null, "events.suppressed", {
    events: total,
    sources: Object.fromEntries(top),
    ...(sources.length > top.length ? { otherSources: sources.length - top.length } : {}),
  });
  log.warn("events suppressed (rate limit per source address)", {
    events: total,
    top: top.map(([s, n]) => `${s}:${n}`).join(" "),
  });
}

// ---- retention ----

export interface Retention {
  /** Events older than this go. */
  maxAgeDays: number;
  /** Newest events kept per registered node. */
  maxPerNode: number;
  /** Newest events kept that belong to no registered node (server-wide, unknown or forgotten
   *  MACs): senders can make up MACs, so these share one cap. */
  maxOther: number;
}

export const defaultRetention: Retention = {
  maxAgeDays: 30,
  maxPerNode: 10_000,
  maxOther: 100_000,
};

/** Rows deleted per statement: the prune yields between batches so boot services keep running. */
const batch = 2000;
const tick = () => new Promise((r) => setTimeout(r, 0));

/** Deletes the events matching `where`, `batch` at a time in id order, each batch starting where
 *  the last one ended (not rescanning what it kept). */
async function deleteInBatches(db: Db, where: string, params: Record<string, string | number>) {
  const del = db.prepare(
    `DELETE FROM events WHERE id IN
       (SELECT id FROM events WHERE ${where} AND id > :after ORDER BY id LIMIT ${batch})
     RETURNING id`,
  );
  let total = 0;
  for (let after = 0;;) {
    const ids = (del.all({ ...params, after }) as { id: number }[]).map((r) => r.id);
    total += ids.length;
    if (ids.length < batch) return total;
    after = Math.max(...ids);
    await tick();
  }
}

/** One pass of retention; returns how many events were deleted. */
export async function pruneEvents(db: Db, r: Retention = defaultRetention): Promise<number> {
  let deleted = 0;
  // By age: ids grow with time, so the oldest are the lowest ids (no index on ts needed).
  const cutoff = new Date(Date.now() - r.maxAgeDays * 86_400_000).toISOString();
  const firstKept = db.prepare("SELECT id FROM events WHERE ts >= ? ORDER BY id LIMIT 1")
    .get(cutoff) as { id: number } | undefined;
  deleted += await deleteInBatches(db, "id < :first", {
    first: firstKept?.id ?? Number.MAX_SAFE_INTEGER,
  });
  // By count per registered node: everything up to its (maxPerNode+1)-th newest event. The nodes'
  // events are interleaved, so one pass in id order over all of them (each batch then touches
  // neighbouring pages), with each node's edge looked up in a temporary table.
  db.exec(
    `CREATE TEMP TABLE IF NOT EXISTS prune_edges (mac TEXT PRIMARY KEY, edge INTEGER NOT NULL);
     DELETE FROM temp.prune_edges;`,
  );
  db.prepare(
    `INSERT INTO temp.prune_edges (mac, edge)
     SELECT * FROM (SELECT mac,
       (SELECT id FROM events e WHERE e.mac = n.mac ORDER BY id DESC LIMIT 1 OFFSET ?) AS edge
       FROM nodes n) WHERE edge IS NOT NULL`,
  ).run(r.maxPerNode);
  const top = db.prepare("SELECT max(edge) AS edge FROM temp.prune_edges").get() as {
    edge: number | null;
  };
  if (top.edge !== null) {
    deleted += await deleteInBatches(
      db,
      "id <= :top AND id <= (SELECT edge FROM temp.prune_edges p WHERE p.mac = events.mac)",
      { top: top.edge },
    );
  }
  // Everything else (no MAC, or a MAC no registered node has) under one cap.
  const other = "(mac IS NULL OR mac NOT IN (SELECT mac FROM nodes))";
  const edge = db.prepare(`SELECT id FROM events WHERE ${other} ORDER BY id DESC LIMIT 1 OFFSET ?`)
    .get(r.maxOther) as { id: number } | undefined;
  if (edge) {
    deleted += await deleteInBatches(db, `${other} AND id <= :edge`, { edge: edge.id });
  }
  if (deleted) {
    // Hand the freed pages back to the WAL's checkpoint, so the files stop at their high mark.
    db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  }
  return deleted;
}

/**
 * The server's event upkeep: the suppressed-events summary every minute, retention at start and
 * every `pruneEveryMs` (default 10 minutes). Stopped by close().
 */
export function startEventRetention(
  db: Db,
  r: Retention = defaultRetention,
  pruneEveryMs = 600_000,
): { name: string; close(): Promise<void> } {
  let running: Promise<void> | undefined;
  const prune = () => {
    if (running) return;
    const t0 = performance.now();
    running = pruneEvents(db, r)
      .then((n) => {
        if (n) log.info("events pruned", { deleted: n, ms: Math.round(performance.now() - t0) });
      })
      .catch((e) => log.warn("event prune failed", { error: (e as Error).message }))
      .finally(() => running = undefined);
  };
  const summary = setInterval(() => {
    try {
      recordSuppressed(db);
    } catch (e) {
      log.warn("cannot record suppressed events", { error: (e as Error).message });
    }
  }, summaryMs);
  const pruning = setInterval(prune, pruneEveryMs);
  const first = setTimeout(prune, 1000);
  return {
    name: "events",
    async close() {
      clearInterval(summary);
      clearInterval(pruning);
      clearTimeout(first);
      await running;
      try {
        recordSuppressed(db);
      } catch { /* the database may be closing */ }
    },
  };
}
