// Runs INSIDE a private network namespace (spawned by vnode_qemu_test.ts with `ip netns exec`):
// the bridge and tap code and a real qemu driven through QMP. Exits non-zero on any failure.
import assert from "node:assert/strict";
import { join } from "node:path";
import { addTap, bridgeMac, deleteTap, ensureBridge, linkInfo } from "../src/vnode/bridge.ts";
import { ensureDisks } from "../src/vnode/disks.ts";
import { qemuArgs, qemuBinary, qmp, tapName } from "../src/vnode/qemu.ts";

const dir = Deno.args[0];
const t0 = performance.now();
const step = (msg: string) =>
  console.log(`[${((performance.now() - t0) / 1000).toFixed(1)}s] ${msg}`);

async function waitFor(what: string, ms: number, fn: () => Promise<boolean>) {
  const end = Date.now() + ms;
  while (!(await fn().catch(() => false))) {
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const bridge = await ensureBridge({ name: "nrtest0", address: "10.78.0.1/24" });
const l = await linkInfo("nrtest0");
assert.equal(l?.linkinfo?.info_kind, "bridge");
assert.ok(l?.addr_info?.some((a) => a.local === "10.78.0.1" && a.prefixlen === 24));
// A second server start reuses the bridge and leaves it in place when it stops.
const again = await ensureBridge({ name: "nrtest0", address: "10.78.0.1/24" });
await again.close();
assert.ok(await linkInfo("nrtest0"));
// Its MAC is pinned: a port with a lower MAC does not take it over, as it does on a bridge whose
// MAC nobody set (ctl0, the control), nor on a bridge reused from someone else (nrtest1).
const sys = (dev: string, f: string) => Deno.readTextFileSync(`/sys/class/net/${dev}/${f}`).trim();
const ipRun = async (...args: string[]) =>
  assert.ok((await new Deno.Command("ip", { args }).output()).success, `ip ${args.join(" ")}`);
assert.equal(sys("nrtest0", "address"), bridgeMac("nrtest0"));
assert.equal(sys("nrtest0", "addr_assign_type"), "3");
await ipRun("link", "add", "ctl0", "type", "bridge");
await ipRun("link", "add", "nrtest1", "type", "bridge");
const foreign = sys("nrtest1", "address");
await (await ensureBridge({ name: "nrtest1", address: "10.79.0.1/24" })).close();
for (const [i, br] of ["nrtest0", "ctl0", "nrtest1"].entries()) {
  const before = sys(br, "address");
  await ipRun(
    "link",
    "add",
    `low${i}`,
    "address",
    `00:00:5e:00:53:0${i}`,
    "type",
    "veth",
    "peer",
    `peer${i}`,
  );
  await ipRun("link", "set", `low${i}`, "master", br);
  if (br === "ctl0") assert.equal(sys(br, "address"), `00:00:5e:00:53:0${i}`, "the control");
  else assert.equal(sys(br, "address"), before, `${br} keeps its MAC`);
}
assert.equal(sys("nrtest1", "address"), foreign);
await assert.rejects(ensureBridge({ name: "lo", address: "10.78.0.1/24" }), /not a bridge/);
await assert.rejects(ensureBridge({ name: "x", address: "10.78.0.1" }), /A\.B\.C\.D\/NN/);
step("bridge ok");

const mac = "52:54:00:aa:bb:01";
const tap = tapName(mac);
await addTap(tap, "nrtest0");
await addTap(tap, "nrtest0"); // a stale tap is replaced, not an error
const [tapLink] = JSON.parse(
  new TextDecoder().decode(
    (await new Deno.Command("ip", { args: ["-j", "link", "show", tap], stdout: "piped" }).output())
      .stdout,
  ),
);
assert.equal(tapLink.master, "nrtest0");
step("tap ok");

const disks = await ensureDisks(join(dir, "vm"), [{ size: 64e6, template: "ext4" }]);
const vm = {
  name: "qmp-test",
  mac,
  ram: "256M",
  cpus: 1,
  accel: "tcg" as const,
  tap,
  disks,
  consoleLog: join(dir, "console.log"),
  qmpSocket: join(dir, "qmp.sock"),
  pidFile: join(dir, "qemu.pid"),
};
const child = new Deno.Command(qemuBinary, {
  args: qemuArgs(vm),
  stdin: "null",
  stdout: "null",
  stderr: "piped",
}).spawn();
const status = child.status;
try {
  await waitFor("QMP", 10_000, async () => {
    await qmp(vm.qmpSocket, "query-status");
    return true;
  });
  assert.deepEqual((await qmp(vm.qmpSocket, "query-status")) as { status: string }, {
    status: "running",
    singlestep: false,
    running: true,
  });
  assert.equal(Number(await Deno.readTextFile(vm.pidFile)), child.pid);
  const blocks = await qmp(vm.qmpSocket, "query-block") as { inserted?: { file: string } }[];
  assert.ok(blocks.some((b) => b.inserted?.file === disks[0]), JSON.stringify(blocks));
  const log = () => Deno.readTextFile(vm.consoleLog);
  const count = (s: string, re: RegExp) => s.match(re)?.length ?? 0;
  // SeaBIOS and iPXE on the serial console (graphics=off), iPXE trying DHCP on our tap.
  await waitFor(
    "iPXE on the console",
    60_000,
    async () => /iPXE initialising devices/.test(await log()),
  );
  step("iPXE started");
  await qmp(vm.qmpSocket, "system_reset");
  await waitFor(
    "a second BIOS run after reset",
    60_000,
    async () => count(await log(), /SeaBIOS/g) === 2,
  );
  step("reset ok");
  await assert.rejects(qmp(vm.qmpSocket, "no-such-command"), /QMP no-such-command/);
  await qmp(vm.qmpSocket, "quit");
  const st = await status;
  assert.equal(st.code, 0);
  step("quit ok");
} finally {
  try {
    child.kill("SIGKILL");
  } catch { /* exited */ }
  await status;
  await deleteTap(tap);
}
assert.equal(await linkInfo(tap), undefined);
await bridge.close();
assert.equal(await linkInfo("nrtest0"), undefined);
step("bridge removed");
