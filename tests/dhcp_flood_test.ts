// Full-mode DHCP under forged traffic from a hostile host on the boot LAN (root, namespaces):
// 5,000 DISCOVERs from random MACs do not exhaust the pool or the registry, a real client
// (busybox udhcpc) still gets its lease, a spoofed DECLINE does not take that lease away, and
// the nodes the flood registered are aged out by the server's own timer.
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { makeLink, parseEnv, sh, startServer, udhcpcScript } from "./dhcp_netns.ts";

const forge = new URL("./dhcp_forge.ts", import.meta.url).pathname;

Deno.test("full mode (root): a 5,000-DISCOVER flood and a spoofed DECLINE leave a real client its lease", async () => {
  const link = await makeLink("flood", "10.87.1");
  const dir = await Deno.makeTempDir({ prefix: "nr-flood-" });
  let server;
  try {
    // Default registration limits and offer hold; a pool smaller than the registration burst
    // (20 addresses, 60 flood nodes offered one each); a short TTL so the age-out timer shows.
    server = await startServer(link, {
      dhcp: {
        mode: "full",
        range: { start: "10.87.1.100", end: "10.87.1.119" },
        leaseSeconds: 600,
        registerTtlSeconds: 3,
      },
      ra: false,
    });
    const db = new DatabaseSync(`${server.dataDir}/netroot.db`, { readOnly: true });
    const count = (sql: string, ...args: string[]) =>
      (db.prepare(sql).get(...args) as { n: number }).n;
    try {
      const t0 = performance.now();
      const flood = JSON.parse(
        await sh(
          link.inCli([
            Deno.execPath(),
            "run",
            "-A",
            forge,
            "--device",
            link.cliIf,
            "--discovers",
            "5000",
          ]),
        ),
      );
      assert.equal(flood.sent, 5000);

      // A real client right after the flood: unknown to the server too, so it needs a free
      // registration (the bucket refills at 60 a minute) and a free address.
      const mac = "02:00:00:00:87:01";
      await sh(["ip", "-n", link.cliNs, "link", "set", link.cliIf, "address", mac]);
      const hook = await udhcpcScript(dir);
      const udhcpc = [
        "/bin/busybox",
        "udhcpc",
        ...["-i", link.cliIf, "-n", "-q", "-f", "-t", "6", "-T", "1", "-s", hook],
      ];
      await sh(link.inCli(udhcpc));
      const bound = parseEnv(await Deno.readTextFile(`${dir}/bound.env`));
      const secs = (performance.now() - t0) / 1000;
      assert.match(bound.ip, /^10\.87\.1\.1[01]\d$/);
      assert.equal(bound.serverid, "10.87.1.1");
      console.log(`flood + lease in ${secs.toFixed(1)} s`);

      // Registrations: a burst of 60 (the default rate a minute), then one a second, the real
      // client included; the rest of the flood was ignored, and that was said once.
      const registered = count("SELECT count(*) AS n FROM events WHERE kind = 'node.registered'");
      assert.ok(registered <= 60 + Math.ceil(secs), `${registered} registered in ${secs} s`);
      assert.equal(
        count("SELECT count(*) AS n FROM events WHERE kind = 'dhcp.register-limited'"),
        1,
      );
      // No offer outlives its hold as a reservation: no node but the real client has an address.
      assert.ok(
        count("SELECT count(*) AS n FROM nodes WHERE ip IS NOT NULL AND mac <> ?", mac) === 0,
      );

      // Spoofed DECLINEs of the client's address, from a made-up MAC and from another node's
      // (one an admin added): both ignored.
      const other = "02:00:00:00:87:02";
      const token = (await Deno.readTextFile(`${server.dataDir}/token`)).trim();
      await sh(link.inSrv([
        "curl",
        "-sf",
        ...["-H", `authorization: Bearer ${token}`, "-H", "content-type: application/json"],
        ...[
          "-d",
          JSON.stringify({ mac: other }),
          `http://127.0.0.1:${server.http.port}/api/v1/nodes`,
        ],
      ]));
      for (const from of [[], ["--mac", other]]) {
        await sh(link.inCli([
          Deno.execPath(),
          "run",
          "-A",
          forge,
          ...["--device", link.cliIf, "--decline", bound.ip, "--server", "10.87.1.1", ...from],
        ]));
      }
      // Handled (the known node's DECLINE leaves an event, honoured or not): the lease stands.
      const handled = () =>
        count("SELECT count(*) AS n FROM events WHERE kind LIKE 'dhcp.decline%'") > 0;
      for (let i = 0; i < 50 && !handled(); i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(handled(), "the server saw the DECLINE");
      const lease = db.prepare("SELECT ip, state FROM leases WHERE mac = ?").get(mac);
      assert.deepEqual({ ...lease }, { ip: bound.ip, state: "bound" }, "the lease stands");
      assert.equal(count("SELECT count(*) AS n FROM leases WHERE mac LIKE 'declined:%'"), 0);
      assert.equal(
        count("SELECT count(*) AS n FROM events WHERE kind = 'dhcp.decline-ignored'"),
        1,
      );
      // …and the client gets the same address again.
      await Deno.remove(`${dir}/bound.env`);
      await sh(link.inCli(udhcpc));
      assert.equal(parseEnv(await Deno.readTextFile(`${dir}/bound.env`)).ip, bound.ip);

      // Nodes that never got past DHCP go after the TTL (3 s here), by the server's timer.
      const left = () =>
        count("SELECT count(*) AS n FROM nodes WHERE mac NOT IN (?, ?)", mac, other);
      for (let i = 0; i < 100 && left() > 0; i++) await new Promise((r) => setTimeout(r, 100));
      assert.equal(left(), 0, "flood nodes aged out");
      assert.ok(count("SELECT count(*) AS n FROM events WHERE kind = 'node.aged-out'") >= 59);
    } finally {
      db.close();
    }
    const log = await server.stop();
    server = undefined;
    const received = Number(/INFO dhcp stopped received=(\d+)/.exec(log)?.[1]);
    assert.ok(received >= 5000, `the server received ${received} packets`);
  } finally {
    await server?.stop();
    await link.close();
    await Deno.remove(dir, { recursive: true });
  }
});
