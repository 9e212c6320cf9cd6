// The snmp-poe driver against a real net-snmp snmpd whose `pass` handler is a switch with quirks
// an admin meets (no qemu: the port's state is a file). A community that begins with a quote, a
// switch answering for another port than the one asked, a cycle whose "on" is refused after its
// "off" went through: each said as it is, and the node's state says what its power is.
// And 60 nodes on one switch power-cycled at once. Needs snmpd and snmp (tools/apt-packages.txt).
import assert from "node:assert/strict";
import { join } from "node:path";
import { listEvents } from "../src/events.ts";
import { nodePower } from "../src/power/power.ts";
import { pethPsePortAdminEnable } from "../src/power/snmp.ts";
import { startProcess } from "../src/supervisor.ts";
import { freeUdpPort, type PowerServer, withPowerServer } from "./support/power.ts";

const mac = "02:00:00:00:cc:11";
/** A read-write community an admin may well choose; net-snmp's config reads a leading `"` as
 *  a quote (snmpd's own config below gives it with escapes). */
const community = `"lab"rw\\x`;
/** A community net-snmp reads as is. */
const plain = "plain-rw";

/** Port 1.4 keeps its admin state in `state`; `refuse-on` makes a SET to 1 fail (notWritable).
 *  A GET of port 1.6 is answered for port 1.7 (snmpd keeps a pass handler's answers a while, so
 *  the quirk is a port of its own, not a switch). */
const handler = (dir: string) =>
  `#!/bin/sh
d=${dir}
oid=.${pethPsePortAdminEnable}.1.4
case "$1" in
-g) if [ "$2" = .${pethPsePortAdminEnable}.1.6 ]; then
      echo .${pethPsePortAdminEnable}.1.7; echo integer; echo 1; exit 0
    fi
    [ "$2" = "$oid" ] || exit 0
    echo "$oid"; echo integer; cat "$d/state" 2>/dev/null || echo 1 ;;
-s) [ "$2" = "$oid" ] || { echo not-writable; exit 0; }
    [ "$4" = 1 ] && [ -e "$d/refuse-on" ] && { echo not-writable; exit 0; }
    echo "$4" > "$d/state" ;;
esac
`;

async function startSwitch(dir: string, port: number) {
  const script = join(dir, "poe-port.sh");
  await Deno.writeTextFile(script, handler(dir), { mode: 0o755 });
  const conf = join(dir, "snmpd.conf");
  const state = join(dir, "snmpd-state");
  await Deno.mkdir(state);
  // com2sec reads a quoted word: \" and \\ stand for " and \ (rwcommunity with a source
  // address writes the community into a line of its own, unquoted, and reads it again).
  const quoted = `"${community.replace(/["\\]/g, (c) => `\\${c}`)}"`;
  await Deno.writeTextFile(
    conf,
    `agentAddress udp:127.0.0.1:${port}
com2sec rwsec 127.0.0.1 ${quoted}
com2sec rwsec 127.0.0.1 ${plain}
group rwgroup v2c rwsec
view all included .1
access rwgroup "" any noauth exact all all none
pass .${pethPsePortAdminEnable} ${script}
`,
  );
  return startProcess({
    argv: [
      "env",
      `SNMP_PERSISTENT_DIR=${state}`,
      "snmpd",
      ...["-f", "-C", "-c", conf, "-m", "", "-Lf", join(dir, "snmpd.log")],
    ],
    stopGraceMs: 2000,
  });
}

const power = (s: PowerServer, action: string) => s.call("POST", "/nodes/poe1/power", { action });

/** A server, a switch on loopback and node poe1 on its port 4 with `community`. */
function withSwitch(community: string, fn: (s: PowerServer) => Promise<void>) {
  return withPowerServer(async (s) => {
    const port = freeUdpPort();
    const agent = await startSwitch(s.dir, port);
    try {
      await s.call("POST", "/nodes", { mac, name: "poe1" });
      const cfg = await s.call("PATCH", "/nodes/poe1/config", {
        "power.driver": "snmp-poe",
        "power.host": `127.0.0.1:${port}`,
        "power.poe.port": "4",
        "power.community": community,
      });
      assert.equal(cfg.status, 200, JSON.stringify(cfg.json));
      await agent.waitReady(async () => (await power(s, "status")).status === 200, 10_000, 200);
      await fn(s);
    } finally {
      await agent.stop();
    }
  });
}

// Before, `"lab"rw\x` went out as `lab`: every action timed out, "wrong community".
Deno.test("snmp-poe: a community beginning with a quote reaches the switch as typed", () =>
  withSwitch(community, async (s) => {
    const st = await power(s, "status");
    assert.equal(st.json.state, "on", JSON.stringify(st.json));
  }));

// Before, port 1.7's state was taken for the node's on port 1.6.
Deno.test("snmp-poe: a switch answering for another port than the one asked is not believed", () =>
  withSwitch(plain, async (s) => {
    await s.call("PATCH", "/nodes/poe1/config", { "power.poe.port": "6" });
    const wrong = await power(s, "status");
    assert.equal(wrong.status, 502, JSON.stringify(wrong.json));
    assert.match(
      String(wrong.json.error),
      /answered for \.1\.3\.6\.1\.2\.1\.105\.1\.1\.1\.3\.1\.7, not pethPsePortAdminEnable\.1\.6/,
    );
  }));

// Before, the node stayed `booted` (node wait, dashboard) on a port the cycle had switched off.
Deno.test("snmp-poe: a cycle whose 'on' is refused after its 'off' leaves the node off, and says so", () =>
  withSwitch(plain, async ({ ctx, dir, call }) => {
    ctx.nodes.setState(mac, "booted", "port 22 answered");
    await Deno.writeTextFile(join(dir, "refuse-on"), "");
    const cycle = await call("POST", "/nodes/poe1/power", { action: "cycle" });
    assert.equal(cycle.status, 502, JSON.stringify(cycle.json));
    assert.match(
      String(cycle.json.error),
      /switched the port off, then not on again: .*notWritable.*\(netroot node power poe1 on\)/,
    );
    assert.equal((await Deno.readTextFile(join(dir, "state"))).trim(), "2");
    const n = ctx.nodes.get("poe1");
    assert.equal(n.state, "off");
    assert.match(n.stateReason!, /^power cycle \(snmp-poe\) failed: switched the port off/);
    assert.ok(listEvents(ctx.db, { mac }).some((e) => e.kind === "power.failed"));

    // A failure that leaves the port as it was leaves the state as it was.
    await Deno.remove(join(dir, "refuse-on"));
    assert.equal((await call("POST", "/nodes/poe1/power", { action: "on" })).status, 200);
    ctx.nodes.setState(mac, "booted", "port 22 answered");
    await Deno.writeTextFile(join(dir, "refuse-on"), "");
    await Deno.writeTextFile(join(dir, "state"), "2\n"); // off at the switch, so "on" is sent
    assert.equal((await call("POST", "/nodes/poe1/power", { action: "on" })).status, 502);
    assert.equal(ctx.nodes.get("poe1").state, "booted");
    // A booting node stays booting, its watchdog to try again.
    ctx.nodes.setState(mac, "booting", "boot script fetched");
    assert.equal((await call("POST", "/nodes/poe1/power", { action: "cycle" })).status, 502);
    assert.equal(ctx.nodes.get("poe1").state, "booting");
  }));

// A deploy (or `node reboot --hard`) of 60 nodes on one PoE switch, an agent answering one request
// at a time, 50 ms each (a PDU's or switch's small CPU; snmpd itself forks the handler for each).
// Before: 60 snmpsets at once, the queue past the tools' 2 s timeout, their retries queued more,
// and all 60 cycles failed, every port left off. Now 4 commands at a time per device.
Deno.test("snmp-poe: 60 nodes on one switch power-cycled at once all come back on", () =>
  withPowerServer(async ({ ctx, dir }) => {
    const port = freeUdpPort();
    const script = join(dir, "poe-ports.sh");
    await Deno.mkdir(join(dir, "ports"));
    await Deno.writeTextFile(
      script,
      `#!/bin/sh
sleep 0.05
case "$2" in .${pethPsePortAdminEnable}.1.*) p=${"${2##*.}"} ;; *) exit 0 ;; esac
case "$1" in
-g) echo "$2"; echo integer; cat ${dir}/ports/$p 2>/dev/null || echo 1 ;;
-s) echo "$4" > ${dir}/ports/$p; echo "$4" >> ${dir}/ports/$p.sets ;;
esac
`,
      { mode: 0o755 },
    );
    const state = join(dir, "snmpd-state");
    await Deno.mkdir(state);
    const conf = join(dir, "snmpd.conf");
    await Deno.writeTextFile(
      conf,
      `agentAddress udp:127.0.0.1:${port}
com2sec rwsec 127.0.0.1 ${plain}
group rwgroup v2c rwsec
view all included .1
access rwgroup "" any noauth exact all all none
pass .${pethPsePortAdminEnable} ${script}
`,
    );
    const agent = startProcess({
      argv: ["env", `SNMP_PERSISTENT_DIR=${state}`, "snmpd"]
        .concat(["-f", "-C", "-c", conf, "-m", "", "-Lf", join(dir, "snmpd.log")]),
      stopGraceMs: 2000,
    });
    try {
      const names = Array.from({ length: 60 }, (_, i) => `pc${i + 1}`);
      names.forEach((name, i) => {
        const m = `02:00:00:00:dd:${(i + 1).toString(16).padStart(2, "0")}`;
        ctx.nodes.add(m, { name });
        ctx.nodes.configure(m, {
          "power.driver": "snmp-poe",
          "power.host": `127.0.0.1:${port}`,
          "power.poe.port": String(i + 1),
          "power.community": plain,
        });
      });
      await agent.waitReady(
        async () => (await nodePower(ctx, "pc1", "status").catch(() => null)) !== null,
        10_000,
        200,
      );
      const results = await Promise.all(
        names.map((n) => ctx.nodes.reboot(n, "rack maintenance", { hard: true })),
      );
      const failed = results.filter((r) => !r.ok).map((r) => r.message);
      assert.deepEqual(failed, [], `${failed.length} of 60 failed, e.g. ${failed[0]}`);
      for (let i = 1; i <= 60; i++) {
        assert.equal(
          (await Deno.readTextFile(join(dir, "ports", `${i}.sets`))).trim().split("\n").at(-1),
          "1",
          `port ${i} on again`,
        );
      }
    } finally {
      await agent.stop();
    }
  }));
