// DHCP policy without sockets: the responder with a real Context (SQLite state, node registry).
import assert from "node:assert/strict";
import type { Context } from "../src/context.ts";
import type { DhcpResponder } from "../netboot/dhcp4/server.ts";
import { decode, type DhcpPacket, encode } from "../netboot/dhcp4/packet.ts";
import { MessageType, Opt, readIp, readText, readU16 } from "../netboot/dhcp4/options.ts";
import { clientPacket, macFor } from "../netboot/storm.ts";
import { listEvents, recordSuppressed } from "../src/events.ts";
import { setLogLevel } from "../src/log.ts";
import { withResponder } from "./support/dhcp_responder.ts";

setLogLevel("warn");

const from = { address: "0.0.0.0", port: 68 };

let xid = 1;
const pkt = (
  i: number,
  kind: "pxe" | "ipxe" | "linux",
  type: MessageType,
  extra: Parameters<typeof clientPacket>[3] = {},
) => clientPacket({ mac: macFor(i), kind }, xid++, type, extra);

async function ask(r: DhcpResponder, p: DhcpPacket, port = 67) {
  const reply = await r.handle(encode(p), { port, from });
  await r.settled(); // a DECLINE is applied once its address is asked for
  return reply && { ...reply, p: decode(reply.bytes) };
}
const type = (p: DhcpPacket) => p.options.get(Opt.messageType)?.[0];

async function lease(r: DhcpResponder, i: number, kind: "pxe" | "ipxe" | "linux" = "linux") {
  const offer = (await ask(r, pkt(i, kind, MessageType.Discover)))!;
  assert.equal(type(offer.p), MessageType.Offer);
  const ack = (await ask(
    r,
    pkt(i, kind, MessageType.Request, { serverId: "10.85.0.1", requestedIp: offer.p.yiaddr }),
  ))!;
  assert.equal(type(ack.p), MessageType.Ack);
  return ack;
}

Deno.test("full mode: lease, stable reservation, DECLINE moves it, RELEASE frees it", async () => {
  await withResponder({}, async (r, ctx) => {
    const a = await lease(r, 1);
    assert.equal(a.p.yiaddr, "10.85.0.10");
    assert.deepEqual(a.to, { address: "255.255.255.255", port: 68 });
    assert.equal(readIp(a.p.options.get(Opt.subnetMask)), "255.255.255.0");
    assert.equal(readIp(a.p.options.get(Opt.broadcast)), "10.85.0.255");
    assert.equal(a.p.options.has(Opt.router), false); // no router configured: none sent
    assert.equal(ctx.nodes.find("02:6e:72:00:00:01")?.ip, "10.85.0.10");
    assert.equal((await lease(r, 2)).p.yiaddr, "10.85.0.11");
    // The same client later: the same address (its reservation).
    assert.equal((await lease(r, 1)).p.yiaddr, "10.85.0.10");

    // DECLINE: the address is in use by someone else; the client gets another one.
    await ask(
      r,
      pkt(2, "linux", MessageType.Decline, { serverId: "10.85.0.1", requestedIp: "10.85.0.11" }),
    );
    const again = await lease(r, 2);
    assert.equal(again.p.yiaddr, "10.85.0.12");
    assert.equal(ctx.nodes.find("02:6e:72:00:00:02")?.ip, "10.85.0.12");
    // …and no one else gets the declined one meanwhile.
    assert.equal((await lease(r, 3)).p.yiaddr, "10.85.0.13");
    // A reservation off our subnet (set by hand, or an old range) is not handed out here.
    ctx.nodes.setIp("02:6e:72:00:00:03", "192.168.7.7");
    assert.equal((await lease(r, 3)).p.yiaddr, "10.85.0.13");
    assert.equal(ctx.nodes.find("02:6e:72:00:00:03")?.ip, "10.85.0.13");

    await ask(
      r,
      pkt(3, "linux", MessageType.Release, { serverId: "10.85.0.1", ciaddr: "10.85.0.13" }),
    );
    assert.equal(r.leases!.get("02:6e:72:00:00:03")?.state, "released");
    const kinds = listEvents(ctx.db, { mac: "02:6e:72:00:00:02" }).map((e) => e.kind);
    assert.deepEqual(kinds.filter((k) => k.startsWith("dhcp.")), [
      "dhcp.offer",
      "dhcp.ack",
      "dhcp.decline",
      "dhcp.offer",
      "dhcp.ack",
    ]);
  });
});

Deno.test("full mode: NAK, foreign server id, INFORM, relay, pool exhaustion", async () => {
  await withResponder({ range: { start: "10.85.0.10", end: "10.85.0.11" } }, async (r, ctx) => {
    await lease(r, 1);
    // INIT-REBOOT asking for an address that is not its own: NAK, by broadcast.
    const nak =
      (await ask(r, pkt(1, "linux", MessageType.Request, { requestedIp: "10.85.0.11" })))!;
    assert.equal(type(nak.p), MessageType.Nak);
    assert.equal(nak.to.address, "255.255.255.255");
    // A REQUEST naming another server: ignored, and our pending offer is freed.
    const offer = (await ask(r, pkt(2, "linux", MessageType.Discover)))!;
    assert.equal(offer.p.yiaddr, "10.85.0.11");
    assert.equal(
      await ask(
        r,
        pkt(2, "linux", MessageType.Request, { serverId: "10.85.0.99", requestedIp: "10.85.0.11" }),
      ),
      null,
    );
    assert.equal(r.leases!.get("02:6e:72:00:00:02")?.state, "released");
    // INFORM: configuration only, unicast to ciaddr, no address, no lease time.
    const inf = (await ask(r, pkt(1, "linux", MessageType.Inform, { ciaddr: "10.85.0.10" })))!;
    assert.equal(type(inf.p), MessageType.Ack);
    assert.equal(inf.p.yiaddr, "0.0.0.0");
    assert.equal(inf.p.options.has(Opt.leaseTime), false);
    assert.deepEqual(inf.to, { address: "10.85.0.10", port: 68 });
    // Relayed: the reply goes to the relay agent on port 67.
    const relayed = pkt(1, "linux", MessageType.Discover);
    relayed.giaddr = "10.85.0.254";
    assert.deepEqual((await ask(r, relayed))!.to, { address: "10.85.0.254", port: 67 });
    // Client 2 went elsewhere, so its offer holds nothing: client 3 leases 10.85.0.11, and the
    // pool (2 addresses) is exhausted for client 4.
    assert.equal((await lease(r, 3)).p.yiaddr, "10.85.0.11");
    assert.equal(await ask(r, pkt(4, "linux", MessageType.Discover)), null);
    assert.ok(
      listEvents(ctx.db, { mac: "02:6e:72:00:00:04" }).some((e) => e.kind === "dhcp.exhausted"),
    );
  });
});

Deno.test("registerUnknown=false ignores unknown MACs and serves known ones", async () => {
  await withResponder({ registerUnknown: false }, async (r, ctx) => {
    assert.equal(await ask(r, pkt(7, "pxe", MessageType.Discover)), null);
    assert.equal(ctx.nodes.find("02:6e:72:00:00:07"), undefined);
    ctx.nodes.add("02:6e:72:00:00:07");
    const offer = (await ask(r, pkt(7, "pxe", MessageType.Discover)))!;
    assert.equal(offer.p.file, "undionly.kpxe");
    assert.equal(offer.p.siaddr, "10.85.0.1");
  });
});

Deno.test("boot info per firmware: iPXE script + 175.176, UEFI HTTP, Raspberry Pi, UEFI PXE", async () => {
  await withResponder({}, async (r) => {
    const ipxe = await lease(r, 1, "ipxe");
    assert.equal(
      readText(ipxe.p.options.get(Opt.bootfile)),
      "http://10.85.0.1:8080/boot/02:6e:72:00:00:01.ipxe",
    );
    assert.deepEqual([...ipxe.p.options.get(Opt.ipxe)!], [176, 1, 1]);

    const http = pkt(2, "pxe", MessageType.Discover);
    http.options.set(Opt.vendorClass, new TextEncoder().encode("HTTPClient:Arch:00016"));
    http.options.set(Opt.clientArch, new Uint8Array([0, 16]));
    const h = (await ask(r, http))!;
    assert.equal(readText(h.p.options.get(Opt.vendorClass)), "HTTPClient");
    assert.equal(
      readText(h.p.options.get(Opt.bootfile)),
      "http://10.85.0.1:8080/boot/ipxe/ipxe.efi",
    );

    const pi = clientPacket(
      { mac: new Uint8Array([0xdc, 0xa6, 0x32, 1, 2, 3]), kind: "pxe" },
      99,
      MessageType.Discover,
    );
    const p = (await ask(r, pi))!;
    assert.ok(
      new TextDecoder().decode(p.p.options.get(Opt.vendorSpecific)).includes("Raspberry Pi Boot"),
    );
    assert.equal(readText(p.p.options.get(Opt.vendorClass)), "PXEClient");

    const efi = pkt(3, "pxe", MessageType.Discover);
    efi.options.set(Opt.clientArch, new Uint8Array([0, 7]));
    assert.equal((await ask(r, efi))!.p.file, "ipxe.efi");
  });
});

Deno.test("replies fit in 576 bytes unless option 57 allows more", async () => {
  await withResponder({ nodeUrl: `http://10.85.0.1:8080/${"x".repeat(200)}` }, async (r) => {
    const p = pkt(1, "ipxe", MessageType.Discover);
    p.options.delete(Opt.maxMessageSize);
    p.options.set(Opt.hostname, new Uint8Array(250).fill(0x41)); // a big request
    const reply = (await ask(r, p))!;
    assert.ok(reply.bytes.length + 28 <= 576, `${reply.bytes.length}`);
    assert.ok(readU16(p.options.get(Opt.maxMessageSize)) === undefined);
  });
});

Deno.test("proxy mode: silent for plain clients; port4011 strategy offers bare, 4011 gives the file", async () => {
  await withResponder(
    { mode: "proxy", range: undefined, proxyStrategy: "port4011" },
    async (r, ctx) => {
      assert.equal(await ask(r, pkt(1, "linux", MessageType.Discover)), null);
      // …and a laptop on the lab LAN does not become a node.
      assert.equal(ctx.nodes.find("02:6e:72:00:00:01"), undefined);
      const offer = (await ask(r, pkt(2, "pxe", MessageType.Discover)))!;
      assert.equal(offer.p.yiaddr, "0.0.0.0");
      assert.equal(offer.p.file, "");
      assert.equal(offer.p.options.has(Opt.vendorSpecific), false);
      assert.equal(readText(offer.p.options.get(Opt.vendorClass)), "PXEClient");
      const req = pkt(2, "pxe", MessageType.Request, { ciaddr: "10.85.0.77" });
      const ack =
        (await r.handle(encode(req), { port: 4011, from: { address: "10.85.0.77", port: 4011 } }))!;
      assert.deepEqual(ack.to, { address: "10.85.0.77", port: 4011 });
      assert.equal(decode(ack.bytes).file, "undionly.kpxe");
      assert.equal(r.leases, undefined);
    },
  );
});

Deno.test("hostile input: handle() never throws; malformed packets are counted", async () => {
  await withResponder({}, async (r) => {
    const good = encode(pkt(1, "pxe", MessageType.Discover));
    let seed = 12345;
    const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    for (let i = 0; i < 3000; i++) {
      const b = good.slice(0, Math.floor(rand() * (good.length + 1)));
      for (let k = 0; k < 4; k++) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
      await r.handle(b, { port: 67, from });
    }
    await r.handle(new Uint8Array(0), { port: 67, from });
    assert.equal(r.stats.received, 3001);
    assert.ok(r.stats.malformed > 100);
    assert.equal(r.stats.errors, 0);
  });
});

// ---- hostile neighbours: spoofed packets from made-up or other clients' MACs ----

const macOf = (i: number) =>
  Array.from(macFor(i), (b) => b.toString(16).padStart(2, "0")).join(":");
const leaseRow = (ctx: Context, mac: string) =>
  ctx.db.prepare("SELECT ip, state FROM leases WHERE mac = ?").get(mac) as
    | { ip: string; state: string }
    | undefined;

Deno.test("an OFFER holds its address a while (not past a full pool); the node's reservation is made at ACK", async () => {
  let now = Date.parse("2026-01-01T00:00:00Z");
  const range = { start: "10.85.0.10", end: "10.85.0.12" };
  await withResponder({ offerSeconds: 30, range }, async (r, ctx) => {
    const discover = async (i: number) => (await ask(r, pkt(i, "pxe", MessageType.Discover)))?.p;
    assert.equal((await discover(1))?.yiaddr, "10.85.0.10");
    assert.equal((await discover(2))?.yiaddr, "10.85.0.11");
    // Registered, but no address is theirs: an offer is not a reservation.
    assert.equal(ctx.nodes.get(macOf(1)).ip, null);
    assert.equal(ctx.nodes.get(macOf(2)).ip, null);
    // While free addresses remain, held ones are not offered again.
    now += 10_000;
    const ack = await lease(r, 3, "pxe");
    assert.equal(ack.p.yiaddr, "10.85.0.12");
    // At ACK the address is the node's: its reservation, which outlives the lease.
    assert.equal(ctx.nodes.get(macOf(3)).ip, "10.85.0.12");
    assert.ok(listEvents(ctx.db, { mac: macOf(3) }).some((e) => e.kind === "node.address"));
    // The pool is full: the oldest offer gives way, never the lease; its client gets a NAK.
    now += 10_000;
    assert.equal((await discover(4))?.yiaddr, "10.85.0.10");
    assert.equal((await discover(5))?.yiaddr, "10.85.0.11");
    assert.equal((await discover(6))?.yiaddr, "10.85.0.10");
    const late = (await ask(
      r,
      pkt(1, "pxe", MessageType.Request, { serverId: "10.85.0.1", requestedIp: "10.85.0.10" }),
    ))!;
    assert.equal(type(late.p), MessageType.Nak);
    assert.deepEqual({ ...leaseRow(ctx, macOf(3)) }, { ip: "10.85.0.12", state: "bound" });
    // Past the hold, an offer that was never taken up holds nothing.
    now += 31_000;
    const seventh = (await lease(r, 7, "pxe")).p.yiaddr;
    assert.ok(["10.85.0.10", "10.85.0.11"].includes(seventh), seventh);
    assert.equal(ctx.nodes.get(macOf(5)).ip, null);
  }, () => now);
});

Deno.test("DECLINE is honoured only from the client the address was offered or leased to", async () => {
  await withResponder({}, async (r, ctx) => {
    const victim = await lease(r, 1);
    assert.equal(victim.p.yiaddr, "10.85.0.10");
    await lease(r, 2);
    const decline = (i: number, ip: string) =>
      ask(r, pkt(i, "linux", MessageType.Decline, { serverId: "10.85.0.1", requestedIp: ip }));
    // Another node, and a made-up MAC, decline the victim's address: nothing happens.
    assert.equal(await decline(2, "10.85.0.10"), null);
    assert.equal(await decline(77, "10.85.0.10"), null);
    assert.deepEqual({ ...leaseRow(ctx, macOf(1)) }, { ip: "10.85.0.10", state: "bound" });
    assert.equal(leaseRow(ctx, "declined:10.85.0.10"), undefined);
    assert.equal(ctx.nodes.find(macOf(77)), undefined, "a DECLINE registers no one");
    // The victim renews and keeps its address; no one else is offered it.
    assert.equal((await lease(r, 1)).p.yiaddr, "10.85.0.10");
    assert.equal((await lease(r, 3)).p.yiaddr, "10.85.0.12");
    // Said once (a flood of spoofs writes one line a minute), server-wide.
    const notes = listEvents(ctx.db).filter((e) => e.kind === "dhcp.decline-ignored");
    assert.equal(notes.length, 1);
    assert.equal(notes[0].mac, null);
    // The owner's own DECLINE still works: the address leaves the pool for a while.
    await decline(3, "10.85.0.12");
    assert.equal(leaseRow(ctx, "declined:10.85.0.12")?.state, "declined");
    assert.equal((await lease(r, 3)).p.yiaddr, "10.85.0.13");
  });
});

Deno.test("registration: at most registerRate new nodes a minute and registerMax in all; one warning a minute", async () => {
  let now = Date.parse("2026-01-01T00:00:00Z");
  await withResponder({ registerRate: 5, registerMax: 8 }, async (r, ctx) => {
    ctx.nodes.add(macOf(900)); // an admin's node: served always, never counted
    const discover = async (i: number) =>
      (await ask(r, pkt(i, "pxe", MessageType.Discover))) !== null;
    const answered: boolean[] = [];
    for (let i = 1; i <= 20; i++) answered.push(await discover(i));
    assert.deepEqual(answered.filter(Boolean).length, 5, "a burst of registerRate");
    assert.equal(ctx.nodes.countAutoRegistered(), 5);
    assert.equal(ctx.nodes.find(macOf(6)), undefined, "ignored clients are not registered");
    assert.ok(await discover(900), "a known node is served at the limit");
    assert.ok(await discover(1), "and so is one registered before it");
    let notes = listEvents(ctx.db).filter((e) => e.kind === "dhcp.register-limited");
    assert.equal(notes.length, 1, "one warning for the 15 ignored");
    assert.equal(notes[0].mac, null);
    assert.match(String(notes[0].detail.limit), /5 new nodes a minute/);
    // The bucket refills at registerRate a minute: one more after 12 s.
    now += 12_000;
    assert.ok(await discover(21));
    assert.equal(await discover(22), false);
    // A minute on: the cap (8 auto-registered) stops it before the rate does.
    now += 60_000;
    const more: boolean[] = [];
    for (let i = 23; i <= 30; i++) more.push(await discover(i));
    assert.equal(more.filter(Boolean).length, 2);
    assert.equal(ctx.nodes.countAutoRegistered(), 8);
    notes = listEvents(ctx.db).filter((e) => e.kind === "dhcp.register-limited");
    assert.equal(notes.length, 2, "a minute later, a second warning");
    assert.match(String(notes[1].detail.limit), /8 auto-registered nodes/);
    assert.ok(Number(notes[1].detail.ignored) >= 2);
    // An admin adopting a node frees its place.
    ctx.nodes.rename(macOf(1), "adopted");
    now += 12_000;
    assert.ok(await discover(31));
  }, () => now);
});

Deno.test("spoofed DHCP claiming a registered node's MAC: its timeline takes a burst, then 60 a minute; others unaffected", async () => {
  await withResponder({ range: { start: "10.85.0.10", end: "10.85.0.200" } }, async (r, ctx) => {
    const victim = macOf(1), bystander = macOf(2);
    ctx.nodes.add(victim, { name: "victim" });
    ctx.nodes.add(bystander, { name: "bystander" });
    const dhcpEvents = (mac: string) =>
      listEvents(ctx.db, { mac, limit: 100_000 }).filter((e) => e.kind.startsWith("dhcp."))
        .length;
    // 2,000 DISCOVERs as the victim (DHCP has no source address: 0.0.0.0 each), one OFFER
    // event each in the old code.
    for (let i = 0; i < 2000; i++) {
      assert.equal(type((await ask(r, pkt(1, "pxe", MessageType.Discover)))!.p), MessageType.Offer);
    }
    // Served every time (DHCP itself is not limited), recorded within the MAC's budget: a burst
    // of 200 and the refill over the few seconds this took (the old code: one row a packet).
    const n = dhcpEvents(victim);
    assert.ok(n >= 200 && n < 230, `${n} DHCP events recorded for 2,000 packets`);
    // The bystander's own DHCP is recorded as usual.
    await lease(r, 2, "pxe");
    assert.equal(dhcpEvents(bystander), 2);
    // What was dropped is said once, by MAC.
    recordSuppressed(ctx.db);
    const s = listEvents(ctx.db).filter((e) => e.kind === "events.suppressed");
    assert.equal(s.length, 1);
    const dropped = (s[0].detail.sources as Record<string, number>)[`dhcp ${victim}`];
    assert.equal(dropped + n, 2000, JSON.stringify(s[0].detail));
  });
});
