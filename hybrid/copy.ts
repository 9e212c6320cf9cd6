// The local copy of an image for hybrid boot, driven by the image's content manifest:
// - verified: every regular file is hashed while it is written and must match the manifest; the
//   copy becomes `<id>/image` (atomic rename of `<id>/image.part`) only after syncfs;
// - resumable: after a power cut, `image.part` is reused file by file, but only files whose size
//   and sha256 match again (re-read locally, never trusted blindly). A checkpoint (syncfs) every
//   64 MiB or 5 s of written data bounds what a power cut loses: without it, delayed allocation can
//   leave every file of a short copy empty on disk;
// - incremental: a file with the same content and metadata in another complete copy on the disk is
//   hard-linked from there instead of being written.
// Disk layout under the hybrid dir (WalT-compatible names):  <id>/image  <id>/image.part
// <id>/manifest  <id>/diff (overlay upper)  <id>/work  <id>/last-boot
import { workerFromSource } from "../src/worker.ts";
import { type ManifestEntry, manifestLines } from "../contract/manifest.ts";
import {
  fsyncDir,
  lchown,
  lutimes,
  mknod,
  S_IFBLK,
  S_IFCHR,
  S_IFIFO,
  S_IFSOCK,
  syncfs,
} from "../src/linux/fsops.ts";
import { setXattr } from "../src/linux/xattr.ts";

export class HybridError extends Error {
  constructor(readonly reason: "no-space" | "corrupt" | "io" | "manifest", message: string) {
    super(message);
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
  resumed: boolean;
  ms: number;
}

export const imageIdPattern = /^[0-9a-f]{64}$/;

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
  try {
    return Deno.statSync(p.image).isDirectory && Deno.statSync(p.manifest).isFile;
  } catch {
    return false;
  }
}

/** Key under which identical files (content and metadata) can share an inode. */
function linkKey(e: ManifestEntry): string {
  return `${e.sha256}:${e.mode}:${e.uid}:${e.gid}:${e.mtime}:${JSON.stringify(e.xattrs ?? {})}`;
}

/** sha256+metadata → path of that file in another complete copy on this disk. */
export function indexOtherCopies(hybridDir: string, except: string): Map<string, string> {
  const index = new Map<string, string>();
  let names: string[] = [];
  try {
    names = [...Deno.readDirSync(hybridDir)].filter((e) => e.isDirectory && e.name !== except)
      .map((e) => e.name);
  } catch { /* empty dir */ }
  for (const id of names) {
    if (!imageIdPattern.test(id) || !isComplete(hybridDir, id)) continue;
    const p = copyPaths(hybridDir, id);
    for (const e of manifestLines(Deno.readTextFileSync(p.manifest))) {
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
): { bytes: number; inodes: number } {
  let bytes = 0, inodes = 0;
  for (const e of entries) {
    if (e.type === "hardlink") continue;
    if (e.type === "file" && index.has(linkKey(e))) continue;
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

function removeIfExists(p: string): void {
  const st = lstatOrNull(p);
  if (st) Deno.removeSync(p, { recursive: st.isDirectory });
}

function applyMeta(path: string, e: ManifestEntry): void {
  lchown(path, e.uid, e.gid);
  if (e.type !== "symlink") Deno.chmodSync(path, e.mode & 0o7777); // after chown: it clears suid
  for (const [name, b64] of Object.entries(e.xattrs ?? {})) {
    setXattr(path, name, Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
  }
  lutimes(path, e.mtime);
}

// File data is copied and hashed by a small pool of workers (one per core): hashing is the CPU
// cost of verification, and spreading it keeps the copy close to `tar | tar` speed. The worker is
// plain JS from a string so that it also runs from the single-file bundle in the initramfs.
const workerSource = `import { createHash } from "node:crypto";
const buf = new Uint8Array(1 << 20);
self.onmessage = ({ data: { id, op, src, dst } }) => {
  try {
    const h = createHash("sha256");
    let size = 0;
    const inF = Deno.openSync(src, { read: true });
    const outF = op === "copy" ? Deno.openSync(dst, { write: true, create: true, truncate: true, mode: 0o600 }) : null;
    try {
      for (;;) {
        const n = inF.readSync(buf);
        if (n === null) break;
        const chunk = buf.subarray(0, n);
        h.update(chunk);
        if (outF) for (let off = 0; off < n;) off += outF.writeSync(chunk.subarray(off));
        size += n;
      }
    } finally {
      inF.close();
      outF?.close();
    }
    self.postMessage({ id, digest: h.digest("hex"), size });
  } catch (e) {
    self.postMessage({ id, error: String(e?.message ?? e) });
  }
};`;

interface Job {
  op: "copy" | "hash";
  src: string;
  dst?: string;
  resolve(r: { digest: string; size: number }): void;
  reject(e: Error): void;
}

/** Jobs queued in each worker: it starts the next file without a round trip through the main
 *  thread (which may be busy walking the manifest or applying metadata). */
const perWorker = 8;

class DataPool {
  #workers: { w: Worker; inflight: number }[] = [];
  #queue: Job[] = [];
  #jobs = new Map<number, Job>();
  #next = 0;
  constructor(n: number) {
    for (let i = 0; i < n; i++) {
      const slot = { w: workerFromSource(workerSource), inflight: 0 };
      slot.w.onmessage = ({ data }) => {
        const job = this.#jobs.get(data.id)!;
        this.#jobs.delete(data.id);
        slot.inflight--;
        if (data.error) job.reject(new Error(data.error));
        else job.resolve(data);
        this.#pump();
      };
      this.#workers.push(slot);
    }
  }
  run(op: Job["op"], src: string, dst?: string): Promise<{ digest: string; size: number }> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ op, src, dst, resolve, reject });
      this.#pump();
    });
  }
  #pump() {
    while (this.#queue.length) {
      // the least loaded worker, so that one large file does not hold up the queue behind it
      const slot = this.#workers.reduce((a, b) => b.inflight < a.inflight ? b : a);
      if (slot.inflight >= perWorker) return;
      const job = this.#queue.shift()!;
      const id = this.#next++;
      this.#jobs.set(id, job);
      slot.inflight++;
      slot.w.postMessage({ id, op: job.op, src: job.src, dst: job.dst });
    }
  }
  close() {
    for (const s of this.#workers) s.w.terminate();
    for (const j of [...this.#queue, ...this.#jobs.values()]) j.reject(new Error("copy aborted"));
  }
}

function wrapFsError(e: unknown, what: string): never {
  if (e instanceof HybridError) throw e;
  const err = e as Error & { code?: string };
  if (err.code === "ENOSPC" || /No space left|ENOSPC/.test(err.message)) {
    throw new HybridError("no-space", `disk full while writing ${what}`);
  }
  throw new HybridError("io", `${what}: ${err.message}`);
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
  /** syncfs after this much written data (default 64 MiB) or time (default 5 s), whichever first */
  checkpointBytes?: number;
  checkpointMs?: number;
}

/** Ensures `<id>/image` is a complete, verified copy; returns what it did. */
export async function ensureLocalCopy(opts: CopyOptions): Promise<CopyReport> {
  const t0 = performance.now();
  const { imageId, hybridDir } = opts;
  if (await sha256hex(opts.manifestText) !== imageId) {
    throw new HybridError(
      "manifest",
      `manifest does not hash to image id ${imageId.slice(0, 12)}…`,
    );
  }
  const entries = [...manifestLines(opts.manifestText)];
  const report: CopyReport = {
    imageId,
    entries: entries.length,
    bytesTotal: entries.reduce((s, e) => s + (e.type === "file" ? e.size : 0), 0),
    bytesWritten: 0,
    bytesLinked: 0,
    bytesReused: 0,
    resumed: false,
    ms: 0,
  };
  if (!isComplete(hybridDir, imageId)) {
    const run = new CopyRun(opts, report, t0);
    await run.copyTree(entries);
    run.complete();
  }
  report.ms = performance.now() - t0;
  return report;
}

/** One copy into `<id>/image.part`: the entries in manifest order, file data through the pool. */
class CopyRun {
  readonly p: ReturnType<typeof copyPaths>;
  readonly index: Map<string, string>;
  readonly pool = new DataPool(Math.max(2, Math.min(4, navigator.hardwareConcurrency || 2)));
  /** Directories, for their metadata once everything below them is in place. */
  readonly dirs: ManifestEntry[] = [];
  /** Hard links, made after the data copies: their first entry may still be in flight. */
  readonly links: ManifestEntry[] = [];
  /** The first failure of a file copy (they run concurrently; the others stop early). */
  failure: unknown;
  sinceCheckpoint: { bytes: number; at: number };
  lastTick = performance.now();

  constructor(readonly opts: CopyOptions, readonly report: CopyReport, readonly t0: number) {
    this.p = copyPaths(opts.hybridDir, opts.imageId);
    Deno.mkdirSync(this.p.base, { recursive: true });
    report.resumed = lstatOrNull(this.p.part) !== null;
    Deno.mkdirSync(this.p.part, { recursive: true });
    this.index = indexOtherCopies(opts.hybridDir, opts.imageId);
    this.sinceCheckpoint = { bytes: report.bytesWritten, at: performance.now() };
  }

  dst(e: ManifestEntry): string {
    return e.path === "/" ? this.p.part : this.p.part + e.path;
  }

  async copyTree(entries: ManifestEntry[]): Promise<void> {
    const pending: Promise<void>[] = [];
    try {
      for (const e of entries) {
        try {
          const copying = this.place(e);
          if (copying) pending.push(copying);
        } catch (err) {
          wrapFsError(err, e.path);
        }
        this.tick();
      }
      await Promise.all(pending);
    } finally {
      this.pool.close();
    }
    if (this.failure) throw this.failure;
    for (const e of this.links) this.hardLink(e);
  }

  /** Puts one entry in place; a file that needs its data copied returns the copy in flight. */
  place(e: ManifestEntry): Promise<void> | undefined {
    const dst = this.dst(e);
    switch (e.type) {
      case "dir": {
        const st = lstatOrNull(dst);
        if (st && !st.isDirectory) removeIfExists(dst);
        if (!st?.isDirectory) Deno.mkdirSync(dst, { mode: 0o700 });
        this.dirs.push(e);
        return;
      }
      case "file": {
        const st = lstatOrNull(dst);
        const other = this.index.get(linkKey(e));
        if (!(st?.isFile && st.size === e.size && this.report.resumed) && other) {
          if (st) removeIfExists(dst);
          Deno.linkSync(other, dst);
          this.report.bytesLinked += e.size;
          return;
        }
        return this.copyFile(e, dst, st);
      }
      case "hardlink":
        this.links.push(e);
        return;
      case "symlink":
        removeIfExists(dst);
        Deno.symlinkSync(e.target!, dst);
        applyMeta(dst, e);
        return;
      default: {
        removeIfExists(dst);
        const kind = { char: S_IFCHR, block: S_IFBLK, fifo: S_IFIFO, socket: S_IFSOCK }[e.type];
        mknod(dst, kind | (e.mode & 0o7777), e.rdev?.major ?? 0, e.rdev?.minor ?? 0);
        applyMeta(dst, e);
      }
    }
  }

  /** A file's data: kept when an interrupted copy left it intact (re-hashed), else copied. */
  async copyFile(e: ManifestEntry, dst: string, st: Deno.FileInfo | null): Promise<void> {
    if (this.failure) return;
    try {
      if (st?.isFile && st.size === e.size && this.report.resumed) {
        if ((await this.pool.run("hash", dst)).digest === e.sha256) {
          this.report.bytesReused += e.size;
          applyMeta(dst, e);
          this.tick(); // re-verifying a large interrupted copy takes a while too: show progress
          return;
        }
      }
      if (st) removeIfExists(dst);
      const r = await this.pool.run("copy", this.opts.source + e.path, dst);
      if (r.digest !== e.sha256 || r.size !== e.size) {
        Deno.removeSync(dst);
        throw new HybridError(
          "corrupt",
          `${e.path}: source does not match the manifest (sha256 ${r.digest.slice(0, 12)}…, ` +
            `${r.size} bytes; expected ${e.sha256?.slice(0, 12)}…, ${e.size} bytes)`,
        );
      }
      this.report.bytesWritten += e.size;
      applyMeta(dst, e);
      this.checkpoint();
      this.tick();
    } catch (err) {
      try {
        wrapFsError(err, e.path);
      } catch (wrapped) {
        this.failure ??= wrapped;
      }
    }
  }

  hardLink(e: ManifestEntry): void {
    const dst = this.p.part + e.path, target = this.p.part + e.target!;
    try {
      const st = lstatOrNull(dst);
      if (st && st.ino === Deno.lstatSync(target).ino) return;
      if (st) removeIfExists(dst);
      Deno.linkSync(target, dst);
    } catch (err) {
      wrapFsError(err, e.path);
    }
  }

  /** Files completed before a checkpoint survive a power cut (and are re-verified, not trusted).
   *  Synchronous, before the progress tick: a reported `done` is at most one interval ahead of
   *  the disk. */
  checkpoint(): void {
    const { opts, report } = this;
    if (
      report.bytesWritten - this.sinceCheckpoint.bytes < (opts.checkpointBytes ?? 64 << 20) &&
      performance.now() - this.sinceCheckpoint.at < (opts.checkpointMs ?? 5000)
    ) return;
    syncfs(this.p.base);
    this.sinceCheckpoint = { bytes: report.bytesWritten, at: performance.now() };
  }

  tick(force = false): void {
    const { opts, report } = this;
    const now = performance.now();
    if (!opts.onProgress || (!force && now - this.lastTick < (opts.progressIntervalMs ?? 1000))) {
      return;
    }
    this.lastTick = now;
    opts.onProgress({
      done: report.bytesWritten + report.bytesLinked + report.bytesReused,
      total: report.bytesTotal,
      rate: report.bytesWritten / Math.max((now - this.t0) / 1000, 1e-3),
    });
  }

  /** Directory metadata, then the copy becomes `<id>/image` (after syncfs: all or nothing). */
  complete(): void {
    const p = this.p;
    try {
      // Directories last, deepest first, so creating children does not bump their mtimes again.
      for (const e of this.dirs.reverse()) applyMeta(this.dst(e), e);
      syncfs(p.base);
      const tmp = `${p.manifest}.tmp`;
      Deno.writeTextFileSync(tmp, this.opts.manifestText);
      Deno.renameSync(tmp, p.manifest);
      Deno.renameSync(p.part, p.image);
      fsyncDir(p.base);
    } catch (err) {
      wrapFsError(err, "completing the copy");
    }
    this.tick(true);
  }
}
