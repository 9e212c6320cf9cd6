// Per-boot tokens (table `boots`): every iPXE script fetch opens a boot with a fresh random token
// that goes on the kernel command line; the node-side init presents it with each stage report, so
// a report is accepted only from the boot the server handed out to that MAC, and only while that
// boot runs: after the node's image has started, /proc/cmdline (world-readable there) shows the
// token to every user of the node, so it must not keep working (bootExpiry).
import { randomBytes } from "node:crypto";
import { FINAL_STAGES } from "../contract/report.ts";
import type { Db } from "./db.ts";

export interface Boot {
  token: string;
  mac: string;
  imageId: string | null;
  startedAt: string;
  reportedAt: string | null;
  stage: string | null;
}

/** Boots kept per node: enough history for the timeline, bounded so the table cannot grow forever.
 *  The latest boot that reached handover is kept past them: it is what the node runs (the view
 *  `booted_images`), and 50 script fetches by anyone must not erase it. */
const keepPerNode = 50;

export function openBoot(db: Db, mac: string, imageId: string | null): string {
  const token = randomBytes(16).toString("hex");
  db.prepare("INSERT INTO boots (token, mac, image_id, started_at) VALUES (?, ?, ?, ?)")
    .run(token, mac, imageId, new Date().toISOString());
  db.prepare(
    `DELETE FROM boots WHERE mac = ? AND token NOT IN
       (SELECT token FROM boots WHERE mac = ? ORDER BY started_at DESC, rowid DESC LIMIT ?)
     AND token IS NOT (SELECT token FROM boots WHERE mac = ? AND stage = 'handover'
                       ORDER BY started_at DESC, rowid DESC LIMIT 1)`,
  ).run(mac, mac, keepPerNode, mac);
  return token;
}

/** How long a boot nothing has been heard from is handed out again (its token) to its node's
 *  script fetches instead of a new one: firmware that fetches twice in a boot, or a blind flood
 *  of forged TFTP requests for a Pi's cmdline.txt (UDP: the source is the node's, the answers go
 *  to the node), which would otherwise open a boot each and push the node's own boot, token
 *  and all, out of the 50 kept. Past it, a node that never reported boots anew. */
const unheardReuseMs = 60_000;

/** The token of the node's latest boot when it is of `imageId`, nothing has been heard from it
 *  yet, and it was opened within the last minute (unheardReuseMs); else undefined. */
export function unheardBoot(db: Db, mac: string, imageId: string, now = Date.now()) {
  const r = latestUnheard(db, mac, now);
  return r?.image_id === imageId ? r.token : undefined;
}

/** The version of the node's latest boot while nothing has been heard from it and it is under a
 *  minute old (unheardReuseMs): the boot a Pi's cmdline.txt just opened, whose kernel and
 *  initramfs it fetches next by names that carry no version. */
export function unheardBootImage(db: Db, mac: string, now = Date.now()): string | undefined {
  return latestUnheard(db, mac, now)?.image_id ?? undefined;
}

function latestUnheard(db: Db, mac: string, now: number) {
  const r = db.prepare(
    `SELECT token, image_id, started_at, stage FROM boots WHERE mac = ?
     ORDER BY started_at DESC, rowid DESC LIMIT 1`,
  ).get(mac) as
    | { token: string; image_id: string | null; started_at: string; stage: string | null }
    | undefined;
  if (!r || r.stage !== null) return undefined;
  const age = now - Date.parse(r.started_at);
  return age >= 0 && age < unheardReuseMs ? r : undefined;
}

/** The images the node may be running (view `booted_images`): its latest boot's, and its latest
 *  boot's that reached handover when that is another. */
export function bootedImages(db: Db, mac: string): string[] {
  return (db.prepare("SELECT image_id FROM booted_images WHERE mac = ?").all(mac) as {
    image_id: string;
  }[]).map((r) => r.image_id);
}

/** Whether the server opened a boot of version `imageId` for the node (one of its kept boots). */
export function bootedOn(db: Db, mac: string, imageId: string): boolean {
  const r = db.prepare("SELECT 1 FROM boots WHERE mac = ? AND image_id = ? LIMIT 1")
    .get(mac, imageId);
  return r !== undefined;
}

/** Withdraws a token that never reached a node (its script could not be rendered). */
export function dropBoot(db: Db, token: string): void {
  db.prepare("DELETE FROM boots WHERE token = ?").run(token);
}

export function findBoot(db: Db, token: string): Boot | undefined {
  const r = db.prepare(
    "SELECT token, mac, image_id, started_at, reported_at, stage FROM boots WHERE token = ?",
  ).get(token) as
    | {
      token: string;
      mac: string;
      image_id: string | null;
      started_at: string;
      reported_at: string | null;
      stage: string | null;
    }
    | undefined;
  return r && {
    token: r.token,
    mac: r.mac,
    imageId: r.image_id,
    startedAt: r.started_at,
    reportedAt: r.reported_at,
    stage: r.stage,
  };
}

/** Reports are still taken this long after the final one: the reporter retries a report whose
 *  answer it did not get (overlay/report.ts), and a failed switch-root reports `fatal` after
 *  `handover`. Later reports (a future post-handover watchdog) must come within this window. */
export const endGraceMs = 2 * 60_000;

/** A boot not heard from for this long (plus the node's NFS retry budget, nfs.timeout) is over:
 *  longer than anything the init does silently (kernel download and start, module loading, NFS
 *  retries, one percent of a hybrid copy). */
export const idleMs = 30 * 60_000;

/**
 * When a boot's token stops being accepted: `endGraceMs` after its final report (handover or
 * fatal), else `idleMs + silentS` after the last sign of it (script fetch or report).
 */
export function bootExpiry(boot: Boot, silentS = 0): number {
  const last = Date.parse(boot.reportedAt ?? boot.startedAt);
  if (boot.stage && FINAL_STAGES.has(boot.stage)) return last + endGraceMs;
  return last + idleMs + silentS * 1000;
}

/** Records an accepted report. After the final stage the boot's end time no longer moves (a
 *  repeated or late report must not stretch the grace window), except that a `fatal` after
 *  `handover` is the boot's true outcome. True when the report changed the boot's stage: for a
 *  final stage, the first time the boot ends so (what the boot counters count once). */
export function recordStage(db: Db, token: string, stage: string): boolean {
  return db.prepare(
    `UPDATE boots SET stage = ?, reported_at = ?
     WHERE token = ? AND (stage IS NULL OR stage NOT IN ('handover', 'fatal')
                          OR (stage = 'handover' AND ? = 'fatal'))`,
  ).run(stage, new Date().toISOString(), token, stage).changes > 0;
}

/** The image the node runs: that of its latest boot that reached handover, else of its latest
 *  boot (latest by start, as the view `booted_images` orders them: the version returned is one
 *  the view keeps and exports). Not simply the latest: anyone may fetch a node's script, which
 *  opens a boot of the image it is set to, not of the one it runs. */
export function runningImage(db: Db, mac: string): string | undefined {
  const r = db.prepare(
    `SELECT image_id FROM boots WHERE mac = ? AND image_id IS NOT NULL
     ORDER BY stage IS 'handover' DESC, started_at DESC, rowid DESC LIMIT 1`,
  ).get(mac) as { image_id: string } | undefined;
  return r?.image_id;
}

/** What the API shows of a boot (never its token). */
export interface BootSummary {
  startedAt: string;
  /** The last stage the node reported (null: none yet). */
  stage: string | null;
  reportedAt: string | null;
}

/** The most recent boot of every node that has one (node lists show it). */
export function lastBootByMac(db: Db): Map<string, BootSummary> {
  const rows = db.prepare(
    `SELECT mac, started_at, stage, reported_at FROM (
       SELECT mac, started_at, stage, reported_at, row_number() OVER
         (PARTITION BY mac ORDER BY started_at DESC, rowid DESC) AS newest FROM boots)
     WHERE newest = 1`,
  ).all() as {
    mac: string;
    started_at: string;
    stage: string | null;
    reported_at: string | null;
  }[];
  return new Map(
    rows.map((
      r,
    ) => [r.mac, { startedAt: r.started_at, stage: r.stage, reportedAt: r.reported_at }]),
  );
}
