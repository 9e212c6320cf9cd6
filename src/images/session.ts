// Changing an image: a session is an overlayfs mount with the version's tree as its read-only
// lower layer and a private upper in tmp/, so the image itself never changes. `image shell` runs
// systemd-nspawn on the merged tree, `image cp` and `image build` write into it. Commit turns the
// upper into a new version (the base's manifest with the upper applied, the tree written from it
// as hard links to the base's files: time and space in proportion to the change, the files
// shared through the object store); discard drops it.
// A server restart drops every open session (tmp/ is wiped, its mounts detached first).
//
// While a session is open, the next version's tree is written ahead (prepareTree): a copy of the
// base version (its directories, its files as hard links to the same inodes) in the session's
// directory, written in slices between other work. The commit then only applies the upper to it
// (applyDerived) instead of writing a whole tree (one link(2) per file) after the request. A
// commit that comes before the copy is done finishes it first (no slices), so it is never slower
// than writing the tree from nothing. The copy lives in tmp/ like the rest of the session: a
// session discarded, a commit that finds its content already stored, or a crash (tmp/ is wiped
// at the next start) leave nothing of it; it reaches images/ only through commitManifest's
// rename, complete.
import { join } from "node:path";
import { parseEntry } from "../../contract/manifest.ts";
import { UserError } from "../errors.ts";
import { syncfsLater } from "../linux/fsops.ts";
import { MNT_DETACH, mount, MS_NODEV, umount, umountAsync } from "../linux/mount.ts";
import { logger } from "../log.ts";
import type { Commit, ImageInfo, ImageStore, MadeBy } from "./store.ts";
import { applyUpper } from "./upper.ts";
import type { CachedHash } from "./walk.ts";
import {
  applyDerived,
  baseDerived,
  type BaseIndex,
  buildDerived,
  buildSteps,
  deriveManifest,
  hashLargeFiles,
  indexBase,
  SLICE,
} from "./derive.ts";

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
  /** The process that holds it (`image shell`'s CLI, on this machine), while it lives. */
  holder?: Holder;
}

/** The process that will commit or discard a session: its pid and its start time (processStart),
 *  as it sees them. */
export interface Holder {
  pid: number;
  start: string;
}

/** When process `pid` started (/proc/PID/stat, field 22), or undefined when there is none: with
 *  its pid, it names one process (a pid is used again). */
export function processStart(pid: number): string | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** The calling process as a holder, named as the /proc it sees names it (`/proc/self`): its pid
 *  there, not getpid()'s. A process in a pid namespace of its own that was left the server's
 *  /proc (`unshare --pid --fork`) has another pid in it, and got the start time of the server's
 *  process of its own pid: that process's exit discarded its live session. (With a /proc of its
 *  own, the start time names nothing the server sees: it holds nothing.) */
export function thisProcess(): Holder | undefined {
  try {
    const pid = Number(Deno.readLinkSync("/proc/self"));
    const start = processStart(pid);
    return start === undefined ? undefined : { pid, start };
  } catch {
    return undefined;
  }
}

/** Mount options that keep the upper self-contained: renamed directories are copied up whole
 *  (no redirect), files copied up with their content (no metacopy), no inode index. */
const OVERLAY_OPTS = "redirect_dir=off,metacopy=off,index=off,xino=off";

/** The copy of a session's base version written ahead of its commit (prepareTree). */
interface Prep {
  /** Its path (in the session's directory). */
  tree: string;
  /** The base's manifest, indexed and parsed (the commit's derive starts from it). */
  base?: BaseIndex;
  /** Settles when the copy is complete (true) or given up (false: failed or cancelled). */
  done: Promise<boolean>;
  /** No more slices: finish as fast as possible (a commit waits for it). */
  hurry: () => void;
  /** Stop (the session is discarded): `done` settles false. */
  cancel: () => void;
  /** When it started and ended (performance.now()), for the log and the bench. */
  started: number;
  ended?: number;
}

/** Writes a copy of version `baseId` at `tree` in slices (buildSteps), yielding to the event
 *  loop between them: the server stays responsive while the copy is written. */
function prepareTree(images: ImageStore, baseId: string, tree: string): Prep {
  let hurried = false, cancelled = false;
  const p: Prep = {
    tree,
    started: performance.now(),
    done: Promise.resolve(false),
    hurry: () => hurried = true,
    cancel: () => cancelled = true,
  };
  p.done = (async () => {
    try {
      await new Promise((r) => setTimeout(r, 0)); // after the session is handed out
      if (cancelled) return false;
      const base = indexBase(await Deno.readTextFile(images.data.manifest(baseId)));
      for (let i = 0; i < base.lines.length; i++) {
        base.entries[i] = parseEntry(base.lines[i]);
        if (i % (SLICE * 16) === 0 && !hurried) await new Promise((r) => setTimeout(r, 0));
        if (cancelled) return false;
      }
      const d = baseDerived(base);
      const steps = buildSteps(d, images.data.rootfs(baseId), tree, images.objects);
      for (;;) {
        if (cancelled) return false;
        if (steps.next().done) break;
        if (!hurried) await new Promise((r) => setTimeout(r, 0));
      }
      // Flushed ahead too (syncfs in another process, the event loop free meanwhile): the
      // commit's syncfs, and the overlay's own at its unmount, then have only the change to write.
      if (!hurried) {
        await new Deno.Command("sync", { args: ["-f", tree], stdout: "null", stderr: "null" })
          .output().catch(() => {});
      }
      p.ended = performance.now();
      p.base = base;
      return true;
    } catch (e) {
      log.warn("could not write the next version's tree ahead; the commit writes it", {
        base: baseId,
        error: (e as Error).message,
      });
      return false;
    }
  })();
  return p;
}

export class Sessions {
  #open = new Map<string, Session>();
  #preps = new Map<string, Prep>();
  /** Write the next version's tree ahead while a session is open (off: the commit writes the
   *  whole tree, as before; the tests check both ways give the same version). */
  writeAhead = true;

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
   *  version's own name). `holder`: the pid of the process that will commit or discard it (a
   *  CLI on this machine); once it is gone, the next open discards the session. */
  async open(ref: string | null, name?: string, holder?: Holder): Promise<Session> {
    await this.#discardOrphans();
    const base = ref === null ? null : this.images.get(ref);
    if (!base && !name) throw new UserError("a build FROM scratch needs a name");
    // Renamed while its base's tree is written, the session committed to the old name.
    using _name = this.images.committing(name ?? base!.name);
    // A thin version's tree is written again first; held until the session is registered.
    const release = base ? this.images.hold(base.id) : () => {};
    try {
      if (base) await this.images.ensureTree(base.id);
      return await this.#open1(base, name, holder);
    } finally {
      release();
    }
  }

  /** Discards the sessions whose holder is gone: an `image shell` killed (kill -9, a lost
   *  machine) could not, and its session stayed until the server restarted (its overlay
   *  mounted, its upper and its copy of the base's tree in tmp/, its base kept from image rm),
   *  one more per killed shell. */
  async #discardOrphans(): Promise<void> {
    for (const s of this.list()) {
      if (!s.holder || processStart(s.holder.pid) === s.holder.start) continue;
      log.info("image session discarded: its holder is gone", { session: s.id, pid: s.holder.pid });
      await this.discard(s.id).catch(() => {}); // a commit or discard took it meanwhile
    }
  }

  async #open1(base: ImageInfo | null, name?: string, holder?: Holder): Promise<Session> {
    const id = crypto.randomUUID();
    const dir = join(this.images.data.tmp, `session-${id}`);
    // The holder says which process it is, by pid and start time: a pid of another pid
    // namespace (a CLI in a container on the host's network) names some other process here,
    // whose exit discarded the live session; such a holder holds nothing (never discarded).
    const held = holder !== undefined && processStart(holder.pid) === holder.start;
    const s: Session = {
      id,
      base: base && { id: base.id, name: base.name },
      name: name ?? base!.name,
      merged: join(dir, "merged"),
      dir,
      ...(held && { holder }),
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
    // nodev: a device node in the image (an imported tree may hold any) or made in it is not a
    // way to the server's own devices: a RUN step read the host's disks through either.
    try {
      mount(
        "overlay",
        s.merged,
        "overlay",
        MS_NODEV,
        `lowerdir=${lower},upperdir=${join(dir, "upper")},workdir=${join(dir, "work")},` +
          OVERLAY_OPTS,
      );
    } catch (e) {
      await this.images.dropScratch(dir);
      throw new UserError(`cannot mount an overlay for ${s.name}: ${(e as Error).message}`);
    }
    this.#open.set(s.id, s);
    if (base && this.writeAhead) {
      this.#preps.set(s.id, prepareTree(this.images, base.id, join(dir, "next")));
    }
    log.info("image session opened", { session: s.id, image: s.name, base: base?.id ?? null });
    return s;
  }

  /**
   * Settles when the session's next tree (written ahead, prepareTree) is complete: true, or
   * false when there is none (FROM scratch) or it was given up. Milliseconds it took in `ms`.
   */
  async prepared(id: string): Promise<{ ready: boolean; ms: number }> {
    this.get(id);
    const p = this.#preps.get(id);
    const ready = p ? await p.done : false;
    return { ready, ms: p?.ended !== undefined ? p.ended - p.started : 0 };
  }

  /** The session's prepared tree, waited for (and hurried); undefined when there is none. */
  async #takePrep(id: string): Promise<Prepared | undefined> {
    const p = this.#preps.get(id);
    if (!p) return undefined;
    this.#preps.delete(id);
    p.hurry();
    return (await p.done) ? { tree: p.tree, base: p.base! } : undefined;
  }

  /** Stops writing the session's tree ahead: no slice runs after this (the event loop runs one
   *  at a time and each checks first), so its directory can go at once. */
  #dropPrep(id: string): void {
    this.#preps.get(id)?.cancel();
    this.#preps.delete(id);
  }

  /** Discards under way: a second discard of the same session (a client that asks again as it
   *  exits) answers when the first is done, not before its files are gone. */
  #closing = new Map<string, Promise<void>>();

  /** Unmounts and forgets the session; its files go. */
  async discard(id: string): Promise<void> {
    const closing = this.#closing.get(id);
    if (closing) return await closing;
    const s = this.get(id);
    this.#open.delete(id);
    this.#dropPrep(id);
    const done = detachAsync(s.merged).then(() => this.images.dropScratch(s.dir))
      .finally(() => this.#closing.delete(id));
    this.#closing.set(id, done);
    await done;
  }

  /**
   * What a commit writes besides what the session holds (its upper's files are moved, not
   * copied): the new manifest and, unless written ahead, the new tree's directories — about four
   * times the new manifest (ext4: directories ≈ 3× the manifest's bytes), which is the base's and
   * a line per entry of the upper — and 1 MiB for the database. A disk without it fails the commit
   * half-way (ENOSPC), which drops the session. (Counted from the base's alone, a session that
   * added 30,000 files passed the check on a disk 1.3 MB free and lost them all to ENOSPC.)
   */
  #checkRoom(s: Session): void {
    const base = s.base ? Deno.statSync(this.images.data.manifest(s.base.id)).size : 0;
    const manifest = base + upperLineBytes(join(s.dir, "upper"));
    const need = 4 * manifest + (1 << 20), free = this.images.freeRoom();
    if (free >= need) return;
    const mb = (n: number) => (Math.max(0, n) / 1e6).toFixed(1);
    throw new UserError(
      `no room to commit: the data dir's disk has ${mb(free)} MB free, the commit needs about ` +
        `${mb(need)} MB (the new version's manifest and directories): make room (netroot image ` +
        "gc, netroot image rm NAME@ID)",
      507,
    );
  }

  /**
   * Commits the session's changes as a new version of its name. No change: nothing is committed
   * (`existed` with the base). The session is gone afterwards, whatever happens, except when the
   * disk has no room for the commit (checked first, status 507): then it stays as it was, to be
   * committed again once room is made (an hour's work in `image shell` is not lost to a full
   * disk).
   */
  async commit(
    id: string,
    meta: { madeBy: MadeBy; command: string | null },
  ): Promise<Commit> {
    const s = this.get(id);
    // Out of the list below, the session still keeps `image rename` off its name.
    using _name = this.images.committing(s.name);
    const nothing = unchanged(s); // its container is gone: the upper changes no more
    if (!nothing) this.#checkRoom(s);
    // Out of the list, the session no longer keeps its base from `image rm` or gc: held until
    // the commit ends (removed under it, the commit failed on the base's manifest and the
    // session's work went with it).
    const release = s.base ? this.images.hold(s.base.id) : () => {};
    this.#open.delete(id);
    try {
      await detachAsync(s.merged);
      const upper = join(s.dir, "upper");
      if (nothing) {
        this.#dropPrep(id);
        const base = this.images.get(s.base!.id);
        return { ...base, existed: true, previous: null, outdated: null };
      }
      const prepared = await this.#takePrep(id);
      return await commitUpper(this.images, upper, s.base?.id ?? null, s.name, meta, { prepared });
    } finally {
      release();
      this.#dropPrep(id);
      await this.images.dropScratch(s.dir);
    }
  }
}

/** A manifest line's fields besides its path and link target, at most about: type, mode, owner,
 *  size, mtime, sha256, device (xattrs aside). */
const lineFieldBytes = 140;

const utf8 = new TextEncoder();

/** The bytes the entries of `upper` add to a manifest, about: a line each (a whiteout's too), its
 *  path and fields; names only, no entry looked at (an upper of 30,000 files: a few ms). */
function upperLineBytes(upper: string): number {
  let bytes = 0;
  for (const stack = [{ dir: upper, rel: 0 }]; stack.length;) {
    const { dir, rel } = stack.pop()!;
    for (const e of Deno.readDirSync(dir)) {
      const path = rel + 1 + utf8.encode(e.name).length; // "/name"
      bytes += path + lineFieldBytes;
      if (e.isDirectory) stack.push({ dir: `${dir}/${e.name}`, rel: path });
    }
  }
  return bytes;
}

/** Nothing changed in the session, which commits to its base's name: nothing to commit. */
const unchanged = (s: Session) =>
  s.base !== null && s.name === s.base.name && ![...Deno.readDirSync(join(s.dir, "upper"))].length;

/** A commit, then the session gone even when it was refused for room (image build, image cp:
 *  no one there to make room and ask again). */
export async function commitOrDiscard(
  images: ImageStore,
  id: string,
  meta: { madeBy: MadeBy; command: string | null },
): Promise<Commit> {
  try {
    return await images.sessions.commit(id, meta);
  } catch (e) {
    if (!(e instanceof UserError && e.status === 507)) throw e;
    await images.sessions.discard(id);
    throw new UserError(`${e.message}; nothing committed`, 507);
  }
}

/** A session's base version written ahead (prepareTree): its tree and its parsed manifest. */
export interface Prepared {
  tree: string;
  base: BaseIndex;
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
  from: {
    /** A complete copy of the base version's tree (prepareTree), moved in and changed in place. */
    prepared?: Prepared;
    /** The base version's manifest, indexed already (node save's filter read it). */
    base?: BaseIndex;
    /** Digests of the upper's files made while it was unpacked (node save): not hashed again. */
    hashes?: Map<string, CachedHash>;
  } = {},
): Promise<Commit> {
  const { prepared, hashes } = from;
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
    // The upper's files become objects: on the disk first (commitManifest waits for this).
    const flushing = syncfsLater(upper);
    const base = prepared?.base ?? from.base ??
      await Deno.readTextFile(images.data.manifest(baseId));
    const d = deriveManifest(base, upper, await hashLargeFiles(upper, hashes));
    return await images.commitManifest(work, name, commitMeta, {
      entries: d.entries,
      bytes: d.bytes,
      text: d.text,
      started,
      flushing,
      materialize: () => {
        if (prepared) {
          Deno.renameSync(prepared.tree, tree);
          applyDerived(d, tree, images.objects);
        } else buildDerived(d, images.data.rootfs(baseId), tree, images.objects);
      },
    });
  } finally {
    await images.dropScratch(work);
  }
}

/** The systemd-nspawn command line for a session's tree (image shell, image build): the
 *  server's network and its resolv.conf, no machine registration, nothing of the host written
 *  into the image (journal, timezone). nspawn mounts a fresh tmpfs on /tmp.
 *  What runs there is the image's or the Buildfile's (hostile): nspawn's default capabilities
 *  keep CAP_SYS_ADMIN, with which root in the container remounted nspawn's read-only /proc/sys
 *  and the host's bind-mounted /etc/resolv.conf read-write, and wrote the server's resolv.conf
 *  and host-wide sysctls (kernel.core_pattern runs a program as the host's root). Dropped, as
 *  Docker drops it: package installs do not need it. CAP_MKNOD too: nspawn's /dev is a tmpfs
 *  where a node made for the server's disk opened it (the tree itself is mounted nodev), and
 *  with --keep-unit no device policy of systemd's stands in the way. CAP_NET_RAW as well: the
 *  container has the server's network, where raw sockets would sniff the boot network (node
 *  tokens, an API token sent over plain HTTP) and forge on it; apt and ping (an ICMP datagram
 *  socket where ping_group_range allows it, as Debian's systemd sets) do without. */
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
    "--drop-capability=CAP_SYS_ADMIN,CAP_MKNOD,CAP_NET_RAW",
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

/** detach off the server's thread: the overlay's unmount flushes its upper's file system. */
async function detachAsync(path: string): Promise<void> {
  try {
    await umountAsync(path, MNT_DETACH);
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
