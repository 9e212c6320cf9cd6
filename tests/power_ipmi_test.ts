// The ipmi driver against a real BMC: OpenIPMI's ipmi_sim on 127.0.0.1 (IPMI v2 / RMCP+), whose
// chassis power starts and stops a real qemu process (the node), driven through the API and CLI
// by ipmitool. Wrong password, unknown user and an absent BMC fail with a clear line and leave
// the node as it was. Needs ipmitool, openipmi and qemu-system-x86 (tools/apt-packages.txt).
import assert from "node:assert/strict";
import { join } from "node:path";
import { startProcess } from "../src/supervisor.ts";
import {
  freeTcpPort,
  freeUdpPort,
  killPidFile,
  livePid,
  nodeQemu,
  pidAlive,
  type PowerServer,
  waitFor,
  withPowerServer,
} from "./support/power.ts";

const mac = "02:00:00:00:bb:01";

/** ipmi_sim with one admin user; power on runs `startcmd` (the node's qemu, through sh -c exec),
 *  power off ends it (SIGTERM after poweroff_wait, SIGKILL 1 s later). Chassis control needs the
 *  VM serial interface declared (nothing connects to it). */
async function startBmc(dir: string, port: number, qemuPid: string) {
  const conf = join(dir, "lan.conf");
  await Deno.writeTextFile(
    conf,
    `name "bmc1"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 ${port}
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 ${freeTcpPort()} codec VM
  startcmd "${nodeQemu(qemuPid)}"
  startnow false
  poweroff_wait 1
  kill_wait 1
  user 2 true "admin" "bmc-pass-1" admin 10 md5
`,
  );
  const emu = join(dir, "bmc.emu");
  await Deno.writeTextFile(
    emu,
    "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n",
  );
  await Deno.mkdir(join(dir, "state"));
  return startProcess({
    argv: ["ipmi_sim", "-c", conf, "-f", emu, "-s", join(dir, "state"), "-n"],
    stderrFile: join(dir, "ipmi_sim.log"),
    stopGraceMs: 2000,
  });
}

async function power(s: PowerServer, action: string) {
  return await s.call("POST", "/nodes/bm1/power", { action });
}

Deno.test("ipmi driver: ipmi_sim BMC powers a qemu node on, off, cycle; bad credentials change nothing", () =>
  withPowerServer(async (s) => {
    const { ctx, dir } = s;
    const port = freeUdpPort();
    const qemuPid = join(dir, "node-qemu.pid");
    const bmc = await startBmc(dir, port, qemuPid);
    try {
      await s.call("POST", "/nodes", { mac, name: "bm1" });
      const cfg = await s.call("PATCH", "/nodes/bm1/config", {
        "power.driver": "ipmi",
        "power.host": `127.0.0.1:${port}`,
        "power.user": "admin",
        "power.password": "bmc-pass-1",
        "power.cipher": "3", // ipmi_sim does not answer Get Channel Cipher Suites
      });
      assert.equal(cfg.status, 200, JSON.stringify(cfg.json));
      // The BMC is up when it answers.
      await bmc.waitReady(async () => (await power(s, "status")).status === 200, 10_000, 200);
      assert.equal((await power(s, "status")).json.state, "off");
      assert.equal(livePid(qemuPid), undefined);

      // on: the BMC starts the node's qemu.
      const on = await power(s, "on");
      assert.equal(on.status, 200, JSON.stringify(on.json));
      await waitFor("the node's qemu to start", () => livePid(qemuPid) !== undefined);
      const first = livePid(qemuPid)!;
      assert.match(Deno.readTextFileSync(`/proc/${first}/cmdline`), /netroot-power-test/);
      assert.equal((await power(s, "status")).json.state, "on");

      // Wrong password, unknown user, absent BMC: a clear 502, the node untouched.
      await s.call("PATCH", "/nodes/bm1/config", { "power.password": "wrong-pass" });
      const wrong = await power(s, "off");
      assert.equal(wrong.status, 502);
      assert.match(String(wrong.json.error), /refused the password \(power\.password\)/);
      assert.ok(!String(wrong.json.error).includes("wrong-pass"));
      await s.call("PATCH", "/nodes/bm1/config", {
        "power.password": "bmc-pass-1",
        "power.user": "mallory",
      });
      const user = await power(s, "off");
      assert.equal(user.status, 502);
      assert.match(String(user.json.error), /does not know user "mallory"/);
      // A new host gets the password only when the change gives it again (power_test).
      await s.call("PATCH", "/nodes/bm1/config", {
        "power.user": "admin",
        "power.host": `127.0.0.1:${freeUdpPort()}`,
        "power.password": "bmc-pass-1",
      });
      const t0 = Date.now();
      const absent = await power(s, "off");
      const absentMs = Date.now() - t0;
      assert.equal(absent.status, 502);
      assert.match(String(absent.json.error), /no answer from the BMC at 127\.0\.0\.1:\d+/);
      assert.ok(absentMs < 15_000, `absent BMC took ${absentMs} ms`);
      console.log(`absent BMC reported after ${absentMs} ms`);
      for (const r of [wrong, user, absent]) console.log(r.json.error);
      assert.equal(livePid(qemuPid), first, "a failed power off must leave the node running");
      await s.call("PATCH", "/nodes/bm1/config", {
        "power.host": `127.0.0.1:${port}`,
        "power.password": "bmc-pass-1",
      });

      // `node reboot --hard` (the user's command) of a running node: the BMC's power cycle, a
      // new qemu.
      const hard = await s.cli("node", "reboot", "bm1", "--hard", "--cause", "test", "--json");
      assert.equal(hard.code, 0, hard.err);
      assert.deepEqual(JSON.parse(hard.out), {
        mac,
        mechanism: "ipmi",
        ok: true,
        message: "rebooted by ipmi",
      });
      await waitFor(
        "a new qemu after the cycle",
        () => ![undefined, first].includes(livePid(qemuPid)),
      );
      assert.equal(pidAlive(first), false);

      // off through the CLI: qemu ends; a reboot of an off node powers it on.
      const off = await s.cli("node", "power", "bm1", "off");
      assert.equal(off.code, 0, off.err);
      assert.equal(off.out.trim(), "bm1: powered off (ipmi)");
      await waitFor("the node's qemu to end", () => livePid(qemuPid) === undefined);
      assert.equal((await power(s, "status")).json.state, "off");
      await s.call("PATCH", "/nodes/bm1/config", { "power.password": "wrong-pass" });
      const wrongOn = await s.cli("node", "power", "bm1", "on");
      assert.equal(wrongOn.code, 1);
      assert.equal(wrongOn.err.trim().split("\n").length, 1);
      assert.match(wrongOn.err, /refused the password/);
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(livePid(qemuPid), undefined, "a failed power on must leave the node off");
      await s.call("PATCH", "/nodes/bm1/config", { "power.password": "bmc-pass-1" });
      assert.equal((await s.call("POST", "/nodes/bm1/reboot", {})).json.ok, true);
      await waitFor("qemu after rebooting an off node", () => livePid(qemuPid) !== undefined);

      const kinds = ((await s.call("GET", "/nodes/bm1/events")).json as unknown as {
        kind: string;
      }[]).map((e) => e.kind).filter((k) => /^(power|reboot)/.test(k));
      assert.deepEqual(kinds, [
        "power.on",
        "power.failed",
        "power.failed",
        "power.failed",
        "power.cycle",
        "reboot",
        "power.off",
        "power.failed",
        "power.cycle",
        "reboot",
      ]);
      assert.ok(!JSON.stringify(ctx.db.prepare("SELECT * FROM events").all()).includes("bmc-pass"));
    } finally {
      await bmc.stop();
      await killPidFile(qemuPid);
    }
  }));
