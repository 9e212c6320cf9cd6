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
import { syncfs } from "../linux/fsops.ts";
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { DataDir } from "../datadir.ts";
import type { Db } from "../db.ts";
import { conflict, notFound, UserError } from "../errors.ts";
import { recordEvent } from "../events.ts";
import { logger } from "../log.ts";
import { manifestText } from "../../contract/manifest.ts";
import { detectKernel } from "./kernel.ts";
import { unpack } from "./unpack.ts";
import { type Progress, scanTree } from "./walk.ts";

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

function isNoSpace(e: unknown): boolean {
  return /no space left on device|os error 28/i.test((e as Error)?.message ?? "");
}

export class ImageStore {
  /** Set by openContext; receives `new Event("images")` after import/rm/rename. */
  changes?: EventTarget;
  #importing = new Set<string>();

  constructor(readonly data: DataDir, readonly db: Db) {}

  #row(id: string): ImageInfo | undefined {
    const r = this.db.prepare("SELECT * FROM images WHERE id = ?").get(id) as Row | undefined;
    return r && toInfo(r);
  }

  #changed(): void {
    this.changes?.dispatchEvent(new Event("images"));
  }

  /** How many images there are (the API's health answer). */
  count(): number {
    return (this.db.prepare("SELECT count(*) AS n FROM images").get() as { n: number }).n;
  }

  list(): ImageInfo[] {
    return (this.db.prepare("SELECT * FROM images ORDER BY name").all() as unknown as Row[]).map(
      toInfo,
    );
  }

  find(ref: string): ImageInfo | undefined {
    const byName = this.db.prepare("SELECT * FROM images WHERE name = ?").get(ref) as
      | Row
      | undefined;
    if (byName) return toInfo(byName);
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

  async import(
    source: string,
    name: string,
    opts: {
      onProgress?: Progress;
      /** Cancels the import (the API aborts it when the client goes away). */
      signal?: AbortSignal;
    } = {},
  ): Promise<ImageInfo & { existed: boolean }> {
    validateName(name);
    if (!source.startsWith("/")) throw new UserError(`import path must be absolute: ${source}`);
    const taken = this.db.prepare("SELECT id FROM images WHERE name = ?").get(name) as
      | { id: string }
      | undefined;
    if (taken) {
      throw conflict(
        `image name ${name} is already taken (image ${taken.id.slice(0, 12)}); ` +
          "choose another name, or rename or remove that image first",
      );
    }
    if (this.#importing.has(name)) throw conflict(`an import named ${name} is already running`);
    this.#importing.add(name);
    const work = join(this.data.tmp, `import-${crypto.randomUUID()}`);
    const started = performance.now();
    try {
      await Deno.mkdir(work, { recursive: true });
      const rootfs = join(work, "rootfs");
      // Every progress report is also a cancellation point.
      const onProgress: Progress = (p) => {
        opts.signal?.throwIfAborted();
        opts.onProgress?.(p);
      };
      const unpacked = await unpack(source, rootfs, { onProgress, signal: opts.signal });
      const { entries, bytes } = await scanTree(rootfs, { cache: unpacked.cache, onProgress });
      opts.signal?.throwIfAborted();
      const text = new TextEncoder().encode(manifestText(entries));
      const id = createHash("sha256").update(text).digest("hex");
      await Deno.writeFile(join(work, "manifest"), text);
      const k = detectKernel(entries);

      const existing = this.#row(id);
      if (existing) {
        log.info("import: same content already in the store", { source, id, as: existing.name });
        return { ...existing, existed: true };
      }
      let renamed = false;
      try {
        await Deno.rename(work, this.data.image(id));
        renamed = true;
      } catch (e) {
        // Another import of the same content won the rename; its row is (or will be) there.
        if (!(await Deno.stat(this.data.manifest(id)).catch(() => null))) throw e;
      }
      // The row promises a complete tree: flush it first (a power cut must not leave a row over
      // half-written files; one syncfs instead of an fsync per file).
      syncfs(this.data.image(id));
      const createdAt = new Date().toISOString();
      try {
        this.db.prepare(
          `INSERT INTO images (id, name, created_at, size, files, kernel, initrd, kernel_version,
             bootable, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING`,
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
        );
      } catch (e) {
        // Without its row the tree must not stay (reconcile would remove it at the next start).
        if (renamed) this.#discard(this.data.image(id));
        if (/constraint/i.test((e as Error).message)) {
          throw conflict(`image name ${name} was taken while importing`);
        }
        throw e;
      }
      const info = this.#row(id)!;
      const existed = info.createdAt !== createdAt;
      if (!existed) {
        recordEvent(this.db, null, "image.import", {
          id,
          name,
          source,
          format: unpacked.format,
          files: entries.length,
          size: bytes,
          bootable: k.bootable,
          seconds: Math.round(performance.now() - started) / 1000,
        });
        log.info("imported image", {
          id: id.slice(0, 12),
          name,
          format: unpacked.format,
          files: entries.length,
          bytes,
          kernel: k.kernel,
          reason: k.reason ?? undefined,
        });
        this.#changed();
      }
      opts.onProgress?.({ phase: "manifest", done: 1, total: 1 });
      return { ...info, existed };
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
      this.#importing.delete(name);
      await Deno.remove(work, { recursive: true }).catch((e) => {
        if (!(e instanceof Deno.errors.NotFound)) {
          log.warn("could not remove import scratch dir", { dir: work, error: e.message });
        }
      });
    }
  }

  rename(ref: string, newName: string): ImageInfo {
    const info = this.get(ref);
    validateName(newName);
    if (newName === info.name) return info;
    try {
      this.db.prepare("UPDATE images SET name = ? WHERE id = ?").run(newName, info.id);
    } catch (e) {
      if (/constraint/i.test((e as Error).message)) {
        throw conflict(`image name ${newName} is already taken`);
      }
      throw e;
    }
    recordEvent(this.db, null, "image.rename", { id: info.id, from: info.name, to: newName });
    this.#changed();
    return { ...info, name: newName };
  }

  remove(ref: string): void {
    const info = this.get(ref);
    const users = (this.db.prepare("SELECT name FROM nodes WHERE image_id = ? ORDER BY name")
      .all(info.id) as { name: string }[]).map((r) => r.name);
    if (users.length) {
      throw conflict(
        `image ${info.name} is booted by ${users.length === 1 ? "node" : "nodes"} ${
          users.join(", ")
        }; boot ${users.length === 1 ? "it" : "them"} on another image first`,
      );
    }
    this.db.prepare("DELETE FROM images WHERE id = ?").run(info.id);
    recordEvent(this.db, null, "image.rm", { id: info.id, name: info.name });
    this.#discard(this.data.image(info.id));
    this.#changed();
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
   * a row (an import killed between rename and insert). A row whose tree is gone (someone deleted
   * it by hand) is kept — nodes may reference it — but marked not bootable with the reason, so
   * `image show` says what to do. Returns how many things were fixed.
   */
  async reconcile(): Promise<number> {
    let fixed = 0;
    await Deno.mkdir(this.data.tmp, { recursive: true });
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
      if (this.#row(e.name)) continue;
      log.warn("removing image directory without a database row (interrupted import)", {
        dir: e.name,
      });
      await Deno.remove(join(this.data.images, e.name), { recursive: true });
      fixed++;
    }
    for (const img of this.list()) {
      const ok = await Promise.all(
        [this.data.manifest(img.id), this.data.rootfs(img.id)].map((p) =>
          Deno.lstat(p).then(() => true, () => false)
        ),
      );
      if (ok.every((x) => x)) continue;
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
