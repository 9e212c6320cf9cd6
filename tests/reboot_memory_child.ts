// Runs under `deno run --v8-flags=--expose-gc` (spawned by reboot_test.ts): soft reboots whose
// node stays up for a few checks, with the Rebooter's own sleep, then prints how many bytes of
// heap each reboot left behind once they all ended (the server still running).
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { setLogSink } from "../src/log.ts";
import { Rebooter, type RebootTarget } from "../src/reboot.ts";
import { closeContext, openContext } from "../src/server.ts";

const gc = (globalThis as unknown as { gc: () => void }).gc;
setLogSink(() => {});
const dir = await Deno.makeTempDir({ prefix: "nr-reboot-mem-" });
const ctx = await openContext({ ...defaultConfig(), dataDir: join(dir, "data") });
const node: RebootTarget = { mac: "02:00:00:00:5f:09", name: "n9", virtual: false };
ctx.nodes.add(node.mac, { name: node.name });
const follows = 1000, checksEach = 20;
// Its own sleep, checking every millisecond (the server's: every second).
const rebooter = new Rebooter(ctx.db, { pollMs: 1 });
rebooter.register({ name: "plug", handles: () => true, reboot: () => Promise.resolve() });
rebooter.soft = {
  name: "ssh",
  request() {
    let checks = 0;
    return {
      sent: Promise.resolve({ delivered: true, detail: "reboot accepted" }),
      timeoutMs: 3_600_000,
      isDown: () => Promise.resolve(++checks > checksEach),
    };
  },
};
// A first round warms up what stays anyway (statements, code); the second one is measured.
for (const round of ["warm-up", "measured"]) {
  gc();
  const before = Deno.memoryUsage().heapUsed;
  for (let i = 0; i < follows; i++) await rebooter.reboot(node, "deploy");
  await rebooter.settled();
  gc();
  const perReboot = (Deno.memoryUsage().heapUsed - before) / follows;
  if (round === "measured") console.log(`retained per reboot: ${Math.round(perReboot)} bytes`);
}
await rebooter.close();
await closeContext(ctx);
await Deno.remove(dir, { recursive: true });
