// Hostile floods against the real servers: 100,000 refused TFTP requests (from 2,000 source
// addresses, over loopback), 100,000 boot reports with made-up tokens from as many made-up MACs, and
// 20,000 boot-script fetches for unknown MACs must leave the database under a fixed size: what
// anyone on the boot network can cause is recorded at the rate limit of its source address.
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { Hono } from "hono";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { bootRoutes } from "../netboot/http.ts";
import { contextBooter } from "../src/boot/booter.ts";
import { startTftpService as startTftp } from "../src/boot/services.ts";

const rrq = (name: string) => new TextEncoder().encode(`\0\x01${name}\0octet\0`);
const mb = (n: number) => (n / 2 ** 20).toFixed(2);

/** 127.1.x.y: the whole 127/8 is loopback on Linux, so each socket is its own source address. */
async function tftpSources(n: number): Promise<dgram.Socket[]> {
  const socks: dgram.Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = dgram.createSocket("udp4");
    await new Promise<void>((res, rej) => {
      s.once("error", rej);
      s.bind(0, `127.1.${(i / 250) | 0}.${(i % 250) + 1}`, () => res());
    });
    socks.push(s);
  }
  return socks;
}

/** Sends `total` RRQs for missing files, `window` at a time (one per socket), each round waiting
 *  for the ERROR replies so the server's receive buffer never overflows. Returns replies seen. */
async function floodTftp(socks: dgram.Socket[], port: number, total: number, window = 200) {
  let replies = 0;
  let pending = 0;
  let wake: (() => void) | undefined;
  for (const s of socks) {
    s.on("message", (m) => {
      if (m[1] === 5) replies++; // ERROR
      if (--pending <= 0) wake?.();
    });
  }
  for (let sent = 0; sent < total;) {
    const n = Math.min(window, total - sent);
    pending = n;
    const done = new Promise<void>((r) => wake = r);
    for (let i = 0; i < n; i++) {
      socks[(sent + i) % socks.length].send(rrq(`missing/${sent + i}`), port, "127.0.0.1");
    }
    sent += n;
    await Promise.race([done, new Promise((r) => setTimeout(r, 2000))]);
  }
  return replies;
}

const randomMac = () =>
  "02:" +
  Array.from(crypto.getRandomValues(new Uint8Array(5)), (b) => b.toString(16).padStart(2, "0"))
    .join(":");

Deno.test({
  name:
    "flood: 100k refused TFTP requests, 100k bogus reports from many MACs: db under a fixed size",
  sanitizeResources: false, // dgram sockets close asynchronously
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nr-flood-" });
    const ctx = await openContext({
      ...defaultConfig(),
      dataDir: dir,
      tftp: { port: 0 },
      ipxeDir: dir,
    });
    const tftp = await startTftp(ctx);
    const app = new Hono().route("/boot", bootRoutes(contextBooter(ctx)));
    const ac = new AbortController();
    const ready = Promise.withResolvers<number>();
    const http = Deno.serve(
      { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen: (a) => ready.resolve(a.port) },
      app.fetch,
    );
    const url = `http://127.0.0.1:${await ready.promise}`;
    const socks = await tftpSources(2000);
    try {
      const t0 = performance.now();
      const replies = await floodTftp(socks, tftp.port, 100_000);
      assert.ok(replies > 95_000, `TFTP answered ${replies} of 100000 requests`);
      const tTftp = performance.now();

      // Reports: a few thousand over the wire, the rest through the same handler in-process with
      // made-up peers (TCP senders cannot forge their address; 500 real ones are assumed here).
      const report = () =>
        JSON.stringify({ token: crypto.randomUUID(), mac: randomMac(), stage: "handover" });
      for (let i = 0; i < 2000; i++) {
        const r = await fetch(`${url}/boot/report`, { method: "POST", body: report() });
        assert.equal(r.status, 403);
        await r.body?.cancel();
      }
      const peer = (i: number) => ({
        remoteAddr: {
          transport: "tcp",
          hostname: `10.66.${(i % 500) >> 8}.${i % 250 + 1}`,
          port: 1,
        },
      });
      for (let i = 0; i < 98_000; i++) {
        const r = await app.request("/boot/report", { method: "POST", body: report() }, peer(i));
        assert.equal(r.status, 403);
      }
      for (let i = 0; i < 20_000; i++) {
        const mac = randomMac().replaceAll(":", "-");
        const r = await app.request(`/boot/${mac}.ipxe`, {}, peer(i));
        assert.equal(r.status, 200);
        await r.text();
      }
      const tHttp = performance.now();

      ctx.db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
      const size = (p: string) => Deno.stat(p).then((s) => s.size, () => 0);
      const bytes = await size(ctx.data.db) + await size(`${ctx.data.db}-wal`);
      const kinds = ctx.db.prepare("SELECT kind, count(*) AS n FROM events GROUP BY kind")
        .all() as { kind: string; n: number }[];
      const events = kinds.reduce((a, k) => a + k.n, 0);
      console.log(
        `flood: TFTP 100k in ${((tTftp - t0) / 1000).toFixed(1)} s, HTTP 120k in ${
          ((tHttp - tTftp) / 1000).toFixed(1)
        } s; ${events} events (${kinds.map((k) => `${k.kind} ${k.n}`).join(", ")}), database ${
          mb(bytes)
        } MiB`,
      );
      // Bound: (1,024 tracked sources + 1 shared) × burst, plus refill over the test's minutes.
      assert.ok(events < 25_000, `${events} events recorded`);
      assert.ok(bytes < 6 * 2 ** 20, `database is ${mb(bytes)} MiB`);
    } finally {
      for (const s of socks) s.close();
      await tftp.close();
      ac.abort();
      await http.finished;
      await closeContext(ctx);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("flood: a registered node's script and reports, 5,000 each and 500 full batches from one address: bounded", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-flood-node-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  try {
    const id = "ab".repeat(32);
    ctx.db.prepare(
      `INSERT INTO images (id, name, created_at, size, files, kernel, initrd, bootable)
       VALUES (?, 'img', ?, 0, 0, '/vmlinuz', '/initrd.img', 1)`,
    ).run(id, new Date().toISOString());
    Deno.mkdirSync(ctx.data.rootfs(id), { recursive: true });
    const mac = "52:54:00:f1:00:01";
    ctx.nodes.add(mac, { image: "img" });
    ctx.nodes.configure(mac, { initramfs: "image" });
    const app = new Hono().route("/boot", bootRoutes(contextBooter(ctx)));
    // A boot token is anyone's for a script fetch: reports with it are no more trusted.
    const env = { remoteAddr: { transport: "tcp", hostname: "10.66.0.9", port: 1 } };
    let token = "";
    for (let i = 0; i < 5_000; i++) {
      const s = await (await app.request(`/boot/${mac}.ipxe`, {}, env)).text();
      token = /netroot\.token=([0-9a-f]+)/.exec(s)![1];
    }
    // A report's free-form detail is kept to 4 KiB (the body may be 64 KiB).
    const long = JSON.stringify({ token, mac, stage: "fatal", detail: "x".repeat(60_000) });
    assert.equal((await app.request("/boot/report", { method: "POST", body: long })).status, 200);
    const stored = ctx.db.prepare("SELECT detail FROM events WHERE kind = 'init.fatal'").get() as {
      detail: string;
    };
    assert.ok(stored.detail.length < 4300, `a report's detail stored as ${stored.detail.length} B`);
    const body = JSON.stringify({ token, mac, stage: "hybrid-copy", done: 1, total: 2 });
    for (let i = 0; i < 5_000; i++) {
      const r = await app.request("/boot/report", { method: "POST", body }, env);
      assert.equal(r.status, 200);
    }
    // Batches, as an attacker holding the token would send them: the most reports a body may hold
    // (64, each with a 900-byte detail), seq counting up so none is a duplicate, 500 times from
    // one address: each report still goes through the per-source budget, and a bigger batch is
    // refused before anything of it is recorded.
    let seq = 1;
    for (let i = 0; i < 500; i++) {
      const reports = Array.from({ length: 64 }, () => ({
        seq: seq++,
        stage: "modules",
        detail: "y".repeat(900),
      }));
      const r = await app.request(
        "/boot/report",
        { method: "POST", body: JSON.stringify({ token, mac, reports }) },
        env,
      );
      assert.equal(r.status, 200);
      await r.body?.cancel();
    }
    const tooMany = Array.from({ length: 65 }, () => ({ seq: seq++, stage: "modules" }));
    const big = await app.request(
      "/boot/report",
      { method: "POST", body: JSON.stringify({ token, mac, reports: tooMany }) },
      env,
    );
    assert.equal(big.status, 400);
    const over = Array.from(
      { length: 64 },
      () => ({ seq: seq++, stage: "x", detail: "z".repeat(1100) }),
    );
    const large = await app.request(
      "/boot/report",
      { method: "POST", body: JSON.stringify({ token, mac, reports: over }) },
      env,
    );
    assert.equal(large.status, 413); // past the 64 KiB body bound
    const n = (ctx.db.prepare("SELECT count(*) AS n FROM events WHERE mac = ?").get(mac) as {
      n: number;
    }).n;
    const boots = (ctx.db.prepare("SELECT count(*) AS n FROM boots").get() as { n: number }).n;
    console.log(`flood of one node: ${n} events, ${boots} boots kept`);
    assert.ok(n < 1000, `${n} events for the node`);
    assert.ok(boots <= 50, `${boots} boots kept`);
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});
