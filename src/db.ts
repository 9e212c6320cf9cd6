// The embedded state: one SQLite file (node:sqlite), WAL, busy timeout, versioned migrations.
// The database is the truth; the data dir tree (image dirs, node symlinks) is reconciled from it.
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { UserError } from "./errors.ts";

export type Db = DatabaseSync;

/** Append-only list: migration N (1-based) brings user_version from N-1 to N. Never edit a landed one. */
const migrations: string[] = [
  `
  CREATE TABLE images (
    id TEXT PRIMARY KEY,              -- sha256 of the content manifest
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    size INTEGER NOT NULL,            -- bytes of regular files
    files INTEGER NOT NULL,           -- manifest entries
    kernel TEXT,                      -- path inside the rootfs, e.g. /boot/vmlinuz-6.1.0-56-amd64
    initrd TEXT,
    kernel_version TEXT,
    bootable INTEGER NOT NULL DEFAULT 0,
    reason TEXT                       -- why not bootable
  );
  CREATE TABLE nodes (
    mac TEXT PRIMARY KEY,             -- lower-case aa:bb:cc:dd:ee:ff
    name TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL DEFAULT 'pc-x86-64',
    image_id TEXT REFERENCES images(id),
    ip TEXT,                          -- reserved / last known IPv4 address
    virtual INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    last_seen TEXT
  );
  CREATE TABLE node_settings (
    mac TEXT NOT NULL REFERENCES nodes(mac) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (mac, key)
  );
  CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT,                         -- NULL for server-wide events
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,               -- e.g. dhcp.ack, tftp.done, http.kernel, init.stage, deploy
    detail TEXT NOT NULL DEFAULT '{}' -- JSON
  );
  CREATE INDEX events_mac ON events(mac, id);
  CREATE TABLE leases (
    mac TEXT PRIMARY KEY,
    ip TEXT NOT NULL UNIQUE,
    expires_at INTEGER NOT NULL,      -- unix seconds; reservations of registered nodes never lapse
    state TEXT NOT NULL DEFAULT 'offered'   -- offered | bound | released | declined
  );
  CREATE TABLE boots (
    token TEXT PRIMARY KEY,           -- per-boot token put on the kernel command line
    mac TEXT NOT NULL,
    image_id TEXT,
    started_at TEXT NOT NULL,
    reported_at TEXT,
    stage TEXT
  );
  CREATE TABLE vnodes (
    mac TEXT PRIMARY KEY REFERENCES nodes(mac) ON DELETE CASCADE,
    ram TEXT NOT NULL DEFAULT '512M',
    cpus INTEGER NOT NULL DEFAULT 1,
    disks TEXT NOT NULL DEFAULT '[]'  -- JSON [{size, template}]
  );
  `,
  // 2: DHCP looks nodes up by address on every allocation
  `CREATE INDEX nodes_ip ON nodes(ip);`,
  // 3: nodes the DHCP service registered on its own are capped and, while they never get past
  // DHCP, aged out (src/nodes.ts ageOut); an admin's action adopts one (auto_registered = 0)
  `
  ALTER TABLE nodes ADD COLUMN auto_registered INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE nodes ADD COLUMN booted_at TEXT;  -- unused since ageOut reads boots (handover)
  CREATE INDEX nodes_auto ON nodes(mac) WHERE auto_registered = 1;  -- counted per registration
  `,
  // 4: per-boot tokens are secrets: older versions put them in the (openly readable) events
  `UPDATE events SET detail = json_remove(detail, '$.token')
   WHERE kind = 'http.script' AND json_valid(detail) AND json_extract(detail, '$.token') IS NOT NULL;`,
  // 5: node state (src/nodestate.ts): off | booting | booted | down | failed, since when and why;
  // watchdog_reboots counts the watchdog's reboots of the current boot attempt (reset at booted)
  `
  ALTER TABLE nodes ADD COLUMN state TEXT NOT NULL DEFAULT 'off';
  ALTER TABLE nodes ADD COLUMN state_since TEXT;
  ALTER TABLE nodes ADD COLUMN state_reason TEXT;
  ALTER TABLE nodes ADD COLUMN watchdog_reboots INTEGER NOT NULL DEFAULT 0;
  `,
  // 6: image versions (src/images/store.ts). A row is one version (content id); `name` is the
  // image it belongs to (no longer unique) and `current` marks the version the name points at.
  // A node deployed on a name follows it (image_pinned = 0); on an id or NAME@ID it stays.
  // The table is rebuilt (SQLite cannot drop a UNIQUE); nodes.image_id keeps pointing at it:
  // foreign keys are checked at COMMIT, once the rows are back under the same ids.
  `
  PRAGMA defer_foreign_keys = ON;
  CREATE TEMP TABLE images_v5 AS SELECT * FROM images;
  DROP TABLE images;
  CREATE TABLE images (
    id TEXT PRIMARY KEY,              -- sha256 of the content manifest
    name TEXT NOT NULL,               -- the image this version belongs to
    current INTEGER NOT NULL DEFAULT 1,  -- 1: the version the name points at
    created_at TEXT NOT NULL,
    size INTEGER NOT NULL,
    files INTEGER NOT NULL,
    kernel TEXT,
    initrd TEXT,
    kernel_version TEXT,
    bootable INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    made_by TEXT NOT NULL DEFAULT 'import',  -- import | shell | cp | build | save
    command TEXT,                     -- the command that made it
    parent TEXT                       -- the version it was made on
  );
  CREATE UNIQUE INDEX images_current ON images(name) WHERE current = 1;
  CREATE INDEX images_name ON images(name, created_at);
  INSERT INTO images (id, name, current, created_at, size, files, kernel, initrd, kernel_version,
      bootable, reason)
    SELECT id, name, 1, created_at, size, files, kernel, initrd, kernel_version, bootable, reason
    FROM images_v5;
  DROP TABLE temp.images_v5;
  ALTER TABLE nodes ADD COLUMN image_pinned INTEGER NOT NULL DEFAULT 0;
  `,
  // The images a node may be running: its latest boot's (being booted, or running) and that of
  // its latest boot that reached handover (running). Anyone may fetch a node's script, which
  // opens a boot: with the latest boot alone, one GET after a deploy took the running version
  // out of the node's exports, the kept trees and image rm's refusal.
  `
  CREATE INDEX boots_mac ON boots(mac, started_at);
  CREATE VIEW booted_images AS
    SELECT DISTINCT b.mac, b.image_id FROM boots b
    WHERE b.image_id IS NOT NULL AND (
      b.rowid = (SELECT x.rowid FROM boots x WHERE x.mac = b.mac AND x.image_id IS NOT NULL
                 ORDER BY x.started_at DESC, x.rowid DESC LIMIT 1)
      OR b.rowid = (SELECT x.rowid FROM boots x
                    WHERE x.mac = b.mac AND x.image_id IS NOT NULL AND x.stage = 'handover'
                    ORDER BY x.started_at DESC, x.rowid DESC LIMIT 1));
  `,
  // 8: the boots of nodes forgotten before `node forget` removed them (src/nodes.ts deleteRow):
  // their last boot kept the version it ran as a whole tree, for ever
  `DELETE FROM boots WHERE mac NOT IN (SELECT mac FROM nodes);`,
  // 9: an exhausted DHCP pool gives way to its oldest pending offer, else its address declined
  // longest ago (src/boot/leases.ts giveWay), at each DISCOVER: sorted, every parked row (a
  // whole /16: 35 ms a DISCOVER)
  `CREATE INDEX leases_expiry ON leases(state, expires_at);`,
];

export const schemaVersion = migrations.length;

export function openDatabase(path: string): Db {
  ownerOnly(path);
  const db = new DatabaseSync(path, { timeout: 5000 });
  try {
    // A newer netroot's database is refused before anything is written to it (its journal mode
    // included), and the file is closed.
    refuseNewer(db);
    // journal_size_limit: after a checkpoint the WAL file shrinks back to this, not to its peak.
    db.exec(
      "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL; " +
        "PRAGMA journal_size_limit=8388608;",
    );
    migrate(db);
  } catch (e) {
    db.close();
    throw e;
  }
  cacheStatements(db);
  return db;
}

/**
 * Makes `db.prepare` return the statement already prepared for the same SQL text: preparing costs
 * more than running most of these queries (a DHCP registration of a new machine prepared about ten
 * statements: 7–9 ms of its 10 under load, 100 registrations a second in a boot storm). Statements
 * run synchronously to completion (nothing iterates), so sharing one is safe. Bounded: the few
 * SQL texts built at run time (IN lists) cannot grow it without end.
 */
function cacheStatements(db: DatabaseSync): void {
  const prepare = db.prepare.bind(db);
  const cache = new Map<string, StatementSync>();
  db.prepare = (sql: string) => {
    let st = cache.get(sql);
    if (!st) {
      if (cache.size >= 512) cache.clear();
      cache.set(sql, st = prepare(sql));
    }
    return st;
  };
}

/**
 * The database holds every node's boot tokens: only its owner reads it. Created 0600 before SQLite
 * opens it (SQLite gives the -wal and -shm files the database file's mode); an older, wider file
 * is narrowed.
 */
function ownerOnly(path: string): void {
  if (path === ":memory:" || path === "") return;
  try {
    Deno.writeFileSync(path, new Uint8Array(), { createNew: true, mode: 0o600 });
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
  }
  for (const p of [path, `${path}-wal`, `${path}-shm`]) {
    try {
      if ((Deno.statSync(p).mode ?? 0) & 0o077) Deno.chmodSync(p, 0o600);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
}

/** The schema version of a database (its user_version; 0 for a new file). */
export function versionOf(db: Db): number {
  return Number((db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version);
}

/** The schema version, or a UserError when a newer netroot wrote it (an admin's mistake: a
 *  downgrade, a data dir shared between versions), not a stack trace. */
function refuseNewer(db: Db): number {
  const current = versionOf(db);
  if (current > migrations.length) {
    throw new UserError(
      `database schema version ${current} is newer than this program (${migrations.length}): upgrade netroot`,
    );
  }
  return current;
}

/** Brings the schema to `target` (the latest unless a test asks for an older one). */
export function migrate(db: Db, target = migrations.length): void {
  const current = refuseNewer(db);
  for (let v = current; v < target; v++) {
    tx(db, () => {
      db.exec(migrations[v]);
      db.exec(`PRAGMA user_version = ${v + 1}`);
    });
  }
}

/**
 * tx() whose commit is on the disk when it returns. The database runs with synchronous=NORMAL: a
 * power cut can take the last commits back, never its consistency — right for leases, events and
 * states that the next boot writes again, not for what the user was told is done and whose loss
 * costs data: an image version's row (without it the next start removes the version's tree), a
 * rollback, a deploy. FULL for this one commit: SQLite syncs the WAL before COMMIT returns (a few
 * ms). Nested in another transaction it joins it, whose own commit then decides.
 */
export function durableTx<T>(db: Db, fn: () => T): T {
  if (db.isTransaction) return fn();
  db.exec("PRAGMA synchronous=FULL");
  try {
    return tx(db, fn);
  } finally {
    // (SQLite refuses the change inside a transaction: one left open by a failed ROLLBACK keeps
    // FULL, slower but not wrong, and the original error is not hidden.)
    if (!db.isTransaction) db.exec("PRAGMA synchronous=NORMAL");
  }
}

/** Runs fn in a BEGIN IMMEDIATE transaction (node:sqlite has no db.transaction()). Nested calls join. */
export function tx<T>(db: Db, fn: () => T): T {
  if (db.isTransaction) return fn();
  db.exec("BEGIN IMMEDIATE");
  try {
    const out = fn();
    db.exec("COMMIT");
    return out;
  } catch (e) {
    // SQLite has rolled back on its own after some errors (SQLITE_FULL: the disk full, IOERR):
    // a ROLLBACK then fails ("no transaction is active") and would hide what happened.
    if (db.isTransaction) db.exec("ROLLBACK");
    throw e;
  }
}
