// The OS image store: imports (unpack → manifest → id), the images table, rename/remove and the
// start-up reconcile. Crash safety comes from ordering, not from cleanup code:
//   1. everything is built in data.tmp/import-<uuid>/ (wiped at every start);
//   2. the finished directory is renamed to images/<id> (atomic);
//   3. only then is the row inserted. A crash between 2 and 3 leaves a directory without a row,
//      which reconcile() removes. A row therefore always has its tree.
// Removal goes the other way: row deleted first, then the tree renamed into tmp/ and deleted.
//
// Same content imported again (any name): no second copy; the existing image is returned with
// existed=true and keeps its name (`image import` prints "already imported as NAME (id …)").
// A name already used by another image is refused (409) before any work is done.
import { fsyncDir, statvfs, syncfs, syncfsLater } from "../linux/fsops.ts";
import { existsSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { DataDir } from "../datadir.ts";
import { type Db, durableTx } from "../db.ts";
import { conflict, notFound, UserError } from "../errors.ts";
import { recordEvent } from "../events.ts";
import { logger } from "../log.ts";
import {
  diffManifests,
  type ManifestEntry,
  manifestLines,
  manifestText,
} from "../../contract/manifest.ts";
import { detectKernel } from "./kernel.ts";
import { baseDerived, buildSteps, indexBase, SLICE } from "./derive.ts";
import { unpack } from "./unpack.ts";
import { objectKey, ObjectStore } from "./objects.ts";
import { detachMountsUnder, Sessions } from "./session.ts";
import { type CachedHash, type Progress, scanTree } from "./walk.ts";

const log = logger("images");

export interface ImageInfo {
  id: string;
  name: string;
  createdAt: string;
  /** Bytes of regular files (hardlinks counted once). */
  size: number;
  /** Manifest entries. */
  files: number;
  kernel: string | null;
  initrd: string | null;
  kernelVersion: string | null;
  bootable: boolean;
  /** Why the image is not bootable (null when it is). */
  reason: string | null;
  /** Bytes of regular files no other version shares (what removing it would free); set by
   *  `names()` and `history()`. */
  uniqueSize?: number;
  /** This version is the one its name points at. */
  current: boolean;
  /** How it was made: import | shell | cp | build | save. */
  madeBy: string;
  /** The command that made it (null for imports through the API). */
  command: string | null;
  /** The version it was made on (null: imported). */
  parent: string | null;
  /** Its hard-link tree is on disk (set by `names()` and `history()`): false for a version kept
   *  as its manifest + objects only (thin), rebuilt when something needs it. */
  tree?: boolean;
}

/** How a version was made (`image history`). */
export type MadeBy = "import" | "shell" | "cp" | "build" | "save";

/** A committed version: the image, and what the name pointed at before. */
export interface Commit extends ImageInfo {
  /** Same content already stored (as this version): nothing was committed. */
  existed: boolean;
  /** The version the name pointed at before (null: a new image). */
  previous: string | null;
  /** Set when the name moved on after the version this change was made on (concurrent
   *  changes): the version this commit does not contain. */
  outdated: string | null;
}

interface Row {
  id: string;
  name: string;
  created_at: string;
  size: number;
  files: number;
  kernel: string | null;
  initrd: string | null;
  kernel_version: string | null;
  bootable: number;
  reason: string | null;
  current: number;
  made_by: string;
  command: string | null;
  parent: string | null;
}

const toInfo = (r: Row): ImageInfo => ({
  id: r.id,
  name: r.name,
  createdAt: r.created_at,
  size: r.size,
  files: r.files,
  kernel: r.kernel,
  initrd: r.initrd,
  kernelVersion: r.kernel_version,
  bootable: r.bootable === 1,
  reason: r.reason,
  current: r.current === 1,
  madeBy: r.made_by,
  command: r.command,
  parent: r.parent,
});

const ID = /^[0-9a-f]{64}$/;

/** Names: what a lab writes (`debian-12`, `alice/rpi:latest`), never a bare image id. */
export function validateName(name: unknown): string {
  if (typeof name !== "string" || !/^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$/.test(name)) {
    throw new UserError(
      `invalid image name ${JSON.stringify(name)}: use 1-128 letters, digits and . _ : @ / + - ` +
        "(starting with a letter or digit)",
    );
  }
  if (ID.test(name)) throw new UserError(`invalid image name ${name}: it looks like an image id`);
  return name;
}

/** In a version's directory while its row is being written (from before its rename into images/
 *  until the row is committed) or deleted (from before the row goes until the directory does):
 *  what tells a directory a crash left without its row (removed at the next start) from one whose
 *  row the database lost (kept). Without it, a server started on a lost, deleted or older database
 *  (a restore of last week's backup) removed every image tree it had no row for: all of them, or
 *  every version made since the backup. */
const DISPOSABLE = "disposable";

function isNoSpace(e: unknown): boolean {
  return /no space left on device|os error 28/i.test((e as Error)?.message ?? "");
}

export class ImageStore {
  /** Set by openContext; receives `new Event("images")` after import/rm/rename. */
  changes?: EventTarget;
  readonly objects: ObjectStore;
  /** Open changes to images (shell, cp, build): overlays on a version. */
  readonly sessions: Sessions;

  constructor(readonly data: DataDir, readonly db: Db) {
    this.objects = new ObjectStore(data.objects);
    this.sessions = new Sessions(this);
  }

  /** Bytes of the data dir's disk promised to node saves under way (promiseRoom). */
  #promised = 0;

  /**
   * Room on the data dir's disk for one node save (its upper's tarball and that tarball
   * unpacked): half of the free space not yet promised to saves under way, promised to this one
   * until it is disposed. One save alone takes at most half the free space, and saves at once
   * cannot together fill the disk (each new one gets half of what the others left): root on a
   * few nodes cannot take the room the database and the other commits need.
   */
  promiseRoom(): { bytes: number; free: number; held: number } & Disposable {
    const free = statvfs(this.data.tmp).freeBytes, held = this.#promised;
    const bytes = Math.max(0, Math.floor((free - held) / 2));
    this.#promised += bytes;
    let promised = true;
    return {
      bytes,
      free,
      held,
      [Symbol.dispose]: () => {
        if (promised) this.#promised -= bytes;
        promised = false;
      },
    };
  }

  /** Bytes free on the data dir's disk and not promised to node saves under way. */
  freeRoom(): number {
    return statvfs(this.data.tmp).freeBytes - this.#promised;
  }

  #row(id: string): ImageInfo | undefined {
    const r = this.db.prepare("SELECT * FROM images WHERE id = ?").get(id) as Row | undefined;
    return r && toInfo(r);
  }

  #changed(): void {
    this.#uniqueCache.clear();
    this.changes?.dispatchEvent(new Event("images"));
  }

  /** How many images (names) there are (the API's health answer). */
  count(): number {
    return (this.db.prepare("SELECT count(*) AS n FROM images WHERE current = 1").get() as {
      n: number;
    }).n;
  }

  /** Every version of every image (what NFS exports and the initramfs cache follow). */
  list(): ImageInfo[] {
    return (this.db.prepare("SELECT * FROM images ORDER BY name, created_at, rowid")
      .all() as unknown as Row[]).map(toInfo);
  }

  /** Every version with its unique size and whether its tree is kept (`image ls --all`). */
  versions(): ImageInfo[] {
    return this.list().map((i) => ({
      ...i,
      uniqueSize: this.#unique(i.id),
      tree: this.hasTree(i.id),
    }));
  }

  /** The images as users name them: the current version of each name. */
  names(): ImageInfo[] {
    return (this.db.prepare("SELECT * FROM images WHERE current = 1 ORDER BY name")
      .all() as unknown as Row[]).map(toInfo).map((i) => ({
        ...i,
        uniqueSize: this.#unique(i.id),
        tree: this.hasTree(i.id),
      }));
  }

  /** The versions of one image, oldest first. */
  history(ref: string): ImageInfo[] {
    const name = this.get(ref).name;
    return (this.db.prepare("SELECT * FROM images WHERE name = ? ORDER BY created_at, rowid")
      .all(name) as unknown as Row[]).map(toInfo).map((i) => ({
        ...i,
        uniqueSize: this.#unique(i.id),
        tree: this.hasTree(i.id),
      }));
  }

  #uniqueCache = new Map<string, number>();

  /**
   * Bytes of the version's regular files that no other tree links to: an inode's links are its
   * paths in this tree, the object store's one (when it is an object), and other versions'.
   * One lstat per file; cached until the next change of the store.
   */
  #unique(id: string): number {
    const cached = this.#uniqueCache.get(id);
    if (cached !== undefined) return cached;
    let bytes = 0;
    try {
      const root = this.data.rootfs(id);
      const entries = [...manifestLines(Deno.readTextFileSync(this.data.manifest(id)))];
      const inTree = new Map<string, number>();
      for (const e of entries) {
        const first = e.type === "hardlink" ? e.target! : e.type === "file" ? e.path : undefined;
        if (first) inTree.set(first, (inTree.get(first) ?? 0) + 1);
      }
      const thin = !this.hasTree(id);
      for (const e of entries) {
        if (e.type !== "file") continue;
        // A thin version's files are its objects: unique when no tree links to them.
        const st = Deno.lstatSync(thin ? this.objects.path(objectKey(e)) : root + e.path);
        if (st.nlink! - (thin ? 0 : inTree.get(e.path)!) <= 1) bytes += e.size;
      }
    } catch {
      return 0; // a tree missing or being removed
    }
    this.#uniqueCache.set(id, bytes);
    return bytes;
  }

  /** A name (its current version), NAME@ID (that version), a full id or an id prefix (≥ 6). */
  find(ref: string): ImageInfo | undefined {
    const byName = this.db.prepare("SELECT * FROM images WHERE name = ? AND current = 1").get(
      ref,
    ) as Row | undefined;
    if (byName) return toInfo(byName);
    const at = ref.lastIndexOf("@");
    if (at > 0) {
      const version = this.#byId(ref.slice(at + 1));
      if (version?.name === ref.slice(0, at)) return version;
      if (version || this.find(ref.slice(0, at))) return undefined;
    }
    return this.#byId(ref);
  }

  #byId(ref: string): ImageInfo | undefined {
    const r = ref.toLowerCase();
    if (ID.test(r)) return this.#row(r);
    if (!/^[0-9a-f]{6,63}$/.test(r)) return undefined;
    const rows = this.db.prepare("SELECT * FROM images WHERE substr(id, 1, ?) = ? LIMIT 2")
      .all(r.length, r) as unknown as Row[];
    if (rows.length > 1) {
      throw new UserError(`image id prefix ${ref} is ambiguous: give more characters`, 409);
    }
    return rows[0] && toInfo(rows[0]);
  }

  get(ref: string): ImageInfo {
    const info = this.find(ref);
    if (!info) throw notFound(`image ${ref}`);
    return info;
  }

  /** Whether a ref names an image (follows its versions) rather than one version. */
  isName(ref: string): boolean {
    return this.db.prepare("SELECT 1 FROM images WHERE name = ? AND current = 1").get(ref) !==
      undefined;
  }

  /**
   * Imports an archive or directory as NAME: a new image, or the next version of an existing one.
   */
  async import(
    source: string,
    name: string,
    opts: {
      onProgress?: Progress;
      /** Cancels the import (the API aborts it when the client goes away). */
      signal?: AbortSignal;
    } = {},
  ): Promise<Commit> {
    validateName(name);
    if (!source.startsWith("/")) throw new UserError(`import path must be absolute: ${source}`);
    using _name = this.committing(name);
    const work = this.scratch("import");
    try {
      // Owner-only, as every other version's images/<id>/: an untrusted image's set-uid files
      // and device nodes must not be reachable by the server's other users (the id is public).
      await Deno.mkdir(work, { recursive: true, mode: 0o700 });
      const rootfs = join(work, "rootfs");
      // Every progress report is also a cancellation point.
      const onProgress: Progress = (p) => {
        opts.signal?.throwIfAborted();
        opts.onProgress?.(p);
      };
      const unpacked = await unpack(source, rootfs, { onProgress, signal: opts.signal });
      opts.signal?.throwIfAborted();
      const parent = this.isName(name) ? this.get(name).id : null;
      const out = await this.commit(work, name, {
        madeBy: "import",
        command: null,
        parent,
        detail: { source, format: unpacked.format },
      }, {
        cache: unpacked.cache,
        manifest: unpacked.manifest,
        flushing: unpacked.flushing,
        onProgress,
      });
      opts.onProgress?.({ phase: "manifest", done: 1, total: 1 });
      return out;
    } catch (e) {
      if (opts.signal?.aborted) {
        log.info("import cancelled", { source, name });
        throw new UserError(`import of ${source} cancelled`);
      }
      if (isNoSpace(e)) {
        throw new UserError(
          `no space left on device in ${this.data.root} while importing ${source}`,
          500,
        );
      }
      throw e;
    } finally {
      await this.dropScratch(work);
    }
  }

  /** A new scratch directory path under tmp/ (wiped at every start). */
  scratch(kind: string): string {
    return join(this.data.tmp, `${kind}-${crypto.randomUUID()}`);
  }

  /** Removes a scratch directory. A session's overlay is detached lazily: while its last
   *  process (nspawn's) is still going away the work dir can be busy, so a failed removal is
   *  tried again a few times before it is left for the next start's wipe of tmp/. */
  async dropScratch(work: string): Promise<void> {
    for (let attempt = 1;; attempt++) {
      try {
        await Deno.remove(work, { recursive: true });
        return;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return;
        if (attempt >= 10) {
          log.warn("could not remove scratch dir", { dir: work, error: (e as Error).message });
          return;
        }
        await new Promise((r) => setTimeout(r, 100 * attempt));
      }
    }
  }

  /**
   * Commits `work`/rootfs (a complete tree in tmp/) as the newest version of NAME, which then
   * points at it. Ordering keeps it crash safe: manifest written, tree renamed to images/<id>,
   * flushed, then the row (and the name's switch) in one transaction. Same content as an existing
   * version: nothing is stored, that version is returned with existed = true.
   * `meta.parent` is the version the change was made on: when the name moved on meanwhile (a
   * concurrent shell), the commit still lands and `outdated` names the version it did not see.
   */
  async commit(
    work: string,
    name: string,
    meta: { madeBy: MadeBy; command: string | null; parent: string | null; detail?: object },
    opts: {
      cache?: Map<string, CachedHash>;
      onProgress?: Progress;
      /** Inodes of the version the tree is a hard-link copy of: already in the object store. */
      baseInodes?: Set<number>;
      /** The tree's entries when known without a scan (an import its own reader wrote). */
      manifest?: { entries: ManifestEntry[]; bytes: number };
      /** A flush of the tree's file system already under way (else one is started here). */
      flushing?: Promise<void>;
    } = {},
  ): Promise<Commit> {
    validateName(name);
    const started = performance.now();
    const rootfs = join(work, "rootfs");
    // The tree's data goes to disk while it is scanned and put in the object store: the flush
    // before the row (commitManifest) then has only what changed since.
    const flushing = opts.flushing ?? syncfsLater(rootfs);
    const { entries, bytes } = opts.manifest ?? await scanTree(rootfs, opts);
    return await this.commitManifest(work, name, meta, {
      entries,
      bytes,
      text: manifestText(entries),
      started,
      flushing,
      materialize: () => {
        this.objects.ingest(rootfs, entries, opts.baseInodes);
      },
    });
  }

  /**
   * Commits a version whose manifest is known (`entries`, its `text`): `materialize` makes
   * `work`/rootfs match it, with its files in the object store (not called when that content is
   * already stored). Same ordering and crash safety as commit().
   */
  async commitManifest(
    work: string,
    name: string,
    meta: { madeBy: MadeBy; command: string | null; parent: string | null; detail?: object },
    m: {
      entries: ManifestEntry[];
      bytes: number;
      text: string;
      started: number;
      materialize: () => void | Promise<void>;
      /** A flush of the tree's new files already under way (awaited before `materialize`). */
      flushing?: Promise<void>;
    },
  ): Promise<Commit> {
    validateName(name);
    const { entries, bytes, started } = m;
    const text = new TextEncoder().encode(m.text);
    const id = createHash("sha256").update(text).digest("hex");
    const existing = this.#row(id);
    if (existing) {
      await m.flushing?.catch(() => {}); // nothing of this tree is kept
      log.info("commit: same content already in the store", { name, id, as: existing.name });
      return { ...existing, existed: true, previous: null, outdated: null };
    }
    // The tree's files on the disk before any becomes an object: an object is trusted by its name
    // (a later commit of the same content links to it instead of storing its own file), and a
    // link reaches the disk with any journal commit, before the data of a file written since
    // (ext4 allocates its blocks at writeback): a power cut would leave an empty object.
    await m.flushing?.catch((e) => {
      throw new UserError(
        `the new tree could not be written to the disk (${
          (e as Error).message
        }): nothing committed`,
        500,
      );
    });
    try {
      await m.materialize();
      await Deno.writeFile(join(work, "manifest"), text);
      await Deno.writeFile(join(work, DISPOSABLE), new Uint8Array());
    } catch (e) {
      this.#dropNewObjects(join(work, "rootfs"), entries);
      throw e;
    }
    const k = detectKernel(entries);
    let renamed = false;
    try {
      await Deno.rename(work, this.data.image(id));
      renamed = true;
    } catch (e) {
      // Another commit of the same content won the rename; its row is (or will be) there.
      if (!(await Deno.stat(this.data.manifest(id)).catch(() => null))) throw e;
    }
    const createdAt = new Date().toISOString();
    let previous: string | null = null;
    try {
      // The row promises a complete tree: flush it first (a power cut must not leave a row over
      // half-written files; one syncfs instead of an fsync per file).
      syncfs(this.data.image(id));
      durableTx(this.db, () => {
        previous = (this.db.prepare("SELECT id FROM images WHERE name = ? AND current = 1")
          .get(name) as { id: string } | undefined)?.id ?? null;
        this.db.prepare("UPDATE images SET current = 0 WHERE name = ? AND current = 1").run(name);
        this.db.prepare(
          `INSERT INTO images (id, name, current, created_at, size, files, kernel, initrd,
             kernel_version, bootable, reason, made_by, command, parent)
           VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(
          id,
          name,
          createdAt,
          bytes,
          entries.length,
          k.kernel,
          k.initrd,
          k.kernelVersion,
          k.bootable ? 1 : 0,
          k.reason,
          meta.madeBy,
          meta.command,
          meta.parent,
        );
        recordEvent(this.db, null, `image.${meta.madeBy}`, {
          id,
          name,
          parent: meta.parent,
          previous,
          command: meta.command ?? undefined,
          ...meta.detail,
          files: entries.length,
          size: bytes,
          bootable: k.bootable,
          seconds: Math.round(performance.now() - started) / 1000,
        });
      });
    } catch (e) {
      // Without its row the tree must not stay (reconcile would remove it at the next start),
      // nor its new objects: the disk full under the database would stay full.
      if (renamed && !this.#row(id)) {
        const trash = join(this.data.tmp, `rm-${crypto.randomUUID()}`);
        try {
          Deno.renameSync(this.data.image(id), trash);
          this.#dropNewObjects(join(trash, "rootfs"), entries);
          await this.dropScratch(trash);
        } catch (err) { // the commit's own error is what to say; the next start removes it
          log.warn("could not remove a failed commit's tree", { error: (err as Error).message });
        }
      }
      const same = this.#row(id);
      if (same) return { ...same, existed: true, previous: null, outdated: null };
      throw e;
    }
    // (Left by a crash now, it stays harmless: the directory has its row.)
    await Deno.remove(join(this.data.image(id), DISPOSABLE)).catch(() => {});
    log.info("committed image version", {
      id: id.slice(0, 12),
      name,
      madeBy: meta.madeBy,
      files: entries.length,
      bytes,
      kernel: k.kernel,
      reason: k.reason ?? undefined,
    });
    this.#changed();
    // The previous version's tree goes once nothing needs it (in the background: not in the
    // commit's time; its nodes move to this version in publish(), which runs first).
    if (previous) this.schedulePrune();
    const outdated = meta.parent && previous && previous !== meta.parent ? previous : null;
    return { ...this.#row(id)!, existed: false, previous, outdated };
  }

  // ---- thin versions: a version's tree is kept only while something needs it ----
  //
  // As OSTree checks out only what is deployed, a version keeps its manifest and its objects
  // for ever (until removed), but its hard-link tree (images/<id>/rootfs: ~1 % of the image in
  // directory blocks alone on ext4) only while it is needed: the name's current version, a
  // node's set version (deployed on the name or pinned to the id), the version a node booted
  // last (its running system mounts that export until it reboots onto another one), an open
  // session's base, or a rebuild under way (hold()). Other trees are removed (pruneTrees, run
  // in the background after a commit, a rollback, a deploy, a boot, and by `image gc`) once
  // every file of the tree is checked to be in the object store; ensureTree writes a tree
  // again from the manifest and the objects (the code that writes a session's tree ahead) in
  // tmp/, flushed, then renamed into place: a crash leaves no half tree.

  /** Whether the version's tree is on disk. */
  hasTree(id: string): boolean {
    return existsSync(this.data.rootfs(id));
  }

  /** A thin version: its manifest without its tree (ensureTree writes it). A row with neither is
   *  broken, not thin (reconcile marks it not bootable). */
  isThin(id: string): boolean {
    return !this.hasTree(id) && existsSync(this.data.manifest(id));
  }

  #holds = new Map<string, number>();

  /** Keeps the version's tree (pruneTrees leaves it) until the returned function is called. */
  hold(id: string): () => void {
    this.#holds.set(id, (this.#holds.get(id) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = this.#holds.get(id)! - 1;
      if (n) this.#holds.set(id, n);
      else this.#holds.delete(id);
    };
  }

  /** The versions whose trees must stay on disk (see above). */
  neededTrees(): Set<string> {
    const ids = (this.db.prepare(
      `SELECT id FROM images WHERE current = 1
       UNION SELECT image_id FROM nodes WHERE image_id IS NOT NULL
       UNION SELECT image_id FROM booted_images`,
    ).all() as { id: string }[]).map((r) => r.id);
    const out = new Set(ids);
    for (const s of this.sessions.list()) if (s.base) out.add(s.base.id);
    for (const id of this.#holds.keys()) out.add(id);
    return out;
  }

  #building = new Map<string, Promise<void>>();

  /**
   * Makes sure the version's tree is on disk: a thin version's is written again from its
   * manifest, each file a link to its object (buildSteps, in slices), in tmp/, flushed, then
   * renamed to images/<id>/rootfs. Concurrent calls share one build.
   */
  async ensureTree(id: string): Promise<void> {
    if (!this.isThin(id)) return; // a tree already, or nothing to write it from

    const running = this.#building.get(id);
    if (running) return await running;
    const release = this.hold(id);
    const build = (async () => {
      const started = performance.now();
      const work = this.scratch("tree");
      try {
        await Deno.mkdir(work, { recursive: true, mode: 0o700 });
        const base = indexBase(await Deno.readTextFile(this.data.manifest(id)));
        const d = baseDerived(base);
        // No base tree to link from: every file is a link to its object.
        const steps = buildSteps(d, null, join(work, "rootfs"), this.objects);
        for (let i = 0; !steps.next().done; i++) {
          if (i % 4 === 3) await new Promise((r) => setTimeout(r, 0));
        }
        // Objects are trusted by their names: one cut short on the disk would be exported as
        // the version's file. Its size is checked (an lstat; the content is not read again).
        for (const e of d.entries) {
          if (e.type !== "file") continue;
          const size = Deno.lstatSync(join(work, "rootfs") + e.path).size;
          if (size !== e.size) {
            throw new Error(
              `the object of ${e.path} (${this.objects.path(objectKey(e))}) is damaged: ` +
                `${size} bytes, ${e.size} expected`,
            );
          }
        }
        syncfs(work);
        await Deno.rename(join(work, "rootfs"), this.data.rootfs(id));
        log.info("rebuilt the tree of a thin version", {
          id: id.slice(0, 12),
          files: d.entries.length,
          ms: Math.round(performance.now() - started),
        });
        this.#changed();
      } catch (e) {
        if (!this.hasTree(id)) {
          throw new UserError(
            `cannot rebuild the tree of image version ${id.slice(0, 12)} from its manifest and ` +
              `objects: ${(e as Error).message}`,
            500,
          );
        }
      } finally {
        release();
        this.#building.delete(id);
        await this.dropScratch(work);
      }
    })();
    this.#building.set(id, build);
    await build;
  }

  /**
   * Links each regular file of the version's tree into the object store when its object is
   * missing; false when one cannot be (too many links): that tree must stay.
   */
  async #objectsComplete(id: string): Promise<boolean> {
    const root = this.data.rootfs(id);
    const text = await Deno.readTextFile(this.data.manifest(id)).catch(() => null);
    if (text === null) return false; // no manifest to write it again from: the tree stays
    const seen = new Set<string>();
    let n = 0;
    for (const e of manifestLines(text)) {
      if (e.type !== "file") continue;
      if (++n % SLICE === 0) await new Promise((r) => setTimeout(r, 0));
      const key = objectKey(e);
      if (seen.has(key)) continue;
      seen.add(key);
      const obj = this.objects.path(key);
      for (let attempt = 0;; attempt++) {
        try {
          Deno.linkSync(root + e.path, obj);
          break;
        } catch (err) {
          const c = (err as { code?: string }).code;
          if (c === "EEXIST") break;
          if (c === "ENOENT" && attempt === 0 && existsSync(root + e.path)) {
            Deno.mkdirSync(join(obj, ".."), { recursive: true, mode: 0o700 });
            continue;
          }
          return false;
        }
      }
    }
    return true;
  }

  #pruning: Promise<string[]> = Promise.resolve([]);

  /**
   * Removes the trees of the versions nothing needs (neededTrees) once their objects are
   * checked complete; serialised. Returns the versions made thin.
   */
  pruneTrees(): Promise<string[]> {
    const run = async () => {
      const thinned: string[] = [];
      await Deno.mkdir(this.data.tmp, { recursive: true });
      for (const v of this.list()) {
        if (!this.hasTree(v.id) || this.neededTrees().has(v.id)) continue;
        if (!(await this.#objectsComplete(v.id))) {
          // Removed meanwhile (image rm, gc): its files are gone, not missing from the store.
          if (this.#row(v.id) && this.hasTree(v.id)) {
            log.warn("keeping a version's tree: a file of it is not in the object store", {
              id: v.id.slice(0, 12),
            });
          }
          continue;
        }
        // Needed meanwhile (a deploy, a session, a rebuild), or gone: leave it. Nothing awaited
        // from this check to the rename: a rollback, deploy or session open answered in between
        // found the tree there (ensureTree wrote nothing) and was left with no tree under it.
        if (!this.#row(v.id) || this.neededTrees().has(v.id)) continue;
        const trash = join(this.data.tmp, `rm-${crypto.randomUUID()}`);
        try {
          Deno.renameSync(this.data.rootfs(v.id), trash);
        } catch (e) {
          if (e instanceof Deno.errors.NotFound) continue;
          throw e;
        }
        thinned.push(v.id);
        this.#changed();
        await Deno.remove(trash, { recursive: true }).catch((e) =>
          log.warn("could not delete a thin version's tree", { dir: trash, error: e.message })
        );
      }
      if (thinned.length) {
        log.info("removed the trees of versions nothing uses (thin)", {
          versions: thinned.map((id) => id.slice(0, 12)),
        });
      }
      return thinned;
    };
    this.#pruning = this.#pruning.catch(() => []).then(run);
    return this.#pruning;
  }

  /** Remove unused trees by itself (after commits, rollbacks, deploys, boots); off: only
   *  pruneTrees() and `image gc` do (tests that look at an old version's tree). */
  autoPrune = true;

  /** Settles when no tree is being removed or rebuilt (tests, shutdown). */
  async idle(): Promise<void> {
    // Until nothing new was started meanwhile: a rebuild's end schedules a prune, and a prune
    // may be queued behind the one awaited.
    for (;;) {
      const pruning = this.#pruning;
      await pruning.catch(() => {});
      await Promise.allSettled([...this.#building.values()]);
      if (pruning === this.#pruning && this.#building.size === 0) return;
    }
  }

  /** pruneTrees in the background (its errors logged), when autoPrune is on. */
  schedulePrune(): void {
    if (!this.autoPrune) return;
    this.pruneTrees().catch((e) =>
      log.warn("could not remove unused version trees", { error: (e as Error).message })
    );
  }

  /** Object keys of the versions without a tree: `gc` keeps them (no tree links to them). Those
   *  of every directory of images/, with a row or not: one a start kept without its row (a
   *  database restored from before it was made) is only its manifest and these objects, and gc
   *  removed them, so that what the start kept was lost all the same. */
  #thinObjects(): Set<string> {
    const keys = new Set<string>();
    let ids: string[];
    try {
      ids = [...Deno.readDirSync(this.data.images)].map((e) => e.name);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return keys;
      throw e;
    }
    for (const id of ids) {
      if (this.hasTree(id)) continue;
      try {
        for (const e of manifestLines(Deno.readTextFileSync(this.data.manifest(id)))) {
          if (e.type === "file") keys.add(objectKey(e));
        }
      } catch (e) {
        // (a file in images/ is no version: NotADirectory)
        if (!(e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory)) throw e;
      }
    }
    return keys;
  }

  /** Points NAME at one of its versions (default: the one before the current one). */
  async rollback(ref: string, version?: string): Promise<{ image: ImageInfo; previous: string }> {
    const cur = this.get(ref);
    const name = cur.name;
    const versions = this.history(name);
    let target: ImageInfo | undefined;
    if (version) {
      target = this.#byId(
        version.includes("@") ? version.slice(version.lastIndexOf("@") + 1) : version,
      );
      if (!target || target.name !== name) throw notFound(`version ${version} of image ${name}`);
    } else {
      const head = this.get(name);
      const i = versions.findIndex((v) => v.id === head.id);
      target = versions[i - 1];
      if (!target) {
        throw new UserError(`image ${name} has no version before ${head.id.slice(0, 12)}`);
      }
    }
    const previous = this.get(name).id;
    if (target.id !== previous) {
      // A thin version's tree is written again before the name points at it (exports, boots).
      const release = this.hold(target.id);
      try {
        await this.ensureTree(target.id);
      } finally {
        release();
      }
      const now = this.get(name).id;
      // Another rollback to the same version landed meanwhile: the name is where it was asked
      // to be, and this one is done too.
      if (now === target.id) return { image: this.#row(target.id)!, previous };
      if (now !== previous) {
        throw conflict(`image ${name} changed during the rollback: try again`);
      }
      durableTx(this.db, () => {
        this.db.prepare("UPDATE images SET current = 0 WHERE name = ? AND current = 1").run(name);
        const set = this.db.prepare("UPDATE images SET current = 1 WHERE id = ? AND name = ?")
          .run(target!.id, name);
        // Removed or renamed meanwhile: the name must not be left without a current version.
        if (set.changes !== 1) {
          throw conflict(`image ${name} changed during the rollback: try again`);
        }
        // In the change's transaction: a failed insert (the disk full) must not report a
        // rollback that was made as failed.
        recordEvent(this.db, null, "image.rollback", { name, id: target!.id, previous });
      });
      this.#changed();
      this.schedulePrune();
    }
    return { image: this.#row(target.id)!, previous };
  }

  /** Files added, removed and changed from version a to b, from their manifests. */
  diff(a: string, b: string): { added: string[]; removed: string[]; changed: string[] } {
    const read = (ref: string) =>
      manifestLines(Deno.readTextFileSync(this.data.manifest(this.get(ref).id)));
    const out = { added: [] as string[], removed: [] as string[], changed: [] as string[] };
    for (const c of diffManifests(read(a), read(b))) {
      (c.old ? c.new ? out.changed : out.removed : out.added).push(c.path);
    }
    return out;
  }

  /**
   * Frees space: with `keep`, removes the versions of each name older than its `keep` newest,
   * never the current one, never one a node is set to boot or booted last or a session is open
   * on; then the objects no
   * version links to any more. Removed trees are deleted before the objects are looked at.
   */
  async gc(keep?: number): Promise<{ versions: string[]; objects: number; bytes: number }> {
    const versions: string[] = [];
    if (keep !== undefined) {
      for (const image of this.names()) {
        const old = this.history(image.name).reverse().slice(keep);
        for (const v of old) {
          // What must keep its tree keeps its row: versions nodes are set to boot or booted
          // last, an open session's base (its overlay's lower layer), one held (asked each time:
          // a session may open while trees are deleted).
          if (v.current || this.neededTrees().has(v.id)) continue;
          this.#rowsGoing([v.id], () =>
            durableTx(this.db, () => {
              this.db.prepare("DELETE FROM images WHERE id = ?").run(v.id);
              recordEvent(this.db, null, "image.rm", { id: v.id, name: v.name, by: "gc" });
            }));
          // Moved away in the turn its row went: an import or commit of the same content
          // answered in between renamed nothing (the directory was there), wrote its row, and
          // lost its tree and manifest to this rename.
          const trash = join(this.data.tmp, `rm-${crypto.randomUUID()}`);
          try {
            Deno.mkdirSync(this.data.tmp, { recursive: true });
            Deno.renameSync(this.data.image(v.id), trash);
          } catch { /* gone already (a start removes a directory without a row) */ }
          await Deno.remove(trash, { recursive: true }).catch(() => {});
          versions.push(v.id);
        }
      }
      if (versions.length) this.#changed();
    }
    await this.pruneTrees();
    const { objects, bytes } = this.objects.gc(this.#thinObjects());
    recordEvent(this.db, null, "image.gc", { versions: versions.length, objects, bytes });
    return { versions, objects, bytes };
  }

  /** Names a commit is under way to (an import, a node save, a session's open or commit). */
  #committing = new Map<string, number>();

  /** Marks `name` as the name a commit under way lands on, until disposed: `rename` refuses it. */
  committing(name: string): Disposable {
    this.#committing.set(name, (this.#committing.get(name) ?? 0) + 1);
    let done = false;
    return {
      [Symbol.dispose]: () => {
        if (done) return;
        done = true;
        const n = this.#committing.get(name)! - 1;
        if (n) this.#committing.set(name, n);
        else this.#committing.delete(name);
      },
    };
  }

  /**
   * Renames an image: every version moves to the new name. Refused while a session is open or a
   * commit is under way on either name: the commit lands on the name it was started on, so it
   * became an image of its own under the old name (its followers, now on the new one, never got
   * it), or a version of the image renamed onto its name.
   */
  rename(ref: string, newName: string): ImageInfo {
    const info = this.get(ref);
    validateName(newName);
    if (newName === info.name) return info;
    for (const name of [info.name, newName]) {
      if (this.#committing.has(name) || this.sessions.list().some((s) => s.name === name)) {
        throw conflict(`an image session or commit on ${name} is under way: end it first`);
      }
    }
    if (this.isName(newName)) throw conflict(`image name ${newName} is already taken`);
    durableTx(this.db, () => {
      this.db.prepare("UPDATE images SET name = ? WHERE name = ?").run(newName, info.name);
      recordEvent(this.db, null, "image.rename", { id: info.id, from: info.name, to: newName });
    });
    this.#changed();
    return { ...info, name: newName };
  }

  /**
   * Removes an image with every version (ref: its name), or one version (NAME@ID or an id; the
   * current one only when it is the last). Refused while a node is set to boot or still runs a
   * version it removes, or an image session is open on one.
   */
  remove(ref: string): ImageInfo[] {
    const info = this.get(ref);
    const all = this.isName(ref) ? this.history(info.name) : [info];
    if (all.length === 1 && info.current && this.history(info.name).length > 1) {
      throw conflict(
        `${info.name}@${info.id.slice(0, 12)} is the current version of ${info.name}: ` +
          `roll back first (netroot image rollback ${info.name}), or remove the whole image`,
      );
    }
    const ids = all.map((v) => v.id);
    const users = (this.db.prepare(
      `SELECT name FROM nodes WHERE image_id IN (${ids.map(() => "?").join(",")}) ORDER BY name`,
    ).all(...ids) as { name: string }[]).map((r) => r.name);
    if (users.length) {
      throw conflict(
        `image ${
          all.length === 1 && !info.current ? `${info.name}@${info.id.slice(0, 12)}` : info.name
        } is booted by ${users.length === 1 ? "node" : "nodes"} ${users.join(", ")}; boot ${
          users.length === 1 ? "it" : "them"
        } on another image first`,
      );
    }
    // A node set to boot another version may still run this one (its last boot: its root is
    // this export until it reboots), and an open session's overlay has it as its lower layer:
    // removing the tree under either pulls their files away.
    const running = (this.db.prepare(
      `SELECT DISTINCT n.name FROM nodes n JOIN booted_images b ON b.mac = n.mac
       WHERE n.state != 'off' AND b.image_id IN (${ids.map(() => "?").join(",")})
       ORDER BY n.name`,
    ).all(...ids) as { name: string }[]).map((r) => r.name);
    const shown = all.length === 1 && !info.current
      ? `${info.name}@${info.id.slice(0, 12)}`
      : info.name;
    if (running.length) {
      throw conflict(
        `image ${shown} is still running on ${running.length === 1 ? "node" : "nodes"} ` +
          `${running.join(", ")} (booted before the name moved on): reboot ${
            running.length === 1 ? "it" : "them"
          } first`,
      );
    }
    if (this.sessions.list().some((s) => s.base && ids.includes(s.base.id))) {
      throw conflict(`image ${shown} has an open image session (shell, cp, build): end it first`);
    }
    // A rollback, deploy, session open or commit, node save or `image cp` out under way holds
    // its version (its tree being written or read, its manifest applied onto): removed under it,
    // a rollback pointed the name at no version at all, a commit failed and lost its session.
    if (ids.some((id) => this.#holds.has(id))) {
      throw conflict(
        `image ${shown} is in use (a rollback, deploy, commit, node save or image cp under way): ` +
          "try again",
      );
    }
    this.#rowsGoing(ids, () =>
      durableTx(this.db, () => {
        for (const v of all) {
          this.db.prepare("DELETE FROM images WHERE id = ?").run(v.id);
          recordEvent(this.db, null, "image.rm", { id: v.id, name: v.name });
        }
      }));
    for (const v of all) this.#discard(this.data.image(v.id));
    this.#changed();
    return all;
  }

  /**
   * A commit that failed before its tree was kept: the tree goes now, and with it the objects that
   * only it linked to (its new files, put in the store by `materialize`). Left for `image gc`, a
   * commit that failed for lack of space (a build step that filled the disk, then exited 0) kept
   * the disk full: every later import, cp or build failed too. gc's own rule, on these entries:
   * no link left but the object's, and no thin version's manifest names it.
   */
  #dropNewObjects(tree: string, entries: ManifestEntry[]): void {
    const gone = (e: unknown) => e instanceof Deno.errors.NotFound;
    try {
      Deno.removeSync(tree, { recursive: true });
      const keep = this.#thinObjects();
      for (const e of entries) {
        if (e.type !== "file" || keep.has(objectKey(e))) continue;
        const obj = this.objects.path(objectKey(e));
        try {
          if (Deno.lstatSync(obj).nlink === 1) Deno.removeSync(obj);
        } catch (err) {
          if (!gone(err)) throw err; // never stored (too many links: the tree had its own copy)
        }
      }
    } catch (e) {
      if (!gone(e)) {
        log.warn("could not remove a failed commit's objects", { error: (e as Error).message });
      }
    }
  }

  /** Runs `deleteRows` (the rows of `ids`) with their directories marked DISPOSABLE first, on the
   *  disk: a crash after the rows went leaves the directories for the next start to remove. The
   *  marks go again when the rows stay (the transaction failed). */
  #rowsGoing(ids: string[], deleteRows: () => void): void {
    const marked: string[] = [];
    for (const id of ids) {
      try {
        Deno.writeFileSync(join(this.data.image(id), DISPOSABLE), new Uint8Array());
        fsyncDir(this.data.image(id));
        marked.push(id);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) continue;
        // Unmarked, a crash before the directory goes leaves it kept (named in the log), not
        // lost: no reason to refuse. Refused, `image rm` and `gc` on a disk out of inodes (the
        // mark needs one) failed with ENOSPC, the way to make room shut.
        log.warn("removing an image version without its disposable mark", {
          dir: this.data.image(id),
          error: (e as Error).message,
        });
      }
    }
    try {
      deleteRows();
    } catch (e) {
      for (const id of marked) {
        try {
          Deno.removeSync(join(this.data.image(id), DISPOSABLE));
        } catch { /* its row says it stays either way */ }
      }
      throw e;
    }
  }

  /** Moves a tree into tmp/ (instant, atomic) and deletes it in the background; a crash midway
   *  leaves it in tmp/, which the next start wipes. */
  #discard(dir: string): void {
    const trash = join(this.data.tmp, `rm-${crypto.randomUUID()}`);
    try {
      Deno.mkdirSync(this.data.tmp, { recursive: true });
      Deno.renameSync(dir, trash);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    Deno.remove(trash, { recursive: true }).catch((e) =>
      log.warn("could not delete removed image tree", { dir: trash, error: e.message })
    );
  }

  /**
   * At start: wipes tmp/ (interrupted imports and removals) and removes image directories without
   * a row that a commit left (killed between rename and insert: DISPOSABLE); others without a row
   * (a database lost or replaced) are kept, with an error. A row whose tree is gone (someone deleted
   * it by hand) is kept — nodes may reference it — but marked not bootable with the reason, so
   * `image show` says what to do. Returns how many things were fixed.
   */
  async reconcile(): Promise<number> {
    let fixed = 0;
    await Deno.mkdir(this.data.tmp, { recursive: true });
    // Image sessions of a server that died: their overlays go before their directories.
    fixed += detachMountsUnder(this.data.tmp);
    for await (const e of Deno.readDir(this.data.tmp)) {
      // Not fatal: a tool orphaned by a killed server may still be writing there for a moment.
      await Deno.remove(join(this.data.tmp, e.name), { recursive: true }).then(
        () => fixed++,
        (err) => {
          if (!(err instanceof Deno.errors.NotFound)) {
            log.warn("could not clean tmp/ entry; retried at next start", {
              entry: e.name,
              error: err.message,
            });
          }
        },
      );
    }
    await Deno.mkdir(this.data.images, { recursive: true });
    for await (const e of Deno.readDir(this.data.images)) {
      if (this.#row(e.name)) {
        // A mark a crash left beside a row: without it, this directory stays should the row go.
        await Deno.remove(join(this.data.images, e.name, DISPOSABLE)).catch(() => {});
        continue;
      }
      if (!existsSync(join(this.data.images, e.name, DISPOSABLE))) {
        log.error(
          "image directory without a database row, kept: was the database lost or replaced by " +
            "an older one? (netroot restore puts a backup back; remove the directory if unwanted)",
          { dir: this.data.image(e.name) },
        );
        continue;
      }
      log.warn("removing image directory without a database row (interrupted import)", {
        dir: e.name,
      });
      await Deno.remove(join(this.data.images, e.name), { recursive: true });
      fixed++;
    }
    for (const img of this.list()) {
      // A version without its tree is thin (pruneTrees): its manifest is what must be there.
      const ok = await Deno.lstat(this.data.manifest(img.id)).then(() => true, () => false);
      if (ok) continue;
      const reason = `image tree missing from the data dir (${this.data.image(img.id)}): ` +
        "remove the image and import it again";
      if (img.reason === reason) continue;
      log.error("image tree missing; marking the image not bootable", {
        id: img.id,
        name: img.name,
      });
      this.db.prepare("UPDATE images SET bootable = 0, reason = ? WHERE id = ?").run(
        reason,
        img.id,
      );
      fixed++;
    }
    return fixed;
  }
}
