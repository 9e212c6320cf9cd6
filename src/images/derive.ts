// A new version from a base version and an overlay upper, in time proportional to the change
// (issue 12): the manifest is the base's manifest with the upper's entries applied (only the
// upper is read and hashed, never the unchanged tree), and the new tree is written straight from
// that manifest — one mkdir per directory, one link(2) per file to the base's inode (already in
// the object store), the upper's entries renamed in. No copy of the base is scanned: the base's
// manifest already says what every entry is. A session writes that tree ahead from the base alone
// (buildSteps on baseDerived, session.ts) and its commit only applies the upper to it
// (applyDerived); buildDerived writes it whole (node save, or a session without the copy).
//
// The result is exactly what scanTree would read from the tree (tests/images_derive_test.ts
// checks it on every case): the tree is a normal directory tree, as NFS and the hybrid copy need.
// The same rules as applyUpper (upper.ts): whiteouts delete, opaque directories replace the
// directory's content, overlayfs's own attributes are dropped, redirect/metacopy are refused.
// The root directory keeps the base's entry.
import { dirname, join } from "node:path";
import process from "node:process";
import {
  compareBytes,
  MANIFEST_HEADER,
  type ManifestEntry,
  parseEntry,
  serializeEntry,
} from "../../contract/manifest.ts";
import { lchown, lutimes, mknod, S_IFBLK, S_IFCHR, S_IFIFO, S_IFSOCK } from "../linux/fsops.ts";
import { listXattrs, removeXattr, setXattr } from "../linux/xattr.ts";
import { identity, isTooManyLinks, objectKey, type ObjectStore, replaceByLink } from "./objects.ts";
import { b64, type CachedHash, hashFileSync, lstatNamed, splitDev, statEntry } from "./walk.ts";
import { hashFile } from "./sha256.ts";
import { isOpaque, isWhiteout, OVERLAY_XATTR, refuseIndirect } from "./upper.ts";

const code = (e: unknown) => (e as { code?: string }).code;

function unb64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** One entry of the new tree: from the base (its manifest line, kept when unchanged) or the
 *  upper (its host path there). */
interface Node {
  e: ManifestEntry;
  /** The base's manifest line, when the entry is the base's unchanged. */
  line?: string;
  /** Host path in the upper (entries the upper brings). */
  src?: string;
  /** Inode in the upper (hard links made in the upper). */
  ino?: number;
  /** Where a new file's content goes: its object (shared) or the upper file renamed in. */
  obj?: string;
}

export interface Derived {
  /** The new manifest's entries, in manifest order. */
  entries: ManifestEntry[];
  /** The manifest text. */
  text: string;
  /** Bytes of regular files (hard links once). */
  bytes: number;
  /** What the upper changed: entries written, entries deleted. */
  written: number;
  deleted: number;
  nodes: Node[];
  /** The base's paths that are not in the new tree, topmost only (a directory's content goes
   *  with it): what a copy of the base loses (applyDerived). */
  gone: string[];
  /** The base's directories the upper's directory of the same path merges with (their content
   *  stays; their owner, mode, xattrs and time are the upper's). */
  merged: Set<string>;
}

/** Path and type of a manifest line without parsing the rest. */
function pathOf(line: string): string {
  const p = line.slice(0, line.indexOf("\t"));
  return p.includes("\\") ? parseEntry(line).path : p;
}

function typeOf(line: string): string {
  const a = line.indexOf("\t") + 1;
  return line.slice(a, line.indexOf("\t", a));
}

/** A base version's manifest split into lines, its paths indexed; `entries` parsed (all of them,
 *  or filled in by the caller: prepareTree parses them ahead of the commit). One use only:
 *  deriveManifest changes the entries it takes over. */
export interface BaseIndex {
  lines: string[];
  paths: string[];
  index: Map<string, number>;
  entries: (ManifestEntry | undefined)[];
}

export function indexBase(baseText: string): BaseIndex {
  const lines = baseText.split("\n");
  if (lines[0] !== MANIFEST_HEADER) throw new Error("base manifest: unsupported header");
  lines.shift();
  if (lines.at(-1) === "") lines.pop();
  const paths = lines.map(pathOf);
  const index = new Map<string, number>();
  for (let i = 0; i < paths.length; i++) index.set(paths[i], i);
  return { lines, paths, index, entries: new Array(lines.length) };
}

/** Files from this size on are hashed before deriveManifest, off the server's thread. */
const HASH_AHEAD = 4 << 20;

/**
 * `hashes` with digests of the upper's regular files of HASH_AHEAD and more that it lacks, read
 * asynchronously and hashed on another thread (hashFile): deriveManifest hashes what is left
 * synchronously, and a file's size is whoever wrote it: a RUN's or a shell's sparse file of 8
 * GiB held the server's only thread 32 s at the commit.
 */
export async function hashLargeFiles(
  upper: string,
  hashes?: Map<string, CachedHash>,
): Promise<Map<string, CachedHash>> {
  const out = new Map(hashes);
  const dirs = ["/"];
  while (dirs.length) {
    const rel = dirs.pop()!;
    for (const e of Deno.readDirSync(rel === "/" ? upper : upper + rel)) {
      const r = `${rel === "/" ? "" : rel}/${e.name}`;
      if (e.isDirectory) dirs.push(r);
      if (!e.isFile) continue;
      const st = lstatNamed(upper + r, r); // (a name not UTF-8 refused as deriveManifest does)
      const c = out.get(r);
      const known = c?.ino === st.ino && c.size === st.size && c.mtimeMs === st.mtime!.getTime();
      if (st.size < HASH_AHEAD || known) continue;
      const sha256 = await hashFile(upper + r);
      out.set(r, { ino: st.ino!, size: st.size, mtimeMs: st.mtime!.getTime(), sha256 });
    }
  }
  return out;
}

/**
 * The manifest of `upper` applied onto the version whose manifest text (or index of it) is
 * `baseText`. Reads and hashes the upper's entries only (a digest of `hashes` is taken instead
 * when its inode, size and mtime still match, as scanTree does); strips overlayfs attributes
 * from the upper's files.
 */
export function deriveManifest(
  baseText: string | BaseIndex,
  upper: string,
  hashes?: Map<string, CachedHash>,
): Derived {
  const base = typeof baseText === "string" ? indexBase(baseText) : baseText;
  const { lines, paths, index } = base;
  const removed = new Uint8Array(paths.length);
  const added = new Map<string, Node>();
  let written = 0, deleted = 0;

  /** First index whose path is ≥ p (byte order). */
  const lowerBound = (p: string) => {
    let lo = 0, hi = paths.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compareBytes(paths[mid], p) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  const present = (p: string): string | undefined => {
    const i = index.get(p);
    return i !== undefined && !removed[i] ? typeOf(lines[i]) : undefined;
  };
  const removeChildren = (p: string) => {
    const prefix = p === "/" ? "/" : `${p}/`;
    for (let i = lowerBound(prefix); i < paths.length && paths[i].startsWith(prefix); i++) {
      removed[i] = 1;
    }
  };
  const removeTree = (p: string) => {
    const i = index.get(p)!;
    if (typeOf(lines[i]) === "dir") removeChildren(p);
    removed[i] = 1;
  };

  const walk = (rel: string) => {
    const dir = rel === "/" ? upper : upper + rel;
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    for (const name of names) {
      const r = `${rel === "/" ? "" : rel}/${name}`;
      const src = upper + r;
      const st = lstatNamed(src, r);
      const have = present(r);
      if (isWhiteout(st)) {
        if (have) {
          removeTree(r);
          deleted++;
        }
        continue;
      }
      const x = listXattrs(src);
      refuseIndirect(r, x);
      const e = statEntry(r, st);
      const type = e.type;
      const kept = new Map<string, Uint8Array>();
      for (const [k, v] of x ?? []) {
        if (OVERLAY_XATTR.test(k)) {
          if (type !== "dir") removeXattr(src, k); // the file itself moves into the tree
        } else kept.set(k, v);
      }
      if (kept.size) {
        e.xattrs = {};
        for (const [k, v] of kept) e.xattrs[k] = b64(v);
      }
      if (type === "dir") {
        if (have && have !== "dir") removeTree(r);
        else if (have) {
          if (isOpaque(x)) removeChildren(r);
          removed[index.get(r)!] = 1; // its entry is the upper's now
        }
        added.set(r, { e, src });
        written++;
        walk(r);
        continue;
      }
      if (have) removeTree(r);
      if (type === "symlink") e.target = Deno.readLinkSync(src);
      if (type === "char" || type === "block") e.rdev = splitDev(st.rdev!);
      if (type === "file") {
        const c = hashes?.get(r);
        e.sha256 = c?.sha256 && c.ino === st.ino && c.size === st.size &&
            c.mtimeMs === st.mtime!.getTime()
          ? c.sha256
          : hashFileSync(src);
      }
      added.set(r, { e, src, ino: st.ino! });
      written++;
    }
  };
  walk("/");

  // (byte order does not keep a directory's content next to it: "/a-b" sorts between "/a" and
  // "/a/b", so an entry's ancestors are looked up, not a running prefix)
  const gone: string[] = [];
  const goneDirs = new Set<string>();
  const merged = new Set<string>();
  const underGone = (p: string) => {
    for (let k = p.lastIndexOf("/"); k > 0; k = p.lastIndexOf("/", k - 1)) {
      if (goneDirs.has(p.slice(0, k))) return true;
    }
    return false;
  };
  for (let i = 0; i < lines.length; i++) {
    if (!removed[i]) continue;
    const p = paths[i];
    if (underGone(p)) continue;
    const isDir = typeOf(lines[i]) === "dir";
    if (isDir && added.get(p)?.e.type === "dir") merged.add(p);
    else {
      gone.push(p);
      if (isDir) goneDirs.add(p);
    }
  }

  // Merge: the base's entries left, the upper's, in manifest order.
  const news = [...added.values()].sort((a, b) => compareBytes(a.e.path, b.e.path));
  const nodes: Node[] = [];
  let j = 0;
  const baseNode = (i: number): Node => ({
    e: base.entries[i] ?? parseEntry(lines[i]),
    line: lines[i],
  });
  for (let i = 0; i < lines.length; i++) {
    if (removed[i]) continue;
    while (j < news.length && compareBytes(news[j].e.path, paths[i]) < 0) nodes.push(news[j++]);
    nodes.push(baseNode(i));
  }
  while (j < news.length) nodes.push(news[j++]);

  // Hard links: the first remaining path of an inode (in manifest order) is its "file" entry.
  const firstOfBase = new Map<string, string>(), firstOfUpper = new Map<number, string>();
  for (const n of nodes) {
    const e = n.e;
    if (n.src === undefined) {
      if (e.type !== "file" && e.type !== "hardlink") continue;
      const group = e.type === "file" ? e.path : e.target!;
      const first = firstOfBase.get(group);
      if (first === undefined) {
        firstOfBase.set(group, e.path);
        if (e.type === "hardlink") {
          // its file entry went: this path is the inode's first now
          e.type = "file";
          e.sha256 = parseEntry(lines[index.get(group)!]).sha256;
          delete e.target;
          n.line = undefined;
        }
      } else if (e.target !== first) {
        e.target = first;
        n.line = undefined;
      }
    } else if (e.type === "file") {
      const first = firstOfUpper.get(n.ino!);
      if (first === undefined) firstOfUpper.set(n.ino!, e.path);
      else {
        e.type = "hardlink";
        e.target = first;
        delete e.sha256;
      }
    }
  }
  let bytes = 0;
  const out = [MANIFEST_HEADER];
  for (const n of nodes) {
    out.push(n.line ?? serializeEntry(n.e));
    if (n.e.type === "file") bytes += n.e.size;
  }
  return {
    entries: nodes.map((n) => n.e),
    text: out.join("\n") + "\n",
    bytes,
    written,
    deleted,
    nodes,
    gone,
    merged,
  };
}

/** The base itself as a Derived (no upper; its entries all parsed): what prepareTree writes, a
 *  copy of the base. */
export function baseDerived(base: BaseIndex): Derived {
  const nodes = base.lines.map((line, i) => ({ e: base.entries[i] ??= parseEntry(line), line }));
  let bytes = 0;
  for (const n of nodes) if (n.e.type === "file") bytes += n.e.size;
  return {
    entries: nodes.map((n) => n.e),
    text: "",
    bytes,
    written: 0,
    deleted: 0,
    nodes,
    gone: [],
    merged: new Set(),
  };
}

export interface BuildStats {
  /** New files whose content became an object. */
  added: number;
  addedBytes: number;
  /** New files that share an object already stored. */
  shared: number;
}

/** Objects for the upper's new files: one object per manifest "file" identity in a tree
 *  (objects.ts). A new content's upper file becomes the object; a content already stored is
 *  noted in `n.obj` (the tree links to it). */
function storeNewFiles(d: Derived, objects: ObjectStore, stats: BuildStats): void {
  const newFiles = d.nodes.filter((n) => n.src !== undefined && n.e.type === "file");
  if (!newFiles.length) return;
  const used = new Set<string>();
  const shas = new Set(newFiles.map((n) => n.e.sha256));
  for (const n of d.nodes) {
    if (n.src === undefined && n.e.type === "file" && shas.has(n.e.sha256)) {
      used.add(identity(n.e));
    }
  }
  for (const n of newFiles) {
    const id = identity(n.e);
    if (used.has(id)) continue; // another file of this tree holds that object
    used.add(id);
    const obj = objects.path(objectKey(n.e));
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        Deno.linkSync(n.src!, obj);
        stats.added++;
        stats.addedBytes += n.e.size;
        break;
      } catch (err) {
        if (code(err) === "ENOENT") {
          Deno.mkdirSync(join(obj, ".."), { recursive: true, mode: 0o700 });
          continue;
        }
        if (code(err) === "EEXIST") {
          if (objects.replaceDamaged(obj, Deno.lstatSync(obj).size, n.src!, n.e.size)) {
            stats.added++;
            stats.addedBytes += n.e.size;
          } else n.obj = obj;
        } else if (!isTooManyLinks(err)) throw err;
        break;
      }
    }
  }
}

/** One of the upper's entries (not a directory) into the tree: moved in, or linked. */
function placeUpperEntry(n: Node, tree: string, stats: BuildStats): void {
  const e = n.e;
  const dst = tree + e.path;
  if (e.type === "hardlink") Deno.linkSync(tree + e.target!, dst);
  else if (n.obj && linkShared(n.obj, dst)) stats.shared++;
  else Deno.renameSync(n.src!, dst);
}

/**
 * Writes the tree of `d` at `tree` (a fresh path): directories made, the base's files linked
 * from `baseRoot` (same inodes: already objects), the upper's entries renamed in, new files put
 * into the object store (or linked to the object of the same content and metadata). Directory
 * times last, so the tree matches the manifest.
 */
export function buildDerived(
  d: Derived,
  baseRoot: string,
  tree: string,
  objects: ObjectStore,
): BuildStats {
  const steps = buildSteps(d, baseRoot, tree, objects, Infinity);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/** Operations between two yields of buildSteps (one link(2) ≈ 40 µs here: ~10 ms a slice). */
export const SLICE = 256;

/**
 * buildDerived in slices: yields after every `slice` kernel calls, so a caller can write a tree
 * in the background between other work (prepareTree).
 */
export function* buildSteps(
  d: Derived,
  /** Where the base's files are linked from; null: from their objects (a thin version's tree
   *  written again, ImageStore.ensureTree). */
  baseRoot: string | null,
  tree: string,
  objects: ObjectStore,
  slice = SLICE,
): Generator<void, BuildStats, void> {
  const stats: BuildStats = { added: 0, addedBytes: 0, shared: 0 };
  storeNewFiles(d, objects, stats);
  let ops = 0;
  const dirs: Node[] = [];
  /** Set-group-ID directories of the new tree (their entries inherit the group): path → gid. */
  const sgid = new Map<string, number>();
  // The base's files: one link(2) each, once the directories exist (the kernel's work per link
  // is most of a commit's time: a worker thread sharing them did not make it faster here).
  const links: string[] = [];
  const linkNodes: Node[] = [];
  const rest: Node[] = [];
  for (const n of d.nodes) {
    const e = n.e;
    const dst = e.path === "/" ? tree : tree + e.path;
    if (e.type === "dir") {
      if (e.path === "/") {
        Deno.mkdirSync(dst);
        setMeta(dst, e, true);
      } else {
        Deno.mkdirSync(dst, { mode: e.mode & 0o777 });
        setMetaOfNew(dst, e, sgid, true);
      }
      if (e.mode & 0o2000) sgid.set(e.path, e.gid);
      dirs.push(n);
      if (++ops % slice === 0) yield;
    } else if (n.src === undefined && (e.type === "file" || e.type === "hardlink")) {
      links.push(
        baseRoot !== null
          ? baseRoot + e.path
          : e.type === "file"
          ? objects.path(objectKey(e))
          : tree + e.target!,
        dst,
      );
      linkNodes.push(n);
    } else rest.push(n);
  }
  for (let i = 0; i < links.length; i += 2) {
    try {
      Deno.linkSync(links[i], links[i + 1]);
    } catch {
      const n = linkNodes[i / 2];
      if (n.e.type === "hardlink") linkInGroup(tree, links, linkNodes, i / 2);
      else if (baseRoot === null) copyObject(links[i], links[i + 1], n.e);
      else linkBase(links[i], links[i + 1], n.e, objects);
    }
    if (++ops % slice === 0) yield;
  }
  for (const n of rest) {
    if (++ops % slice === 0) yield;
    const e = n.e;
    const dst = tree + e.path;
    if (n.src !== undefined) {
      placeUpperEntry(n, tree, stats);
      continue;
    }
    makeSpecial(dst, e, (dst, e) => setMetaOfNew(dst, e, sgid, false));
  }
  for (const n of dirs) {
    lutimes(n.e.path === "/" ? tree : tree + n.e.path, n.e.mtime);
    if (++ops % slice === 0) yield;
  }
  return stats;
}

/** A symlink or device node of the manifest at `dst`, with its metadata and time. */
function makeSpecial(
  dst: string,
  e: ManifestEntry,
  symlinkMeta: (dst: string, e: ManifestEntry) => void,
): void {
  switch (e.type) {
    case "symlink":
      Deno.symlinkSync(e.target!, dst);
      symlinkMeta(dst, e);
      lutimes(dst, e.mtime);
      break;
    default: {
      const kind = { char: S_IFCHR, block: S_IFBLK, fifo: S_IFIFO, socket: S_IFSOCK }[
        e.type as "char"
      ];
      mknod(dst, kind | e.mode, e.rdev?.major ?? 0, e.rdev?.minor ?? 0);
      setMeta(dst, e, true);
      lutimes(dst, e.mtime);
    }
  }
}

/**
 * Turns `tree`, an exact copy of the base version (prepareTree: the base's directories, its files
 * as links to the same inodes), into the tree of `d`: the base's entries the upper removed or
 * replaced are deleted, the upper's entries moved in (new files into the object store first, as
 * buildDerived does), the directories the upper merges with get the upper's metadata, and the
 * times of every directory whose content changed are put back to the manifest's. Work in
 * proportion to the change: the unchanged tree is not touched.
 */
export function applyDerived(d: Derived, tree: string, objects: ObjectStore): BuildStats {
  const stats: BuildStats = { added: 0, addedBytes: 0, shared: 0 };
  storeNewFiles(d, objects, stats);
  const parentOf = (p: string) => p.slice(0, p.lastIndexOf("/")) || "/";
  const at = (p: string) => (p === "/" ? tree : tree + p);
  /** Directories whose entries or metadata changed: their times go back to the manifest's. */
  const touched = new Set<string>();
  for (const p of d.gone) {
    Deno.removeSync(at(p), { recursive: true });
    touched.add(parentOf(p));
  }
  for (const n of d.nodes) {
    if (n.src === undefined) continue;
    const e = n.e;
    const dst = at(e.path);
    touched.add(parentOf(e.path));
    if (e.type !== "dir") {
      placeUpperEntry(n, tree, stats);
      continue;
    }
    touched.add(e.path);
    if (d.merged.has(e.path)) {
      // the base's directory stays (its content is kept): the upper's owner, mode and xattrs
      for (const k of listXattrs(dst)?.keys() ?? []) {
        if (!e.xattrs?.[k]) removeXattr(dst, k);
      }
    } else Deno.mkdirSync(dst, { mode: e.mode & 0o777 });
    setMeta(dst, e, true);
  }
  if (touched.size) {
    for (const n of d.nodes) {
      if (n.e.type === "dir" && touched.has(n.e.path)) lutimes(at(n.e.path), n.e.mtime);
    }
  }
  return stats;
}

/** A hard link to an object; false when it cannot be (gone meanwhile, too many links). */
function linkShared(obj: string, dst: string): boolean {
  try {
    Deno.linkSync(obj, dst);
    return true;
  } catch (err) {
    if (code(err) === "ENOENT" || isTooManyLinks(err)) return false;
    throw err;
  }
}

/**
 * linkNodes[at], a hard link, to its group's first path in the new tree. When that inode is full
 * (the base's, with the base's own names and the new tree's: a group of over 32,500 names on
 * ext4), the new tree's group moves to a copy of its own, the names linked so far first, and
 * the names still to link (`links`: source, destination pairs) are linked to it: a group split
 * over two inodes would not be the tree its manifest says.
 */
function linkInGroup(tree: string, links: string[], linkNodes: Node[], at: number): void {
  const e = linkNodes[at].e, first = tree + e.target!;
  try {
    Deno.linkSync(first, tree + e.path);
    return;
  } catch (err) {
    const head = linkNodes.find((n) => n.e.path === e.target);
    if (!isTooManyLinks(err) || head?.e.type !== "file") throw err;
    const copy = join(dirname(first), `.nr-${crypto.randomUUID().slice(0, 8)}`);
    copyObject(first, copy, head.e);
    const inGroup = (n: Node) => n.e.type === "hardlink" && n.e.target === e.target;
    for (const n of [head, ...linkNodes.slice(0, at).filter(inGroup)]) {
      replaceByLink(copy, tree + n.e.path);
    }
    Deno.removeSync(copy);
    Deno.linkSync(first, tree + e.path);
    for (let j = at + 1; j < linkNodes.length; j++) if (inGroup(linkNodes[j])) links[2 * j] = first;
  }
}

/** A file of a tree written from objects whose object has too many links: a copy of it. */
function copyObject(obj: string, dst: string, e: ManifestEntry): void {
  Deno.copyFileSync(obj, dst);
  setMeta(dst, e, true);
  lutimes(dst, e.mtime);
}

/** The base's file in the new tree: a link to its inode; its object if the base's path is gone;
 *  a copy when the inode has too many links. */
function linkBase(src: string, dst: string, e: ManifestEntry, objects: ObjectStore): void {
  try {
    Deno.linkSync(src, dst);
    return;
  } catch (err) {
    if (
      code(err) === "ENOENT" && e.type === "file" && linkShared(objects.path(objectKey(e)), dst)
    ) {
      return;
    }
    if (!isTooManyLinks(err)) throw err;
  }
  const st = Deno.lstatSync(src);
  Deno.copyFileSync(src, dst);
  setMeta(dst, e, true);
  lutimes(dst, st.mtime!.getTime() / 1000);
}

/** The umask new entries get (read once: mkdir's mode is masked by it). */
const umask = (() => {
  const m = process.umask(0o022);
  process.umask(m);
  return m;
})();
const isRoot = Deno.uid() === 0;

/**
 * setMeta for an entry this process just created (owned by root, mode as mkdir gave it), without
 * the calls that would change nothing: a root-owned entry outside set-group-ID directories keeps
 * its owner; a directory made with its mode keeps it unless umask or a special bit is involved.
 */
function setMetaOfNew(
  dst: string,
  e: ManifestEntry,
  sgid: Map<string, number>,
  chmod: boolean,
): void {
  const parentGid = sgid.get(e.path.slice(0, e.path.lastIndexOf("/")) || "/");
  if (!isRoot || e.uid !== 0 || e.gid !== (parentGid ?? 0)) lchown(dst, e.uid, e.gid);
  if (chmod && (!isRoot || (e.mode & 0o7000) || (e.mode & umask) || parentGid !== undefined)) {
    Deno.chmodSync(dst, e.mode);
  }
  for (const [k, v] of Object.entries(e.xattrs ?? {})) setXattr(dst, k, unb64(v));
}

/** Owner, mode and xattrs of an entry onto a path made for it (times are set by the caller). */
function setMeta(dst: string, e: ManifestEntry, chmod: boolean): void {
  lchown(dst, e.uid, e.gid);
  if (chmod) Deno.chmodSync(dst, e.mode); // after chown, which drops suid
  for (const [k, v] of Object.entries(e.xattrs ?? {})) setXattr(dst, k, unb64(v));
}
