// The netconsole receiver as someone on the boot network would try it, over loopback (127/8 is all
// loopback on Linux: each socket binds its own source address). Only a node with
// console.netconsole=true, at its MAC-bound address, gets anything stored; unknown sources (an
// address of no node, a node without netconsole, text claiming to be another node) leave nothing,
// not even a file or a per-source entry; huge datagrams are dropped; a flood from a node's own
// address (what a forger of that address can do) is held to the node's byte budget and the log's
// rotation. What is stored is what `node console` shows (the API, token required).
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { buildApp, closeContext, openContext } from "../src/server.ts";
import { NETCONSOLE_LIMITS, startNetconsole } from "../src/netconsole.ts";

async function from(address: string): Promise<dgram.Socket> {
  const s = dgram.createSocket("udp4");
  await new Promise<void>((res, rej) => {
    s.once("error", rej);
    s.bind(0, address, () => res());
  });
  return s;
}

function send(s: dgram.Socket, port: number, data: string | Uint8Array): Promise<void> {
  return new Promise((res, rej) => s.send(data, port, "127.0.0.1", (e) => e ? rej(e) : res()));
}

function consoleFiles(dir: string): string[] {
  const list = (d: string) => {
    try {
      return [...Deno.readDirSync(d)].map((e) => e.name);
    } catch {
      return [];
    }
  };
  return list(join(dir, "nodes")).flatMap((n) =>
    list(join(dir, "nodes", n, "console")).map((f) => `${n}/${f}`)
  ).sort();
}

async function until(ok: () => boolean, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !ok() && Date.now() < end;) {
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Waits until `f()` stops changing for 300 ms (datagrams still in flight on loopback). */
async function settled(f: () => number): Promise<number> {
  let last = -1;
  while (f() !== last) {
    last = f();
    await new Promise((r) => setTimeout(r, 300));
  }
  return last;
}

Deno.test({
  name:
    "netconsole receiver: stored only for a netconsole node at its MAC-bound address; spoofed, unknown, flooding and huge datagrams stay bounded",
  sanitizeResources: false, // dgram sockets close asynchronously
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nr-netconsole-" });
    const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
    const a = "52:54:00:00:0a:01", b = "52:54:00:00:0a:02", c = "52:54:00:00:0a:03";
    ctx.nodes.add(a, { name: "node-a" });
    ctx.nodes.configure("node-a", { "console.netconsole": "true" });
    ctx.nodes.observeAddress(a, "127.0.0.2", "lease");
    ctx.nodes.add(b, { name: "node-b" }); // has an address, but no netconsole
    ctx.nodes.observeAddress(b, "127.0.0.3", "lease");
    ctx.nodes.add(c, { name: "node-c" }); // netconsole, but no known address
    ctx.nodes.configure("node-c", { "console.netconsole": "true" });
    const limits = {
      ...NETCONSOLE_LIMITS,
      burstBytes: 150_000,
      ratePerS: 1000,
      rotateBytes: 100_000,
      flushMs: 50,
    };
    const nc = startNetconsole(ctx, { host: "127.0.0.1", port: 0, limits });
    const socks: dgram.Socket[] = [];
    const app = buildApp(ctx);
    const log = join(dir, "nodes", a, "console", "netconsole.log");
    try {
      // 1. The node's kernel line lands in its log, without the control characters.
      const nodeA = await from("127.0.0.2");
      socks.push(nodeA);
      await send(nodeA, nc.port, "[    0.000000] Linux version 6.1.0 \x1b[2J\x07\x9b(test)\n");
      await settled(() => nc.stats.stored);
      await nc.flush();
      const line = "[    0.000000] Linux version 6.1.0 [2J(test)\n"; // ESC, BEL, CSI gone
      assert.equal(await Deno.readTextFile(log), line);
      assert.equal((await Deno.stat(log)).mode! & 0o777, 0o600);
      assert.equal((await Deno.stat(join(dir, "nodes", a, "console"))).mode! & 0o777, 0o700);
      let res = await app.request("/api/v1/nodes/node-a/console");
      assert.equal(res.status, 401, "the console needs the token, reads too");
      await res.body?.cancel();
      const auth = { authorization: `Bearer ${ctx.token}` };
      res = await app.request("/api/v1/nodes/node-a/console", { headers: auth });
      assert.deepEqual(await res.json(), {
        text: line,
        offset: line.length,
        size: line.length,
        source: "netconsole",
      });
      res = await app.request("/api/v1/nodes/node-b/console", { headers: auth });
      assert.equal(res.status, 404);
      assert.match((await res.json()).error, /console\.netconsole=true/);

      // 2. Unknown sources: 100 addresses of no node and node-b's address (no netconsole), each
      // sending text that claims to be node-a, 20 times. Every datagram is counted (each round
      // fits the socket's buffer), none is stored, no file appears.
      const unknown: dgram.Socket[] = [await from("127.0.0.3")];
      for (let i = 0; i < 100; i++) unknown.push(await from(`127.3.${i >> 6}.${(i & 63) + 1}`));
      socks.push(...unknown);
      for (let round = 1; round <= 20; round++) {
        await Promise.all(unknown.map((s) => send(s, nc.port, "node-a: forged line\n")));
        await until(() => nc.stats.unknown >= round * unknown.length);
      }
      assert.equal(await settled(() => nc.stats.unknown), 20 * unknown.length);
      await nc.flush();
      assert.equal(nc.stats.stored, 1);
      assert.equal(await Deno.readTextFile(log), line);
      assert.deepEqual(consoleFiles(dir), [`${a}/netconsole.log`]);

      // 3. Huge datagrams, even from the node's own address: dropped whole.
      await send(nodeA, nc.port, new Uint8Array(60_000).fill(0x41));
      await send(nodeA, nc.port, new Uint8Array(limits.maxDatagram + 1).fill(0x42));
      assert.equal(await settled(() => nc.stats.oversize), 2);
      await nc.flush();
      assert.equal(await Deno.readTextFile(log), line);

      // 4. 300 kB as fast as loopback goes from node-a's address (a forger of its address could):
      // the node's budget holds it to a burst and a rate, the log to its rotation.
      const t0 = performance.now();
      const chunk = `${"x".repeat(999)}\n`;
      const taken = () => nc.stats.stored + nc.stats.overBudget;
      const before = taken();
      for (let i = 1; i <= 300; i++) {
        await send(nodeA, nc.port, chunk);
        if (i % 50 === 0) await until(() => taken() - before >= i, 2000);
      }
      await settled(taken);
      const seconds = (performance.now() - t0) / 1000;
      await nc.flush();
      const storedBytes = nc.stats.bytes - line.length;
      const allowed = limits.burstBytes + limits.ratePerS * seconds;
      console.log(
        `flood: ${storedBytes} bytes stored in ${seconds.toFixed(2)} s (allowed ${
          Math.round(allowed)
        }), ${nc.stats.overBudget} datagrams over budget`,
      );
      assert.ok(storedBytes <= allowed, `${storedBytes} > ${allowed}`);
      assert.ok(nc.stats.overBudget > 50, "the flood went over the node's budget");
      assert.ok(await Deno.stat(`${log}.1`).then(() => true, () => false), "the log rotated");
      const sizes = await Promise.all(
        [log, `${log}.1`].map((f) => Deno.stat(f).then((s) => s.size, () => 0)),
      );
      assert.ok(sizes[0] + sizes[1] <= 2 * limits.rotateBytes, `log sizes ${sizes}`);
      assert.deepEqual(
        (consoleFiles(dir)).filter((f) => !f.startsWith(a)),
        [],
        "only node-a has a log",
      );
    } finally {
      for (const s of socks) s.close();
      await nc.close();
      await closeContext(ctx);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
