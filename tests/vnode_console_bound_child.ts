// Runs INSIDE a private network namespace (spawned by vnode_console_bound_test.ts): a real qemu
// run by the vnode manager, whose serial console log grows past its bound while the VM runs.
import assert from "node:assert/strict";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { consoleLogPath, consoleRotateBytes } from "../src/consolelog.ts";
import { closeContext, openContext } from "../src/server.ts";
import { ensureBridge } from "../src/vnode/bridge.ts";
import { VnodeManager } from "../src/vnode/manager.ts";

const dir = Deno.args[0];
async function waitFor(what: string, ms: number, fn: () => Promise<boolean>) {
  const end = Date.now() + ms;
  while (!(await fn().catch(() => false))) {
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
const size = (p: string) => Deno.stat(p).then((s) => s.size, () => 0);

const bridge = await ensureBridge({ name: "nrcb0", address: "10.79.5.1/24" });
const cfg = defaultConfig();
const ctx = await openContext({ ...cfg, dataDir: join(dir, "data"), vnode: { accel: "tcg" } });
const m = new VnodeManager(ctx, "nrcb0", { consoleCheckMs: 200 });
try {
  const vm = await m.create({ name: "chatty", ram: "128M" });
  const log = consoleLogPath(ctx.data, vm.mac, "serial");
  await waitFor(
    "SeaBIOS on the console",
    60_000,
    async () => (await Deno.readTextFile(log)).includes("SeaBIOS"),
  );
  // A guest that writes without end (root on the node, a chatty kernel for months): here the
  // test writes for it, through its own descriptor, as qemu does (append).
  const f = await Deno.open(log, { append: true });
  const line = new TextEncoder().encode("x".repeat(1023) + "\n");
  for (let n = 0; n < consoleRotateBytes + (1 << 20); n += line.length) await f.write(line);
  f.close();
  await waitFor(
    "the serial log rotated while the VM runs",
    10_000,
    async () => await size(log) < consoleRotateBytes,
  );
  assert.ok(await size(`${log}.1`) > consoleRotateBytes, "the older part is kept as .1");
  // qemu keeps writing into the emptied log at its end, not at its old offset (no hole).
  await m.reboot(vm.mac);
  await waitFor(
    "SeaBIOS again after the reset",
    60_000,
    async () => (await Deno.readTextFile(log)).includes("SeaBIOS"),
  );
  const head = (await Deno.readFile(log)).subarray(0, 64);
  assert.ok(!head.includes(0), "the log starts with text, not a hole");
  console.log("serial log bounded while running:", await size(log), await size(`${log}.1`));
} finally {
  await m.close();
  await closeContext(ctx);
  await bridge.close();
}
