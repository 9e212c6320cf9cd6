// Upgrades: a data dir whose database an earlier netroot made (one fixture per schema version,
// tests/fixtures/schema/v<N>.sql, frozen when that version was current) opens with this code:
// migrated to the latest schema, every row kept, and the tree reconciled from it.
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { defaultConfig } from "../src/config.ts";
import { schemaVersion, versionOf } from "../src/db.ts";
import { closeContext, openContext } from "../src/server.ts";
import { setLogSink } from "../src/log.ts";

const fixtures = fileURLToPath(new URL("./fixtures/schema/", import.meta.url));
const fixture = (v: number) => join(fixtures, `v${v}.sql`);

type Rows = Record<string, Record<string, unknown>[]>;

/** Every row of every table of a database. */
function allRows(db: DatabaseSync): Rows {
  const tables = db.prepare(
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
  ).all() as { name: string }[];
  return Object.fromEntries(
    tables.map((t) => [t.name, db.prepare(`SELECT * FROM ${t.name}`).all() as Rows[string]]),
  );
}

Deno.test("every earlier schema version has its fixture (write it before adding a migration)", () => {
  for (let v = 1; v < schemaVersion; v++) {
    assert.ok(
      existsSync(fixture(v)),
      `missing ${fixture(v)}: run tests/fixtures/schema/generate.ts`,
    );
  }
});

for (let v = 1; v <= schemaVersion; v++) {
  Deno.test(`a data dir of schema ${v} opens migrated to ${schemaVersion}, rows kept`, async () => {
    const sql = await Deno.readTextFile(fixture(v));
    const before = new DatabaseSync(":memory:");
    before.exec(sql);
    assert.equal(versionOf(before), v, "the fixture's own version");
    const old = allRows(before);
    before.close();

    const dir = await Deno.makeTempDir({ prefix: `nr-upgrade-v${v}-` });
    setLogSink(() => {});
    try {
      const file = new DatabaseSync(join(dir, "netroot.db"));
      file.exec(sql);
      file.close();
      // The image trees the rows name, as the old netroot left them.
      for (const img of old.images as { id: string }[]) {
        await Deno.mkdir(join(dir, "images", img.id, "rootfs"), { recursive: true });
        await Deno.writeTextFile(join(dir, "images", img.id, "manifest"), "");
      }
      const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
      try {
        assert.equal(versionOf(ctx.db), schemaVersion);
        const now = allRows(ctx.db);
        for (const [table, rows] of Object.entries(old)) {
          assert.ok(now[table], `table ${table} is gone`);
          assert.equal(now[table].length, rows.length, `rows of ${table}`);
          for (const row of rows) {
            const kept = now[table].some((n) => Object.keys(row).every((k) => n[k] === row[k]));
            assert.ok(kept, `${table} row lost or changed: ${JSON.stringify(row)}`);
          }
        }
        // The registry reads them through the current code: names, images, settings.
        const n1 = ctx.nodes.get("rack1-n1");
        assert.equal(n1.ip, "10.0.0.11");
        assert.equal(n1.settings["kernel.cmdline"], "quiet");
        assert.equal(ctx.images.list()[0].name, "debian12");
        // Reconciled: the deploy symlink points at the image tree.
        assert.equal(
          await Deno.readLink(ctx.data.nodeFs("52:54:00:00:00:01")),
          `../../images/${"a".repeat(64)}/rootfs`,
        );
      } finally {
        await closeContext(ctx);
      }
    } finally {
      setLogSink((l) => console.error(l));
      await Deno.remove(dir, { recursive: true });
    }
  });
}
