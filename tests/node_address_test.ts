// A node's address — what its read-write /persist export follows — comes only from evidence
// bound to its MAC: the admin's `ip` setting (wins), a lease netroot ACKed, or the boot
// interface's neighbour table mapping the address of its boot-script request to its MAC. Never
// from whoever asks. Unit tests of the registry, then (root) two clients in network namespaces
// against a real server with ganesha exports.
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { UserError } from "../src/errors.ts";
import { listEvents } from "../src/events.ts";
import { LeaseStore } from "../src/boot/leases.ts";
import { parseArpTable } from "../src/linux/neigh.ts";
import { desiredExports } from "../src/nfs.ts";
import { closeContext, openContext } from "../src/server.ts";
import { type Link, sh, startServer } from "./dhcp_netns.ts";
import { addImage } from "./support/images.ts";

async function withCtx(fn: (ctx: Context) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nr-addr-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir, serverIp: "10.86.0.1" });
  try {
    await fn(ctx);
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

const status = (fn: () => unknown): number => {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof UserError, `expected a UserError, got ${e}`);
    return e.status;
  }
  return 0;
};

Deno.test("parseArpTable: complete entries only, MACs lower-cased", () => {
  const text = [
    "IP address       HW type     Flags       HW address            Mask     Device",
    "10.86.1.11       0x1         0x2         02:00:00:00:86:0A     *        br0",
    "10.86.1.12       0x1         0x0         00:00:00:00:00:00     *        br0",
    "192.168.1.1      0x1         0x6         aa:bb:cc:dd:ee:ff     *        eth0",
    "",
  ].join("\n");
  assert.deepEqual(parseArpTable(text), [
    { ip: "10.86.1.11", mac: "02:00:00:00:86:0a", device: "br0" },
    { ip: "192.168.1.1", mac: "aa:bb:cc:dd:ee:ff", device: "eth0" },
  ]);
  assert.deepEqual(parseArpTable(""), []);
});

Deno.test("the admin's ip setting is validated, unique, and wins over any evidence", () =>
  withCtx((ctx) => {
    const nodes = ctx.nodes;
    const a = "52:54:00:00:86:01", b = "52:54:00:00:86:02";
    nodes.add(a, { name: "a" });
    nodes.add(b, { name: "b" });
    for (const bad of ["10.86.0", "10.86.0.300", "0.1.2.3", "127.0.0.1", "224.0.0.1", "x"]) {
      assert.equal(status(() => nodes.configure("a", { ip: bad })), 400, bad);
    }
    // Evidence moves an address that no admin fixed, and says so on the timeline.
    assert.equal(nodes.observeAddress(a, "10.86.0.21", "neighbour"), true);
    assert.equal(nodes.get("a").ip, "10.86.0.21");
    const ev = listEvents(ctx.db, { mac: a }).find((e) => e.kind === "node.address");
    assert.deepEqual(ev?.detail, { ip: "10.86.0.21", previous: null, evidence: "neighbour" });
    // Fixed by the admin: the node's address at once, and no evidence moves it.
    assert.equal(nodes.configure("a", { ip: " 10.86.0.50 " }).ip, "10.86.0.50");
    assert.equal(nodes.observeAddress(a, "10.86.0.22", "lease"), false);
    assert.equal(nodes.observeAddress(a, "10.86.0.23", "neighbour"), false);
    assert.equal(nodes.get("a").ip, "10.86.0.50");
    // Another node cannot take it, by evidence or by setting.
    assert.equal(nodes.observeAddress(b, "10.86.0.50", "neighbour"), false);
    assert.equal(nodes.get("a").ip, "10.86.0.50");
    assert.equal(status(() => nodes.configure("b", { ip: "10.86.0.50" })), 409);
    // Exports follow the fixed address even while a lease says otherwise.
    ctx.db.prepare("INSERT INTO leases (mac, ip, expires_at, state) VALUES (?, ?, ?, 'bound')")
      .run(a, "10.86.0.60", 2 ** 31);
    assert.deepEqual(
      desiredExports(ctx).persists.map((p) => [p.mac, p.ip]),
      [[a, "10.86.0.50"]],
    );
    // Unfixed: the address is forgotten (not exported) until evidence finds it again.
    assert.equal(nodes.configure("a", { ip: null }).ip, null);
    assert.deepEqual(desiredExports(ctx).persists.map((p) => [p.mac, p.ip]), [[a, "10.86.0.60"]]);
    assert.equal(nodes.observeAddress(a, "10.86.0.60", "lease"), true);
    assert.equal(nodes.get("a").ip, "10.86.0.60");
    // Fixing an address another node leases ends that lease: one machine per address in the
    // exports and the boot routes' address check; the other gets a new one at its renewal.
    ctx.db.prepare("INSERT INTO leases (mac, ip, expires_at, state) VALUES (?, ?, ?, 'bound')")
      .run(b, "10.86.0.70", 2 ** 31);
    assert.equal(nodes.addressOf(b), "10.86.0.70");
    nodes.configure("a", { ip: "10.86.0.70" });
    assert.equal(nodes.addressOf(a), "10.86.0.70");
    assert.equal(nodes.addressOf(b), null);
    assert.deepEqual(desiredExports(ctx).persists.map((p) => [p.mac, p.ip]), [[a, "10.86.0.70"]]);
    const revoked = listEvents(ctx.db, { mac: b }).filter((e) => e.kind === "dhcp.revoked");
    assert.deepEqual(revoked.map((e) => e.detail), [{ ip: "10.86.0.70", fixedFor: a }]);
    const leases = new LeaseStore(
      ctx.db,
      { range: { start: "10.86.0.60", end: "10.86.0.80" } },
      ctx.nodes,
    );
    const now = Math.floor(Date.now() / 1000);
    assert.notEqual(leases.pick(b, now, undefined, "10.86.0.70"), "10.86.0.70");
    assert.equal(leases.pick(a, now, "10.86.0.70"), "10.86.0.70");
  }));

Deno.test("pinned addresses: the ip setting; in full DHCP mode every address an export follows", () =>
  withCtx((ctx) => {
    const nodes = ctx.nodes;
    const [a, b, c] = ["52:54:00:00:86:11", "52:54:00:00:86:12", "52:54:00:00:86:13"];
    for (const [mac, name] of [[a, "a"], [b, "b"], [c, "c"]]) nodes.add(mac, { name });
    nodes.configure("a", { ip: "10.86.0.11" });
    const lease = ctx.db.prepare(
      "INSERT INTO leases (mac, ip, expires_at, state) VALUES (?, ?, ?, 'bound')",
    );
    lease.run(b, "10.86.0.12", 2 ** 31);
    lease.run("02:99:00:00:00:99", "10.86.0.99", 2 ** 31); // a client that is no node
    nodes.observeAddress(c, "10.86.0.13", "neighbour");
    assert.deepEqual(nodes.pinnedAddresses(false), [{ mac: a, ip: "10.86.0.11" }]);
    assert.deepEqual(nodes.pinnedAddresses(true), [
      { mac: a, ip: "10.86.0.11" },
      { mac: b, ip: "10.86.0.12" },
      { mac: c, ip: "10.86.0.13" },
    ]);
    assert.deepEqual(
      nodes.pinnedAddresses(true),
      nodes.exportTargets().map((t) => ({ mac: t.mac, ip: t.ip })),
    );
  }));

// ---- two clients on one boot LAN (root) ----

interface LanClient {
  ns: string;
  mac: string;
  ip: string;
}

/** A server namespace with bridge br0 (`${net}.1/24`) and one namespace per client, each with
 *  eth0 (the given MAC, `${net}.<11+i>/24`) on the bridge. */
async function makeLan(tag: string, net: string, macs: string[]) {
  const id = `${Deno.pid}`;
  const srvNs = `nr-${tag}-s-${id}`;
  const clients: LanClient[] = macs.map((mac, i) => ({
    ns: `nr-${tag}-c${i}-${id}`,
    mac,
    ip: `${net}.${11 + i}`,
  }));
  const link: Link & { clients: LanClient[] } = {
    srvNs,
    srvIf: "br0",
    cliNs: clients[0].ns,
    cliIf: "eth0",
    net,
    inSrv: (c) => ["ip", "netns", "exec", srvNs, ...c],
    inCli: (c) => ["ip", "netns", "exec", clients[0].ns, ...c],
    tempDirs: [],
    clients,
    async close() {
      for (const c of clients) await sh(["ip", "netns", "del", c.ns], { ok: false });
      await sh(["ip", "netns", "del", srvNs], { ok: false });
    },
  };
  try {
    const n = (...a: string[]) => sh(["ip", "-n", srvNs, ...a]);
    await sh(["ip", "netns", "add", srvNs]);
    await n("link", "set", "lo", "up");
    await n("link", "add", "br0", "type", "bridge");
    await n("addr", "add", `${net}.1/24`, "dev", "br0");
    await n("link", "set", "br0", "up");
    for (const [i, c] of clients.entries()) {
      await sh(["ip", "netns", "add", c.ns]);
      await n("link", "add", `vc${i}`, "type", "veth", "peer", "name", "eth0", "netns", c.ns);
      await n("link", "set", `vc${i}`, "master", "br0");
      await n("link", "set", `vc${i}`, "up");
      const m = (...a: string[]) => sh(["ip", "-n", c.ns, ...a]);
      await m("link", "set", "eth0", "address", c.mac);
      await m("addr", "add", `${c.ip}/24`, "dev", "eth0");
      await m("link", "set", "eth0", "up");
      await m("link", "set", "lo", "up");
    }
    return link;
  } catch (e) {
    await link.close();
    throw e;
  }
}

const persistClient = (conf: string, mac: string) =>
  new RegExp(
    `Pseudo = "/netroot/persist/${mac.replaceAll(":", "")}";[^{}]*` +
      `CLIENT \\{ Clients = ([0-9.]+); Access_Type = RW;`,
  ).exec(conf)?.[1];

Deno.test("proxy mode (root, netns): fetching another node's boot script does not move its /persist export", async () => {
  const a = "02:00:00:00:86:0a", b = "02:00:00:00:86:0b";
  const lan = await makeLan("addr", "10.86.1", [a, b]);
  const dataDir = await Deno.makeTempDir({ prefix: "nr-addr-" });
  let server;
  try {
    // The registry before the start: both machines are nodes with a bootable image.
    const ctx = await openContext({ ...defaultConfig(), dataDir });
    const image = addImage(ctx, "img");
    writeFileSync(ctx.data.manifest(image), ""); // as an import leaves it (checked at start)
    ctx.nodes.add(a, { name: "node-a", image });
    ctx.nodes.add(b, { name: "node-b", image });
    await closeContext(ctx);
    server = await startServer(lan, {
      dataDir,
      dhcp: { mode: "proxy" },
      nfs: { mode: "ganesha", version: 4 },
      ra: false,
    });
    const url = `http://10.86.1.1:${server.http.port}`;
    const conf = `${dataDir}/run/ganesha/ganesha.conf`;
    const exportOf = (mac: string) =>
      existsSync(conf) ? persistClient(readFileSync(conf, "utf8"), mac) : undefined;
    const until = async (what: string, ok: () => boolean) => {
      for (let i = 0; i < 100 && !ok(); i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(ok(), what);
    };
    const script = (from: LanClient, mac: string) =>
      sh(["ip", "netns", "exec", from.ns, "curl", "-sf", `${url}/boot/${mac}.ipxe`]);
    const [ca, cb] = lan.clients;

    // Before A ever boots, B fetches A's script (the attacker comes first): the neighbour table
    // maps B's address to B's MAC, so B gets a refusal and no token; A gets no address and no
    // export, even once the exports are rendered again (B boots itself).
    const notB = (ip: string) =>
      new RegExp(`request from ${ip.replaceAll(".", "\\.")}: that address is ${b}'s on br0`);
    const early = await script(cb, a);
    assert.match(early, notB(cb.ip));
    assert.doesNotMatch(early, /netroot\.token=/);
    await script(cb, b);
    await until("B's /persist exported to B", () => exportOf(b) === cb.ip);
    assert.equal(exportOf(a), undefined, "A's /persist is exported to nobody");

    // Node A boots: its script carries its address, and /persist is exported to it.
    assert.match(await script(ca, a), /ip=10\.86\.1\.11:10\.86\.1\.1:/);
    await until("A's /persist exported to A", () => exportOf(a) === ca.ip);

    // B (another machine on the LAN) fetches A's script again: a refusal (no boot opened, no
    // token).
    const refusedScript = await script(cb, a);
    assert.match(refusedScript, notB(cb.ip));
    assert.doesNotMatch(refusedScript, /netroot\.token=/);
    // B boots itself: exports are rendered again after the hostile fetch.
    await script(cb, b);
    await until("B's /persist still exported to B", () => exportOf(b) === cb.ip);
    assert.equal(exportOf(a), ca.ip, "A's /persist stays exported to A only");

    // B forges A's reports with a token of A's it sniffed: a handover would say which image A
    // runs (its exports, `image rm`). Refused from B's address; A's own from its address taken;
    // from a second address of A's (the neighbour table maps it to A's MAC) taken too, and A's
    // address follows it.
    const report = (from: LanClient, mac: string, token: string, bind = from.ip) =>
      sh([
        ..."ip netns exec".split(" "),
        from.ns,
        ..."curl -s -o /dev/null -w %{http_code} --interface".split(" "),
        bind,
        "-d",
        JSON.stringify({ token, mac, stage: "handover", ok: true }),
        `${url}/boot/report`,
      ]);
    const tokenIn = (script: string) => /netroot\.token=(\S+)/.exec(script)![1];
    const own = tokenIn(await script(ca, a));
    assert.equal(await report(cb, a, own), "403", "B's forged handover for A");
    assert.equal(await report(ca, a, own), "200", "A's handover from its address");
    await sh(["ip", "-n", ca.ns, "addr", "add", "10.86.1.13/24", "dev", "eth0"]);
    const moved = tokenIn(await script(ca, a));
    assert.equal(await report(ca, a, moved, "10.86.1.13"), "200", "A's from its second address");
    await until("A's /persist follows its report's address", () => exportOf(a) === "10.86.1.13");

    // A is off, long enough for the server to forget its neighbour entry; B takes A's address,
    // keeping its own MAC: the neighbour table says B, so neither A's script (its token) nor a
    // report for A is taken from it (no admin fixed A's address: nothing is pinned, proxy mode).
    await sh(["ip", "-n", ca.ns, "link", "set", "eth0", "down"]);
    await sh(lan.inSrv(["ip", "neigh", "flush", "10.86.1.13", "dev", "br0"]));
    await sh(["ip", "-n", cb.ns, "addr", "add", "10.86.1.13/24", "dev", "eth0"]);
    const takeover = await sh([
      ..."ip netns exec".split(" "),
      cb.ns,
      ..."curl -sf --interface 10.86.1.13".split(" "),
      `${url}/boot/${a}.ipxe`,
    ]);
    assert.match(takeover, notB("10.86.1.13"));
    assert.doesNotMatch(takeover, /netroot\.token=/);
    assert.equal(await report(cb, a, own, "10.86.1.13"), "403", "a report from A's taken address");
    assert.equal(exportOf(a), "10.86.1.13", "A's export stays with A");
    await sh(["ip", "-n", cb.ns, "addr", "del", "10.86.1.13/24", "dev", "eth0"]);
    await sh(["ip", "-n", ca.ns, "link", "set", "eth0", "up"]);

    // The admin fixes A's address: the export follows it and A's own requests do not undo it.
    const token = (await Deno.readTextFile(`${dataDir}/token`)).trim();
    await sh(lan.inSrv([
      "curl",
      "-sf",
      "-X",
      "PATCH",
      "-H",
      `authorization: Bearer ${token}`,
      "-H",
      "content-type: application/json",
      "-d",
      JSON.stringify({ ip: "10.86.1.50" }),
      `http://127.0.0.1:${server.http.port}/api/v1/nodes/node-a/config`,
    ]));
    await until("A's /persist exported to the fixed address", () => exportOf(a) === "10.86.1.50");
    assert.match(await script(ca, a), /ip=10\.86\.1\.50:10\.86\.1\.1:/);
    await script(cb, b); // another render
    await until("B still exported to B", () => exportOf(b) === cb.ip);
    assert.equal(exportOf(a), "10.86.1.50");

    // The fixed address is pinned in the server's ARP table to A's MAC. A is off; B takes it,
    // keeping its own MAC: the server answers that address at A's MAC only, so B gets no answer
    // at all (no script, no report, no NFS), and a forged ARP reply cannot move the entry.
    const pin = () => sh(lan.inSrv(["ip", "neigh", "show", "10.86.1.50", "dev", "br0"]));
    for (let i = 0; i < 50 && !/PERMANENT/.test(await pin()); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(await pin(), new RegExp(`lladdr ${a} PERMANENT proto 110`));
    await sh(["ip", "-n", ca.ns, "link", "set", "eth0", "down"]);
    await sh(["ip", "-n", cb.ns, "addr", "add", "10.86.1.50/24", "dev", "eth0"]);
    // (B forgets the server's MAC: its connection starts with an ARP request from A's address,
    // which would move an entry that is not permanent.)
    await sh(["ip", "-n", cb.ns, "neigh", "flush", "dev", "eth0"]);
    const cut = await new Deno.Command("ip", {
      args: ["netns", "exec", cb.ns, ..."curl -sf -m 3 --interface 10.86.1.50".split(" "), url],
      stdout: "null",
      stderr: "null",
    }).output();
    assert.equal(cut.code, 28, "B's connection from A's pinned address times out");
    assert.match(await pin(), new RegExp(`lladdr ${a} PERMANENT`), "the pin stays");
    assert.equal(exportOf(a), "10.86.1.50", "A's export stays where the admin put it");

    await server.stop();
    server = undefined;
    assert.doesNotMatch(await pin(), /PERMANENT/, "the pin goes with the server");
    const db = await openContext({ ...defaultConfig(), dataDir });
    try {
      const moves = listEvents(db.db, { mac: a }).filter((e) => e.kind === "node.address");
      assert.deepEqual(moves.map((e) => [e.detail.ip, e.detail.evidence]), [
        ["10.86.1.11", "neighbour"],
        ["10.86.1.13", "neighbour"],
      ]);
      const stage = (token: string) =>
        (db.db.prepare("SELECT stage FROM boots WHERE token = ?").get(token) as {
          stage: string | null;
        }).stage;
      assert.equal(stage(own), "handover");
      assert.equal(stage(moved), "handover");
      const refused = listEvents(db.db, { mac: a }).filter((e) =>
        e.kind === "http.report.rejected"
      );
      assert.deepEqual(refused.map((e) => e.detail.reason), [
        `request from 10.86.1.12: that address is ${b}'s on br0, not this node's (${a})`,
        `request from 10.86.1.13: that address is ${b}'s on br0, not this node's (${a})`,
      ]);
    } finally {
      db.db.close();
    }
  } finally {
    await server?.stop();
    await lan.close();
    await Deno.remove(dataDir, { recursive: true });
  }
});
