// What one host that reaches the HTTP port can hold, tried as such a host would: many connections
// from one address, request heads that never end, idle keep-alive connections, request bodies
// that stall. Each client binds its own 127.1.x.y address (all of 127/8 is loopback on Linux), so
// each stands for another host on the boot network; 127.0.0.1 is the server machine itself.
import assert from "node:assert/strict";
import http2 from "node:http2";
import net from "node:net";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { bodyLimits, textUpTo } from "../netboot/httpbody.ts";
import { listenBounded } from "../src/httpbounds.ts";
import { type RunningServer, serve } from "../src/server.ts";

/** A raw TCP client from `from` that sends `text` and records when the server ends it. */
async function client(port: number, from: string, text: string) {
  const sock = net.connect({ host: "127.0.0.1", port, localAddress: from });
  let received = "";
  let ended = false;
  const closed = new Promise<void>((r) => sock.on("close", () => (ended = true, r())));
  sock.on("data", (d) => received += d.toString());
  sock.on("error", () => {});
  await new Promise<void>((r, j) => {
    sock.on("connect", () => r());
    sock.on("error", j);
  });
  if (text) sock.write(text);
  return {
    sock,
    closed,
    get ended() {
      return ended;
    },
    get received() {
      return received;
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const partialHead = "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";

async function until(what: string, cond: () => boolean, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

Deno.test("http: one address holds at most its share of connections; another address and the server machine still get in", async () => {
  const l = listenBounded({
    hostname: "127.0.0.1",
    port: 0,
    handler: () => new Response("ok"),
    limits: { perSource: 4, total: 12, idleMs: 60_000 },
  });
  const port = l.addr.port;
  const all: Awaited<ReturnType<typeof client>>[] = [];
  try {
    // Six heads that never end from one address: four are kept, two are closed at once.
    for (let i = 0; i < 6; i++) all.push(await client(port, "127.1.0.1", partialHead));
    await until("two refusals", () => l.refused() === 2);
    await until("the refused ones closed", () => all.filter((c) => c.ended).length === 2);
    assert.equal(l.open(), 4);
    // Another host is served.
    const other = await client(port, "127.1.0.2", "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    all.push(other);
    await until("an answer to another address", () => other.received.includes("\r\n\r\nok"));
    // The server machine is not held to a share: seven more from 127.0.0.1 fill the total (12).
    for (let i = 0; i < 7; i++) all.push(await client(port, "127.0.0.1", partialHead));
    await until("12 open", () => l.open() === 12);
    const late = await client(port, "127.1.0.3", "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    all.push(late);
    await late.closed;
    assert.equal(late.received, "", "past the total, a connection is closed unanswered");
    assert.equal(l.refused(), 3);
    // Once the holder goes away, its place is free again.
    for (const c of all.slice(0, 6)) c.sock.destroy();
    await until("the holder's connections counted out", () => l.open() === 12 - 4);
    const again = await client(port, "127.1.0.1", "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    all.push(again);
    await until("the holder's address answered again", () => again.received.includes("ok"));
  } finally {
    for (const c of all) c.sock.destroy();
    await l.shutdown();
  }
});

Deno.test("http: a head that never ends and an unused keep-alive connection are closed; a slow answer is not cut", async () => {
  const l = listenBounded({
    hostname: "127.0.0.1",
    port: 0,
    // A response that takes 1.5 s to send (a kernel to a slow node, an event stream).
    handler: (req) =>
      new URL(req.url).pathname === "/slow"
        ? new Response(
          new ReadableStream({
            async start(ctl) {
              for (let i = 0; i < 15; i++) {
                ctl.enqueue(new TextEncoder().encode(`${i};`));
                await sleep(100);
              }
              ctl.close();
            },
          }),
        )
        : new Response("ok"),
    limits: { perSource: 64, total: 64, idleMs: 300 },
  });
  const port = l.addr.port;
  try {
    const t0 = Date.now();
    const stalled = await client(port, "127.1.0.1", partialHead);
    const kept = await client(port, "127.1.0.2", "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    const slow = await client(port, "127.1.0.3", "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    await until("the answer on the kept-alive connection", () => kept.received.includes("ok"));
    await Promise.all([stalled.closed, kept.closed]);
    const idle = Date.now() - t0;
    assert.ok(idle >= 250 && idle < 3000, `idle connections closed after ${idle} ms`);
    await slow.closed;
    const parts = slow.received.match(/\d+;/g) ?? []; // chunked: count the parts sent
    assert.deepEqual(parts, Array.from({ length: 15 }, (_, i) => `${i};`), "the slow answer whole");
    assert.equal(l.open(), 0);
  } finally {
    await l.shutdown();
  }
});

Deno.test("http bodies: too slow is 408, too large is 413, too many at once from one address is 503", async () => {
  const saved = { ...bodyLimits };
  Object.assign(bodyLimits, { deadlineMs: 400, readers: 6, readersPerSource: 2 });
  const l = listenBounded({
    hostname: "127.0.0.1",
    port: 0,
    handler: async (req, info) => {
      const t = await textUpTo(req, 100, (info.remoteAddr as Deno.NetAddr).hostname);
      return typeof t === "string"
        ? new Response(`read ${t.length}`)
        : new Response(t.message, { status: t.status });
    },
  });
  const port = l.addr.port;
  const post = (len: number, body: string) =>
    `POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ${len}\r\n\r\n${body}`;
  const status = (c: { received: string }) => /^HTTP\/1\.1 (\d+)/.exec(c.received)?.[1];
  const all: Awaited<ReturnType<typeof client>>[] = [];
  try {
    const ok = await client(port, "127.1.0.1", post(5, "hello"));
    all.push(ok);
    await until("a whole body read", () => ok.received.includes("read 5"));
    // Declared too large, and too large without a length (chunked).
    const big = await client(port, "127.1.0.1", post(1000, "x".repeat(1000)));
    const chunked = await client(
      port,
      "127.1.0.1",
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
        "40\r\n" + "y".repeat(64) + "\r\n40\r\n" + "y".repeat(64) + "\r\n0\r\n\r\n",
    );
    all.push(big, chunked);
    await until("two 413", () => status(big) === "413" && status(chunked) === "413");
    // Three stalled bodies from one address: two are read (then 408), the third refused at once.
    const t0 = Date.now();
    const stalled: typeof all = [];
    for (let i = 0; i < 3; i++) stalled.push(await client(port, "127.1.0.2", post(50, "ab")));
    all.push(...stalled);
    await until("one refused at once", () => stalled.some((c) => status(c) === "503"));
    assert.ok(Date.now() - t0 < 350, "refused before the deadline");
    // Another address still has its readers.
    const other = await client(port, "127.1.0.3", post(3, "abc"));
    all.push(other);
    await until("another address's body read", () => other.received.includes("read 3"));
    await until("two 408", () => stalled.filter((c) => status(c) === "408").length === 2);
    assert.ok(Date.now() - t0 >= 380, "408 only at the deadline");
    assert.match(stalled.find((c) => status(c) === "408")!.received, /not received within 0.4 s/);
  } finally {
    Object.assign(bodyLimits, saved);
    for (const c of all) c.sock.destroy();
    await l.shutdown();
  }
});

Deno.test("http: the real server under 100 connections with stalled reports from one address still answers a node", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-httpbounds-" });
  const saved = { ...bodyLimits };
  bodyLimits.deadlineMs = 1000;
  const cfg = defaultConfig();
  cfg.dataDir = join(dir, "data");
  cfg.http = { host: "127.0.0.1", port: 0 };
  let server: RunningServer | undefined;
  const all: Awaited<ReturnType<typeof client>>[] = [];
  try {
    server = await serve(cfg);
    const port = server.http.port;
    const report = (body: string, len = body.length) =>
      `POST /boot/report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${len}\r\n\r\n${body}`;
    for (let i = 0; i < 100; i++) {
      all.push(await client(port, "127.1.0.9", report(`{"token":"`, 60_000)));
    }
    // 64 are taken, 36 closed unanswered; of the 64, 8 are read and 56 answered 503 at once.
    const answers = (code: string) => all.filter((c) => c.received.startsWith(`HTTP/1.1 ${code}`));
    const unanswered = () => all.filter((c) => c.ended && c.received === "").length;
    await until("the share's refusals", () => answers("503").length + unanswered() >= 36 + 56);
    assert.equal(answers("503").length, 56);
    assert.equal(unanswered(), 36);
    // A node (another address) is answered meanwhile: its report is judged on its contents.
    const node = await client(
      port,
      "127.1.0.10",
      report(JSON.stringify({ token: "0".repeat(32), mac: "52:54:00:00:00:01", stage: "x" })),
    );
    all.push(node);
    await until("the node's answer", () => node.received.includes("\r\n\r\n"));
    assert.doesNotMatch(node.received, /^HTTP\/1\.1 (503|408)/, node.received);
    // The eight that were read end with 408 at the deadline.
    await until("eight 408", () => answers("408").length === 8, 5000);
    // The admin sees it in /metrics.
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(metrics, /^netroot_http_connections_refused_total 36$/m);
    assert.match(metrics, /^netroot_http_connections \d+$/m);
  } finally {
    Object.assign(bodyLimits, saved);
    for (const c of all) c.sock.destroy();
    await server?.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("http: a request answered without its body (a 401), the body never sent, is closed when idle and does not hold shutdown", async () => {
  const answer = new Uint8Array(2_000_000).fill(65);
  const l = listenBounded({
    hostname: "127.0.0.1",
    port: 0,
    handler: async (req) => {
      if (req.method === "POST") return new Response("token needed", { status: 401 });
      await sleep(200);
      return new Response(answer);
    },
    limits: { perSource: 64, total: 64, idleMs: 300 },
  });
  const port = l.addr.port;
  const post = "POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab";
  const all: Awaited<ReturnType<typeof client>>[] = [];
  try {
    const held = await client(port, "127.1.0.1", post);
    all.push(held);
    await until("the 401", () => held.received.startsWith("HTTP/1.1 401"));
    await until("the idle connection closed", () => held.ended, 3000);
    assert.equal(l.open(), 0);
    // At shutdown, the same connection is not waited for.
    const again = await client(port, "127.1.0.1", post);
    all.push(again);
    await until("the 401 again", () => again.received.startsWith("HTTP/1.1 401"));
    // ... while an answer under way is still sent whole.
    const slow = await client(port, "127.1.0.2", "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    all.push(slow);
    await sleep(50);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stopped = await Promise.race([
      l.shutdown().then(() => true),
      new Promise<boolean>((r) => timer = setTimeout(() => r(false), 3000)),
    ]);
    clearTimeout(timer);
    assert.ok(stopped, "shutdown waited for a body nobody sends");
    await Promise.all([again.closed, slow.closed]);
    assert.ok(slow.received.length > answer.length, `${slow.received.length} bytes received`);
  } finally {
    for (const c of all) c.sock.destroy();
    await l.shutdown();
  }
});

Deno.test("http: HTTP/2 (prior knowledge) streams on one connection count within the address's share", async () => {
  let running = 0, most = 0;
  const from = new Set<string>();
  const l = listenBounded({
    hostname: "127.0.0.1",
    port: 0,
    handler: async (_req, info) => {
      from.add((info.remoteAddr as Deno.NetAddr).hostname);
      most = Math.max(most, ++running);
      await sleep(300);
      running--;
      return new Response("ok");
    },
    limits: { perSource: 4, total: 64, idleMs: 60_000 },
  });
  // One connection from one host, 40 requests at once (Deno's HTTP/2 takes 200 a connection).
  const h2 = http2.connect(`http://127.0.0.1:${l.addr.port}`, {
    localAddress: "127.1.0.1",
  } as http2.SecureClientSessionOptions);
  h2.on("error", () => {});
  try {
    const statuses = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        new Promise<number>((resolve) => {
          const r = h2.request({ ":path": `/${i}` });
          r.on("response", (h) => resolve(Number(h[":status"])));
          r.on("error", () => resolve(0));
          r.resume();
          r.end();
        })),
    );
    assert.deepEqual([...from], ["127.1.0.1"]);
    assert.equal(l.open(), 1);
    assert.ok(most <= 4, `${most} requests under way from one address`);
    assert.equal(statuses.filter((s) => s === 200).length, 4);
    assert.equal(statuses.filter((s) => s === 503).length, 36);
  } finally {
    h2.destroy();
    await l.shutdown();
  }
});

Deno.test("http: connections reset before they are accepted do not hold up the next ones", async () => {
  const l = listenBounded({
    hostname: "127.0.0.1",
    port: 0,
    handler: () => new Response("ok"),
    limits: { perSource: 64, total: 64, idleMs: 60_000 },
  });
  try {
    // 30 connections opened and reset (RST) by another process while this one does not accept:
    // each is an accept error (ENOTCONN) once it does.
    const resets = `
      import net from "node:net";
      await Promise.all(Array.from({ length: 30 }, () => new Promise((r) => {
        const s = net.connect({ host: "127.0.0.1", port: ${l.addr.port}, localAddress: "127.1.0.1" });
        s.on("connect", () => (s.resetAndDestroy(), r()));
        s.on("error", r);
      })));`;
    const out = new Deno.Command(Deno.execPath(), { args: ["eval", resets] }).outputSync();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const t0 = Date.now();
    const c = await client(l.addr.port, "127.1.0.2", "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    try {
      await until("an answer", () => c.received.includes("ok"), 10_000);
    } finally {
      c.sock.destroy();
    }
    const ms = Date.now() - t0;
    assert.ok(ms < 1000, `answered after ${ms} ms`);
  } finally {
    await l.shutdown();
  }
});
