// The events table: every component appends here (progress replaces its own previous row); per
// node it is the boot timeline.
import { type Db, tx } from "./db.ts";

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

/**
 * Progress (a hybrid copy's percentage): replaces the node's newest event when it is progress of
 * the same kind, so a copy is one timeline row that moves to the end with each report (a new id:
 * `node log --follow` and the dashboard see the update) instead of an event per second.
 */
export function recordProgress(
  db: Db,
  mac: string,
  kind: string,
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
