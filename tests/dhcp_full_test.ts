// Full-mode DHCP against real clients (busybox udhcpc, isc-dhcp-client) in network namespaces.
// Needs root (namespaces, port 67).
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { makeLink, parseEnv, sh, startServer, udhcpcScript } from "./dhcp_netns.ts";

const udhcpc = (hook: string, iface: string, extra: string[] = []) => [
  "/bin/busybox",
  "udhcpc",
  "-i",
  iface,
  "-n",
  "-q",
  "-f",
  "-t",
  "3",
  "-T",
  "2",
  "-s",
  hook,
  ...extra,
];

Deno.test("full mode (root): udhcpc and dhclient get leases; PXE and iPXE get boot info", async () => {
  const link = await makeLink("dhcpf", "10.81.1");
  const dir = await Deno.makeTempDir({ prefix: "nr-dhcpf-" });
  let server;
  try {
    server = await startServer(link, {
      dhcp: {
        mode: "full",
        range: { start: "10.81.1.100", end: "10.81.1.120" },
        leaseSeconds: 600,
        proxyStrategy: "option43",
        registerUnknown: true,
        router: "10.81.1.254",
      },
      ra: false,
    });
    const nodeUrl = `http://10.81.1.1:${server.http.port}`;
    // No route to the limited broadcast: our broadcast replies leave through SO_BINDTODEVICE.
    assert.match(
      await sh(link.inSrv(["ip", "route", "get", "255.255.255.255"]), { ok: false }),
      /Network is unreachable/,
    );
    const hook = await udhcpcScript(dir);
    const setMac = (mac: string) =>
      sh(["ip", "-n", link.cliNs, "link", "set", link.cliIf, "address", mac]);

    // 1. plain Linux DHCP
    await setMac("02:00:00:00:81:01");
    await sh(link.inCli(udhcpc(hook, link.cliIf)));
    const plain = parseEnv(await Deno.readTextFile(`${dir}/bound.env`));
    assert.equal(plain.ip, "10.81.1.100");
    assert.equal(plain.serverid, "10.81.1.1");
    assert.equal(plain.subnet, "255.255.255.0");
    assert.equal(plain.router, "10.81.1.254");
    assert.equal(plain.lease, "600");
    assert.equal(plain.boot_file ?? "", "");
    assert.equal(plain.hostname, "node-008101"); // the name it was registered under

    // 2. same MAC again: the same (reserved) address
    await Deno.remove(`${dir}/bound.env`);
    await sh(link.inCli(udhcpc(hook, link.cliIf)));
    assert.equal(parseEnv(await Deno.readTextFile(`${dir}/bound.env`)).ip, "10.81.1.100");

    // 3. a PXE BIOS ROM (emulated): the BIOS iPXE binary by TFTP from us
    await setMac("02:00:00:00:81:02");
    await sh(link.inCli(udhcpc(hook, link.cliIf, ["-V", "PXEClient", "-x", "0x5d:0000"])));
    const pxe = parseEnv(await Deno.readTextFile(`${dir}/bound.env`));
    assert.equal(pxe.ip, "10.81.1.101");
    assert.equal(pxe.boot_file, "undionly.kpxe");
    assert.equal(pxe.siaddr, "10.81.1.1");

    // 4. iPXE (user class "iPXE"): the HTTP URL of its per-node script
    await setMac("02:00:00:00:81:03");
    await sh(link.inCli(udhcpc(hook, link.cliIf, ["-x", "0x4d:69505845"])));
    const ipxe = parseEnv(await Deno.readTextFile(`${dir}/bound.env`));
    assert.equal(ipxe.boot_file, `${nodeUrl}/boot/02:00:00:00:81:03.ipxe`);

    // 5. isc-dhcp-client, then its RELEASE
    await setMac("02:00:00:00:81:04");
    const lf = `${dir}/dhclient.leases`, pf = `${dir}/dhclient.pid`;
    try {
      const out = await sh(link.inCli(["dhclient", "-1", "-v", "-lf", lf, "-pf", pf, link.cliIf]));
      assert.match(out, /DHCPACK of 10\.81\.1\.103 from 10\.81\.1\.1/);
      await sh(link.inCli(["dhclient", "-r", "-v", "-lf", lf, "-pf", pf, link.cliIf]));
    } finally {
      const pid = await Deno.readTextFile(pf).catch(() => "");
      if (pid.trim()) await sh(["kill", pid.trim()], { ok: false });
    }
    await new Promise((r) => setTimeout(r, 300));

    // Each node's address is pinned in the server's ARP table to the node's MAC, as its exports
    // follow it (the released lease's node keeps its reservation): a machine that takes one of
    // these addresses keeping its own MAC gets no answer. The pins go with the server.
    const pins = async () =>
      (await sh(link.inSrv(["ip", "neigh", "show", "dev", link.srvIf, "nud", "permanent"])))
        .split("\n").filter((l) => / proto 110\b/.test(l))
        .map((l) => l.split(" ").slice(0, 3).join(" ")).sort();
    for (let i = 0; i < 50 && (await pins()).length < 4; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(await pins(), [
      "10.81.1.100 lladdr 02:00:00:00:81:01",
      "10.81.1.101 lladdr 02:00:00:00:81:02",
      "10.81.1.102 lladdr 02:00:00:00:81:03",
      "10.81.1.103 lladdr 02:00:00:00:81:04",
    ]);

    const dataDir = server.dataDir;
    await server.stop();
    server = undefined;
    assert.deepEqual(await pins(), [], "pins removed with the server");
    const db = new DatabaseSync(`${dataDir}/netroot.db`);
    try {
      const nodes = db.prepare("SELECT mac, name, ip FROM nodes ORDER BY mac").all() as {
        mac: string;
        name: string;
        ip: string;
      }[];
      // registered at first contact, named after the MAC, each with a stable reservation
      assert.deepEqual(nodes.map((n) => [n.mac, n.name, n.ip]), [
        ["02:00:00:00:81:01", "node-008101", "10.81.1.100"],
        ["02:00:00:00:81:02", "node-008102", "10.81.1.101"],
        ["02:00:00:00:81:03", "node-008103", "10.81.1.102"],
        ["02:00:00:00:81:04", "node-008104", "10.81.1.103"],
      ]);
      const leases = db.prepare("SELECT mac, ip, state FROM leases ORDER BY ip").all();
      assert.deepEqual(leases.map((l) => `${l.ip} ${l.state}`), [
        "10.81.1.100 bound",
        "10.81.1.101 bound",
        "10.81.1.102 bound",
        "10.81.1.103 released",
      ]);
      const kinds = (db.prepare(
        "SELECT kind FROM events WHERE mac = '02:00:00:00:81:02' ORDER BY id",
      ).all() as { kind: string }[]).map((e) => e.kind);
      assert.ok(kinds.includes("node.registered"), kinds.join(","));
      assert.deepEqual(kinds.filter((k) => k.startsWith("dhcp.")), ["dhcp.offer", "dhcp.ack"]);
      const ack = db.prepare(
        "SELECT detail FROM events WHERE mac = '02:00:00:00:81:02' AND kind = 'dhcp.ack'",
      ).get() as { detail: string };
      assert.deepEqual(JSON.parse(ack.detail), {
        ip: "10.81.1.101",
        firmware: "bios",
        bootfile: "undionly.kpxe",
      });
    } finally {
      db.close();
    }
  } finally {
    await server?.stop();
    await link.close();
    await Deno.remove(dir, { recursive: true });
  }
});
