// End to end (root, qemu TCG, network namespace): a virtual node PXE-boots through qemu's iPXE
// ROM from netroot alone — netroot's DHCP, the iPXE script and kernel + initramfs over netroot's
// HTTP, its router advertisements (no dnsmasq runs) — into the test image's kernel with the
// image's own stand-in initramfs (node setting initramfs=image), which prints KERNEL-STARTED and
// powers off. Also: reboot of a vnode (QMP reset; restart when stopped), the restart of vnodes
// with the server, `vnode ls`, `node console`, `vnode rm`.
import assert from "node:assert/strict";
import { join } from "node:path";
import { buildTestImage } from "../support/testimage.ts";
import { assertInOrder, kindsSince, labTest, lastEventId } from "./harness.ts";

/** One TCG PXE boot to the initramfs takes 10–20 s here; 10× margin, and a hung VM fails. */
const bootTimeoutMs = 180_000;

labTest(
  "e2e: a vnode PXE-boots from netroot (DHCP, iPXE script, kernel, initramfs), reboots, restarts with the server (also after a crash) and with new settings",
  async ({ kernel, imageDir, start }) => {
    const image = await buildTestImage(join(imageDir, "rootfs"), {
      kernel,
      release: "v1",
      initrd: true,
    });
    const lab = await start();
    lab.log(`test image built: ${image.modules} modules, kernel ${image.kv}`);
    await lab.cli("image", "import", image.dir, "--name", "test");
    lab.log("image imported");

    const vm = await lab.createVnode("vm1", {
      image: "test",
      ram: "384M",
      disks: ["64M[template=hybrid-boot-v]"],
    });
    assert.match(vm.mac, /^52:54:00(:[0-9a-f]{2}){3}$/);
    assert.equal(vm.running, true);
    // The stand-in initramfs (this image's own) until netroot's init boots the image itself.
    await lab.cli("node", "config", "vm1", "initramfs=image");
    const before = await lastEventId(lab, vm.mac);
    const reboot = JSON.parse((await lab.cli("node", "reboot", "vm1", "--json")).stdout);
    assert.equal(reboot.ok, true, JSON.stringify(reboot));
    assert.equal(reboot.mechanism, "qemu");
    const consoleAt = (await lab.console(vm.mac)).length;

    await lab.waitConsole(vm.mac, /KERNEL-STARTED/, bootTimeoutMs, { from: consoleAt });
    await lab.waitEvent(vm.mac, "vnode.exit", 60_000, before); // the stand-in powered off
    const out = (await lab.console(vm.mac)).slice(consoleAt);
    assert.match(out, new RegExp(`KERNEL-STARTED kv=${image.kv}`));
    assert.match(out, /iPXE/); // SeaBIOS and iPXE print on the serial console too
    assert.match(out, /E2E-INITRD pci:.*1af4:1001/); // the template disk is attached (virtio-blk)
    const kinds = await kindsSince(lab, vm.mac, before);
    lab.log(`timeline: ${kinds.join(" → ")}`);
    assertInOrder(kinds, [
      "vnode.reset",
      "dhcp.ack",
      "http.script",
      "http.kernel",
      "http.initramfs",
      "vnode.exit",
    ]);
    // The only DHCP server in the namespace is netroot's (no dnsmasq; qemu's slirp is not used).
    const udp = (await lab.run(["ss", "-H", "-l", "-u", "-n", "-p"])).stdout;
    const dhcpListeners = udp.split("\n").filter((l) => /:67\s/.test(l));
    assert.ok(dhcpListeners.length > 0 && dhcpListeners.every((l) => /"deno"/.test(l)), udp);
    const ack = (await lab.events(vm.mac)).find((e) => e.id > before && e.kind === "dhcp.ack")!;
    assert.match(String(ack.detail.ip), /^10\.77\.0\.(1[0-4]\d|150)$/);

    // vnode ls: stopped after the poweroff; console through the API/CLI.
    const ls = JSON.parse((await lab.cli("vnode", "ls", "--json")).stdout);
    assert.deepEqual(ls.map((v: { name: string; running: boolean }) => [v.name, v.running]), [[
      "vm1",
      false,
    ]]);
    assert.equal(ls[0].disks[0].template, "hybrid-boot-v");
    const printed = (await lab.cli("node", "console", "vm1")).stdout;
    assert.match(printed, /KERNEL-STARTED/);

    // Reboot of a powered-off vnode starts its qemu again.
    let mark = await lastEventId(lab, vm.mac);
    let at = (await lab.console(vm.mac)).length;
    await lab.cli("node", "reboot", "vm1");
    await lab.waitConsole(vm.mac, /KERNEL-STARTED/, bootTimeoutMs, { from: at });
    assertInOrder(await kindsSince(lab, vm.mac, mark), [
      "vnode.start",
      "dhcp.ack",
      "http.kernel",
    ]);
    await lab.waitEvent(vm.mac, "vnode.exit", 60_000, mark);

    // A server restart starts every vnode again (powered off or not), on the same disks.
    mark = await lastEventId(lab, vm.mac);
    at = (await lab.console(vm.mac)).length;
    const diskStat = await Deno.stat(join(lab.data, "nodes", vm.mac, "vm", "disk0.img"));
    await lab.restartServer();
    // The API answers before the server has started its vnodes: wait for this one.
    await lab.waitEvent(vm.mac, "vnode.start", 60_000, mark);
    const diskAfter = await Deno.stat(join(lab.data, "nodes", vm.mac, "vm", "disk0.img"));
    assert.equal(diskAfter.ino, diskStat.ino, "unchanged disk spec: the disk persists");

    // While it boots: a settings change applies at the next reboot, which restarts qemu with it.
    await lab.cli("node", "config", "vm1", "cpus=2");
    mark = await lastEventId(lab, vm.mac);
    at = (await lab.console(vm.mac)).length;
    await lab.cli("node", "reboot", "vm1");
    const two = await lab.waitConsole(vm.mac, /KERNEL-STARTED/, bootTimeoutMs, { from: at });
    assert.match(two, /Brought up 1 node, 2 CPUs/);
    const restart = (await lab.events(vm.mac)).filter((e) => e.id > mark);
    assert.ok(
      restart.some((e) =>
        e.kind === "vnode.stop" && e.detail.cause === "restart with new settings"
      ),
    );
    assert.equal(restart.find((e) => e.kind === "vnode.start")?.detail.cpus, 2);

    // A server that crashes leaves its qemu running; the next start replaces it with a fresh one.
    await lab.waitEvent(vm.mac, "vnode.exit", 60_000, mark);
    await lab.cli("node", "reboot", "vm1"); // powered off: starts a qemu
    const pidFile = join(lab.data, "nodes", vm.mac, "vm", "qemu.pid");
    const stalePid = Number(await Deno.readTextFile(pidFile));
    mark = await lastEventId(lab, vm.mac);
    await lab.restartServer({ crash: true });
    const fresh = await lab.waitEvent(vm.mac, "vnode.start", 60_000, mark);
    assert.notEqual(fresh.detail.pid, stalePid);
    await assert.rejects(Deno.stat(`/proc/${stalePid}`), "the stale qemu is gone");
    assert.match(await lab.waitServerLog(/stopping a stale qemu/), new RegExp(`pid=${stalePid}`));

    // vnode rm: qemu stopped, node forgotten, disks deleted.
    await lab.cli("vnode", "rm", "vm1");
    assert.deepEqual(JSON.parse((await lab.cli("vnode", "ls", "--json")).stdout), []);
    await assert.rejects(Deno.stat(join(lab.data, "nodes", vm.mac, "vm")));
    const taps = await lab.run(["ip", "-j", "link", "show", "master", "netroot0"]);
    assert.deepEqual(JSON.parse(taps.stdout || "[]"), []);
  },
);
