// What a DHCP packet from an unknown MAC writes when it registers the MAC: the `node.registered`
// event names the vendor class it sent. An option may repeat and its pieces are joined (RFC 3396),
// so one 64 KiB datagram (fragmented IP) carried a 60,000-byte vendor class, written whole into the
// events table (as JSON: 360,000 bytes of `\u0001`), 60 registrations a minute, kept 30 days.
// And the name it gets: a neighbour that registered a look-alike MAC first (same last three
// bytes) took the default name the admin would look for, marked nowhere.
import assert from "node:assert/strict";
import { encode } from "../netboot/dhcp4/packet.ts";
import { MessageType, Opt } from "../netboot/dhcp4/options.ts";
import { clientPacket, macFor } from "../netboot/storm.ts";
import { setLogLevel } from "../src/log.ts";
import { listEvents } from "../src/events.ts";
import type { NodeInfo } from "../src/nodes.ts";
import { buildApp } from "../src/server.ts";
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

Deno.test("a neighbour registering a look-alike MAC first takes the real machine's default name: both are marked auto-registered, and the real one's registration names the holder", async () => {
  await withResponder({}, async (r, ctx) => {
    const discover = (mac: string) => {
      const bytes = new Uint8Array(mac.split(":").map((h) => parseInt(h, 16)));
      const p = clientPacket({ mac: bytes, kind: "pxe" }, 1, MessageType.Discover);
      return r.handle(encode(p), { port: 67, from: { address: "0.0.0.0", port: 68 } });
    };
    const squatter = "02:00:00:11:22:33", real = "b8:ac:6f:11:22:33";
    assert.ok(discover(squatter));
    assert.ok(discover(real));
    ctx.nodes.add("52:54:00:00:00:01", { name: "by-hand" });
    assert.equal(ctx.nodes.get(squatter).name, "node-112233");
    assert.equal(ctx.nodes.get(real).name, "node-112233-2");
    const registered = listEvents(ctx.db, { mac: real }).find((e) => e.kind === "node.registered");
    assert.deepEqual(registered?.detail.nameTaken, { name: "node-112233", by: squatter });
    const first = listEvents(ctx.db, { mac: squatter }).find((e) => e.kind === "node.registered");
    assert.equal(first?.detail.nameTaken, undefined, "a name not taken says nothing");

    // What the admin reads: the API's node objects (the CLI and the dashboard show them).
    const app = buildApp(ctx);
    const list = await (await app.request("/api/v1/nodes")).json() as NodeInfo[];
    const auto = Object.fromEntries(list.map((n) => [n.mac, n.autoRegistered]));
    assert.deepEqual(auto, { [squatter]: true, [real]: true, "52:54:00:00:00:01": false });
    // Adopted (renamed, here): no longer marked.
    ctx.nodes.rename(real, "rack1-n7");
    const one = await (await app.request(`/api/v1/nodes/${real}`)).json() as NodeInfo;
    assert.equal(one.autoRegistered, false);
  });
});
