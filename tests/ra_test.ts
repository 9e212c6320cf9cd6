// Router advertisements: the Linux kernel of a client namespace (accept_ra) is the real receiver —
// it configures a SLAAC address from our prefix, installs no default route (lifetime 0), and gets
// an answer to the solicitation it sends when its link comes up. Needs root.
import assert from "node:assert/strict";
import { makeLink, sh, startServer } from "./dhcp_netns.ts";
import { buildRouterAdvertisement, interfacePrefixes } from "../netboot/ra.ts";
import { ipv6Bytes } from "../src/linux/udp.ts";

Deno.test("buildRouterAdvertisement: lifetime 0, source MAC, /64 prefix autonomous", () => {
  const ra = buildRouterAdvertisement({
    mac: new Uint8Array([2, 0, 0, 0, 0, 1]),
    prefixes: [{ prefix: ipv6Bytes("fd86::"), length: 64 }],
  });
  assert.equal(ra.length, 16 + 8 + 32);
  assert.equal(ra[0], 134);
  assert.equal((ra[6] << 8) | ra[7], 0);
  assert.deepEqual([...ra.subarray(16, 24)], [1, 1, 2, 0, 0, 0, 0, 1]);
  assert.deepEqual([...ra.subarray(24, 28)], [3, 4, 64, 0xc0]);
  assert.deepEqual([...ra.subarray(40, 42)], [0xfd, 0x86]);
  assert.deepEqual(
    ipv6Bytes("fd86::1:2"),
    new Uint8Array([0xfd, 0x86, ...new Array(10).fill(0), 0, 1, 0, 2]),
  );
});

async function waitFor(cond: () => Promise<boolean>, ms: number): Promise<number> {
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    if (await cond()) return performance.now() - t0;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`condition not met within ${ms} ms`);
}

Deno.test("router advertisements (root): client kernel autoconfigures, no default route, RS answered", async () => {
  const link = await makeLink("ra", "10.86.1");
  let server;
  try {
    await sh([
      "ip",
      "-n",
      link.srvNs,
      "-6",
      "addr",
      "add",
      "fd86::1/64",
      "dev",
      link.srvIf,
      "nodad",
    ]);
    await sh(link.inCli(["sysctl", "-qw", `net.ipv6.conf.${link.cliIf}.accept_ra=1`]));
    await sh(link.inCli(["sysctl", "-qw", `net.ipv6.conf.${link.cliIf}.accept_dad=0`]));
    await sh(link.inSrv(["sysctl", "-qw", `net.ipv6.conf.${link.srvIf}.accept_dad=0`]));
    server = await startServer(link, { dhcp: { mode: "off" } as never, ra: true });
    const slaac = async () =>
      /inet6 fd86::[0-9a-f:]+\/64 scope global dynamic/.test(
        await sh(link.inCli(["ip", "-6", "addr", "show", "dev", link.cliIf])),
      );
    await waitFor(slaac, 10_000);
    const routes = await sh(link.inCli(["ip", "-6", "route", "show"]));
    assert.doesNotMatch(routes, /default/, "lifetime 0: not a default router");
    assert.match(routes, /fd86::\/64/);

    // Link down/up: the kernel drops the address and solicits; our answer (not the 60 s periodic
    // one) brings it back within seconds.
    await sh(link.inCli(["ip", "link", "set", link.cliIf, "down"]));
    assert.equal(await slaac(), false);
    await sh(link.inCli(["ip", "link", "set", link.cliIf, "up"]));
    const ms = await waitFor(slaac, 8_000);
    console.log(`SLAAC address back ${Math.round(ms)} ms after link up`);
    assert.ok(interfacePrefixes("lo").prefixes.every((p) => p.length === 128));
  } finally {
    await server?.stop();
    await link.close();
  }
});
