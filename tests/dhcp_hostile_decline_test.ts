// One client's own DECLINEs against the pool: each parks an address for the decline hold (10
// minutes), and the client may decline every address it is given. Without a bound, one MAC
// (lease, decline, lease the next, …: two packets an address) parked the whole pool, again every
// 10 minutes, and no new client got an address.
import assert from "node:assert/strict";
import { decode, type DhcpPacket, encode } from "../netboot/dhcp4/packet.ts";
import { MessageType, Opt } from "../netboot/dhcp4/options.ts";
import { clientPacket, macFor } from "../netboot/storm.ts";
import { setLogLevel } from "../src/log.ts";
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
