// Finds the partition that enables hybrid boot: the first ext4 file system (stable order, below)
// whose root holds `walt-hybrid/` (the spec's name) or `walt_hybrid/` (WalT's). If one partition
// holds both, `walt-hybrid/` wins. `.persistent` inside the directory selects the persistent variant.
//
// Order: block devices by natural name order (mmcblk0p2 < sda1 < sda2 < sdb1 < vda1 < vdb1), so
// the choice is the same at every boot. Whole disks are considered only when they carry no
// partition table the kernel recognised (a file system written straight onto the disk).
import { mknod, readUpTo, S_IFBLK } from "../src/linux/fsops.ts";
import { type ExtSuperblock, parseExtSuperblock } from "./ext4.ts";

const join = (...parts: string[]) => parts.join("/");

export const HYBRID_DIR_NAMES = ["walt-hybrid", "walt_hybrid"] as const;
const SKIP = /^(loop|ram|nbd|sr|zram|fd|mtdblock)\d/;

export interface BlockDev {
  name: string;
  major: number;
  minor: number;
  partition: boolean;
}

export interface HybridTarget {
  device: string; // /dev/vda1
  mountpoint: string; // where it is mounted (stays mounted)
  dir: string; // mountpoint/walt-hybrid
  dirName: string;
  persistent: boolean;
  superblock: ExtSuperblock;
}

export interface DetectDeps {
  /** Read-only while a candidate is only looked at, read-write once it is the one. */
  mount(device: string, dir: string, readOnly: boolean): Promise<void>;
  umount(dir: string): Promise<void>;
  /** Directory under which candidates are mounted, one subdir per device. */
  mountBase: string;
  sysClassBlock?: string;
  devDir?: string;
  /** Device-name filter (tests point it at their loop devices). */
  skip?: RegExp;
  log?(msg: string): void;
}

export function naturalCompare(a: string, b: string): number {
  return a.localeCompare(b, "en", { numeric: true });
}

export function listBlockDevices(sysClassBlock = "/sys/class/block", skip = SKIP): BlockDev[] {
  const out: BlockDev[] = [];
  let names: string[];
  try {
    names = [...Deno.readDirSync(sysClassBlock)].map((e) => e.name);
  } catch {
    return out;
  }
  const isPart = (n: string) => {
    try {
      Deno.statSync(join(sysClassBlock, n, "partition"));
      return true;
    } catch {
      return false;
    }
  };
  const parts = new Set(names.filter(isPart));
  for (const name of names) {
    if (skip.test(name)) continue;
    const partition = parts.has(name);
    // a whole disk with recognised partitions: only its partitions are candidates
    if (!partition && [...parts].some((p) => p.startsWith(name))) continue;
    let majmin: string;
    try {
      majmin = Deno.readTextFileSync(join(sysClassBlock, name, "dev")).trim();
    } catch {
      continue;
    }
    const [major, minor] = majmin.split(":").map(Number);
    out.push({ name, major, minor, partition });
  }
  return out.sort((a, b) => naturalCompare(a.name, b.name));
}

/** /dev/<name>, created from its major:minor when no udev/devtmpfs made it. */
export function ensureDevNode(dev: BlockDev, devDir = "/dev"): string {
  const path = join(devDir, dev.name);
  try {
    Deno.statSync(path);
  } catch {
    mknod(path, S_IFBLK | 0o600, dev.major, dev.minor);
  }
  return path;
}

export async function readSuperblock(device: string): Promise<ExtSuperblock | undefined> {
  try {
    return parseExtSuperblock(await readUpTo(device, 2048));
  } catch {
    return undefined;
  }
}

/** A real directory: a symlink named walt-hybrid (the disk is not trusted) would make the init
 *  copy into, and clear, wherever it points — the initramfs, another partition. */
function dirExists(p: string): boolean {
  try {
    return Deno.lstatSync(p).isDirectory;
  } catch {
    return false;
  }
}

export async function findHybridPartition(deps: DetectDeps): Promise<HybridTarget | undefined> {
  const log = deps.log ?? (() => {});
  for (const bd of listBlockDevices(deps.sysClassBlock, deps.skip)) {
    const device = ensureDevNode(bd, deps.devDir);
    const sb = await readSuperblock(device);
    if (!sb) continue;
    const mountpoint = join(deps.mountBase, bd.name);
    await Deno.mkdir(mountpoint, { recursive: true });
    try {
      // Read-only: a partition that is not the hybrid one (a user's data) is left as it was, no
      // mount count or time written (ext4 still replays a journal that needs it, as any mount).
      await deps.mount(device, mountpoint, true);
    } catch (e) {
      log(`${device}: ${sb.kind} but cannot mount it (${(e as Error).message}); skipped`);
      continue;
    }
    const dirName = HYBRID_DIR_NAMES.find((n) => dirExists(join(mountpoint, n)));
    if (dirName) {
      const dir = join(mountpoint, dirName);
      let persistent = false;
      try {
        Deno.statSync(join(dir, ".persistent"));
        persistent = true;
      } catch { /* volatile */ }
      await deps.umount(mountpoint);
      try {
        await deps.mount(device, mountpoint, false);
      } catch (e) {
        // The disk is not trusted: an ext4 that mounts read-only but not read-write (a
        // read-only feature bit the kernel does not know, planted in its superblock; a
        // write-protected card) threw out of detection, a fatal init failure at every boot,
        // network mode never reached.
        log(
          `${device}: holds ${dirName}/ but cannot mount it read-write ` +
            `(${(e as Error).message}); skipped`,
        );
        continue;
      }
      return { device, mountpoint, dir, dirName, persistent, superblock: sb };
    }
    await deps.umount(mountpoint);
  }
  return undefined;
}
