// End to end (root, qemu TCG, ganesha): the boot watchdog and the netconsole of one virtual node,
// in one lab (boots are expensive: one vnode goes through all of it).
//   1. The image's kernel is missing (an image tree whose boot file the server cannot serve, then
//      serves again): the node's boot makes no progress, the watchdog (boot.timeout=20)
//      hard-resets it ("retry 1/3"), the kernel is back, and the retry boots to `booted`
//      (`node wait` returns 0). The node has console.netconsole=true: its kernel log, netroot
//      init's lines included, arrive through the kernel's netconsole at the server's UDP
//      receiver, are stored in the node's netconsole log (not the serial console's file) and
//      `node console` shows them. The image's init stays up (the node stays `booted`).
//   2. The same node boots the image's own initrd (initramfs=image), whose /init hangs: the
//      watchdog (boot.timeout=30) resets it boot.retries=2 times ("retry 1/2": the count started over at the
//      booted of step 1), then the node is `failed`, the event naming the last stage reached, and
//      `node wait` names it at once.
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Event } from "../../src/events.ts";
import { buildTestImage } from "../support/testimage.ts";
import { assertInOrder, type Lab, labTest, lastEventId } from "./harness.ts";

/** The image's init: stays up (the test image's own powers off, which would end `booted` at
 *  once). */
const upInit = `#!/bin/sh
echo "E2E-OS IMAGE-UP"
while :; do sleep 3600; done
`;

/** The image's own initrd: says it started, then hangs (no report ever reaches the server). */
const hungInit = `#!/bin/sh
mount -t proc proc /proc
echo "E2E-HUNG-INIT at $(cut -d' ' -f1 /proc/uptime)"
while :; do sleep 3600; done
`;

interface NodeJson {
  name: string;
  mac: string;
  state: string;
  stateReason: string | null;
}

async function waitState(lab: Lab, name: string, state: string, ms: number): Promise<NodeJson> {
  const deadline = Date.now() + ms;
  for (;;) {
    const n = await lab.api<NodeJson>("GET", `/nodes/${name}`);
    if (n.state === state) return n;
    if (Date.now() > deadline) {
      throw new Error(`${name} not ${state} within ${ms} ms: ${n.state} (${n.stateReason})`);
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

const since = (events: Event[], mark: number) => events.filter((e) => e.id > mark);

/** The first reboot the watchdog made after event `mark`. */
async function watchdogReboot(lab: Lab, mac: string, mark: number, ms: number): Promise<Event> {
  const deadline = Date.now() + ms;
  for (;;) {
    const e = since(await lab.events(mac), mark).find((e) =>
      e.kind === "reboot" && String(e.detail.cause).startsWith("watchdog")
    );
    if (e) return e;
    if (Date.now() > deadline) throw new Error(`no watchdog reboot of ${mac} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

labTest(
  "e2e (root, qemu, ganesha): watchdog retries a boot whose kernel is withheld then boots, gives up on a hung init; the kernel log arrives by netconsole",
  async ({ kernel, imageDir, start }) => {
    const img = await buildTestImage(join(imageDir, "v1"), {
      kernel,
      initrd: true,
      initrdInit: hungInit,
    });
    await Deno.writeTextFile(join(img.dir, "sbin/init"), upInit, { mode: 0o755 });
    const lab = await start({ nfs: "ganesha" });
    await lab.cli("image", "import", img.dir, "--name", "v1");
    const image = JSON.parse((await lab.cli("image", "show", "v1", "--json")).stdout) as {
      id: string;
      kernel: string;
    };
    const kernelFile = join(lab.data, "images", image.id, "rootfs", image.kernel);
    const withheld = `${kernelFile}.withheld`;

    // ---- 1. the kernel withheld: the watchdog's retry boots ----
    await Deno.rename(kernelFile, withheld);
    let restored = false;
    try {
      const vm = await lab.createVnode("wd", { image: "v1", ram: "512M" });
      await lab.cli(
        "node",
        "config",
        "wd",
        "boot.timeout=20",
        "boot.probe-port=none", // the test image has no sshd: its init's handover is booted
        "console.netconsole=true",
      );
      // The settings apply from the next iPXE script: reset the boot that started with create.
      let mark = await lastEventId(lab, vm.mac);
      await lab.cli("node", "reboot", "wd", "--hard", "--cause", "e2e: settings");
      const retry = await watchdogReboot(lab, vm.mac, mark, 300_000);
      // The retry's boot is a normal one: a TCG boot needs more than 20 s between reports.
      await Deno.rename(withheld, kernelFile);
      restored = true;
      await lab.cli("node", "config", "wd", "boot.timeout=600");
      lab.log(`watchdog reboot: ${JSON.stringify(retry.detail)}`);
      assert.equal(retry.detail.mechanism, "qemu");
      assert.match(
        String(retry.detail.cause),
        /^watchdog: no progress for 20 s \(last stage: boot script fetched, no report from the init\), retry [12]\/3$/, // 2 if the create boot expired first
      );
      await waitState(lab, "wd", "booted", 400_000);
      const wait = await lab.cli("node", "wait", "wd", "--timeout", "5");
      assert.equal(wait.code, 0);
      await lab.waitConsole(vm.mac, /E2E-OS IMAGE-UP/, 60_000);
      const events = since(await lab.events(vm.mac), mark);
      const kinds = events.map((e) => e.kind);
      lab.log(`withheld-kernel timeline: ${kinds.join(" → ")}`);
      assertInOrder(kinds, [
        "http.script",
        "http.kernel.error",
        "reboot",
        "http.script",
        "http.kernel",
        "http.initramfs",
        "init.handover",
        "node.state",
      ]);
      const booted = events.find((e) => e.kind === "node.state" && e.detail.to === "booted");
      assert.match(String(booted?.detail.reason), /handover reported/);

      // The kernel log by netconsole: a line only the kernel prints, and netroot init's own
      // lines, in the node's netconsole log — the receiver's file, not qemu's serial one.
      const ncLog = join(lab.data, "nodes", vm.mac, "console", "netconsole.log");
      const deadline = Date.now() + 60_000;
      let nc = "";
      while (!/netroot-init: handover/.test(nc) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 1000));
        nc = await Deno.readTextFile(ncLog).catch(() => "");
      }
      assert.match(nc, /Linux version \d+\.\d+\.\d+-\d+-amd64 /, "the kernel's banner");
      assert.match(
        nc,
        /netroot-init: netconsole: kernel log to \d+@10\.77\.0\.1\/[0-9a-f:]{17} via /,
      );
      assert.match(nc, /netroot-init: network: /);
      assert.match(nc, /netroot-init: handover/);
      assert.ok(!nc.includes("\x1b"), "no escape sequences stored");
      assert.notEqual(ncLog, lab.consolePath(vm.mac));
      const shown = await lab.cli("node", "console", "wd", "--json");
      const answer = JSON.parse(shown.stdout.trim().split("\n")[0]);
      assert.equal(answer.source, "netconsole");
      assert.match(answer.text, /Linux version /);
      const serial = JSON.parse(
        (await lab.cli("node", "console", "wd", "--source", "serial", "--json")).stdout.trim()
          .split("\n")[0],
      );
      assert.equal(serial.source, "serial");
      assert.match(serial.text, /iPXE/, "the serial console has the firmware, netconsole cannot");
      assert.doesNotMatch(nc, /iPXE/);
      lab.log(`netconsole log: ${nc.length} bytes, ${nc.split("\n").length} lines`);

      // ---- 2. the image's own initrd hangs: retries, then failed ----
      await lab.cli(
        "node",
        "config",
        "wd",
        "initramfs=image",
        "boot.timeout=30",
        "boot.retries=2",
      );
      mark = await lastEventId(lab, vm.mac);
      const at = (await lab.console(vm.mac)).length;
      await lab.cli("node", "reboot", "wd", "--hard", "--cause", "e2e: hung init");
      const failed = await waitState(lab, "wd", "failed", 600_000);
      lab.log(`failed: ${failed.stateReason}`);
      assert.match(
        failed.stateReason!,
        /^watchdog: gave up after 2 reboots; last stage: boot script fetched, no report from the init$/,
      );
      const hung = (await lab.console(vm.mac)).slice(at).match(/E2E-HUNG-INIT at/g)?.length ?? 0;
      lab.log(`${hung} boots reached the hung init before their reset`);
      assert.ok(hung >= 1, "the image's init ran and hung");
      const later = since(await lab.events(vm.mac), mark);
      assert.equal(later.filter((e) => e.kind === "http.script").length, 3, "three boots");
      assert.ok(!later.some((e) => e.kind === "vnode.exit"), "reset, never powered off");
      lab.log(`hung-init timeline: ${later.map((e) => e.kind).join(" → ")}`);
      const causes = later.filter((e) => e.kind === "reboot").map((e) => String(e.detail.cause))
        .filter((c) => c.startsWith("watchdog"));
      assert.deepEqual(
        causes.map((c) => c.replace(/ \(last stage: .*\)/, "")),
        ["watchdog: no progress for 30 s, retry 1/2", "watchdog: no progress for 30 s, retry 2/2"],
      );
      const last = later.filter((e) => e.kind === "node.state").at(-1)!;
      assert.deepEqual([last.detail.from, last.detail.to], ["booting", "failed"]);
      assert.match(String(last.detail.reason), /last stage: boot script fetched/);
      // `node wait` for booted gives up at once on a failed node and names it.
      const t0 = Date.now();
      const gaveUp = await lab.cli("node", "wait", "wd", "--timeout", "60", { check: false });
      assert.equal(gaveUp.code, 1);
      assert.match(gaveUp.stdout + gaveUp.stderr, /wd.*failed/);
      assert.ok(Date.now() - t0 < 30_000, "node wait did not sit out its timeout");
    } finally {
      if (!restored) await Deno.rename(withheld, kernelFile).catch(() => {});
    }
  },
);
