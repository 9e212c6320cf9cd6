// qemu command line, QMP, bridge and taps. The VM part needs root and qemu: it runs a real qemu
// (TCG) in a private network namespace through tests/vnode_qemu_child.ts.
import assert from "node:assert/strict";
import { runChildInNetns } from "./support/netnschild.ts";
import {
  AAVMF_CODE,
  OVMF_CODE,
  parseArch,
  parseCpus,
  parseFirmware,
  parseRam,
  qemuArgs,
  randomVnodeMac,
  tapName,
} from "../src/vnode/qemu.ts";
import { UserError } from "../src/errors.ts";

Deno.test("qemu command line: PXE on virtio-net via a tap, no stdio, console and QMP files", () => {
  const args = qemuArgs({
    name: "vm1",
    mac: "52:54:00:01:02:03",
    ram: "512M",
    cpus: 2,
    accel: "tcg",
    tap: "nr525400010203",
    disks: ["/d/disk0.img", "/d,x/disk1.img"],
    consoleLog: "/d/console.log",
    qmpSocket: "/d/qmp.sock",
    pidFile: "/d/qemu.pid",
  });
  const line = args.join(" ");
  assert.match(line, /-accel tcg/);
  assert.doesNotMatch(line, /-cpu host/);
  assert.match(line, /-boot n/);
  assert.match(line, /-netdev tap,id=n0,ifname=nr525400010203,script=no,downscript=no/);
  assert.match(line, /-device virtio-net-pci,netdev=n0,mac=52:54:00:01:02:03/);
  assert.match(line, /-drive file=\/d\/disk0.img,format=raw,if=virtio/);
  assert.match(line, /-drive file=\/d,,x\/disk1.img,format=raw,if=virtio/); // comma escaped
  assert.match(
    line,
    /-chardev file,id=console,path=\/d\/console.log,append=on -serial chardev:console/,
  );
  assert.match(line, /-qmp unix:\/d\/qmp.sock,server=on,wait=off/);
  assert.match(line, /-monitor none/);
  assert.doesNotMatch(line, /nographic|stdio/);
  assert.match(line, /-m 512M -smp 2/);
  const kvm = qemuArgs({
    ...{ name: "v", mac: "52:54:00:00:00:01", ram: "1G", cpus: 1 },
    accel: "kvm",
    tap: "t",
    disks: [],
    consoleLog: "c",
    qmpSocket: "q",
    pidFile: "p",
  });
  assert.match(kvm.join(" "), /-accel kvm -cpu host/);
});

Deno.test("qemu command line, UEFI: OVMF in pflash, the node's own variables, no NIC option ROM", () => {
  const vm = {
    ...{ name: "u", mac: "52:54:00:00:00:07", ram: "512M", cpus: 1, accel: "tcg" as const },
    ...{ tap: "t", disks: [], consoleLog: "c", qmpSocket: "q", pidFile: "p" },
  };
  const bios = qemuArgs(vm).join(" ");
  assert.doesNotMatch(bios, /pflash|romfile|fw_cfg/);
  const pxe = qemuArgs({ ...vm, firmware: "uefi", uefiVars: "/d,x/uefi-vars.fd" }).join(" ");
  assert.match(pxe, new RegExp(`-drive if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`));
  assert.match(pxe, /-drive if=pflash,format=raw,file=\/d,,x\/uefi-vars.fd/);
  // OVMF's own PXE client, as on a UEFI PC (qemu's iPXE ROM would replace it), tried first.
  assert.match(pxe, /-device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:07,romfile=,bootindex=1/);
  assert.doesNotMatch(pxe, /fw_cfg/);
  const http = qemuArgs({ ...vm, firmware: "uefi-http", uefiVars: "v" }).join(" ");
  assert.match(http, /-fw_cfg name=opt\/org.tianocore\/IPv4PXESupport,string=n/);
  assert.match(http, /-fw_cfg name=opt\/org.tianocore\/IPv6PXESupport,string=n/);
  assert.throws(() => qemuArgs({ ...vm, firmware: "uefi" }), /variable store/);
  assert.equal(parseFirmware("UEFI"), "uefi");
  for (const bad of ["", "efi", "coreboot"]) assert.throws(() => parseFirmware(bad), UserError);
});

Deno.test("qemu command line, aarch64: virt machine, Cortex-A72 under TCG, AAVMF, UEFI only", () => {
  const vm = {
    ...{ name: "a", mac: "52:54:00:00:00:08", ram: "1G", cpus: 1, accel: "tcg" as const },
    ...{ tap: "t", disks: [], consoleLog: "c", qmpSocket: "q", pidFile: "p" },
    arch: "aarch64" as const,
  };
  const pxe = qemuArgs({ ...vm, firmware: "uefi", uefiVars: "v.fd" }).join(" ");
  assert.match(pxe, /-machine virt,graphics=off/);
  assert.match(pxe, /-cpu cortex-a72/);
  assert.match(pxe, new RegExp(`-drive if=pflash,format=raw,readonly=on,file=${AAVMF_CODE}`));
  assert.match(pxe, /-drive if=pflash,format=raw,file=v.fd/);
  assert.match(pxe, /-device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:08,romfile=,bootindex=1/);
  assert.doesNotMatch(pxe, /OVMF|-machine pc/);
  assert.match(
    qemuArgs({ ...vm, firmware: "uefi", uefiVars: "v", accel: "kvm" }).join(" "),
    /-cpu host/,
  );
  assert.throws(() => qemuArgs({ ...vm, firmware: "bios" }), /UEFI only/);
  assert.equal(parseArch("arm64"), "aarch64");
  assert.equal(parseArch("AMD64"), "x86_64");
  for (const bad of ["", "arm", "riscv64"]) assert.throws(() => parseArch(bad), UserError);
});

Deno.test("vnode parameters: RAM, CPUs, MACs, tap names", () => {
  assert.equal(parseRam("512m"), "512M");
  assert.equal(parseRam("2G"), "2G");
  for (const bad of ["", "512", "32M", "1.5G", "lots", "-1G"]) {
    assert.throws(() => parseRam(bad), UserError);
  }
  assert.equal(parseCpus("4"), 4);
  for (const bad of ["0", "x", "1.5", "65"]) assert.throws(() => parseCpus(bad), UserError);
  const macs = new Set(Array.from({ length: 50 }, randomVnodeMac));
  assert.ok(macs.size > 45);
  for (const m of macs) assert.match(m, /^52:54:00(:[0-9a-f]{2}){3}$/);
  assert.equal(tapName("52:54:00:aa:bb:cc"), "nr525400aabbcc");
  assert.ok(tapName("52:54:00:aa:bb:cc").length <= 15);
});

Deno.test({
  name: "bridge, tap and a real qemu through QMP (root, qemu, netns)",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  fn: () =>
    runChildInNetns(new URL("./vnode_qemu_child.ts", import.meta.url), {
      name: "vqemu",
      timeoutS: 180,
      done: /bridge removed/,
    }),
});
