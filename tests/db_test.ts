import assert from "node:assert/strict";
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
