// The local copy of an image for hybrid boot, driven by the image's content manifest:
// - verified: every regular file is hashed while it is written and must match the manifest; the
//   copy becomes `<id>/image` (atomic rename of `<id>/image.part`) only after syncfs;
// - resumable: after a power cut, `image.part` is reused file by file, but only files whose size
//   and sha256 match again (re-read locally, never trusted blindly). A checkpoint (syncfs) every
//   256 MiB or 30 s of written data bounds what a power cut loses: without it, delayed allocation
//   can leave every file of a copy empty on disk;
// - incremental: a file with the same content and metadata in another complete copy on the disk is
//   hard-linked from there instead of being written.
// Disk layout under the hybrid dir (WalT-compatible names):  <id>/image  <id>/image.part
// <id>/manifest  <id>/diff (overlay upper)  <id>/work  <id>/last-boot
import { workerFromSource } from "../src/worker.ts";
import { sleep } from "../src/timer.ts";
import { type ManifestEntry, manifestLines } from "../contract/manifest.ts";
import {
  clearImmutable,
  fsyncDir,
  lchown,
  lutimes,
  mknod,
  readDirStream,
  S_IFBLK,
  S_IFCHR,
  S_IFIFO,
  S_IFSOCK,
  syncfsAsync,
} from "../src/linux/fsops.ts";
import { removeXattr, setXattr } from "../src/linux/xattr.ts";

export class HybridError extends Error {
  constructor(
    readonly reason: "no-space" | "corrupt" | "io" | "manifest",
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "HybridError";
  }
}

export interface CopyProgress {
  done: number;
  total: number;
  /** bytes/s of data actually written */
  rate: number;
}

export interface CopyReport {
  imageId: string;
  entries: number;
  bytesTotal: number;
  /** data read from the source and written to the disk */
  bytesWritten: number;
  /** data hard-linked from other complete copies on the disk (nothing written) */
  bytesLinked: number;
  /** data kept from an interrupted earlier copy after re-verification */
  bytesReused: number;
  /** data kept in place from the previous version's copy (a re-deploy in place) */
  bytesKept: number;
  resumed: boolean;
  ms: number;
  /** threads that copied: the main thread and the helper workers it added */
  threads: number;
  /** batches of files the helper workers copied (the main thread did the others) */
  workerBatches: number;
  /** of `ms`, the final syncfs (the disk catching up with the copy) */
  flushMs: number;
}

/** Checkpoints (syncfs) of a copy: each costs the copy ~0.1 s of CPU per 64 MiB flushed and, on a
 *  busy machine, stalls its file creations behind the journal commit (measured: a 197 MB copy
 *  used 0.87 s of CPU with one every 64 MiB, 0.53 s without); so at most one per 256 MiB or 30 s.
 *  A power cut loses at most that much of the copy (re-verified and copied again on resume). */
const checkpointBytes = 256 << 20, checkpointMs = 30_000;

export const imageIdPattern = /^[0-9a-f]{64}$/;

/** The image id names the copy's directory under walt-hybrid/: only a sha256 is taken (what the
 *  server renders; `netroot.image=..` would have cleared the partition's own entries). */
export function checkImageId(imageId: string): void {
  if (!imageIdPattern.test(imageId)) {
    throw new HybridError(
      "manifest",
      `image id ${JSON.stringify(imageId.slice(0, 80))} is not a sha256`,
    );
  }
}

/** Throws unless the manifest's digest is the image id (an image id is its manifest's sha256). */
export function checkManifestDigest(imageId: string, digest: string): void {
  if (digest !== imageId) {
    throw new HybridError(
      "manifest",
      `manifest does not hash to image id ${imageId.slice(0, 12)}…`,
    );
  }
}

// No node:* import in the node program's static graph: Deno's node polyfills need /proc, and the
// init must start before anything is mounted. (The data workers import node:crypto at run time.)
export async function sha256hex(data: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(data));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function copyPaths(hybridDir: string, imageId: string) {
  const base = `${hybridDir}/${imageId}`;
  return {
    base,
    image: `${base}/image`,
    part: `${base}/image.part`,
    manifest: `${base}/manifest`,
    upper: `${base}/diff`,
    work: `${base}/work`,
    lastBoot: `${base}/last-boot`,
  };
}

export function isComplete(hybridDir: string, imageId: string): boolean {
  const p = copyPaths(hybridDir, imageId);
  // lstat: a link planted in place of the copy (the disk is not trusted) is no copy
  return !!lstatOrNull(p.image)?.isDirectory && !!lstatOrNull(p.manifest)?.isFile;
}

/**
 * The disk is not trusted: whoever was root on this node before (any image, or a persistent hybrid
 * image writing to this very partition) may have put a symlink, a FIFO or a device node where the
 * copy keeps its own entries, so that the init (PID 1, about to run someone else's image) would
 * write, remove or block through it. Before the copy touches `<id>/`, each of its own entries that
 * is not what the copy makes there (a real directory; a regular file) is removed — the entry
 * itself, never what it points to.
 */
export function clearPlanted(hybridDir: string, imageId: string): void {
  const p = copyPaths(hybridDir, imageId);
  const expect: [string, "dir" | "file"][] = [
    [p.base, "dir"],
    [p.image, "dir"],
    [p.part, "dir"],
    [p.upper, "dir"],
    [p.work, "dir"],
    [p.manifest, "file"],
    [p.lastBoot, "file"],
  ];
  for (const [path, kind] of expect) {
    const st = lstatOrNull(path);
    if (!st || (kind === "dir" ? st.isDirectory : st.isFile)) continue;
    removeTree(path); // a directory planted at a file's name too: it failed every boot
    if (path === p.base) return; // nothing below it left to check
  }
}

/** Writes one of the copy's own small files (last-boot): in place when it is a regular file with
 *  no other name (so that a full partition still takes it, as before), else as a new file — never
 *  through a symlink, FIFO, device node or hard link planted at `path`. */
export function writeOwnFile(path: string, text: string): void {
  const st = lstatOrNull(path);
  if (st && !(st.isFile && st.nlink === 1)) evenIfImmutable(path, () => Deno.removeSync(path));
  evenIfImmutable(path, () => Deno.writeTextFileSync(path, text));
}

/** The largest manifest taken: ~800,000 entries (a 700 MB Debian image's is 3.3 MB), while a
 *  node that holds it (about twice, as bytes and as text) still has room to boot. */
export const maxManifestBytes = 128 << 20;

/** The entries of another complete copy's manifest, as found on the disk (not trusted: any size,
 *  any text); undefined when it is too big or does not parse: that copy is then not used. */
function copyManifest(hybridDir: string, id: string): ManifestEntry[] | undefined {
  const path = copyPaths(hybridDir, id).manifest;
  try {
    if (Deno.lstatSync(path).size > maxManifestBytes) return undefined;
    return [...manifestLines(Deno.readTextFileSync(path))];
  } catch {
    return undefined;
  }
}

/** Key under which identical files (content and metadata) can share an inode. */
function linkKey(e: ManifestEntry): string {
  return `${e.sha256}:${e.mode}:${e.uid}:${e.gid}:${e.mtime}:${JSON.stringify(e.xattrs ?? {})}`;
}

/** sha256+metadata → path of that file in another complete copy on this disk. */
export function indexOtherCopies(hybridDir: string, except: string): Map<string, string> {
  const index = new Map<string, string>();
  for (const id of completeCopies(hybridDir, except)) {
    const p = copyPaths(hybridDir, id);
    for (const e of copyManifest(hybridDir, id) ?? []) {
      if (e.type === "file" && e.sha256 && !index.has(linkKey(e))) {
        index.set(linkKey(e), p.image + e.path);
      }
    }
  }
  return index;
}

/** Bytes (rounded to blocks) and inodes a copy still needs, given what can be hard-linked. */
export function estimateNeed(
  entries: ManifestEntry[],
  index: Map<string, string>,
  blockSize = 4096,
  present: (e: ManifestEntry) => boolean = () => false,
): { bytes: number; inodes: number } {
  let bytes = 0, inodes = 0;
  for (const e of entries) {
    if (e.type === "hardlink") continue;
    if (e.type === "file" && index.has(linkKey(e))) continue;
    if (present(e)) continue;
    inodes++;
    const size = e.type === "file" ? e.size : e.type === "dir" ? blockSize : 0;
    bytes += Math.ceil(size / blockSize) * blockSize;
  }
  return { bytes, inodes };
}

function lstatOrNull(p: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(p);
  } catch {
    return null;
  }
}

/**
 * Removes `path` and everything below it, never following a link; nothing there is fine. The trees
 * are the disk's: the last boot's users (through /tmp, no root needed) may have left a directory
 * thousands of levels deep in a copy's diff/, and Deno's recursive remove holds a directory open
 * per level: past PID 1's 1024 open files it failed, at every later boot of that image (hybrid
 * mode never again). What it could not remove is then taken apart flat: each directory is moved
 * to the top of `path` before it is emptied, so neither a path nor the open files grow with depth.
 */
export function removeTree(path: string): void {
  const st = lstatOrNull(path);
  if (!st) return;
  try {
    return Deno.removeSync(path, { recursive: st.isDirectory });
  } catch {
    if (!st.isDirectory) return evenIfImmutable(path, () => Deno.removeSync(path));
  }
  // The listings are read as they are used (readDirStream), never whole: a directory of millions
  // of names (any user of the last boot can make one) listed at once took ~1 KiB of PID 1 a name.
  // The directories moved up while `path` is read are taken in this pass or the next.
  let n = 0;
  for (let again = true; again;) {
    again = false;
    for (const e of readDirStream(path)) {
      again = true;
      const dir = `${path}/${e.name}`;
      if (!e.isDirectory) {
        evenIfImmutable(dir, () => Deno.removeSync(dir));
        continue;
      }
      for (const c of readDirStream(dir)) {
        const child = `${dir}/${c.name}`;
        if (!c.isDirectory) {
          evenIfImmutable(child, () => Deno.removeSync(child));
          continue;
        }
        let to: string;
        do to = `${path}/.rm${n++}`; while (lstatOrNull(to));
        evenIfImmutable(child, () => Deno.renameSync(child, to));
      }
      evenIfImmutable(dir, () => Deno.removeSync(dir));
    }
  }
  evenIfImmutable(path, () => Deno.removeSync(path));
}

/**
 * `op` (a removal, a rename or a write of `path`), once more after `chattr -ia` of `path` and of
 * its directory when they refused it. Through the overlay, `chattr +i` only sets an attribute of
 * overlayfs's own (trusted.overlay.protattr, Linux ≥ 5.15); but the partition itself is the
 * node's (root on it remounts /run/netroot/disks/… read-write, another system on the disk writes
 * it), and an entry made immutable or append-only there failed each boot's emptying of diff/, the
 * eviction of that copy or the write of its last-boot: hybrid mode lost for good. PID 1 may clear
 * both flags.
 */
function evenIfImmutable(path: string, op: () => void): void {
  try {
    op();
  } catch (e) {
    if (!(e instanceof Deno.errors.PermissionDenied)) throw e;
    const cleared = clearImmutable(path);
    if (!(clearImmutable(path.slice(0, path.lastIndexOf("/")) || "/") || cleared)) throw e;
    op();
  }
}

/** `mkdir -p` of one of the copy's own directories (`<id>/`, its image.part, diff/, work/), even
 *  when its directory was made immutable or append-only on the partition (see evenIfImmutable). */
export function makeOwnDir(path: string): void {
  evenIfImmutable(path, () => Deno.mkdirSync(path, { recursive: true }));
}

/** Whether a copy failed on EPERM: a file or directory of the copy it works in (an interrupted
 *  copy, the previous version re-deployed in place) made immutable or append-only. */
export function failedOnImmutable(e: unknown): boolean {
  return e instanceof HybridError && e.reason === "io" &&
    (e.cause as { code?: string } | undefined)?.code === "EPERM";
}

/** `chattr -R -ia` of a tree, without following links; whether any flag was cleared. Only on a
 *  failed copy's tree (one open per entry): the copy then runs once more. */
export function clearImmutableTree(root: string): boolean {
  let cleared = false;
  for (const stack = [root]; stack.length;) {
    const dir = stack.pop()!;
    cleared = clearImmutable(dir) || cleared;
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(dir)];
    } catch {
      continue;
    }
    for (const e of entries) {
      if (e.isDirectory) stack.push(`${dir}/${e.name}`);
      else if (e.isFile) cleared = clearImmutable(`${dir}/${e.name}`) || cleared;
    }
  }
  return cleared;
}

function applyMeta(path: string, e: ManifestEntry): void {
  lchown(path, e.uid, e.gid);
  if (e.type !== "symlink") Deno.chmodSync(path, e.mode & 0o7777); // after chown: it clears suid
  for (const [name, b64] of Object.entries(e.xattrs ?? {})) {
    setXattr(path, name, Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
  }
  lutimes(path, e.mtime);
}

// File data: a batch of files (up to `batchBytes` or `batchFiles`) at a time, each file's whole
// work done by one thread: read in large reads, sha256 while reading (no second pass), one write
// per read, compare with the manifest, then owner, mode and mtime (on the open file). The main
// thread copies batches itself, with sync calls (no worker to wait for, no message per batch). A
// copy of 32 MiB or more on a machine with a second core gets one helper worker from the start (two
// copying threads, as tar | tar has two processes: on a busy machine each thread gets its share);
// further workers only while they pay: when the CPU had a spare core over the last window
// (/proc/stat) and enough of the copy is left to earn a worker's start (~0.1 s of CPU), up to one
// per available core (an idle node reading a slow source, NFS, gets them; a loaded machine not).

/** The hash the copy uses: node:crypto's (SHA-NI); loaded at run time (see sha256hex). */
interface Hasher {
  update(b: Uint8Array): Hasher;
  digest(enc: "hex"): string;
}
type CreateHash = (alg: "sha256") => Hasher;

/**
 * Runs a batch of jobs; what it returns are the faults (a mismatch or an error), by index. Self-
 * contained (only its arguments, no outer name): its text is also a worker's code.
 */
function runJobs(jobs: Job[], buf: Uint8Array, createHash: CreateHash): JobFault[] {
  const one = (j: Job): JobFault | null => {
    const h = createHash("sha256");
    let size = 0;
    if (j.op === "copy") {
      // The source is the image's NFS export, and whoever answers at the server's address serves
      // it: a link there is followed on this node, where a FIFO blocked the open for ever and
      // /dev/zero was read without end (2 GB written to the partition in 8 s, the init silent).
      // Only a regular file of the export's own file system is opened.
      const st = Deno.statSync(j.src);
      if (!st.isFile || st.dev !== j.srcDev) {
        const what = st.isFile ? "a file of another file system" : "not a regular file";
        return {
          i: -1,
          foreign: `${what} (the export's file system is ${j.srcDev}, this ${st.dev})`,
        };
      }
    }
    const inF = Deno.openSync(j.op === "hash" ? j.dst : j.src, { read: true });
    let outF: Deno.FsFile | null = null;
    try {
      if (j.op === "copy") {
        // a new file gets its permission bits now (the directories above are still 0700)
        const mode = j.overwrite ? 0o600 : j.mode & 0o777;
        outF = Deno.openSync(j.dst, { write: true, create: true, truncate: !j.overwrite, mode });
      }
      for (;;) {
        const n = inF.readSync(buf);
        if (n === null) break;
        const chunk = buf.subarray(0, n);
        h.update(chunk);
        if (outF) { for (let off = 0; off < n;) off += outF.writeSync(chunk.subarray(off)); }
        size += n;
        // A short read of a regular file is its end: no read for the EOF when it ends where the
        // manifest says (a shorter file reads on and fails the size check); a longer one is read
        // no further than a read past its size, whatever the source says its size is.
        if ((n < buf.length && size === j.size) || size > j.size) break;
      }
      const digest = h.digest("hex");
      if (digest !== j.sha256 || size !== j.size) return { i: -1, digest, size };
      if (outF) {
        if (j.overwrite) outF.truncateSync(size);
        outF.utimeSync(j.mtime, j.mtime); // after the last write, on the open file
      }
    } finally {
      inF.close();
      outF?.close();
    }
    if (j.op === "copy") {
      if (j.chown) Deno.chownSync(j.dst, j.uid, j.gid);
      if (j.chmod) Deno.chmodSync(j.dst, j.mode & 0o7777); // after chown: it clears suid
    }
    return null;
  };
  const out: JobFault[] = [];
  for (let i = 0; i < jobs.length; i++) {
    try {
      const r = one(jobs[i]);
      if (r) out.push({ ...r, i });
    } catch (e) {
      const err = e as Error & { code?: string };
      out.push({ i, error: String(err?.message ?? err), code: err?.code });
      if (err?.code === "ENOSPC") break;
    }
  }
  return out;
}

const bufSize = 1 << 20;
const workerSource = `import { createHash } from "node:crypto";
const runJobs = ${runJobs.toString()};
const buf = new Uint8Array(${bufSize});
let state;
self.onmessage = ({ data }) => {
  if (data.state) {
    state = new Int32Array(data.state);
    Atomics.store(state, 0, 1); // ready: node:crypto is loaded
    return;
  }
  self.postMessage({ id: data.id, out: runJobs(data.jobs, buf, createHash) });
  Atomics.add(state, 1, 1); // one more batch done (its answer is already on its way)
};`;

/** One file for a copier: copy `src` to `dst` (or, "hash", re-hash `dst`), verified against the
 *  manifest's sha256 and size; a verified copy gets its owner, mode and mtime. */
interface Job {
  op: "copy" | "hash";
  src: string;
  dst: string;
  size: number;
  sha256: string;
  uid: number;
  gid: number;
  mode: number;
  mtime: number;
  /** st_dev of the source tree (copy): a file to copy must be on that file system */
  srcDev?: number;
  /** write over the existing file (same inode, no truncate first; its own, not linked) */
  overwrite?: boolean;
  /** set the owner (not needed for a new file of root's in a fresh copy made by root) */
  chown: boolean;
  /** set the mode (not needed when the file is new and the umask left its bits as they are) */
  chmod: boolean;
}

/** A copier's answer for one job of a batch: a mismatch (digest/size) or an error. */
interface JobFault {
  i: number;
  digest?: string;
  size?: number;
  /** the source is not a regular file of the export (what it is) */
  foreign?: string;
  error?: string;
  code?: string;
}

const batchBytes = 8 << 20, batchFiles = 64;
/** Batches queued in each worker: it starts the next without waiting for the main thread. */
const perWorker = 2;

/** Helper workers at most: one per available core (sched affinity and cgroup quota, as Deno
 *  counts them), besides the main thread, up to 8. */
export function maxWorkers(cores = navigator.hardwareConcurrency || 1): number {
  return Math.max(1, Math.min(8, cores));
}

/** Data to write for which a first worker is started at once (given a second core). */
const firstWorkerBytes = 32 << 20;
/** Another worker is added when at least this much CPU (in cores) was idle over the last window. */
const spareToGrow = 0.75;
/** … and when the copy, at its pace so far, has at least this long to go. */
const leftToGrowMs = 400;
/** Length of a measuring window. */
const windowMs = 150;
/** An event-loop turn at least this often while the main thread copies (see Copiers.yield). */
const idleTurnMs = 250;

/** Idle CPU of the whole machine, in cores, between two calls (/proc/stat; without it, the free
 *  cores by the load average). */
class IdleProbe {
  #last?: { at: number; idle: number };
  spare(): number | undefined {
    const at = performance.now();
    let idle: number;
    try {
      const f = Deno.readTextFileSync("/proc/stat").slice(0, 200).split("\n")[0].split(/\s+/);
      idle = (Number(f[4]) + Number(f[5])) * 10; // idle + iowait, USER_HZ (100) ticks → ms
    } catch {
      return (navigator.hardwareConcurrency || 1) - Deno.loadavg()[0];
    }
    const last = this.#last;
    this.#last = { at, idle };
    return last ? (idle - last.idle) / Math.max(at - last.at, 1) : undefined;
  }
}

/** A helper worker. Its state is shared memory, so that the main thread, busy copying with sync
 *  calls, sees without an event-loop turn when the worker is ready and how many batches it has
 *  done: [0] ready, [1] batches done. Its answers (faults) are read at the next turn. */
interface Slot {
  w: Worker;
  state: Int32Array;
  posted: number;
  /** answers received (an event-loop turn each) */
  answered: number;
}

/** The threads that copy: the main thread, and the helper workers it added. */
class Copiers {
  readonly buf = new Uint8Array(bufSize);
  #createHash?: CreateHash;
  #workers: Slot[] = [];
  #batches = new Map<
    number,
    { slot: Slot; resolve(f: JobFault[]): void; reject(e: Error): void }
  >();
  #next = 0;
  /** batches given to workers so far */
  workerBatches = 0;
  #probe = new IdleProbe();
  #windowFrom = performance.now();
  #lastYield = performance.now();
  /** Resolves the turn the main thread waits in for a worker's answer. */
  #wake?: () => void;

  constructor(
    readonly cores = navigator.hardwareConcurrency || 1,
    readonly limit = maxWorkers(cores),
  ) {}

  /** A first helper worker, when there is a second core and `bytes` (still to copy, or a bound
   *  of it) are enough to earn its start: creating it holds the main thread ~0.1 s (Deno builds
   *  the worker's runtime before `new Worker` returns), so it is made before the copy starts. */
  first(bytes: number, from = firstWorkerBytes): void {
    if (this.limit >= 1 && this.cores >= 2 && bytes >= from && !this.#workers.length) {
      this.#add();
    }
  }

  /** The copy starts: the first measuring window opens. */
  start(): void {
    this.#probe.spare();
    this.#windowFrom = performance.now();
  }

  /** node:crypto, loaded at run time, once /proc is there (see sha256hex): by a name the module
   *  graph does not see, so that the node program's graph holds no node:* module. */
  async load(): Promise<void> {
    const name = ["node", "crypto"].join(":");
    this.#createHash ??= (await import(name)).createHash as CreateHash;
  }

  sha256hex(text: string): string {
    return this.#createHash!("sha256").update(new TextEncoder().encode(text)).digest("hex");
  }

  get workers(): number {
    return this.#workers.length;
  }

  #backlog(s: Slot): number {
    return s.posted - Atomics.load(s.state, 1);
  }

  /** A batch on a ready worker with room, else here and now (its faults, synchronously). */
  run(jobs: Job[]): JobFault[] | Promise<JobFault[]> {
    let slot: Slot | undefined;
    for (const s of this.#workers) {
      if (Atomics.load(s.state, 0) !== 1 || this.#backlog(s) >= perWorker) continue;
      if (!slot || this.#backlog(s) < this.#backlog(slot)) slot = s;
    }
    if (!slot) return runJobs(jobs, this.buf, this.#createHash!);
    const s = slot;
    return new Promise((resolve, reject) => {
      const id = this.#next++;
      this.#batches.set(id, { slot: s, resolve, reject });
      s.posted++;
      this.workerBatches++;
      s.w.postMessage({ id, jobs });
    });
  }

  /** Adds a worker when the last window had a spare core and the copy enough left to earn it
   *  (`done`/`total`: where the walk of the manifest is, in bytes; `ms`: since it started). */
  consider(done: number, total: number, ms: number): void {
    const now = performance.now();
    if (now - this.#windowFrom < windowMs || this.#workers.length >= this.limit) return;
    if (this.#workers.some((s) => Atomics.load(s.state, 0) !== 1)) return; // one at a time
    const spare = this.#probe.spare();
    this.#windowFrom = now;
    const left = done > 0 ? (total - done) * ms / done : Infinity;
    if (spare !== undefined && spare >= spareToGrow && left >= leftToGrowMs) this.#add();
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #add(): void {
    const state = new Int32Array(new SharedArrayBuffer(8));
    const slot: Slot = { w: workerFromSource(workerSource), state, posted: 0, answered: 0 };
    slot.w.postMessage({ state: state.buffer });
    slot.w.onmessage = ({ data }) => {
      const b = this.#batches.get(data.id)!;
      this.#batches.delete(data.id);
      slot.answered++;
      b.resolve(data.out);
      this.#wakeUp();
    };
    slot.w.onerror = (ev) => {
      ev.preventDefault();
      Atomics.store(state, 0, 2); // never given work again
      for (const [id, b] of this.#batches) {
        if (b.slot !== slot) continue;
        this.#batches.delete(id);
        b.reject(new Error(`copy worker: ${ev.message}`));
      }
      this.#wakeUp();
    };
    this.#workers.push(slot);
  }

  /** An event-loop turn is due: a worker's answer is waiting (its done count is ahead of the
   *  answers received), or 250 ms went by without a turn (checkpoints, progress reports). */
  get mustYield(): boolean {
    return this.#answerWaiting() || performance.now() - this.#lastYield >= idleTurnMs;
  }

  #answerWaiting(): boolean {
    return this.#workers.some((s) => Atomics.load(s.state, 1) > s.answered);
  }

  /** The event loop runs. For a worker's answer, the turn waits for that message only: it is
   *  already on its way, so the thread does not sleep. Otherwise a timer (src/timer.ts: not
   *  setTimeout): on a loaded machine the thread waits its turn for the CPU after it (measured
   *  8–67 ms a turn at load 5–6): hence not more often. */
  async yield(): Promise<void> {
    if (this.#answerWaiting()) await new Promise<void>((resolve) => (this.#wake = resolve));
    else await sleep(0);
    this.#lastYield = performance.now();
  }

  close() {
    for (const s of this.#workers) s.w.terminate();
    for (const b of this.#batches.values()) b.reject(new Error("copy aborted"));
    this.#batches.clear();
  }
}

function wrapFsError(e: unknown, what: string): never {
  if (e instanceof HybridError) throw e;
  const err = e as Error & { code?: string };
  if (err.code === "ENOSPC" || /No space left|ENOSPC/.test(err.message)) {
    throw new HybridError("no-space", `disk full while writing ${what}`);
  }
  throw new HybridError("io", `${what}: ${err.message}`, { cause: err });
}

export interface CopyOptions {
  /** the image tree to copy from (the read-only NFS mount) */
  source: string;
  hybridDir: string;
  imageId: string;
  /** the manifest text; its sha256 must be the image id */
  manifestText: string;
  onProgress?(p: CopyProgress): void;
  progressIntervalMs?: number;
  /** syncfs after this much written data (default 256 MiB) or time (default 30 s, the kernel's
   *  own dirty_expire), whichever first */
  checkpointBytes?: number;
  checkpointMs?: number;
  /** how the copy is made (planCopy), from a manifest the caller checked against the image id
   *  (prepareHybridRoot does so before it plans); planned here, after that check, when not given */
  plan?: CopyPlan;
  /** data to write from which a first helper worker starts at once, given a second core
   *  (default 32 MiB; smaller copies start on the main thread alone) */
  firstWorkerBytes?: number;
}

/**
 * How a copy of `imageId` is made:
 * - "fresh": a new `image.part`, files hard-linked from other complete copies when identical;
 * - "resume": `image.part` exists (an interrupted copy, or an interrupted re-deploy in place):
 *   whatever it holds is re-verified (sha256 of each file), extra entries removed;
 * - "in-place": re-deploy over the complete copy `base` (a previous version sharing most of its
 *   bytes): its `image` becomes this image's `image.part` (one rename, made durable before anything
 *   is changed; from then on the base is incomplete and never booted), and only the entries that
 *   differ between the two manifests are written, removed or have their metadata set. Unchanged
 *   files are not touched at all (a hard-link farm would update every inode's link count).
 */
export interface CopyPlan {
  mode: "fresh" | "resume" | "in-place";
  base?: string;
  /** space still needed on the partition (blocks rounded, inodes) */
  need: { bytes: number; inodes: number };
}

/** Share of the image's bytes a complete copy must already hold (same path and content) for a
 *  re-deploy in place over it. */
export const inPlaceShare = 0.5;

/**
 * The other complete copies whose manifests a copy reads (to link from, to re-deploy over): their
 * manifests, the disk's, at most maxManifestBytes in all, so that reading them costs the node no
 * more than its own manifest may. (Measured without the bound: three planted 86 MB manifests took
 * 3 GB and 23 s to index, an OOM kill of PID 1 on a smaller node.) Those past it are not used.
 */
function completeCopies(hybridDir: string, except: string): string[] {
  let ids: string[];
  try {
    ids = [...Deno.readDirSync(hybridDir)]
      .filter((e) => e.isDirectory && e.name !== except && imageIdPattern.test(e.name))
      .map((e) => e.name)
      .filter((id) => isComplete(hybridDir, id))
      .sort();
  } catch {
    return [];
  }
  let budget = maxManifestBytes;
  return ids.filter((id) => {
    const size = lstatOrNull(copyPaths(hybridDir, id).manifest)?.size ?? Infinity;
    if (size > budget) return false;
    budget -= size;
    return true;
  });
}

/** What a copy of `imageId` will do and how much room it still needs. */
export function planCopy(hybridDir: string, imageId: string, entries: ManifestEntry[]): CopyPlan {
  const p = copyPaths(hybridDir, imageId);
  if (lstatOrNull(p.part)) {
    // Count what the interrupted copy already holds at the right size (verified later).
    const need = estimateNeed(entries, indexOtherCopies(hybridDir, imageId), 4096, (e) => {
      const st = e.type === "file" ? lstatOrNull(p.part + e.path) : null;
      return !!st?.isFile && st.size === e.size;
    });
    return { mode: "resume", need };
  }
  const total = entries.reduce((s, e) => s + (e.type === "file" ? e.size : 0), 0);
  let best: { id: string; shared: number; base: Map<string, ManifestEntry> } | undefined;
  for (const id of completeCopies(hybridDir, imageId)) {
    const found = copyManifest(hybridDir, id);
    if (!found) continue;
    const base = new Map(found.map((e) => [e.path, e]));
    let shared = 0;
    for (const e of entries) {
      const b = base.get(e.path);
      if (e.type === "file" && b?.type === "file" && b.sha256 === e.sha256) shared += e.size;
    }
    if (!best || shared > best.shared) best = { id, shared, base };
  }
  if (best && total > 0 && best.shared >= inPlaceShare * total) {
    const base = best.base;
    const need = estimateNeed(entries, new Map(), 4096, (e) => {
      const b = base.get(e.path);
      return !!b && b.type === e.type && (e.type !== "file" || b.sha256 === e.sha256);
    });
    return { mode: "in-place", base: best.id, need };
  }
  return { mode: "fresh", need: estimateNeed(entries, indexOtherCopies(hybridDir, imageId)) };
}

/** Ensures `<id>/image` is a complete, verified copy; returns what it did. */
export async function ensureLocalCopy(opts: CopyOptions): Promise<CopyReport> {
  const t0 = performance.now();
  const { imageId, hybridDir } = opts;
  checkImageId(imageId);
  clearPlanted(hybridDir, imageId);
  const pool = isComplete(hybridDir, imageId) ? undefined : new Copiers();
  try {
    return await ensureWith(opts, t0, pool);
  } finally {
    pool?.close();
  }
}

async function ensureWith(opts: CopyOptions, t0: number, pool?: Copiers): Promise<CopyReport> {
  const { imageId, hybridDir } = opts;
  await pool?.load();
  if (!opts.plan) { // (a plan is made from a manifest already checked: not hashed twice)
    const id = pool ? pool.sha256hex(opts.manifestText) : await sha256hex(opts.manifestText);
    checkManifestDigest(imageId, id);
  }
  const entries = [...manifestLines(opts.manifestText)];
  const report: CopyReport = {
    imageId,
    entries: entries.length,
    bytesTotal: entries.reduce((s, e) => s + (e.type === "file" ? e.size : 0), 0),
    bytesWritten: 0,
    bytesLinked: 0,
    bytesReused: 0,
    bytesKept: 0,
    resumed: false,
    ms: 0,
    threads: 0,
    workerBatches: 0,
    flushMs: 0,
  };
  if (pool && !isComplete(hybridDir, imageId)) {
    const plan = opts.plan ?? planCopy(hybridDir, imageId, entries);
    pool.first(plan.need.bytes, opts.firstWorkerBytes);
    pool.start();
    let run: CopyRun;
    try {
      run = new CopyRun(opts, report, t0, plan, pool);
    } catch (err) {
      // an error of its own (EPERM: see failedOnImmutable), as those of the copy itself
      wrapFsError(err, "preparing the copy");
    }
    await run.copyTree(entries);
    await run.complete();
    report.threads = 1 + pool.workers;
    report.workerBatches = pool.workerBatches;
  }
  report.ms = performance.now() - t0;
  return report;
}

/** Files created by this process are root's: no chown needed for root's files. */
const rootCreates = Deno.uid() === 0 && Deno.gid() === 0;

/** The process's umask (/proc/self/status: reading it does not change it, unlike umask(2));
 *  undefined when unknown. */
function currentUmask(): number | undefined {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(Deno.readTextFileSync("/proc/self/status"));
    return m ? parseInt(m[1], 8) : undefined;
  } catch {
    return undefined;
  }
}

/** Metadata equal (what applyMeta sets). */
function sameMeta(a: ManifestEntry, b: ManifestEntry): boolean {
  return a.mode === b.mode && a.uid === b.uid && a.gid === b.gid && a.mtime === b.mtime &&
    JSON.stringify(a.xattrs ?? {}) === JSON.stringify(b.xattrs ?? {});
}

function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

/** One copy into `<id>/image.part`: the entries in manifest order, file data in batches (Copiers). */
class CopyRun {
  readonly p: ReturnType<typeof copyPaths>;
  readonly index: Map<string, string>;
  /** Directories whose metadata is set once everything below them is in place. */
  readonly dirs: ManifestEntry[] = [];
  /** Hard links, made after the data copies: their first entry may still be in flight. */
  readonly links: ManifestEntry[] = [];
  /** In place: the base's entries by path (what image.part holds, trusted: it was complete). */
  readonly base?: Map<string, ManifestEntry>;
  /** In place: directories whose entries changed (their mtime is set again). */
  readonly touched = new Set<string>();
  /** In place: directories of the base's tree found to be real directories (checkParents). */
  readonly realDirs = new Set<string>();
  /** The source tree's file system (Job.srcDev). */
  readonly srcDev: number;
  /** The first failure of a file copy (they run concurrently; the others stop early). */
  failure: unknown;
  pending: Promise<void>[] = [];
  batch: { jobs: Job[]; entries: ManifestEntry[]; bytes: number } = this.emptyBatch();
  sinceCheckpoint: { bytes: number; at: number };
  checkpointing?: Promise<void>;
  lastTick = performance.now();
  readonly umask = currentUmask();
  /** Bytes of the files the walk of the manifest has reached, since walkFrom. */
  walked = 0;
  walkFrom = performance.now();

  constructor(
    readonly opts: CopyOptions,
    readonly report: CopyReport,
    readonly t0: number,
    readonly plan: CopyPlan,
    readonly pool: Copiers,
  ) {
    this.p = copyPaths(opts.hybridDir, opts.imageId);
    this.srcDev = Deno.statSync(opts.source).dev;
    makeOwnDir(this.p.base);
    // An image/ without its manifest is no copy (an eviction cut short, or planted): left there,
    // it failed the final rename (not empty) after every copy, at every boot.
    removeTree(this.p.image);
    this.index = plan.mode === "in-place"
      ? new Map()
      : indexOtherCopies(opts.hybridDir, opts.imageId);
    if (plan.mode === "in-place") {
      const bp = copyPaths(opts.hybridDir, plan.base!);
      const found = copyManifest(opts.hybridDir, plan.base!);
      if (!found) throw new HybridError("manifest", `the manifest of ${plan.base} went bad`);
      this.base = new Map(found.map((e) => [e.path, e]));
      // The one step that takes the base: durable before any file of it is changed, so that a
      // power cut leaves either the base complete or this image's image.part (re-verified).
      // (The base's image/, or its directory, made immutable or append-only on the partition
      // refused this rename at every boot: the base is kept for it, so never evicted either.)
      evenIfImmutable(bp.image, () => Deno.renameSync(bp.image, this.p.part));
      fsyncDir(this.p.base);
    } else {
      report.resumed = lstatOrNull(this.p.part) !== null;
      makeOwnDir(this.p.part);
    }
    this.sinceCheckpoint = { bytes: report.bytesWritten, at: performance.now() };
  }

  emptyBatch() {
    return { jobs: [] as Job[], entries: [] as ManifestEntry[], bytes: 0 };
  }

  dst(e: ManifestEntry): string {
    return e.path === "/" ? this.p.part : this.p.part + e.path;
  }

  async copyTree(entries: ManifestEntry[]): Promise<void> {
    if (this.base) this.removeStale(entries);
    else if (this.report.resumed) this.pruneExtra(entries);
    this.walkFrom = performance.now();
    for (const e of entries) {
      if (this.failure) break;
      if (e.type === "file") this.walked += e.size;
      try {
        this.place(e);
      } catch (err) {
        wrapFsError(err, e.path);
      }
      this.tick();
      if (this.pool.mustYield) await this.pool.yield();
    }
    this.flush();
    // settle() may queue more (a resumed file that did not verify is copied again)
    for (let n = -1; n !== this.pending.length;) {
      n = this.pending.length;
      await Promise.all(this.pending);
    }
    await this.checkpointing;
    if (this.failure) throw this.failure;
    for (const e of this.links) this.hardLink(e);
  }

  /** In place: entries of the base that this image does not have (or not as that type) go. */
  removeStale(entries: ManifestEntry[]): void {
    const want = new Map(entries.map((e) => [e.path, e]));
    const stale = [...this.base!.values()].filter((b) => {
      const e = want.get(b.path);
      return !e || e.type !== b.type || (b.type === "hardlink" && e.target !== b.target);
    });
    for (const b of stale.reverse()) {
      try {
        this.checkParents(b.path);
        removeTree(this.dst(b)); // a stale directory went with its parent: nothing left
      } catch (err) {
        wrapFsError(err, b.path);
      }
      this.base!.delete(b.path);
      this.touched.add(parentOf(b.path));
    }
  }

  /**
   * In place: `path` is reached through real directories of image.part. The base's tree and
   * manifest are the disk's, and the disk is not trusted: a directory there may be a symlink
   * planted by a previous root of the node, through which a removal or a write would land outside
   * walt-hybrid/. Such a base is no copy: the boot falls back, and the next one re-verifies
   * image.part file by file (a resume, which walks the tree without following links).
   */
  checkParents(path: string): void {
    for (let d = parentOf(path); d !== "/" && !this.realDirs.has(d); d = parentOf(d)) {
      if (!lstatOrNull(this.p.part + d)?.isDirectory) {
        throw new HybridError("corrupt", `${d}: not a directory in the copy re-deployed over`);
      }
      this.realDirs.add(d);
    }
  }

  /** Resume: entries image.part holds that the manifest does not (an interrupted re-deploy in
   *  place leaves the older version's) are removed; a walk of the tree, reads only. */
  pruneExtra(entries: ManifestEntry[]): void {
    const want = new Map(entries.map((e) => [e.path, e.type]));
    const walk = (rel: string) => {
      for (const d of Deno.readDirSync(this.p.part + rel)) {
        const path = `${rel}/${d.name}`;
        const type = want.get(path);
        if (type === undefined || (type === "dir") !== d.isDirectory) {
          removeTree(this.p.part + path);
        } else if (d.isDirectory) walk(path);
      }
    };
    walk("");
  }

  /** Puts one entry in place; file data goes to the copiers in batches. */
  place(e: ManifestEntry): void {
    const dst = this.dst(e);
    const b = this.base?.get(e.path);
    if (this.base) this.checkParents(e.type === "dir" && b ? `${e.path}/` : e.path);
    switch (e.type) {
      case "dir": {
        if (this.base) {
          if (!b) {
            Deno.mkdirSync(dst, { mode: 0o700 });
            this.touched.add(parentOf(e.path));
          }
          if (!b || !sameMeta(b, e)) this.touched.add(e.path);
        } else if (!this.report.resumed) {
          if (e.path !== "/") Deno.mkdirSync(dst, { mode: 0o700 });
        } else {
          const st = lstatOrNull(dst);
          if (!st?.isDirectory) Deno.mkdirSync(dst, { mode: 0o700 });
        }
        this.dirs.push(e);
        return;
      }
      case "file":
        return this.placeFile(e, dst, b);
      case "hardlink":
        this.links.push(e);
        return;
      case "symlink":
        if (b && b.target === e.target && sameMeta(b, e)) return;
        this.touch(e);
        if (this.base || this.report.resumed) removeTree(dst);
        Deno.symlinkSync(e.target!, dst);
        applyMeta(dst, e);
        return;
      default: {
        // kept when the base has it as a device node, never as a symlink chmod would follow
        const st = b ? lstatOrNull(dst) : null;
        const node = !!st && !st.isSymlink && !st.isFile && !st.isDirectory;
        if (node && b!.rdev?.major === e.rdev?.major && b!.rdev?.minor === e.rdev?.minor) {
          if (!sameMeta(b!, e)) applyMeta(dst, e);
          return;
        }
        this.touch(e);
        if (this.base || this.report.resumed) removeTree(dst);
        const kind = { char: S_IFCHR, block: S_IFBLK, fifo: S_IFIFO, socket: S_IFSOCK }[e.type];
        mknod(dst, kind | (e.mode & 0o7777), e.rdev?.major ?? 0, e.rdev?.minor ?? 0);
        applyMeta(dst, e);
      }
    }
  }

  /** In place: a created or removed entry changes its directory's mtime. */
  touch(e: ManifestEntry): void {
    if (this.base) this.touched.add(parentOf(e.path));
  }

  placeFile(e: ManifestEntry, dst: string, b: ManifestEntry | undefined): void {
    if (this.base) {
      if (b && b.sha256 === e.sha256 && b.size === e.size) {
        // Unchanged data: not touched (its metadata set only if it changed, on its own inode).
        if (sameMeta(b, e)) {
          this.report.bytesKept += e.size;
          return;
        }
        const st = Deno.lstatSync(dst);
        // (an xattr the new version no longer has is not removed: such a file is written anew)
        const dropped = Object.keys(b.xattrs ?? {}).some((k) => !(k in (e.xattrs ?? {})));
        // its own file only: chmod would follow a symlink planted in the base's tree
        if (st.isFile && st.nlink === 1 && !dropped) {
          applyMeta(dst, e);
          this.report.bytesKept += e.size;
          return;
        }
      }
      // Changed: written over its own inode when not shared (no new inode, no directory entry);
      // a file linked from elsewhere is replaced so the other name keeps its content. Whatever
      // else is at the path is removed first, a new file's path included: the base's tree may
      // hold entries its manifest does not list (planted), and a symlink there was followed by
      // the open, the chown and the chmod — the file out of walt-hybrid/ got this one's data,
      // owner and set-uid bit.
      const st = lstatOrNull(dst);
      const dropped = Object.keys(b?.xattrs ?? {}).some((k) => !(k in (e.xattrs ?? {})));
      const overwrite = !!b && !!st?.isFile && st.nlink === 1 && !dropped;
      if (st && !overwrite) removeTree(dst);
      if (!st || !overwrite) this.touch(e);
      return this.queue(this.job("copy", e, dst, { overwrite }), e);
    }
    if (!this.report.resumed) {
      const other = this.index.get(linkKey(e));
      if (other && this.linkFrom(other, dst, e)) return;
      return this.queue(this.job("copy", e, dst), e);
    }
    const st = lstatOrNull(dst);
    // Re-hashed and kept only when it is the copy's own file: a hard link planted in image.part
    // (to a file elsewhere on the disk, with the right bytes) would get the manifest's owner and
    // mode set on that file, and make it part of the copy.
    if (st?.isFile && st.nlink === 1 && st.size === e.size) {
      return this.queue(this.job("hash", e, dst), e);
    }
    const other = this.index.get(linkKey(e));
    if (st) removeTree(dst);
    if (other && this.linkFrom(other, dst, e)) return;
    return this.queue(this.job("copy", e, dst), e);
  }

  /**
   * A hard link at `dst` to `other`, the same file in another complete copy; false when that file
   * takes no more links (then copied). The other copies are the partition's, written by root on
   * the node as it likes: such a file made immutable or append-only refused the link (EPERM), one
   * given the file system's most links (ext4: 65,000) too (EMLINK), at every boot of the image
   * while that copy was there: hybrid mode lost for it. The flags are cleared (evenIfImmutable).
   */
  linkFrom(other: string, dst: string, e: ManifestEntry): boolean {
    // Nor is that copy's tree what its manifest says: a file gone from it (removed there, or put
    // in lost+found by a fsck) failed the link (ENOENT), and so the copy, of every image sharing
    // the file, at every boot until that copy was evicted; so did a link or another file system
    // on the way (ELOOP, ENOTDIR, EXDEV). Such a file is copied; a link is never linked.
    if (!lstatOrNull(other)?.isFile) return false;
    try {
      evenIfImmutable(other, () => Deno.linkSync(other, dst));
    } catch (err) {
      // EMLINK, EXDEV (no code), ENOENT, ENOTDIR, ELOOP: no file to link there
      if (/\(os error (31|18|2|20|40)\)/.test((err as Error).message)) return false;
      throw err;
    }
    this.report.bytesLinked += e.size;
    return true;
  }

  job(op: Job["op"], e: ManifestEntry, dst: string, extra?: { overwrite: boolean }): Job {
    const fresh = !this.base && !this.report.resumed;
    const overwrite = !!extra?.overwrite, umask = this.umask;
    // a new file was created with mode & 0777 less the umask; chown clears only suid/sgid
    const asCreated = !overwrite && umask !== undefined && (e.mode & 0o7000) === 0 &&
      ((e.mode & 0o777 & ~umask) === (e.mode & 0o777));
    return {
      overwrite,
      chmod: !asCreated,
      chown: !(fresh && e.uid === 0 && e.gid === 0 && rootCreates),
      op,
      src: this.opts.source + e.path,
      srcDev: this.srcDev,
      dst,
      size: e.size,
      sha256: e.sha256 ?? "",
      uid: e.uid,
      gid: e.gid,
      mode: e.mode,
      mtime: e.mtime,
    };
  }

  queue(job: Job, e: ManifestEntry): void {
    const b = this.batch;
    b.jobs.push(job), b.entries.push(e), b.bytes += e.size;
    if (b.bytes >= batchBytes || b.jobs.length >= batchFiles) this.flush();
  }

  flush(): void {
    const { jobs, entries } = this.batch;
    if (!jobs.length) return;
    this.batch = this.emptyBatch();
    this.pool.consider(this.walked, this.report.bytesTotal, performance.now() - this.walkFrom);
    const faults = this.pool.run(jobs);
    if (Array.isArray(faults)) return this.settle(jobs, entries, faults);
    this.pending.push(faults.then(
      (faults) => this.settle(jobs, entries, faults),
      (err) => {
        this.failure ??= err;
      },
    ));
  }

  /** A batch is back: mismatches and errors fail the copy; a resumed file that did not verify is
   *  copied again; xattrs are set (after the worker's chown, which clears capabilities). */
  settle(jobs: Job[], entries: ManifestEntry[], faults: JobFault[]): void {
    try {
      const bad = new Map(faults.map((f) => [f.i, f]));
      for (let i = 0; i < jobs.length; i++) {
        const j = jobs[i], e = entries[i], f = bad.get(i);
        if (f?.error !== undefined) {
          const err = Object.assign(new Error(f.error), { code: f.code });
          wrapFsError(err, e.path);
        }
        if (this.failure) return;
        if (j.op === "hash") {
          if (f) {
            removeTree(j.dst);
            this.queue(this.job("copy", e, j.dst), e);
            continue;
          }
          this.report.bytesReused += e.size;
          applyMeta(j.dst, e);
          continue;
        }
        if (f?.foreign) {
          throw new HybridError(
            "corrupt",
            `${e.path}: the source is ${f.foreign}, where the manifest has a file: not read`,
          );
        }
        if (f) {
          removeTree(j.dst);
          throw new HybridError(
            "corrupt",
            `${e.path}: source does not match the manifest (sha256 ${f.digest?.slice(0, 12)}…, ` +
              `${f.size} bytes; expected ${e.sha256?.slice(0, 12)}…, ${e.size} bytes)`,
          );
        }
        if (e.xattrs) {
          for (const [name, b64] of Object.entries(e.xattrs)) {
            setXattr(j.dst, name, Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
          }
        }
        this.report.bytesWritten += e.size;
      }
      if (this.batch.jobs.length) this.flush(); // files to copy again after a failed re-hash
      this.checkpoint();
      this.tick();
    } catch (err) {
      try {
        wrapFsError(err, "copy");
      } catch (wrapped) {
        this.failure ??= wrapped;
      }
    }
  }

  hardLink(e: ManifestEntry): void {
    const dst = this.p.part + e.path, target = this.p.part + e.target!;
    try {
      if (this.base || this.report.resumed) {
        const st = lstatOrNull(dst);
        if (st && st.ino === Deno.lstatSync(target).ino) return;
        if (st) removeTree(dst);
      }
      Deno.linkSync(target, dst);
      this.touch(e);
    } catch (err) {
      wrapFsError(err, e.path);
    }
  }

  /** Files completed before a checkpoint survive a power cut (and are re-verified, not trusted).
   *  The flush runs on a thread of its own while the copy goes on; one at a time, so what a
   *  progress report calls done is at most about two intervals ahead of the disk. */
  checkpoint(): void {
    const { opts, report } = this;
    if (this.checkpointing) return;
    if (
      report.bytesWritten - this.sinceCheckpoint.bytes <
        (opts.checkpointBytes ?? checkpointBytes) &&
      performance.now() - this.sinceCheckpoint.at < (opts.checkpointMs ?? checkpointMs)
    ) return;
    this.sinceCheckpoint = { bytes: report.bytesWritten, at: performance.now() };
    this.checkpointing = syncfsAsync(this.p.base).catch((err) => {
      this.failure ??= new HybridError("io", `checkpoint: ${(err as Error).message}`);
    }).finally(() => {
      this.checkpointing = undefined;
    });
  }

  tick(force = false): void {
    const { opts, report } = this;
    const now = performance.now();
    if (!opts.onProgress || (!force && now - this.lastTick < (opts.progressIntervalMs ?? 1000))) {
      return;
    }
    this.lastTick = now;
    opts.onProgress({
      done: report.bytesWritten + report.bytesLinked + report.bytesReused + report.bytesKept,
      total: report.bytesTotal,
      rate: report.bytesWritten / Math.max((now - this.t0) / 1000, 1e-3),
    });
  }

  /** Directory metadata, then the copy becomes `<id>/image` (after syncfs: all or nothing). */
  async complete(): Promise<void> {
    const p = this.p;
    try {
      // Directories last, deepest first, so creating children does not bump their mtimes again;
      // in place, only those whose metadata or entries changed.
      for (const e of this.dirs.reverse()) {
        if (!this.base || this.touched.has(e.path)) {
          for (const name of Object.keys(this.base?.get(e.path)?.xattrs ?? {})) {
            if (!(name in (e.xattrs ?? {}))) removeXattr(this.dst(e), name);
          }
          applyMeta(this.dst(e), e);
        }
      }
      // The manifest is written before the syncfs, so that its data is on the disk with the
      // copy's: a power cut right after the renames' commit must not leave a complete copy with an
      // empty manifest (ext4 allocates a new file's blocks only at writeback, and a directory's
      // fsync commits the renames without them).
      const tmp = `${p.manifest}.tmp`;
      removeTree(tmp); // a new file, never one planted there (see clearPlanted)
      Deno.writeTextFileSync(tmp, this.opts.manifestText, { createNew: true });
      const flushFrom = performance.now();
      await syncfsAsync(p.base);
      this.report.flushMs = performance.now() - flushFrom;
      Deno.renameSync(tmp, p.manifest);
      Deno.renameSync(p.part, p.image);
      fsyncDir(p.base);
    } catch (err) {
      wrapFsError(err, "completing the copy");
    }
    this.tick(true);
  }
}
