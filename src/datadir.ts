// Layout of the data dir (WalT-like): the database, the write token, and the trees NFS exports.
//   netroot.db                         state (the truth)
//   token                              API write token, mode 0600
//   images/<id>/rootfs/                an image tree (exported read-only)
//   images/<id>/manifest               its content manifest (id = sha256 of this file)
//   images-ro/                         `serve --nfs kernel`: a read-only bind mount of images/,
//                                      what kernel nfsd exports the trees from (src/nfs.ts)
//   nodes/<mac>/fs -> ../../images/<id>/rootfs   the deploy symlink
//   nodes/<mac>/persist/               the node's /persist (exported read-write to that node only)
//   nodes/<mac>/vm/                    virtual node disks and serial console log
//   nodes/<mac>/console/               the node's netconsole log (src/netconsole.ts)
//   objects/<2 hex>/<key>              every image file once (images/objects.ts), 0700
//   initramfs/                         built initramfs cache
//   tmp/                               imports in progress (wiped at start)
//   ssh/                               the server's ssh key pair and the nodes' pinned host keys
//                                      (0700, made on first need by src/nodessh.ts)
// Modes: nothing here is for other local users. The directories on the way to the NFS exports
// (the root, images/) are 0711: others may pass through (NFSv4 clients walk the server's path,
// root-squashed, to reach an export) but not list them; nodes/ is 0710, group nogroup (65534, the
// group a squashed client has): a node's root owns the mode of its /persist and puts set-uid or
// device files there, which a local user of the server must not reach; everything secret is
// owner-only: the database and the token 0600, each node's persist/, vm/ and console/ (disks, and
// console logs holding the boot's token) 0700, run/ tmp/ initramfs/ 0700.
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chmodSync, existsSync } from "node:fs";
import { markTopDir } from "./linux/fsops.ts";

export class DataDir {
  /** Absolute, whatever was given (`--data lab`): processes started elsewhere get its paths (a
   *  vnode's qemu runs in its VM's directory, where it makes its QMP socket: every relative path
   *  on its command line, its pid file first, led nowhere and no vnode started). */
  readonly root: string;
  constructor(root: string) {
    this.root = resolve(root);
  }
  get db() {
    return join(this.root, "netroot.db");
  }
  get token() {
    return join(this.root, "token");
  }
  get images() {
    return join(this.root, "images");
  }
  image(id: string) {
    return join(this.root, "images", id);
  }
  rootfs(id: string) {
    return join(this.root, "images", id, "rootfs");
  }
  manifest(id: string) {
    return join(this.root, "images", id, "manifest");
  }
  /** The read-only view of images/ kernel nfsd exports from. */
  get imagesReadOnly() {
    return join(this.root, "images-ro");
  }
  get nodes() {
    return join(this.root, "nodes");
  }
  node(mac: string) {
    return join(this.root, "nodes", mac);
  }
  nodeFs(mac: string) {
    return join(this.root, "nodes", mac, "fs");
  }
  persist(mac: string) {
    return join(this.root, "nodes", mac, "persist");
  }
  vm(mac: string) {
    return join(this.root, "nodes", mac, "vm");
  }
  /** The content-addressed file store the image trees are hard links into (images/objects.ts). */
  get objects() {
    return join(this.root, "objects");
  }
  /** The node's netconsole log directory (src/netconsole.ts). */
  console(mac: string) {
    return join(this.root, "nodes", mac, "console");
  }
  get initramfs() {
    return join(this.root, "initramfs");
  }
  get tmp() {
    return join(this.root, "tmp");
  }
  get run() {
    return join(this.root, "run");
  }
  async ensure(): Promise<void> {
    const modes: [string, number][] = [
      [this.root, 0o711],
      [this.images, 0o711],
      [this.nodes, 0o710],
      [this.initramfs, 0o700],
      [this.objects, 0o700],
      [this.tmp, 0o700],
      [this.run, 0o700],
    ];
    for (const [d, mode] of modes) {
      await Deno.mkdir(d, { recursive: true, mode });
      await Deno.chmod(d, mode); // an existing (older, or admin-made) directory is narrowed too
    }
    // Squashed NFSv4 clients pass through nodes/ by its group, local users do not: a node's root
    // made its /persist 0755 with a set-uid root shell in it, and any user of the server ran it
    // as root (or opened the server's disks through a device node made there).
    if (Deno.uid() === 0) await Deno.chown(this.nodes, null, NFS_ANON_GID);
    // Image trees are made in tmp/ (imports, copies, sessions' trees) and renamed into images/:
    // each one in a block group of its own (ext4's allocator), not among the inodes the last
    // removed tree freed, which a file system without a journal skips one by one for a minute
    // (find_inode_bit → recently_deleted, most of the kernel's time in an import after a
    // removal). Elsewhere a no-op.
    markTopDir(this.tmp);
    // The object store's 256 fan-out directories, made once here rather than by the first
    // imports (256 directory creations in an import's time).
    for (let i = 0; i < 256; i++) {
      const d = join(this.objects, i.toString(16).padStart(2, "0"));
      try {
        Deno.mkdirSync(d, { mode: 0o700 });
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      }
    }
    // Data dirs of older versions: imported versions' images/<id>/ were world-readable (their
    // set-uid files runnable by any user of the server), nodes' persist/ and vm/ too.
    for await (const e of Deno.readDir(this.images)) {
      if (e.isDirectory) await narrow(join(this.images, e.name));
    }
    for await (const e of Deno.readDir(this.nodes)) {
      if (!e.isDirectory) continue;
      for (const d of [join(this.nodes, e.name, "persist"), join(this.nodes, e.name, "vm")]) {
        await narrow(d);
      }
    }
  }
  /** Creates a node's /persist, owner-only (the node's root reaches it over NFS as root). */
  makePersist(mac: string): void {
    privateDir(this.persist(mac));
  }
  /** Creates a virtual node's directory, owner-only: its disks are the node's data, its console
   *  log shows the boot token. */
  makeVm(mac: string): void {
    privateDir(this.vm(mac));
  }
  /** Creates a node's netconsole directory, owner-only: the kernel log shows the boot token. */
  makeConsole(mac: string): void {
    privateDir(this.console(mac));
  }
}

/** The group an NFS server gives a squashed client (nfs-utils' and ganesha's anonymous gid). */
const NFS_ANON_GID = 65534;

/** Creates `path` owner-only (its parents as needed). The parent usually exists: one mkdir, no
 *  recursive walk (a boot storm registers hundreds of nodes a second). */
function privateDir(path: string): void {
  try {
    Deno.mkdirSync(path, { mode: 0o700 });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      Deno.mkdirSync(join(path, ".."), { recursive: true });
      Deno.mkdirSync(path, { recursive: true, mode: 0o700 });
    } else if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    else if (!Deno.lstatSync(path).isDirectory) {
      throw new Error(`${path} exists and is not a directory`);
    }
  }
  chmodSync(path, 0o700);
}

async function narrow(path: string): Promise<void> {
  try {
    const st = await Deno.lstat(path);
    if (st.isDirectory && (st.mode ?? 0) & 0o077) await Deno.chmod(path, 0o700);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/** The checkout root when running from source (deno.json beside main.ts), else undefined. */
export function checkoutRoot(): string | undefined {
  const here = fileURLToPath(new URL("..", import.meta.url));
  return existsSync(join(here, "deno.json")) && existsSync(join(here, "main.ts"))
    ? here
    : undefined;
}

/** Default data dir: ./netroot-data in a checkout, /var/lib/netroot for an installed program. */
export function defaultDataDir(): string {
  const env = Deno.env.get("NETROOT_DATA");
  if (env) return env;
  const co = checkoutRoot();
  return co ? join(co, "netroot-data") : "/var/lib/netroot";
}
