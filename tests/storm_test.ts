// The boot-storm generator (`netroot bench storm`) against real peer servers — dnsmasq for DHCP
// and TFTP, python3 http.server for HTTP — in network namespaces. Needs root.
import assert from "node:assert/strict";
import { makeLink, sh, startServer } from "./dhcp_netns.ts";
import { scriptDownloads } from "../netboot/storm.ts";
import { addStormClients, neighThresholds } from "./support/stormclients.ts";

const main = new URL("../main.ts", import.meta.url).pathname;

Deno.test("scriptDownloads finds kernel and initrd URLs", () => {
  assert.deepEqual(
    scriptDownloads(
      "#!ipxe\nkernel --name k http://a/vmlinuz console=ttyS0\ninitrd http://a/initrd.img\nboot\n",
    ),
    ["http://a/vmlinuz", "http://a/initrd.img"],
  );
});

Deno.test("bench storm (root): 40 PXE clients against dnsmasq + http.server, 0 failures", async () => {
  const link = await makeLink("storm", "10.83.1");
  const dir = await Deno.makeTempDir({ prefix: "nr-storm-" });
  const pids: number[] = [];
  try {
    await sh(["ip", "-n", link.cliNs, "addr", "add", "10.83.1.2/24", "dev", link.cliIf]);
    await Deno.mkdir(`${dir}/tftp`);
    await Deno.mkdir(`${dir}/http`);
    const kpxe = await Deno.readFile("/usr/lib/ipxe/undionly.kpxe");
    await Deno.writeFile(`${dir}/tftp/undionly.kpxe`, kpxe);
    const kernel = new Uint8Array(3 << 20).map((_, i) => i * 7);
    const initrd = new Uint8Array(2 << 20).map((_, i) => i * 13);
    await Deno.writeFile(`${dir}/http/vmlinuz`, kernel);
    await Deno.writeFile(`${dir}/http/initrd.img`, initrd);
    const script = "#!ipxe\nkernel http://10.83.1.1:8099/vmlinuz quiet\n" +
      "initrd http://10.83.1.1:8099/initrd.img\nboot\n";
    await Deno.writeTextFile(`${dir}/http/node.ipxe`, script);
    await Deno.writeTextFile(
      `${dir}/dnsmasq.conf`,
      [
        "port=0",
        "user=root",
        `interface=${link.srvIf}`,
        "bind-interfaces",
        "dhcp-range=10.83.1.10,10.83.1.250,255.255.255.0,1h",
        `dhcp-leasefile=${dir}/leases`,
        `pid-file=${dir}/dnsmasq.pid`,
        "no-ping",
        "dhcp-authoritative",
        "enable-tftp",
        `tftp-root=${dir}/tftp`,
        "dhcp-match=set:ipxe,175",
        "dhcp-boot=tag:ipxe,http://10.83.1.1:8099/node.ipxe",
        "dhcp-boot=tag:!ipxe,undionly.kpxe",
      ].join("\n") + "\n",
    );
    await sh(link.inSrv(["dnsmasq", "-C", `${dir}/dnsmasq.conf`]));
    pids.push(Number(await Deno.readTextFile(`${dir}/dnsmasq.pid`)));
    const http = new Deno.Command("ip", {
      args: link.inSrv(["python3", "-m", "http.server", "8099", "--bind", "10.83.1.1"]).slice(1),
      cwd: `${dir}/http`,
      stdout: "null",
      stderr: "null",
    }).spawn();
    pids.push(http.pid);
    for (let i = 0; i < 50; i++) {
      const r = await sh(link.inSrv(["ss", "-ltn"]), { ok: false });
      if (r.includes(":8099")) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const n = 40;
    const out = await new Deno.Command("ip", {
      args: link.inCli([
        Deno.execPath(),
        "run",
        "-A",
        main,
        "bench",
        "storm",
        "--interface",
        link.cliIf,
        "--clients",
        String(n),
        "--json",
      ]).slice(1),
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.ok(out.success, text + new TextDecoder().decode(out.stderr));
    const report = JSON.parse(text);
    assert.equal(report.failures, 0, JSON.stringify(report.errors));
    assert.equal(report.ok, n);
    assert.equal(report.dhcpExchanges, 2 * n);
    const perClient = kpxe.length + script.length + kernel.length + initrd.length;
    assert.equal(report.bytes, n * perClient);
    assert.ok(report.bytesPerSecond > 0 && report.seconds > 0);
    const leases = (await Deno.readTextFile(`${dir}/leases`)).trim().split("\n");
    assert.equal(leases.length, n); // each simulated client had its own MAC
  } finally {
    for (const pid of pids) {
      try {
        Deno.kill(pid, "SIGTERM");
      } catch { /* gone */ }
    }
    await link.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bench storm (root): 500 PXE clients against netroot's own DHCP + TFTP, 0 failures", async () => {
  // The HTTP phase needs a deployed bootable image (kernel + initramfs), so it is left out here.
  const link = await makeLink("stormn", "10.90.0", 16);
  const neighDefaults = neighThresholds([2048, 4096, 8192]);
  let server;
  try {
    await sh(["ip", "-n", link.cliNs, "addr", "add", "10.90.0.2/16", "dev", link.cliIf]);
    // 500 machines, each its own MAC and address, as the bench's: the server holds each address
    // to its share of TFTP transfers, and pins each lease to its MAC.
    const n = 500;
    const addresses = Array.from(
      { length: n },
      (_, k) => `10.90.${1 + ((k + 10) >> 8)}.${(k + 10) & 255}`,
    );
    await addStormClients(link.cliNs, link.cliIf, "10.90.0.0/16", [...Array(n).keys()], addresses);
    server = await startServer(link, {
      dhcp: {
        mode: "full",
        range: { start: "10.90.1.0", end: "10.90.3.255" },
        leaseSeconds: 3600,
        proxyStrategy: "option43",
        registerUnknown: true,
        // 500 machines never seen before, all at once: past the default 60 a minute.
        registerRate: 1000,
      },
      ra: false,
    });
    const out = await new Deno.Command("ip", {
      args: link.inCli([
        Deno.execPath(),
        "run",
        "-A",
        main,
        "bench",
        "storm",
        "--interface",
        link.cliIf,
        "--clients",
        String(n),
        "--no-http",
        "--json",
      ]).slice(1),
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.ok(out.success, text + new TextDecoder().decode(out.stderr));
    const report = JSON.parse(text);
    assert.equal(report.failures, 0, JSON.stringify(report.errors));
    assert.equal(report.dhcpExchanges, 2 * n);
    const kpxe = (await Deno.stat("/usr/lib/ipxe/undionly.kpxe")).size;
    assert.equal(report.bytes, n * kpxe);
    console.log(`netroot DHCP+TFTP storm: ${n} clients in ${report.seconds.toFixed(2)} s`);
  } finally {
    await server?.stop();
    await link.close();
    neighThresholds(neighDefaults);
  }
});
