// End to end (root, qemu TCG, network namespace, nfs-ganesha): a virtual node boots the test image
// in network mode with netroot's own initramfs — kernel + initramfs over HTTP, the netroot init
// mounts the image read-only over NFSv4 (ganesha run by netroot), a tmpfs overlay, its /persist —
// and the image's /sbin/init prints IMAGE-BOOT-OK; the boot reports land on the timeline.
import assert from "node:assert/strict";
import { join } from "node:path";
import { buildTestImage } from "../support/testimage.ts";
import { assertInOrder, kindsSince, labTest } from "./harness.ts";

labTest(
  "e2e: network-mode boot with netroot's initramfs over NFS (ganesha) reaches the image's init",
  async ({ kernel, imageDir, start }) => {
    const image = await buildTestImage(join(imageDir, "rootfs"), { kernel, release: "v1" });
    const lab = await start({ nfs: "ganesha" });
    await lab.cli("image", "import", image.dir, "--name", "test");
    const vm = await lab.createVnode("net1", { image: "test", ram: "512M" });
    const out = await lab.waitConsole(vm.mac, /IMAGE-BOOT-OK/, 240_000);
    assert.match(out, /image init started: netroot-test-image v1/);
    assert.match(out, /bootcount=1/);
    await lab.waitEvent(vm.mac, "vnode.exit", 60_000);
    assert.match(out, /overlay \/ overlay/); // the image's init sees an overlay root
    // No copy, so the kernel's writeback is left as it is: no line, the image finds the default.
    assert.doesNotMatch(out, /background writeback/);
    assert.match(out, /writeback=0\/10\b/);
    const kinds = await kindsSince(lab, vm.mac);
    lab.log(`timeline: ${kinds.join(" → ")}`);
    assertInOrder(kinds, [
      "vnode.start",
      "dhcp.ack",
      "http.script",
      "http.kernel",
      "http.initramfs",
      "init.start",
      "init.network",
      "init.nfs-root",
      "init.overlay",
      "init.persist",
      "init.handover",
      "vnode.exit",
    ]);
    assert.equal(
      (await Deno.readTextFile(join(lab.data, "nodes", vm.mac, "persist", "bootcount"))).trim(),
      "1",
    );
    // Node state: booting from qemu's start; the image has no sshd (probe port 22 shut) and
    // powers off: off again when qemu exits, never rebooted by the watchdog.
    const shown = JSON.parse((await lab.cli("node", "show", "net1", "--json")).stdout);
    assert.equal(shown.state, "off", shown.stateReason);
    assertInOrder(kinds, [
      "node.state",
      "http.script",
      "init.handover",
      "vnode.exit",
      "node.state",
    ]);
    assert.ok(!kinds.includes("reboot"), "no watchdog reboot");
  },
);
