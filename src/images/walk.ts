// Walks an extracted image tree into manifest entries: lstat, readlink, xattrs and sha256 of every
// regular file. Synchronous syscalls in a tight loop (per-file awaits would dominate on trees of
// small files); it yields to the event loop every ~50 ms so progress lines still flow.
import { createHash } from "node:crypto";
import { join } from "node:path";
import { UserError } from "../errors.ts";
import { compareBytes, type EntryType, type ManifestEntry } from "../../contract/manifest.ts";
import { listXattrs } from "../linux/xattr.ts";

/** A digest computed while the file was being extracted; used only if the file is unchanged. */
export interface CachedHash {
  ino: number;
  size: number;
  mtimeMs: number;
  sha256: string;
}

export type Progress = (p: { phase: string; done: number; total?: number }) => void;

const buf = new Uint8Array(1 << 20);

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

interface Raw {
  entry: ManifestEntry;
  ino: number;
  nlink: number;
  full: string;
  mtimeMs: number;
}

function lstatNamed(full: string, rel: string): Deno.FileInfo {
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
  let last = performance.now();
  const maybeYield = async () => {
    if (performance.now() - last > 50) {
      await new Promise((r) => setTimeout(r, 0));
      last = performance.now();
    }
  };
  const add = (rel: string, full: string, st: Deno.FileInfo) => {
    const entry = statEntry(rel, st);
    const type = entry.type;
    if (type === "symlink") entry.target = Deno.readLinkSync(full);
    if (type === "char" || type === "block") entry.rdev = splitDev(st.rdev!);
    const xa = listXattrs(full);
    if (xa) {
      entry.xattrs = {};
      for (const [k, v] of xa) entry.xattrs[k] = b64(v);
    }
    raws.push({ entry, ino: st.ino!, nlink: st.nlink!, full, mtimeMs: st.mtime!.getTime() });
    if (type === "dir" && rel !== "/") dirs.push(rel);
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
    await maybeYield();
  }
  opts.onProgress?.({ phase: "scan", done: raws.length, total: raws.length });

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
    r.entry.sha256 = hashFileSync(r.full);
    done += r.entry.size;
    if (performance.now() - last > 50) {
      opts.onProgress?.({ phase: "hash", done, total });
      await maybeYield();
    }
  }
  if (toHash.length) opts.onProgress?.({ phase: "hash", done, total });
  return { entries: raws.map((r) => r.entry), bytes };
}
