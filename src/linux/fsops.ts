// File-system calls Deno does not expose: lchown, utimensat (no-follow), mknod, syncfs,
// statvfs, fsync of a directory. Used by the hybrid copy (node side) and by image tools.
import { check, cstr, errno, openLibc, SyscallError } from "./libc.ts";

const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const O_RDONLY = 0, O_DIRECTORY = 0o200000, O_CLOEXEC = 0o2000000;
const O_NOFOLLOW = 0o400000, O_NONBLOCK = 0o4000, O_NOCTTY = 0o400;

let lib: ReturnType<typeof open> | undefined;
function open() {
  return openLibc(
    {
      lchown: { parameters: ["buffer", "u32", "u32"], result: "i32" },
      utimensat: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
      mknod: { parameters: ["buffer", "u32", "u64"], result: "i32" },
      open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      syncfs: { parameters: ["i32"], result: "i32" },
      fsync: { parameters: ["i32"], result: "i32" },
      statvfs: { parameters: ["buffer", "buffer"], result: "i32" },
      ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
      opendir: { parameters: ["buffer"], result: "pointer" },
      readdir: { parameters: ["pointer"], result: "pointer" },
      closedir: { parameters: ["pointer"], result: "i32" },
    } as const,
  );
}
const libc = () => (lib ??= open()).symbols;

/**
 * The entries of directory `path` (not `.` and `..`), read from the kernel a buffer at a time as
 * they are used: Deno.readDirSync reads a directory whole before it yields its first entry (100,000
 * names of 200 characters took 100 MiB), and a directory on a node's disk may hold millions.
 * Entries removed while it is read are fine. glibc's struct dirent on 64-bit Linux (x86_64,
 * aarch64): d_type at byte 18, d_name at 19; a file system that gives no type (DT_UNKNOWN) is
 * asked with lstat.
 */
export function* readDirStream(path: string): Generator<{ name: string; isDirectory: boolean }> {
  const dir = libc().opendir(cstr(path));
  if (!dir) throw new SyscallError("opendir", errno(), path);
  try {
    for (let e; (e = libc().readdir(dir));) {
      const v = new Deno.UnsafePointerView(e);
      const name = v.getCString(19);
      if (name === "." || name === "..") continue;
      const type = v.getUint8(18);
      const isDirectory = type === DT_DIR ||
        (type === DT_UNKNOWN && Deno.lstatSync(`${path}/${name}`).isDirectory);
      yield { name, isDirectory };
    }
  } finally {
    libc().closedir(dir);
  }
}
const DT_UNKNOWN = 0, DT_DIR = 4;

export function lchown(path: string, uid: number, gid: number): void {
  check("lchown", libc().lchown(cstr(path), uid, gid), path);
}

/** Sets atime and mtime (seconds, fractional allowed) without following a final symlink. */
export function lutimes(path: string, mtime: number, atime = mtime): void {
  const ts = new BigInt64Array(4);
  const split = (t: number, i: number) => {
    const s = Math.floor(t);
    ts[i] = BigInt(s);
    ts[i + 1] = BigInt(Math.round((t - s) * 1e9));
  };
  split(atime, 0);
  split(mtime, 2);
  check(
    "utimensat",
    libc().utimensat(AT_FDCWD, cstr(path), new Uint8Array(ts.buffer), AT_SYMLINK_NOFOLLOW),
    path,
  );
}

export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major), mi = BigInt(minor);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) |
    (mi & 0xffn);
}

export const S_IFCHR = 0o020000, S_IFBLK = 0o060000, S_IFIFO = 0o010000, S_IFSOCK = 0o140000;

export function mknod(path: string, mode: number, major = 0, minor = 0): void {
  check("mknod", libc().mknod(cstr(path), mode, makedev(major, minor)), path);
}

function withFd<T>(path: string, flags: number, fn: (fd: number) => T): T {
  const fd = check("open", libc().open(cstr(path), flags | O_CLOEXEC, 0), path);
  try {
    return fn(fd);
  } finally {
    libc().close(fd);
  }
}

/** Flushes the whole file system holding `path` (one call instead of an fsync per file). */
export function syncfs(path: string): void {
  withFd(path, O_RDONLY, (fd) => check("syncfs", libc().syncfs(fd), path));
}

let asyncLib:
  | Deno.DynamicLibrary<{ syncfs: { parameters: ["i32"]; result: "i32"; nonblocking: true } }>
  | undefined;

/** syncfs on a thread of its own: the caller keeps working while the file system is flushed.
 *  Everything written before the call is on disk when the promise resolves. */
export async function syncfsAsync(path: string): Promise<void> {
  asyncLib ??= openLibc(
    { syncfs: { parameters: ["i32"], result: "i32", nonblocking: true } } as const,
  );
  const fd = check("open", libc().open(cstr(path), O_RDONLY | O_CLOEXEC, 0), path);
  try {
    const rc = await asyncLib.symbols.syncfs(fd);
    if (rc < 0) throw new Error(`syncfs ${path}: failed (the errno of another thread is not ours)`);
  } finally {
    libc().close(fd);
  }
}

const FS_IOC_GETFLAGS = 0x80086601, FS_IOC_SETFLAGS = 0x40086602;
const FS_IMMUTABLE_FL = 0x10, FS_APPEND_FL = 0x20, FS_TOPDIR_FL = 0x00020000;

/** The inode flags of `path` (chattr's) changed by `change`: before and after, or undefined
 *  when they cannot be read or set (file systems without flags). */
function changeInodeFlags(
  path: string,
  openFlags: number,
  change: (f: number) => number,
): { before: number; after: number } | undefined {
  try {
    return withFd(path, openFlags, (fd) => {
      const f = new Int32Array(2);
      const buf = new Uint8Array(f.buffer);
      if (libc().ioctl(fd, BigInt(FS_IOC_GETFLAGS), buf) < 0) return undefined;
      const before = f[0], after = change(before);
      if (after === before) return { before, after };
      f[0] = after;
      return libc().ioctl(fd, BigInt(FS_IOC_SETFLAGS), buf) >= 0 ? { before, after } : undefined;
    });
  } catch {
    return undefined;
  }
}

/**
 * Marks a directory as the top of unrelated hierarchies (`chattr +T`): ext4's allocator then
 * puts each directory made in it in a block group of its own choosing, with room, instead of
 * next to its parent. Whether it took (false on file systems without the flag).
 */
export function markTopDir(path: string): boolean {
  return !!changeInodeFlags(path, O_RDONLY | O_DIRECTORY, (f) => f | FS_TOPDIR_FL);
}

/**
 * `chattr -ia` of a regular file or directory (a symlink or special file is left alone: opening
 * a device runs its driver): what makes unlink, rename and writes fail with EPERM even for root.
 * Needs CAP_LINUX_IMMUTABLE. Whether a flag was cleared.
 */
export function clearImmutable(path: string): boolean {
  let st: Deno.FileInfo;
  try {
    st = Deno.lstatSync(path);
  } catch {
    return false;
  }
  if (!st.isFile && !st.isDirectory) return false;
  const r = changeInodeFlags(
    path,
    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY,
    (f) => f & ~(FS_IMMUTABLE_FL | FS_APPEND_FL),
  );
  return !!r && r.before !== r.after;
}

/**
 * syncfsAsync started now and awaited later, after other work: whoever awaits it gets its failure
 * (an EIO there is data that never reached the disk, and the kernel reports it once: a later
 * syncfs of the same file system returns 0), and it is no unhandled rejection when that other
 * work fails first and nothing awaits it.
 */
export function syncfsLater(path: string): Promise<void> {
  const flushing = syncfsAsync(path);
  flushing.catch(() => {}); // a handler, not a swallow: awaiting `flushing` still throws
  return flushing;
}

/** fsync(2) of a file already written and closed: its data on the disk before a rename gives it a
 *  name that is trusted later. A rename can reach the disk with any journal commit before the
 *  data of a file just written (ext4 allocates its blocks at writeback): after a power cut the
 *  name would hold an empty or truncated file. */
export async function syncFile(path: string): Promise<void> {
  using f = await Deno.open(path);
  await f.sync();
}

/** Writes `text` to `path` whole or not at all, durably: a temporary file beside it, given `mode`
 *  whatever the umask, flushed, then renamed over `path` — readers and a power cut see the old
 *  file or the new one, never an empty or partial one. */
export async function writeFileDurable(path: string, text: string, mode: number): Promise<void> {
  const tmp = `${path}.new-${Deno.pid}`;
  try {
    await Deno.writeTextFile(tmp, text, { mode });
    await Deno.chmod(tmp, mode);
    await syncFile(tmp);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** writeFileDurable for callers that cannot await (a config rewritten inside a synchronous
 *  refresh). */
export function writeFileDurableSync(path: string, text: string, mode: number): void {
  const tmp = `${path}.new-${Deno.pid}`;
  try {
    Deno.writeTextFileSync(tmp, text, { mode });
    Deno.chmodSync(tmp, mode);
    syncFileSync(tmp);
    Deno.renameSync(tmp, path);
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* never written */ }
    throw e;
  }
}

/** syncFile for callers that cannot await. */
export function syncFileSync(path: string): void {
  using f = Deno.openSync(path);
  f.syncSync();
}

/** fsync of a directory: makes a rename inside it durable. */
export function fsyncDir(path: string): void {
  withFd(path, O_RDONLY | O_DIRECTORY, (fd) => check("fsync", libc().fsync(fd), path));
}

/** O_PATH: a reference to an entry, its content not opened (a FIFO does not block, a device is
 *  not opened). */
export const O_PATH = 0o10000000;

/** The path of this process's file descriptor `fd`: opening it reopens that very file, for this
 *  process and its children (GNU tar, cp, a decompressor), whatever is renamed onto its name. */
export const heldPath = (fd: number) => `/proc/${Deno.pid}/fd/${fd}`;

/** Rotates a log its writer holds open in append mode (qemu's serial chardev, ganesha's log),
 *  which a rename would not move (it went on writing to `.1`): past `limit` bytes, copied to
 *  `path.1` (replacing it), then emptied in place, so that the writer's next bytes start it
 *  again. What the writer adds between the copy and the emptying is lost (milliseconds of
 *  output). True when it rotated. */
export async function rotateInPlace(path: string, limit: number): Promise<boolean> {
  const size = await Deno.stat(path).then((s) => s.size, () => 0);
  if (size <= limit) return false;
  await Deno.copyFile(path, `${path}.1`);
  await Deno.truncate(path, 0);
  return true;
}

export interface FsSpace {
  /** bytes available to unprivileged users */
  freeBytes: number;
  /** bytes free, the blocks reserved for root included (what a process with CAP_SYS_RESOURCE,
   *  such as nfsd writing for a client's kept root, can still take) */
  freeBytesForRoot: number;
  totalBytes: number;
  freeInodes: number;
  totalInodes: number;
  blockSize: number;
}

export function statvfs(path: string): FsSpace {
  const buf = new BigUint64Array(14);
  check("statvfs", libc().statvfs(cstr(path), new Uint8Array(buf.buffer)), path);
  const frsize = Number(buf[1]);
  return {
    blockSize: frsize,
    totalBytes: Number(buf[2]) * frsize,
    freeBytes: Number(buf[4]) * frsize,
    freeBytesForRoot: Number(buf[3]) * frsize,
    freeInodes: Number(buf[7]),
    totalInodes: Number(buf[5]),
  };
}

/** A text file whole, or undefined when it holds more than `max` bytes, whatever its size says: a
 *  file of /proc says 0 and may have no end (/proc/self/pagemap: 256 GiB, 1 GiB read in 0.3 s). */
export async function readTextUpTo(path: string, max: number): Promise<string | undefined> {
  // (8 past the bound, not 1: files of 8-byte entries such as pagemap refuse other read sizes)
  const bytes = await readUpTo(path, max + 8);
  return bytes.length > max ? undefined : new TextDecoder().decode(bytes);
}

/** Reads `path` from `offset` until `length` bytes or its end: what there is (a short read of a
 *  file or a block device is not the end). */
export async function readUpTo(path: string, length: number, offset = 0): Promise<Uint8Array> {
  const f = await Deno.open(path, { read: true });
  try {
    if (offset) await f.seek(offset, Deno.SeekMode.Start);
    const buf = new Uint8Array(length);
    let got = 0;
    while (got < length) {
      const r = await f.read(buf.subarray(got));
      if (r === null) break;
      got += r;
    }
    return buf.subarray(0, got);
  } finally {
    f.close();
  }
}
