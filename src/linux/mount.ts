// mount(2), umount2(2) and statfs(2) through FFI: what the node init needs to build its new root
// (proc/sys/devtmpfs, tmpfs, overlay, NFS with kernel text options, bind and MS_MOVE), and the
// server its read-only view of the image trees for kernel nfsd (src/nfs.ts).
import { check, cstr, openLibc } from "./libc.ts";

export const MS_RDONLY = 0x1;
export const MS_NOSUID = 0x2;
export const MS_NODEV = 0x4;
export const MS_NOEXEC = 0x8;
export const MS_REMOUNT = 0x20;
export const MS_BIND = 0x1000;
export const MS_MOVE = 0x2000;
export const MS_REC = 0x4000;
export const MS_PRIVATE = 0x40000;
export const MNT_DETACH = 0x2;

/** statfs f_type values the init cares about (linux/magic.h). */
export const RAMFS_MAGIC = 0x858458f6;
export const TMPFS_MAGIC = 0x01021994;
export const OVERLAYFS_MAGIC = 0x794c7630;

let lib:
  | Deno.DynamicLibrary<{
    mount: { parameters: ["buffer", "buffer", "buffer", "u64", "buffer"]; result: "i32" };
    umount2: { parameters: ["buffer", "i32"]; result: "i32" };
    statfs: { parameters: ["buffer", "buffer"]; result: "i32" };
  }>
  | undefined;

function libc() {
  lib ??= openLibc(
    {
      mount: { parameters: ["buffer", "buffer", "buffer", "u64", "buffer"], result: "i32" },
      umount2: { parameters: ["buffer", "i32"], result: "i32" },
      statfs: { parameters: ["buffer", "buffer"], result: "i32" },
    } as const,
  );
  return lib;
}

const orNull = (s: string | null | undefined) => (s == null ? null : cstr(s));

/**
 * mount(2). `data` is the filesystem's text options (for NFS the kernel's own syntax, with `addr=`,
 * since there is no mount.nfs helper to translate). Throws SyscallError naming source and target.
 */
export function mount(
  source: string | null,
  target: string,
  fstype: string | null,
  flags = 0,
  data: string | null = null,
): void {
  check(
    "mount",
    libc().symbols.mount(orNull(source), cstr(target), orNull(fstype), BigInt(flags), orNull(data)),
    `${fstype ?? "(move/bind)"} ${source ?? "none"} on ${target}${data ? ` (${data})` : ""}`,
  );
}

export function umount(target: string, flags = 0): void {
  check("umount2", libc().symbols.umount2(cstr(target), flags), target);
}

let asyncLib:
  | Deno.DynamicLibrary<{
    umount2: { parameters: ["buffer", "i32"]; result: "i32"; nonblocking: true };
  }>
  | undefined;

/** umount2 on a thread of its own: an overlay's unmount flushes its upper's whole file system
 *  (sync_fs), which held the server's thread 0.8 s after a build's RUN wrote 1 GiB. */
export async function umountAsync(target: string, flags = 0): Promise<void> {
  asyncLib ??= openLibc(
    { umount2: { parameters: ["buffer", "i32"], result: "i32", nonblocking: true } } as const,
  );
  const path = cstr(target); // held until the call returns
  // errno is the other thread's: a failure is tried again here, where umount() reads it (a call
  // that failed flushed nothing), and throws with the reason, or succeeds after all
  if (await asyncLib.symbols.umount2(path, flags) < 0) umount(target, flags);
}

/** A read-only view of directory `source` at `target`, made if missing (a bind mount, then its
 *  read-only remount: the kernel takes no MS_RDONLY with the bind itself). If the remount fails,
 *  the bind goes. */
export function bindReadOnly(source: string, target: string): void {
  Deno.mkdirSync(target, { recursive: true });
  mount(source, target, null, MS_BIND);
  try {
    remountReadOnly(target);
  } catch (e) {
    umount(target, MNT_DETACH);
    throw e;
  }
}

/** Makes the bind mount at `target` read-only, nosuid, nodev, noexec: nothing is run or opened
 *  as a device through it on this machine. */
export function remountReadOnly(target: string): void {
  mount(null, target, null, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
}

/** statfs(2) of `path`: [f_type, f_flags] (struct statfs is 120 bytes on x86_64 and aarch64:
 *  f_type the first long, f_flags the eleventh). */
function statfs(path: string): [number, number] {
  const buf = new Uint8Array(120);
  check("statfs", libc().symbols.statfs(cstr(path), buf), path);
  const v = new DataView(buf.buffer);
  return [Number(v.getBigInt64(0, true)), Number(v.getBigInt64(80, true))];
}

/** The filesystem type magic (statfs f_type) of the filesystem holding `path`. */
export function fsType(path: string): number {
  return statfs(path)[0];
}

/** True when the mount `path` is on is read-only (statfs f_flags ST_RDONLY: per mount, so a
 *  read-only bind mount of a writable file system says so). */
export function onReadOnlyMount(path: string): boolean {
  return (statfs(path)[1] & 1) !== 0;
}

/** True when `path` is the root of a mount (its device differs from its parent's, or it is "/"). */
export function isMountPoint(path: string): boolean {
  try {
    const self = Deno.lstatSync(path);
    const parent = Deno.lstatSync(`${path.replace(/\/+$/, "")}/..`);
    return self.dev !== parent.dev || self.ino === parent.ino;
  } catch {
    return false;
  }
}
