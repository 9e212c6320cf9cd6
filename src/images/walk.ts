// Walks an extracted image tree into manifest entries: lstat, readlink, xattrs and sha256 of every
// regular file. Synchronous syscalls in a tight loop (per-file awaits would dominate on trees of
// small files); it yields to the event loop every ~50 ms so progress lines still flow.
import { createHash } from "node:crypto";
import { join } from "node:path";
import { UserError } from "../errors.ts";
import { compareBytes, type EntryType, type ManifestEntry } from "../../contract/manifest.ts";
import { listXattrs } from "../linux/xattr.ts";
import { hashFile } from "./sha256.ts";
import { Turns } from "../turns.ts";

/** A digest computed while the file was being extracted; used only if the file is unchanged. */
export interface CachedHash {
  ino: number;
  size: number;
  mtimeMs: number;
  sha256: string;
}

export type Progress = (p: { phase: string; done: number; total?: number }) => void;

const buf = new Uint8Array(1 << 20);

/** Files from this size on are hashed by hashFile (async reads, libcrypto on another thread). */
const OFF_THREAD = 4 << 20;

/** sha256 (or `algorithm`) hex of a file's content, read synchronously in 1 MiB chunks. */
export function hashFileSync(path: string, algorithm = "sha256"): string {
  const h = createHash(algorithm);
  const f = Deno.openSync(path);
  try {
    for (;;) {
      const n = f.readSync(buf);
      if (n === null || n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    f.close();
  }
  return h.digest("hex");
}

export function fileType(st: Deno.FileInfo): EntryType {
  if (st.isFile) return "file";
  if (st.isDirectory) return "dir";
  if (st.isSymlink) return "symlink";
  if (st.isCharDevice) return "char";
  if (st.isBlockDevice) return "block";
  if (st.isFifo) return "fifo";
  if (st.isSocket) return "socket";
  throw new Error("unknown file type");
}

/** glibc's dev_t split (gnu_dev_major / gnu_dev_minor). */
/** A manifest entry's stat part (type, mode, owner, size, mtime) for `path` of that lstat. */
export function statEntry(path: string, st: Deno.FileInfo): ManifestEntry {
  const type = fileType(st);
  return {
    path,
    type,
    mode: st.mode! & 0o7777,
    uid: st.uid!,
    gid: st.gid!,
    size: type === "file" ? st.size : 0,
    mtime: Math.floor(st.mtime!.getTime() / 1000),
  };
}

export function splitDev(dev: number): { major: number; minor: number } {
  const d = BigInt(dev);
  return {
    major: Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn)),
    minor: Number((d & 0xffn) | ((d >> 12n) & ~0xffn)),
  };
}

export function b64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

/** One entry of a tree as its lstat, readlink and xattrs say, before hard links are resolved. */
interface Raw {
  entry: ManifestEntry;
  ino: number;
  nlink: number;
  full: string;
  mtimeMs: number;
}

/** The entry of `rel` (host path `full`) as the file system has it. */
function rawOf(rel: string, full: string, st: Deno.FileInfo): Raw {
  const entry = statEntry(rel, st);
  const type = entry.type;
  if (type === "symlink") entry.target = Deno.readLinkSync(full);
  if (type === "char" || type === "block") entry.rdev = splitDev(st.rdev!);
  const xa = listXattrs(full);
  if (xa) {
    entry.xattrs = {};
    for (const [k, v] of xa) entry.xattrs[k] = b64(v);
  }
  return { entry, ino: st.ino!, nlink: st.nlink!, full, mtimeMs: st.mtime!.getTime() };
}

/** lstat of `full` (path `rel` in a tree); a name that is not UTF-8 (which Deno's directory
 *  listing cannot give back) is said as such instead of "not found". */
export function lstatNamed(full: string, rel: string): Deno.FileInfo {
  try {
    return Deno.lstatSync(full);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound && rel.includes("\uFFFD")) {
      throw new UserError(
        `file name is not valid UTF-8: ${JSON.stringify(rel)} (netroot manifests need UTF-8 names)`,
      );
    }
    throw e;
  }
}

/**
 * Entries of the tree at root, sorted by path, hardlinks resolved, files hashed (reusing `cache`
 * digests whose inode, size and mtime still match).
 */
export async function scanTree(
  root: string,
  opts: { cache?: Map<string, CachedHash>; onProgress?: Progress } = {},
): Promise<{ entries: ManifestEntry[]; bytes: number }> {
  const raws: Raw[] = [];
  const dirs: string[] = ["/"];
  const turns = new Turns();
  const add = (rel: string, full: string, st: Deno.FileInfo) => {
    const r = rawOf(rel, full, st);
    raws.push(r);
    if (r.entry.type === "dir" && rel !== "/") dirs.push(rel);
  };
  add("/", root, Deno.lstatSync(root));
  opts.onProgress?.({ phase: "scan", done: 0 });
  while (dirs.length) {
    const dir = dirs.pop()!;
    const fullDir = dir === "/" ? root : join(root, dir);
    for (const d of Deno.readDirSync(fullDir)) {
      const rel = dir === "/" ? `/${d.name}` : `${dir}/${d.name}`;
      const full = `${fullDir}/${d.name}`;
      add(rel, full, lstatNamed(full, rel));
    }
    await turns.take();
  }
  opts.onProgress?.({ phase: "scan", done: raws.length, total: raws.length });
  return await resolve(raws, opts, turns);
}

/** Sorts the raw entries, resolves hard links (the first path of an inode is the file) and hashes
 *  the files `cache` has no valid digest of. */
async function resolve(
  raws: Raw[],
  opts: { cache?: Map<string, CachedHash>; onProgress?: Progress },
  turns = new Turns(),
): Promise<{ entries: ManifestEntry[]; bytes: number }> {
  raws.sort((a, b) => compareBytes(a.entry.path, b.entry.path));
  // Hardlinks: the first path of an inode (in manifest order) is the file, the others point to it.
  const firstOfInode = new Map<number, string>();
  const toHash: Raw[] = [];
  let bytes = 0, total = 0;
  for (const r of raws) {
    if (r.entry.type !== "file") continue;
    if (r.nlink > 1) {
      const first = firstOfInode.get(r.ino);
      if (first !== undefined) {
        r.entry.type = "hardlink";
        r.entry.target = first;
        continue;
      }
      firstOfInode.set(r.ino, r.entry.path);
    }
    bytes += r.entry.size;
    const c = opts.cache?.get(r.entry.path);
    if (c && c.ino === r.ino && c.size === r.entry.size && c.mtimeMs === r.mtimeMs) {
      r.entry.sha256 = c.sha256;
    } else {
      toHash.push(r);
      total += r.entry.size;
    }
  }
  let done = 0;
  if (toHash.length) opts.onProgress?.({ phase: "hash", done, total });
  for (const r of toHash) {
    // A large file is read and hashed off the server's thread: a layer's file (its size the
    // author's, 8 GiB of holes in a 1 KB archive) held it the whole file through.
    r.entry.sha256 = r.entry.size >= OFF_THREAD ? await hashFile(r.full) : hashFileSync(r.full);
    done += r.entry.size;
    if (turns.due) {
      opts.onProgress?.({ phase: "hash", done, total });
      await turns.take();
    }
  }
  if (toHash.length) opts.onProgress?.({ phase: "hash", done, total });
  return { entries: raws.map((r) => r.entry), bytes };
}

/** What the import's tar reader (tarfast.ts) made at one path, as it set it. */
export interface Written {
  type: "file" | "dir" | "symlink" | "node";
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** seconds */
  mtime: number;
  /** a symlink's target */
  target?: string;
  /** Set where the kernel may store something other than what was asked (xattrs, ACLs that
   *  change the mode, devices, times past 2038): that entry is read back from the tree. */
  recheck?: boolean;
}

/**
 * The manifest of a tree the import's reader wrote in full (every entry it made is in `made`,
 * its metadata in `written`; `normalized`: directories it made without metadata, which
 * unpack's normalizeDirs set to 0755 root:root mtime 0), without a scan of the tree: what the
 * reader set is what an lstat would say. Read back from the tree: the root (made by the caller),
 * the entries marked `recheck`, and one file and one directory without archive xattrs: when the
 * kernel added xattrs to those (an SELinux label, an ACL inherited from above the tree), or
 * anything does not add up, the result is undefined and the caller scans the tree.
 */
export async function manifestOfWritten(
  root: string,
  made: Map<string, string>,
  written: Map<string, Written>,
  normalized: Set<string>,
  opts: { cache: Map<string, CachedHash>; onProgress?: Progress },
): Promise<{ entries: ManifestEntry[]; bytes: number } | undefined> {
  const raws: Raw[] = [rawOf("/", root, Deno.lstatSync(root))];
  const inodes = new Map<number, number>(); // paths per inode, as st_nlink would count them
  let probedFile = false, probedDir = false;
  for (const [rel, kind] of made) {
    if (rel === "/") continue;
    const full = root + rel;
    const w = written.get(rel);
    if (!w) {
      if (kind !== "dir" || !normalized.has(rel)) return undefined;
      raws.push({
        entry: { path: rel, type: "dir", mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0 },
        ino: 0,
        nlink: 1,
        full,
        mtimeMs: 0,
      });
      continue;
    }
    if (w.type !== kind) return undefined;
    if (w.recheck) {
      raws.push(rawOf(rel, full, Deno.lstatSync(full)));
      continue;
    }
    const probe = w.type === "file" ? !probedFile : w.type === "dir" && !probedDir;
    if (probe) {
      if (listXattrs(full)) return undefined; // the kernel labels what is made here
      if (w.type === "file") probedFile = true;
      else probedDir = true;
    }
    const entry: ManifestEntry = {
      path: rel,
      type: w.type as EntryType,
      mode: w.mode,
      uid: w.uid,
      gid: w.gid,
      size: w.size,
      mtime: w.mtime,
    };
    let ino = 0, mtimeMs = 0;
    if (w.type === "file") {
      const c = opts.cache.get(rel);
      if (!c) return undefined;
      ino = c.ino;
      mtimeMs = c.mtimeMs;
      inodes.set(ino, (inodes.get(ino) ?? 0) + 1);
    } else if (w.type === "symlink") entry.target = w.target;
    raws.push({ entry, ino, nlink: 1, full, mtimeMs });
  }
  for (const r of raws) {
    if (r.entry.type === "file" && inodes.has(r.ino)) r.nlink = inodes.get(r.ino)!;
  }
  opts.onProgress?.({ phase: "scan", done: raws.length, total: raws.length });
  return await resolve(raws, opts);
}
