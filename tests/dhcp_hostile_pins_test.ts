// Pins (src/boot/pins.ts) make a permanent ARP entry, address → MAC, that no ARP message moves.
// In full DHCP mode a node's registry address may come from the neighbour table (a script fetch
// from an address the table maps to its MAC, when it holds no lease), which a forged ARP message
// fills: a node that took the router's address that way had the router pinned to its MAC, and
// the server's traffic to its router went to that node for good, whatever the router said.
// Measured in network namespaces: `10.89.0.254 lladdr <the node's MAC> PERMANENT proto 110`.
import assert from "node:assert/strict";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { wantedPins } from "../src/boot/pins.ts";

Deno.test("full mode: only the ip setting and addresses from the DHCP range are pinned", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-pins-" });
  const base = defaultConfig();
  const ctx = await openContext({
    ...base,
    dataDir: dir,
    serverIp: "10.88.0.1",
    dhcp: {
      ...base.dhcp,
      mode: "full",
      range: { start: "10.88.0.100", end: "10.88.0.150" },
      router: "10.88.0.254",
    },
  });
  try {
    const [fixed, leased, evidence, router, other] = [1, 2, 3, 4, 5].map((i) =>
      `02:00:00:00:88:0${i}`
    );
    for (const mac of [fixed, leased, evidence, router, other]) ctx.nodes.add(mac);
    // The admin's setting, outside the range: pinned.
    ctx.nodes.configure(fixed, { ip: "10.88.0.20" });
    // A lease netroot ACKed (its reservation): pinned.
    ctx.db.prepare("INSERT INTO leases (mac, ip, expires_at, state) VALUES (?, ?, ?, 'bound')")
      .run(leased, "10.88.0.100", 2 ** 31);
    ctx.nodes.observeAddress(leased, "10.88.0.100", "lease");
    // Neighbour evidence inside the range: an address DHCP would hand out, pinned.
    ctx.nodes.observeAddress(evidence, "10.88.0.120", "neighbour");
    // Neighbour evidence for the router's address and another host's (outside the range): what a
    // forged ARP message gives; not pinned.
    ctx.nodes.observeAddress(router, "10.88.0.254", "neighbour");
    ctx.nodes.observeAddress(other, "10.88.0.30", "neighbour");
    assert.deepEqual(
      [...wantedPins(ctx)].sort(),
      [["10.88.0.100", leased], ["10.88.0.120", evidence], ["10.88.0.20", fixed]],
    );
    // Proxy mode: the settings only, as before.
    ctx.config.dhcp.mode = "proxy";
    assert.deepEqual([...wantedPins(ctx)], [["10.88.0.20", fixed]]);
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});
