import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { existsSync } from "node:fs";
import { UserError } from "../src/errors.ts";
import { migrate, openDatabase, schemaVersion, tx } from "../src/db.ts";

Deno.test("migrations bring a new database to the current schema, once", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const db = openDatabase(`${dir}/t.db`);
    const v = (db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version;
    assert.equal(v, schemaVersion);
    migrate(db); // idempotent
    assert.equal(
      (db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name='nodes'").get() as {
        n: number;
      }).n,
      1,
    );
    assert.equal(
      (db.prepare("PRAGMA journal_mode").get() as { journal_mode: string }).journal_mode,
      "wal",
    );
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tx rolls back on error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const db = openDatabase(`${dir}/t.db`);
    assert.throws(() =>
      tx(db, () => {
        db.prepare("INSERT INTO events (mac, ts, kind) VALUES (NULL, 'x', 'k')").run();
        throw new Error("boom");
      }), /boom/);
    assert.equal((db.prepare("SELECT count(*) AS n FROM events").get() as { n: number }).n, 0);
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a transaction the disk full ended says so (SQLite rolled it back itself), and the database goes on", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const db = openDatabase(`${dir}/t.db`);
    const { page_count } = db.prepare("PRAGMA page_count").get() as { page_count: number };
    db.exec(`PRAGMA max_page_count = ${page_count}`);
    assert.throws(
      () =>
        tx(db, () => {
          db.prepare("INSERT INTO events (mac, ts, kind, detail) VALUES (NULL, 'x', 'k', ?)")
            .run("x".repeat(64 * 1024));
        }),
      /database or disk is full/,
    );
    assert.equal(db.isTransaction, false);
    db.exec("PRAGMA max_page_count = 1073741823");
    tx(db, () => db.prepare("INSERT INTO events (mac, ts, kind) VALUES (NULL, 'x', 'k')").run());
    assert.equal((db.prepare("SELECT count(*) AS n FROM events").get() as { n: number }).n, 1);
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a database from a newer program is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const db = openDatabase(`${dir}/t.db`);
    db.exec(`PRAGMA user_version = ${schemaVersion + 1}`);
    assert.throws(() => migrate(db), /newer than this program/);
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a data dir a newer netroot left: a clear error, its database not written to", async () => {
  // A downgrade: `netroot serve` printed a stack trace, after switching the newer program's
  // database to WAL (a write to its header) and leaving the file open.
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/netroot.db`;
    const newer = new DatabaseSync(path);
    newer.exec(`PRAGMA journal_mode=DELETE; PRAGMA user_version = ${schemaVersion + 1}`);
    newer.close();
    const before = await Deno.readFile(path);
    assert.throws(
      () => openDatabase(path),
      (e) => e instanceof UserError && /newer than this program.*upgrade netroot/.test(e.message),
    );
    assert.deepEqual(await Deno.readFile(path), before);
    assert.ok(!existsSync(`${path}-wal`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("prepare returns the statement already prepared for the same SQL (bounded cache)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const db = openDatabase(`${dir}/t.db`);
    const a = db.prepare("SELECT count(*) AS n FROM nodes");
    assert.equal(db.prepare("SELECT count(*) AS n FROM nodes"), a);
    assert.notEqual(db.prepare("SELECT count(*) AS n FROM images"), a);
    // Reused statements still see new rows and bind new parameters.
    db.prepare("INSERT INTO nodes (mac, name, created_at) VALUES (?, ?, ?)")
      .run("02:00:00:00:00:01", "a", new Date().toISOString());
    db.prepare("INSERT INTO nodes (mac, name, created_at) VALUES (?, ?, ?)")
      .run("02:00:00:00:00:02", "b", new Date().toISOString());
    assert.equal((a.get() as { n: number }).n, 2);
    const byName = (n: string) =>
      (db.prepare("SELECT mac FROM nodes WHERE name = ?").get(n) as { mac: string }).mac;
    assert.equal(byName("a"), "02:00:00:00:00:01");
    assert.equal(byName("b"), "02:00:00:00:00:02");
    // SQL texts made at run time do not grow it without end: past 512 it starts again.
    for (let i = 0; i < 600; i++) db.prepare(`SELECT ${i} AS x`).get();
    assert.notEqual(db.prepare("SELECT count(*) AS n FROM nodes"), a);
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
