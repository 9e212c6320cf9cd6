// Shared fixtures of the image tests: a throwaway store, and trees/tarballs built with the real
// tools (GNU tar, mknod, setcap) holding what an OS image holds.
import { Hono } from "hono";
import type { Context } from "../src/context.ts";
import { DataDir } from "../src/datadir.ts";
import { type Db, openDatabase } from "../src/db.ts";
import { imageRoutes } from "../src/images/api.ts";
import { ImageStore } from "../src/images/store.ts";
import { setXattr } from "../src/linux/xattr.ts";
import { setLogSink } from "../src/log.ts";
import { NodeRegistry } from "../src/nodes.ts";
import { Rebooter } from "../src/reboot.ts";

setLogSink(() => {}); // keep test output readable

export interface TempStore {
  dir: string;
  data: DataDir;
  db: Db;
  store: ImageStore;
  close(): Promise<void>;
}

export async function tempStore(dataRoot?: string): Promise<TempStore> {
  const dir = await Deno.makeTempDir({ prefix: "netroot-images-test-" });
  const data = new DataDir(dataRoot ?? `${dir}/data`);
  await data.ensure();
  const db = openDatabase(data.db);
  const store = new ImageStore(data, db);
  return {
    dir,
    data,
    db,
    store,
    async close() {
      try {
        await store.idle();
        db.close(); // throws when a test closed it already (a power cut's next start)
      } finally {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    },
  };
}

/** The image API over `t`'s store (with a node registry of its own unless `nodes` is given). */
export function imagesApp(t: TempStore, nodes?: NodeRegistry): Hono {
  const changes = new EventTarget();
  t.store.changes = changes;
  nodes ??= new NodeRegistry(t.data, t.db, t.store, new Rebooter(t.db), changes);
  const ctx = { data: t.data, db: t.db, images: t.store, nodes, changes };
  return new Hono().route("/api/v1/images", imageRoutes(ctx as unknown as Context));
}

/** imagesApp served on loopback until `signal` aborts. */
export function serveImages(t: TempStore, signal: AbortSignal, nodes?: NodeRegistry) {
  return Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal, onListen() {} },
    imagesApp(t, nodes).fetch,
  );
}

export function sh(cmd: string, ...args: string[]): string {
  const out = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

export const T0 = 1_600_000_000; // fixed mtimes make ids comparable across tests

/**
 * A small OS-like tree: kernel + modules + initrd (bootable), a hardlink pair, a relative and an
 * absolute symlink, /dev/null (char 1,3), a block device, a fifo, a suid binary, a file with a
 * security.capability (setcap) and a user.* xattr, odd file names.
 */
export function buildSampleTree(root: string, opts: { kernel?: boolean } = {}): void {
  const w = (p: string, s: string, mode = 0o644) => {
    Deno.mkdirSync(`${root}${p.slice(0, p.lastIndexOf("/"))}`, { recursive: true });
    Deno.writeTextFileSync(`${root}${p}`, s);
    Deno.chmodSync(`${root}${p}`, mode);
  };
  Deno.mkdirSync(root, { recursive: true });
  w("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
  w("/etc/hostname", "sample\n");
  w("/usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755);
  Deno.linkSync(`${root}/usr/bin/tool`, `${root}/usr/bin/tool-alias`);
  w("/usr/bin/su", "suid\n", 0o4755);
  Deno.copyFileSync("/bin/true", `${root}/usr/bin/ping`);
  Deno.chmodSync(`${root}/usr/bin/ping`, 0o755);
  sh("setcap", "cap_net_raw+ep", `${root}/usr/bin/ping`);
  setXattr(`${root}/etc/hostname`, "user.netroot.test", new TextEncoder().encode("hello"));
  Deno.symlinkSync("usr/bin", `${root}/bin`);
  Deno.symlinkSync("/etc/passwd", `${root}/etc/passwd.abs`);
  Deno.mkdirSync(`${root}/dev`);
  sh("mknod", "-m", "0666", `${root}/dev/null`, "c", "1", "3");
  sh("mknod", "-m", "0660", `${root}/dev/sda`, "b", "8", "0");
  sh("mkfifo", "-m", "0600", `${root}/run-fifo`);
  w("/home/user/space name.txt", "x");
  w("/home/user/tab\tname", "y");
  w("/home/user/ünïcödé", "z");
  Deno.chownSync(`${root}/home/user/space name.txt`, 1000, 1000);
  Deno.chownSync(`${root}/home/user`, 1000, 1000);
  if (opts.kernel !== false) {
    w("/boot/vmlinuz-6.1.0-test", "kernel image\n");
    w("/boot/initrd.img-6.1.0-test", "initrd\n");
    Deno.symlinkSync("boot/vmlinuz-6.1.0-test", `${root}/vmlinuz`);
    Deno.symlinkSync("boot/initrd.img-6.1.0-test", `${root}/initrd.img`);
    w("/lib/modules/6.1.0-test/modules.dep", "");
  }
  fixTimes(root);
}

/** Sets every mtime (not following symlinks) to T0 so trees built at different times match. */
export function fixTimes(root: string): void {
  sh("find", root, "-exec", "touch", "-h", "-d", `@${T0}`, "{}", "+");
}

/** `tar` of the whole tree (with ./ and xattrs); compression by GNU tar's flag. */
export function tarOf(
  dir: string,
  out: string,
  compress?: "gzip" | "xz" | "zstd" | "bzip2",
): string {
  sh(
    "tar",
    "--xattrs",
    "--xattrs-include=*",
    "--numeric-owner",
    ...(compress ? [`--${compress}`] : []),
    "-C",
    dir,
    "-cf",
    out,
    ".",
  );
  return out;
}

export async function dirEntries(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

export function rowCount(db: Db): number {
  return (db.prepare("SELECT count(*) AS n FROM images").get() as { n: number }).n;
}

/** Nothing half-imported: no row, no image directory, an empty tmp/. */
export async function assertStoreEmpty(t: TempStore): Promise<void> {
  const images = await dirEntries(t.data.images);
  const tmp = await dirEntries(t.data.tmp);
  const rows = rowCount(t.db);
  if (images.length || tmp.length || rows) {
    throw new Error(
      `store not empty: images=${images.join(",")} tmp=${tmp.join(",")} rows=${rows}`,
    );
  }
}
