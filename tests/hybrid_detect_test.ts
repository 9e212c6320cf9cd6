// Hybrid partition detection on real partitioned disks (loop devices with partition scan; root),
// and the ext superblock parser on real mkfs output.
import assert from "node:assert/strict";
import { parseExtSuperblock } from "../hybrid/ext4.ts";
import { findHybridPartition, listBlockDevices, naturalCompare } from "../hybrid/detect.ts";
import { mountPartition } from "../hybrid/mod.ts";
import { run } from "./support/ext4disk.ts";

function head(file: string): Uint8Array {
  const f = Deno.openSync(file);
  const b = new Uint8Array(4096);
  f.readSync(b);
  f.close();
  return b;
}

Deno.test("ext superblock parser: ext4 / ext2 recognised with label, FAT and zeros are not", async () => {
  const dir = await Deno.makeTempDir();
  try {
    run("truncate", "-s", "16M", `${dir}/a`, `${dir}/b`, `${dir}/c`, `${dir}/d`);
    run("mkfs.ext4", "-q", "-F", "-L", "WALTDATA", `${dir}/a`);
    run("mkfs.ext2", "-q", "-F", `${dir}/b`);
    run("mkfs.vfat", `${dir}/c`);
    const a = parseExtSuperblock(head(`${dir}/a`))!;
    assert.equal(a.kind, "ext4");
    assert.equal(a.label, "WALTDATA");
    assert.equal(a.blocks * a.blockSize, 16 * 1024 * 1024);
    assert.match(a.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-/);
    assert.equal(parseExtSuperblock(head(`${dir}/b`))!.kind, "ext2");
    assert.equal(parseExtSuperblock(head(`${dir}/c`)), undefined);
    assert.equal(parseExtSuperblock(head(`${dir}/d`)), undefined);
    assert.equal(parseExtSuperblock(new Uint8Array(100)), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("natural device order", () => {
  assert.deepEqual(
    ["vdb1", "sda10", "sda2", "mmcblk0p2", "sda1", "vda1"].sort(naturalCompare),
    ["mmcblk0p2", "sda1", "sda2", "sda10", "vda1", "vdb1"],
  );
});

/** Loop devices as stand-ins for a disk's partitions: this host's kernel does not scan partitions
 *  on loop devices, so a sysfs-like tree maps vda, vda1… onto real loop block devices. The init
 *  reads the same files (`dev`, `partition`) in the real /sys/class/block inside qemu (e2e). */
function fakeDisk(dir: string, images: string[]) {
  const loops = images.map((img) => run("losetup", "-f", "--show", img));
  const sys = `${dir}/sys`;
  const majmin = (l: string) => run("cat", `/sys/class/block/${l.replace("/dev/", "")}/dev`);
  Deno.mkdirSync(`${sys}/vda`, { recursive: true });
  Deno.writeTextFileSync(`${sys}/vda/dev`, majmin(loops[0]) + "\n"); // the whole disk: never a candidate
  loops.forEach((l, i) => {
    Deno.mkdirSync(`${sys}/vda${i + 1}`);
    Deno.writeTextFileSync(`${sys}/vda${i + 1}/dev`, majmin(l) + "\n");
    Deno.writeTextFileSync(`${sys}/vda${i + 1}/partition`, `${i + 1}\n`);
  });
  return { loops, sys };
}

/** Detection's deps on the fake disk: the init's own mount (mountPartition), `mounted` kept up to
 *  date for the test's cleanup. */
function diskDeps(dir: string, devDir: string, sys: string, mounted: string[]) {
  return {
    mount: (dev: string, mnt: string, readOnly: boolean) => {
      mountPartition(dev, mnt, readOnly);
      mounted.push(mnt);
      return Promise.resolve();
    },
    umount: (mnt: string) => {
      run("umount", mnt);
      mounted.splice(mounted.indexOf(mnt), 1);
      return Promise.resolve();
    },
    mountBase: `${dir}/mnt`,
    devDir,
    sysClassBlock: sys,
  };
}

/** `n` partition images of 16 MiB filled by `prepare`, as vda1…vdaN (fakeDisk), with detection's
 *  deps on them; afterwards everything unmounted, detached and removed. */
async function withFakeDisk(
  n: number,
  prepare: (dir: string, imgs: string[]) => Promise<void> | void,
  body: (d: {
    dir: string;
    devDir: string;
    sys: string;
    loops: string[];
    mounted: string[];
    deps: ReturnType<typeof diskDeps>;
  }) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "netroot-detect-" });
  let loops: string[] = [];
  const mounted: string[] = [];
  try {
    const devDir = `${dir}/dev`;
    await Deno.mkdir(devDir);
    const imgs = Array.from({ length: n }, (_, i) => `${dir}/p${i + 1}.img`);
    run("truncate", "-s", "16M", ...imgs);
    await prepare(dir, imgs);
    const disk = fakeDisk(dir, imgs);
    loops = disk.loops;
    const deps = diskDeps(dir, devDir, disk.sys, mounted);
    await body({ dir, devDir, sys: disk.sys, loops, mounted, deps });
  } finally {
    for (const m of mounted) run("umount", m);
    for (const l of loops) run("losetup", "-d", l);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("hybrid detect (root, real block devices): FAT + plain ext4 skipped, walt_hybrid found, .persistent read; walt-hybrid wins over walt_hybrid", async () => {
  await withFakeDisk(3, async (dir, imgs) => {
    run("mkfs.vfat", imgs[0]);
    for (const [i, d] of [[1, "other"], [2, "walt_hybrid"]] as const) {
      await Deno.mkdir(`${dir}/stage${i}/${d}`, { recursive: true });
      if (i === 2) await Deno.writeTextFile(`${dir}/stage${i}/${d}/.persistent`, "");
      run("mkfs.ext4", "-q", "-F", "-d", `${dir}/stage${i}`, imgs[i]);
    }
  }, async ({ dir, devDir, sys, mounted, deps }) => {
    assert.deepEqual(listBlockDevices(sys).map((d) => d.name), ["vda1", "vda2", "vda3"]);
    const t = await findHybridPartition(deps);
    assert.ok(t);
    assert.equal(t.device, `${devDir}/vda3`, "device node made from sysfs major:minor");
    assert.equal(t.dirName, "walt_hybrid");
    assert.equal(t.persistent, true);
    assert.deepEqual(mounted, [t.mountpoint], "non-matching candidates are unmounted");
    await deps.umount(t.mountpoint);
    // Both names on one (earlier) partition: it wins by order, and the spec's walt-hybrid wins.
    await Deno.mkdir(`${dir}/stage3/walt-hybrid`, { recursive: true });
    await Deno.mkdir(`${dir}/stage3/walt_hybrid`, { recursive: true });
    run("mkfs.ext4", "-q", "-F", "-d", `${dir}/stage3`, `${devDir}/vda2`);
    const t2 = await findHybridPartition(deps);
    assert.equal(t2?.device, `${devDir}/vda2`);
    assert.equal(t2?.dirName, "walt-hybrid");
    assert.equal(t2?.persistent, false);
  });
});

Deno.test("hybrid detect: no candidate → undefined (network mode)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const t = await findHybridPartition({
      mount: () => Promise.reject(new Error("unused")),
      umount: () => Promise.resolve(),
      mountBase: dir,
      skip: /.*/,
    });
    assert.equal(t, undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hybrid detect (root, hostile disk): a walt-hybrid symlink is not the hybrid dir (it pointed the copy at the initramfs)", async () => {
  await withFakeDisk(2, async (dir, imgs) => {
    // vda1: only a link (to the init's own root); vda2: the link beside WalT's real directory
    await Deno.mkdir(`${dir}/stage1`);
    Deno.symlinkSync("/", `${dir}/stage1/walt-hybrid`);
    await Deno.mkdir(`${dir}/stage2/walt_hybrid`, { recursive: true });
    Deno.symlinkSync("/", `${dir}/stage2/walt-hybrid`);
    for (const i of [1, 2]) run("mkfs.ext4", "-q", "-F", "-d", `${dir}/stage${i}`, imgs[i - 1]);
  }, async ({ devDir, deps }) => {
    const t = await findHybridPartition(deps);
    assert.equal(t?.device, `${devDir}/vda2`);
    assert.equal(t?.dirName, "walt_hybrid");
    assert.ok(Deno.lstatSync(t!.dir).isDirectory);
  });
});

Deno.test("hybrid detect (root, hostile disk): a partition whose superblock says errors=panic is mounted errors=remount-ro", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netroot-detect-" });
  let loop = "";
  try {
    run("truncate", "-s", "16M", `${dir}/p.img`);
    run("mkfs.ext4", "-q", "-F", `${dir}/p.img`);
    run("tune2fs", "-e", "panic", `${dir}/p.img`);
    loop = run("losetup", "-f", "--show", `${dir}/p.img`);
    await Deno.mkdir(`${dir}/mnt`);
    mountPartition(loop, `${dir}/mnt`);
    try {
      const line = Deno.readTextFileSync("/proc/self/mounts").split("\n")
        .find((l) => l.split(" ")[1] === `${dir}/mnt`);
      assert.match(line ?? "", /[ ,]errors=remount-ro[ ,]/);
    } finally {
      run("umount", `${dir}/mnt`);
    }
  } finally {
    if (loop) run("losetup", "-d", loop);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hybrid detect (root): a partition that is not the hybrid one is looked at read-only, left as it was", async () => {
  await withFakeDisk(2, async (dir, imgs) => {
    run("mkfs.ext4", "-q", "-F", imgs[0]); // a user's data
    await Deno.mkdir(`${dir}/stage/walt-hybrid`, { recursive: true });
    run("mkfs.ext4", "-q", "-F", "-d", `${dir}/stage`, imgs[1]);
  }, async ({ devDir, loops, deps }) => {
    const mountCount = (dev: string) =>
      run("dumpe2fs", "-h", dev).match(/^Mount count:\s*(\d+)/m)?.[1];
    const t = await findHybridPartition(deps);
    assert.equal(t?.device, `${devDir}/vda2`);
    assert.equal(mountCount(loops[0]), "0", "the data partition: never mounted read-write");
    const opts = Deno.readTextFileSync("/proc/self/mounts").split("\n")
      .find((l) => l.split(" ")[1] === t!.mountpoint)?.split(" ")[3];
    assert.match(opts ?? "", /^rw,/, "the hybrid one: read-write for the copy");
  });
});

Deno.test("hybrid detect (root, hostile disk): a walt-hybrid partition that mounts read-only but not read-write is skipped, not a fatal init failure", async () => {
  const logs: string[] = [];
  await withFakeDisk(2, async (dir, imgs) => {
    // vda1: walt-hybrid/ on an ext4 whose superblock claims a read-only-compatible feature no
    // kernel knows (bit 31 of s_feature_ro_compat, byte 1024 + 0x67): the kernel mounts it
    // read-only, and refuses it read-write. vda2: a good hybrid partition.
    for (const i of [0, 1]) {
      await Deno.mkdir(`${dir}/stage${i}/walt-hybrid`, { recursive: true });
      run("mkfs.ext4", "-q", "-F", "-O", "^metadata_csum", "-d", `${dir}/stage${i}`, imgs[i]);
    }
    const f = Deno.openSync(imgs[0], { read: true, write: true });
    const b = new Uint8Array(1);
    f.seekSync(1024 + 0x67, Deno.SeekMode.Start);
    f.readSync(b);
    f.seekSync(1024 + 0x67, Deno.SeekMode.Start);
    f.writeSync(Uint8Array.of(b[0] | 0x80));
    f.close();
  }, async ({ devDir, deps, mounted }) => {
    const t = await findHybridPartition({ ...deps, log: (m) => logs.push(m) });
    assert.equal(t?.device, `${devDir}/vda2`, "the next candidate is taken");
    assert.deepEqual(mounted, [t!.mountpoint], "the refused one is left unmounted");
    assert.ok(
      logs.some((l) =>
        l.startsWith(`${devDir}/vda1: holds walt-hybrid/ but cannot mount it read-write`)
      ),
      logs.join("\n"),
    );
  });
});
