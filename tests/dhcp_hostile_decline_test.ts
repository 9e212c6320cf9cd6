// One client's own DECLINEs against the pool: each parks an address for the decline hold (10
// minutes), and the client may decline every address it is given. Without a bound, one MAC
// (lease, decline, lease the next, …: two packets an address) parked the whole pool, again every
// 10 minutes, and no new client got an address.
import assert from "node:assert/strict";
import { decode, type DhcpPacket, encode } from "../netboot/dhcp4/packet.ts";
import { MessageType, Opt } from "../netboot/dhcp4/options.ts";
import { clientPacket, macFor } from "../netboot/storm.ts";
import { setLogLevel } from "../src/log.ts";
import { listEvents } from "../src/events.ts";
import { withResponder } from "./support/dhcp_responder.ts";

setLogLevel("error");

const from = { address: "0.0.0.0", port: 68 };
const SERVER = "10.87.0.1";

Deno.test("one client declining every address it gets cannot keep the pool from a new client", async () => {
  let now = Date.parse("2026-01-01T00:00:00Z");
  await withResponder(
    { serverIp: SERVER, range: { start: "10.87.0.10", end: "10.87.0.29" } },
    (r, ctx) => {
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
    (r, ctx) => {
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
