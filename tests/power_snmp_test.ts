// The snmp-poe driver against a real SNMP agent: net-snmp's snmpd on 127.0.0.1 with a `pass`
// handler standing in for a PoE switch port — pethPsePortAdminEnable.1.4 set to true(1) starts a
// real qemu process (the node), false(2) stops it. SNMP v2c and v3 (authPriv); wrong community
// or key and a missing port fail with a clear line and leave the node as it was. Needs snmpd,
// snmp and qemu-system-x86 (tools/apt-packages.txt).
import assert from "node:assert/strict";
import { join } from "node:path";
import { pethPsePortAdminEnable } from "../src/power/snmp.ts";
import { startProcess } from "../src/supervisor.ts";
import {
  freeUdpPort,
  killPidFile,
  livePid,
  nodeQemu,
  pidAlive,
  type PowerServer,
  waitFor,
  withPowerServer,
} from "./support/power.ts";

const mac = "02:00:00:00:cc:01";
const community = "pub#lic!rw"; // a '#' must survive the private snmp.conf

/** The switch port: get/set of pethPsePortAdminEnable.1.4 (snmpd's pass protocol). */
const handler = (qemuPid: string) =>
  `#!/bin/sh
oid=.${pethPsePortAdminEnable}.1.4
pid=$(cat ${qemuPid} 2>/dev/null)
powered() { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
case "$1" in
-g) [ "$2" = "$oid" ] || exit 0
    echo "$oid"; echo integer; if powered; then echo 1; else echo 2; fi ;;
-s) [ "$2" = "$oid" ] || { echo not-writable; exit 0; }
    [ "$3" = integer ] || { echo wrong-type; exit 0; }
    case "$4" in
    1) powered || ${nodeQemu(qemuPid)} -daemonize </dev/null >/dev/null 2>&1 ;;
    2) if powered; then kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; fi ;;
    *) echo wrong-value ;;
    esac ;;
esac
`;

async function startSwitch(dir: string, port: number, qemuPid: string) {
  const script = join(dir, "poe-port.sh");
  await Deno.writeTextFile(script, handler(qemuPid), { mode: 0o755 });
  const conf = join(dir, "snmpd.conf");
  await Deno.writeTextFile(
    conf,
    `agentAddress udp:127.0.0.1:${port}
rwcommunity ${community} 127.0.0.1
createUser poeadmin SHA "auth-key-1" AES "priv-key-1"
rwuser poeadmin priv
pass .${pethPsePortAdminEnable} ${script}
`,
  );
  return startProcess({
    // -C: this config only; -m "": no MIB files; state (engine ids, users) in the temp dir.
    argv: [
      "env",
      `SNMP_PERSISTENT_DIR=${dir}`,
      "snmpd",
      ...["-f", "-C", "-c", conf, "-m", "", "-Lf", join(dir, "snmpd.log")],
    ],
    stopGraceMs: 2000,
  });
}

async function power(s: PowerServer, action: string) {
  return await s.call("POST", "/nodes/sw1-node/power", { action });
}

Deno.test("snmp-poe driver: snmpd PoE port powers a qemu node (v2c, v3); bad credentials change nothing", () =>
  withPowerServer(async (s) => {
    const { dir } = s;
    const port = freeUdpPort();
    const qemuPid = join(dir, "node-qemu.pid");
    const agent = await startSwitch(dir, port, qemuPid);
    try {
      await s.call("POST", "/nodes", { mac, name: "sw1-node" });
      const cfg = await s.call("PATCH", "/nodes/sw1-node/config", {
        "power.driver": "snmp-poe",
        "power.host": `127.0.0.1:${port}`,
        "power.poe.port": "4",
        "power.community": community,
      });
      assert.equal(cfg.status, 200, JSON.stringify(cfg.json));
      await agent.waitReady(async () => (await power(s, "status")).status === 200, 10_000, 200);
      assert.equal((await power(s, "status")).json.state, "off");

      // v2c on: the port powers the node.
      const on = await power(s, "on");
      assert.equal(on.status, 200, JSON.stringify(on.json));
      const first = livePid(qemuPid);
      assert.ok(first, "the node's qemu runs");
      assert.match(Deno.readTextFileSync(`/proc/${first}/cmdline`), /netroot-power-test/);
      assert.equal((await power(s, "status")).json.state, "on");

      // Wrong community: v2c agents stay silent, so it reads as a timeout; the node stays on.
      await s.call("PATCH", "/nodes/sw1-node/config", { "power.community": "bad-comm-1" });
      const wrong = await power(s, "off");
      assert.equal(wrong.status, 502);
      assert.match(
        String(wrong.json.error),
        /snmpset of .*\.1\.4 on 127\.0\.0\.1:\d+ failed: Timeout: No Response .*wrong community/,
      );
      assert.equal(livePid(qemuPid), first);
      await s.call("PATCH", "/nodes/sw1-node/config", { "power.community": community });

      // A port the switch does not have: said so, nothing changes.
      await s.call("PATCH", "/nodes/sw1-node/config", { "power.poe.port": "1.9" });
      const noPort = await power(s, "status");
      assert.equal(noPort.status, 502);
      assert.match(String(noPort.json.error), /pethPsePortAdminEnable\.1\.9 \(no such PoE port/);
      const noSet = await power(s, "off");
      assert.equal(noSet.status, 502);
      assert.match(String(noSet.json.error), /failed: notWritable/);
      assert.equal(livePid(qemuPid), first);
      await s.call("PATCH", "/nodes/sw1-node/config", { "power.poe.port": "1.4" });

      // `node reboot --hard` (the user's command) = off, 2 s, on: a new qemu; the reboot names
      // snmp-poe.
      const t0 = Date.now();
      const hard = await s.cli("node", "reboot", "sw1-node", "--hard", "--cause", "test", "--json");
      assert.equal(hard.code, 0, hard.err);
      const reboot = JSON.parse(hard.out);
      assert.equal(reboot.mechanism, "snmp-poe");
      assert.equal(reboot.ok, true, hard.out);
      assert.ok(Date.now() - t0 >= 2000, "the port stayed off for 2 s");
      const second = livePid(qemuPid);
      assert.ok(second && second !== first && !pidAlive(first!), "a new qemu after the cycle");

      // SNMP v3 (authPriv): a wrong key is refused, the right one powers off.
      await s.call("PATCH", "/nodes/sw1-node/config", {
        "power.community": null,
        "power.user": "poeadmin",
        "power.auth.protocol": "sha",
        "power.auth.key": "wrong-key-1",
        "power.priv.protocol": "aes",
        "power.priv.key": "priv-key-1",
      });
      const badKey = await power(s, "off");
      assert.equal(badKey.status, 502);
      assert.match(String(badKey.json.error), /Authentication failure/);
      assert.ok(!String(badKey.json.error).includes("wrong-key-1"));
      assert.equal(livePid(qemuPid), second);
      await s.call("PATCH", "/nodes/sw1-node/config", { "power.auth.key": "auth-key-1" });
      assert.equal((await power(s, "status")).json.state, "on");
      const off = await s.cli("node", "power", "sw1-node", "off");
      assert.equal(off.code, 0, off.err);
      assert.equal(off.out.trim(), "sw1-node: powered off (snmp-poe)");
      await waitFor("the node's qemu to end", () => livePid(qemuPid) === undefined);
      assert.equal((await power(s, "status")).json.state, "off");
      for (const r of [wrong, noPort, noSet, badKey]) console.log(r.json.error);
    } finally {
      await agent.stop();
      await killPidFile(qemuPid);
    }
  }));
