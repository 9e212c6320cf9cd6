// The content-addressed file store shared by every image version (as OSTree does): each regular
// file is stored once under objects/<2 hex>/<key> and image trees are hard links into it, so a
// version that changes 1 % of an image costs about 1 % on disk. NFS exports and hybrid copies
// still see a normal tree per version.
//
// A hard link shares the inode, hence its metadata: the key is the sha256 of the content digest
// AND the metadata the manifest records (mode, owner, mtime seconds, xattrs), so two files share
// an inode only when the manifest cannot tell them apart. Within one tree an object is used by
// one manifest "file" entry (with its own in-image hard links) only: two unrelated identical files
// of one image stay two inodes, or the next scan would read them as a hard link pair and the
// image's id would change.
//
// Trees are never written in place (exports are read-only, changes go through an overlay upper
// and a new tree), so sharing inodes is safe. An object nothing links to any more has st_nlink 1:
// `gc` removes exactly those; no reference counts to keep right.
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import type { ManifestEntry } from "../../contract/manifest.ts";
import { logger } from "../log.ts";

const log = logger("images");

/** What an object stands for: content digest and the metadata a hard link shares. */
export function identity(e: ManifestEntry): string {
  const xattrs = e.xattrs
    ? Object.keys(e.xattrs).sort().map((k) => `${k}=${e.xattrs![k]}`).join(",")
    : "";
  return `${e.sha256}\t${e.mode}\t${e.uid}\t${e.gid}\t${e.mtime}\t${xattrs}`;
}

export function objectKey(e: ManifestEntry): string {
  return createHash("sha256").update(identity(e)).digest("hex");
}

const code = (e: unknown) => (e as { code?: string }).code;

/** EMLINK (an inode at the file system's most links: 65000 on ext4). Deno gives that error no
 *  code, only its message. */
export function isTooManyLinks(e: unknown): boolean {
  return code(e) === "EMLINK" || /\(os error 31\)/.test((e as Error)?.message ?? "");
}

export interface IngestStats {
  /** Files whose content was new to the store. */
  added: number;
  addedBytes: number;
  /** Files now sharing an existing object. */
  shared: number;
}

export class ObjectStore {
  constructor(readonly dir: string) {}

  path(key: string): string {
    return join(this.dir, key.slice(0, 2), key);
  }

  /**
   * Puts the regular files of a scanned tree (entries from scanTree of `root`) into the store:
   * a new content becomes an object (a link to the tree's file), a known one replaces the tree's
   * file (and its in-image hard links) by a link to the object, atomically per path. `known`:
   * inodes of the version a copy was made from (left as they are).
   */
  ingest(root: string, entries: ManifestEntry[], known?: Set<number>): IngestStats {
    const stats: IngestStats = { added: 0, addedBytes: 0, shared: 0 };
    const links = new Map<string, string[]>();
    for (const e of entries) {
      if (e.type !== "hardlink") continue;
      const group = links.get(e.target!);
      if (group) group.push(e.path);
      else links.set(e.target!, [e.path]);
    }
    const used = new Set<string>();
    // Replacing a file by a link renames over it, which changes its directory's mtime: each
    // directory's times as scanned, put back at the end (the tree must still match its manifest).
    const dirTimes = new Map<string, Deno.FileInfo>();
    const replace = (obj: string, path: string) => {
      const dir = path.slice(0, path.lastIndexOf("/")) || "/";
      if (!dirTimes.has(dir)) dirTimes.set(dir, Deno.lstatSync(dir));
      replaceByLink(obj, path);
    };
    for (const e of entries) {
      if (e.type !== "file") continue;
      const id = identity(e);
      if (used.has(id)) continue; // another file of this tree holds that object
      used.add(id);
      const file = root + e.path;
      // A file still sharing the base version's inode (a hard-link copy) is already in place.
      if (known?.has(Deno.lstatSync(file).ino!)) continue;
      const obj = this.path(objectKey(e));
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          Deno.linkSync(file, obj);
          stats.added++;
          stats.addedBytes += e.size;
          break;
        } catch (err) {
          if (code(err) === "ENOENT") {
            Deno.mkdirSync(join(obj, ".."), { recursive: true, mode: 0o700 });
            continue;
          }
          if (code(err) !== "EEXIST") {
            if (isTooManyLinks(err)) break; // this tree keeps its own copy
            throw err;
          }
        }
        const o = Deno.lstatSync(obj), f = Deno.lstatSync(file);
        if (o.ino === f.ino && o.dev === f.dev) break; // already the object (a copied tree)
        if (this.replaceDamaged(obj, o.size, file, e.size)) {
          stats.added++;
          stats.addedBytes += e.size;
          break;
        }
        const group = [e.path, ...links.get(e.path) ?? []];
        let moved = 0;
        try {
          for (const p of group) {
            replace(obj, root + p);
            moved++;
          }
          stats.shared++;
          break;
        } catch (err) {
          // The paths already moved go back to the tree's own inode (still at the path that
          // failed): a hard link group split over two inodes is not the tree its manifest says.
          for (const p of group.slice(0, moved)) replace(root + group[moved], root + p);
          if (isTooManyLinks(err)) break; // the object is full: this tree keeps its own copy
          if (code(err) !== "ENOENT") throw err; // gc removed the object meanwhile: add it
        }
      }
    }
    for (const [dir, st] of dirTimes) Deno.utimeSync(dir, st.atime!, st.mtime!);
    return stats;
  }

  /**
   * An object whose size is not its content's was damaged on the disk (truncated, cut short by
   * fsck): `file`, that content just hashed, takes its place, or every later version of that
   * content would link to the damaged one and be served so. Trees linked to the old inode keep
   * it. True when it was replaced. Only the size, which an lstat already gives, is checked:
   * reading the content again would read every shared file of every commit.
   */
  replaceDamaged(obj: string, objSize: number, file: string, size: number): boolean {
    if (objSize === size) return false;
    log.warn("an object was damaged on the disk (wrong size): replaced by the file just stored", {
      object: obj,
      size: objSize,
      expected: size,
    });
    replaceByLink(file, obj);
    return true;
  }

  /** Removes objects no tree links to (st_nlink 1), except `keep` (keys of the versions kept
   *  without a tree: their manifests reference them). Returns how many and their bytes. */
  gc(keep?: Set<string>): { objects: number; bytes: number } {
    let objects = 0, bytes = 0;
    let dirs: Deno.DirEntry[];
    try {
      dirs = [...Deno.readDirSync(this.dir)];
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return { objects, bytes };
      throw e;
    }
    for (const d of dirs) {
      const sub = join(this.dir, d.name);
      for (const f of Deno.readDirSync(sub)) {
        const p = join(sub, f.name);
        const st = Deno.lstatSync(p);
        if (st.nlink !== 1 || keep?.has(f.name)) continue;
        Deno.removeSync(p);
        objects++;
        bytes += st.size;
      }
    }
    if (objects) log.info("gc: removed unreferenced objects", { objects, bytes });
    return { objects, bytes };
  }
}

/** Makes `path` a hard link to `obj`: a link under a temporary name renamed over it. */
export function replaceByLink(obj: string, path: string): void {
  // A short name beside it: `path` may already be as long as a name can be.
  const tmp = join(dirname(path), `.nr-${crypto.randomUUID().slice(0, 8)}`);
  Deno.linkSync(obj, tmp);
  try {
    Deno.renameSync(tmp, path);
  } catch (e) {
    Deno.removeSync(tmp);
    throw e;
  }
}
