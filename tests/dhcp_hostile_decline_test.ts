// One client's own DECLINEs against the pool: each parks an address for the decline hold (10
// minutes), and the client may decline every address it is given. Without a bound, one MAC
// (lease, decline, lease the next, …: two packets an address) parked the whole pool, again every
// 10 minutes, and no new client got an address. And anyone's DECLINE forged with a running node's
// MAC moved that node's lease, reservation and exports off the address it still held.
import assert from "node:assert/strict";
import { collectAnswers } from "../src/linux/arp.ts";
import { DatabaseSync } from "node:sqlite";
import { decode, type DhcpPacket, encode } from "../netboot/dhcp4/packet.ts";
import { MessageType, Opt } from "../netboot/dhcp4/options.ts";
import { clientPacket, macFor } from "../netboot/storm.ts";
import { setLogLevel } from "../src/log.ts";
import { contextBooter } from "../src/boot/booter.ts";
import type { LeaseStore } from "../src/boot/leases.ts";
import { DhcpResponder } from "../netboot/dhcp4/server.ts";
import { listEvents } from "../src/events.ts";
import { withResponder } from "./support/dhcp_responder.ts";
import { makeLink, parseEnv, sh, startServer, udhcpcScript } from "./dhcp_netns.ts";

const forge = new URL("./dhcp_forge.ts", import.meta.url).pathname;

setLogLevel("error");

const from = { address: "0.0.0.0", port: 68 };
const SERVER = "10.87.0.1";

Deno.test("one client declining every address it gets cannot keep the pool from a new client", async () => {
  let now = Date.parse("2026-01-01T00:00:00Z");
  await withResponder(
    { serverIp: SERVER, range: { start: "10.87.0.10", end: "10.87.0.29" } },
    async (r, ctx) => {
      let xid = 1;
      const ask = (
        i: number,
        type: MessageType,
        extra: Parameters<typeof clientPacket>[3] = {},
      ) => {
        const reply = r.handle(
          encode(clientPacket({ mac: macFor(i), kind: "linux" }, xid++, type, extra)),
          {
            port: 67,
            from,
          },
        );
        return reply && decode(reply.bytes);
      };
      const kind = (p: DhcpPacket | null) => p?.options.get(Opt.messageType)?.[0];

      // The attacker: one MAC, registered by its first DISCOVER. Lease an address, decline it,
      // again, until nothing is left to offer.
      const attacker = 1;
      let declined = 0;
      for (let k = 0; k < 100; k++) {
        const offer = ask(attacker, MessageType.Discover);
        if (kind(offer) !== MessageType.Offer) break;
        const ip = offer!.yiaddr;
        const ack = ask(attacker, MessageType.Request, { serverId: SERVER, requestedIp: ip });
        assert.equal(kind(ack), MessageType.Ack);
        ask(attacker, MessageType.Decline, { serverId: SERVER, requestedIp: ip });
        await r.settled();
        declined++;
        now += 100;
      }
      assert.ok(declined >= 20, `${declined} addresses declined`);
      const parked = ctx.db.prepare("SELECT count(*) AS n FROM leases WHERE state = 'declined'")
        .get() as { n: number };
      assert.equal(parked.n, 20, "the whole pool is parked");

      // Within the hold, a new machine still gets an address.
      now += 60_000;
      const offer = ask(2, MessageType.Discover);
      assert.equal(kind(offer), MessageType.Offer, "a new client is offered an address");
      const ack = ask(2, MessageType.Request, { serverId: SERVER, requestedIp: offer!.yiaddr });
      assert.equal(kind(ack), MessageType.Ack);
      assert.equal(ack!.yiaddr, offer!.yiaddr);
    },
    () => now,
  );
});

Deno.test("one client declining every address it is leased: its address moves are recorded within its MAC's budget", async () => {
  let now = Date.parse("2026-01-01T00:00:00Z");
  await withResponder(
    { serverIp: SERVER, range: { start: "10.87.0.10", end: "10.87.0.249" } },
    async (r, ctx) => {
      let xid = 1;
      const ask = (type: MessageType, extra: Parameters<typeof clientPacket>[3] = {}) => {
        const p = clientPacket({ mac: macFor(1), kind: "linux" }, xid++, type, extra);
        const reply = r.handle(encode(p), { port: 67, from });
        return reply && decode(reply.bytes);
      };
      // Each lease after a DECLINE is at another address, which the registry follows (the
      // node's reservation, its exports): 1,000 moves in about a second.
      let last = "";
      for (let k = 0; k < 1000; k++) {
        const offer = ask(MessageType.Discover)!;
        const ack = ask(MessageType.Request, { serverId: SERVER, requestedIp: offer.yiaddr });
        assert.equal(ack?.options.get(Opt.messageType)?.[0], MessageType.Ack);
        last = ack!.yiaddr;
        ask(MessageType.Decline, { serverId: SERVER, requestedIp: last });
        await r.settled();
        now += 100;
      }
      const mac = [...macFor(1)].map((b) => b.toString(16).padStart(2, "0")).join(":");
      assert.equal(ctx.nodes.find(mac)?.ip, last, "the registry follows the last lease");
      // Its timeline: a burst of 200 (DHCP's and the moves together), then 60 a minute. One row
      // a move before: 1,000 rows here, 3,000 in 4 s, as fast as the server answers.
      const rows = listEvents(ctx.db, { mac, limit: 100_000 })
        .filter((e) => e.kind.startsWith("dhcp.") || e.kind === "node.address").length;
      assert.ok(rows <= 230, `${rows} events for 3,000 packets`);
    },
    () => now,
  );
});

Deno.test("full mode (root): a forged DECLINE with a running node's MAC leaves its address where it is; a real conflict still moves it", async () => {
  const link = await makeLink("decl", "10.79.5");
  const dir = await Deno.makeTempDir({ prefix: "nr-decl-" });
  let server;
  try {
    server = await startServer(link, {
      dhcp: { mode: "full", range: { start: "10.79.5.10", end: "10.79.5.19" }, leaseSeconds: 600 },
      ra: false,
    });
    const db = new DatabaseSync(`${server.dataDir}/netroot.db`, { readOnly: true });
    const row = (sql: string, ...args: string[]) => ({ ...db.prepare(sql).get(...args) });
    const events = (kind: string) =>
      (db.prepare("SELECT count(*) AS n FROM events WHERE kind = ?").get(kind) as { n: number }).n;
    const cli = (...a: string[]) => sh(["ip", "-n", link.cliNs, ...a]);
    const node = "02:00:00:79:05:01";
    try {
      // The node: a real client, leased an address it then holds on its interface.
      await cli("link", "set", link.cliIf, "address", node);
      const hook = await udhcpcScript(dir);
      await sh(link.inCli([
        "/bin/busybox",
        "udhcpc",
        ...["-i", link.cliIf, "-n", "-q", "-f", "-t", "6", "-T", "1", "-s", hook],
      ]));
      const ip = parseEnv(await Deno.readTextFile(`${dir}/bound.env`)).ip;
      assert.equal(ip, "10.79.5.10");
      await cli("addr", "add", `${ip}/24`, "dev", link.cliIf);

      // The attacker, anywhere on the link: a DECLINE of that address with the node's MAC.
      const decline = async (n: number) => {
        await sh(link.inCli([
          Deno.execPath(),
          "run",
          "-A",
          forge,
          ...["--device", link.cliIf, "--decline", ip, "--server", "10.79.5.1", "--mac", node],
        ]));
        const seen = () => events("dhcp.decline") + events("dhcp.decline-refused") >= n;
        for (let i = 0; i < 50 && !seen(); i++) await new Promise((r) => setTimeout(r, 100));
        assert.ok(seen(), "the server saw the DECLINE");
      };
      await decline(1);
      // The node answers at its address with its own MAC: the DECLINE is refused, said once.
      assert.equal(events("dhcp.decline-refused"), 1);
      assert.equal(events("dhcp.decline"), 0);
      assert.deepEqual(row("SELECT ip, state FROM leases WHERE mac = ?", node), {
        ip,
        state: "bound",
      });
      assert.deepEqual(row("SELECT ip FROM nodes WHERE mac = ?", node), { ip });
      assert.equal(db.prepare("SELECT 1 FROM leases WHERE state = 'declined'").get(), undefined);

      // Another machine really holds the address (another MAC answers): the DECLINE stands.
      await cli("link", "set", link.cliIf, "address", "02:00:00:79:05:99");
      await decline(2);
      assert.equal(events("dhcp.decline"), 1);
      assert.deepEqual(row("SELECT mac, state FROM leases WHERE ip = ?", ip), {
        mac: `declined:${ip}`,
        state: "declined",
      });

      // Nobody answers: the client's word stands too. The node takes the next address, which
      // no one holds.
      await cli("addr", "flush", "dev", link.cliIf);
      await cli("link", "set", link.cliIf, "address", node);
      await Deno.remove(`${dir}/bound.env`);
      await sh(link.inCli([
        "/bin/busybox",
        "udhcpc",
        ...["-i", link.cliIf, "-n", "-q", "-f", "-t", "6", "-T", "1", "-s", hook],
      ]));
      const next = parseEnv(await Deno.readTextFile(`${dir}/bound.env`)).ip;
      assert.equal(next, "10.79.5.11");
      await sh(link.inCli([
        Deno.execPath(),
        "run",
        "-A",
        forge,
        ...["--device", link.cliIf, "--decline", next, "--server", "10.79.5.1", "--mac", node],
      ]));
      const parked = () => db.prepare("SELECT 1 FROM leases WHERE mac = ?").get(`declined:${next}`);
      for (let i = 0; i < 50 && !parked(); i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(parked(), "the unanswered address is parked");
    } finally {
      db.close();
    }
  } finally {
    await server?.stop();
    await link.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an exhausted pool is not scanned again at each DISCOVER; whatever frees an address has it offered at once", async () => {
  const t0 = Date.parse("2026-01-01T00:00:00Z");
  let now = t0;
  const range = { start: "10.87.0.10", end: "10.87.0.19" };
  await withResponder({ serverIp: SERVER, range }, (first, ctx) => {
    let xid = 1;
    const macOf = (i: number) =>
      [...macFor(i)].map((b) => b.toString(16).padStart(2, "0")).join(":");
    const ask = (
      r: DhcpResponder,
      i: number,
      type: MessageType,
      extra: Parameters<typeof clientPacket>[3] = {},
    ) => {
      const p = clientPacket({ mac: macFor(i), kind: "linux" }, xid++, type, extra);
      const reply = r.handle(encode(p), { port: 67, from });
      return reply && decode(reply.bytes);
    };
    const offered = (i: number, r = first) => ask(r, i, MessageType.Discover)?.yiaddr ?? null;
    const lease = (i: number, r = first) => {
      const ip = offered(i, r)!;
      const ack = ask(r, i, MessageType.Request, { serverId: SERVER, requestedIp: ip });
      assert.equal(ack?.yiaddr, ip);
      return ip;
    };
    // The range's addresses looked at: each a lookup or two.
    const store = first.leases as LeaseStore;
    const isFree = store.isFree.bind(store);
    let lookups = 0;
    store.isFree = (...a) => (lookups++, isFree(...a));

    // Full: the leases of eight nodes (their reservations) and two admins' reservations.
    ctx.nodes.add(macOf(7));
    ctx.nodes.setIp(macOf(7), "10.87.0.18");
    ctx.nodes.add(macOf(8));
    ctx.nodes.setIp(macOf(8), "10.87.0.19");
    const leased = [1, 2, 3, 4, 5, 6, 9, 10].map((i) => lease(i));
    assert.equal(new Set([...leased, "10.87.0.18", "10.87.0.19"]).size, 10);
    assert.equal(offered(50), null, "exhausted");

    // Once known, a DISCOVER reads none of the range: 10 lookups each before (4,085 for a
    // pool of 4,085, 15 ms a DISCOVER).
    lookups = 0;
    for (let i = 51; i < 61; i++) assert.equal(offered(i), null);
    assert.equal(lookups, 0, `${lookups} addresses looked at for 10 DISCOVERs`);

    // A node forgotten: its reservation.
    now += 1000_000;
    ctx.nodes.forget(macOf(7));
    assert.equal(lease(51), "10.87.0.18");
    assert.equal(offered(52), null);
    // A node's address changed (off the range).
    ctx.nodes.configure(macOf(8), { ip: "10.87.1.200" });
    assert.equal(lease(52), "10.87.0.19");
    assert.equal(offered(53), null);
    // A release: the lease a node no longer needs (its address fixed elsewhere) held its address.
    ctx.nodes.configure(macOf(1), { ip: "10.87.1.201" });
    assert.equal(offered(53), null);
    ask(first, 1, MessageType.Release, { serverId: SERVER, ciaddr: leased[0] });
    assert.equal(lease(53), leased[0]);
    // A lease's expiry: a forgotten node's lease holds its address until then.
    ctx.nodes.forget(macOf(9));
    assert.equal(offered(54), null);
    now = t0 + 3600_000;
    assert.equal(offered(54), leased[6]);
    // A reload (a new responder, a wider range).
    const next = new DhcpResponder(
      {
        mode: "full",
        serverIp: SERVER,
        netmask: "255.255.255.0",
        range: { ...range, end: "10.87.0.20" },
        leaseSeconds: 3600,
        proxyStrategy: "option43",
        registerUnknown: true,
      },
      contextBooter(ctx),
      () => now,
    );
    assert.equal(lease(55, next), "10.87.0.20");
  }, () => now);
});

Deno.test("DECLINEs forged for every leased address: at most 16 are asked about at once, the rest ignored", async () => {
  // Each question holds a packet socket that sees every ARP reply on the link.
  const pending: { ip: string; answer: (macs: string[]) => void }[] = [];
  const whoAnswers = (ip: string) =>
    new Promise<string[]>((answer) => pending.push({ ip, answer }));
  await withResponder(
    { serverIp: SERVER, range: { start: "10.87.0.10", end: "10.87.0.249" } },
    async (r, ctx) => {
      let xid = 1;
      const ask = (i: number, type: MessageType, extra: Parameters<typeof clientPacket>[3]) => {
        const p = clientPacket({ mac: macFor(i), kind: "linux" }, xid++, type, extra);
        const reply = r.handle(encode(p), { port: 67, from });
        return reply && decode(reply.bytes);
      };
      const leased = new Map<number, string>();
      for (let i = 1; i <= 40; i++) {
        const offer = ask(i, MessageType.Discover, {})!;
        ask(i, MessageType.Request, { serverId: SERVER, requestedIp: offer.yiaddr });
        leased.set(i, offer.yiaddr);
      }
      // The attacker: a DECLINE with each node's MAC for its address, twice over.
      for (let round = 0; round < 2; round++) {
        for (const [i, ip] of leased) {
          ask(i, MessageType.Decline, { serverId: SERVER, requestedIp: ip });
        }
      }
      assert.equal(pending.length, 16, `${pending.length} addresses asked about at once`);
      // Every node answers at its own address: nothing moves.
      const macOf = (ip: string) => {
        const i = [...leased].find(([, a]) => a === ip)![0];
        return [...macFor(i)].map((b) => b.toString(16).padStart(2, "0")).join(":");
      };
      for (const p of pending.splice(0)) p.answer([macOf(p.ip)]);
      await r.settled();
      assert.equal(
        ctx.db.prepare("SELECT 1 FROM leases WHERE state = 'declined'").get(),
        undefined,
      );
      assert.equal(
        listEvents(ctx.db, { limit: 10_000 }).filter((e) => e.kind === "dhcp.decline-refused")
          .length,
        16,
      );
      // The slots are free again.
      ask(40, MessageType.Decline, { serverId: SERVER, requestedIp: leased.get(40)! });
      assert.equal(pending.length, 1);
      pending[0].answer([]);
      await r.settled();
      assert.equal(
        (ctx.db.prepare("SELECT state FROM leases WHERE ip = ?").get(leased.get(40)!) as {
          state: string;
        }).state,
        "declined",
        "nobody answers: the DECLINE stands",
      );
    },
    undefined,
    whoAnswers,
  );
});

Deno.test("an ARP flood while a DECLINE's address is asked about: the question reads a bounded number of replies, lets the event loop run, and has no answer", async () => {
  // A neighbour answering every ARP question of the link with a stream of replies, for the
  // address asked about and for others: there is always one waiting.
  const reply = new Uint8Array(28);
  const v = new DataView(reply.buffer);
  v.setUint16(2, 0x0800);
  v.setUint16(6, 2); // ARPOP_REPLY
  let reads = 0;
  const flood = (buf: Uint8Array) => {
    reads++;
    reply.set([2, 0, 0, 0, (reads >> 8) & 0xff, reads & 0xff], 8);
    reply.set(reads % 2 ? [10, 87, 0, 10] : [10, 87, 0, 11], 14);
    buf.set(reply);
    return reply.length;
  };
  let turns = 0, ticking = true;
  const tick = () => {
    turns++;
    if (ticking) setTimeout(tick, 0);
  };
  setTimeout(tick, 0);
  const t0 = performance.now();
  // The replies not read may hold the one that matters: the answers so far are no answer.
  await assert.rejects(collectAnswers(flood, "10.87.0.10", 60_000), /ARP flood: 4096 frames/);
  ticking = false;
  const ms = performance.now() - t0;
  assert.ok(reads <= 4096, `${reads} replies read for one question`);
  assert.ok(turns >= 16, `the event loop ran ${turns} times meanwhile`);
  assert.ok(ms < 30_000, `the question took ${Math.round(ms)} ms of a 60 s wait`);
});

Deno.test("a DECLINE forged with a running node's MAC while the link is flooded with ARP replies: the node's own reply behind the flood still keeps its address", async () => {
  // The attacker floods the link with ARP replies from made-up MACs for another address (5,000
  // waiting when the question starts), and sends the DECLINE with the node's MAC: the node's own
  // reply comes after them.
  const whoAnswers = (asked: string) => {
    let reads = 0;
    const frame = new Uint8Array(28);
    const v = new DataView(frame.buffer);
    v.setUint16(2, 0x0800);
    v.setUint16(6, 2); // ARPOP_REPLY
    return collectAnswers(
      (buf) => {
        reads++;
        if (reads <= 5000) {
          frame.set([2, 0, 0, 0, (reads >> 8) & 0xff, reads & 0xff], 8);
          frame.set([10, 87, 0, 200], 14);
        } else if (reads === 5001) {
          frame.set(macFor(1), 8);
          frame.set(asked.split(".").map(Number), 14);
        } else return -1;
        buf.set(frame);
        return frame.length;
      },
      asked,
      300,
    );
  };
  await withResponder(
    { serverIp: SERVER, range: { start: "10.87.0.10", end: "10.87.0.19" } },
    async (r, ctx) => {
      let xid = 1;
      const ask = (type: MessageType, extra: Parameters<typeof clientPacket>[3] = {}) => {
        const p = clientPacket({ mac: macFor(1), kind: "linux" }, xid++, type, extra);
        const reply = r.handle(encode(p), { port: 67, from });
        return reply && decode(reply.bytes);
      };
      const ip = ask(MessageType.Discover)!.yiaddr;
      assert.equal(ask(MessageType.Request, { serverId: SERVER, requestedIp: ip })?.yiaddr, ip);
      const mac = [...macFor(1)].map((b) => b.toString(16).padStart(2, "0")).join(":");
      assert.equal(ctx.nodes.find(mac)!.ip, ip);

      ask(MessageType.Decline, { serverId: SERVER, requestedIp: ip });
      await r.settled();

      assert.equal(ctx.nodes.find(mac)!.ip, ip, "the node's reservation stays");
      const lease = ctx.db.prepare("SELECT ip, state FROM leases WHERE mac = ?").get(mac);
      assert.deepEqual({ ...lease }, { ip, state: "bound" }, "its lease stays");
      const refused = listEvents(ctx.db, { limit: 100 }).find((e) =>
        e.kind === "dhcp.decline-refused"
      );
      assert.match(String(refused?.detail.unanswered), /ARP flood/);
    },
    undefined,
    whoAnswers,
  );
});

Deno.test("an exhausted pool: a node whose fixed address moved takes its new one at its next DISCOVER, and its old lease's address is offered at once", async () => {
  const now = Date.parse("2026-01-01T00:00:00Z");
  await withResponder(
    { serverIp: SERVER, range: { start: "10.87.0.10", end: "10.87.0.12" } },
    (r, ctx) => {
      let xid = 1;
      const ask = (
        i: number,
        type: MessageType,
        extra: Parameters<typeof clientPacket>[3] = {},
      ) => {
        const p = clientPacket({ mac: macFor(i), kind: "linux" }, xid++, type, extra);
        const reply = r.handle(encode(p), { port: 67, from });
        return reply && decode(reply.bytes);
      };
      const offered = (i: number) => ask(i, MessageType.Discover)?.yiaddr ?? null;
      const lease = (i: number) => {
        const ip = offered(i)!;
        assert.equal(
          ask(i, MessageType.Request, { serverId: SERVER, requestedIp: ip })?.yiaddr,
          ip,
        );
        return ip;
      };
      const leased = [1, 2, 3].map(lease);
      const node = [...macFor(1)].map((b) => b.toString(16).padStart(2, "0")).join(":");
      // The admin fixes node 1 off the range (on its subnet); the pool is still full (its lease holds its address).
      ctx.nodes.configure(node, { ip: "10.87.0.200" });
      assert.equal(offered(50), null, "exhausted");
      // Node 1 reboots (a node does not RELEASE): it is offered its fixed address.
      assert.equal(offered(1), "10.87.0.200");
      // Its old lease's address is free: the next client gets it, not an hour later.
      assert.equal(offered(51), leased[0]);
    },
    () => now,
  );
});
