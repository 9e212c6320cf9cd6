// NFS exports: every image tree read-only to the boot subnet, each node's /persist read-write to
// that node's address only. Two back ends (`--nfs`):
//   kernel   /etc/exports.d/netroot.exports + `exportfs -ra` (nfs-kernel-server does the serving)
//   ganesha  a generated ganesha.conf and a supervised `ganesha.nfsd -F` (user space; used where
//            the kernel has no nfsd, and in tests), reloaded with SIGHUP when exports change
// Exports follow the state: `ctx.changes` "nodes"/"images" events (debounced) and a periodic
// recheck (lease addresses change without an event) regenerate the text; only a changed text is
// applied. Every image is exported, not only deployed ones: a node keeps its root mounted across a
// deploy until it reboots, so the old image must stay reachable.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Context, Service } from "./context.ts";
import { followRegistry } from "./follow.ts";
import { networkCidr } from "../contract/ipv4.ts";
import { UserError } from "./errors.ts";
import { recordEvent } from "./events.ts";
import { logger } from "./log.ts";
import { type FsSpace, rotateInPlace, statvfs, writeFileDurableSync } from "./linux/fsops.ts";
import { bindReadOnly, onReadOnlyMount, remountReadOnly } from "./linux/mount.ts";
import { StartFailure, startProcess, stderrLogBytes, stopStale, Supervisor } from "./supervisor.ts";

const log = logger("nfs");

export const kernelExportsFile = "/etc/exports.d/netroot.exports";

const usesPseudoPaths = (ctx: Context) =>
  ctx.config.nfs.mode === "ganesha" && ctx.config.nfs.version === 4;

/** The directory an image tree is exported from: for kernel nfsd its read-only view
 *  (ensureReadOnlyImages), for ganesha the tree itself. */
function exportedRootfs(ctx: Context, imageId: string): string {
  return ctx.config.nfs.mode === "kernel"
    ? join(ctx.data.imagesReadOnly, imageId, "rootfs")
    : ctx.data.rootfs(imageId);
}

/** The path a node mounts for an image (NFSv4 ganesha: pseudo path; otherwise the exported
 *  directory's real path, which is what kernel nfsd and NFSv3 ganesha export). */
export function nfsRootPath(ctx: Context, imageId: string): string {
  return usesPseudoPaths(ctx) ? `/netroot/images/${imageId}` : exportedRootfs(ctx, imageId);
}

/** The path a node mounts for its /persist. */
export function nfsPersistPath(ctx: Context, mac: string): string {
  return usesPseudoPaths(ctx)
    ? `/netroot/persist/${mac.replaceAll(":", "")}`
    : ctx.data.persist(mac);
}

export interface ImageExport {
  id: string;
  path: string;
  pseudo: string;
  /** Addresses of the nodes that boot this image (evidence-bound, src/nodes.ts): the only
   *  clients whose root is kept on it. */
  nodes: string[];
}
export interface PersistExport {
  mac: string;
  /** The only client allowed to mount it. */
  ip: string;
  path: string;
  pseudo: string;
  /** Exported read-only: the data dir's file system is short of room (PersistRoom). */
  readOnly?: boolean;
}
export interface ExportSet {
  /** CIDR of the boot subnet, the clients of the image exports. */
  subnet: string;
  images: ImageExport[];
  persists: PersistExport[];
}

// ---- pure rendering ----

/** A path as a quoted config/exports string; refuses what neither format can carry. */
function quoted(path: string): string {
  // deno-lint-ignore no-control-regex -- rejecting control characters is the point
  if (/["\\\x00-\x1f]/.test(path)) {
    throw new UserError(`cannot export path ${JSON.stringify(path)}`);
  }
  return `"${path}"`;
}

// ---- export policy (both back ends) ----
// Images: read-only. Root is kept only for the addresses of the nodes that boot the image (the
// node's own root must read the image's root-only files: sshd host keys, /etc/shadow, /root; a
// hybrid copy reads every file; its users theirs), and every user squashed to nobody (65534) for
// the rest of the boot subnet: AUTH_SYS takes the client's word for its uid and groups, and with
// root alone squashed a host claiming gid 42 (shadow) read every image's /etc/shadow, one claiming
// a user's uid that user's private files. /persist: read-write to its node only, root kept (the
// node's root owns its files there). Every export has its own file system id, derived from its key
// (`image:<id>`, `persist:<mac>`): stable across restarts and reloads, never shared by two
// exports, so a client never takes two exports for one file system.
//
// A forged file handle: all exports are directories of the one file system holding the data dir.
// An NFS handle names an export (its fsid) and an inode (number, generation) of that file system.
// Without a subtree check the server opens whatever inode the handle names, inside the export or
// not (nfsd_acceptable() accepts anything under no_subtree_check), and ext4 skips the generation
// check for generation 0, so inode numbers alone reach every file of the data dir's file system:
// the database, other nodes' /persist, the image trees (writable through a persist export).
// Kernel nfsd therefore exports with subtree_check: it walks every handle's dentry up to the
// export root and answers "stale" when it is not below it. A bind mount per export would not
// help: it shares the superblock, and handles are decoded per superblock. The cost of
// subtree_check, handles going stale when a file moves to another directory while open, does not
// apply to images (never modified) and is rare in /persist.
// ganesha (FSAL VFS) has no subtree check: it only checks that the handle's file system is the
// export's, so in ganesha mode a hostile client on the boot network can reach any file of the
// data dir's file system through a forged handle (ganesha-export-config(8), DISCUSSION). Use
// kernel nfsd where nodes are not trusted.

/** Anonymous uid/gid a squashed root becomes (nobody/nogroup on Debian). */
export const anonId = 65534;

/** The export's file system id: 128 bits of sha256(key), UUID-formatted (the dashes keep
 *  exportfs from reading an all-digit string as a number). */
export function fsidOf(key: string): string {
  const h = createHash("sha256").update(key).digest("hex");
  return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20, 32)]
    .join("-");
}

/** The same 128 bits as ganesha's `Filesystem_Id = major.minor` (two unsigned 64-bit numbers). */
export function ganeshaFsidOf(key: string): string {
  const h = fsidOf(key).replaceAll("-", "");
  return `${BigInt(`0x${h.slice(0, 16)}`)}.${BigInt(`0x${h.slice(16)}`)}`;
}

/** The longest path exportfs takes (nfs-utils' NFS_MAXPATHLEN): a longer export is left out of
 *  nfsd's table without a word, exportfs exiting 0 (measured, nfs-utils 2.6.2: 1,024 bytes
 *  exported, 1,025 not), so every node's mount failed while netroot logged its exports applied. */
export const kernelExportPathMax = 1024;

/** /etc/exports.d text for kernel nfsd (exports(5)). */
export function renderKernelExports(set: ExportSet): string {
  for (const p of [...set.images, ...set.persists]) {
    const bytes = new TextEncoder().encode(p.path).length;
    if (bytes > kernelExportPathMax) {
      throw new UserError(
        `cannot export ${p.path} (${bytes} bytes): kernel nfsd's exportfs ignores paths longer ` +
          `than ${kernelExportPathMax} bytes; use a shorter data dir (--data)`,
      );
    }
  }
  const image = `ro,sync,all_squash,anonuid=${anonId},anongid=${anonId},subtree_check`;
  const imageRoot = "ro,sync,no_root_squash,subtree_check";
  const persist = "rw,sync,no_root_squash,subtree_check";
  const lines = ["# Generated by netroot: rewritten whenever nodes or images change."];
  for (const i of set.images) {
    // mountd takes a host entry before a subnet one, whatever their order on the line.
    const fsid = `fsid=${fsidOf(`image:${i.id}`)}`;
    const clients = [...i.nodes.map((ip) => `${ip}(${imageRoot},${fsid})`)];
    lines.push(`${quoted(i.path)} ${[...clients, `${set.subnet}(${image},${fsid})`].join(" ")}`);
  }
  for (const p of set.persists) {
    const opts = p.readOnly ? persist.replace("rw,", "ro,") : persist;
    lines.push(`${quoted(p.path)} ${p.ip}(${opts},fsid=${fsidOf(`persist:${p.mac}`)})`);
  }
  return lines.join("\n") + "\n";
}

export interface GaneshaParams {
  bindAddr: string;
  version: 3 | 4;
  recoveryDir: string;
  /** Export_Id per export key (`image:<id>`, `persist:<mac>`): must not change while mounted,
   *  since NFS file handles carry it. */
  ids: Map<string, number>;
}

/** ganesha.conf: NFSv4 on one TCP port without rpcbind (v3 needs rpcbind running). Every export
 *  defaults to no access and a squashed root; a CLIENT block grants RO to the subnet, every user
 *  squashed (images), RO with root kept to its nodes, or
 *  RW with root kept to the one node (/persist). */
export function renderGaneshaConfig(set: ExportSet, p: GaneshaParams): string {
  const proto = p.version;
  const out = [
    "# Generated by netroot: rewritten whenever nodes or images change; SIGHUP reloads exports.",
    `NFS_CORE_PARAM { Bind_addr = ${p.bindAddr}; Protocols = ${proto}; NFS_Port = 2049; ` +
    `Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; }`,
    `NFSv4 { Graceless = true; Only_Numeric_Owners = true; RecoveryBackend = fs; ` +
    `RecoveryRoot = ${quoted(p.recoveryDir)}; }`,
    // AUTH_SYS tells root only by its port under 1024, which only root binds (kernel nfsd's
    // `secure`, its default): ganesha takes any port by default, and any user of a node claimed
    // uid 0 from its own and was root on the node's /persist and image, root kept there.
    `EXPORT_DEFAULTS { SecType = sys; PrivilegedPort = true; Squash = Root_Squash; ` +
    `Anonymous_Uid = ${anonId}; Anonymous_Gid = ${anonId}; Transports = TCP; ` +
    `Protocols = ${proto}; Access_Type = None; }`,
  ];
  const exp = (key: string, path: string, pseudo: string, client: string) => {
    const id = p.ids.get(key);
    if (id === undefined) throw new Error(`no Export_Id for ${key}`);
    out.push(
      `EXPORT { Export_Id = ${id}; Path = ${quoted(path)}; Pseudo = ${quoted(pseudo)}; ` +
        `Filesystem_Id = ${ganeshaFsidOf(key)}; Access_Type = None; ` +
        `CLIENT { ${client} Protocols = ${proto}; } FSAL { Name = VFS; } }`,
    );
  };
  const ro = "Access_Type = RO; Squash = All_Squash;";
  const roRoot = "Access_Type = RO; Squash = No_Root_Squash;";
  const rw = "Access_Type = RW; Squash = No_Root_Squash;";
  for (const i of set.images) {
    // ganesha takes the first CLIENT block that matches: the image's nodes come first.
    const own = i.nodes.length
      ? `Clients = ${i.nodes.join(", ")}; ${roRoot} Protocols = ${proto}; } CLIENT { `
      : "";
    exp(`image:${i.id}`, i.path, i.pseudo, `${own}Clients = ${set.subnet}; ${ro}`);
  }
  for (const x of set.persists) {
    exp(`persist:${x.mac}`, x.path, x.pseudo, `Clients = ${x.ip}; ${x.readOnly ? roRoot : rw}`);
  }
  out.push("LOG { Default_Log_Level = EVENT; }", "");
  return out.join("\n");
}

/** ganesha's Export_Id is 16 bits (0 is its pseudo root): an EXPORT block with a larger one is
 *  refused, its export not made, and ganesha goes on serving without it. */
const maxExportId = 65535;

/** Keeps known ids, gives each new key the lowest id no export of `known` holds: an id dropped in
 *  this reload is not handed to another export in the same reload (ganesha would take that for a
 *  change of the old export's path and refuse it; clients' handles of the old export carry the
 *  id), and is free again from the next one. Handed out ever higher, ids ran past 65535: a host
 *  on the boot network that moves one address between two MACs it registered drops and re-adds
 *  a /persist export at each move, and every export made after that (a node's /persist, an image
 *  version) was refused by ganesha, silently. */
export function assignExportIds(keys: string[], known: Map<string, number>): Map<string, number> {
  const ids = new Map<string, number>();
  for (const k of keys) if (known.has(k)) ids.set(k, known.get(k)!);
  const taken = new Set(known.values());
  let next = 1;
  for (const k of keys) {
    if (ids.has(k)) continue;
    while (taken.has(next)) next++;
    if (next > maxExportId) throw new Error(`more than ${maxExportId} NFS exports`);
    ids.set(k, next++);
  }
  return ids;
}

// ---- state → export set ----

/** IPv4 address and netmask of the boot network: the boot interface's entry for the server
 *  address (else its first), else the interface holding the server address, else a /24. */
export function bootNetwork(ctx: Context): { address: string; netmask: string } | undefined {
  const ifs = Deno.networkInterfaces().filter((i) => i.family === "IPv4");
  const { interface: name, serverIp } = ctx.config;
  // The server address's own entry first: the interface may hold other (secondary) addresses.
  const i = ifs.find((e) => e.name === name && e.address === serverIp) ??
    ifs.find((e) => e.name === name) ?? ifs.find((e) => e.address === serverIp);
  if (i) return { address: i.address, netmask: i.netmask };
  return ctx.config.serverIp
    ? { address: ctx.config.serverIp, netmask: "255.255.255.0" }
    : undefined;
}

/** What should be exported now, from the database (the truth) and the node settings; a node's
 *  /persist read-only when `readOnly(mac)` says so (PersistRoom.readOnlyFor). */
export function desiredExports(
  ctx: Context,
  readOnly: (mac: string) => boolean = () => false,
): ExportSet {
  const net = bootNetwork(ctx);
  if (!net) {
    throw new UserError("NFS exports need the server address: use --interface or --address");
  }
  const targets = ctx.nodes.exportTargets();
  const images = ctx.images.list().map((i) => i.id).sort()
    .filter((id) => existsSync(ctx.data.rootfs(id)))
    .map((id) => ({
      id,
      path: exportedRootfs(ctx, id),
      pseudo: `/netroot/images/${id}`,
      nodes: targets.filter((t) => t.images.includes(id)).map((t) => t.ip).sort(),
    }));
  const persists = targets.filter((t) => t.persist).map((t) => ({
    mac: t.mac,
    ip: t.ip,
    path: ctx.data.persist(t.mac),
    pseudo: `/netroot/persist/${t.mac.replaceAll(":", "")}`,
    ...(readOnly(t.mac) ? { readOnly: true } : {}),
  }));
  return { subnet: networkCidr(net.address, net.netmask), images, persists };
}

// ---- room on the data dir's file system: /persist read-only while it runs out ----
// A node's root writes its /persist as root, and nfsd gives a kept root CAP_SYS_RESOURCE (its
// CAP_NFSD_SET; ganesha runs as root), which passes quota limits and the blocks ext4 reserves for
// root: one node could fill the data dir's file system, and the database (leases, boots, events),
// initramfs builds and imports would then fail for the whole lab. So every /persist is exported
// read-only while the file system holding them has less than the reserve free (bytes, or inodes),
// and writable again once it has 1/8 more than that (no flapping at the line). A node can still
// write for the time one check and one export reload take: the reserve is sized for it.
// A node with `persist.max` has its own /persist measured every minute, and is read-only alone
// while it takes more: what keeps one node from locking every node's /persist.

export interface Reserve {
  bytes: number;
  inodes: number;
}

/** The room kept: `bytes` when the admin set it (--nfs-reserve; 0 keeps none), else 5 % of the
 *  file system, at most 1 GiB; inodes 5 %, at most 50,000. */
export function reserveFor(space: FsSpace, bytes?: number): Reserve {
  if (bytes === 0) return { bytes: 0, inodes: 0 };
  return {
    bytes: bytes ?? Math.min(2 ** 30, Math.floor(space.totalBytes / 20)),
    inodes: Math.min(50_000, Math.floor(space.totalInodes / 20)),
  };
}

/** Whether /persist is read-only with this much free: under the reserve it is, and once it is,
 *  it stays so until 1/8 more than the reserve is free. */
export function persistShortOfRoom(space: FsSpace, reserve: Reserve, now: boolean): boolean {
  const need = now ? 9 / 8 : 1;
  return space.freeBytesForRoot < reserve.bytes * need || space.freeInodes < reserve.inodes * need;
}

/** Watches the room left where the nodes' /persist are; `changed` runs when they must turn
 *  read-only or writable (the exports are applied again). */
export class PersistRoom {
  readOnly = false;
  /** Nodes whose /persist takes more than their `persist.max`. */
  readonly overBudget = new Set<string>();
  #timer: ReturnType<typeof setInterval> | undefined;
  #budgetTimer: ReturnType<typeof setInterval> | undefined;
  #budgets?: Promise<boolean>;
  #measuring?: Promise<void>;
  /** Ends the measurements under way (stop). */
  #stop = new AbortController();
  constructor(private ctx: Context) {}
  /** Samples once; true when the state changed (logged, and a timeline event). */
  check(): boolean {
    const space = statvfs(this.ctx.data.nodes);
    const reserve = reserveFor(space, this.ctx.config.nfs.reserve);
    const readOnly = persistShortOfRoom(space, reserve, this.readOnly);
    if (readOnly === this.readOnly) return false;
    this.readOnly = readOnly;
    const detail = {
      freeBytes: space.freeBytesForRoot,
      freeInodes: space.freeInodes,
      reserveBytes: reserve.bytes,
      reserveInodes: reserve.inodes,
    };
    if (readOnly) {
      log.error(
        "the data dir's file system is short of room: every node's /persist is read-only " +
          "until it has room again (--nfs-reserve)",
        detail,
      );
    } else log.info("room again on the data dir's file system: /persist writable", detail);
    try {
      recordEvent(
        this.ctx.db,
        null,
        readOnly ? "nfs.persist-read-only" : "nfs.persist-writable",
        detail,
      );
    } catch (e) {
      log.error("could not record the /persist state", { error: (e as Error).message });
    }
    if (readOnly) {
      this.#measuring ??= this.#largest()
        .catch((e) => log.error("measuring the /persist failed", { error: (e as Error).message }))
        .finally(() => this.#measuring = undefined);
    }
    return true;
  }
  /** The nodes whose /persist take the most room, logged and recorded (`nfs.persist-usage`): who
   *  filled the file system, measured once per shortage (every node is locked meanwhile). */
  async #largest(): Promise<void> {
    const sizes: { node: string; bytes: number }[] = [];
    const perInode = bytesPerInode(statvfs(this.ctx.data.nodes));
    for (const n of this.ctx.nodes.list()) {
      const bytes = await treeBytes(this.ctx.data.persist(n.mac), perInode, this.#stop.signal);
      if (this.#stop.signal.aborted) return;
      if (bytes) sizes.push({ node: n.name, bytes });
    }
    const largest = sizes.sort((a, b) => b.bytes - a.bytes).slice(0, 5);
    log.error("the largest /persist", {
      nodes: largest.map((l) => `${l.node}:${l.bytes}`).join(" ") || "none",
    });
    try {
      recordEvent(this.ctx.db, null, "nfs.persist-usage", { largest });
    } catch (e) {
      log.error("could not record the /persist usage", { error: (e as Error).message });
    }
  }
  /** Whether the node's /persist is exported read-only now. */
  readOnlyFor(mac: string): boolean {
    return this.readOnly || this.overBudget.has(mac);
  }
  /** Measures each /persist that has a `persist.max`; true when a node went over or back under
   *  (logged, and a timeline event for the node). */
  async checkBudgets(): Promise<boolean> {
    let changed = false;
    const budgeted = this.ctx.nodes.exportTargets().filter((t) => t.persist && t.persistMax);
    const known = new Set(budgeted.map((t) => t.mac));
    for (const mac of this.overBudget) {
      if (!known.has(mac)) changed = this.overBudget.delete(mac) || changed; // limit removed
    }
    const perInode = bytesPerInode(statvfs(this.ctx.data.nodes));
    for (const t of budgeted) {
      const bytes = await treeBytes(this.ctx.data.persist(t.mac), perInode, this.#stop.signal);
      if (this.#stop.signal.aborted) return changed;
      const over = bytes > t.persistMax!;
      if (over === this.overBudget.has(t.mac)) continue;
      changed = true;
      if (over) this.overBudget.add(t.mac);
      else this.overBudget.delete(t.mac);
      const detail = { bytes, max: t.persistMax };
      if (over) {
        log.warn("a node's /persist is over its persist.max: read-only", { mac: t.mac, ...detail });
      } else {log.info("a node's /persist is within its persist.max again", {
          mac: t.mac,
          ...detail,
        });}
      try {
        recordEvent(
          this.ctx.db,
          t.mac,
          over ? "nfs.persist-over-max" : "nfs.persist-under-max",
          detail,
        );
      } catch (e) {
        log.error("could not record a /persist budget", { error: (e as Error).message });
      }
    }
    return changed;
  }
  /** Checks the room every `everyMs` (a node at 1 Gbit/s writes 125 MB a second) and the
   *  budgets every `budgetMs`; `changed` on a change. */
  watch(changed: () => void, everyMs = 1000, budgetMs = 60_000): void {
    this.#timer = setInterval(() => {
      try {
        if (this.check()) changed();
      } catch (e) {
        log.error("checking the room for /persist failed", { error: (e as Error).message });
      }
    }, everyMs);
    this.#budgetTimer = setInterval(() => {
      this.#budgets ??= this.checkBudgets()
        .then((c) => {
          if (c) changed();
          return c;
        })
        .catch((e) => {
          log.error("checking /persist budgets failed", { error: (e as Error).message });
          return false;
        })
        .finally(() => this.#budgets = undefined);
    }, budgetMs);
  }
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    clearInterval(this.#budgetTimer);
    this.#stop.abort();
    await Promise.all([this.#measuring, this.#budgets]);
  }
}

/** Bytes the tree at `dir` takes of the file system, 0 when it is missing or `signal` ends the
 *  count: its blocks, hard links counted each time, and each of its inodes `bytesPerInode` more.
 *  An empty file takes no block but one of the file system's inodes, which run out too: counting
 *  blocks alone, a node with a `persist.max` made empty files until the inodes went under the
 *  reserve and every node's /persist was locked, what persist.max is there to prevent. With its
 *  inodes charged at the file system's bytes per inode (16 KiB for ext4 by default), no node takes
 *  a larger share of the inodes than of the bytes.
 *  du counts, not a walk of ours: the node's root writes the tree while it is measured, and a walk
 *  by path names followed a directory swapped for a symlink out of it (another node's files
 *  counted as its own), failed past PATH_MAX (what lay deeper counted nothing: persist.max
 *  passed), and held every name of a directory in the server's memory (a million: 594 MB, and a
 *  minute of the server's thread). du walks by open directories without following links, at any
 *  depth, a large directory a batch at a time (31 MB for a million names), in a process of its
 *  own. */
async function treeBytes(dir: string, bytesPerInode: number, signal: AbortSignal): Promise<number> {
  const du = async (unit: string) => {
    const out = await new Deno.Command("du", {
      args: ["--summarize", "--no-dereference", "--one-file-system", "--count-links", unit, dir],
      stdout: "piped",
      stderr: "null", // names the node chose; a file removed while counted is no failure
      signal,
    }).output();
    // The total, even when some entries vanished during the count (exit 1); none: no tree.
    return Number(/^\d+/.exec(new TextDecoder().decode(out.stdout))?.[0] ?? NaN);
  };
  const bytes = await du("-B1");
  if (Number.isNaN(bytes)) return 0;
  const inodes = await du("--inodes");
  return signal.aborted ? 0 : bytes + (inodes || 0) * bytesPerInode;
}

/** The file system's bytes per inode (what an inode is charged in treeBytes); 0 when it has no
 *  fixed number of inodes. */
function bytesPerInode(space: FsSpace): number {
  return space.totalInodes ? Math.floor(space.totalBytes / space.totalInodes) : 0;
}

// ---- the service ----

export interface NfsOptions {
  /** Command prefix for ganesha.nfsd, e.g. ["ip", "netns", "exec", NS] (tests). */
  wrap?: string[];
  /** Recheck interval for changes that fire no event (lease addresses). */
  recheckMs?: number;
  /** Interval of the room checks for /persist (PersistRoom). */
  roomCheckMs?: number;
  /** Interval of the persist.max checks (PersistRoom.checkBudgets). */
  budgetCheckMs?: number;
  /** The kernel exports file (kernelExportsFile) and a command prefix for exportfs (tests). */
  kernelExportsFile?: string;
  exportfsWrap?: string[];
  /** exportfs's table of every export (Debian: /var/lib/nfs/etab). */
  etabFile?: string;
}

export async function startNfs(ctx: Context, opts: NfsOptions = {}): Promise<Service> {
  if (ctx.config.nfs.mode === "kernel") return startKernelNfs(ctx, opts);
  // A `--nfs kernel` run on this data dir left its exports in place (for booted nodes, across a
  // restart); this run does not follow them.
  await dropKernelExports(ctx.data.root, {
    file: opts.kernelExportsFile,
    wrap: opts.exportfsWrap,
    why: `--nfs ${ctx.config.nfs.mode}`,
  });
  if (ctx.config.nfs.mode === "ganesha") return startGanesha(ctx, opts);
  return { name: "nfs", close: () => Promise.resolve() };
}

/** Whether every export of an exports(5) text is a path below `dataDir`: the file a
 *  `--nfs kernel` run on that data dir wrote (another instance's, or one an admin edited, is not
 *  ours to drop). */
export function exportsBelow(text: string, dataDir: string): boolean {
  const below = `"${dataDir.replace(/\/+$/, "")}/`;
  return text.split("\n").every((l) => !l.trim() || l.startsWith("#") || l.startsWith(below));
}

/** Removes the kernel exports file netroot wrote for `dataDir`, and has nfsd drop its exports
 *  (`exportfs -ra`). A kernel run leaves its exports when it stops, for the booted nodes to keep
 *  their roots through a restart; once netroot no longer serves through kernel nfsd (started
 *  again with `--nfs off` or `ganesha`, or uninstalled) nothing follows them any more: every
 *  /persist stayed exported read-write, root kept, and images with root kept, to the addresses
 *  nodes had then, which the lab's DHCP server may give to any machine, and nfs-kernel-server
 *  exported them again at each boot of the server. Returns what it found. */
export async function dropKernelExports(
  dataDir: string,
  o: { file?: string; wrap?: string[]; apply?: boolean; why: string },
): Promise<"none" | "dropped" | "foreign"> {
  const file = o.file ?? kernelExportsFile;
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return "none";
    throw e;
  }
  if (!exportsBelow(text, dataDir)) {
    log.warn(`${file} exports paths outside this data dir: left alone`, { data: dataDir });
    return "foreign";
  }
  Deno.removeSync(file);
  if (o.apply === false) return "dropped";
  const argv = [...(o.wrap ?? []), "exportfs", "-ra"];
  const out = await new Deno.Command(argv[0], { args: argv.slice(1), stderr: "piped" }).output()
    .catch((e) => {
      if (e instanceof Deno.errors.NotFound) return undefined; // no nfs-kernel-server any more
      throw e;
    });
  if (out && !out.success) {
    log.error(`removed ${file}, but exportfs -ra failed: nfsd may still export it`, {
      error: new TextDecoder().decode(out.stderr).trim(),
    });
  } else log.info(`removed the kernel NFS exports of an earlier run (${o.why})`, { file });
  return "dropped";
}

/** followRegistry, failures logged as the exports'. */
function follow(ctx: Context, opts: NfsOptions, apply: () => Promise<void>) {
  return followRegistry(ctx, apply, {
    recheckMs: opts.recheckMs,
    failed: (e) => log.error("applying exports failed", { error: e.message }),
  });
}

function ensurePersistDirs(set: ExportSet): void {
  // Owner-only, as DataDir.makePersist makes them (the node's root writes over NFS as root).
  for (const p of set.persists) mkdirSync(p.path, { recursive: true, mode: 0o700 });
}

/**
 * Why kernel nfsd exports the image trees from a read-only view of images/: its LINK checks
 * neither that the file and the target directory are in one export (RENAME does) nor the file's
 * permissions, so a node's root (root is kept on its image, for its 0600 files, and on its
 * /persist) could hard-link its image's files into its /persist and write them there, and an
 * image file is an object every image holding the same content shares. Before linking, nfsd asks
 * the file's export for write access to its mount (fh_want_write: mnt_want_write), so through a
 * read-only bind mount the link is refused (NFS4ERR_ROFS) whatever file system <data>/nodes is
 * on (tests/nfs_test.ts forges the LINK). The view stays mounted when netroot stops (nodes keep
 * their root while it restarts); found writable, it is made read-only again. Returns what it did.
 */
export function ensureReadOnlyImages(
  data: { images: string; imagesReadOnly: string },
): "mounted" | "remounted" | "kept" {
  const view = data.imagesReadOnly;
  mkdirSync(view, { recursive: true, mode: 0o711 });
  // lstat: mount(2) follows a symlink at the target, and a bind over what it names is not ours.
  const seen = Deno.lstatSync(view), images = Deno.statSync(data.images);
  if (!seen.isDirectory) throw new UserError(`${view} is not a directory: remove it`);
  try {
    if (seen.dev !== images.dev || seen.ino !== images.ino) {
      bindReadOnly(data.images, view);
      return "mounted";
    }
    if (onReadOnlyMount(view)) return "kept";
    remountReadOnly(view);
    return "remounted";
  } catch (e) {
    throw new UserError(
      `--nfs kernel: cannot mount ${data.images} read-only at ${view}: ${(e as Error).message}`,
    );
  }
}

async function startKernelNfs(ctx: Context, opts: NfsOptions): Promise<Service> {
  // nfsd may be a module not loaded yet: modprobe loads it (what nfs-kernel-server would do).
  const hasNfsd = async () =>
    /\bnfsd\b/.test(await Deno.readTextFile("/proc/filesystems").catch(() => "")) ||
    (await new Deno.Command("modprobe", { args: ["-q", "nfsd"], stderr: "null" }).output()
      .then((o) => o.success, () => false));
  if (!(await hasNfsd())) {
    throw new UserError("--nfs kernel: this kernel has no NFS server (nfsd); use --nfs ganesha");
  }
  const onPath = (Deno.env.get("PATH") ?? "").split(":").concat("/usr/sbin", "/sbin")
    .some((d) => existsSync(join(d, "exportfs")));
  if (!onPath) {
    throw new UserError("--nfs kernel needs exportfs (Debian package nfs-kernel-server)");
  }
  await checkKernelServer(ctx.config.nfs.version);
  const view = ensureReadOnlyImages(ctx.data);
  const room = new PersistRoom(ctx);
  room.check();
  if (view !== "kept") {
    log.info(`read-only view of the images ${view}`, { path: ctx.data.imagesReadOnly });
  }
  let last = "", lastOpening = "";
  const etabFile = opts.etabFile ?? "/var/lib/nfs/etab";
  const apply = async () => {
    const set = desiredExports(ctx, (mac) => room.readOnlyFor(mac));
    const text = renderKernelExports(set);
    if (text === last) return;
    ensurePersistDirs(set);
    const file = opts.kernelExportsFile ?? kernelExportsFile;
    mkdirSync(dirname(file), { recursive: true });
    writeFileDurableSync(file, text, 0o644);
    const argv = [...(opts.exportfsWrap ?? []), "exportfs", "-ra"];
    const out = await new Deno.Command(argv[0], { args: argv.slice(1), stderr: "piped" }).output();
    if (!out.success) {
      throw new Error(`exportfs -ra failed: ${new TextDecoder().decode(out.stderr).trim()}`);
    }
    last = text;
    const own = new Set([...set.images, ...set.persists].map((e) => e.path));
    const opening = exportsOpeningDataFs(readText(etabFile), ctx.data.root, own).join(" ");
    if (opening && opening !== lastOpening) {
      log.warn(
        "other exports of the data dir's file system have no subtree check: through them a " +
          "forged NFS file handle reaches any file of it, other nodes' /persist included (add " +
          "subtree_check to them, or put the data dir on a file system of its own)",
        { exports: opening },
      );
    }
    lastOpening = opening;
    recordEvent(ctx.db, null, "nfs.exports", {
      images: set.images.length,
      persist: set.persists.length,
    });
    log.info("exports applied", { images: set.images.length, persist: set.persists.length });
  };
  await apply();
  const f = follow(ctx, opts, apply);
  room.watch(f.changed, opts.roomCheckMs, opts.budgetCheckMs);
  // Exports stay in place on close: running nodes keep their root while netroot restarts.
  return {
    name: "nfs",
    close: async () => {
      await room.stop();
      await f.stop();
    },
  };
}

/** The exports of the system's table (exportfs's etab: `path<TAB>client(options)` lines, the path
 *  with octal escapes) that are not netroot's (`own` paths), lie on the data dir's file system and
 *  have no subtree check. nfsd decodes a handle per file system: through such an export a forged
 *  handle opens any inode of it, whatever export it lies in (measured, Debian 12's nfsd in qemu:
 *  an admin's `<data>/share 10.71.0.0/24(ro,no_subtree_check)` line, exportfs's default, let any
 *  host of the subnet read another node's /persist file, and with no_root_squash netroot.db): the
 *  subtree check on netroot's own exports does not help then. "path client" each. */
export function exportsOpeningDataFs(etab: string, dataDir: string, own: Set<string>): string[] {
  let dev: number;
  try {
    dev = Deno.statSync(dataDir).dev;
  } catch {
    return [];
  }
  const found = new Set<string>();
  for (const line of etab.split("\n")) {
    const [raw, client] = line.split("\t");
    if (!client || !/[(,]no_subtree_check[,)]/.test(client)) continue;
    const path = raw.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    if (own.has(path)) continue;
    try {
      if (Deno.statSync(path).dev !== dev) continue;
    } catch {
      continue;
    }
    found.add(`${path} ${client.replace(/\(.*$/, "")}`);
  }
  return [...found];
}

/** The system's NFS server is running the way `version` needs (netroot only writes exports;
 *  nfs-kernel-server runs nfsd, rpc.mountd and, for NFSv3, rpcbind): otherwise exports would be
 *  applied and every node's mount would hang or be refused without a word on the server. */
export async function checkKernelServer(version: 3 | 4, procDir = "/proc"): Promise<void> {
  const start = "start nfs-kernel-server (systemctl start nfs-kernel-server)";
  const threads = Number(readText(join(procDir, "fs/nfsd/threads")).trim() || "0");
  if (!(threads > 0)) {
    throw new UserError(`--nfs kernel: nfsd is not running (no threads): ${start}`);
  }
  const versions = readText(join(procDir, "fs/nfsd/versions")).trim().split(/\s+/);
  const want = version === 3 ? "3" : "4.2";
  if (!versions.includes(`+${want}`)) {
    throw new UserError(
      `--nfs kernel --nfs-version ${version}: nfsd does not serve NFSv${want} ` +
        `(versions: ${versions.join(" ")}); enable vers${want}=y in /etc/nfs.conf [nfsd] and ` +
        "restart nfs-kernel-server",
    );
  }
  // nfsd asks rpc.mountd about every client and export it has not cached (NFSv4 too).
  if (!processRunning("rpc.mountd", procDir)) {
    throw new UserError(`--nfs kernel: rpc.mountd is not running: ${start}`);
  }
  if (version !== 3) return;
  // NFSv3 clients find mountd (and nfsd) through rpcbind: both must be registered there.
  const out = await new Deno.Command("rpcinfo", {
    args: ["-p", "127.0.0.1"],
    stdout: "piped",
    stderr: "piped",
  }).output().catch((e) => {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  });
  if (!out) {
    throw new UserError("--nfs-version 3 needs rpcbind (Debian package rpcbind) running");
  }
  const table = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new UserError(
      "--nfs-version 3: rpcbind is not running (rpcinfo: " +
        `${new TextDecoder().decode(out.stderr).trim()}): systemctl start rpcbind, then ` +
        "restart nfs-kernel-server",
    );
  }
  for (const [program, name] of [["100005", "rpc.mountd"], ["100003", "nfsd"]]) {
    if (!new RegExp(`^\\s*${program}\\s+3\\s+tcp\\b`, "m").test(table)) {
      throw new UserError(
        `--nfs-version 3: ${name} is not registered with rpcbind for NFSv3 over TCP: ` +
          "restart nfs-kernel-server (after rpcbind)",
      );
    }
  }
}

/** Some live process runs the program `name` (its /proc/PID/comm): a zombie (state Z in
 *  /proc/PID/stat, a daemon that exited and was not reaped yet) serves nothing. */
function processRunning(name: string, procDir: string): boolean {
  const comm = name.slice(0, 15); // the kernel keeps 15 characters of the name
  for (const e of Deno.readDirSync(procDir)) {
    if (!/^\d+$/.test(e.name) || readText(join(procDir, e.name, "comm")).trim() !== comm) continue;
    const stat = readText(join(procDir, e.name, "stat"));
    // "PID (comm) S …": the state follows the last ")" (comm may hold one).
    if (stat.slice(stat.lastIndexOf(")") + 1).trim()[0] !== "Z") return true;
  }
  return false;
}

/** ganesha's files under <data>/run/ganesha/. */
function ganeshaPaths(ctx: Context) {
  const dir = join(ctx.data.run, "ganesha");
  return {
    conf: join(dir, "ganesha.conf"),
    log: join(dir, "ganesha.log"),
    pid: join(dir, "ganesha.pid"),
    ids: join(dir, "export-ids.json"),
    recovery: join(dir, "recovery"),
  };
}

/** The export set as ganesha.conf, with Export_Ids kept across renders (handles carry them). */
class GaneshaConfig {
  #ids: Map<string, number>;
  text = "";
  set!: ExportSet;
  constructor(
    private ctx: Context,
    private paths: ReturnType<typeof ganeshaPaths>,
    private serverIp: string,
    private room: PersistRoom,
  ) {
    // An id ganesha refuses (past 16 bits: an older netroot handed those out) is given anew.
    const saved = Object.entries(readJson(paths.ids) as Record<string, number>);
    this.#ids = new Map(
      saved.filter(([, id]) => Number.isInteger(id) && id > 0 && id <= maxExportId),
    );
  }
  get exports(): number {
    return this.#ids.size;
  }
  /** Renders the current state; writes it and returns true when it changed. */
  update(): boolean {
    this.set = desiredExports(this.ctx, (mac) => this.room.readOnlyFor(mac));
    const keys = [
      ...this.set.images.map((i) => `image:${i.id}`),
      ...this.set.persists.map((p) => `persist:${p.mac}`),
    ];
    // Taken once written: an id dropped by a config ganesha never got may still be its export's.
    const ids = assignExportIds(keys, this.#ids);
    const t = renderGaneshaConfig(this.set, {
      bindAddr: this.serverIp,
      version: this.ctx.config.nfs.version,
      recoveryDir: this.paths.recovery,
      ids,
    });
    if (t === this.text) return false;
    ensurePersistDirs(this.set);
    // Whole or not at all, durably: a power cut must not lose export-ids.json, which keeps the
    // nodes' NFS handles valid across restarts.
    writeFileDurableSync(this.paths.ids, JSON.stringify(Object.fromEntries(ids)), 0o644);
    writeFileDurableSync(this.paths.conf, t, 0o644);
    this.#ids = ids;
    this.text = t;
    return true;
  }
}

/** ganesha.nfsd under supervision: a crashed one is restarted; nodes' hard mounts recover. */
function ganeshaSupervisor(
  ctx: Context,
  opts: NfsOptions,
  paths: ReturnType<typeof ganeshaPaths>,
  config: GaneshaConfig,
): Supervisor {
  let logStart = 0;
  return new Supervisor({
    spawn: () => {
      logStart = fileSize(paths.log);
      const argv = [
        ...(opts.wrap ?? []),
        "ganesha.nfsd",
        ...["-F", "-L", paths.log, "-f", paths.conf, "-p", paths.pid, "-N", "NIV_EVENT"],
      ];
      try {
        // ganesha takes 2-3 s to wind down on SIGTERM.
        return startProcess({ argv, stopGraceMs: 10_000 });
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
        throw new UserError(
          `--nfs ganesha needs ${argv[0]} (Debian packages nfs-ganesha nfs-ganesha-vfs)`,
        );
      }
    },
    // Ready when ganesha logs that it serves (checking the port would not work from outside a
    // network namespace); an early exit is a startup failure, explained from its log.
    ready: async (proc) => {
      try {
        await proc.waitReady(
          () => logSince(paths.log, logStart).includes("NFS SERVER INITIALIZED"),
          20_000,
        );
      } catch (e) {
        if (!(e instanceof StartFailure)) throw e;
        const problems = logProblems(paths.log, logStart);
        if (!e.exit) throw new Error(`ganesha.nfsd not ready after 20 s: ${problems}`);
        throw new Error(
          `ganesha.nfsd exited at startup (code ${e.exit.code}): ${problems}` +
            (ctx.config.nfs.version === 3 ? " (NFSv3 needs rpcbind running)" : ""),
        );
      }
      // ganesha serves even when an export could not be created (its path's file system not
      // found, the FSAL refusing it): the nodes would get ENOENT for their root, unexplained.
      const failed = exportFailures(logSince(paths.log, logStart));
      if (failed.length) {
        throw new Error(
          `ganesha.nfsd could not create ${failed.length} export(s) (${failed.join(", ")}): ` +
            logProblems(paths.log, logStart),
        );
      }
      const bind = ctx.config.serverIp;
      log.info("ganesha serving", { pid: proc.pid, bind, exports: config.exports });
      recordEvent(ctx.db, null, "nfs.start", { pid: proc.pid, exports: config.exports });
    },
    onExit: (s, inMs) => {
      log.error("ganesha.nfsd exited; restarting", { code: s.code, inMs });
      recordEvent(ctx.db, null, "nfs.exit", {
        code: s.code,
        log: logProblems(paths.log, logStart),
      });
    },
    onRestartFailed: (e) => log.error("ganesha restart failed", { error: e.message }),
  });
}

async function startGanesha(ctx: Context, opts: NfsOptions): Promise<Service> {
  const serverIp = ctx.config.serverIp;
  if (!serverIp) {
    throw new UserError("--nfs ganesha needs the server address (--interface or --address)");
  }
  // Said at every start: the admin chose this mode, and may not have read docs/security.md.
  log.warn(
    "ganesha cannot keep a forged NFS file handle inside its export: a host on the boot " +
      "network can reach files of the data dir's file system; use --nfs kernel where nodes or " +
      "the boot network are not trusted (docs/security.md)",
  );
  const paths = ganeshaPaths(ctx);
  mkdirSync(paths.recovery, { recursive: true });
  // A ganesha left running by a netroot that was killed holds port 2049: stop it, but only when
  // its PID (from our pid file) still runs ganesha.nfsd with our config.
  await stopStale(
    paths.pid,
    (argv) => argv[0].endsWith("ganesha.nfsd") && argv.includes(paths.conf),
    10_000,
    (pid) => log.warn("stopping a ganesha.nfsd left by a previous run", { pid }),
  );
  const room = new PersistRoom(ctx);
  room.check();
  const config = new GaneshaConfig(ctx, paths, serverIp, room);
  config.update();
  const ganesha = ganeshaSupervisor(ctx, opts, paths, config);
  await ganesha.start();

  const f = follow(ctx, opts, async () => {
    // ganesha appends to its log (~290 bytes an export reload, for the server's life) and holds
    // it open: copied to .1 and emptied in place at each recheck past the bound. Unbounded, it
    // grew by every reload and was read whole at each ganesha start.
    await rotateInPlace(paths.log, stderrLogBytes);
    if (!config.update()) return;
    // ganesha ≥ 2.6 rereads its exports on SIGHUP, when its signal thread gets to it: two SIGHUPs
    // pending there are one, and it went from the config before last to the last, an id the one
    // between freed given to another export in one step (refused: "Path for export update …
    // doesn't match"). The next config waits until it has read this one.
    const from = fileSize(paths.log);
    if (ganesha.process?.signal("SIGHUP") && !(await reread(paths.log, from))) {
      log.warn("ganesha did not say it reread its exports within 10 s", { log: paths.log });
    }
    const counts = { images: config.set.images.length, persist: config.set.persists.length };
    recordEvent(ctx.db, null, "nfs.exports", counts);
    log.info("exports reloaded", counts);
  });
  room.watch(f.changed, opts.roomCheckMs, opts.budgetCheckMs);

  return {
    name: "nfs",
    async close() {
      await room.stop();
      await f.stop();
      await ganesha.stop();
    },
  };
}

// ---- helpers ----

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

function readJson(path: string): unknown {
  try {
    return JSON.parse(readText(path) || "{}");
  } catch {
    return {};
  }
}

function fileSize(path: string): number {
  try {
    return Deno.statSync(path).size;
  } catch {
    return 0;
  }
}

/** The log from byte `offset` (a size taken before); a log rotated since (shorter than offset)
 *  from its start. Cut as bytes: cut as text, one multi-byte character before the offset put a
 *  "Reread exports complete" of an earlier reload after it (a wait met at once) or cut the new
 *  one off (a wait of 10 s a reload). */
export function logSince(path: string, offset: number): string {
  let bytes: Uint8Array;
  try {
    bytes = Deno.readFileSync(path);
  } catch {
    return "";
  }
  return new TextDecoder().decode(bytes.length < offset ? bytes : bytes.subarray(offset));
}

/** Whether ganesha logged, past `offset` of its log and within 10 s, that it reread its exports. */
async function reread(path: string, offset: number): Promise<boolean> {
  for (const end = Date.now() + 10_000; Date.now() < end;) {
    if (logSince(path, offset).includes("Reread exports complete")) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

/** The pseudo paths of the exports ganesha's log says it could not create. */
export function exportFailures(logText: string): string[] {
  return [...logText.matchAll(/Could not create export for \(([^)]*)\)/g)].map((m) => m[1]);
}

/** CRIT lines ganesha always logs without dbus, kerberos or rpcbind (e2e-recipe.md §8). */
const harmless = /dbus|credentials for principal|krb5|keytab|Cannot register NFS V4/i;

/** The CRIT/FATAL lines ganesha logged since `offset` (its own words for why it failed). */
function logProblems(path: string, offset: number): string {
  const lines = logSince(path, offset).split("\n")
    .filter((l) => /:(CRIT|FATAL|MAJ) :/.test(l) && !harmless.test(l))
    .map((l) => l.replace(/^.*?:(CRIT|FATAL|MAJ) :/, ""));
  return lines.slice(-5).join("; ") || `see ${path}`;
}
