// Virtual node disks built with the real tools (sfdisk, mkfs.ext4, mkfs.vfat, debugfs to inspect).
import assert from "node:assert/strict";
import {
  checkDisk,
  type DiskSpec,
  ensureDisks,
  formatDisk,
  parseDiskSpec,
  parseSize,
  partitionOffset,
} from "../src/vnode/disks.ts";
import { UserError } from "../src/errors.ts";
import { withLoopExt4 } from "./support/ext4disk.ts";

async function sh(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  assert.ok(out.success, `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

Deno.test("disk specs: sizes, templates (WalT's names kept as given), and clear errors", () => {
  assert.deepEqual(parseDiskSpec("8G"), { size: 8e9, template: "none" });
  assert.deepEqual(parseDiskSpec("64M[template=ext4]"), { size: 64e6, template: "ext4" });
  // WalT's template names stay distinct: they create WalT's directory name (walt_hybrid/).
  assert.deepEqual(parseDiskSpec("1T[template=hybrid-boot-v]"), {
    size: 1e12,
    template: "hybrid-boot-v",
  });
  assert.equal(parseDiskSpec("2G[template=hybrid-boot-p]").template, "hybrid-boot-p");
  assert.equal(
    formatDisk(parseDiskSpec("2G[template=hybrid-boot-p]")),
    "2G[template=hybrid-boot-p]",
  );
  assert.equal(parseDiskSpec("2G[template=hybrid-persistent]").template, "hybrid-persistent");
  assert.equal(formatDisk(parseDiskSpec("2G[template=fat32]")), "2G[template=fat32]");
  assert.equal(parseSize("512M"), 512e6);
  for (
    const bad of ["", "8", "8X", "-1G", "0G", "1.5G", "8G[template=zfs]", "8G[size=1]", "8G[x"]
  ) {
    assert.throws(() => parseDiskSpec(bad), UserError, bad);
  }
  assert.throws(
    () => parseDiskSpec("8G[template=zfs]"),
    /unknown disk template zfs.*hybrid-volatile.*hybrid-boot-p/,
  );
  assert.throws(() => parseDiskSpec("10M[template=ext4]"), /needs at least 64M/);
  assert.deepEqual(checkDisk({ size: "1G", template: "hybrid-boot-p" }), {
    size: 1e9,
    template: "hybrid-boot-p",
  });
});

Deno.test("disk templates: partition table, filesystems, walt-hybrid/ and walt_hybrid/ markers, sparse files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-vnode-disks-" });
  try {
    const specs: DiskSpec[] = [
      { size: 8e6, template: "none" },
      { size: 64e6, template: "ext4" },
      { size: 64e6, template: "fat32" },
      { size: 64e6, template: "hybrid-volatile" },
      { size: 1e9, template: "hybrid-persistent" },
      { size: 64e6, template: "hybrid-boot-v" },
      { size: 64e6, template: "hybrid-boot-p" },
    ];
    const paths = await ensureDisks(dir, specs);
    assert.equal(paths.length, 7);
    for (const [i, p] of paths.entries()) {
      const st = await Deno.stat(p);
      assert.equal(st.size, specs[i].size);
      assert.ok(st.blocks! * 512 < 40e6, `disk${i} is sparse (${st.blocks! * 512} bytes used)`);
    }
    // none: nothing written at all.
    assert.equal((await Deno.stat(paths[0])).blocks, 0);
    for (const i of [1, 2, 3, 4, 5, 6]) {
      const part = JSON.parse(await sh("sfdisk", ["-J", paths[i]])).partitiontable.partitions;
      assert.equal(part.length, 1);
      assert.equal(part[0].start, 2048);
      assert.equal(part[0].type, i === 2 ? "c" : "83");
      assert.ok((part[0].start + part[0].size) * 512 <= specs[i].size);
    }
    const at = (p: string) => `${p}?offset=${partitionOffset}`;
    assert.match(await sh("dumpe2fs", ["-h", at(paths[1])]), /Filesystem state:\s+clean/);
    // FAT32 boot sector: filesystem type string at byte 82 of the partition.
    const f = await Deno.open(paths[2]);
    const bs = new Uint8Array(512);
    await f.seek(partitionOffset, Deno.SeekMode.Start);
    await f.read(bs);
    f.close();
    assert.equal(new TextDecoder().decode(bs.subarray(82, 90)), "FAT32   ");
    assert.equal(bs[510] * 256 + bs[511], 0x55aa);
    const vol = await sh("debugfs", ["-R", "ls -l /walt-hybrid", at(paths[3])]);
    assert.doesNotMatch(vol, /\.persistent/);
    assert.match(await sh("debugfs", ["-R", "stat /walt-hybrid", at(paths[3])]), /Type: directory/);
    assert.match(await sh("debugfs", ["-R", "ls -l /walt-hybrid", at(paths[4])]), /\.persistent/);
    // WalT's templates: walt_hybrid/ only (never both names on one partition).
    const rootOf = (i: number) => sh("debugfs", ["-R", "ls /", at(paths[i])]);
    for (const i of [3, 4]) assert.doesNotMatch(await rootOf(i), /walt_hybrid/);
    for (const i of [5, 6]) {
      assert.match(await rootOf(i), /walt_hybrid/);
      assert.doesNotMatch(await rootOf(i), /walt-hybrid/);
    }
    assert.doesNotMatch(
      await sh("debugfs", ["-R", "ls -l /walt_hybrid", at(paths[5])]),
      /\.persistent/,
    );
    assert.match(await sh("debugfs", ["-R", "ls -l /walt_hybrid", at(paths[6])]), /\.persistent/);
    // The filesystem fits the partition (sized from the partition, not the file).
    const blocks = Number(
      /Block count:\s+(\d+)/.exec(await sh("dumpe2fs", ["-h", at(paths[4])]))![1],
    );
    assert.ok(blocks * 4096 <= 1e9 - partitionOffset);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disks persist unless their size or template changes; surplus disks are removed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-vnode-disks-" });
  try {
    const [a, b] = await ensureDisks(dir, [
      { size: 64e6, template: "ext4" },
      { size: 64e6, template: "ext4" },
    ]);
    // Mark disk0's content; an unchanged spec must keep it.
    const mark = async (p: string) => {
      const f = await Deno.open(p, { write: true });
      await f.seek(100, Deno.SeekMode.Start);
      await f.write(new TextEncoder().encode("KEEP"));
      f.close();
    };
    const marked = async (p: string) => {
      const f = await Deno.open(p);
      const buf = new Uint8Array(4);
      await f.seek(100, Deno.SeekMode.Start);
      await f.read(buf);
      f.close();
      return new TextDecoder().decode(buf) === "KEEP";
    };
    await mark(a);
    await mark(b);
    await ensureDisks(dir, [{ size: 64e6, template: "ext4" }, { size: 64e6, template: "ext4" }]);
    assert.ok(await marked(a));
    assert.ok(await marked(b));
    // Template change recreates disk0; size change recreates disk1.
    await ensureDisks(dir, [
      { size: 64e6, template: "hybrid-volatile" },
      { size: 65e6, template: "ext4" },
    ]);
    assert.ok(!(await marked(a)));
    assert.ok(!(await marked(b)));
    assert.equal((await Deno.stat(b)).size, 65e6);
    await ensureDisks(dir, [{ size: 64e6, template: "hybrid-volatile" }]);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names, ["disk0.img", "disk0.json"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vnode disks (root, loop ext4): a power cut after a disk is made keeps it, and what the guest wrote on it", async () => {
  await withLoopExt4(128, async (disk) => {
    const vm = await disk.freshDir("vm");
    const spec = { size: 8 << 20, template: "none" as const };
    const [img] = await ensureDisks(vm, [spec]);
    // The guest writes on its disk, flushed (qemu passes its flushes on).
    const data = new TextEncoder().encode("the guest's data");
    const f = await Deno.open(img, { write: true });
    await f.write(data);
    await f.sync();
    f.close();
    disk.powerCut();
    disk.powerOn();
    // The next start must take the disk as it is, not make it again from its template.
    assert.deepEqual(await ensureDisks(vm, [spec]), [img]);
    const got = (await Deno.readFile(img)).subarray(0, data.length);
    assert.equal(new TextDecoder().decode(got), "the guest's data");
  });
});
