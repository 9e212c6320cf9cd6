// The reboot path's state machine with a fake soft step and a fake clock (no traffic): soft first,
// down in time → done by the soft mechanism; not down within the timeout, or not delivered, or not
// possible → the hard mechanism, with the reason in the event; --hard skips the soft step; the
// caller's answer comes once the request is issued, before any escalation. Also the settings and
// node.down.action through the monitor.
import assert from "node:assert/strict";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { listEvents } from "../src/events.ts";
import { setLogSink } from "../src/log.ts";
import { NodeMonitor } from "../src/nodestate.ts";
import { Rebooter, type RebootTarget, type SoftRequest } from "../src/reboot.ts";
import { closeContext, openContext } from "../src/server.ts";

const mac = "02:00:00:00:5f:01";
const node: RebootTarget = { mac, name: "n1", virtual: false };

async function withCtx(fn: (ctx: Context) => Promise<void>): Promise<void> {
  setLogSink(() => {});
  const dir = await Deno.makeTempDir({ prefix: "nr-reboot-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  try {
    ctx.nodes.add(mac, { name: "n1" });
    await fn(ctx);
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

/** A Rebooter on a fake clock whose sleep advances it; a fake soft step and hard mechanism. */
function rig(ctx: Context, soft: () => SoftRequest | { unavailable: string }) {
  let t = 1_000_000;
  const r = new Rebooter(ctx.db, {
    now: () => t,
    sleep: (ms) => (t += ms, Promise.resolve()),
    pollMs: 1000,
  });
  const hard: string[] = [];
  const requested: string[] = [];
  r.register({
    name: "plug",
    handles: () => true,
    reboot: (n) => (hard.push(n.name), Promise.resolve()),
  });
  r.soft = { name: "ssh", request: (n) => (requested.push(n.name), soft()) };
  return { r, hard, requested, elapsed: () => t - 1_000_000 };
}

const reboots = (ctx: Context) =>
  listEvents(ctx.db, { mac }).filter((e) => e.kind.startsWith("reboot")).map((e) => ({
    kind: e.kind,
    ...e.detail,
  } as Record<string, unknown>));

/** The hard reboots of the server's own Rebooter, through a fake plug registered on it. */
function plugged(ctx: Context): { name: string; cause: string }[] {
  const hard: { name: string; cause: string }[] = [];
  ctx.rebooter.register({
    name: "plug",
    handles: () => true,
    reboot: (n, cause) => (hard.push({ name: n.name, cause }), Promise.resolve()),
  });
  return hard;
}

/** A soft request that is delivered and goes down after `downAfter` checks. */
function delivered(timeoutMs: number, downAfter: number): SoftRequest {
  let checks = 0;
  return {
    sent: Promise.resolve({ delivered: true, detail: "reboot accepted" }),
    timeoutMs,
    isDown: () => Promise.resolve(++checks > downAfter),
  };
}

Deno.test("reboot: soft, down in time: done by ssh, nothing hard", () =>
  withCtx(async (ctx) => {
    const { r, hard, elapsed } = rig(ctx, () => delivered(30_000, 3));
    const res = await r.reboot(node, "deploy");
    assert.deepEqual([res.ok, res.mechanism], [true, "ssh"]);
    assert.match(
      res.message,
      /clean reboot requested \(ssh\); hard reboot if not down within 30 s/,
    );
    await r.settled();
    assert.deepEqual(hard, []);
    assert.equal(elapsed(), 3000);
    assert.deepEqual(reboots(ctx), [
      { kind: "reboot.requested", cause: "deploy", mechanism: "ssh", timeoutS: 30 },
      { kind: "reboot", cause: "deploy", mechanism: "ssh", downMs: 3000 },
    ]);
  }));

Deno.test("reboot: soft, not down within reboot.soft-timeout: escalated to the hard mechanism", () =>
  withCtx(async (ctx) => {
    const { r, hard, elapsed } = rig(ctx, () => delivered(30_000, Infinity));
    const res = await r.reboot(node, "deploy");
    assert.equal(res.mechanism, "ssh");
    assert.deepEqual(hard, [], "the caller's answer comes before any escalation");
    await r.settled();
    assert.deepEqual(hard, ["n1"]);
    assert.equal(elapsed(), 30_000);
    assert.deepEqual(reboots(ctx).pop(), {
      kind: "reboot",
      cause: "deploy",
      mechanism: "plug",
      soft: "ssh: not down within 30 s (reboot accepted)",
    });
  }));

Deno.test("reboot: not delivered (no sshd) → hard at once; not possible → hard, saying why", () =>
  withCtx(async (ctx) => {
    const refused: SoftRequest = {
      sent: Promise.resolve({ delivered: false, detail: "connect to port 22: Connection refused" }),
      timeoutMs: 30_000,
      isDown: () => assert.fail("no waiting for a node that never got the request"),
    };
    const a = rig(ctx, () => refused);
    await a.r.reboot(node, "c1");
    await a.r.settled();
    assert.deepEqual(a.hard, ["n1"]);
    assert.equal(a.elapsed(), 0);
    assert.equal(reboots(ctx).pop()!.soft, "ssh failed: connect to port 22: Connection refused");

    const b = rig(ctx, () => ({ unavailable: "its image has no ssh host keys" }));
    const res = await b.r.reboot(node, "c2");
    assert.deepEqual([res.mechanism, res.ok], ["plug", true]);
    assert.equal(
      res.message,
      "rebooted by plug (clean reboot not tried: its image has no ssh host keys)",
    );
    assert.equal(reboots(ctx).pop()!.soft, "not tried: its image has no ssh host keys");
    // A node that is not booted is rebooted hard as a matter of course: said in the event only.
    const b2 = rig(ctx, () => ({ unavailable: "the node is booting, not booted", expected: true }));
    assert.equal((await b2.r.reboot(node, "c2")).message, "rebooted by plug");
    assert.equal(reboots(ctx).pop()!.soft, "not tried: the node is booting, not booted");

    const c = rig(ctx, () => assert.fail("--hard asks nothing of the node"));
    await c.r.reboot(node, "c3", { hard: true });
    assert.deepEqual(c.hard, ["n1"]);
    assert.deepEqual(reboots(ctx).pop(), { kind: "reboot", cause: "c3", mechanism: "plug" });
  }));

Deno.test("reboot: closing the server stops following: nothing escalates afterwards", () =>
  withCtx(async (ctx) => {
    let release!: () => void;
    const { r, hard } = rig(ctx, () => ({
      sent: new Promise((ok) => release = () => ok({ delivered: true, detail: "late" })),
      timeoutMs: 30_000,
      isDown: () => Promise.resolve(false),
    }));
    await r.reboot(node, "x");
    await r.close();
    release();
    await r.settled();
    assert.deepEqual(hard, []);
  }));

Deno.test("settings: reboot.soft-timeout and node.down.action are checked", () =>
  withCtx((ctx) => {
    ctx.nodes.configure("n1", { "reboot.soft-timeout": "45", "node.down.action": "Reboot" });
    assert.equal(ctx.nodes.get("n1").settings["node.down.action"], "reboot");
    assert.throws(() => ctx.nodes.configure("n1", { "reboot.soft-timeout": "0" }), /1–3600/);
    assert.throws(() => ctx.nodes.configure("n1", { "reboot.soft-timeout": "5m" }), /1–3600/);
    assert.throws(
      () => ctx.nodes.configure("n1", { "node.down.action": "poweroff" }),
      /reboot or none/,
    );
    return Promise.resolve();
  }));

Deno.test("node.down.action=reboot: a booted node that stops answering is rebooted hard", () =>
  withCtx(async (ctx) => {
    const hard = plugged(ctx);
    ctx.rebooter.soft = { name: "ssh", request: () => assert.fail("unreachable: no soft step") };
    ctx.nodes.add("02:00:00:00:5f:02", { name: "n2" });
    for (const n of ["n1", "n2"]) {
      ctx.nodes.configure(n, { ip: n === "n1" ? "10.9.0.1" : "10.9.0.2" });
      ctx.nodes.setState(n === "n1" ? mac : "02:00:00:00:5f:02", "booted", "port 22 answered");
    }
    ctx.nodes.configure("n1", { "node.down.action": "reboot" });
    let t = Date.now();
    const monitor = new NodeMonitor(ctx, {
      now: () => t,
      probe: () => Promise.resolve(false),
    });
    for (let i = 0; i < 3; i++) {
      t += 10_000;
      await monitor.tick();
    }
    assert.equal(ctx.nodes.get("n1").state, "down");
    assert.equal(ctx.nodes.get("n2").state, "down");
    assert.deepEqual(hard, [{
      name: "n1",
      cause: "node.down.action=reboot: port 22: no answer to 3 probes",
    }], "only the node whose setting asks for it");
    const e = listEvents(ctx.db, { mac }).filter((x) => x.kind === "reboot").pop();
    assert.equal(e?.detail.mechanism, "plug");
  }));

Deno.test("reboot: a soft reboot leaves nothing behind once it ends (the server running)", async () => {
  // Each check's sleep, and each request's wait for delivery, used to hang a callback on the
  // server's closing, kept until the server stopped: ~1 KB per node and second of every soft
  // reboot, for the server's whole life.
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      ...["run", "-A", "--no-check", "--v8-flags=--expose-gc"],
      new URL("./reboot_memory_child.ts", import.meta.url).pathname,
    ],
    stdin: "null",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
  const perReboot = Number(/retained per reboot: (-?\d+) bytes/.exec(text)?.[1]);
  console.log(`soft reboot of 20 checks: ${perReboot} bytes retained`);
  assert.ok(perReboot < 200, `each soft reboot (20 checks) kept ${perReboot} bytes`);
});

Deno.test("reboot: a node down after a clean reboot that never boots again is watched: the watchdog reboots it hard", () =>
  withCtx(async (ctx) => {
    const hard = plugged(ctx);
    ctx.nodes.configure("n1", { ip: "10.9.0.1" });
    ctx.nodes.setState(mac, "booted", "port 22 answered");
    // The node takes `reboot`, closes its port, and hangs on its way down (or its firmware never
    // fetches a script): nothing of it is heard again.
    ctx.rebooter.soft = { name: "ssh", request: () => delivered(30_000, 0) };
    await ctx.rebooter.reboot(ctx.nodes.get("n1"), "deploy");
    await ctx.rebooter.settled();
    assert.equal(ctx.nodes.get("n1").state, "booting");
    assert.match(ctx.nodes.get("n1").stateReason ?? "", /^clean reboot \(ssh\): down/);
    let t = Date.now();
    const monitor = new NodeMonitor(ctx, { now: () => t, probe: () => Promise.resolve(false) });
    t += 181_000; // past boot.timeout (180 s)
    await monitor.tick();
    await ctx.rebooter.settled();
    assert.equal(hard.length, 1, "rebooted hard by the watchdog");
    assert.match(hard[0].cause, /^watchdog: no progress for 180 s/);
    // A node turned off meanwhile is left off.
    ctx.nodes.setState(mac, "booted", "port 22 answered");
    ctx.rebooter.soft = {
      name: "ssh",
      request: () => {
        ctx.nodes.setState(mac, "off", "powered off by hand");
        return delivered(30_000, 0);
      },
    };
    await ctx.rebooter.reboot(ctx.nodes.get("n1"), "deploy");
    await ctx.rebooter.settled();
    assert.equal(ctx.nodes.get("n1").state, "off");
  }));
