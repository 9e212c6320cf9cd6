// The append-only events table: every component writes here; per node it is the boot timeline.
import type { Db } from "./db.ts";

export interface Event {
  id: number;
  mac: string | null;
  ts: string;
  kind: string;
  detail: Record<string, unknown>;
}

export function recordEvent(
  db: Db,
  mac: string | null,
  kind: string,
  detail: Record<string, unknown> = {},
): void {
  db.prepare("INSERT INTO events (mac, ts, kind, detail) VALUES (?, ?, ?, ?)")
    .run(mac, new Date().toISOString(), kind, JSON.stringify(detail));
}

export function listEvents(
  db: Db,
  opts: { mac?: string; sinceId?: number; limit?: number } = {},
): Event[] {
  const rows = db.prepare(
    `SELECT id, mac, ts, kind, detail FROM events
     WHERE (:mac IS NULL OR mac = :mac) AND id > :since ORDER BY id DESC LIMIT :limit`,
  ).all({ mac: opts.mac ?? null, since: opts.sinceId ?? 0, limit: opts.limit ?? 1000 }) as {
    id: number;
    mac: string | null;
    ts: string;
    kind: string;
    detail: string;
  }[];
  return rows.reverse().map((r) => ({ ...r, detail: JSON.parse(r.detail) }));
}
