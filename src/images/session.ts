// Changing an image: a session is an overlayfs mount with the version's tree as its read-only
// lower layer and a private upper in tmp/, so the image itself never changes. `image shell` runs
// systemd-nspawn on the merged tree, `image cp` and `image build` write into it. Commit turns the
// upper into a new version (a hard-link copy of the base tree with the upper applied: time and
// space in proportion to the change, the files shared through the object store); discard drops it.
// A server restart drops every open session (tmp/ is wiped, its mounts detached first).
import { join } from "node:path";
import { UserError } from "../errors.ts";
import { MNT_DETACH, mount, umount } from "../linux/mount.ts";
import { logger } from "../log.ts";
import { manifestLines } from "../../contract/manifest.ts";
import type { Commit, ImageStore, MadeBy } from "./store.ts";
import { applyUpper } from "./upper.ts";
import type { CachedHash } from "./walk.ts";

const log = logger("images");

export interface Session {
  id: string;
  /** The version it was opened on (null: an empty tree, FROM scratch). */
  base: { id: string; name: string } | null;
  /** The name a commit goes to (the base's, or --new NAME). */
  name: string;
  /** The merged tree (root of the container). */
  merged: string;
  dir: string;
}

/** Mount options that keep the upper self-contained: renamed directories are copied up whole
 *  (no redirect), files copied up with their content (no metacopy), no inode index. */
const OVERLAY_OPTS = "redirect_dir=off,metacopy=off,index=off,xino=off";

export class Sessions {
  #open = new Map<string, Session>();

  constructor(readonly images: ImageStore) {}

  list(): Session[] {
    return [...this.#open.values()];
  }

  get(id: string): Session {
    const s = this.#open.get(id);
    if (!s) throw new UserError(`image session ${id} not found (the server restarted?)`, 404);
    return s;
  }

  /** Opens a session on a version (null: an empty tree); commits go to `name` (default: the
   *  version's own name). */
  async open(ref: string | null, name?: string): Promise<Session> {
    const base = ref === null ? null : this.images.get(ref);
    if (!base && !name) throw new UserError("a build FROM scratch needs a name");
    const id = crypto.randomUUID();
    const dir = join(this.images.data.tmp, `session-${id}`);
    const s: Session = {
      id,
      base: base && { id: base.id, name: base.name },
      name: name ?? base!.name,
      merged: join(dir, "merged"),
      dir,
    };
    const lower = base ? this.images.data.rootfs(base.id) : join(dir, "empty");
    for (const d of ["upper", "work", "merged", ...(base ? [] : ["empty"])]) {
      await Deno.mkdir(join(dir, d), { recursive: true, mode: 0o700 });
    }
    // The merged root is the image's root: its mode, not our scratch dir's.
    const root = base ? (await Deno.lstat(lower)).mode! & 0o7777 : 0o755;
    await Deno.chmod(join(dir, "upper"), root);
    if (/[,:\\]/.test(lower + dir)) {
      throw new UserError(`the data dir path ${this.images.data.root} holds , : or \\`);
    }
    try {
      mount(
        "overlay",
        s.merged,
        "overlay",
        0,
        `lowerdir=${lower},upperdir=${join(dir, "upper")},workdir=${join(dir, "work")},` +
          OVERLAY_OPTS,
      );
    } catch (e) {
      await this.images.dropScratch(dir);
      throw new UserError(`cannot mount an overlay for ${s.name}: ${(e as Error).message}`);
    }
    this.#open.set(s.id, s);
    log.info("image session opened", { session: s.id, image: s.name, base: base?.id ?? null });
    return s;
  }

  /** Unmounts and forgets the session; its files go. */
  async discard(id: string): Promise<void> {
    const s = this.get(id);
    this.#open.delete(id);
    detach(s.merged);
    await this.images.dropScratch(s.dir);
  }

  /**
   * Commits the session's changes as a new version of its name. No change: nothing is committed
   * (`existed` with the base). The session is gone afterwards, whatever happens.
   */
  async commit(
    id: string,
    meta: { madeBy: MadeBy; command: string | null },
  ): Promise<Commit> {
    const s = this.get(id);
    this.#open.delete(id);
    detach(s.merged);
    try {
      const upper = join(s.dir, "upper");
      if (s.base && ![...Deno.readDirSync(upper)].length && s.name === s.base.name) {
        const base = this.images.get(s.base.id);
        return { ...base, existed: true, previous: null, outdated: null };
      }
      return await commitUpper(this.images, upper, s.base?.id ?? null, s.name, meta);
    } finally {
      await this.images.dropScratch(s.dir);
    }
  }
}

/**
 * An overlay upper directory (whiteouts and opaque directories included) applied onto a copy of
 * version `baseId` (null: an empty tree), committed as a new version of `name`. The copy's files
 * are hard links to the base's; only what the upper holds is new.
 */
export async function commitUpper(
  images: ImageStore,
  upper: string,
  baseId: string | null,
  name: string,
  meta: { madeBy: MadeBy; command: string | null },
): Promise<Commit> {
  const work = images.scratch("commit");
  try {
    await Deno.mkdir(work, { mode: 0o700 });
    const tree = join(work, "rootfs");
    if (baseId) await hardLinkCopy(images.data.rootfs(baseId), tree);
    else await Deno.mkdir(tree, { mode: 0o755 });
    applyUpper(upper, tree);
    const cache = baseId ? baseHashes(images, baseId) : undefined;
    return await images.commit(work, name, {
      madeBy: meta.madeBy,
      command: meta.command,
      parent: baseId,
    }, {
      cache,
      baseInodes: cache && new Set([...cache.values()].map((c) => c.ino)),
    });
  } finally {
    await images.dropScratch(work);
  }
}

/** The systemd-nspawn command line for a session's tree (image shell, image build): the
 *  server's network and its resolv.conf, no machine registration, nothing of the host written
 *  into the image (journal, timezone). nspawn mounts a fresh tmpfs on /tmp. */
export function nspawnArgs(
  merged: string,
  command: string[] | undefined,
  tty: boolean,
  extra: string[] = [],
): string[] {
  return [
    "--quiet",
    "--register=no",
    "--keep-unit",
    "--resolv-conf=bind-host",
    "--timezone=off",
    "--link-journal=no",
    "-D",
    merged,
    ...(tty ? [] : ["--pipe"]),
    ...extra,
    ...(command ? ["--", ...command] : []),
  ];
}

/** A copy of a tree whose files are hard links to the original's (GNU cp -al): directories,
 *  symlinks and devices are the copy's own; regular files are never written in place. */
async function hardLinkCopy(from: string, to: string): Promise<void> {
  const out = await new Deno.Command("cp", {
    args: ["-a", "-l", "--no-target-directory", from, to],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`cp -al ${from}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/** The base version's digests keyed by path, for the files the new tree still shares (same
 *  inode): the commit hashes only what changed. */
function baseHashes(images: ImageStore, id: string): Map<string, CachedHash> {
  const root = images.data.rootfs(id);
  const cache = new Map<string, CachedHash>();
  for (const e of manifestLines(Deno.readTextFileSync(images.data.manifest(id)))) {
    if (e.type !== "file" || !e.sha256) continue;
    try {
      const st = Deno.lstatSync(root + e.path);
      cache.set(e.path, {
        ino: st.ino!,
        size: st.size,
        mtimeMs: st.mtime!.getTime(),
        sha256: e.sha256,
      });
    } catch { /* gone: hashed again */ }
  }
  return cache;
}

function detach(path: string): void {
  try {
    umount(path, MNT_DETACH);
  } catch (e) {
    log.warn("could not unmount an image session", { path, error: (e as Error).message });
  }
}

/** Detaches every mount under `dir` (sessions of a server that died), deepest first. */
export function detachMountsUnder(dir: string): number {
  let text: string;
  try {
    text = Deno.readTextFileSync("/proc/self/mountinfo");
  } catch {
    return 0;
  }
  const prefix = dir.replace(/\/+$/, "") + "/";
  const points = text.split("\n").map((l) => l.split(" ")[4])
    .filter((p): p is string => !!p)
    .map((p) => p.replace(/\\(\d{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p.startsWith(prefix))
    .sort((a, b) => b.length - a.length);
  for (const p of points) detach(p);
  return points.length;
}
