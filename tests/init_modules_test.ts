import assert from "node:assert/strict";
import {
  globToRegExp,
  loadHardwareModules,
  loadModules,
  matchModaliases,
  moduleName,
  newModaliases,
  parseModulesOrder,
  parseModulesPlan,
  readModaliases,
  summarize,
} from "../overlay/modules.ts";
import { isCompressedModule } from "../src/linux/kmod.ts";

Deno.test("modules.order: order kept, blanks/comments skipped, duplicates keep their first place", () => {
  const text = `# from modprobe --show-depends
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko

kernel/drivers/net/virtio_net.ko.xz
  kernel/drivers/virtio/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko.zst
`;
  assert.deepEqual(parseModulesOrder(text), [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/net/virtio_net.ko.xz",
    "kernel/fs/overlayfs/overlay.ko.zst",
  ]);
  assert.throws(() => parseModulesOrder("/lib/modules/x/a.ko"), /relative to \/lib\/modules/);
  assert.throws(() => parseModulesOrder("kernel/../../etc/passwd"), /relative/);
});

Deno.test("module loader: loads in order, keeps going past failures, counts already-present", () => {
  const calls: string[] = [];
  const r = loadModules(
    "/lib/modules/6.1.0-56-amd64",
    ["kernel/a.ko", "kernel/arch/x86/crypto/crc32c-intel.ko", "kernel/b.ko.xz", "kernel/c.ko"],
    (path) => {
      calls.push(path);
      if (path.includes("crc32c-intel")) throw new Error("finit_module: No such device (errno 19)");
      return path.endsWith("c.ko") ? "present" : "loaded";
    },
  );
  assert.deepEqual(calls, [
    "/lib/modules/6.1.0-56-amd64/kernel/a.ko",
    "/lib/modules/6.1.0-56-amd64/kernel/arch/x86/crypto/crc32c-intel.ko",
    "/lib/modules/6.1.0-56-amd64/kernel/b.ko.xz",
    "/lib/modules/6.1.0-56-amd64/kernel/c.ko",
  ]);
  assert.deepEqual(r.loaded, ["kernel/a.ko", "kernel/b.ko.xz"]);
  assert.deepEqual(r.present, ["kernel/c.ko"]);
  assert.deepEqual(r.failed, [{
    path: "kernel/arch/x86/crypto/crc32c-intel.ko",
    error: "finit_module: No such device (errno 19)",
  }]);
  assert.equal(summarize(r), "2 loaded, 1 already present, 1 failed (crc32c-intel)");
});

Deno.test("module names and the in-kernel decompression flag", () => {
  assert.equal(moduleName("kernel/fs/nfs/nfsv4.ko.xz"), "nfsv4");
  assert.equal(moduleName("kernel/fs/nfs/nfs.ko"), "nfs");
  assert.ok(isCompressedModule("a/b.ko.xz") && isCompressedModule("a/b.ko.zst"));
  assert.ok(!isCompressedModule("a/b.ko") && !isCompressedModule("a/b.xz.ko"));
});

Deno.test("modalias globs match as fnmatch does (* ? [...] [!...]), literal text literally", () => {
  const g = globToRegExp("pci:v00008086d000010D3sv*sd*bc*sc*i*");
  assert.ok(g.test("pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"));
  assert.ok(!g.test("pci:v00008086d000010D4sv00008086sd0000A01Fbc02sc00i00"));
  assert.ok(
    globToRegExp("usb:v0B95p1790d*dc*dsc*dp*ic*isc*ip*in*").test(
      "usb:v0B95p1790d0100dcFFdsc00dp00icFFisc00ip00in00",
    ),
  );
  assert.ok(globToRegExp("a?c").test("abc") && !globToRegExp("a?c").test("ac"));
  assert.ok(globToRegExp("x[0-3]y").test("x2y") && !globToRegExp("x[0-3]y").test("x7y"));
  assert.ok(globToRegExp("x[!0-3]y").test("x7y") && !globToRegExp("x[!0-3]y").test("x2y"));
  // regex metacharacters in the alias are plain text
  assert.ok(globToRegExp("of:N*T*Cfsl,imx6q-fec.C*").test("of:NethernetT(null)Cfsl,imx6q-fec.C"));
  assert.ok(!globToRegExp("a.b").test("axb"));
});

const planText = `# netroot modules plan
module virtio_pci kernel/virtio_ring.ko kernel/virtio.ko kernel/virtio_pci.ko
module virtio_net kernel/virtio_ring.ko kernel/virtio.ko kernel/virtio_net.ko
module e1000e kernel/e1000e.ko
module ahci kernel/scsi_mod.ko kernel/libata.ko kernel/ahci.ko
module sd_mod kernel/scsi_mod.ko kernel/sd_mod.ko
module nfsv4 kernel/sunrpc.ko kernel/nfs.ko kernel/nfsv4.ko
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v*d*sv*sd*bc01sc06i01* ahci
`;

Deno.test("modules plan: the drivers whose aliases match the devices, in rounds, deps first", () => {
  const plan = parseModulesPlan(planText);
  assert.deepEqual(plan.modules.get("virtio_net"), [
    "kernel/virtio_ring.ko",
    "kernel/virtio.ko",
    "kernel/virtio_net.ko",
  ]);
  assert.deepEqual(
    matchModaliases(plan, ["pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"]),
    [
      "e1000e",
    ],
  );
  assert.deepEqual(matchModaliases(plan, ["acpi:PNP0A03:", "platform:serial8250"]), []);
  // virtio_pci makes the virtio devices appear: a second round finds virtio_net.
  const calls: string[] = [];
  let round = 0;
  const devices = () =>
    round++ === 0
      ? ["pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "acpi:PNP0A03:"]
      : ["pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "virtio:d00000001v00001AF4"];
  const hw = loadHardwareModules(plan, "/m", (p) => {
    calls.push(p);
    return "loaded";
  }, devices);
  assert.deepEqual(hw.names, ["virtio_pci", "virtio_net"]);
  assert.deepEqual(calls, [
    "/m/kernel/virtio_ring.ko",
    "/m/kernel/virtio.ko",
    "/m/kernel/virtio_pci.ko",
    "/m/kernel/virtio_net.ko",
  ]);
  assert.equal(hw.result.loaded.length, 4);
  // The same with a source that gives only the devices new since the last round (newModaliases).
  const incremental = [
    ["pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "acpi:PNP0A03:"],
    ["virtio:d00000001v00001AF4"],
  ];
  const calls2: string[] = [];
  const hw2 = loadHardwareModules(plan, "/m", (p) => {
    calls2.push(p);
    return "loaded";
  }, () => incremental.shift() ?? []);
  assert.deepEqual(hw2.names, ["virtio_pci", "virtio_net"]);
  assert.deepEqual(calls2, calls);
});

Deno.test("modules plan: an AHCI controller brings sd_mod (its disks appear later)", () => {
  const plan = parseModulesPlan(planText);
  const calls: string[] = [];
  const hw = loadHardwareModules(plan, "/m", (p) => {
    calls.push(p);
    return "loaded";
  }, () => ["pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"]);
  assert.deepEqual(hw.names, ["ahci", "sd_mod"]);
  assert.deepEqual(calls, [
    "/m/kernel/scsi_mod.ko",
    "/m/kernel/libata.ko",
    "/m/kernel/ahci.ko",
    "/m/kernel/sd_mod.ko",
  ]);
});

Deno.test("modaliases are read from every bus's devices", () => {
  const sys = Deno.makeTempDirSync();
  try {
    for (
      const [bus, dev, alias] of [["pci", "0000:00:03.0", "pci:v1"], [
        "virtio",
        "virtio0",
        "virtio:d1",
      ]]
    ) {
      Deno.mkdirSync(`${sys}/bus/${bus}/devices/${dev}`, { recursive: true });
      Deno.writeTextFileSync(`${sys}/bus/${bus}/devices/${dev}/modalias`, `${alias}\n`);
    }
    Deno.mkdirSync(`${sys}/bus/pci/devices/0000:00:00.0`); // no modalias file
    assert.deepEqual(readModaliases(sys).sort(), ["pci:v1", "virtio:d1"]);
    assert.deepEqual(readModaliases(`${sys}/none`), []);
  } finally {
    Deno.removeSync(sys, { recursive: true });
  }
});

Deno.test("newModaliases: each call reads only the devices that appeared since the last one", () => {
  const sys = Deno.makeTempDirSync();
  const dev = (bus: string, name: string, alias?: string) => {
    Deno.mkdirSync(`${sys}/bus/${bus}/devices/${name}`, { recursive: true });
    if (alias) Deno.writeTextFileSync(`${sys}/bus/${bus}/devices/${name}/modalias`, `${alias}\n`);
  };
  try {
    dev("pci", "0000:00:03.0", "pci:v1");
    dev("pci", "0000:00:00.0"); // no modalias file
    const next = newModaliases(sys);
    assert.deepEqual(next(), ["pci:v1"]);
    assert.deepEqual(next(), []); // nothing new: nothing read again
    dev("virtio", "virtio0", "virtio:d1"); // virtio_pci's devices appear
    // a modalias file that shows up for a device seen before is not read again
    Deno.writeTextFileSync(`${sys}/bus/pci/devices/0000:00:00.0/modalias`, "pci:v2\n");
    assert.deepEqual(next(), ["virtio:d1"]);
    assert.deepEqual(newModaliases(sys)().sort(), ["pci:v1", "pci:v2", "virtio:d1"]);
  } finally {
    Deno.removeSync(sys, { recursive: true });
  }
});
