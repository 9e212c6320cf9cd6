// Runs INSIDE a private network namespace (spawned by vnode_stale_test.ts): a server whose data dir
// is deep enough that a VM's QMP socket cannot sit in its directory (a unix socket's path holds
// at most 107 bytes), and another local user who knows where it would go instead. The VM's
// directory and MAC are no secret (the tap is nr<mac>, the data dir is on the server's command
// line): that user made a directory of their own there before the VM's next start.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { ensureBridge } from "../src/vnode/bridge.ts";
import { VnodeManager } from "../src/vnode/manager.ts";

const dir = Deno.args[0];
const dataDir = join(dir, "a-data-dir-as-deep-as-an-admin-may-choose", "var", "lib", "netroot");
const bridge = await ensureBridge({ name: "nrqm0", address: "10.79.7.1/24" });
const ctx = await openContext({ ...defaultConfig(), dataDir, vnode: { accel: "tcg" } });
const m = new VnodeManager(ctx, "nrqm0");
let planted: string | undefined;
try {
  const vm = await m.create({ name: "deep", ram: "128M" });
  const vmDir = ctx.data.vm(vm.mac);
  assert.ok(new TextEncoder().encode(join(vmDir, "qmp.sock")).length > 107);
  await m.powerOff(vm.mac);
  // Where a deep VM directory's socket went: a name in /tmp any user could work out and take.
  planted = `/tmp/netroot-qmp-${
    createHash("sha256").update(vmDir).digest("hex").slice(0, 16)
  }.sock`;
  const nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
  const take = await new Deno.Command("setpriv", {
    args: [...nobody, "sh", "-c", `mkdir "$1" && touch "$1/x"`, "sh", planted],
  }).output();
  assert.ok(take.success, "the other user's directory");
  await m.powerOn(vm.mac);
  await m.reboot(vm.mac); // a QMP reset: the server reaches its qemu's socket
  assert.ok(m.isRunning(vm.mac));
  await m.remove(vm.mac);
  console.log("a deep data dir's vnode starts whatever other users put in /tmp");
} finally {
  await m.close();
  if (planted) await Deno.remove(planted, { recursive: true }).catch(() => {});
  await closeContext(ctx);
  await bridge.close();
}
