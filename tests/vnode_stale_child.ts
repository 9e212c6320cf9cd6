// Runs INSIDE a private network namespace (spawned by vnode_stale_test.ts): a qemu left running by
// a server that died (kill -9), then the vnode removed by the next server, started without a boot
// bridge (it starts no VM, so it never met the stale qemu).
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { ensureBridge } from "../src/vnode/bridge.ts";
import { VnodeManager } from "../src/vnode/manager.ts";

const dir = Deno.args[0];
const dataDir = join(dir, "data");
const bridge = await ensureBridge({ name: "nrst0", address: "10.79.6.1/24" });
// The server that dies: a process of its own that makes the vnode, says its qemu's pid, waits.
const code = `
  import { defaultConfig } from "${new URL("../src/config.ts", import.meta.url)}";
  import { openContext } from "${new URL("../src/server.ts", import.meta.url)}";
  import { VnodeManager } from "${new URL("../src/vnode/manager.ts", import.meta.url)}";
  const ctx = await openContext({ ...defaultConfig(), dataDir: ${JSON.stringify(dataDir)},
    vnode: { accel: "tcg" } });
  const vm = await new VnodeManager(ctx, "nrst0").create({ name: "orphan", ram: "128M" });
  console.log(JSON.stringify({ mac: vm.mac, pid: vm.pid }));
  await new Promise(() => {});`;
const server = new Deno.Command(Deno.execPath(), {
  args: ["eval", code],
  stdout: "piped",
  stderr: "inherit",
}).spawn();
const first = await server.stdout.pipeThrough(new TextDecoderStream()).getReader().read();
const vm = JSON.parse(first.value!.trim()) as { mac: string; pid: number };
server.kill("SIGKILL");
await server.status;
assert.ok(existsSync(`/proc/${vm.pid}`), "qemu outlives its server");
const ctx = await openContext({ ...defaultConfig(), dataDir, vnode: { accel: "tcg" } });
try {
  const next = new VnodeManager(ctx, undefined);
  await next.startAll(); // no bridge: no VM started
  await next.remove(vm.mac);
  await next.close();
  for (let i = 0; i < 50 && existsSync(`/proc/${vm.pid}`); i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(!existsSync(`/proc/${vm.pid}`), "the removed vnode's qemu still runs, disks deleted");
  console.log("stale qemu ended with its vnode");
} finally {
  if (existsSync(`/proc/${vm.pid}`)) Deno.kill(vm.pid, "SIGKILL");
  await closeContext(ctx);
  await bridge.close();
}
