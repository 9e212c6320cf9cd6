// Real firmware: QEMU's iPXE ROM (virtio-net, BIOS) boots against netroot in a network namespace
// (tap0). Full mode: iPXE gets an address and its per-node script URL from our DHCP and fetches
// it over HTTP. Proxy mode: dnsmasq hands out the address, the script URL comes from our proxy
// offer. Router advertisements on, so iPXE does not wait ≈ 13 s for IPv6. Needs root + qemu (TCG).
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import type { ServerConfig } from "../src/config.ts";
import { type Link, sh, startServer } from "./dhcp_netns.ts";

const skip = Deno.env.get("NETROOT_SKIP_VM") === "1";
let counter = 0;

async function tapNamespace(net: string): Promise<Link> {
  const ns = `nr-dhcpvm-${Deno.pid}-${counter++}`;
  const link: Link = {
    srvNs: ns,
    srvIf: "tap0",
    cliNs: ns,
    cliIf: "tap0",
    net,
    inSrv: (c) => ["ip", "netns", "exec", ns, ...c],
    inCli: (c) => ["ip", "netns", "exec", ns, ...c],
    close: async () => void await sh(["ip", "netns", "del", ns], { ok: false }),
  };
  try {
    await sh(["ip", "netns", "add", ns]);
    await sh(["ip", "-n", ns, "link", "set", "lo", "up"]);
    await sh(["ip", "-n", ns, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
    await sh(["ip", "-n", ns, "addr", "add", `${net}.1/24`, "dev", "tap0"]);
    await sh([
      "ip",
      "-n",
      ns,
      "-6",
      "addr",
      "add",
      `fd${net.split(".")[1]}::1/64`,
      "dev",
      "tap0",
      "nodad",
    ]);
    await sh(["ip", "-n", ns, "link", "set", "tap0", "up"]);
    return link;
  } catch (e) {
    await link.close();
    throw e;
  }
}

/** Boots the VM until the server records an HTTP fetch of the node's script; returns seconds. */
async function bootUntilScript(link: Link, dataDir: string, mac: string): Promise<number> {
  const qemu = new Deno.Command("ip", {
    args: link.inSrv([
      "timeout",
      "90",
      "qemu-system-x86_64",
      "-accel",
      "tcg",
      "-m",
      "128",
      "-display",
      "none",
      "-monitor",
      "none",
      "-serial",
      "none",
      "-boot",
      "n",
      "-no-reboot",
      "-netdev",
      "tap,id=n0,ifname=tap0,script=no,downscript=no",
      "-device",
      `virtio-net-pci,netdev=n0,mac=${mac}`,
    ]).slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const t0 = performance.now();
  const db = new DatabaseSync(`${dataDir}/netroot.db`, { readOnly: true });
  try {
    while (performance.now() - t0 < 80_000) {
      const hit = db.prepare(
        "SELECT kind FROM events WHERE mac = ? AND kind IN ('http.script', 'http.refused')",
      ).get(mac);
      if (hit) return (performance.now() - t0) / 1000;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error("iPXE never fetched its script");
  } finally {
    db.close();
    try {
      qemu.kill("SIGKILL");
    } catch { /* exited */ }
    await qemu.status;
  }
}

function dhcpEvents(
  dataDir: string,
  mac: string,
): { kind: string; detail: Record<string, unknown> }[] {
  const db = new DatabaseSync(`${dataDir}/netroot.db`, { readOnly: true });
  try {
    return (db.prepare(
      "SELECT kind, detail FROM events WHERE mac = ? AND kind LIKE 'dhcp.%' ORDER BY id",
    )
      .all(mac) as { kind: string; detail: string }[]).map((e) => ({
        kind: e.kind,
        detail: JSON.parse(e.detail),
      }));
  } finally {
    db.close();
  }
}

Deno.test({
  name: "iPXE ROM in qemu (root, VM): full mode gives address + script URL; fetched over HTTP",
  ignore: skip,
  async fn() {
    const link = await tapNamespace("10.91.0");
    let server;
    try {
      server = await startServer(link, {
        dhcp: {
          mode: "full",
          range: { start: "10.91.0.100", end: "10.91.0.150" },
          leaseSeconds: 3600,
          proxyStrategy: "option43",
          registerUnknown: true,
        },
        ra: true,
      } as Partial<ServerConfig>);
      const mac = "52:54:00:91:00:01";
      const s = await bootUntilScript(link, server.dataDir, mac);
      console.log(`full mode: iPXE fetched its script ${s.toFixed(1)} s after qemu start`);
      const ev = dhcpEvents(server.dataDir, mac);
      const ack = ev.find((e) => e.kind === "dhcp.ack");
      assert.ok(ack, JSON.stringify(ev));
      assert.equal(ack.detail.firmware, "ipxe");
      assert.equal(ack.detail.ip, "10.91.0.100");
      assert.equal(ack.detail.bootfile, `http://10.91.0.1:${server.http.port}/boot/${mac}.ipxe`);
      // 175.176=1 stops iPXE waiting for ProxyDHCP offers: one DISCOVER, one REQUEST.
      assert.deepEqual(ev.map((e) => e.kind), ["dhcp.offer", "dhcp.ack"]);
    } finally {
      await server?.stop();
      await link.close();
    }
  },
});

Deno.test({
  name: "iPXE ROM in qemu (root, VM): proxy mode beside dnsmasq gives the script URL",
  ignore: skip,
  async fn() {
    const link = await tapNamespace("10.92.0");
    const dir = await Deno.makeTempDir({ prefix: "nr-dhcpvm-" });
    let server, dnsmasqPid = 0;
    try {
      await sh(["ip", "-n", link.srvNs, "addr", "add", "10.92.0.2/24", "dev", "tap0"]);
      await Deno.writeTextFile(
        `${dir}/dnsmasq.conf`,
        [
          "port=0",
          "user=root",
          "interface=tap0",
          "bind-interfaces",
          "dhcp-range=10.92.0.100,10.92.0.150,255.255.255.0,1h",
          `dhcp-leasefile=${dir}/leases`,
          `pid-file=${dir}/dnsmasq.pid`,
          "no-ping",
        ].join("\n") + "\n",
      );
      await sh(link.inSrv(["dnsmasq", "-C", `${dir}/dnsmasq.conf`]));
      dnsmasqPid = Number(await Deno.readTextFile(`${dir}/dnsmasq.pid`));
      server = await startServer(link, {
        serverIp: "10.92.0.2",
        dhcp: {
          mode: "proxy",
          leaseSeconds: 3600,
          proxyStrategy: "option43",
          registerUnknown: true,
        },
        ra: true,
      } as Partial<ServerConfig>);
      const mac = "52:54:00:92:00:01";
      const s = await bootUntilScript(link, server.dataDir, mac);
      console.log(`proxy mode: iPXE fetched its script ${s.toFixed(1)} s after qemu start`);
      const leases = await Deno.readTextFile(`${dir}/leases`);
      assert.match(leases, new RegExp(`${mac} 10\\.92\\.0\\.1\\d\\d`), "address from dnsmasq");
      const kinds = dhcpEvents(server.dataDir, mac).map((e) => e.kind);
      assert.ok(kinds.includes("dhcp.proxy-offer"), kinds.join(","));
    } finally {
      await server?.stop();
      if (dnsmasqPid) {
        try {
          Deno.kill(dnsmasqPid, "SIGTERM");
        } catch { /* gone */ }
      }
      await link.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
