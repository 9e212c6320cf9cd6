// Runs INSIDE a private network namespace (spawned by vnode_stale_test.ts): a server started with
// a relative data dir (`netroot serve --data lab`, NETROOT_DATA=lab), whose qemu runs in its VM's
// directory (where its QMP socket is made): every path handed to it must still lead there.
import assert from "node:assert/strict";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { ensureBridge } from "../src/vnode/bridge.ts";
import { VnodeManager } from "../src/vnode/manager.ts";

Deno.chdir(Deno.args[0]);
const bridge = await ensureBridge({ name: "nrrl0", address: "10.79.8.1/24" });
const ctx = await openContext({ ...defaultConfig(), dataDir: "lab", vnode: { accel: "tcg" } });
const m = new VnodeManager(ctx, "nrrl0");
try {
  const vm = await m.create({ name: "rel", ram: "128M", disks: ["64M"] });
  await m.reboot(vm.mac); // a QMP reset
  assert.ok(m.isRunning(vm.mac));
  await m.remove(vm.mac);
  console.log("a relative data dir's vnode starts");
} finally {
  await m.close();
  await closeContext(ctx);
  await bridge.close();
}
