// A realistic OS image for measurements: Debian bookworm minbase with systemd as init and udev
// (`debootstrap --variant=minbase --include=systemd-sysv,udev,kmod`: without udev no device unit
// ever appears and systemd waits 90 s for /dev/ttyS0, which no real install does), plus the Debian test kernel and all its
// modules (as a real installed kernel would have), plus one oneshot unit that prints the NFS bytes
// read so far on the console once the system is up, then powers off.
// Cached under <checkout>/.work/minbase/ (gitignored): the debootstrap tree once, the bootable tree
// per kernel version. Both appear by rename only when complete.
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { nspawnArgs } from "../../src/images/session.ts";
import type { DebianKernel } from "./kernel.ts";
import { bootModules } from "./testimage.ts";

export const minbaseCacheDir = fileURLToPath(new URL("../../.work/minbase/", import.meta.url));

/** Console line the bench unit prints: `NETROOT-BENCH nfs-read-bytes=N uptime=S`. */
export const benchLine = /NETROOT-BENCH nfs-read-bytes=(\d+) uptime=([\d.]+)/;

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder();
  if (!out.success) {
    const err = (text.decode(out.stderr) + text.decode(out.stdout)).trim().split("\n").slice(-8);
    throw new Error(`${cmd} ${args.join(" ")} failed (rc ${out.code}):\n${err.join("\n")}`);
  }
  return text.decode(out.stdout);
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

/** The Debian mirror apt uses on this machine (deb822 or one-line sources). */
export async function aptMirror(): Promise<string> {
  const files = ["/etc/apt/sources.list"];
  const dropIns = await Array.fromAsync(Deno.readDir("/etc/apt/sources.list.d")).catch(() => []);
  for (const e of dropIns) {
    if (/\.(list|sources)$/.test(e.name)) files.push(join("/etc/apt/sources.list.d", e.name));
  }
  for (const f of files) {
    const t = await Deno.readTextFile(f).catch(() => "");
    // deb822: a stanza with URIs: and Suites: bookworm; one-line: deb URI bookworm main.
    for (const stanza of t.split(/\n\s*\n/)) {
      const uri = /^URIs:\s*(\S+)/m.exec(stanza)?.[1];
      if (uri && /^Suites:.*\bbookworm\b/m.test(stanza)) return uri;
    }
    const line = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/m.exec(t)?.[1];
    if (line) return line;
  }
  throw new Error(`no bookworm mirror in ${files.join(", ")}`);
}

const baseName = "bookworm-minbase-systemd-udev";
/** The same plus openssh-server (a stock image for clean reboots and `node run`). */
const sshBaseName = "bookworm-minbase-systemd-udev-ssh";

/** The debootstrap tree (built once, ≈ 1 min and 250 MB). */
export function minbaseTree(): Promise<string> {
  return debootstrapTree(baseName, "systemd-sysv,udev,kmod");
}

/** Minbase with openssh-server: its postinst made the host keys (/etc/ssh/ssh_host_*_key). */
export function minbaseSshTree(): Promise<string> {
  return debootstrapTree(sshBaseName, "systemd-sysv,udev,kmod,openssh-server");
}

/** Name of the ≈ 700 MB Debian tree (issue 12's image-versions bench). */
const largeName = "bookworm-minbase-700m";

/** What the large tree adds to minbase: a developer image as labs keep them. */
const largePackages = [
  "build-essential",
  "python3-dev",
  "git",
  "vim",
  "gdb",
  "locales",
  "man-db",
  "curl",
  "less",
  "openssh-server",
];

/**
 * A Debian bookworm tree of about 700 MB of files (the size issue 12's storage targets name): the
 * cached minbase tree plus a compiler toolchain, Python with its headers, git, vim, gdb and their
 * documentation, installed with apt-get inside systemd-nspawn from the machine's mirror. Built
 * once (a few minutes), cached; appears by rename only when complete.
 */
export function minbaseLargeTree(): Promise<string> {
  return withCacheLock(largeName, buildMinbaseLargeTree);
}

async function buildMinbaseLargeTree(): Promise<string> {
  const dir = join(minbaseCacheDir, largeName);
  if (await exists(join(dir, "usr/bin/gdb"))) return dir;
  const base = await minbaseTree();
  const work = join(minbaseCacheDir, `.tmp-${largeName}-${Deno.pid}`);
  await Deno.remove(work, { recursive: true }).catch(() => {});
  // The same container as `image shell` (src/images/session.ts).
  const nspawn = (cmd: string) =>
    run("systemd-nspawn", nspawnArgs(work, ["/bin/sh", "-c", cmd], false));
  try {
    await run("cp", ["-a", base, work]);
    await nspawn(
      "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && " +
        `apt-get install -y -q --no-install-recommends ${largePackages.join(" ")} && apt-get clean`,
    );
    await Deno.rename(work, dir);
  } catch (e) {
    await Deno.remove(work, { recursive: true }).catch(() => {});
    throw e;
  }
  return dir;
}

/** Runs `fn` holding an exclusive lock on the cache entry `name` (flock: two test files of a
 *  parallel run, each an open file of its own, wait for one another instead of both building). */
async function withCacheLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
  await Deno.mkdir(minbaseCacheDir, { recursive: true });
  const lock = await Deno.open(join(minbaseCacheDir, `.lock-${name}`), {
    create: true,
    write: true,
  });
  try {
    await lock.lock(true);
    return await fn();
  } finally {
    lock.close();
  }
}

function debootstrapTree(name: string, include: string): Promise<string> {
  return withCacheLock(name, () => buildDebootstrapTree(name, include));
}

async function buildDebootstrapTree(name: string, include: string): Promise<string> {
  const dir = join(minbaseCacheDir, name);
  if (await exists(join(dir, "usr/lib/systemd/systemd"))) return dir;
  if (!(await exists("/usr/sbin/debootstrap"))) {
    throw new Error("debootstrap is not installed (apt-get install debootstrap)");
  }
  const mirror = await aptMirror();
  const work = join(minbaseCacheDir, `.tmp-${name}-${Deno.pid}`);
  await Deno.remove(work, { recursive: true }).catch(() => {});
  try {
    await run("debootstrap", [
      "--variant=minbase",
      `--include=${include}`,
      "bookworm",
      work,
      mirror,
    ]);
    await Deno.rename(work, dir);
  } catch (e) {
    await Deno.remove(work, { recursive: true }).catch(() => {});
    throw new Error(`debootstrap from ${mirror} failed: ${(e as Error).message}`);
  }
  return dir;
}

const benchScript = `#!/bin/sh
# Bytes the NFS client read from the server (field 5 of each nfs mount's "bytes:" line), as the
# netroot init reports them.
b=$(awk '/^device /{nfs=($0 ~ / with fstype nfs/)} nfs && $1=="bytes:"{s+=$6} END{print s+0}' /proc/self/mountstats)
echo "NETROOT-BENCH nfs-read-bytes=$b uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
systemctl --no-block poweroff
`;

const benchUnit = `[Unit]
Description=netroot bench: NFS bytes read until the system is up
After=multi-user.target

[Service]
Type=idle
ExecStart=/usr/local/sbin/netroot-bench

[Install]
WantedBy=multi-user.target
`;

/** The bootable tree for `kernel`: minbase + /boot/vmlinuz-<kv> + /usr/lib/modules/<kv> + the
 *  bench unit. Returns its directory (import it as is). */
export function minbaseImage(kernel: DebianKernel): Promise<string> {
  return withCacheLock(`image-${baseName}-${kernel.kv}`, () => buildMinbaseImage(kernel));
}

async function buildMinbaseImage(kernel: DebianKernel): Promise<string> {
  const dir = join(minbaseCacheDir, `image-${baseName}-${kernel.kv}`);
  if (await exists(join(dir, "usr/local/sbin/netroot-bench"))) return dir;
  const base = await minbaseTree();
  const work = join(minbaseCacheDir, `.tmp-image-${Deno.pid}`);
  await Deno.remove(work, { recursive: true }).catch(() => {});
  try {
    await run("cp", ["-a", base, work]);
    await run("cp", ["-a", kernel.vmlinuz, join(work, "boot")]);
    // Merged /usr: /lib is a link to usr/lib.
    await Deno.mkdir(join(work, "usr/lib/modules"), { recursive: true });
    await run("cp", [
      "-a",
      join(kernel.root, "lib/modules", kernel.kv),
      join(work, "usr/lib/modules"),
    ]);
    await Deno.writeTextFile(join(work, "etc/hostname"), "netroot-minbase\n");
    // Root can log in on the console without a password (a bench image, never a real one).
    await run("chroot", [work, "passwd", "-d", "root"]);
    await Deno.mkdir(join(work, "usr/local/sbin"), { recursive: true });
    await Deno.writeTextFile(join(work, "usr/local/sbin/netroot-bench"), benchScript, {
      mode: 0o755,
    });
    await Deno.chmod(join(work, "usr/local/sbin/netroot-bench"), 0o755);
    await Deno.writeTextFile(join(work, "etc/systemd/system/netroot-bench.service"), benchUnit);
    const wants = join(work, "etc/systemd/system/multi-user.target.wants");
    await Deno.mkdir(wants, { recursive: true });
    await Deno.symlink("../netroot-bench.service", join(wants, "netroot-bench.service"));
    await Deno.rename(work, dir);
  } catch (e) {
    await Deno.remove(work, { recursive: true }).catch(() => {});
    throw e;
  }
  return dir;
}

/**
 * A stock Debian image for clean reboots and `node run` (tests/e2e/stock_reboot_test.ts): minbase
 * with systemd and openssh-server (host keys made by its postinst), /boot/vmlinuz-<kv> and the
 * kernel's boot modules only (the NICs, disks and file systems the initramfs needs: a full module
 * tree would triple what a hybrid copy writes under TCG), without documentation. Nothing of
 * netroot in it; root has no password (console) and no ssh key of its own.
 */
export function minbaseSshImage(kernel: DebianKernel): Promise<string> {
  return withCacheLock(`image-${sshBaseName}-${kernel.kv}`, () => buildMinbaseSshImage(kernel));
}

async function buildMinbaseSshImage(kernel: DebianKernel): Promise<string> {
  const dir = join(minbaseCacheDir, `image-${sshBaseName}-${kernel.kv}`);
  if (await exists(join(dir, "etc/netroot-e2e-image"))) return dir;
  const base = await minbaseSshTree();
  const work = join(minbaseCacheDir, `.tmp-image-ssh-${Deno.pid}`);
  await Deno.remove(work, { recursive: true }).catch(() => {});
  try {
    await run("cp", ["-a", base, work]);
    await run("cp", ["-a", kernel.vmlinuz, join(work, "boot")]);
    for (const d of ["usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"]) {
      await Deno.remove(join(work, d), { recursive: true }).catch(() => {});
    }
    const src = join(kernel.root, "lib/modules", kernel.kv);
    const dst = join(work, "usr/lib/modules", kernel.kv);
    const files = new Set<string>();
    for (const m of bootModules) {
      const deps = await run("modprobe", ["-d", kernel.root, "-S", kernel.kv, "--show-depends", m]);
      for (const line of deps.split("\n")) {
        const f = /^insmod (\S+)/.exec(line)?.[1];
        if (f) files.add(f.slice(src.length + 1));
      }
    }
    for (const rel of files) {
      await Deno.mkdir(join(dst, rel, ".."), { recursive: true });
      await Deno.copyFile(join(src, rel), join(dst, rel));
    }
    for (const f of ["modules.order", "modules.builtin", "modules.builtin.modinfo"]) {
      await Deno.copyFile(join(src, f), join(dst, f)).catch(() => {});
    }
    await run("depmod", ["-b", work, kernel.kv]);
    await Deno.writeTextFile(join(work, "etc/hostname"), "netroot-stock\n");
    await run("chroot", [work, "passwd", "-d", "root"]);
    await Deno.writeTextFile(join(work, "etc/netroot-e2e-image"), "stock ssh image\n");
    await Deno.rename(work, dir);
  } catch (e) {
    await Deno.remove(work, { recursive: true }).catch(() => {});
    throw e;
  }
  return dir;
}
