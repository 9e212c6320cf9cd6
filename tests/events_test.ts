// The events table's bounds: the per-source rate limit (token buckets, bounded source table, one
// summary a minute) and retention (by age, per node, one cap for the rest), the latter through a
// real `serve()` that starts it.
import assert from "node:assert/strict";
import { defaultConfig } from "../src/config.ts";
import { openDatabase } from "../src/db.ts";
import {
  listEvents,
  pruneEvents,
  recordEvent,
  recordFromSource,
  recordSuppressed,
  sourceKey,
  SourceLimiter,
} from "../src/events.ts";
import { closeContext, openContext, serve } from "../src/server.ts";

Deno.test("source limiter: a burst, then the refill rate; forged sources share one bucket", () => {
  let now = 0;
  const l = new SourceLimiter(5, 6, 3, () => now);
  const allowed = (src: string, n: number) =>
    Array.from({ length: n }, () => l.allow(src)).filter(Boolean).length;
  assert.equal(allowed("10.0.0.1", 100), 5);
  assert.equal(allowed("10.0.0.2", 3), 3, "another source has its own budget");
  now += 10_000; // 6 a minute: one more after 10 s
  assert.equal(allowed("10.0.0.1", 10), 1);
  // Past maxSources (3), new sources are limited together.
  assert.equal(allowed("10.0.0.3", 1), 1);
  let shared = 0;
  for (let i = 0; i < 1000; i++) shared += l.allow(`10.1.${i >> 8}.${i & 255}`) ? 1 : 0;
  assert.equal(shared, 5);
  assert.equal(l.sources, 4);
  const d = l.drain();
  assert.equal(d.total, 95 + 9 + 995);
  assert.deepEqual(d.sources[0], ["other", 995]);
  now += 3_600_000; // everyone refilled and quiet: forgotten
  assert.equal(l.drain().total, 0);
  assert.equal(l.sources, 0);
});

Deno.test("sourceKey: IPv4 as is (mapped too), IPv6 by /64", () => {
  assert.equal(sourceKey("10.1.2.3"), "10.1.2.3");
  assert.equal(sourceKey("::ffff:10.1.2.3"), "10.1.2.3");
  assert.equal(sourceKey("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
  assert.equal(sourceKey("2001:db8:1:2:bbbb:cccc:dddd:eeee"), "2001:db8:1:2::/64");
  assert.equal(sourceKey("2001:db8::1"), "2001:db8:0:0::/64");
  assert.equal(sourceKey("::1"), "0:0:0:0::/64");
  assert.equal(sourceKey(undefined), "unknown");
});

Deno.test("recordFromSource: past the budget events are counted, then summarized once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-events-" });
  const db = openDatabase(`${dir}/t.db`);
  try {
    let kept = 0;
    for (let i = 0; i < 500; i++) {
      if (recordFromSource(db, "192.0.2.7", null, "tftp.refused", { i })) kept++;
    }
    recordFromSource(db, "192.0.2.8", null, "tftp.refused", {});
    assert.ok(kept >= 10 && kept < 15, `${kept} kept`);
    recordSuppressed(db);
    recordSuppressed(db); // nothing new: no second summary
    const sums = listEvents(db).filter((e) => e.kind === "events.suppressed");
    assert.equal(sums.length, 1);
    assert.deepEqual(sums[0].detail, { events: 500 - kept, sources: { "192.0.2.7": 500 - kept } });
  } finally {
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pruneEvents: by age, by count per registered node, one cap for everything else", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-prune-" });
  const db = openDatabase(`${dir}/t.db`);
  try {
    const node = "52:54:00:00:00:01";
    db.prepare("INSERT INTO nodes (mac, name, created_at) VALUES (?, 'n1', ?)")
      .run(node, new Date().toISOString());
    const insert = db.prepare("INSERT INTO events (mac, ts, kind) VALUES (?, ?, 'x')");
    const old = new Date(Date.now() - 40 * 86_400_000).toISOString();
    for (let i = 0; i < 50; i++) insert.run(node, old);
    const now = new Date().toISOString();
    for (let i = 0; i < 300; i++) insert.run(node, now);
    for (let i = 0; i < 300; i++) {
      insert.run(`02:00:00:00:${(i >> 8).toString(16)}:${i & 255}`, now);
    }
    for (let i = 0; i < 300; i++) insert.run(null, now);
    const deleted = await pruneEvents(db, { maxAgeDays: 30, maxPerNode: 100, maxOther: 250 });
    const count = (where: string) =>
      (db.prepare(`SELECT count(*) AS n FROM events WHERE ${where}`).get() as { n: number }).n;
    assert.equal(count("ts < '" + now + "'"), 0, "old events gone");
    assert.equal(count(`mac = '${node}'`), 100);
    assert.equal(count(`mac IS NULL OR mac != '${node}'`), 250);
    assert.equal(deleted, 50 + 200 + 350);
    // The newest are the ones kept.
    const newest = db.prepare("SELECT max(id) AS id FROM events").get() as { id: number };
    assert.equal(count(`id = ${newest.id}`), 1);
  } finally {
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve: retention runs without being asked, with the configured bounds", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-retention-" });
  const config = {
    ...defaultConfig(),
    dataDir: dir,
    http: { host: "127.0.0.1", port: 0 },
    events: { maxAgeDays: 7, maxPerNode: 100, maxOther: 500 },
  };
  try {
    const ctx = await openContext(config);
    const node = "52:54:00:00:00:02";
    ctx.nodes.add(node);
    const old = new Date(Date.now() - 8 * 86_400_000).toISOString();
    ctx.db.prepare("INSERT INTO events (mac, ts, kind) VALUES (?, ?, 'ancient')").run(node, old);
    for (let i = 0; i < 400; i++) recordEvent(ctx.db, node, "dhcp.ack");
    for (let i = 0; i < 2000; i++) {
      recordEvent(ctx.db, `02:00:00:00:${i >> 8}:${i & 255}`, "dhcp.ack");
    }
    await closeContext(ctx);

    const server = await serve(config);
    try {
      const count = (where: string) =>
        (server.ctx.db.prepare(`SELECT count(*) AS n FROM events WHERE ${where}`).get() as {
          n: number;
        }).n;
      for (let i = 0; i < 100 && count("1") > 601; i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(count("kind = 'ancient'"), 0);
      assert.equal(count(`mac = '${node}'`), 100);
      assert.ok(count(`mac IS NULL OR mac != '${node}'`) <= 501); // + server.start
    } finally {
      await server.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
