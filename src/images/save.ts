// `node save NODE NAME`: a node's overlay upper (network mode: the RAM layer; hybrid mode:
// walt-hybrid/<id>/diff on its disk; netroot init shows either read-only at /run/netroot/upper) as
// a new version on top of the image the node booted, deletions included (overlay whiteouts: char
// device 0/0; opaque directories: trusted.overlay.opaque=y). The upper arrives as a tarball (GNU
// tar with --xattrs --xattrs-include='*' --numeric-owner): fetched from the running node over the
// server's ssh channel (src/nodessh.ts) with the image's own GNU tar, or a file the admin made
// there. Either way it is untrusted: bounded while it arrives, its members' sizes and count held
// to the room left, unpacked with the import's rules into scratch (as a tree, never as an image
// archive), then applied like a session's upper, the machine's own state left out first
// (machinestate.ts: its random seed, journal, machine-id, the server's key line…). The conversion
// happens here only.
import { closeSync, constants, fstatSync, openSync, statSync } from "node:fs";
import { join, posix } from "node:path";
import { defaultLayout } from "../../contract/rootmode.ts";
import { bootedOn, runningImage } from "../boots.ts";
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import type { NodeInfo } from "../nodes.ts";
import { sshFailure, type SshTarget } from "../nodessh.ts";
import { splitCmdline } from "../../contract/cmdline.ts";
import { logger } from "../log.ts";
import { heldPath, O_PATH } from "../linux/fsops.ts";
import { commitUpper } from "./session.ts";
import type { Commit } from "./store.ts";
import { roomIn } from "./tar.ts";
import { lstatOrNull } from "./archivepath.ts";
import { unpack } from "./unpack.ts";
import { indexBase } from "./derive.ts";
import { leaveOutMachineState } from "./machinestate.ts";

const log = logger("images");

/** The image a node runs (boots.ts runningImage), else the one it is set to boot. */
export function bootedImage(
  ctx: Pick<Context, "db" | "nodes" | "images">,
  nodeRef: string,
): string {
  const node = ctx.nodes.get(nodeRef);
  const id = runningImage(ctx.db, node.mac) ?? node.imageId;
  if (!id) throw new UserError(`node ${node.name} has never booted an image`);
  return storedBase(ctx, node, id);
}

/** `id`, a version the node booted, when the store still has it. */
function storedBase(ctx: Pick<Context, "images">, node: NodeInfo, id: string): string {
  // removed since (image rm refuses it only while the node is not off): no base to apply onto
  if (!ctx.images.find(id)) {
    throw new UserError(
      `node ${node.name} last booted image version ${id.slice(0, 12)}, which was removed: ` +
        "its upper has nothing to apply onto",
      409,
    );
  }
  return id;
}

type SaveContext = Pick<Context, "db" | "nodes" | "images">;

/** A save's commit, and what of the machine's own state it left out (machinestate.ts). */
export interface Saved extends Commit {
  /** A short phrase per kind left out ("journal (3 files)"); empty with keepMachineState. */
  leftOut: string[];
}

export interface SaveOptions {
  /** Save the node's upper whole, its random seed, journal, machine-id, the server's key… */
  keepMachineState?: boolean;
}

/** The version a save applies onto, kept from `image rm` and gc until the save ends: an off
 *  node's booted version may be removed, and removed during the save (its upper streamed or
 *  unpacked), the commit failed on the base's missing manifest. */
function holdBase(ctx: SaveContext, id: string): Disposable {
  return { [Symbol.dispose]: ctx.images.hold(id) };
}

/** Below this room a save is refused up front: it could not hold even a small upper. */
const MIN_SAVE_ROOM = 1 << 20;

/** The room promised to one save (ImageStore.promiseRoom), or why there is none. */
function saveRoom(ctx: SaveContext): { bytes: number } & Disposable {
  const room = ctx.images.promiseRoom();
  if (room.bytes >= MIN_SAVE_ROOM) return room;
  room[Symbol.dispose]();
  throw new UserError(
    `no room on the data dir for a node save: ${mb(room.free)} MB free` +
      (room.held ? `, ${mb(room.held)} MB of it held by saves under way` : "") +
      " (a save may use half of what is free and not held)",
    503,
  );
}

/** `node save NODE NAME --upper FILE`: the upper as a tarball on the server machine. */
export async function saveNode(
  ctx: SaveContext,
  nodeRef: string,
  name: string,
  upperTar: string,
  command: string | null,
  opts: SaveOptions = {},
): Promise<Saved> {
  using _name = ctx.images.committing(name);
  const base = bootedImage(ctx, nodeRef);
  using _base = holdBase(ctx, base);
  using upper = heldFile(upperTar, ctx.images.data.nodes);
  using room = saveRoom(ctx);
  return await inScratch(
    ctx,
    (scratch) =>
      commitTar(ctx, base, scratch, upper.path, room.bytes, name, command, opts, upperTar),
  );
}

/**
 * The regular file `name` names, held by an O_PATH descriptor until disposed: `path`
 * (/proc/PID/fd/N) reopens that very file, for this process and for its children (GNU tar, a
 * decompressor). `--upper FILE` is read several times (sniffed, listed against the room,
 * extracted), where the node made it, its /persist as often as not, which its root writes while
 * the save runs: read by name each time, it was swapped for a symlink to a server file after the
 * check, and a tarball of the server's (a backup holding the API token) was saved as the node's
 * upper, into a version the node boots with root kept.
 * The path is walked a directory at a time, each held: a link is followed (one step, from the
 * directory that holds it) only outside `nodes` (the data dir's nodes/), whose /persist
 * directories any node's root fills as it likes. A directory on the way made a link there by the
 * node led the save to another node's upper (its host keys) or to any server file of that name;
 * the final name is never followed, nor a FIFO opened.
 */
function heldFile(name: string, nodes: string): { path: string } & Disposable {
  const refused = (why: string) => new UserError(`${name}: ${why} (the upper's tarball)`);
  const nodesDir = statSync(nodes);
  let path = posix.resolve(name);
  for (let hops = 0;; hops++) {
    if (hops > 40) throw refused("too many levels of symbolic links");
    const parts = path.split("/").filter(Boolean);
    let fd = openSync("/", constants.O_RDONLY | constants.O_DIRECTORY | O_PATH);
    let at = "", inNodes = false, followed = false;
    try {
      for (const [i, part] of parts.entries()) {
        const last = i === parts.length - 1;
        const entry = `${heldPath(fd)}/${part}`;
        const st = lstatOrNull(entry);
        if (!st) throw refused("no such file");
        if (st.isSymlink) {
          if (last) throw refused("not a regular file"); // its link is not followed
          if (inNodes) throw refused(`${at}/${part} is a link in a node's directory, not followed`);
          // One step: the link's target from the directory holding it, a real one (walked
          // without links), so ".." in it is that directory's parent.
          const target = Deno.readLinkSync(entry);
          path = posix.join(
            target.startsWith("/") ? "/" : at || "/",
            target,
            ...parts.slice(i + 1),
          );
          followed = true;
          break;
        }
        const next = openSync(
          entry,
          constants.O_RDONLY | constants.O_NOFOLLOW | O_PATH | (last ? 0 : constants.O_DIRECTORY),
        );
        closeSync(fd);
        fd = next;
        at = `${at}/${part}`;
        const held = fstatSync(fd);
        if (held.dev === nodesDir.dev && held.ino === nodesDir.ino) inNodes = true;
      }
      if (!followed) {
        if (!fstatSync(fd).isFile()) throw refused("not a regular file");
        const file = fd;
        fd = -1;
        return { path: heldPath(file), [Symbol.dispose]: () => closeSync(file) };
      }
    } catch (e) {
      if (e instanceof UserError) throw e;
      // The walk found an entry changed under it (a directory swapped for a link): refused.
      throw refused((e as Error).message);
    } finally {
      if (fd >= 0) closeSync(fd);
    }
  }
}

/** `node save NODE NAME`: the upper fetched from the running node over ssh. */
export async function saveLiveNode(
  ctx: SaveContext & Pick<Context, "ssh">,
  nodeRef: string,
  name: string,
  command: string | null,
  fetch: Partial<FetchOptions> = {},
  opts: SaveOptions = {},
): Promise<Saved> {
  using _name = ctx.images.committing(name);
  const node = ctx.nodes.get(nodeRef);
  const o = { ...fetchDefaults, ...fetch };
  const base = await liveBase(ctx, node, o.cmdline);
  using _base = holdBase(ctx, base);
  using room = saveRoom(ctx);
  return await inScratch(ctx, async (scratch) => {
    const tar = join(scratch, "upper.tar");
    // The tarball and its unpacking share the save's room: half of it each.
    const limit = fetch.limitBytes ?? Math.floor(room.bytes / 2);
    const got = await fetchUpper(ctx, node, tar, { ...o, limitBytes: limit });
    const left = room.bytes - got;
    return await commitTar(
      ctx,
      base,
      scratch,
      tar,
      left,
      name,
      command,
      opts,
      `the upper of ${node.name}`,
    );
  });
}

async function inScratch<T>(ctx: SaveContext, fn: (scratch: string) => Promise<T>): Promise<T> {
  const scratch = ctx.images.scratch("save");
  try {
    await Deno.mkdir(scratch, { mode: 0o700 });
    return await fn(scratch);
  } finally {
    await ctx.images.dropScratch(scratch);
  }
}

async function commitTar(
  ctx: SaveContext,
  baseId: string,
  scratch: string,
  tar: string,
  roomBytes: number,
  name: string,
  command: string | null,
  opts: SaveOptions,
  what = tar,
): Promise<Saved> {
  const upper = join(scratch, "upper");
  // The stream's bound does not bound what it unpacks to: a sparse member (or a compressed
  // --upper FILE) of a few KiB can stand for terabytes, all of them hashed: `room`, what is left
  // of the save's promise (ImageStore.promiseRoom) and of the disk.
  const free = roomIn(scratch);
  const room = { ...free, bytes: Math.min(free.bytes, roomBytes) };
  const u = await unpack(tar, upper, { room, treeOnly: true }).catch((e) => {
    if (e instanceof UserError && what !== tar) e.message = e.message.replaceAll(tar, what);
    throw e;
  });
  if (!u.format.startsWith("tar")) throw new UserError(`${what}: not a tarball`);
  const base = indexBase(await Deno.readTextFile(ctx.images.data.manifest(baseId)));
  const leftOut = opts.keepMachineState
    ? []
    : await leaveOutMachineState(upper, base, ctx.images.objects);
  // Its files were hashed as they were unpacked (on other threads for the large ones): hashed
  // again here, they held the server's event loop (2 s for a 2 GiB file).
  const commit = await commitUpper(ctx.images, upper, baseId, name, { madeBy: "save", command }, {
    base,
    hashes: u.cache,
  });
  return { ...commit, leftOut };
}

export interface FetchOptions {
  /** The stream stops (and nothing is committed) past this many bytes. */
  limitBytes: number;
  /** … or after this long without a byte (a stalled node). */
  idleMs: number;
  /** … or after this long in all (a node that sends a byte now and then, never idle long enough;
   *  an hour moves far more than a node's RAM upper even at 100 Mbit/s). */
  totalMs: number;
  /** The upper on the node (tests point it elsewhere). */
  dir: string;
  /** The node's kernel command line, which names the image it booted (tests point it elsewhere). */
  cmdline: string;
}

const fetchDefaults = {
  idleMs: 120_000,
  totalMs: 3_600_000,
  dir: defaultLayout.upper,
  cmdline: "/proc/cmdline",
};

/** How long the node gets to say which image it booted. */
const CMDLINE_TIMEOUT_MS = 30_000;

/**
 * The image the running node booted, in its own words: `netroot.image=` on its kernel command
 * line, which the server wrote for that boot. The boots table can lag behind it (a handover report
 * lost on its way, reports refused): applied onto another version, the upper's changes and
 * deletions would make a wrong image without a word. Root on the node writes that line as it
 * likes, so only a version the server gave this node is taken (a boot it opened for it, or the
 * version it is set to): another image's version would be copied whole into the new one, its
 * root-only files (ssh host keys, /etc/shadow) included, which that image's export squashes for
 * every node but its own, and the node then boots the new version with root kept.
 */
async function liveBase(
  ctx: SaveContext & Pick<Context, "ssh">,
  node: NodeInfo,
  cmdline: string,
): Promise<string> {
  const t = sshTarget(ctx, node);
  const r = await ctx.ssh.run(t, `cat ${cmdline}`, CMDLINE_TIMEOUT_MS).catch((e) => {
    throw cannotFetch(node, (e as Error).message);
  });
  if (r.code !== 0) {
    throw cannotFetch(node, `reading its kernel command line: ${sshFailure(r)}`);
  }
  const word = splitCmdline(r.stdout).find((w) => w.startsWith("netroot.image="));
  const id = word?.slice("netroot.image=".length);
  if (!id || !/^[0-9a-f]{64}$/.test(id)) {
    throw cannotFetch(
      node,
      word
        ? `its kernel command line names no image version (${word.slice(0, 90)})`
        : "its kernel command line names no netroot image: it was not booted by netroot",
    );
  }
  if (id !== node.imageId && !bootedOn(ctx.db, node.mac, id)) {
    const v = id.slice(0, 12);
    throw cannotFetch(node, `it names image version ${v}, which netroot never gave it to boot`);
  }
  const told = runningImage(ctx.db, node.mac);
  if (told !== id) {
    log.info("node save: the node runs another version than its boots say; the node's taken", {
      node: node.name,
      runs: id,
      boots: told ?? null,
    });
  }
  return storedBase(ctx, node, id);
}

const cannotFetch = (node: NodeInfo, why: string) =>
  new UserError(`cannot fetch the upper of ${node.name}: ${why} (or use --upper FILE)`, 409);

/** Where to reach the node's sshd, if it can be fetched from now. */
function sshTarget(ctx: Pick<Context, "ssh">, node: NodeInfo): SshTarget {
  if (node.state !== "booted") throw cannotFetch(node, `it is ${node.state}, not booted`);
  if (node.stateReason?.startsWith("handover")) {
    throw cannotFetch(node, `its sshd never answered (${node.stateReason})`);
  }
  ctx.ssh.key.publicKey(); // throws the reason when the server has no key
  const t = ctx.ssh.target(node);
  if ("unavailable" in t) throw cannotFetch(node, t.unavailable);
  return t;
}

/** Exit codes of the node-side command for its own refusals (tar's own are 1 and 2). */
const NO_UPPER = 90, NO_GNU_TAR = 91;

/**
 * The node side: the upper as a tar stream on stdout, made by the image's own tar. GNU tar only:
 * busybox tar stores no xattrs, and trusted.overlay.opaque is what marks an opaque directory.
 */
export function upperTarCommand(dir: string): string {
  return [
    `cd ${dir} 2>/dev/null || { echo "no ${dir} on the node:` +
    ` booted by a netroot init older than node save, or not by netroot" >&2; exit ${NO_UPPER}; }`,
    `case "$(tar --version 2>/dev/null)" in *"GNU tar"*) ;; *) echo "the image has no GNU tar` +
    ` (busybox tar keeps no xattrs, which mark opaque directories): install tar in it, or use` +
    ` --upper FILE" >&2; exit ${NO_GNU_TAR};; esac`,
    "exec tar --xattrs --xattrs-include='*' --numeric-owner --one-file-system -cf - .",
  ].join("; ");
}

/** The running node's upper into `dest` (a new file) over ssh, bounded; throws one line. */
export async function fetchUpper(
  ctx: Pick<Context, "ssh">,
  node: NodeInfo,
  dest: string,
  o: FetchOptions,
): Promise<number> {
  const cannot = (why: string) => cannotFetch(node, why);
  const t = sshTarget(ctx, node);
  const [cmd, ...args] = ctx.ssh.argv(t, upperTarCommand(o.dir));
  // The file first: a child spawned before a failed open was left running, its pipes unread.
  const file = await Deno.open(dest, { createNew: true, write: true, mode: 0o600 });
  let child: Deno.ChildProcess;
  try {
    // Asked after the open, from here to the listener below without a turn of the event loop:
    // a stop during the open went unheard, and the node held it for the save's hour.
    if (ctx.ssh.stopping.aborted) throw cannot("the server stops");
    child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .spawn();
  } catch (e) {
    file.close();
    throw e;
  }
  let bytes = 0;
  let stopped: string | undefined;
  const stop = (why: string) => {
    stopped ??= why;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  };
  // The node decides when its stream ends (within the save's hour): not when the server stops.
  const serverStops = () => stop("the server stops");
  ctx.ssh.stopping.addEventListener("abort", serverStops);
  let idle: ReturnType<typeof setTimeout> | undefined;
  const wake = () => {
    clearTimeout(idle);
    idle = setTimeout(() => stop(`no data for ${o.idleMs / 1000} s`), o.idleMs);
  };
  const stderr = readTail(child.stderr);
  const total = setTimeout(() => stop(`it took over ${o.totalMs / 60_000} min`), o.totalMs);
  try {
    wake();
    for await (const chunk of child.stdout) {
      wake();
      bytes += chunk.length;
      if (bytes > o.limitBytes) {
        stop(
          `it is larger than ${mb(o.limitBytes)} MB (half the room a save gets on the data dir)`,
        );
        continue; // drain what is buffered; ssh is gone
      }
      for (let at = 0; at < chunk.length;) at += await file.write(chunk.subarray(at));
    }
  } catch (e) {
    stop("the server could not write it"); // e.g. a full disk: ssh ends with it
    await Promise.allSettled([child.status, stderr]);
    throw e;
  } finally {
    clearTimeout(idle);
    clearTimeout(total);
    ctx.ssh.stopping.removeEventListener("abort", serverStops);
    file.close();
  }
  const status = await child.status;
  const err = await stderr;
  if (stopped) throw cannot(stopped);
  if (status.code === 0) return bytes;
  if (status.code === 255) {
    throw cannot(`ssh: ${sshFailure({ code: 255, stdout: "", stderr: err })}`);
  }
  const said = lastLine(err);
  if (status.code === NO_UPPER || status.code === NO_GNU_TAR) throw cannot(said);
  // GNU tar's 1: a file changed while it was read (a live system): the archive is whole.
  if (
    status.code === 1 && err.split("\n").every((l) => !l || /file changed as we read it/.test(l))
  ) {
    return bytes;
  }
  throw cannot(`tar on the node exited ${status.code}${said ? `: ${said}` : ""}`);
}

/** A child's stderr, its last 8 KiB (a hostile node can say a lot). */
async function readTail(stream: ReadableStream<Uint8Array>): Promise<string> {
  let text = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    text = (text + chunk).slice(-8192);
  }
  return text;
}

const lastLine = (s: string) => s.split("\n").map((l) => l.trim()).filter(Boolean).at(-1) ?? "";
const mb = (n: number) => Math.round(n / 1e6);
