// Steps 1, 4, 5, 7 on the mount side: API filesystems, tmpfs + overlay, /persist, moving the API
// mounts into the new root, freeing the initramfs, switch_root. Each step is a small function so
// the privileged test drives the very same sequence with a bind mount as the lower layer.
import { resolveInRoot as resolveImagePath } from "../src/rootpath.ts";
import { removeSameDevice } from "../src/linux/exec.ts";
import {
  fsType,
  isMountPoint,
  mount,
  MS_MOVE,
  MS_NODEV,
  MS_NOEXEC,
  MS_NOSUID,
  RAMFS_MAGIC,
  TMPFS_MAGIC,
} from "../src/linux/mount.ts";

export interface Layout {
  /** The initramfs root: freed before the switch. */
  root: string;
  /** Where the overlay (the future "/") is mounted. */
  newRoot: string;
  /** The read-only lower layer (NFS); under /run so it moves along and stays visible. */
  lower: string;
  /** The tmpfs holding the overlay's upper and work dirs. */
  rw: string;
}

export const defaultLayout: Layout = {
  root: "/",
  newRoot: "/newroot",
  lower: "/run/netroot/lower",
  rw: "/run/netroot/rw",
};

/** The API filesystems, in the order they are mounted and moved. */
export const apiMounts = [
  { dir: "/proc", fstype: "proc", flags: MS_NOSUID | MS_NODEV | MS_NOEXEC, data: null },
  { dir: "/sys", fstype: "sysfs", flags: MS_NOSUID | MS_NODEV | MS_NOEXEC, data: null },
  { dir: "/dev", fstype: "devtmpfs", flags: MS_NOSUID, data: "mode=0755" },
  { dir: "/run", fstype: "tmpfs", flags: MS_NOSUID | MS_NODEV, data: "mode=0755" },
] as const;

/** Mounts /proc, /sys, /dev, /run unless already mounted; returns what it mounted. */
export function mountApiFilesystems(): string[] {
  const done: string[] = [];
  for (const m of apiMounts) {
    Deno.mkdirSync(m.dir, { recursive: true });
    if (isMountPoint(m.dir)) continue;
    mount(m.fstype, m.dir, m.fstype, m.flags, m.data);
    done.push(m.dir);
  }
  return done;
}

/** tmpfs (upper + work) and the overlay at `newRoot`, over the already mounted `lower`. */
export function mountOverlay(l: Layout, tmpfsSize: string): void {
  Deno.mkdirSync(l.rw, { recursive: true });
  mount("netroot-rw", l.rw, "tmpfs", MS_NOSUID | MS_NODEV, `size=${tmpfsSize},mode=0755`);
  Deno.mkdirSync(`${l.rw}/upper`, { mode: 0o755 });
  Deno.mkdirSync(`${l.rw}/work`, { mode: 0o755 });
  Deno.mkdirSync(l.newRoot, { recursive: true });
  mount(
    "overlay",
    l.newRoot,
    "overlay",
    0,
    `lowerdir=${l.lower},upperdir=${l.rw}/upper,workdir=${l.rw}/work`,
  );
}

/** The host-side path of `path` inside the new root as chroot(root) would see it
 *  (src/rootpath.ts), or undefined when it does not exist. Used to check the image's init before
 *  the point of no return. */
export function resolveInRoot(root: string, path: string, hops = 40): string | undefined {
  try {
    const r = resolveImagePath(root, path, hops);
    return r.missing ? undefined : r.host;
  } catch {
    return undefined;
  }
}

/** True when `path` (inside `root`) resolves to an executable regular file. */
export function isExecutableIn(root: string, path: string): boolean {
  const p = resolveInRoot(root, path);
  if (!p) return false;
  const st = Deno.statSync(p);
  return st.isFile && ((st.mode ?? 0) & 0o111) !== 0;
}

/** Moves /dev, /proc, /sys, /run (with what is mounted below them) into `newRoot`. */
export function moveApiMounts(newRoot: string): void {
  for (const { dir } of [...apiMounts].reverse()) {
    if (!isMountPoint(dir)) continue;
    const target = `${newRoot}${dir}`;
    Deno.mkdirSync(target, { recursive: true });
    mount(dir, target, null, MS_MOVE);
  }
}

/**
 * Deletes the initramfs contents (everything on the root filesystem but mount points). Refuses
 * anything that is not ramfs/tmpfs: this must never run against a disk.
 */
export function freeInitramfs(root: string): number {
  const t = fsType(root);
  if (t !== RAMFS_MAGIC && t !== TMPFS_MAGIC) {
    throw new Error(`${root} is not an initramfs (statfs type 0x${t.toString(16)}); not freeing`);
  }
  return removeSameDevice(root);
}
