// Runs INSIDE a private network namespace (spawned by power_qemu_test.ts with `ip netns exec`):
// a server context with a boot bridge and one virtual node, whose power goes through the qemu
// driver (the default of virtual nodes). Exits non-zero on any failure.
import assert from "node:assert/strict";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { nodePower } from "../src/power/power.ts";
import { closeContext, openContext } from "../src/server.ts";
import { ensureBridge } from "../src/vnode/bridge.ts";
import { startVnodes, vnodeManager } from "../src/vnode/manager.ts";
import { pidAlive, waitFor } from "./support/power.ts";

const dir = Deno.args[0];
const bridgeSpec = { name: "nrpower0", address: "10.79.0.1/24" };
const bridge = await ensureBridge(bridgeSpec);
const ctx = await openContext({
  ...defaultConfig(),
  dataDir: join(dir, "data"),
  bridge: bridgeSpec,
  vnode: { accel: "tcg" },
});
const vnodes = await startVnodes(ctx);
try {
  const m = vnodeManager(ctx);
  const vm = await m.create({ name: "vm1", ram: "64M" });
  const pid = () => m.info(ctx.nodes.get("vm1")).pid;
  const first = pid()!;
  assert.ok(pidAlive(first));
  assert.equal((await nodePower(ctx, "vm1", "status")).state, "on");
  assert.equal((await nodePower(ctx, "vm1", "status")).driver, "qemu");

  await nodePower(ctx, "vm1", "off");
  assert.equal((await nodePower(ctx, "vm1", "status")).state, "off");
  await waitFor("qemu to end", () => !pidAlive(first), 10_000);
  assert.equal(m.info(ctx.nodes.get("vm1")).running, false);

  await nodePower(ctx, "vm1", "on");
  const second = pid()!;
  assert.ok(second !== first && pidAlive(second));
  await nodePower(ctx, "vm1", "on"); // already on: nothing changes
  assert.equal(pid(), second);

  await nodePower(ctx, "vm1", "cycle");
  const third = pid()!;
  assert.ok(third !== second && pidAlive(third) && !pidAlive(second));

  // node reboot of a vnode keeps the QMP reset (same qemu process), and says so.
  const r = await ctx.nodes.reboot("vm1", "test");
  assert.deepEqual(r, { mac: vm.mac, mechanism: "qemu", ok: true, message: "rebooted by qemu" });
  assert.equal(pid(), third);
  console.log("qemu driver ok");
} finally {
  await vnodes.close();
  await closeContext(ctx);
  await bridge.close();
}
