// Changing an image: a session is an overlayfs mount with the version's tree as its read-only
// lower layer and a private upper in tmp/, so the image itself never changes. `image shell` runs
// systemd-nspawn on the merged tree, `image cp` and `image build` write into it. Commit turns the
// upper into a new version (the base's manifest with the upper applied, the tree written from it
// as hard links to the base's files: time and space in proportion to the change, the files
// shared through the object store); discard drops it.
// A server restart drops every open session (tmp/ is wiped, its mounts detached first).
import { join } from "node:path";
import { UserError } from "../errors.ts";
import { MNT_DETACH, mount, umount } from "../linux/mount.ts";
import { logger } from "../log.ts";
import type { Commit, ImageStore, MadeBy } from "./store.ts";
import { applyUpper } from "./upper.ts";
import { buildDerived, deriveManifest } from "./derive.ts";

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
 * An overlay upper directory (whiteouts and opaque directories included) applied onto version
 * `baseId` (null: an empty tree), committed as a new version of `name`. Time and space in
 * proportion to the change (derive.ts): the new manifest is the base's with the upper applied,
 * the new tree is written from it with the base's files as hard links (one link(2) each, no
 * scan or hash of the unchanged tree); only what the upper holds is new.
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
    const commitMeta = { madeBy: meta.madeBy, command: meta.command, parent: baseId };
    if (!baseId) {
      await Deno.mkdir(tree, { mode: 0o755 });
      applyUpper(upper, tree);
      return await images.commit(work, name, commitMeta);
    }
    const started = performance.now();
    const base = await Deno.readTextFile(images.data.manifest(baseId));
    const d = deriveManifest(base, upper);
    return await images.commitManifest(work, name, commitMeta, {
      entries: d.entries,
      bytes: d.bytes,
      text: d.text,
      started,
      materialize: () => {
        buildDerived(d, images.data.rootfs(baseId), tree, images.objects);
      },
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
