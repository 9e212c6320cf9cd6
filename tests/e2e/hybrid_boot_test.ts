// End to end (root, qemu TCG, network namespace, nfs-ganesha): vnodes with hybrid disk templates
// boot the test image twice each (the image's init reboots once: kernel.cmdline e2e.reboots=2).
// The netroot init finds the template's walt-hybrid/ partition, copies the image on the first boot
// only, and keeps (persistent) or resets (volatile) the root's upper layer across the reboot.
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Event } from "../../src/events.ts";
import { buildTestImage } from "../support/testimage.ts";
import { labTest, lastEventId } from "./harness.ts";

const count = (s: string, re: RegExp) => s.match(new RegExp(re.source, "g"))?.length ?? 0;

labTest(
  "e2e: hybrid-volatile and hybrid-persistent disk templates boot twice from the local copy",
  async ({ kernel, imageDir, start }) => {
    const image = await buildTestImage(join(imageDir, "rootfs"), { kernel, release: "v1" });
    const lab = await start({ nfs: "ganesha" });
    await lab.cli("image", "import", image.dir, "--name", "test");
    const vms = await Promise.all(
      (["volatile", "persistent"] as const).map(async (mode) => {
        const name = `hyb-${mode.slice(0, 3)}`;
        const vm = await lab.createVnode(name, {
          image: "test",
          ram: "512M",
          disks: [`256M[template=hybrid-boot-${mode[0]}]`],
        });
        // Boot (again) with the reboot count on the command line.
        await lab.cli("node", "config", name, "kernel.cmdline=e2e.reboots=2");
        const mark = await lastEventId(lab, vm.mac);
        const at = (await lab.console(vm.mac)).length;
        await lab.cli("node", "reboot", name);
        await lab.waitConsole(vm.mac, /IMAGE-BOOT-OK[\s\S]*IMAGE-BOOT-OK/, 360_000, {
          from: at,
        });
        await lab.waitEvent(vm.mac, "vnode.exit", 60_000, mark);
        const events = (await lab.events(vm.mac)).filter((e) => e.id > mark);
        return { mode, vm, out: (await lab.console(vm.mac)).slice(at), events };
      }),
    );
    for (const { mode, vm, out, events } of vms) {
      lab.log(`${mode}: ${events.map((e) => e.kind).join(" → ")}`);
      assert.equal(count(out, new RegExp(`hybrid mode \\(${mode}\\)`)), 2, out);
      const ready = events.filter((e: Event) => e.kind === "init.hybrid-ready");
      assert.equal(ready.length, 2);
      // The report's fields are the event's own (contract/report.ts), not JSON inside a string.
      assert.ok(Number(ready[0].detail.bytesWritten) > 0, "first boot copies the image");
      assert.equal(ready[1].detail.bytesWritten, 0, "second boot copies nothing");
      // The copy's progress is one row that the reports update, with numbers a human can read.
      const kinds = events.map((e) => e.kind);
      const copies = events.filter((e) => e.kind === "init.hybrid-copy");
      assert.ok(copies.length >= 1, kinds.join(" "));
      assert.ok(
        !kinds.some((k, i) => k === "init.hybrid-copy" && kinds[i + 1] === k),
        `progress rows follow each other: ${kinds.join(" ")}`,
      );
      for (const c of copies) {
        assert.equal(typeof c.detail.done, "number", JSON.stringify(c.detail));
        assert.equal(c.detail.done, c.detail.total, "the row left is the last report: 100 %");
      }
      assert.equal(
        (await Deno.readTextFile(join(lab.data, "nodes", vm.mac, "persist", "bootcount"))).trim(),
        "2",
      );
      // The init changed the kernel's writeback for the copy: the image gets the kernel's own.
      assert.equal(count(out, /background writeback from 16 MiB .*\(was 10 % of memory\)/), 2, out);
      assert.equal(count(out, /writeback=0\/10\b/), 2, out);
      // The local copy cannot be written from the image (its partition's mount is read-only).
      assert.equal(count(out, /local-disk=ro\b/), 2, out);
      assert.equal(count(out, /local-disk=rw\b/), 0, out);
      // The root's upper layer: reset each boot (volatile) or kept (persistent).
      if (mode === "volatile") assert.equal(count(out, /previous-boot-marker=none/), 2);
      else {
        assert.equal(count(out, /previous-boot-marker=none/), 1);
        assert.equal(count(out, /previous-boot-marker=boot at/), 1);
      }
    }
  },
);
