// End to end on aarch64 (root, qemu TCG, nfs-ganesha; the server stays x86-64): a virtual node made
// by `netroot vnode create --arch aarch64` — qemu-system-aarch64 -M virt, Cortex-A72, AAVMF (Debian
// qemu-efi-aarch64), virtio-net without option ROM — boots the whole chain from its firmware:
//   AAVMF PXE (DHCP arch 11) → TFTP ipxe-arm64.efi (Debian's ipxe) → iPXE → the node's script
//   → Debian's arm64 kernel + netroot's aarch64 initramfs (the arm64 Deno runtime from npm, its
//   libraries from the image) → network mode (NFS root + overlay) → the image's init (an arm64
//   busybox-static image).
// One boot under TCG (36 s from vnode create to the image's init on a 2-core host, 44 s in all with
// the lab): the same chain proves the Raspberry Pi path from the kernel on.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { AAVMF_CODE } from "../../src/vnode/qemu.ts";
import { buildTinyImage } from "../../src/lab/tinyimage.ts";
import { arm64Kernel, loaderDirWithArm64, seedArm64Runtime } from "../support/arm64.ts";
import { workCacheDir } from "../support/kernel.ts";
import { assertInOrder, type Lab, startLab } from "./harness.ts";

Deno.test({
  name:
    "e2e: aarch64 UEFI (AAVMF PXE) → TFTP ipxe-arm64.efi → arm64 kernel → network mode → image init",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    if (!existsSync(AAVMF_CODE)) {
      throw new Error(`${AAVMF_CODE} missing: install the Debian package qemu-efi-aarch64`);
    }
    const t0 = performance.now();
    const tmp = await Deno.makeTempDir({ prefix: "nr-e2e-arm64-" });
    let lab: Lab | undefined;
    let ok = false;
    try {
      const kernel = await arm64Kernel();
      const image = await buildTinyImage(join(tmp, "rootfs"), {
        kernel,
        cacheDir: workCacheDir,
        arch: "arm64",
        release: "v1",
      });
      const loaders = await loaderDirWithArm64(join(tmp, "ipxe"));
      lab = await startLab({ nfs: "ganesha", serveArgs: ["--ipxe-dir", loaders] });
      await seedArm64Runtime(lab.data);
      await lab.cli("image", "import", image.dir, "--name", "arm");
      lab.log(`setup (kernel ${kernel.kv}, image, lab) took ${secs(t0)} s`);
      const t1 = performance.now();
      const vm = await lab.createVnode("arm1", { image: "arm", ram: "1G", arch: "aarch64" });
      const out = await lab.waitConsole(vm.mac, /IMAGE-BOOT-OK/, 540_000);
      await lab.waitEvent(vm.mac, "vnode.exit", 60_000);
      const events = await lab.events(vm.mac);
      const kinds = events.map((e) => e.kind);
      lab.log(`arm1 booted its image in ${secs(t1)} s: ${kinds.join(" → ")}`);

      const start = events.find((e) => e.kind === "vnode.start");
      assert.equal(start?.detail.firmware, "uefi");
      const dhcp = events.filter((e) => e.kind.startsWith("dhcp."))
        .map((e) => `${e.kind}:${e.detail.firmware}`);
      assert.deepEqual(dhcp.slice(0, 4), [
        "dhcp.offer:arm64",
        "dhcp.ack:arm64",
        "dhcp.offer:ipxe",
        "dhcp.ack:ipxe",
      ]);
      assert.equal(events.find((e) => e.kind === "tftp.done")?.detail.file, "ipxe-arm64.efi");
      assertInOrder(kinds, [
        "vnode.start",
        "tftp.done",
        "http.script",
        "http.kernel",
        "http.initramfs",
        "init.start",
        "init.nfs-root",
        "init.overlay",
        "init.handover",
        "vnode.exit",
      ]);
      // The kernel and the image's init are arm64 (uname -m is the kernel's machine).
      assert.match(out, /Linux version \S+-arm64/);
      assert.match(out, /Machine model: linux,dummy-virt|ACPI|EFI/);
      assert.match(out, /image init started: netroot-test-image v1/);
      assert.match(out, /overlay \/ overlay/);
      assert.match(out, /bootcount=1/);
      ok = true;
    } catch (e) {
      if (lab) console.error(`server log tail:\n${await lab.serverLogTail(60)}`);
      throw e;
    } finally {
      await lab?.close({ keep: !ok || undefined });
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});

const secs = (t: number) => ((performance.now() - t) / 1000).toFixed(0);
