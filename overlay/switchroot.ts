// The two ends of the initramfs, as u-root's switch_root: the API filesystems (/proc, /sys, /dev,
// /run) mounted first thing, and switchRoot(newRoot, init) last: move them into the new root, free
// the initramfs, make the new root "/", execve the image's init with our PID (Deno must not stay
// PID 1). Each step is a small function so the privileged test drives the very same sequence.
import { execve, removeSameDevice, switchRoot as enterRoot } from "../src/linux/exec.ts";
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
import { fmtBytes, fmtMs } from "./console.ts";

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

export interface SwitchOptions {
  /** Arguments for `init` after its name (the command line's words after ` -- `). */
  args?: string[];
  env?: Record<string, string>;
  /** The initramfs root to free (default "/"). */
  initramfs?: string;
  log?(line: string): void;
  /** Called in the new root, right before the execve. */
  beforeExec?(): void;
}

/** The point of no return: returns only by throwing (a failed step, or the execve error). */
export function switchRoot(newRoot: string, init: string, o: SwitchOptions = {}): never {
  moveApiMounts(newRoot);
  const tf = performance.now();
  const freed = freeInitramfs(o.initramfs ?? "/");
  o.log?.(`freed ${fmtBytes(freed)} of initramfs (${fmtMs(performance.now() - tf)})`);
  enterRoot(newRoot);
  o.beforeExec?.();
  return execve(init, [init, ...(o.args ?? [])], o.env ?? {});
}
