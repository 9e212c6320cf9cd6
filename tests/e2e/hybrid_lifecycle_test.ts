// End to end (root, qemu TCG, network namespace, nfs-ganesha): the hybrid boot mode's lifecycle on
// real disks, in two virtual nodes that run side by side (4 boots in all; CI has 2 cores):
//
//   hyb-cut   512M[template=hybrid-boot-v]  → WalT's walt_hybrid/ directory
//     boot 1  first copy of a ~355 MB image (335 MB incompressible): qemu killed (SIGKILL) mid-copy,
//             a power cut (the guest's page cache is lost); `node reboot` starts a fresh qemu
//     boot 2  the copy resumes (resumed, bytes kept from image.part after re-hashing), is verified,
//             and the node boots from it
//     boot 3  deploy v2 (one changed file, one new 1 MB file): only the difference is written,
//             everything else is hard-linked from v1's copy; the guest's own block statistics
//             (/sys/block/vda/stat) agree
//   hyb-small 64M[template=hybrid-volatile] → the spec's walt-hybrid/ directory
//     boot 1  the image does not fit: "HYBRID MODE FAILED … needs … MB", init.hybrid-failed, and
//             the node boots in network mode (init.nfs-root) all the same
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import type { StageReport } from "../../contract/report.ts";
import type { Event } from "../../src/events.ts";
import { buildTestImage } from "../support/testimage.ts";
import { assertInOrder, kindsSince, type Lab, labTest, lastEventId } from "./harness.ts";

const bootTimeoutMs = 300_000;
const count = (s: string, re: RegExp) => s.match(new RegExp(re.source, "g"))?.length ?? 0;

/** The fields of the hybrid-ready report (contract/report.ts) these tests read. */
type CopyReport = Required<
  Pick<
    StageReport,
    | "bytesTotal"
    | "bytesWritten"
    | "bytesLinked"
    | "bytesReused"
    | "bytesKept"
    | "resumed"
    | "ms"
    | "evicted"
  >
>;

/** The copy report of the one init.hybrid-ready event after `since`. */
function readyReport(events: Event[]): CopyReport {
  const ready = events.filter((e) => e.kind === "init.hybrid-ready");
  assert.equal(ready.length, 1, `one init.hybrid-ready: ${events.map((e) => e.kind).join(" ")}`);
  return ready[0].detail as unknown as CopyReport; // the report's fields (contract/report.ts)
}

/** Bytes the guest wrote to /dev/vda since it booted, as its image init printed them. */
function vdaWritten(out: string): number {
  const m = /E2E-DISKSTAT vda (.*)/.exec(out);
  assert.ok(m, `no E2E-DISKSTAT line for vda:\n${out.slice(-2000)}`);
  // /sys/block/<dev>/stat: field 7 is sectors written (512 bytes each, whatever the block size).
  return Number(m[1].trim().split(/\s+/)[6]) * 512;
}

/** Wraps the test image's /sbin/init: first print the guest's block-device statistics. */
async function addDiskStats(root: string): Promise<void> {
  await Deno.rename(join(root, "sbin/init"), join(root, "sbin/init.image"));
  await Deno.writeTextFile(
    join(root, "sbin/init"),
    `#!/bin/sh
mount -t proc proc /proc 2>/dev/null; mount -t sysfs sys /sys 2>/dev/null
for d in /sys/block/vd*; do [ -e "$d/stat" ] && echo "E2E-DISKSTAT \${d##*/} $(cat "$d/stat")"; done
exec /sbin/init.image "$@"
`,
    { mode: 0o755 },
  );
  await Deno.chmod(join(root, "sbin/init"), 0o755);
}

function randomBytes(n: number): Uint8Array {
  const buf = new Uint8Array(n);
  // getRandomValues fills at most 64 KiB per call.
  for (let off = 0; off < n; off += 65536) crypto.getRandomValues(buf.subarray(off, off + 65536));
  return buf;
}

/** Incompressible files (random data) that make the first copy take a while under TCG. */
async function addBulk(root: string, files: number, bytes: number): Promise<void> {
  await Deno.mkdir(join(root, "bulk"));
  for (let i = 0; i < files; i++) {
    await Deno.writeFile(
      join(root, "bulk", `blob${String(i).padStart(2, "0")}`),
      randomBytes(bytes),
    );
  }
}

/** `cp -a`: v2 keeps v1's modes and mtimes, so unchanged files have identical manifest entries. */
async function copyTree(from: string, to: string): Promise<void> {
  const out = await new Deno.Command("cp", { args: ["-a", from, to], stderr: "piped" }).output();
  if (!out.success) throw new Error(`cp -a ${from} ${to}: ${new TextDecoder().decode(out.stderr)}`);
}

labTest(
  "e2e (root, qemu): hybrid copy survives a power cut, copies only the difference of a new " +
    "version, falls back to network mode on a small disk; walt_hybrid/ and walt-hybrid/",
  async ({ kernel, imageDir, start }) => {
    const v1 = join(imageDir, "v1"), v2 = join(imageDir, "v2");
    await buildTestImage(v1, { kernel, release: "v1" });
    await addDiskStats(v1);
    await addBulk(v1, 80, 4 << 20);
    await copyTree(v1, v2);
    await Deno.writeTextFile(join(v2, "etc/image-release"), "netroot-test-image v2\n");
    await Deno.writeFile(join(v2, "bulk/added"), randomBytes(1 << 20));
    const lab = await start({ nfs: "ganesha" });
    await lab.cli("image", "import", v1, "--name", "big-v1");
    await lab.cli("image", "import", v2, "--name", "big-v2");
    lab.log("images imported");

    // Both nodes boot as soon as they are created (image set; no reboots: poweroff at the end).
    const cut = await lab.createVnode("hyb-cut", {
      image: "big-v1",
      ram: "512M",
      disks: ["512M[template=hybrid-boot-v]"],
    });
    const small = await lab.createVnode("hyb-small", {
      image: "big-v1",
      ram: "512M",
      disks: ["64M[template=hybrid-volatile]"],
    });
    const smallBoot = checkSmallDisk(lab, small.mac);
    smallBoot.catch(() => {}); // awaited below; a failure must not be unhandled meanwhile

    // hyb-cut, boot 1: power cut in the middle of the first copy, at a progress line ≥ 50 % and
    // ≥ 6 s into the copy. ext4 commits its journal every 5 s: a cut before the first commit after
    // the copy started leaves no image.part, and the copy rightly starts over (not the resume tested
    // here; seen when this test ran alone on a quiet machine, where the 60 % line came 4 s in).
    // The image is large enough (~350 MB) that a quiet machine's copy (~30 MB/s) lasts ~11 s; on a
    // much faster one the cut comes at 92 % at the latest, before the copy can end.
    const qemuPid = await ourQemu(lab, cut.mac);
    let mark = await lastEventId(lab, cut.mac);
    const failOn = /Kernel panic|E2E[^\n]*FAIL|hybrid copy done|HYBRID MODE FAILED/;
    const copying = await lab.waitConsole(cut.mac, /hybrid copy \d+% /, bootTimeoutMs, { failOn });
    const copyStart = performance.now();
    assert.match(copying, /hybrid mode \(volatile\): \/dev\/vda1 holds walt_hybrid\//);
    let pct = 0;
    for (;;) {
      const text = await lab.console(cut.mac);
      if (failOn.test(text)) throw new Error(`hyb-cut's console shows ${failOn} before the cut`);
      pct = Number([...text.matchAll(/hybrid copy (\d+)% /g)].pop()?.[1] ?? 0);
      const ms = performance.now() - copyStart;
      if ((ms >= 6000 && pct >= 50) || pct >= 92) break;
      if (ms > bootTimeoutMs) throw new Error(`hyb-cut's copy at ${pct} % after ${ms} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
    Deno.kill(qemuPid, "SIGKILL");
    lab.log(
      `hyb-cut: power cut at ${pct} % of the first copy, ` +
        `${((performance.now() - copyStart) / 1000).toFixed(1)} s after its first progress line`,
    );
    const exit = await lab.waitEvent(cut.mac, "vnode.exit", 30_000, mark);
    assert.equal(exit.detail.signal, "SIGKILL");
    mark = await lastEventId(lab, cut.mac);
    let at = (await lab.console(cut.mac)).length;
    await lab.cli("node", "reboot", "hyb-cut"); // a stopped vnode: a fresh qemu
    const cutKinds = (await lab.events(cut.mac)).map((e) => e.kind);
    assert.ok(cutKinds.includes("init.hybrid-copy"), "the copy's progress before the power cut");
    assert.ok(
      !cutKinds.some((k, i) => k === "init.hybrid-copy" && cutKinds[i + 1] === k),
      `progress is one row that updates: ${cutKinds.join(" ")}`,
    );
    assert.ok(!(await lab.events(cut.mac)).some((e) => e.kind === "init.hybrid-ready"));

    // Boot 2: resumes, verifies, boots.
    let out = await lab.waitConsole(cut.mac, /IMAGE-BOOT-OK/, bootTimeoutMs, { from: at });
    await lab.waitEvent(cut.mac, "vnode.exit", 60_000, mark);
    let events = (await lab.events(cut.mac)).filter((e) => e.id > mark);
    const resumed = readyReport(events);
    lab.log(`hyb-cut boot 2 (resumed): ${JSON.stringify(resumed)}`);
    assert.match(out, /hybrid mode \(volatile\): \/dev\/vda1 holds walt_hybrid\//);
    assert.match(out, /netroot-test-image v1/);
    assert.equal(resumed.resumed, true);
    // ≥ 50 % (178 MB) was reported before the cut. The copy checkpoints (syncfs) every 256 MiB or
    // 30 s, so what survived the cut is what the guest kernel's writeback had flushed (22.8–46 MB
    // seen): no fixed amount. What must hold: the resumed copy re-hashed it (resumed, below) and
    // every byte is either kept or written again.
    lab.log(`hyb-cut: ${resumed.bytesReused} bytes kept from image.part`);
    assert.ok(resumed.bytesWritten > 0, "the rest was copied");
    assert.equal(resumed.bytesLinked, 0);
    assert.equal(
      resumed.bytesWritten + resumed.bytesReused,
      resumed.bytesTotal,
      "every byte accounted for",
    );
    assert.ok(resumed.bytesTotal > 335e6, `image of ${resumed.bytesTotal} bytes`);
    assertInOrder(events.map((e) => e.kind), [
      "vnode.start",
      "init.hybrid-ready",
      "init.handover",
      "vnode.exit",
    ]);
    assert.ok(!events.some((e) => e.kind === "init.nfs-root" || e.kind === "init.hybrid-failed"));
    // The guest wrote at least what the report says it copied (the kept part was only read).
    const written2 = vdaWritten(out);
    assert.ok(written2 >= resumed.bytesWritten, `${written2} ≥ ${resumed.bytesWritten}`);

    // Boot 3: a new version of the image, re-deployed in place over v1's copy: only the
    // difference is written.
    mark = await lastEventId(lab, cut.mac);
    at = (await lab.console(cut.mac)).length;
    await lab.cli("deploy", "hyb-cut", "big-v2");
    out = await lab.waitConsole(cut.mac, /IMAGE-BOOT-OK/, bootTimeoutMs, { from: at });
    await lab.waitEvent(cut.mac, "vnode.exit", 60_000, mark);
    events = (await lab.events(cut.mac)).filter((e) => e.id > mark);
    const delta = readyReport(events);
    lab.log(`hyb-cut boot 3 (v2): ${JSON.stringify(delta)}`);
    assert.match(out, /netroot-test-image v2/);
    assert.equal(delta.resumed, false);
    assert.equal(delta.evicted, 0, "v1's copy was not evicted: it became v2's");
    // Changed: etc/image-release (22 bytes) and the new 1 MB file; all else is linked.
    assert.ok(delta.bytesWritten >= 1 << 20, `${delta.bytesWritten} bytes written`);
    assert.ok(delta.bytesWritten < (1 << 20) + 4096, `${delta.bytesWritten} bytes written`);
    assert.equal(delta.bytesKept + delta.bytesWritten, delta.bytesTotal);
    assert.equal(delta.bytesLinked, 0);
    assert.ok(delta.bytesTotal > resumed.bytesTotal);
    // The guest's block device agrees: a few MB (data, inodes, journal), not the image again.
    const written3 = vdaWritten(out);
    lab.log(`vda written: boot 2 ${mb(written2)} MB, boot 3 ${mb(written3)} MB`);
    assert.ok(written3 < 0.1 * delta.bytesTotal, `${written3} bytes written to vda`);
    assert.ok(written3 * 10 < written2);

    await smallBoot;
  },
);

const mb = (n: number) => (n / 1e6).toFixed(1);

/** The PID of the node's qemu (started by the lab's server: its command line names the VM dir). */
async function ourQemu(lab: Lab, mac: string): Promise<number> {
  const vm = dirname(lab.consolePath(mac));
  const pid = Number((await Deno.readTextFile(join(vm, "qemu.pid"))).trim());
  const cmdline = await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() => "");
  assert.ok(pid > 1 && cmdline.includes(vm), `qemu.pid ${pid} is not this node's qemu`);
  return pid;
}

/** hyb-small: the image does not fit its 64 MB disk; the node boots in network mode. */
async function checkSmallDisk(lab: Lab, mac: string): Promise<void> {
  const out = await lab.waitConsole(mac, /IMAGE-BOOT-OK/, bootTimeoutMs);
  await lab.waitEvent(mac, "vnode.exit", 60_000);
  assert.match(out, /hybrid mode \(volatile\): \/dev\/vda1 holds walt-hybrid\//);
  assert.match(out, /HYBRID MODE FAILED: the image needs \d+\.\d MB on the hybrid partition, only/);
  assert.match(out, /falling back to network mode/);
  assert.equal(count(out, /hybrid copy \d+%/), 0, "nothing copied");
  const events = await lab.events(mac);
  const failed = events.find((e) => e.kind === "init.hybrid-failed");
  assert.ok(failed);
  assert.equal(failed.detail.reason, "no-space");
  assert.equal(failed.detail.ok, false);
  assertInOrder(await kindsSince(lab, mac), [
    "init.hybrid-failed",
    "init.nfs-root",
    "init.handover",
    "vnode.exit",
  ]);
  assert.ok(!events.some((e) => e.kind === "init.hybrid-ready"));
  lab.log("hyb-small: no room → network mode");
}
