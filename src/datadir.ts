// Layout of the data dir (WalT-like): the database, the write token, and the trees NFS exports.
//   netroot.db                         state (the truth)
//   token                              API write token, mode 0600
//   images/<id>/rootfs/                an image tree (exported read-only)
//   images/<id>/manifest               its content manifest (id = sha256 of this file)
//   nodes/<mac>/fs -> ../../images/<id>/rootfs   the deploy symlink
//   nodes/<mac>/persist/               the node's /persist (exported read-write to that node only)
//   nodes/<mac>/vm/                    virtual node disks and console log
//   initramfs/                         built initramfs cache
//   tmp/                               imports in progress (wiped at start)
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";

export class DataDir {
  constructor(readonly root: string) {}
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
    for (const d of [this.root, this.images, this.nodes, this.initramfs, this.tmp, this.run]) {
      await Deno.mkdir(d, { recursive: true });
    }
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
