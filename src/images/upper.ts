// Changes to an image tree, as files: an overlayfs upper directory applied onto a copy of the
// tree (whiteouts and opaque directories included), and files copied into or out of an image.
// Every path inside an image is reached through real directories only: an existing symlink (or
// file) where the change needs a directory is replaced, never followed, so nothing the image holds
// can make a change land outside the copy.
import fs from "node:fs";
import { basename, dirname, join, posix } from "node:path";
import { resolveInRoot } from "../../contract/rootpath.ts";
import { UserError } from "../errors.ts";
import {
  heldPath,
  lchown,
  lutimes,
  mknod,
  O_PATH,
  S_IFBLK,
  S_IFCHR,
  S_IFIFO,
  S_IFSOCK,
} from "../linux/fsops.ts";
import { listXattrs, removeXattr, setXattr } from "../linux/xattr.ts";
import { Turns } from "../turns.ts";
import { lstatOrNull, shown } from "./archivepath.ts";
import { isTooManyLinks } from "./objects.ts";
import { splitDev } from "./walk.ts";

/** overlayfs's own attributes (opaque, origin, impure, redirect, metacopy…): never image content. */
export const OVERLAY_XATTR = /^(trusted|user)\.overlay\./;

/** An overlay whiteout: a character device 0/0. */
export const isWhiteout = (st: Deno.FileInfo) => st.isCharDevice && st.rdev === 0;

/** A directory the overlay marked opaque (what was below it is gone). */
export function isOpaque(x: Map<string, Uint8Array> | undefined): boolean {
  const v = x?.get("trusted.overlay.opaque") ?? x?.get("user.overlay.opaque");
  return v !== undefined && new TextDecoder().decode(v) === "y";
}

function removeTree(path: string): void {
  Deno.removeSync(path, { recursive: true });
}

export interface UpperStats {
  /** Entries written (files, links, directories, devices). */
  written: number;
  /** Whiteouts applied (entries deleted from the tree). */
  deleted: number;
}

/**
 * Applies an overlayfs upper directory onto `tree` (a private copy of the lower layer): whiteouts
 * (char device 0/0) delete, opaque directories replace the directory's contents, every other entry
 * moves (rename) into the tree with its owner, mode, xattrs and mtime; overlayfs's own attributes
 * are dropped. A redirected directory or a metacopy-only file (overlay features whose content
 * lives elsewhere) is refused: they need the layer below, which the upper does not carry.
 */
/** Refuses an upper entry whose content lives in another layer (redirect, metacopy). */
export function refuseIndirect(r: string, x: Map<string, Uint8Array> | undefined): void {
  for (const k of ["redirect", "metacopy"]) {
    if (x?.has(`trusted.overlay.${k}`) || x?.has(`user.overlay.${k}`)) {
      throw new UserError(
        `${shown(r)} is an overlay ${k} entry (its content is in another layer): ` +
          "mount the overlay with redirect_dir=off,metacopy=off",
      );
    }
  }
}

export function applyUpper(upper: string, tree: string): UpperStats {
  const stats: UpperStats = { written: 0, deleted: 0 };
  const walk = (rel: string) => {
    const names = [...Deno.readDirSync(upper + rel)].map((e) => e.name).sort();
    for (const name of names) {
      const r = `${rel === "/" ? "" : rel}/${name}`;
      const src = upper + r, dst = tree + r;
      const st = Deno.lstatSync(src);
      const have = lstatOrNull(dst);
      if (isWhiteout(st)) {
        if (have) {
          removeTree(dst);
          stats.deleted++;
        }
        continue;
      }
      const x = listXattrs(src);
      refuseIndirect(r, x);
      if (st.isDirectory) {
        if (have && !have.isDirectory) removeTree(dst);
        if (!have || !have.isDirectory) Deno.mkdirSync(dst);
        else if (isOpaque(x)) {
          for (const e of Deno.readDirSync(dst)) removeTree(join(dst, e.name));
        }
        walk(r);
        copyMeta(st, x, dst, true);
      } else {
        if (have) removeTree(dst);
        Deno.renameSync(src, dst);
        for (const k of x?.keys() ?? []) if (OVERLAY_XATTR.test(k)) removeXattr(dst, k);
      }
      stats.written++;
    }
  };
  walk("/");
  return stats;
}

/** What a copy sets instead of the source's own owner or mode (COPY --chown, --chmod). */
export interface Override {
  uid?: number;
  gid?: number;
  mode?: number;
}

/** Owner, mode, xattrs (the tree's own ones replaced) and mtime of `st` onto `dst`. */
function copyMeta(
  st: Deno.FileInfo,
  x: Map<string, Uint8Array> | undefined,
  dst: string,
  replaceXattrs: boolean,
  o: Override = {},
): void {
  lchown(dst, o.uid ?? st.uid!, o.gid ?? st.gid!);
  // after chown, which drops suid
  if (!st.isSymlink) Deno.chmodSync(dst, o.mode ?? st.mode! & 0o7777);
  if (replaceXattrs) {
    for (const k of listXattrs(dst)?.keys() ?? []) {
      if (!x?.has(k) || OVERLAY_XATTR.test(k)) removeXattr(dst, k);
    }
  }
  for (const [k, v] of x ?? []) if (!OVERLAY_XATTR.test(k)) setXattr(dst, k, v);
  lutimes(dst, st.mtime!.getTime() / 1000);
}

/**
 * A regular file's content copied to `dst` (which must not exist), its holes kept as holes:
 * Deno.copyFileSync writes them out as zeros, and an image's (or a tarball's) sparse file of a
 * few blocks but 1 TiB long would fill the disk it is copied to. Files without holes take the
 * fast path; the others GNU cp, which copies only their data (SEEK_DATA).
 */
async function copyFile(src: string, dst: string, st: Deno.FileInfo, name = src): Promise<void> {
  if (st.blocks === null || st.blocks * 512 >= st.size) {
    // a small file at once (an asynchronous copy costs a thread's round trip), a large one on
    // another thread
    if (st.size < 1 << 20) return Deno.copyFileSync(src, dst);
    return await Deno.copyFile(src, dst);
  }
  const out = await new Deno.Command("cp", {
    args: ["--sparse=always", "--no-target-directory", "--", src, dst],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`cannot copy ${name}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/** What a copy leaves out, and when it stops. */
export interface Walk {
  /** Entries left out, by their name (a build context's .dockerignore). */
  skip?: (name: string, isDirectory: boolean) => boolean;
  /** Stops the copy between two entries (a build cancelled: 50,000 files went on being copied,
   *  then committed when it was the last step). */
  signal?: AbortSignal;
}

/** Turns of the server's thread for copies: one for all, since a COPY of a directory's contents
 *  is a copyTree per entry (20,000 of one file each held the thread 5 s). */
const turns = new Turns();

/** The names of one file within a copy: the source's inode (dev:ino) → the copy's first name
 *  and its inode there. */
export type CopiedLinks = Map<string, { path: string; ino: number }>;

/**
 * Copies `src` (a host file or tree; symlinks copied as symlinks) to `dst`, creating what is
 * missing, replacing any non-directory on the way and merging directories. Returns the entries
 * copied. `dst`'s parent must be a real directory. With `root` (the image `dst` is in), a link of
 * the image to a directory where `src` has a directory is kept and merged into (resolved inside
 * the image), as dpkg and `tar --keep-directory-symlink` do: replaced by a directory holding only
 * what is copied, usrmerge's `/bin -> usr/bin` would take every command of the image away.
 * A file's other names in `src` (hard links) become names of its copy, as `cp -a` and tar make
 * them (`links`, shared by the copies of one change): copied each, a tarball's file of 1 MiB
 * with 100 names wrote 101 MiB (ext4 allows 65,000 names: a tarball of about 1 MiB, 1 GiB of
 * zeros, stood for 65 TB).
 * `src` is read below `from` (the build context: whoever owns it may change it while it is
 * copied) through directories held open, each reached without following a link: a directory
 * swapped for a link during the copy fails it instead of leading it out (path by path, 27 of 40
 * builds racing a swap copied the files of the host directory the link named).
 * The server's thread is left between entries and while a file's content is copied: a context
 * of 50,000 files (a node_modules) held it 16 s, a file of 2 GiB 5 s, with no DHCP, TFTP or
 * HTTP answered meanwhile.
 */
export async function copyTree(
  src: string,
  dst: string,
  o: Override = {},
  root?: string,
  links: CopiedLinks = new Map(),
  from = dirname(src),
  walk: Walk = {},
): Promise<number> {
  const parent = holdPath(from, dirname(src));
  try {
    const at = `${heldPath(parent)}/${basename(src)}`;
    return await copyEntry(at, src, dst, o, root, links, walk);
  } finally {
    fs.closeSync(parent);
  }
}

/** copyTree of the entry at `at` (a path in a held directory), named `name` in errors. */
async function copyEntry(
  at: string,
  name: string,
  dst: string,
  o: Override,
  root: string | undefined,
  links: CopiedLinks,
  walk: Walk,
): Promise<number> {
  await turns.take();
  walk.signal?.throwIfAborted();
  const st = Deno.lstatSync(at);
  if (walk.skip?.(name, st.isDirectory)) return 0;
  const have = lstatOrNull(dst);
  let n = 1;
  if (st.isDirectory) {
    const into = have?.isSymlink && root ? linkedDir(root, dst) : undefined;
    if (!into) {
      if (have && !have.isDirectory) removeTree(dst);
      if (!have || !have.isDirectory) Deno.mkdirSync(dst);
    }
    const dir = hold(at, st, name);
    try {
      for await (const e of Deno.readDir(heldPath(dir))) {
        n += await copyEntry(
          `${heldPath(dir)}/${e.name}`,
          `${name}/${e.name}`,
          join(into ?? dst, e.name),
          o,
          root,
          links,
          walk,
        );
      }
    } finally {
      fs.closeSync(dir);
    }
    if (into) return n; // the image's directory keeps its own owner, mode and times
  } else {
    if (have) removeTree(dst);
    const key = st.isFile && st.nlink! > 1 ? `${st.dev}:${st.ino}` : undefined;
    if (key !== undefined && linkCopied(links.get(key), dst)) return n;
    if (st.isFile) {
      const file = hold(at, st, name);
      try {
        await copyFile(heldPath(file), dst, st, name);
      } finally {
        fs.closeSync(file);
      }
    } else if (st.isSymlink) Deno.symlinkSync(Deno.readLinkSync(at), dst);
    else {
      // (a socket was made a FIFO: the manifest has sockets, as derive.ts and the node make them)
      const kind = st.isCharDevice
        ? S_IFCHR
        : st.isBlockDevice
        ? S_IFBLK
        : st.isSocket
        ? S_IFSOCK
        : S_IFIFO;
      const { major, minor } = splitDev(st.rdev ?? 0);
      mknod(dst, kind | (st.mode! & 0o7777), major, minor);
    }
    if (key !== undefined) links.set(key, { path: dst, ino: Deno.lstatSync(dst).ino! });
  }
  copyMeta(st, listXattrs(at), dst, false, o);
  return n;
}

/** `at` (an entry of a held directory) held as a reference, without following a link, when it
 *  is still the entry lstat saw (`st`). */
function hold(at: string, st: Deno.FileInfo, name: string): number {
  const dir = st.isDirectory ? fs.constants.O_DIRECTORY : 0;
  let fd: number;
  try {
    fd = fs.openSync(at, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | O_PATH | dir);
  } catch (e) {
    if (!["ELOOP", "ENOTDIR", "ENOENT"].includes((e as { code?: string }).code!)) throw e;
    throw changed(name);
  }
  const now = Deno.statSync(heldPath(fd));
  if (now.ino === st.ino && now.dev === st.dev) return fd;
  fs.closeSync(fd);
  throw changed(name);
}

/** Directory `dir` held: `from` (the caller's own path) opened, then each component of `dir`
 *  below it without following a link. */
function holdPath(from: string, dir: string): number {
  const rel = posix.relative(from, dir);
  if (rel === ".." || rel.startsWith("../")) throw new Error(`${dir} is not under ${from}`);
  let fd = fs.openSync(from, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | O_PATH);
  let at = from;
  for (const c of rel.split("/").filter(Boolean)) {
    at = `${at}/${c}`;
    try {
      const st = Deno.lstatSync(`${heldPath(fd)}/${c}`);
      if (!st.isDirectory) throw changed(at); // resolved as a directory by the caller
      const next = hold(`${heldPath(fd)}/${c}`, st, at);
      fs.closeSync(fd);
      fd = next;
    } catch (e) {
      fs.closeSync(fd);
      throw e instanceof Deno.errors.NotFound ? changed(at) : e;
    }
  }
  return fd;
}

/** The regular file `path` (below `from`, as copyTree reads its source) held: read through the
 *  returned path, it is that file whatever is swapped onto `path` meanwhile. */
export function heldFile(from: string, path: string): { path: string } & Disposable {
  const parent = holdPath(from, dirname(path));
  try {
    const at = `${heldPath(parent)}/${basename(path)}`;
    const st = Deno.lstatSync(at);
    if (!st.isFile) throw changed(path);
    const fd = hold(at, st, path);
    return { path: heldPath(fd), [Symbol.dispose]: () => fs.closeSync(fd) };
  } finally {
    fs.closeSync(parent);
  }
}

function changed(name: string): UserError {
  return new UserError(`${shown(name)} changed during the copy (a link swapped in?); refusing`);
}

/** `dst` made another name of a file the copy made; false when there is none, it was replaced
 *  since (two sources copied to one path), or it has too many names (then `dst` is a copy). */
function linkCopied(first: { path: string; ino: number } | undefined, dst: string): boolean {
  if (!first || lstatOrNull(first.path)?.ino !== first.ino) return false;
  try {
    Deno.linkSync(first.path, dst);
    return true;
  } catch (e) {
    if (isTooManyLinks(e)) return false;
    throw e;
  }
}

/** The directory the image's symlink `link` (a host path under `root`) leads to inside the image,
 *  if it leads to one. */
function linkedDir(root: string, link: string): string | undefined {
  if (!link.startsWith(`${root}/`)) return undefined;
  try {
    const r = resolveInRoot(root, link.slice(root.length));
    return r.missing === undefined && Deno.lstatSync(r.host).isDirectory ? r.host : undefined;
  } catch {
    return undefined; // a symlink loop: replaced, as before
  }
}

/**
 * Where `rel` (an absolute path inside the image at `root`) lands, resolved as chroot(root) would:
 * symlinks of the image followed inside it, `..` stopped at its root. An existing directory
 * receives the source under its own name (`cp a b/`); a missing last component is the new name;
 * a missing parent is an error.
 */
export function destinationIn(root: string, rel: string, srcName: string): string {
  const r = resolveInRoot(root, rel);
  if (r.missing !== undefined) {
    const parent = resolveInRoot(root, dirname(rel));
    if (parent.missing !== undefined || !Deno.lstatSync(parent.host).isDirectory) {
      throw new UserError(`${rel}: no such directory in the image (${parent.missing ?? rel})`);
    }
    const name = basename(rel);
    if (name === ".." || name === ".") throw new UserError(`${rel}: not a file name`);
    return join(parent.host, name);
  }
  return Deno.lstatSync(r.host).isDirectory ? join(r.host, srcName) : r.host;
}

/** The host path of `rel` inside the image at `root`: its parents resolved as chroot(root) would,
 *  its last component itself (a symlink is copied as a symlink). */
export function sourceIn(root: string, rel: string): string {
  if (rel === "/" || rel === "") return root;
  const parent = resolveInRoot(root, dirname(rel));
  const name = basename(rel);
  const host = parent.missing === undefined && name !== ".." && name !== "."
    ? join(parent.host, name)
    : undefined;
  if (!host || !lstatOrNull(host)) throw new UserError(`${rel}: no such file in the image`);
  return host;
}

/**
 * The host path of directory `rel` inside the image at `root`, created (mode 0755, root) where
 * missing, each component resolved as chroot(root) would. A non-directory in the way is an error.
 */
export function mkdirIn(root: string, rel: string): string {
  let host = root;
  let at = "";
  // ".." is taken lexically here (as Docker's WORKDIR and COPY destinations are)
  for (const c of posix.normalize(`/${rel}`).split("/").filter(Boolean)) {
    at = `${at}/${c}`;
    const r = resolveInRoot(root, at || "/");
    if (r.missing !== undefined) {
      const parent = resolveInRoot(root, dirname(at));
      if (parent.missing !== undefined) throw new UserError(`${rel}: cannot create ${at}`);
      if (lstatOrNull(join(parent.host, basename(at)))) {
        throw new UserError(`${at}: a symlink to a directory missing from the image`);
      }
      Deno.mkdirSync(join(parent.host, basename(at)), { mode: 0o755 });
      host = join(parent.host, basename(at));
    } else {
      host = r.host;
      if (!Deno.lstatSync(host).isDirectory) throw new UserError(`${at}: not a directory`);
    }
  }
  return host;
}
