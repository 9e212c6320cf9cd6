// Proxy mode beside a lab's DHCP server (dnsmasq) on the same link: dnsmasq hands out the
// addresses, netroot only boot information (port 67 with option 43, and the PXE boot server on
// UDP 4011). Real clients in network namespaces. Needs root.
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { makeLink, parseEnv, sh, startServer, udhcpcScript } from "./dhcp_netns.ts";

const probe = new URL("./dhcp_probe.ts", import.meta.url).pathname;

Deno.test("proxy mode (root): boot info and no address, beside dnsmasq", async () => {
  const link = await makeLink("dhcpp", "10.84.1");
  const dir = await Deno.makeTempDir({ prefix: "nr-dhcpp-" });
  let server;
  let dnsmasqPid = 0;
  try {
    // dnsmasq answers as 10.84.1.1 (the primary address); netroot as 10.84.1.2.
    await sh(["ip", "-n", link.srvNs, "addr", "add", "10.84.1.2/24", "dev", link.srvIf]);
    await Deno.writeTextFile(
      `${dir}/dnsmasq.conf`,
      [
        "port=0",
        "user=root",
        `interface=${link.srvIf}`,
        "bind-interfaces",
        "dhcp-range=10.84.1.100,10.84.1.150,255.255.255.0,1h",
        `dhcp-leasefile=${dir}/leases`,
        `pid-file=${dir}/dnsmasq.pid`,
        "no-ping",
      ].join("\n") + "\n",
    );
    await sh(link.inSrv(["dnsmasq", "-C", `${dir}/dnsmasq.conf`]));
    dnsmasqPid = Number(await Deno.readTextFile(`${dir}/dnsmasq.pid`));
    server = await startServer(link, {
      serverIp: "10.84.1.2",
      dhcp: {
        mode: "proxy",
        leaseSeconds: 3600,
        proxyStrategy: "option43",
        registerUnknown: true,
      },
      ra: false,
    });

    // A plain client gets its address from dnsmasq; netroot stays silent for it.
    const hook = await udhcpcScript(dir);
    const cli = (args: string[]) =>
      sh(
        link.inCli([
          "/bin/busybox",
          "udhcpc",
          "-i",
          link.cliIf,
          "-n",
          "-q",
          "-f",
          "-t",
          "3",
          "-T",
          "2",
          "-s",
          hook,
          ...args,
        ]),
      );
    await cli([]);
    const plain = parseEnv(await Deno.readTextFile(`${dir}/bound.env`));
    assert.equal(plain.serverid, "10.84.1.1");
    assert.match(plain.ip, /^10\.84\.1\.(1[0-4]\d|150)$/);

    // A PXE ROM's DISCOVER: two offers, the address from dnsmasq, the boot info from us.
    const run = async (args: string[]) => {
      const out = await sh(link.inCli([Deno.execPath(), "run", "-A", probe, ...args]));
      return JSON.parse(out.trim().split("\n").at(-1)!) as Record<string, string>[];
    };
    const offers = await run(["--device", link.cliIf, "--mac", "02:00:00:00:84:01"]);
    const fromDnsmasq = offers.find((o) => o.serverId === "10.84.1.1");
    const fromUs = offers.find((o) => o.serverId === "10.84.1.2");
    assert.ok(fromDnsmasq && fromUs, JSON.stringify(offers));
    assert.match(fromDnsmasq.yiaddr, /^10\.84\.1\.1\d\d$/);
    assert.deepEqual(fromUs, {
      type: "Offer",
      yiaddr: "0.0.0.0",
      siaddr: "10.84.1.2",
      file: "undionly.kpxe",
      serverId: "10.84.1.2",
      vendorClass: "PXEClient",
      bootfile: "undionly.kpxe",
      opt43: "060108ff", // discovery control: boot the file in this offer
    });

    // The PXE boot server on UDP 4011 (the other strategy's second step), from a configured client.
    await sh(["ip", "-n", link.cliNs, "addr", "add", "10.84.1.50/24", "dev", link.cliIf]);
    const acks = await run([
      "--device",
      link.cliIf,
      "--mac",
      "02:00:00:00:84:02",
      "--type",
      "request",
      "--to",
      "10.84.1.2",
      "--port",
      "4011",
      "--ciaddr",
      "10.84.1.50",
    ]);
    assert.equal(acks.length, 1, JSON.stringify(acks));
    assert.equal(acks[0].type, "Ack");
    assert.equal(acks[0].yiaddr, "0.0.0.0");
    assert.equal(acks[0].file, "undionly.kpxe");

    // iPXE in proxy mode: its script URL, with 175.176=1.
    const ipxe = await run([
      "--device",
      link.cliIf,
      "--mac",
      "02:00:00:00:84:03",
      "--kind",
      "ipxe",
    ]);
    const ours = ipxe.find((o) => o.serverId === "10.84.1.2")!;
    assert.equal(ours.bootfile, `http://10.84.1.2:${server.http.port}/boot/02:00:00:00:84:03.ipxe`);
    assert.equal(ours.opt175, "b00101");

    const dataDir = server.dataDir;
    await server.stop();
    server = undefined;
    const db = new DatabaseSync(`${dataDir}/netroot.db`);
    try {
      const leases = db.prepare("SELECT count(*) AS n FROM leases").get() as { n: number };
      assert.equal(leases.n, 0, "proxy mode hands out no addresses");
      const nodes = db.prepare("SELECT mac FROM nodes ORDER BY mac").all() as { mac: string }[];
      assert.deepEqual(nodes.map((n) => n.mac), [
        "02:00:00:00:84:01",
        "02:00:00:00:84:02",
        "02:00:00:00:84:03",
      ], "the plain udhcpc client is the lab's, not a node");
      const events = (db.prepare(
        "SELECT mac, kind FROM events WHERE kind LIKE 'dhcp.%' ORDER BY id",
      ).all() as { mac: string; kind: string }[]).map((e) => `${e.mac} ${e.kind}`);
      assert.deepEqual(events, [
        "02:00:00:00:84:01 dhcp.proxy-offer",
        "02:00:00:00:84:02 dhcp.pxe-ack",
        "02:00:00:00:84:03 dhcp.proxy-offer",
      ]);
    } finally {
      db.close();
    }
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
});
