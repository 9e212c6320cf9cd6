// Module load order: synthetic modules.dep cases, then the real Debian kernel checked against
// `modprobe --show-depends` (kmod) for the same wanted list.
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  moduleName,
  parseModuleIndex,
  planModules,
  renderModulesPlan,
  WANTED_MODULES,
} from "../src/initramfs/modules.ts";
import { loadHardwareModules, parseModulesPlan } from "../overlay/modules.ts";
import { debianKernel } from "./support/kernel.ts";

Deno.test("module names: extension stripped, dashes read as underscores", () => {
  assert.equal(moduleName("kernel/fs/nls/nls_iso8859-1.ko"), "nls_iso8859_1");
  assert.equal(moduleName("kernel/arch/x86/crypto/crc32c-intel.ko.zst"), "crc32c_intel");
  assert.equal(moduleName("kernel/fs/ext4/ext4.ko.xz"), "ext4");
  assert.equal(moduleName("nls-cp437"), "nls_cp437");
});

const dep = [
  "kernel/a.ko: kernel/b.ko kernel/c.ko",
  "kernel/b.ko: kernel/c.ko",
  "kernel/c.ko:",
  "kernel/d.ko.xz: kernel/c.ko",
  "kernel/fs/ext4.ko: kernel/jbd2.ko",
  "kernel/jbd2.ko:",
  "kernel/crc32c_generic.ko:",
  "kernel/crc32c-intel.ko:",
  "kernel/x-y.ko:",
  "",
].join("\n");

Deno.test("dependencies first, each module once, in the order first needed", () => {
  const idx = parseModuleIndex({ dep });
  const plan = planModules(idx, ["a", "d", "b", "a"]);
  assert.deepEqual(plan.order, ["kernel/c.ko", "kernel/b.ko", "kernel/a.ko", "kernel/d.ko.xz"]);
  assert.deepEqual(plan.missing, []);
});

Deno.test("built-in modules need nothing, unknown ones are reported missing", () => {
  const idx = parseModuleIndex({ dep, builtin: "kernel/net/packet/af_packet.ko\n" });
  const plan = planModules(idx, ["af_packet", "nope", "x_y", "x-y"]);
  assert.deepEqual(plan.order, ["kernel/x-y.ko"]);
  assert.deepEqual(plan.builtin, ["af_packet"]);
  assert.deepEqual(plan.missing, ["nope"]);
});

Deno.test("softdep pre: resolved through exact aliases, loaded before the module", () => {
  const idx = parseModuleIndex({
    dep,
    softdep: "# comment\nsoftdep ext4 pre: crypto-crc32c post: b\nsoftdep jbd2 pre: c absent\n",
    alias: "alias crypto-crc32c crc32c_generic\nalias crypto-crc32c crc32c-intel\n" +
      "alias pci:v*d* a\n",
  });
  assert.deepEqual(idx.aliases.get("pci:v*d*"), undefined); // globs are not exact names
  const plan = planModules(idx, ["ext4"]);
  assert.deepEqual(plan.order, [
    "kernel/crc32c_generic.ko",
    "kernel/crc32c-intel.ko",
    "kernel/c.ko",
    "kernel/jbd2.ko",
    "kernel/fs/ext4.ko",
  ]);
});

async function showDepends(root: string, kv: string, name: string): Promise<string[]> {
  const out = await new Deno.Command("modprobe", {
    args: ["-d", root, "-S", kv, "--show-depends", name],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, `modprobe ${name}: ${new TextDecoder().decode(out.stderr)}`);
  return [...new TextDecoder().decode(out.stdout).matchAll(/^insmod (\S+)/gm)].map((m) => m[1]);
}

Deno.test("Debian kernel: same modules as modprobe --show-depends, every dependency earlier", async () => {
  const k = await debianKernel();
  const dir = join(k.root, "lib/modules", k.kv);
  const read = (f: string) => Deno.readTextFileSync(join(dir, f));
  const idx = parseModuleIndex({
    dep: read("modules.dep"),
    builtin: read("modules.builtin"),
    softdep: read("modules.softdep"),
    alias: read("modules.alias"),
  });
  const plan = planModules(idx, WANTED_MODULES);
  assert.deepEqual(plan.missing, []);
  assert.deepEqual(plan.builtin, ["af_packet"]);
  assert.equal(new Set(plan.order).size, plan.order.length);
  const pos = new Map(plan.order.map((p, i) => [p, i]));
  for (const p of plan.order) {
    for (const d of idx.deps.get(p) ?? []) {
      assert.ok(pos.get(d)! < pos.get(p)!, `${d} must load before ${p}`);
    }
  }
  // modprobe (with softdeps) lists the same set; its order also has deps first.
  const expected = new Set<string>();
  for (const name of WANTED_MODULES.filter((n) => !plan.builtin.includes(n))) {
    for (const f of await showDepends(k.root, k.kv, name)) expected.add(f.slice(dir.length + 1));
  }
  assert.deepEqual([...plan.order].sort(), [...expected].sort());
  for (const m of ["virtio_net", "e1000", "nfsv4", "overlay", "ext4", "crc32c_generic"]) {
    assert.ok(plan.order.some((p) => moduleName(p) === m), m);
  }
});

Deno.test("modules plan of the Debian kernel: a virtio node loads virtio_pci then virtio_net only", async () => {
  const k = await debianKernel();
  const dir = join(k.root, "lib/modules", k.kv);
  const read = (f: string) => Deno.readTextFileSync(join(dir, f));
  const alias = read("modules.alias");
  const idx = parseModuleIndex({
    dep: read("modules.dep"),
    builtin: read("modules.builtin"),
    softdep: read("modules.softdep"),
    alias,
  });
  const plan = parseModulesPlan(renderModulesPlan(idx, WANTED_MODULES, alias));
  // Every module line is that module's own closure, itself last; aliases name only planned modules.
  for (const [name, paths] of plan.modules) {
    assert.equal(moduleName(paths[paths.length - 1]), name);
    assert.deepEqual(paths, planModules(idx, [name]).order);
  }
  for (const a of plan.aliases) assert.ok(plan.modules.has(a.name), a.name);
  assert.ok(plan.aliases.length > 100);
  let round = 0;
  const loaded: string[] = [];
  const hw = loadHardwareModules(plan, "", (p) => {
    loaded.push(moduleName(p));
    return "loaded";
  }, () => [
    "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", // virtio-net-pci
    "pci:v00008086d00007000sv00001AF4sd00001100bc06sc01i00", // PIIX3 ISA bridge: nothing
    ...(round++ ? ["virtio:d00000001v00001AF4"] : []),
  ]);
  assert.deepEqual(hw.names, ["virtio_pci", "virtio_net"]);
  assert.equal(loaded[loaded.length - 1], "virtio_net");
  assert.ok(!loaded.includes("e1000e") && !loaded.includes("ext4"), loaded.join(" "));
});
