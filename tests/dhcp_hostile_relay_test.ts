// Where full-mode replies go. A relayed request's reply goes to its relay (giaddr, port 67) and
// any other answer but a NAK to the client's address (ciaddr, port 68; an INFORM's, and a
// DISCOVER's or REQUEST's that has one), both fields of the packet anyone on the boot network
// writes. Full mode serves one subnet, the boot interface's: a relay elsewhere has
// its clients on another subnet, where none of our addresses works; so these addresses must be on
// the boot subnet. Before, a forged giaddr or ciaddr sent an OFFER (with an address of ours) or an
// ACK to any host, through the boot interface's routes.
import assert from "node:assert/strict";
import { decode, encode } from "../netboot/dhcp4/packet.ts";
import { MessageType, Opt } from "../netboot/dhcp4/options.ts";
import { clientPacket, macFor } from "../netboot/storm.ts";
import { setLogLevel } from "../src/log.ts";
import { withResponder } from "./support/dhcp_responder.ts";

setLogLevel("error");

const SERVER = "10.87.2.1";

Deno.test("full mode: replies go to a relay or client address on the boot subnet only (any message's ciaddr)", async () => {
  await withResponder(
    { serverIp: SERVER, range: { start: "10.87.2.10", end: "10.87.2.29" } },
    (r, ctx) => {
      let xid = 1;
      const ask = (
        i: number,
        type: MessageType,
        fields: { giaddr?: string; ciaddr?: string; requestedIp?: string } = {},
      ) => {
        const p = clientPacket({ mac: macFor(i), kind: "pxe" }, xid++, type, {
          ciaddr: fields.ciaddr,
          requestedIp: fields.requestedIp,
          ...(type !== MessageType.Discover && { serverId: SERVER }),
        });
        if (fields.giaddr) p.giaddr = fields.giaddr;
        const reply = r.handle(encode(p), { port: 67, from: { address: "0.0.0.0", port: 68 } });
        return reply && { to: reply.to, p: decode(reply.bytes) };
      };

      // A relay on the boot subnet: answered through it.
      const relayed = ask(1, MessageType.Discover, { giaddr: "10.87.2.254" });
      assert.deepEqual(relayed?.to, { address: "10.87.2.254", port: 67 });
      assert.equal(relayed?.p.options.get(Opt.messageType)?.[0], MessageType.Offer);
      // A "relay" anywhere else: no answer (and nothing registered or offered).
      assert.equal(ask(2, MessageType.Discover, { giaddr: "198.51.100.7" }), null);
      assert.equal(ask(1, MessageType.Discover, { giaddr: "198.51.100.7" }), null);
      assert.equal(ctx.nodes.find("02:6e:72:00:00:02"), undefined);
      // INFORM: from an address on the boot subnet, answered there; from elsewhere, not at all.
      assert.deepEqual(ask(1, MessageType.Inform, { ciaddr: "10.87.2.50" })?.to, {
        address: "10.87.2.50",
        port: 68,
      });
      assert.equal(ask(1, MessageType.Inform, { ciaddr: "203.0.113.9" }), null);
      // Every answer but a NAK goes to a ciaddr: a DISCOVER or a REQUEST (for a free address of
      // ours) with a forged one sent the OFFER and the ACK to any host, the ACK binding a lease.
      assert.equal(ask(3, MessageType.Discover, { ciaddr: "203.0.113.9" }), null);
      assert.equal(
        ask(3, MessageType.Request, { ciaddr: "203.0.113.9", requestedIp: "10.87.2.20" }),
        null,
      );
      assert.equal(r.leases!.get("02:6e:72:00:00:03"), undefined);
      assert.equal(ctx.nodes.find("02:6e:72:00:00:03"), undefined);
      // A client renewing from its address on the boot subnet still gets its ACK there.
      const offered = ask(4, MessageType.Discover)!.p.yiaddr;
      const renewed = ask(4, MessageType.Request, { ciaddr: offered });
      assert.deepEqual(renewed?.to, { address: offered, port: 68 });
      assert.equal(renewed?.p.options.get(Opt.messageType)?.[0], MessageType.Ack);
    },
  );
});
