// What a DHCP packet from an unknown MAC writes when it registers the MAC: the `node.registered`
// event names the vendor class it sent. An option may repeat and its pieces are joined (RFC 3396),
// so one 64 KiB datagram (fragmented IP) carried a 60,000-byte vendor class, written whole into the
// events table (as JSON: 360,000 bytes of `\u0001`), 60 registrations a minute, kept 30 days.
import assert from "node:assert/strict";
import { encode } from "../netboot/dhcp4/packet.ts";
import { MessageType, Opt } from "../netboot/dhcp4/options.ts";
import { clientPacket, macFor } from "../netboot/storm.ts";
import { setLogLevel } from "../src/log.ts";
import { withResponder } from "./support/dhcp_responder.ts";

setLogLevel("error");

Deno.test("a registration records at most one option's worth of vendor class", async () => {
  await withResponder(
    { serverIp: "10.87.1.1", range: { start: "10.87.1.10", end: "10.87.1.29" } },
    (r, ctx) => {
      const p = clientPacket({ mac: macFor(1), kind: "pxe" }, 1, MessageType.Discover);
      p.options.set(
        Opt.vendorClass,
        new Uint8Array([
          ...new TextEncoder().encode("PXEClient:"),
          ...new Uint8Array(60_000).fill(1),
        ]),
      );
      const bytes = encode(p);
      assert.ok(bytes.length > 60_000 && bytes.length < 65_507, "one UDP datagram");
      const reply = r.handle(bytes, { port: 67, from: { address: "0.0.0.0", port: 68 } });
      assert.ok(reply, "the PXE client is still answered");
      const row = ctx.db.prepare(
        "SELECT length(detail) AS n FROM events WHERE kind = 'node.registered'",
      ).get() as { n: number };
      assert.ok(row.n < 2048, `node.registered detail: ${row.n} bytes`);
    },
  );
});
