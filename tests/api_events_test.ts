// The timeline's answers as an attacker on the boot network reads them (reads are open by
// default): an answer a client never reads holds a page of it, not all of it; a HEAD holds no live
// stream; and a stream's backlog comes whole, in order.
import assert from "node:assert/strict";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { listEvents, recordEvent } from "../src/events.ts";
import { eventStreams } from "../src/eventstream.ts";
import { buildApp, closeContext, openContext } from "../src/server.ts";

const mac = "52:54:00:e7:00:01";
const other = "52:54:00:e7:00:02";
const info = {
  remoteAddr: { transport: "tcp", hostname: "10.77.0.66", port: 40000 },
  completed: Promise.resolve(),
};

async function withApp(
  fn: (
    ctx: Context,
    get: (path: string, init?: RequestInit, from?: string) => Promise<Response>,
  ) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "nr-api-events-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  const app = buildApp(ctx);
  try {
    await fn(
      ctx,
      async (path, init, from) =>
        await app.fetch(
          new Request(`http://127.0.0.1:8080${path}`, init),
          from ? { ...info, remoteAddr: { ...info.remoteAddr, hostname: from } } : info,
        ),
    );
  } finally {
    ctx.changes.dispatchEvent(new Event("closing")); // what serve's close does: streams end
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("events answers: streamed a page at a time, the same events as before (attacker)", async () => {
  await withApp(async (ctx, get) => {
    ctx.nodes.add(mac, { name: "n1" });
    ctx.nodes.add(other, { name: "n2" });
    // What a node's root can leave on its timeline over a few hours of reports (4 KiB details,
    // 60 a minute): 10,000 of them made each answer 40 MB, and 64 answers that one address
    // asked for and never read held 2 GB of the server.
    const pad = "x".repeat(2000);
    ctx.db.exec("BEGIN");
    for (let i = 0; i < 1500; i++) {
      recordEvent(ctx.db, i % 3 ? mac : other, "init.network", { pad, i });
    }
    ctx.db.exec("COMMIT");

    const res = await get(`/api/v1/events?limit=10000`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /application\/json/);
    const reader = res.body!.getReader();
    const first = (await reader.read()).value!;
    assert.ok(
      first.length < 512 * 1024,
      `the answer was built whole before anyone read it (${first.length} bytes at once)`,
    );
    const chunks = [first];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(value);
    }
    const all = JSON.parse(await new Blob(chunks).text());
    assert.deepEqual(all, listEvents(ctx.db, { limit: 10000 }));

    // The same answers as listEvents for every filter: newest `limit` after `since`, oldest first.
    const since = listEvents(ctx.db, { mac, limit: 1000 })[0].id;
    for (
      const [path, want] of [
        [`/api/v1/events?mac=${mac}&limit=10000`, listEvents(ctx.db, { mac, limit: 10000 })],
        [`/api/v1/nodes/n2/events?limit=7`, listEvents(ctx.db, { mac: other, limit: 7 })],
        [
          `/api/v1/events?node=n1&since=${since}&limit=250`,
          listEvents(ctx.db, { mac, sinceId: since, limit: 250 }),
        ],
        [`/api/v1/events`, listEvents(ctx.db, { limit: 200 })],
        [`/api/v1/events?limit=0`, []],
        [`/api/v1/events?since=999999999`, []],
      ] as const
    ) {
      const r = await get(path);
      assert.equal(r.status, 200, path);
      assert.deepEqual(await r.json(), want, path);
    }
    const bad = await get(`/api/v1/events?limit=-1`);
    assert.equal(bad.status, 400);
    assert.match((await bad.json()).error, /limit must be a whole number/);
    const unknown = await get(`/api/v1/events?node=nope`);
    assert.equal(unknown.status, 404);
    await unknown.body?.cancel();
  });
});

Deno.test("event streams: a HEAD opens no stream, so HEADs cannot hold every place for 10 minutes (attacker)", async () => {
  await withApp(async (_ctx, get) => {
    const sse = { accept: "text/event-stream" };
    for (let i = 0; i < 40; i++) {
      const r = await get("/api/v1/events", { method: "HEAD", headers: sse });
      assert.equal(r.status, 200);
      assert.match(r.headers.get("content-type") ?? "", /^text\/event-stream/);
      await r.body?.cancel();
    }
    // Each HEAD is over (its connection may be closed): the places are all still free.
    const r = await get("/api/v1/events", { headers: sse });
    assert.equal(r.status, 200, "HEADs held the streams' places: " + r.status);
    await r.body?.cancel();
  });
});

Deno.test("event streams: one neighbour without the token cannot take every place open to the read-only dashboards (attacker)", async () => {
  await withApp(async (_ctx, get) => {
    const sse = { accept: "text/event-stream" };
    // Reads are open by default: a neighbour opens live streams, as many as it is given.
    const held: Response[] = [];
    for (let i = 0; i < 40; i++) {
      const r = await get("/api/v1/events", { headers: sse });
      if (r.status !== 200) {
        assert.equal(r.status, 503);
        assert.match((await r.json()).error, /event streams open from 10\.77\.0\.66/);
        break;
      }
      held.push(r);
    }
    // An admin's dashboard, not logged in (it shows everything but the actions), from another
    // machine: its node page's timeline is live.
    const viewer = await get("/api/v1/events?mac=" + mac, { headers: sse }, "10.77.0.67");
    assert.equal(viewer.status, 200, `the neighbour holds ${held.length} streams: none left`);
    await viewer.body?.cancel();
    for (const r of held) await r.body?.cancel();
  });
});

Deno.test("event streams: a reload to api.auth all ends the streams opened without the token (attacker)", async () => {
  await withApp(async (ctx, get) => {
    const sse = { accept: "text/event-stream" };
    const reader = (await get("/api/v1/events", { headers: sse })).body!.getReader();
    const dec = new TextDecoder();
    let text = dec.decode((await reader.read()).value);
    assert.match(text, /retry/);
    // The admin sees a neighbour reading the lab's timeline and closes reads (SIGHUP after
    // api.auth "all" in the config file: what the reload sets).
    ctx.config.api = { ...ctx.config.api, auth: "all" };
    recordEvent(ctx.db, mac, "node.config", { "kernel.cmdline": "after the reload" });
    const until = Date.now() + 5000;
    for (;;) {
      const next = await Promise.race([
        reader.read(),
        new Promise<undefined>((r) =>
          setTimeout(() => r(undefined), Math.max(0, until - Date.now()))
        ),
      ]);
      if (!next || next.done) break;
      text += dec.decode(next.value);
    }
    assert.doesNotMatch(text, /after the reload/, "the neighbour still reads the timeline");
    const again = await get("/api/v1/events", { headers: sse });
    assert.equal(again.status, 401, "and cannot open it again");
    await again.body?.cancel();
    await reader.cancel();
  });
});

Deno.test("event streams: a backlog longer than one batch comes whole and in order", async () => {
  await withApp(async (ctx) => {
    ctx.db.exec("BEGIN");
    for (let i = 0; i < 1234; i++) recordEvent(ctx.db, null, "node.config", { i });
    ctx.db.exec("COMMIT");
    const want = listEvents(ctx.db, { limit: 10000 }).map((e) => e.id);
    const streams = eventStreams(ctx.db);
    try {
      const reader = streams.respond({ since: 0 }).body!.getReader();
      let text = "";
      const dec = new TextDecoder();
      const until = Date.now() + 10_000;
      while (!text.includes(`id: ${want.at(-1)}\n`)) {
        assert.ok(Date.now() < until, "the newest event never came");
        const { value, done } = await reader.read();
        if (done) break;
        text += dec.decode(value);
      }
      const got = [...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
      assert.deepEqual(got, want, `${got.length} of ${want.length} events, from ${got[0]}`);
      await reader.cancel();
    } finally {
      streams.closeAll();
    }
  });
});

// A neighbour asks for the timeline of a MAC that has none (any MAC: a forgotten node's timeline
// stays readable), as a list, a node's page or a live stream, and for the node list or a node (the
// dashboard polls them), with their last events. `(:mac IS NULL OR mac = :mac)` is not planned
// through the index on (mac, id): each such read walked every event, 150 ms of the server's only
// thread at 1M events (100 nodes' 10,000 each), again and again; the last events, grouped by MAC,
// read that whole index, 95 ms. Through the index each is well under 1 ms. Every step of every
// statement those reads run on events must be a look-up by MAC or by id, never a walk.
Deno.test("events answers: a MAC's timeline and the nodes' last events are read through the index, not by walking every node's (attacker)", async () => {
  await withApp(async (ctx, get) => {
    ctx.nodes.add(mac, { name: "n1" });
    ctx.db.exec("BEGIN");
    for (let i = 0; i < 300; i++) recordEvent(ctx.db, mac, "init.network", { i });
    ctx.db.exec("COMMIT");
    const statements = new Set<string>();
    const prepare = ctx.db.prepare.bind(ctx.db);
    ctx.db.prepare = (sql: string) => {
      if (/\bFROM events\b/.test(sql)) statements.add(sql);
      return prepare(sql);
    };
    const nobody = "02:00:00:00:be:ef";
    for (
      const [path, init] of [
        [`/api/v1/events?mac=${nobody}`, {}],
        [`/api/v1/nodes/${nobody}/events?limit=10000`, {}],
        [`/api/v1/events?mac=${nobody}`, { headers: { accept: "text/event-stream" } }],
        [`/api/v1/nodes/n1/events`, {}],
        [`/api/v1/nodes`, {}],
        [`/api/v1/nodes/n1`, {}],
      ] as const
    ) {
      const r = await get(path, init);
      assert.equal(r.status, 200, path);
      await r.body?.cancel();
    }
    ctx.db.prepare = prepare;
    assert.ok(statements.size >= 4, [...statements].join("\n"));
    for (const sql of statements) {
      const steps = (ctx.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all() as { detail: string }[])
        .map((p) => p.detail);
      for (const step of steps.filter((d) => /^(SCAN|SEARCH) (events|e)\b/.test(d))) {
        assert.match(step, /\((mac|rowid)=\?/, `${sql}\n→ ${steps.join("; ")}`);
      }
    }
  });
});
