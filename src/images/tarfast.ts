// The import's fast path: a tar reader of our own that writes every member and digests each file
// in the same pass (one read of the archive, large writes, no second read of the files, no
// listing to parse), with the file system's writeback started while it goes on and large files
// hashed on another thread (sha256.ts). GNU tar
// (tar.ts) stays the extractor of everything this reader does not know for sure: any header,
// type, extended keyword or tree situation outside the plain cases below makes it give up
// (`Unsupported`); the caller then empties the tree and runs GNU tar, whose behaviour and error
// messages are the reference. Only three outcomes end the import here: a refused name (the same
// place() check and message as the GNU tar path), a full disk, a cancellation.
//
// Confinement: the tree is a fresh directory only this import writes to, and every entry made in
// it is recorded (`kinds`). A member is written only when each of its ancestors is a directory
// this run made (or absent: then made as one), so no path ever goes through a symlink or a file;
// files are created with O_CREAT|O_EXCL|O_NOFOLLOW, links and nodes never replace a directory.
import { createHash } from "node:crypto";
import { cstr, enc, errno, openLibc } from "../linux/libc.ts";
import { UserError } from "../errors.ts";
import {
  ancestorsOf,
  MAX_MEMBERS,
  type Member,
  place,
  type Placed,
  tooManyMembers,
} from "./archivepath.ts";
import type { CachedHash, Progress, Written } from "./walk.ts";
import { sha256Stream } from "./sha256.ts";
import { syncfsAsync } from "../linux/fsops.ts";

/** Something the fast path does not handle: the caller falls back to GNU tar. */
export class Unsupported extends Error {}

const ENOSPC = 28, EDQUOT = 122;

let lib: ReturnType<typeof openLib> | undefined;
function openLib() {
  return openLibc(
    {
      open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
      write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
      close: { parameters: ["i32"], result: "i32" },
      fchown: { parameters: ["i32", "u32", "u32"], result: "i32" },
      fstat: { parameters: ["i32", "buffer"], result: "i32" },
      fchmod: { parameters: ["i32", "u32"], result: "i32" },
      futimens: { parameters: ["i32", "buffer"], result: "i32" },
      fsetxattr: { parameters: ["i32", "buffer", "buffer", "usize", "i32"], result: "i32" },
      lsetxattr: { parameters: ["buffer", "buffer", "buffer", "usize", "i32"], result: "i32" },
      mkdir: { parameters: ["buffer", "u32"], result: "i32" },
      symlink: { parameters: ["buffer", "buffer"], result: "i32" },
      link: { parameters: ["buffer", "buffer"], result: "i32" },
      mknod: { parameters: ["buffer", "u32", "u64"], result: "i32" },
      unlink: { parameters: ["buffer"], result: "i32" },
      lchown: { parameters: ["buffer", "u32", "u32"], result: "i32" },
      chmod: { parameters: ["buffer", "u32"], result: "i32" },
      utimensat: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
      flistxattr: { parameters: ["i32", "buffer", "usize"], result: "isize" },
      geteuid: { parameters: [], result: "u32" },
      getegid: { parameters: [], result: "u32" },
      // On a thread of Deno's blocking pool: the write it starts can wait for room in the
      // device's queue.
      sync_file_range: {
        parameters: ["i32", "i64", "i64", "u32"],
        result: "i32",
        nonblocking: true,
      },
    } as const,
  );
}
const libc = () => (lib ??= openLib()).symbols;

// struct stat (x86_64 and the generic layout of aarch64 alike): st_ino is the u64 at offset 8.
const statBuf = new Uint8Array(256);
const statView = new DataView(statBuf.buffer);

const O_WRONLY = 0o1, O_CREAT = 0o100, O_EXCL = 0o200, O_NOFOLLOW = 0o400000;
const O_CLOEXEC = 0o2000000;
const AT_FDCWD = -100, AT_SYMLINK_NOFOLLOW = 0x100;
const S_IFCHR = 0o020000, S_IFBLK = 0o060000, S_IFIFO = 0o010000;

/** The process's umask (from /proc: reading it with umask(2) would change it for a moment, for
 *  every thread); undefined when unknown. */
function processUmask(): number | undefined {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(Deno.readTextFileSync("/proc/self/status"));
    return m ? parseInt(m[1], 8) : undefined;
  } catch {
    return undefined;
  }
}

/** A failed call: a full disk ends the import, anything else hands the archive to GNU tar. */
function failed(call: string, what: string): never {
  const e = errno();
  if (e === ENOSPC || e === EDQUOT) {
    throw new UserError(`no space left on device while importing ${what}`, 500);
  }
  throw new Unsupported(`${call}: errno ${e}`);
}

function ok(rc: number | bigint, call: string, what: string): void {
  if (Number(rc) < 0) failed(call, what);
}

function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major), mi = BigInt(minor);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) |
    (mi & 0xffn);
}

/** timespec[2] for utimensat/futimens: atime left as it is, mtime as in the archive. One buffer
 *  for every call (each is synchronous); little-endian 64-bit fields (x86_64, aarch64). */
const tsWords = new Uint32Array(8);
tsWords[2] = (1 << 30) - 2; // UTIME_OMIT in atime's tv_nsec
const tsBytes = new Uint8Array(tsWords.buffer);
function times(sec: number, nsec: number): Uint8Array<ArrayBuffer> {
  tsWords[4] = sec >>> 0;
  tsWords[5] = Math.floor(sec / 0x100000000);
  tsWords[6] = nsec;
  return tsBytes;
}

/** A path as a C string, in one of two buffers reused from call to call (each call using it is
 *  synchronous; `slot` 1 for the second path of a call that takes two). */
const pathBufs = [new Uint8Array(8192), new Uint8Array(8192)];
function cpath(s: string, slot = 0): Uint8Array<ArrayBuffer> {
  const b = pathBufs[slot];
  const r = enc.encodeInto(s, b);
  if (r.read !== s.length || r.written >= b.length) return cstr(s);
  b[r.written] = 0;
  return b;
}

// ignoreBOM: a name may begin with U+FEFF, which is part of it (the decoder would drop it).
const dec = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** NUL-terminated field as UTF-8 (a name that is not UTF-8 goes to GNU tar). */
function str(h: Uint8Array, off: number, len: number): string {
  let end = off, ascii = true;
  while (end < off + len && h[end] !== 0) {
    if (h[end] > 127) ascii = false;
    end++;
  }
  if (ascii) return latin(h, off, end);
  try {
    return dec.decode(h.subarray(off, end));
  } catch {
    throw new Unsupported("name not UTF-8");
  }
}

/** Bytes < 128 as a string (no decoder call: most names are ASCII). */
function latin(h: Uint8Array, off: number, end: number): string {
  let s = "";
  for (let i = off; i < end; i += 4096) {
    const part = h.subarray(i, Math.min(end, i + 4096)) as unknown as number[];
    s += String.fromCharCode.apply(null, part);
  }
  return s;
}

/** Whether the 512 bytes at h[0] are all zero (the end-of-archive block). */
function zeroBlock(h: Uint8Array): boolean {
  for (let i = 0; i < 512; i++) if (h[i] !== 0) return false;
  return true;
}

/** The magic field: "ustar\0" + version "00" (POSIX), or "ustar  \0" (GNU); undefined: neither. */
function magicOf(h: Uint8Array): "posix" | "gnu" | undefined {
  if (h[257] !== 117 || h[258] !== 115 || h[259] !== 116 || h[260] !== 97 || h[261] !== 114) {
    return undefined;
  }
  if (h[262] === 0 && h[263] === 48 && h[264] === 48) return "posix";
  if (h[262] === 32 && h[263] === 32 && h[264] === 0) return "gnu";
  return undefined;
}

/** An octal (or base-256, non-negative) numeric header field. */
function num(h: Uint8Array, off: number, len: number): number {
  if (h[off] & 0x80) {
    if (h[off] !== 0x80) throw new Unsupported("negative base-256 field");
    let n = 0;
    for (let i = off + 1; i < off + len; i++) n = n * 256 + h[i];
    if (!Number.isSafeInteger(n)) throw new Unsupported("base-256 field too large");
    return n;
  }
  let i = off, n = 0, digits = 0;
  const end = off + len;
  while (i < end && h[i] === 32) i++;
  for (; i < end && h[i] >= 48 && h[i] <= 55; i++, digits++) n = n * 8 + h[i] - 48;
  for (; i < end; i++) if (h[i] !== 0 && h[i] !== 32) throw new Unsupported("bad octal field");
  if (!digits && len !== 8) throw new Unsupported("empty numeric field");
  return n;
}

function checksumOk(h: Uint8Array): boolean {
  let u = 0, s = 0;
  for (let i = 0; i < 512; i++) {
    const b = i >= 148 && i < 156 ? 32 : h[i];
    u += b;
    s += b > 127 ? b - 256 : b;
  }
  let stored: number;
  try {
    stored = num(h, 148, 8);
  } catch {
    return false;
  }
  return stored === u || stored === s;
}

/** What a PAX extended header (or GNU long name/link) carries over to the next member. */
interface Override {
  path?: string;
  linkpath?: string;
  size?: number;
  uid?: number;
  gid?: number;
  mtime?: { sec: number; nsec: number };
  xattrs?: [string, Uint8Array][];
}

const IGNORED_PAX = new Set(["atime", "ctime", "uname", "gname", "comment"]);

function paxMtime(v: string): { sec: number; nsec: number } {
  const m = /^(\d+)(?:\.(\d{1,9})\d*)?$/.exec(v);
  if (!m) throw new Unsupported(`pax mtime ${v}`);
  return { sec: Number(m[1]), nsec: m[2] ? Number(m[2].padEnd(9, "0")) : 0 };
}

function parsePax(data: Uint8Array, o: Override): void {
  let i = 0;
  while (i < data.length) {
    let sp = i, len = 0;
    for (; sp < data.length && data[sp] !== 32; sp++) {
      const d = data[sp] - 48;
      if (d < 0 || d > 9 || sp - i > 15) throw new Unsupported("bad pax record");
      len = len * 10 + d;
    }
    if (sp === i || len <= sp - i || i + len > data.length) {
      throw new Unsupported("bad pax record");
    }
    const rec = data.subarray(sp + 1, i + len - 1); // without the trailing newline
    if (data[i + len - 1] !== 10) throw new Unsupported("bad pax record end");
    const eq = rec.indexOf(61);
    if (eq < 0) throw new Unsupported("bad pax record");
    const key = str(rec, 0, eq);
    const raw = rec.subarray(eq + 1);
    if (!key.startsWith("SCHILY.xattr.") && raw.includes(0)) {
      throw new Unsupported("NUL in a pax value");
    }
    if (key.startsWith("SCHILY.xattr.")) {
      const name = key.slice("SCHILY.xattr.".length);
      // POSIX ACLs are set as GNU tar sets them (raw, after chmod); other system.* attributes
      // are left to GNU tar's own rules.
      if (!/^(user\.|security\.|trusted\.|system\.posix_acl_(access|default)$)/.test(name)) {
        throw new Unsupported(`xattr ${name}`);
      }
      (o.xattrs ??= []).push([name, raw.slice()]);
    } else if (key === "path" || key === "linkpath") {
      o[key] = str(rec, eq + 1, raw.length);
      if (o[key] === "") throw new Unsupported("empty pax name");
    } else if (key === "size" || key === "uid" || key === "gid") {
      const v = str(rec, eq + 1, raw.length);
      if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) {
        throw new Unsupported(`pax ${key}`);
      }
      o[key] = Number(v);
    } else if (key === "mtime") {
      o.mtime = paxMtime(str(rec, eq + 1, raw.length));
    } else if (!IGNORED_PAX.has(key)) {
      throw new Unsupported(`pax keyword ${key}`);
    }
    i += len;
  }
}

/** The archive's bytes, in order: a file read directly, or a decompressor's output. */
interface Source {
  /** After the end-of-archive marker: whether the input ended well (a decompressor can report
   *  a bad checksum only once it has read everything). */
  finish(): Promise<boolean>;
  /** Fills `into`, returns how many bytes (0: end). */
  read(into: Uint8Array): Promise<number> | number;
  /** Bytes of the archive file consumed so far (for progress), when known. */
  offset(): number | undefined;
  close(): Promise<void>;
}

const decompressor: Record<string, string[]> = {
  gzip: ["gzip", "-dc"],
  xz: ["xz", "-dc"],
  zstd: ["zstd", "-dcq"],
  bzip2: ["bzip2", "-dc"],
};

function openSource(
  file: string,
  compression: string,
  offsetOf: (pid: number) => number | undefined,
): Source {
  if (compression === "none") {
    const f = Deno.openSync(file);
    let at = 0;
    return {
      read(into) {
        const n = f.readSync(into) ?? 0;
        at += n;
        return n;
      },
      offset: () => at,
      finish: () => Promise.resolve(true),
      close: () => Promise.resolve(f.close()),
    };
  }
  const [cmd, ...args] = decompressor[compression];
  const child = new Deno.Command(cmd, {
    args: [...args, file],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.getReader();
  let pending: Uint8Array | undefined;
  return {
    async read(into) {
      let n = 0;
      while (n < into.length) {
        if (!pending) {
          const r = await reader.read();
          if (r.done) break;
          pending = r.value;
        }
        const k = Math.min(pending.length, into.length - n);
        into.set(pending.subarray(0, k), n);
        n += k;
        pending = k < pending.length ? pending.subarray(k) : undefined;
        if (n >= 65536) break; // enough to go on with
      }
      return n;
    },
    offset: () => offsetOf(child.pid),
    async finish() {
      // What follows the end marker is padding; a stream that goes on for long is GNU tar's.
      let rest = pending?.length ?? 0;
      pending = undefined;
      while (rest < 16 << 20) {
        const r = await reader.read();
        if (r.done) return (await child.status).success;
        rest += r.value.length;
      }
      return false;
    },
    async close() {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await reader.cancel().catch(() => {});
      await child.status;
    },
  };
}

export type Kind = "dir" | "file" | "symlink" | "node";

interface DirMeta {
  host: string;
  uid: number;
  gid: number;
  mode: number;
  mtime: { sec: number; nsec: number };
  xattrs?: [string, Uint8Array][];
}

export interface FastResult {
  members: Map<string, Placed>;
  cache: Map<string, CachedHash>;
  /** Everything this run made in the tree, by path (the tree holds nothing else). */
  made: Map<string, Kind>;
  /** The metadata it gave each member it made (walk.ts manifestOfWritten). */
  written: Map<string, Written>;
}

/** Times the kernel may clamp (ext4 with small inodes stops at 2038): read back, as are the
 *  set-id and sticky bits (a chmod without CAP_FSETID drops set-group-id). */
const LATE = 0x7fffffff;

/** Regular files (0, NUL, 7: contiguous), devices and fifos. */
const PLAIN = new Set(["0", "\0", "7", "3", "4", "6"]);
const BUF = 4 << 20;
/** Bytes of a member's content written between two turns of the event loop at most. */
const TURN_EVERY = 64 << 20;
/** Files from this size on are hashed on another thread while the reader goes on (sha256.ts). */
const OFFLOAD_MIN = 256 << 10;
/** Writeback of the whole file system is started (syncfs on a thread of its own) after each
 *  this many bytes written… */
const FLUSH_EVERY = 32 << 20;
/** …and each file from this size on has its own started as soon as it is written. */
const WRITEBACK_MIN = 64 << 10;
/** Files whose writeback is being started at most (each keeps its descriptor until then). */
const WRITEBACK_FDS = 64;
const SYNC_FILE_RANGE_WRITE = 2;
const MAX_META = 1 << 20; // a PAX header or long name larger than this goes to GNU tar

/**
 * Extracts `file` into the fresh, empty directory `dest`. Throws Unsupported (the caller empties
 * `dest` and uses GNU tar), a UserError for a refused name or a full disk, or the abort reason.
 */
export async function extractFast(
  file: string,
  compression: string,
  dest: string,
  opts: {
    what: string;
    hash: boolean;
    total: number;
    onProgress?: Progress;
    signal?: AbortSignal;
    offsetOf: (pid: number) => number | undefined;
    imageArchive: RegExp;
    /** Members refused past this many (default MAX_MEMBERS). */
    maxMembers?: number;
  },
): Promise<FastResult> {
  const what = opts.what, maxMembers = opts.maxMembers ?? MAX_MEMBERS;
  const sym = libc();
  const src = openSource(file, compression, opts.offsetOf);
  // Two buffers, filled in turn: a buffer is filled again only once the hashes still reading it
  // on another thread (`busy`) are done, one buffer later.
  const bufs = [new Uint8Array(BUF), new Uint8Array(BUF)];
  const busy: Promise<unknown>[][] = [[], []];
  let cur = 0, buf = bufs[0];
  let pos = 0, end = 0, eof = false;
  const fill = async (need: number) => {
    if (end - pos >= need) return;
    const next = cur ^ 1;
    if (busy[next].length) {
      const waits = busy[next];
      busy[next] = [];
      await Promise.all(waits);
    }
    bufs[next].set(buf.subarray(pos, end));
    end -= pos;
    pos = 0;
    cur = next;
    buf = bufs[next];
    while (end < need && !eof) {
      const n = await src.read(buf.subarray(end));
      if (n === 0) eof = true;
      end += n;
    }
    if (end < need) throw new Unsupported("unexpected end of archive");
  };
  /** The next `len` bytes (len ≤ MAX_META), copied. */
  const take = async (len: number): Promise<Uint8Array> => {
    const out = new Uint8Array(len);
    let got = 0;
    while (got < len) {
      if (pos === end) await fill(1);
      const k = Math.min(len - got, end - pos);
      out.set(buf.subarray(pos, pos + k), got);
      got += k;
      pos += k;
    }
    return out;
  };
  /** Streams `len` bytes to `sink` (a chunk at a time, a view into the buffer). */
  let streamed = 0; // bytes of members' content since the event loop's last turn in `stream`
  const stream = async (len: number, sink?: (chunk: Uint8Array<ArrayBuffer>) => void) => {
    let left = len;
    while (left > 0) {
      if (pos === end) {
        // An uncompressed archive is read, and every member written, synchronously: a member of
        // 1 GiB held the server's thread 2.3 s (writes throttled by the kernel), and could not
        // be cancelled, without a turn of the event loop here.
        if (streamed >= TURN_EVERY || performance.now() - last > 50) {
          opts.signal?.throwIfAborted();
          await new Promise((r) => setTimeout(r, 0));
          last = performance.now();
          streamed = 0;
        }
        await fill(1);
      }
      const k = Math.min(left, end - pos);
      streamed += k;
      sink?.(buf.subarray(pos, pos + k));
      pos += k;
      left -= k;
    }
  };
  const pad = (size: number) => (512 - size % 512) % 512;

  const members = new Map<string, Placed>();
  const cache = new Map<string, CachedHash>();
  const kinds = new Map<string, Kind>([["/", "dir"]]);
  const dirs = new Map<string, DirMeta>();
  const written = new Map<string, Written>();
  const host = (rel: string) => rel === "/" ? dest : dest + rel;
  let hashing = opts.hash, first = true;
  /** Digests still being computed on another thread (each sets its cache entry's sha256). */
  const digests: Promise<void>[] = [];
  // Calls the kernel makes unneeded: a new file, directory or symlink is owned by our effective
  // ids (no set-group-id directory above: the tree's root is checked, the rest is ours), and a
  // file created with its final mode needs no chmod when the umask leaves that mode as it is.
  // Only once a file made here is seen without xattrs (no default ACL inherited from above, no
  // label from a security module, either of which can make the mode differ from the one asked).
  const euid = sym.geteuid(), egid = sym.getegid();
  const umask = processUmask();
  const rootSetgid = ((Deno.statSync(dest).mode ?? 0o2000) & 0o2000) !== 0;
  let plain = false, probed = false;
  const ownerSet = (uid: number, gid: number) => plain && uid === euid && gid === egid;
  let verifiedParent = "/";
  let last = performance.now();
  // The data goes to disk while the reader goes on, so that the commit's flush has little left:
  // a syncfs every FLUSH_EVERY bytes (on a journalled ext4 it also commits the journal, and can
  // hold the reader's creates up meanwhile) and, per large file, sync_file_range (a write
  // started, no wait, no journal commit). Measured on a journalled ext4 (docs/benchmarks.md):
  // both together finished the import soonest.
  let bytesOut = 0, flushedAt = 0;
  let flushing: Promise<void> | undefined;
  /** A periodic flush's failure (EIO: data lost on its way to the disk), reported once by the
   *  kernel: kept to fail the extraction, a later syncfs would not say it again. */
  let flushFailure: Error | undefined;
  const flush = () => {
    if (flushing || bytesOut - flushedAt < FLUSH_EVERY) return;
    flushedAt = bytesOut;
    flushing = syncfsAsync(dest).catch((e) => void (flushFailure ??= e))
      .finally(() => flushing = undefined);
  };
  const writebacks = new Set<Promise<void>>();
  /** Starts the writeback of fd's data, then closes it. */
  const writeback = async (fd: number) => {
    while (writebacks.size >= WRITEBACK_FDS) await Promise.race(writebacks);
    const p = sym.sync_file_range(fd, 0n, 0n, SYNC_FILE_RANGE_WRITE).then(
      () => void sym.close(fd),
      () => void sym.close(fd),
    );
    writebacks.add(p);
    p.finally(() => writebacks.delete(p));
  };

  /** Makes the ancestors of rel (absent ones as plain directories); any that is not a directory
   *  this run made sends the archive to GNU tar. */
  const parents = (rel: string) => {
    const parent = rel.slice(0, rel.lastIndexOf("/")) || "/";
    if (parent === verifiedParent) return;
    for (const a of ancestorsOf(rel)) {
      const k = kinds.get(a);
      if (k === "dir") continue;
      if (k !== undefined) throw new Unsupported(`${a} is not a directory`);
      ok(sym.mkdir(cpath(host(a)), 0o755), "mkdir", what);
      kinds.set(a, "dir");
    }
    verifiedParent = parent;
  };
  /** Clears the way for a non-directory at rel: a previous non-directory there goes. */
  const replaceable = (rel: string) => {
    const k = kinds.get(rel);
    if (k === undefined) return;
    if (k === "dir") throw new Unsupported(`${rel} replaces a directory`);
    ok(sym.unlink(cpath(host(rel))), "unlink", what);
    kinds.delete(rel);
    cache.delete(rel);
    written.delete(rel);
  };

  try {
    opts.onProgress?.({ phase: "extract", done: 0, total: opts.total });
    let o: Override = {};
    for (;;) {
      if (performance.now() - last > 50) {
        opts.signal?.throwIfAborted();
        const at = src.offset();
        if (at !== undefined) opts.onProgress?.({ phase: "extract", done: at, total: opts.total });
        flush();
        await new Promise((r) => setTimeout(r, 0));
        last = performance.now();
      }
      await fill(512);
      const h = buf.subarray(pos, pos + 512);
      if (zeroBlock(h)) { // end of archive
        if (!(await src.finish())) throw new Unsupported("the decompressor failed");
        break;
      }
      if (!checksumOk(h)) throw new Unsupported("header checksum");
      const magic = magicOf(h);
      if (!magic) throw new Unsupported("not a POSIX or GNU tar header");
      const gnu = magic === "gnu";
      const type = String.fromCharCode(h[156]);
      const meta = type === "x" || type === "L" || type === "K";
      const size = meta ? num(h, 124, 12) : o.size ?? num(h, 124, 12);
      pos += 512;
      if (meta) {
        if (size > MAX_META) throw new Unsupported("extended header too large");
        const data = await take(size);
        await stream(pad(size));
        if (type === "x") parsePax(data, o);
        else {
          const end0 = data.indexOf(0);
          const s = str(data, 0, end0 < 0 ? data.length : end0);
          if (type === "L") o.path = s;
          else o.linkpath = s;
        }
        continue;
      }
      let name = o.path;
      if (name === undefined) {
        name = str(h, 0, 100);
        const prefix = gnu ? "" : str(h, 345, 155);
        if (prefix) name = `${prefix}/${name}`;
      }
      const link = o.linkpath ?? (h[156] === 49 || h[156] === 50 ? str(h, 157, 100) : "");
      const uid = o.uid ?? num(h, 108, 8), gid = o.gid ?? num(h, 116, 8);
      if (uid > 0xfffffffe || gid > 0xfffffffe) throw new Unsupported("owner out of range");
      const mode = num(h, 100, 8) & 0o7777;
      const mtime = o.mtime ?? { sec: num(h, 136, 12), nsec: 0 };
      const xattrs = o.xattrs;
      o = {};
      const kind: Member["kind"] | undefined = type === "5"
        ? "dir"
        : type === "2"
        ? "symlink"
        : type === "1"
        ? "hardlink"
        : PLAIN.has(type)
        ? "other"
        : undefined;
      if (kind === undefined) throw new Unsupported(`member type ${JSON.stringify(type)}`);
      if (name.endsWith("/") && kind !== "dir") throw new Unsupported("file name ends in /");
      if (name === "") throw new Unsupported("empty name");
      const regular = type === "0" || type === "\0" || type === "7";
      if (!regular && size !== 0) throw new Unsupported(`data with a member of type ${type}`);
      const m: Member = { name, kind, size: regular ? size : 0 };
      if (kind === "symlink" || kind === "hardlink") m.link = link;
      const p = place(m, what); // a hostile name or link target ends the import here
      if (members.get(p.rel)?.kind !== undefined && members.get(p.rel)!.kind !== kind) {
        throw new Unsupported(`${p.rel} listed again with another type`);
      }
      members.set(p.rel, p);
      if (members.size > maxMembers) throw tooManyMembers(what, maxMembers);
      if (first && p.rel !== "/") {
        if (opts.imageArchive.test(p.rel)) hashing = false; // blobs of layers, not a rootfs
        first = false;
      }
      if (xattrs && kind !== "dir" && !regular) throw new Unsupported("xattrs on a special file");
      const full = host(p.rel);

      if (kind === "dir") {
        if (p.rel !== "/") {
          parents(p.rel);
          const k = kinds.get(p.rel);
          if (k === undefined) {
            ok(sym.mkdir(cpath(full), 0o700), "mkdir", what);
            kinds.set(p.rel, "dir");
          } else if (k !== "dir") throw new Unsupported(`${p.rel} replaces a non-directory`);
        }
        dirs.set(p.rel, { host: full, uid, gid, mode, mtime, xattrs });
        const recheck = xattrs !== undefined || mtime.sec > LATE || (mode & 0o7000) !== 0;
        written.set(p.rel, { type: "dir", mode, uid, gid, size: 0, mtime: mtime.sec, recheck });
        await stream(size + pad(size));
        continue;
      }
      parents(p.rel);
      replaceable(p.rel);
      if (regular) {
        // Created with its final mode where the umask keeps it and no set-id bit (a chown would
        // drop those); else 0600 and a chmod after the chown.
        const direct = plain && (mode & 0o7000) === 0 && (mode & (umask ?? 0o777)) === 0;
        const fd = sym.open(
          cpath(full),
          O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
          direct ? mode : 0o600,
        );
        if (fd < 0) failed("open", what);
        kinds.set(p.rel, "file");
        const offload = hashing && size >= OFFLOAD_MIN ? sha256Stream() : undefined;
        const digest = hashing && !offload ? createHash("sha256") : undefined;
        let ino = 0;
        try {
          await stream(size, (chunk) => {
            if (offload) {
              busy[cur].push(offload.update(chunk)?.catch(() => {}) ?? Promise.resolve());
            } else digest?.update(chunk);
            for (let w = 0; w < chunk.length;) {
              const n = Number(sym.write(fd, chunk.subarray(w), BigInt(chunk.length - w)));
              if (n <= 0) {
                if (n === 0) throw new Unsupported("write wrote nothing");
                failed("write", what);
              }
              w += n;
            }
          });
          if (!ownerSet(uid, gid)) ok(sym.fchown(fd, uid, gid), "fchown", what);
          // after chown, which clears set-id bits
          if (!direct) ok(sym.fchmod(fd, mode), "fchmod", what);
          if (!probed && !xattrs && !rootSetgid && umask !== undefined) {
            // The first file without archive xattrs: does the kernel add any here?
            probed = true;
            plain = Number(sym.flistxattr(fd, null, 0n)) === 0;
          }
          for (const [k, v] of xattrs ?? []) {
            ok(
              sym.fsetxattr(fd, cstr(k), v as Uint8Array<ArrayBuffer>, BigInt(v.length), 0),
              "fsetxattr",
              what,
            );
          }
          ok(sym.futimens(fd, times(mtime.sec, mtime.nsec)), "futimens", what);
          if (hashing) {
            ok(sym.fstat(fd, statBuf), "fstat", what);
            ino = Number(statView.getBigUint64(8, true)); // (the buffer is shared: read now)
          }
        } catch (e) {
          sym.close(fd);
          // (frees its context once its updates are done; awaited on the way out)
          if (offload) digests.push(offload.digest().then(() => {}, () => {}));
          throw e;
        }
        if (size >= WRITEBACK_MIN) await writeback(fd);
        else sym.close(fd);
        bytesOut += size;
        written.set(p.rel, {
          type: "file",
          mode,
          uid,
          gid,
          size,
          mtime: mtime.sec,
          recheck: xattrs !== undefined || mtime.sec > LATE || (mode & 0o7000) !== 0,
        });
        if (hashing) {
          // What the scan's lstat will say of this file (inode, size, mtime in ms as Deno
          // gives it): from the descriptor, no second lookup of the path.
          const c: CachedHash = {
            ino,
            size,
            mtimeMs: mtime.sec * 1000 + Math.floor(mtime.nsec / 1e6),
            sha256: digest ? digest.digest("hex") : "",
          };
          cache.set(p.rel, c); // hard links to it share this object
          if (offload) digests.push(offload.digest().then((d) => void (c.sha256 = d)));
        }
        await stream(pad(size));
        continue;
      }
      await stream(size + pad(size)); // data of a link or a node: not extracted (as GNU tar)
      if (kind === "hardlink") {
        const target = p.linkRel!;
        if (target === p.rel || kinds.get(target) !== "file") {
          throw new Unsupported(`hard link ${p.rel} to ${target}`);
        }
        ok(sym.link(cpath(host(target)), cpath(full, 1)), "link", what);
        kinds.set(p.rel, "file");
        const c = cache.get(target);
        if (c) cache.set(p.rel, c);
        const w = written.get(target);
        if (w) written.set(p.rel, w); // one inode: the target's metadata
        continue;
      }
      if (kind === "symlink") {
        ok(sym.symlink(cpath(link), cpath(full, 1)), "symlink", what);
        kinds.set(p.rel, "symlink");
        if (!ownerSet(uid, gid)) ok(sym.lchown(cpath(full), uid, gid), "lchown", what);
        written.set(p.rel, {
          type: "symlink",
          mode: 0o777,
          uid,
          gid,
          size: 0,
          mtime: mtime.sec,
          target: link,
          recheck: mtime.sec > LATE,
        });
      } else {
        const ifmt = type === "3" ? S_IFCHR : type === "4" ? S_IFBLK : S_IFIFO;
        const dev = ifmt === S_IFIFO ? 0n : makedev(num(h, 329, 8), num(h, 337, 8));
        ok(sym.mknod(cstr(full), ifmt | 0o600, dev), "mknod", what);
        kinds.set(p.rel, "node");
        ok(sym.lchown(cstr(full), uid, gid), "lchown", what);
        ok(sym.chmod(cstr(full), mode), "chmod", what);
        // rdev as the kernel encodes it: read back
        written.set(p.rel, { type: "node", mode, uid, gid, size: 0, mtime: 0, recheck: true });
      }
      ok(
        sym.utimensat(AT_FDCWD, cpath(full), times(mtime.sec, mtime.nsec), AT_SYMLINK_NOFOLLOW),
        "utimensat",
        what,
      );
    }
    // Directories last (their content changes their mtime), every one a directory this run made.
    for (const d of dirs.values()) {
      const p = cpath(d.host);
      if (!ownerSet(d.uid, d.gid)) ok(sym.lchown(p, d.uid, d.gid), "lchown", what);
      ok(sym.chmod(p, d.mode), "chmod", what);
      for (const [k, v] of d.xattrs ?? []) {
        ok(
          sym.lsetxattr(p, cstr(k), v as Uint8Array<ArrayBuffer>, BigInt(v.length), 0),
          "lsetxattr",
          what,
        );
      }
      ok(
        sym.utimensat(AT_FDCWD, p, times(d.mtime.sec, d.mtime.nsec), AT_SYMLINK_NOFOLLOW),
        "utimensat",
        what,
      );
    }
    await Promise.all(digests);
    await Promise.all(writebacks);
    await flushing;
    if (flushFailure) {
      throw new UserError(`writing the tree to the disk failed: ${flushFailure.message}`, 500);
    }
    opts.onProgress?.({ phase: "extract", done: opts.total, total: opts.total });
    return { members, cache, made: kinds, written };
  } finally {
    await src.close();
    // No hash may still read the buffers, nor a digest context stay allocated, once we return.
    await Promise.allSettled([...busy[0], ...busy[1], ...digests, ...writebacks]);
    await flushing;
  }
}
