// Node state: the state machine and the watchdog with a fake clock and a fake probe (no traffic),
// the watchdog's reboots through a real `command` power driver (a script standing in for a smart
// plug), and one run against a real TCP listener on loopback standing in for the node's sshd,
// with the handover report through the real HTTP boot route.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Hono } from "hono";
import { openBoot, recordStage } from "../src/boots.ts";
import { contextBooter } from "../src/boot/booter.ts";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { listEvents } from "../src/events.ts";
import { setLogSink } from "../src/log.ts";
import { NodeMonitor, nodeReported } from "../src/nodestate.ts";
import { powerCommandDir } from "../src/power/command.ts";
import { nodePower } from "../src/power/power.ts";
import { closeContext, openContext } from "../src/server.ts";
import { bootRoutes } from "../netboot/http.ts";
import { addImage } from "./support/images.ts";
import { freeTcpPort, waitFor, withPowerServer } from "./support/power.ts";

const mac = "02:00:00:00:5e:01";

async function withCtx(fn: (ctx: Context) => Promise<void>): Promise<void> {
  setLogSink(() => {});
  const dir = await Deno.makeTempDir({ prefix: "nr-state-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  try {
    await fn(ctx);
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

/** A fake clock starting now (reports are stamped with the real one). */
function clock() {
  let t = Date.now();
  return { now: () => t, advance: (ms: number) => t += ms };
}

/** One monitor pass, and the hard reboots it started (they run beside the passes). */
async function pass(monitor: NodeMonitor): Promise<void> {
  await monitor.tick();
  await monitor.settled();
}

const transitions = (ctx: Context) =>
  listEvents(ctx.db, { mac }).filter((e) => e.kind === "node.state").map((e) =>
    `${e.detail.from}→${e.detail.to}`
  );

/** The node's init reached `stage` in its current boot (as the report route records it). */
function report(ctx: Context, token: string, stage: string): void {
  recordStage(ctx.db, token, stage);
  nodeReported(ctx, mac, stage);
}

Deno.test("state: off → booting → booted after handover when the port answers → down → booted", () =>
  withCtx(async (ctx) => {
    ctx.nodes.add(mac, { name: "n1" });
    ctx.nodes.configure("n1", { ip: "10.9.0.5" });
    assert.equal(ctx.nodes.get("n1").state, "off");
    const c = clock();
    let open = false;
    const probed: string[] = [];
    const monitor = new NodeMonitor(ctx, {
      now: c.now,
      probe: (ip, port) => (probed.push(`${ip}:${port}`), Promise.resolve(open)),
    });
    ctx.monitor = monitor;

    ctx.nodes.setState(mac, "booting", "boot script fetched", { at: c.now() });
    const token = openBoot(ctx.db, mac, null);
    await pass(monitor);
    assert.deepEqual(probed, [], "no probe before the handover report");
    report(ctx, token, "handover");
    await pass(monitor);
    assert.deepEqual(probed, ["10.9.0.5:22"]);
    assert.equal(ctx.nodes.get("n1").state, "booting", "handover alone is not booted");
    open = true;
    c.advance(2000);
    await pass(monitor);
    const booted = ctx.nodes.get("n1");
    assert.equal(booted.state, "booted");
    assert.equal(booted.stateReason, "port 22 answered");
    assert.equal(booted.stateSince, new Date(c.now()).toISOString());

    // Re-probed every 10 s, not at every pass; down after three misses in a row.
    probed.length = 0;
    c.advance(2000);
    await pass(monitor);
    assert.deepEqual(probed, [], "a booted node is re-probed every 10 s only");
    open = false;
    for (let i = 0; i < 2; i++) {
      c.advance(10_000);
      await pass(monitor);
      assert.equal(ctx.nodes.get("n1").state, "booted", `miss ${i + 1} of 3`);
    }
    c.advance(10_000);
    await pass(monitor);
    assert.equal(ctx.nodes.get("n1").state, "down");
    assert.match(ctx.nodes.get("n1").stateReason!, /no answer to 3 probes/);
    open = true;
    c.advance(10_000);
    await pass(monitor);
    assert.equal(ctx.nodes.get("n1").state, "booted");
    assert.deepEqual(transitions(ctx), [
      "off→booting",
      "booting→booted",
      "booted→down",
      "down→booted",
    ]);
    const ev = listEvents(ctx.db, { mac }).find((e) => e.kind === "node.state");
    assert.equal(ev?.detail.reason, "boot script fetched");
  }));

Deno.test("state: boot.probe-port=none makes the handover report booted at once; fatal reports count as attempts", () =>
  withCtx(async (ctx) => {
    ctx.nodes.add(mac, { name: "n1" });
    ctx.nodes.configure("n1", { "boot.probe-port": "none" });
    ctx.nodes.setState(mac, "booting", "boot script fetched");
    const token = openBoot(ctx.db, mac, null);
    report(ctx, token, "handover");
    const n = ctx.nodes.get("n1");
    assert.equal(n.state, "booted");
    assert.match(n.stateReason!, /probe-port=none/);
    // The switch to the image's init failed after all: not booted, one attempt used.
    report(ctx, token, "fatal");
    assert.equal(ctx.nodes.get("n1").state, "booting");
    assert.equal(ctx.nodes.retriesUsed(mac), 1);
    ctx.nodes.configure("n1", { "boot.retries": "1" });
    report(ctx, token, "fatal");
    assert.equal(ctx.nodes.get("n1").state, "failed");
    assert.match(ctx.nodes.get("n1").stateReason!, /init reported fatal; 1 retries used/);
    await Promise.resolve();
  }));

Deno.test("state settings: probe port, watchdog and retries are checked", () =>
  withCtx(async (ctx) => {
    ctx.nodes.add(mac, { name: "n1" });
    const ok = ctx.nodes.configure("n1", {
      "boot.probe-port": " 2222 ",
      "boot.timeout": "NONE",
      "boot.retries": "0",
    });
    assert.deepEqual(ok.settings, {
      "boot.probe-port": "2222",
      "boot.retries": "0",
      "boot.timeout": "none",
    });
    for (
      const [k, v, re] of [
        ["boot.probe-port", "0", /TCP port 1–65535 or none/],
        ["boot.probe-port", "ssh", /TCP port/],
        ["boot.timeout", "5", /seconds 10–86400 or none/],
        ["boot.retries", "-1", /whole number 0–20/],
      ] as const
    ) {
      assert.throws(() => ctx.nodes.configure("n1", { [k]: v }), re);
    }
    await Promise.resolve();
  }));

const plug = `#!/bin/sh
d=$(dirname "$0")
[ "$NETROOT_ACTION" = cycle ] && echo "$NETROOT_NAME" >> "$d/cycles"
[ "$NETROOT_ACTION" = status ] && echo on
exit 0
`;

Deno.test("watchdog: reboots a stuck boot through its power driver up to boot.retries, then failed", () =>
  withCtx(async (ctx) => {
    const dir = powerCommandDir(ctx.data);
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(join(dir, "plug.sh"), plug, { mode: 0o755 });
    ctx.nodes.add(mac, { name: "n1" });
    ctx.nodes.configure("n1", {
      ip: "10.9.0.5",
      "power.driver": "command",
      "power.command": "plug.sh",
      "boot.retries": "2",
    });
    const cycles = async () =>
      (await Deno.readTextFile(join(dir, "cycles")).catch(() => "")).split("\n").filter((l) => l)
        .length;
    const c = clock();
    const monitor = new NodeMonitor(ctx, { now: c.now, probe: () => Promise.resolve(false) });
    ctx.nodes.setState(mac, "booting", "boot script fetched", { at: c.now() });
    const token = openBoot(ctx.db, mac, null);
    report(ctx, token, "modules");

    c.advance(179_000);
    await pass(monitor);
    assert.equal(await cycles(), 0, "not before 180 s");
    for (let i = 1; i <= 2; i++) {
      c.advance(180_000);
      await pass(monitor);
      assert.equal(await cycles(), i, `watchdog reboot ${i}`);
      assert.equal(ctx.nodes.get("n1").state, "booting");
    }
    const reboots = listEvents(ctx.db, { mac }).filter((e) => e.kind === "reboot");
    assert.equal(reboots.length, 2);
    assert.equal(reboots[0].detail.mechanism, "command");
    assert.match(
      String(reboots[0].detail.cause),
      /^watchdog: no progress for 180 s \(last stage: modules\), retry 1\/2$/,
    );
    c.advance(180_000);
    await pass(monitor);
    assert.equal(await cycles(), 2, "no reboot past boot.retries");
    const n = ctx.nodes.get("n1");
    assert.equal(n.state, "failed");
    assert.match(n.stateReason!, /gave up after 2 reboots; last stage: modules/);
    c.advance(180_000);
    await pass(monitor);
    assert.equal(await cycles(), 2, "a failed node is left alone");

    // A new boot that reaches booted starts the count over.
    ctx.nodes.setState(mac, "booting", "boot script fetched", { at: c.now() });
    assert.equal(ctx.nodes.retriesUsed(mac), 2);
    ctx.nodes.setState(mac, "booted", "port 22 answered", { at: c.now() });
    assert.equal(ctx.nodes.retriesUsed(mac), 0);
    assert.deepEqual(transitions(ctx), [
      "off→booting",
      "booting→failed",
      "failed→booting",
      "booting→booted",
    ]);
  }));

// A BMC that refuses the password: the watchdog's reboots never happen. The node's state said
// "retry 1/2" and then "gave up after 2 reboots", as if it had been rebooted twice; `node wait`
// and the dashboard showed that, the reason only in the node's log.
Deno.test("watchdog: a reboot that fails says so in the node's state, and in its giving up", () =>
  withCtx(async (ctx) => {
    const dir = powerCommandDir(ctx.data);
    await Deno.mkdir(dir, { recursive: true });
    const refused = `#!/bin/sh\necho "BMC refused the password" >&2\nexit 1\n`;
    await Deno.writeTextFile(join(dir, "refused.sh"), refused, { mode: 0o755 });
    await Deno.writeTextFile(join(dir, "plug.sh"), plug, { mode: 0o755 });
    ctx.nodes.add(mac, { name: "n1" });
    ctx.nodes.configure("n1", {
      "power.driver": "command",
      "power.command": "refused.sh",
      "boot.retries": "2",
    });
    const c = clock();
    const monitor = new NodeMonitor(ctx, { now: c.now, probe: () => Promise.resolve(false) });
    ctx.nodes.setState(mac, "booting", "boot script fetched", { at: c.now() });
    c.advance(180_000);
    const logged: string[] = [];
    setLogSink((line) => logged.push(line));
    try {
      await pass(monitor);
    } finally {
      setLogSink((line) => console.error(line));
    }
    // and in the server's log (the journal), not only in the node's
    assert.ok(
      logged.some((l) => /WARN reboot reboot failed .*node=n1 .*BMC refused the password/.test(l)),
      logged.join("\n"),
    );
    let n = ctx.nodes.get("n1");
    assert.equal(n.state, "booting");
    assert.match(
      n.stateReason!,
      /^watchdog: no progress for 180 s .*retry 1\/2; command reboot failed: refused\.sh cycle failed \(exit 1\): BMC refused the password$/,
    );
    // A reboot that works clears it: the next one's reason is the watchdog's alone.
    ctx.nodes.configure("n1", { "power.command": "plug.sh" });
    c.advance(180_000);
    await pass(monitor);
    assert.match(ctx.nodes.get("n1").stateReason!, /retry 2\/2$/);
    c.advance(180_000);
    await pass(monitor);
    assert.match(ctx.nodes.get("n1").stateReason!, /^watchdog: gave up after 2 reboots; last/);

    // Failing to the end: the giving up names the failure.
    ctx.nodes.configure("n1", { "power.command": "refused.sh" });
    ctx.nodes.setState(mac, "booted", "port 22 answered", { at: c.now() }); // the count restarts
    ctx.nodes.setState(mac, "booting", "boot script fetched", { at: c.now() });
    for (let i = 0; i < 3; i++) {
      c.advance(180_000);
      await pass(monitor);
    }
    n = ctx.nodes.get("n1");
    assert.equal(n.state, "failed");
    assert.match(
      n.stateReason!,
      /^watchdog: gave up after 2 reboots \(the last failed: command reboot failed: .*BMC refused the password\); last stage: /,
    );

    // node.down.action=reboot: the down node's reason says its reboot failed too.
    ctx.nodes.configure("n1", { ip: "10.9.0.5", "node.down.action": "reboot" });
    ctx.nodes.setState(mac, "booted", "port 22 answered", { at: c.now() });
    for (let i = 0; i < 3; i++) {
      c.advance(10_000);
      await pass(monitor);
    }
    n = ctx.nodes.get("n1");
    assert.equal(n.state, "down");
    assert.match(
      n.stateReason!,
      /^port 22: no answer to 3 probes; command reboot failed: .*BMC refused the password$/,
    );
  }));

// "power on" clicked for a node that runs: the device does nothing, yet the node was marked
// `booting` as if a boot began, and one whose image has no sshd (no probe answer) was power-cycled
// by the watchdog 180 s later, its running system cut.
Deno.test("power on of a node that is already on is no new boot: the watchdog leaves it alone", () =>
  withCtx(async (ctx) => {
    const dir = powerCommandDir(ctx.data);
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(join(dir, "plug.sh"), plug, { mode: 0o755 }); // status: on
    ctx.nodes.add(mac, { name: "n1" });
    ctx.nodes.configure("n1", { "power.driver": "command", "power.command": "plug.sh" });
    const c = clock();
    const monitor = new NodeMonitor(ctx, { now: c.now, probe: () => Promise.resolve(false) });
    const reason = "handover reported; no answer on port 22 within the watchdog (180 s)";
    ctx.nodes.setState(mac, "booted", reason, { at: c.now() });
    const r = await nodePower(ctx, "n1", "on");
    assert.equal(r.state, "on");
    assert.equal(ctx.nodes.get("n1").state, "booted");
    c.advance(181_000);
    await pass(monitor);
    const cycles = await Deno.readTextFile(join(dir, "cycles")).catch(() => "");
    assert.equal(cycles, "", "the running node was power-cycled");
    assert.equal(ctx.nodes.get("n1").stateReason, reason);
  }));

Deno.test("watchdog: a power device that hangs holds up no other node's watchdog", () =>
  withCtx(async (ctx) => {
    const dir = powerCommandDir(ctx.data);
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(join(dir, "plug.sh"), plug, { mode: 0o755 });
    // A device that answers only once released (a hung BMC or PDU, up to its power.timeout).
    const hung = `#!/bin/sh\nd=$(dirname "$0")\nwhile [ ! -e "$d/release" ]; do sleep 0.1; done\n`;
    await Deno.writeTextFile(join(dir, "hung.sh"), hung, { mode: 0o755 });
    const other = "02:00:00:00:5e:02";
    ctx.nodes.add(mac, { name: "stuck" });
    ctx.nodes.add(other, { name: "n2" });
    const command = (script: string) => ({ "power.driver": "command", "power.command": script });
    ctx.nodes.configure("stuck", { ...command("hung.sh"), "power.timeout": "60" });
    ctx.nodes.configure("n2", command("plug.sh"));
    const cycles = async () =>
      (await Deno.readTextFile(join(dir, "cycles")).catch(() => "")).split("\n").filter((l) => l);
    const c = clock();
    const monitor = new NodeMonitor(ctx, { now: c.now, probe: () => Promise.resolve(false) });
    ctx.nodes.setState(mac, "booting", "boot script fetched", { at: c.now() });
    c.advance(100_000);
    ctx.nodes.setState(other, "booting", "boot script fetched", { at: c.now() });
    try {
      c.advance(100_000); // the stuck node's watchdog fires; its device hangs
      const first = await Promise.race([
        monitor.tick().then(() => "pass ended"),
        new Promise((r) => setTimeout(() => r("pass held by the hung device"), 5000)),
      ]);
      assert.equal(first, "pass ended");
      c.advance(100_000); // n2's watchdog fires while the device still hangs
      await monitor.tick();
      for (let i = 0; i < 100 && !(await cycles()).length; i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.deepEqual(await cycles(), ["n2"], "n2 rebooted while the other device hangs");
      assert.ok(!listEvents(ctx.db, { mac }).some((e) => e.kind.startsWith("reboot")));
    } finally {
      await Deno.writeTextFile(join(dir, "release"), "");
      await monitor.settled();
    }
    assert.equal(listEvents(ctx.db, { mac }).filter((e) => e.kind === "reboot").length, 1);
  }));

Deno.test("watchdog: a node netroot powered on that never fetches its script (firmware gave up) is power-cycled", () =>
  withCtx(async (ctx) => {
    const dir = powerCommandDir(ctx.data);
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(join(dir, "plug.sh"), plug, { mode: 0o755 });
    ctx.nodes.add(mac, { name: "n1" });
    ctx.nodes.configure("n1", { "power.driver": "command", "power.command": "plug.sh" });
    const cycles = async () =>
      (await Deno.readTextFile(join(dir, "cycles")).catch(() => "")).split("\n").filter((l) => l)
        .length;
    const c = clock();
    const monitor = new NodeMonitor(ctx, { now: c.now, probe: () => Promise.resolve(false) });
    await nodePower(ctx, "n1", "on");
    let n = ctx.nodes.get("n1");
    assert.equal(n.state, "booting", "powered on: the boot has begun");
    assert.match(n.stateReason!, /^power on \(command\): no boot script fetched yet$/);
    c.advance(179_000);
    await pass(monitor);
    assert.equal(await cycles(), 0, "not before 180 s");
    c.advance(2_000);
    await pass(monitor);
    assert.equal(await cycles(), 1, "no script within the watchdog: power-cycled");
    const reboot = listEvents(ctx.db, { mac }).find((e) => e.kind === "reboot");
    assert.match(
      String(reboot?.detail.cause),
      /^watchdog: no progress for 180 s \(last stage: no boot script fetched \(the firmware's network boot\)\), retry 1\/3$/,
    );
    n = ctx.nodes.get("n1");
    assert.equal(n.state, "booting");
    assert.match(n.stateReason!, /^watchdog: /, "the cycle keeps the watchdog's cause");
    // The retry fetches its script: an ordinary boot from there, with the script's reason.
    c.advance(30_000);
    ctx.nodes.setState(mac, "booting", "boot script fetched", { at: c.now() });
    c.advance(179_000);
    await pass(monitor);
    assert.equal(await cycles(), 1, "the script fetch restarted the clock");
    // A powered-off node is not watched.
    await nodePower(ctx, "n1", "off");
    c.advance(400_000);
    await pass(monitor);
    assert.equal(await cycles(), 1);
    assert.equal(ctx.nodes.get("n1").state, "off");
  }));

Deno.test("watchdog: progress reports hold it off; a handover without a probe answer is booted, not rebooted", () =>
  withCtx(async (ctx) => {
    ctx.nodes.add(mac, { name: "n1" });
    ctx.nodes.configure("n1", { ip: "10.9.0.5", "boot.timeout": "60" });
    const rebooted: string[] = [];
    ctx.rebooter.register({
      name: "test",
      handles: () => true,
      reboot: (n) => (rebooted.push(n.mac), Promise.resolve()),
    });
    const c = clock();
    const monitor = new NodeMonitor(ctx, { now: c.now, probe: () => Promise.resolve(false) });
    ctx.nodes.setState(mac, "booting", "boot script fetched", { at: c.now() });
    const token = openBoot(ctx.db, mac, null);
    c.advance(50_000);
    // The report is stamped by the real clock: move the fake one back to it, then on.
    report(ctx, token, "handover");
    const reportedAt = Date.now();
    c.advance(reportedAt + 59_000 - c.now());
    await pass(monitor);
    assert.equal(ctx.nodes.get("n1").state, "booting");
    c.advance(2000);
    await pass(monitor);
    assert.deepEqual(rebooted, [], "a node past handover is not rebooted");
    const n = ctx.nodes.get("n1");
    assert.equal(n.state, "booted");
    assert.match(n.stateReason!, /^handover reported; no answer on port 22 within the watchdog/);
    c.advance(100_000);
    await pass(monitor);
    assert.equal(ctx.nodes.get("n1").state, "booted", "not re-probed into down");

    // Without a handover, the watchdog fires.
    ctx.nodes.setState(mac, "booting", "boot script fetched", { at: c.now() });
    c.advance(61_000);
    await pass(monitor);
    assert.deepEqual(rebooted, [mac]);
  }));

Deno.test("watchdog: an image with an sshd that hands over but never answers is a hung boot: retried, then failed", () =>
  withCtx(async (ctx) => {
    const image = addImage(ctx, "stock");
    const etc = join(ctx.data.rootfs(image), "etc/ssh");
    Deno.mkdirSync(etc, { recursive: true });
    Deno.writeTextFileSync(
      join(etc, "ssh_host_ed25519_key.pub"),
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhvc3Qta2V5LWZvci10aGUtd2F0Y2hkb2ctdGVzdA root@img\n",
    );
    ctx.nodes.add(mac, { name: "n1" });
    ctx.nodes.configure("n1", { ip: "10.9.0.5", "boot.timeout": "60", "boot.retries": "1" });
    await ctx.nodes.deploy(["n1"], "stock", { reboot: false });
    const rebooted: string[] = [];
    ctx.rebooter.register({
      name: "test",
      handles: () => true,
      reboot: (n) => (rebooted.push(n.mac), Promise.resolve()),
    });
    const c = clock();
    const monitor = new NodeMonitor(ctx, { now: c.now, probe: () => Promise.resolve(false) });
    const hangAfterHandover = async () => {
      ctx.nodes.setState(mac, "booting", "boot script fetched", { at: c.now() });
      const token = openBoot(ctx.db, mac, null);
      report(ctx, token, "handover");
      // 61 s after the latest sign of life (the report's real stamp, or the retry's fake one).
      c.advance(Math.max(Date.now(), c.now()) + 61_000 - c.now());
      await pass(monitor);
    };
    await hangAfterHandover();
    assert.deepEqual(rebooted, [mac], "the hung userland was rebooted");
    assert.equal(ctx.nodes.get("n1").state, "booting");
    assert.match(
      ctx.nodes.get("n1").stateReason!,
      /last stage: handover, then no answer on port 22\), retry 1\/1/,
    );
    await hangAfterHandover();
    assert.deepEqual(rebooted, [mac], "no reboot beyond boot.retries");
    const n = ctx.nodes.get("n1");
    assert.equal(n.state, "failed");
    assert.match(n.stateReason!, /^watchdog: gave up after 1 reboots; last stage: handover/);
  }));

Deno.test("state: a real listener on loopback: booting → booted when it opens after handover, → down when it closes", () =>
  withCtx(async (ctx) => {
    const port = freeTcpPort();
    ctx.nodes.add(mac, { name: "n1" });
    ctx.nodes.configure("n1", { "boot.probe-port": String(port) });
    ctx.nodes.setIp(mac, "127.0.0.1"); // evidence-recorded address (the ip setting refuses loopback)
    const monitor = new NodeMonitor(ctx, { tickMs: 50, recheckMs: 100, probeTimeoutMs: 500 });
    ctx.monitor = monitor;
    const running = monitor.start();
    try {
      ctx.nodes.setState(mac, "booting", "boot script fetched");
      const token = openBoot(ctx.db, mac, null);
      const app = new Hono().route("/boot", bootRoutes(contextBooter(ctx)));
      const r = await app.request("/boot/report", {
        method: "POST",
        body: JSON.stringify({ token, mac, stage: "handover", ok: true }),
      });
      assert.equal(r.status, 200);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(ctx.nodes.get("n1").state, "booting", "port closed: still booting");
      const sshd = Deno.listen({ hostname: "127.0.0.1", port });
      const accepting = (async () => {
        for await (const conn of sshd) conn.close();
      })();
      await waitFor("booted", () => ctx.nodes.get("n1").state === "booted", 5000);
      assert.equal(ctx.nodes.get("n1").stateReason, `port ${port} answered`);
      sshd.close();
      await accepting.catch(() => {});
      await waitFor("down", () => ctx.nodes.get("n1").state === "down", 5000);
      assert.deepEqual(transitions(ctx), ["off→booting", "booting→booted", "booted→down"]);
    } finally {
      await running.close();
    }
  }));

Deno.test("node wait: returns 0 once every node is booted, 1 naming the laggards; ls and show say the state", () =>
  withPowerServer(async ({ ctx, call, cli }) => {
    const macs = ["02:00:00:00:5e:11", "02:00:00:00:5e:12"];
    ctx.nodes.add(macs[0], { name: "w1" });
    ctx.nodes.add(macs[1], { name: "w2" });
    for (const m of macs) ctx.nodes.setState(m, "booting", "boot script fetched");

    // The server holds the request until the states change.
    const started = Date.now();
    const held = call("GET", "/wait?nodes=w1,w2&timeout=10");
    const waiting = cli("node", "wait", "w1,w2", "--timeout", "20");
    await new Promise((r) => setTimeout(r, 1500));
    ctx.nodes.setState(macs[0], "booted", "port 22 answered");
    ctx.nodes.setState(macs[1], "booted", "port 22 answered");
    const answer = await held;
    assert.equal(answer.status, 200);
    assert.equal(answer.json.reached, true);
    assert.ok(Date.now() - started < 5000, "answered on the change, not at the timeout");
    const done = await waiting;
    assert.equal(done.code, 0, done.err);
    assert.match(done.out, /2 node\(s\) booted/);

    ctx.nodes.setState(macs[1], "down", "port 22: no answer to 3 probes");
    const late = await cli("node", "wait", "w1,w2", "--timeout", "1");
    assert.equal(late.code, 1);
    assert.match(late.out, /not booted: w2 \(down \d+s: port 22: no answer to 3 probes\)/);
    const lateJson = JSON.parse(
      (await cli("node", "wait", "w1,w2", "--timeout", "0", "--json")).out,
    );
    assert.deepEqual(lateJson.laggards, ["w2"]);
    assert.equal(lateJson.nodes[0].state, "booted");

    // A failed node will not get there by itself: no waiting for the timeout.
    ctx.nodes.setState(macs[1], "failed", "watchdog: gave up after 3 reboots; last stage: modules");
    const t = Date.now();
    const failed = await cli("node", "wait", "w2", "--timeout", "30");
    assert.equal(failed.code, 1);
    assert.ok(Date.now() - t < 15_000);
    assert.match(failed.out, /w2 \(failed/);
    assert.equal((await call("GET", "/wait?nodes=w1,nope")).status, 404);
    assert.equal((await call("GET", "/wait?nodes=w1&state=up")).status, 400);

    const ls = await cli("node", "ls");
    assert.match(ls.out, /w1 .* booted \d+s/);
    const show = await cli("node", "show", "w2");
    assert.match(show.out, /state: failed \d+s \(watchdog: gave up/);
    const api = (await call("GET", "/nodes/w1")).json;
    assert.equal(api.state, "booted");
    assert.ok(typeof api.stateSince === "string");
  }));

Deno.test("node reboot: several nodes at once, the cause in each reboot event, 1 when one did not", () =>
  withPowerServer(async ({ ctx, dir, cli }) => {
    const power = join(dir, "power");
    await Deno.mkdir(power, { recursive: true });
    await Deno.writeTextFile(join(power, "plug.sh"), plug, { mode: 0o755 });
    const macs = ["02:00:00:00:5e:21", "02:00:00:00:5e:22", "02:00:00:00:5e:23"];
    macs.forEach((m, i) => {
      ctx.nodes.add(m, { name: `r${i + 1}` });
      ctx.nodes.configure(m, { "power.driver": "command", "power.command": "plug.sh" });
    });
    const r = await cli("node", "reboot", "r1,r2", "r3", "--hard", "--cause", "rack maintenance");
    assert.equal(r.code, 0, r.err);
    assert.match(
      r.out,
      /r1: rebooted by command\nr2: rebooted by command\nr3: rebooted by command/,
    );
    const cycled = (await Deno.readTextFile(join(power, "cycles"))).trim().split("\n").sort();
    assert.deepEqual(cycled, ["r1", "r2", "r3"]);
    for (const m of macs) {
      const e = listEvents(ctx.db, { mac: m }).find((x) => x.kind === "reboot");
      assert.equal(e?.detail.cause, "rack maintenance");
    }
    const one = await cli("node", "reboot", "r1", "--json");
    assert.equal(JSON.parse(one.out).ok, true, "one node: one result object");
    const bad = await cli("node", "reboot", "r1,nope");
    assert.equal(bad.code, 1);
    assert.match(bad.out, /nope: node nope not found|nope: .*not found/);
  }));

// 40 PCs, one of them behind a dead BMC (each of its commands waits out power.timeout): the other
// nodes' reboots go on. In batches of 16, the dead one held nodes 17–32 until it timed out.
Deno.test("node reboot: one hung power device holds up no other node's reboot", () =>
  withPowerServer(async ({ ctx, dir, url }) => {
    const power = join(dir, "power");
    await Deno.mkdir(power, { recursive: true });
    await Deno.writeTextFile(join(power, "plug.sh"), plug, { mode: 0o755 });
    const hung = `#!/bin/sh\nd=$(dirname "$0")\nwhile [ ! -e "$d/release" ]; do sleep 0.1; done\n`;
    await Deno.writeTextFile(join(power, "hung.sh"), hung, { mode: 0o755 });
    const names = Array.from({ length: 40 }, (_, i) => `pc${String(i + 1).padStart(2, "0")}`);
    names.forEach((name, i) => {
      const m = `02:00:00:00:5f:${(i + 1).toString(16).padStart(2, "0")}`;
      ctx.nodes.add(m, { name });
      ctx.nodes.configure(m, {
        "power.driver": "command",
        "power.command": i === 0 ? "hung.sh" : "plug.sh",
        "power.timeout": "60",
      });
    });
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", join(import.meta.dirname!, "../main.ts"), "node", "reboot", "--hard"]
        .concat(names.join(",")),
      env: { NETROOT_SERVER: url, NETROOT_DATA: dir, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const cycled = () => {
      try {
        return Deno.readTextFileSync(join(power, "cycles")).trim().split("\n").length;
      } catch {
        return 0;
      }
    };
    try {
      await waitFor("the 39 other nodes' power cycles", () => cycled() === 39, 20_000);
    } finally {
      await Deno.writeTextFile(join(power, "release"), "");
    }
    const out = await child.output();
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.equal(text.trim().split("\n").length, 40);
    assert.match(text, /^pc01: rebooted by command$/m);
    assert.match(text, /^pc40: rebooted by command$/m);
  }));

// The README's sequence `node boot N IMG; node wait N`: a clean (ssh) reboot leaves the node
// `booted` until it goes down, and the wait answered at once — the old system still up (measured
// on a qemu node: `node run` right after it still saw the old image's files).
Deno.test("node wait: a clean reboot given up with the node still booted (no hard mechanism) is no reboot: not there until it reboots (by hand)", () =>
  withPowerServer(async ({ ctx, call, cli }) => {
    const mac = "02:00:00:00:5e:22";
    addImage(ctx, "img");
    ctx.nodes.add(mac, { name: "d2" });
    ctx.nodes.configure("d2", { ip: "10.9.0.22" });
    ctx.nodes.setState(mac, "booted", "port 22 answered");
    ctx.rebooter.soft = {
      name: "ssh",
      request: () => ({
        sent: Promise.resolve({ delivered: true, detail: "reboot accepted" }),
        timeoutMs: 200, // never down: given up at the first poll, no power control to escalate to
        isDown: () => Promise.resolve(false),
      }),
    };
    const rebooted = await call("POST", "/nodes/d2/reboot", {});
    assert.equal(rebooted.status, 200, JSON.stringify(rebooted.json));
    await ctx.rebooter.settled();
    // Given up, the node still runs what it ran: the wait answered `reached` (the old system up).
    const r = await cli("node", "wait", "d2", "--timeout", "1");
    assert.equal(r.code, 1, r.out);
    assert.match(
      r.out,
      /d2 \(booted \d+s: no reboot mechanism for this node: power-cycle it by hand/,
    );
    // Power-cycled by hand: down, then booting, then booted again: there now.
    const held = call("GET", "/wait?nodes=d2&timeout=20");
    ctx.nodes.setState(mac, "down", "no answer");
    ctx.nodes.setState(mac, "booting", "boot script fetched");
    await new Promise((res) => setTimeout(res, 5)); // a later state start than the give-up
    ctx.nodes.setState(mac, "booted", "port 22 answered");
    const answer = await held;
    assert.equal(answer.json.reached, true, JSON.stringify(answer.json));
  }));

// `node boot N IMG && node wait N`: the node's BMC refuses, so the node is not rebooted and runs
// its old image, `booted`. The deploy exited 0 (the failure only in its table), and the wait
// then answered at once: the script went on with the old system.
Deno.test("node boot: exits 1 when a node's reboot failed", () =>
  withPowerServer(async ({ ctx, dir, cli }) => {
    const power = join(dir, "power");
    await Deno.mkdir(power, { recursive: true });
    const refused = `#!/bin/sh\necho "BMC refused the password" >&2\nexit 1\n`;
    await Deno.writeTextFile(join(power, "refused.sh"), refused, { mode: 0o755 });
    await Deno.writeTextFile(join(power, "plug.sh"), plug, { mode: 0o755 });
    addImage(ctx, "img");
    for (const [i, script] of ["refused.sh", "plug.sh"].entries()) {
      ctx.nodes.add(`02:00:00:00:5e:3${i}`, { name: `d${i}` });
      ctx.nodes.configure(`d${i}`, { "power.driver": "command", "power.command": script });
    }
    const r = await cli("node", "boot", "d0,d1", "img", "--hard");
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /d0 .* command reboot failed: .*BMC refused the password/);
    assert.match(r.out, /d1 .* rebooted by command/);
    assert.equal(ctx.nodes.get("d0").imageName, "img", "the deploy stands");
    assert.equal((await cli("node", "boot", "d1", "img", "--hard")).code, 0);
  }));

Deno.test("node wait after a deploy: a node asked for a clean reboot is not booted until it went down and came back", () =>
  withPowerServer(async ({ ctx, call, cli }) => {
    const mac = "02:00:00:00:5e:21";
    addImage(ctx, "img");
    ctx.nodes.add(mac, { name: "d1" });
    ctx.nodes.configure("d1", { ip: "10.9.0.21" });
    ctx.nodes.setState(mac, "booted", "port 22 answered");
    let down = false;
    ctx.rebooter.soft = {
      name: "ssh",
      request: () => ({
        sent: Promise.resolve({ delivered: true, detail: "reboot accepted" }),
        timeoutMs: 30_000,
        isDown: () => Promise.resolve(down),
      }),
    };
    const deployed = await call("POST", "/deploy", { nodes: ["d1"], image: "img", reboot: true });
    assert.equal(deployed.status, 200, JSON.stringify(deployed.json));
    assert.equal(ctx.nodes.get("d1").state, "booted", "still up: the reboot is only requested");

    const early = await cli("node", "wait", "d1", "--timeout", "1");
    assert.equal(early.code, 1, `answered before the reboot: ${early.out}`);
    assert.match(early.out, /not booted: d1 \(booted \d+s: clean reboot requested, not down yet\)/);

    // The node goes down, boots, answers: the wait held meanwhile answers then.
    const held = call("GET", "/wait?nodes=d1&timeout=20");
    down = true;
    await waitFor("down after the clean reboot", () => ctx.nodes.get("d1").state === "booting");
    ctx.nodes.setState(mac, "booted", "port 22 answered");
    const answer = await held;
    assert.equal(answer.json.reached, true, JSON.stringify(answer.json));
    assert.equal((await cli("node", "wait", "d1", "--timeout", "1")).code, 0);
  }));
