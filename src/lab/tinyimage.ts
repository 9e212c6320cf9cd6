// A tiny bootable OS image (what `netroot demo` and the boot tests boot): a static busybox root
// whose /sbin/init prints markers on the console, the Debian kernel (kernel.ts) with its modules
// pruned to what network and hybrid boots need, and (optionally) a stand-in initramfs that only
// proves the kernel started. busybox-static is downloaded once into `<cache>/busybox/`.
//
// /sbin/init (the image's own init, after netroot's initramfs hands over):
//   E2E-OS[<uptime>] image init started: netroot-test-image <release>
//   E2E-OS[…] previous-boot-marker=none | boot at <uptime>   (a file in the root: survives a
//             reboot only if the root's upper layer does)
//   E2E-OS[…] bootcount=N        (/persist/bootcount when /persist is mounted, else 0)
//   E2E-OS[…] writeback=<vm.dirty_background_bytes>/<…_ratio>   (as the netroot init left them)
//   E2E-OS[…] local-disk=ro|rw   (each partition the init left mounted under /run/netroot/disks/)
//   E2E-OS[…] IMAGE-BOOT-OK
//   then `reboot -f` while bootcount < e2e.reboots=N (kernel command line), else `poweroff -f`.
// Stand-in /boot/initrd.img-<kv> (initrd: true): prints `E2E-INITRD KERNEL-STARTED kv=<kv>` and
// its command line and PCI devices, then powers off.
import { oncePerKey } from "../once.ts";
import { dirname, join } from "node:path";
import type { DebianKernel } from "./kernel.ts";
import { runText as text, runTool as sh } from "./run.ts";

/** Modules a netroot boot needs (virtio NIC and disk, e1000, NFS, overlay, ext4, vfat), and
 *  netconsole (node setting console.netconsole=true). */
export const bootModules = [
  "virtio_pci",
  "virtio_net",
  "virtio_blk",
  "e1000",
  "nfsv4",
  "nfsv3",
  "overlay",
  "ext4",
  "vfat",
  "netconsole",
];

const busyboxIn = oncePerKey(fetchBusybox);

/** Debian architectures a tiny image is built for: the server's, or arm64 (aarch64 nodes). */
export type ImageArch = "amd64" | "arm64";

/** A statically linked busybox from the busybox-static .deb, extracted once under `cacheDir`
 *  (`busybox/`, `busybox-arm64/`). (/bin/busybox on a host may be the dynamic one from package
 *  busybox: never use it.) */
export function staticBusybox(cacheDir: string, arch: ImageArch = "amd64"): Promise<string> {
  return busyboxIn(join(cacheDir, arch === "amd64" ? "busybox" : `busybox-${arch}`));
}

/** `apt-get download PKG` into a temp dir under `dir`, unpacked: calls `use` with the tree. */
async function withDeb<T>(dir: string, pkg: string, use: (tree: string) => Promise<T>) {
  await Deno.mkdir(dir, { recursive: true });
  const work = await Deno.makeTempDir({ dir, prefix: ".tmp-" });
  try {
    await sh("apt-get", ["download", pkg], { cwd: work });
    const deb = [...Deno.readDirSync(work)].find((e) => e.name.endsWith(".deb"));
    if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb`);
    await sh("dpkg-deb", ["-x", join(work, deb.name), join(work, "x")]);
    return await use(join(work, "x"));
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

async function fetchBusybox(dir: string): Promise<string> {
  const target = join(dir, "busybox");
  try {
    await Deno.stat(target);
    return target;
  } catch { /* fetch it */ }
  const arch = dir.endsWith("-arm64") ? ":arm64" : "";
  await withDeb(dir, `busybox-static${arch}`, async (x) => {
    const bb = join(x, "bin", "busybox");
    const kind = await text("file", ["-b", bb]);
    if (!/statically linked|static-pie/.test(kind)) {
      throw new Error(`busybox-static is not static: ${kind}`);
    }
    // Rename into place: parallel tests see no busybox or a complete one.
    await Deno.rename(bb, target).catch(async (e) => {
      if (!(await Deno.stat(target).then(() => true, () => false))) throw e;
    });
  });
  return target;
}

const glibcIn = oncePerKey(fetchGlibc);

/** The C library of an arm64 image (what an aarch64 node's Deno runtime links against: the
 *  initramfs builder takes an aarch64 node's libraries from its image): libc6 and libgcc-s1,
 *  unpacked once into `<cacheDir>/glibc-arm64/`. */
export function arm64Glibc(cacheDir: string): Promise<string> {
  return glibcIn(join(cacheDir, "glibc-arm64"));
}

async function fetchGlibc(dir: string): Promise<string> {
  const tree = join(dir, "root");
  if (await Deno.stat(join(tree, "lib", "ld-linux-aarch64.so.1")).then(() => true, () => false)) {
    return tree;
  }
  await Deno.mkdir(dir, { recursive: true });
  const work = await Deno.makeTempDir({ dir, prefix: ".tree-" });
  try {
    for (const pkg of ["libc6:arm64", "libgcc-s1:arm64"]) {
      await withDeb(dir, pkg, (x) => sh("cp", ["-a", `${x}/.`, work]));
    }
    await Deno.remove(join(work, "usr", "share"), { recursive: true }).catch(() => {});
    await Deno.rename(work, tree).catch(async (e) => {
      if (!(await Deno.stat(tree).then(() => true, () => false))) throw e;
    });
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  return tree;
}

/** Directories and busybox applet links (skipping `busybox` itself: a self-link loops, ELOOP). */
export async function busyboxTree(
  root: string,
  cacheDir: string,
  arch: ImageArch = "amd64",
): Promise<void> {
  const bb = await staticBusybox(cacheDir, arch);
  for (
    const d of [
      "bin",
      "sbin",
      "etc",
      "proc",
      "sys",
      "dev",
      "tmp",
      "run",
      "persist",
      "root",
      "var",
      "mnt",
      "newroot",
      "usr/share/udhcpc",
      "boot",
    ]
  ) {
    await Deno.mkdir(join(root, d), { recursive: true });
  }
  await Deno.copyFile(bb, join(root, "bin/busybox"));
  await Deno.chmod(join(root, "bin/busybox"), 0o755);
  // An arm64 busybox lists its applets under qemu's user-mode emulator (Debian qemu-user).
  const list = arch === "amd64"
    ? await text(bb, ["--list"])
    : await text("qemu-aarch64", [bb, "--list"]);
  for (const a of list.split("\n").filter(Boolean)) {
    if (a !== "busybox") await Deno.symlink("busybox", join(root, "bin", a)).catch(() => {});
  }
}

const imageInit = `#!/bin/sh
# netroot test image init: console markers, boot counter, reboot or poweroff on command.
mount -t proc proc /proc 2>/dev/null; mount -t sysfs sys /sys 2>/dev/null
t() { echo "E2E-OS[$(cut -d' ' -f1 /proc/uptime)] $*"; }
t "image init started: $(cat /etc/image-release)"
grep -E ' / | /persist ' /proc/mounts
t "previous-boot-marker=$(cat /boot-marker 2>/dev/null || echo none)"
echo "boot at $(cut -d' ' -f1 /proc/uptime)" > /boot-marker
n=0
if grep -q ' /persist ' /proc/mounts; then n=$(cat /persist/bootcount 2>/dev/null || echo 0); n=$((n+1)); echo $n > /persist/bootcount; fi
t "bootcount=$n"
t "writeback=$(cat /proc/sys/vm/dirty_background_bytes)/$(cat /proc/sys/vm/dirty_background_ratio)"
for d in /run/netroot/disks/*/; do [ -d "$d" ] || continue; if touch "$d.probe" 2>/dev/null; then rm -f "$d.probe"; t "local-disk=rw"; else t "local-disk=ro"; fi; done
t "IMAGE-BOOT-OK"
sync
want=0; for a in $(cat /proc/cmdline); do case $a in e2e.reboots=*) want=\${a#*=};; esac; done
if [ "$n" -lt "$want" ]; then t "REBOOTING"; reboot -f; fi
poweroff -f
`;

const standInInit = `#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys
echo "E2E-INITRD KERNEL-STARTED kv=$(uname -r)"
echo "E2E-INITRD cmdline: $(cat /proc/cmdline)"
# virtio devices by PCI id (1af4:1000 net, 1af4:1001 block): no drivers are loaded here.
for d in /sys/bus/pci/devices/*; do printf '%s:%s ' $(cat $d/vendor $d/device); done | sed 's/0x//g; s/^/E2E-INITRD pci: /'; echo

poweroff -f
`;

const udhcpcScript = `#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/\${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "\${router%% *}" dev "$interface" ;;
esac
exit 0
`;

/** Copies the kernel's modules needed for `bootModules` (with dependencies) and regenerates
 *  modules.dep for the pruned tree. */
async function pruneModules(kernel: DebianKernel, root: string): Promise<number> {
  const src = join(kernel.root, "lib/modules", kernel.kv);
  const dst = join(root, "lib/modules", kernel.kv);
  await Deno.mkdir(dst, { recursive: true });
  const files = new Set<string>();
  for (const m of bootModules) {
    const deps = await text("modprobe", ["-d", kernel.root, "-S", kernel.kv, "--show-depends", m]);
    for (const line of deps.split("\n")) {
      const f = /^insmod (\S+)/.exec(line)?.[1];
      if (f) files.add(f.slice(src.length + 1));
    }
  }
  for (const rel of files) {
    await Deno.mkdir(dirname(join(dst, rel)), { recursive: true });
    await Deno.copyFile(join(src, rel), join(dst, rel));
  }
  for (const f of ["modules.order", "modules.builtin", "modules.builtin.modinfo"]) {
    await Deno.copyFile(join(src, f), join(dst, f)).catch(() => {});
  }
  await sh("depmod", ["-b", root, kernel.kv]);
  return files.size;
}

/** newc cpio of `dir`, gzip'd (what the kernel unpacks as an initramfs). */
async function cpioGz(dir: string, out: string): Promise<void> {
  const list = await sh("find", [".", "-print0"], { cwd: dir });
  const cpio = await sh("cpio", ["--null", "-o", "-H", "newc", "--quiet"], {
    cwd: dir,
    stdin: list,
  });
  await Deno.writeFile(out, await sh("gzip", ["-1", "-c"], { stdin: cpio }));
}

export interface TinyImage {
  dir: string;
  kv: string;
  release: string;
  modules: number;
}

/** Builds the image tree in `dir` (created; must not exist or be empty). `cacheDir`: where
 *  busybox-static is kept (cache.ts). */
export async function buildTinyImage(
  dir: string,
  opts: {
    kernel: DebianKernel;
    cacheDir: string;
    release?: string;
    initrd?: boolean;
    /** The stand-in initrd's /init script (default: print and power off). */
    initrdInit?: string;
    /** Default amd64. arm64: busybox-static:arm64 plus the arm64 C library (arm64Glibc), for an
     *  arm64 kernel (debianKernel(…, "arm64")). */
    arch?: ImageArch;
  },
): Promise<TinyImage> {
  const { kernel } = opts;
  const arch = opts.arch ?? "amd64";
  const release = opts.release ?? "v1";
  await busyboxTree(dir, opts.cacheDir, arch);
  if (arch === "arm64") await sh("cp", ["-a", `${await arm64Glibc(opts.cacheDir)}/.`, dir]);
  await Deno.writeTextFile(join(dir, "etc/image-release"), `netroot-test-image ${release}\n`);
  await Deno.writeTextFile(join(dir, "etc/hostname"), "netroot-test\n");
  await Deno.writeTextFile(join(dir, "sbin/init"), imageInit, { mode: 0o755 });
  await Deno.chmod(join(dir, "sbin/init"), 0o755);
  await Deno.writeTextFile(join(dir, "usr/share/udhcpc/default.script"), udhcpcScript);
  await Deno.chmod(join(dir, "usr/share/udhcpc/default.script"), 0o755);
  await Deno.copyFile(kernel.vmlinuz, join(dir, `boot/vmlinuz-${kernel.kv}`));
  const modules = await pruneModules(kernel, dir);
  if (opts.initrd) {
    const ir = await Deno.makeTempDir({ prefix: "nr-initrd-" });
    try {
      await busyboxTree(ir, opts.cacheDir, arch);
      // The init's output needs a console before anything mounts devtmpfs.
      await sh("mknod", ["-m", "600", join(ir, "dev/console"), "c", "5", "1"]);
      await Deno.writeTextFile(join(ir, "init"), opts.initrdInit ?? standInInit);
      await Deno.chmod(join(ir, "init"), 0o755);
      await cpioGz(ir, join(dir, `boot/initrd.img-${kernel.kv}`));
    } finally {
      await Deno.remove(ir, { recursive: true });
    }
  }
  return { dir, kv: kernel.kv, release, modules };
}
