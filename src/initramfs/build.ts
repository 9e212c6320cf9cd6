// Builds the node initramfs (layout: docs/architecture.md "Initramfs layout") as a zstd- or
// gzip-compressed newc cpio, cached per (image, kernel version, program version) under the data dir.
import { resolveInRoot } from "../../contract/rootpath.ts";
import { createWriteStream } from "node:fs";
import { dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import { constants as zc, createGzip, createZstdCompress } from "node:zlib";
import type { DataDir } from "../datadir.ts";
import { notFound, UserError } from "../errors.ts";
import { logger } from "../log.ts";
import { releaseFreeMemory } from "../linux/malloc.ts";
import { type CpioEntry, CpioWriter } from "./cpio.ts";
import { EM_AARCH64, EM_X86_64, machineName, readElfFile } from "./elf.ts";
import { libraryDirs, sharedLibraries } from "./libs.ts";
import { keepNewest, sweepTempFiles } from "./prune.ts";
import { syncFile } from "../linux/fsops.ts";
import {
  NETCONSOLE_MODULES,
  parseModuleIndex,
  planModules,
  renderModulesPlan,
  WANTED_MODULES,
} from "./modules.ts";
import {
  compiledLauncher,
  NODE_DENO,
  NODE_EXE,
  NODE_SCRIPT,
  nodeLauncher,
  type ProgramFiles,
  programFor,
} from "./bundle.ts";

export type { ProgramFiles } from "./bundle.ts";

const log = logger("initramfs");

export type Compression = "zstd" | "gzip" | "lz4" | "none";

/**
 * zstd when the image kernel can unpack it (CONFIG_RD_ZSTD, Debian's default since bookworm):
 * measured on the 95.6 MB deno binary, zstd -9 gives 36.2 MB in 2.1 s where gzip -9 gives 41.3 MB
 * in 3.8 s (gzip -6: 42.6 MB, 1.5 s). gzip -9 otherwise: every initramfs-capable kernel has it.
 */
export function initramfsCompression(rootfs: string, kv: string): Compression {
  try {
    const config = imageFile(rootfs, `boot/config-${kv}`, MAX_IMAGE_TEXT);
    return config && /^CONFIG_RD_ZSTD=y$/m.test(Deno.readTextFileSync(config)) ? "zstd" : "gzip";
  } catch {
    return "gzip";
  }
}

/** The largest module index file or kernel config read from an image: Debian 6.1's largest
 *  (modules.alias) is 1.3 MB, where 7.9 MB of modules.dep lines took 190 MB and 1.7 s of the
 *  server's thread to parse; a sparse file of any size costs the image nothing. */
const MAX_IMAGE_TEXT = 8 << 20;

/**
 * The host path of `path` in the image, resolved as chroot(rootfs) would (a link to /etc/shadow
 * is the image's /etc/shadow, never the server's); undefined when it does not exist. Anything but
 * a regular file (of at most `maxBytes`) is refused before it is opened: an image may ship FIFOs,
 * whose open waits for a writer for ever (a synchronous one, the kernel config or the first
 * module's ELF header, stopped the whole server), and device nodes (the server's /dev/zero, read
 * without end, or its disks).
 */
function imageFile(rootfs: string, path: string, maxBytes = Infinity): string | undefined {
  const r = resolveInRoot(rootfs, path);
  if (r.missing) return undefined;
  const st = Deno.statSync(r.host);
  const what = JSON.stringify(`/${path}`);
  if (!st.isFile) throw new UserError(`${what} in the image is not a regular file`);
  if (st.size > maxBytes) {
    throw new UserError(`${what} in the image is larger than ${maxBytes >> 20} MiB`);
  }
  return r.host;
}

function compressor(c: Compression) {
  return c === "zstd"
    ? createZstdCompress({ params: { [zc.ZSTD_c_compressionLevel]: 9 } })
    : createGzip({ level: 9 });
}

/** What an archive takes from the image in all, checked as its tree is made, before a byte of it
 *  is written: Debian 6.1's modules for a node are 16 MB (its whole kernel's 397 MB), arm64 libc
 *  and the rest of the runtime's libraries 3 MB. Each file may be 4 GiB of holes, free to the
 *  image: 6.8 GB of module links to one took 10 s to compress (an 8 MiB modules.dep lists 500,000),
 *  and an arm64 libc of 2 GiB 11 s, at each build any neighbour asks for. */
const MAX_IMAGE_BYTES = 256 << 20;

/** Archive contents in write order; parents are added as directories before their children. */
class Tree {
  entries: CpioEntry[] = [];
  #paths = new Map<string, CpioEntry>();
  /** Bytes of the host files read from under `rootfs` (the image's modules; an aarch64 node's
   *  libraries): at most MAX_IMAGE_BYTES. */
  #imageBytes = 0;

  constructor(readonly rootfs: string) {}

  /** Adds `e` unless the same is there already (false); throws when another entry is. */
  add(e: CpioEntry): boolean {
    const path = e.path.replace(/^\/+/, "");
    const parent = dirname(path);
    if (parent !== ".") this.dir(parent);
    const old = this.#paths.get(path);
    if (old) {
      // The same host file reached twice (e.g. the loader as PT_INTERP and as DT_NEEDED) is fine.
      if (old.type === "hostfile" && e.type === "hostfile" && old.source === e.source) return false;
      if (old.type === "symlink" && e.type === "symlink" && old.target === e.target) return false;
      throw new Error(`initramfs path /${path} wanted twice with different contents`);
    }
    const entry = { ...e, path };
    this.#paths.set(path, entry);
    this.entries.push(entry);
    return true;
  }

  dir(path: string, mode = 0o755): void {
    const p = path.replace(/^\/+/, "");
    const old = this.#paths.get(p);
    if (old?.type === "dir") return;
    if (old) throw new Error(`initramfs path /${p} is both a directory and a ${old.type}`);
    this.add({ type: "dir", path: p, mode });
  }

  hostFile(path: string, source: string, mode: number): void {
    const size = Deno.statSync(source).size;
    if (!this.add({ type: "hostfile", path, source, mode, size })) return;
    if (!source.startsWith(this.rootfs.replace(/\/*$/, "/"))) return;
    if ((this.#imageBytes += size) > MAX_IMAGE_BYTES) {
      throw new UserError(
        `the files taken from the image (modules, libraries) hold more than ${
          MAX_IMAGE_BYTES >> 20
        } MiB`,
      );
    }
  }
}

export interface BuildOptions {
  /** The image tree (its /lib/modules/<kernelVersion> provides the modules). */
  rootfs: string;
  kernelVersion: string;
  /** Output file, written in place: callers wanting atomicity pass a temp name. */
  out: string;
  program: ProgramFiles;
  /** Default: what the image kernel supports (initramfsCompression). */
  compression?: Compression;
  wantedModules?: string[];
}

export interface BuildResult {
  /** Compressed size. */
  bytes: number;
  /** Uncompressed cpio size. */
  cpioBytes: number;
  files: number;
  /** Module paths in load order (relative to /lib/modules/<kv>/). */
  modules: string[];
  /** Wanted modules this kernel lacks (skipped). */
  missing: string[];
  compression: Compression;
  ms: number;
}

/** The node's machine: the program's (x86-64 or aarch64, the machines with a launcher), which
 *  the image kernel's modules must match. */
function nodeMachine(program: ProgramFiles, firstModule?: string): number {
  const exe = program.kind === "bundle" ? program.deno : program.exe;
  const m = readElfFile(exe).machine;
  if (m !== EM_X86_64 && m !== EM_AARCH64) {
    throw new UserError(
      `the node program is ${machineName(m)}: node initramfs images are built for x86-64 and ` +
        "aarch64 only",
    );
  }
  if (firstModule && /\.ko$/.test(firstModule)) {
    const km = readElfFile(firstModule).machine;
    if (km !== m) {
      throw new UserError(
        `the image kernel is ${machineName(km)} but the node program is ${machineName(m)}`,
      );
    }
  }
  return m;
}

/** The machine an image's programs are for (its /bin/sh, else its /sbin/init), or undefined. */
export function imageMachine(rootfs: string): number | undefined {
  for (const p of ["/bin/sh", "/sbin/init", "/bin/busybox"]) {
    try {
      const host = resolveInRoot(rootfs, p).host;
      // Only a regular file is opened: a FIFO placed there by an image would block the read.
      if (Deno.statSync(host).isFile) return readElfFile(host).machine;
    } catch { /* missing or not ELF (a script): next */ }
  }
  return undefined;
}

const hostMachine = () => readElfFile(Deno.execPath()).machine;

/** The kernel's module index: /lib/modules/<kv>, or /usr/lib/modules/<kv> in a merged-/usr
 *  image without the /lib link. `modRel` is where it was found, relative to the root. */
async function readModuleIndex(rootfs: string, kv: string) {
  // Each file resolved in the image itself: the directory's host path joined with a name followed
  // the image's absolute links on the host (modules.alias -> /etc/… put the server's lines
  // into the archive's plan).
  const read = async (path: string) => {
    const host = imageFile(rootfs, path, MAX_IMAGE_TEXT);
    return host === undefined ? undefined : await Deno.readTextFile(host);
  };
  let modRel = `lib/modules/${kv}`;
  let dep = await read(`${modRel}/modules.dep`);
  if (dep === undefined) {
    modRel = `usr/lib/modules/${kv}`;
    dep = await read(`${modRel}/modules.dep`);
  }
  if (dep === undefined) {
    throw new UserError(
      `the image has no /lib/modules/${kv}/modules.dep (run \`depmod ${kv}\` in the image)`,
    );
  }
  const alias = await read(`${modRel}/modules.alias`);
  const idx = parseModuleIndex({
    dep,
    builtin: await read(`${modRel}/modules.builtin`),
    softdep: await read(`${modRel}/modules.softdep`),
    alias,
  });
  return { modRel, idx, alias };
}

/** The initramfs tree (docs/architecture.md "Initramfs layout"): the program, its libraries, the
 *  modules in `order` (the candidates; `modulesPlan` says which of them the init loads for which
 *  device or mode) and in `netconsoleOrder` (loaded when the command line asks for netconsole),
 *  read from `modSources` (relative path → host path). A runtime of the
 *  server's machine takes the server's libraries; one of another machine (aarch64 node, x86-64
 *  server) the image's own. */
function initramfsTree(
  p: ProgramFiles,
  machine: number,
  rootfs: string,
  kv: string,
  order: string[],
  netconsoleOrder: string[],
  modSources: Map<string, string>,
  modulesPlan: string,
): Tree {
  const tree = new Tree(rootfs);
  for (const d of ["dev", "proc", "sys", "run", "tmp", "newroot", "netroot"]) tree.dir(d);
  tree.add({ type: "char", path: "dev/console", mode: 0o600, major: 5, minor: 1 });
  tree.add({ type: "char", path: "dev/null", mode: 0o666, major: 1, minor: 3 });
  const exe = p.kind === "bundle" ? p.deno : p.exe;
  if (p.kind === "bundle") {
    tree.add({ type: "file", path: "init", mode: 0o755, data: nodeLauncher(machine) });
    tree.hostFile(NODE_DENO, p.deno, 0o755);
    tree.hostFile(NODE_SCRIPT, p.script, 0o644);
  } else {
    tree.add({ type: "file", path: "init", mode: 0o755, data: compiledLauncher(machine) });
    tree.hostFile(NODE_EXE, p.exe, 0o755);
  }
  // Libraries at their real host paths, with the names the loader opens as symlinks to them.
  const libs = machine === hostMachine()
    ? sharedLibraries(exe)
    : sharedLibraries(exe, libraryDirs(machine), rootfs);
  for (const lib of libs) {
    tree.hostFile(lib.real, lib.host, 0o755);
    if (lib.path !== lib.real) tree.add({ type: "symlink", path: lib.path, target: lib.real });
  }
  for (const [name, list] of [["modules.order", order], ["netconsole.order", netconsoleOrder]]) {
    tree.add({
      type: "file",
      path: `netroot/${name}`,
      mode: 0o644,
      data: new TextEncoder().encode((list as string[]).map((m) => m + "\n").join("")),
    });
  }
  tree.add({
    type: "file",
    path: "netroot/modules.plan",
    mode: 0o644,
    data: new TextEncoder().encode(modulesPlan),
  });
  for (const [rel, host] of modSources) {
    // Compressed modules stay compressed: init passes MODULE_INIT_COMPRESSED_FILE to finit_module.
    tree.hostFile(`lib/modules/${kv}/${rel}`, host, 0o644);
  }
  return tree;
}

/** A sink for the archive's bytes: `write` each chunk (awaiting backpressure), then `end`. */
interface Sink {
  write(chunk: Uint8Array): Promise<void>;
  end(): Promise<void>;
  abort(): Promise<void>;
}

/** zlib's compressors (zstd, gzip) as a node stream into the file. */
function zlibSink(c: "zstd" | "gzip", path: string): Sink {
  const out = compressor(c);
  const written = pipeline(out, createWriteStream(path, { mode: 0o644 }));
  written.catch(() => {}); // observed below; avoids an unhandled rejection while writing
  // The file failing (ENOSPC) ends the pipeline, which destroys the compressor with a chunk in
  // it: that chunk's callback never comes. Each write also ends with the pipeline's failure: on
  // a full disk a build (and every node asking for its initramfs) waited for ever.
  const failed = new Promise<never>((_, reject) => written.catch(reject));
  failed.catch(() => {});
  return {
    // Resolved once zlib has taken the chunk in (the write's callback), not merely queued it: the
    // cpio writer reuses its buffer (Sink).
    write: (chunk) =>
      Promise.race([
        new Promise<void>((resolve, reject) => out.write(chunk, (e) => e ? reject(e) : resolve())),
        failed,
      ]),
    end: async () => {
      out.end();
      await written;
    },
    abort: async () => {
      out.destroy();
      await written.catch(() => {});
    },
  };
}

/** The archive as is (none), or through `lz4 -l` (the legacy frame, the one the kernel reads). */
async function fileSink(c: "lz4" | "none", path: string): Promise<Sink> {
  const file = await Deno.open(path, { write: true, create: true, truncate: true, mode: 0o644 });
  if (c === "none") {
    const w = file.writable.getWriter();
    return {
      write: (chunk) => w.write(chunk),
      end: () => w.close(),
      abort: () => w.abort(),
    };
  }
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("lz4", {
      args: ["-l", "-9", "-q", "-c"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    file.close();
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError("lz4 not found: an lz4 initramfs needs it (Debian package lz4)", 503);
    }
    throw e;
  }
  const copied = child.stdout.pipeTo(file.writable);
  copied.catch(() => {});
  const w = child.stdin.getWriter();
  return {
    write: (chunk) => w.write(chunk),
    end: async () => {
      await w.close();
      const [st, err] = await Promise.all([child.status, new Response(child.stderr).text()]);
      await copied;
      if (!st.success) throw new Error(`lz4 failed: ${err.trim()}`);
    },
    abort: async () => {
      await w.abort().catch(() => {});
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
      await copied.catch(() => {});
      await child.stderr.cancel().catch(() => {});
    },
  };
}

/** Writes the tree as a (compressed) cpio archive to `path` (removed again on failure). */
async function writeCpio(tree: Tree, path: string, compression: Compression): Promise<CpioWriter> {
  const out = compression === "zstd" || compression === "gzip"
    ? zlibSink(compression, path)
    : await fileSink(compression, path);
  const cpio = new CpioWriter((chunk) => out.write(chunk));
  try {
    for (const e of tree.entries) await cpio.add(e);
    await cpio.finish();
    await out.end();
  } catch (e) {
    await out.abort();
    await Deno.remove(path).catch(() => {});
    // Node's and Deno's words for ENOSPC name neither the file nor the disk: the admin reading
    // the log (and the node's refusal) is told which file system to make room on.
    if (/no space left on device|os error 28|ENOSPC/i.test((e as Error)?.message ?? "")) {
      throw new UserError(`no space left on device for the initramfs ${path}`, 507);
    }
    throw e;
  }
  return cpio;
}

/** The most modules an archive ships. Debian 6.1's wanted ones with their dependencies are 62
 *  (its whole kernel: 4,023). An image's modules.dep can list any number: one wanted module
 *  depending on 100,000 links to one file took 38 s, 8 s of it at a stretch on the server's only
 *  thread. */
const MAX_MODULES = 1024;

/** The host file of each module to ship (relative path → host path); their number bounded
 *  before any is looked at. */
function moduleFiles(rootfs: string, modRel: string, modules: Set<string>): Map<string, string> {
  if (modules.size > MAX_MODULES) {
    throw new UserError(
      `the image's modules.dep makes ${modules.size} modules to ship, more than ${MAX_MODULES}`,
    );
  }
  const files = new Map<string, string>();
  for (const rel of modules) {
    const host = imageFile(rootfs, `${modRel}/${rel}`);
    if (!host) {
      throw new UserError(`module ${JSON.stringify(rel)} of modules.dep is not in the image`);
    }
    files.set(rel, host);
  }
  return files;
}

export async function buildInitramfs(opts: BuildOptions): Promise<BuildResult> {
  const t0 = performance.now();
  const kv = opts.kernelVersion;
  if (!/^[\w.+~-]+$/.test(kv)) throw new UserError(`bad kernel version ${JSON.stringify(kv)}`);
  const { modRel, idx, alias } = await readModuleIndex(opts.rootfs, kv);
  const wanted = opts.wantedModules ?? WANTED_MODULES;
  const plan = planModules(idx, wanted);
  if (plan.missing.length) {
    log.info("modules not in this kernel, skipped", { kv, missing: plan.missing.join(",") });
  }
  // netconsole is loaded later, with its target (overlay/init.ts), and only when asked for.
  const netconsole = planModules(idx, NETCONSOLE_MODULES).order;
  const modSources = moduleFiles(opts.rootfs, modRel, new Set([...plan.order, ...netconsole]));
  const machine = nodeMachine(opts.program, modSources.values().next().value);
  const tree = initramfsTree(
    opts.program,
    machine,
    opts.rootfs,
    kv,
    plan.order,
    netconsole,
    modSources,
    renderModulesPlan(idx, wanted, alias),
  );
  const compression = opts.compression ?? initramfsCompression(opts.rootfs, kv);
  const cpio = await writeCpio(tree, opts.out, compression);
  return {
    bytes: (await Deno.stat(opts.out)).size,
    cpioBytes: cpio.bytes,
    files: cpio.files,
    modules: plan.order,
    missing: plan.missing,
    compression,
    ms: Math.round(performance.now() - t0),
  };
}

/** What ensureInitramfs needs of an image (ImageStore.get's result). */
export interface BootableImage {
  id: string;
  name?: string;
  bootable: boolean | number;
  kernelVersion?: string | null;
  reason?: string | null;
}

/** The slice of the server Context the builder uses. */
export interface InitramfsContext {
  data: DataDir;
  images: { get(ref: string): BootableImage | undefined | Promise<BootableImage | undefined> };
}

const inflight = new Map<string, Promise<string>>();
/** Every ensureInitramfs call under way, from its first step: the program it packs is bundled
 *  into the data dir's cache before its build is in `inflight`. */
const calls = new Set<Promise<string>>();
/** A failed build is not tried again for this long: any neighbour on the boot network can ask for
 *  any image's initramfs (`?image=`, a registered MAC), and each request for an image whose build
 *  fails would start a build again, seconds of CPU each. */
export const BUILD_RETRY_MS = 60_000;
/** The last failure of each key, while it holds (pruned as failures are recorded). */
const failures = new Map<string, { error: Error; at: number }>();

/** Settles when no initramfs is being built (a boot starts one in the background; shutdown and
 *  tests wait for it before closing the database or removing the data dir). */
export async function initramfsBuildsSettled(): Promise<void> {
  while (calls.size) await Promise.allSettled([...calls]);
}

/** Cache file of one (image, kernel, program) triple. */
export function initramfsFileName(
  imageId: string,
  kv: string,
  program: ProgramFiles,
  compression: Compression,
): string {
  return `${imageId}-${kv}-${program.hash.slice(0, 16)}.cpio.${
    compression === "zstd" ? "zst" : "gz"
  }`;
}

/**
 * The path of the image's initramfs for the running program, building it if needed. Concurrent
 * callers for the same key share one build; the file appears complete or not at all (temp name,
 * fsync, then rename), so a killed build or a power cut leaves only a `.tmp` file that a later
 * build sweeps. A key whose build failed less than BUILD_RETRY_MS ago gets that failure again.
 */
export function ensureInitramfs(
  ctx: InitramfsContext,
  imageId: string,
  opts: { program?: ProgramFiles } = {},
): Promise<string> {
  const call = initramfsFor(ctx, imageId, opts);
  calls.add(call);
  call.then(() => calls.delete(call), () => calls.delete(call));
  return call;
}

/** What an image version's tree says about its initramfs — the node's machine (its /bin/sh) and
 *  the compression its kernel takes (its config, up to 8 MiB) — read once per tree: a version's
 *  tree never changes, and read at every request (any neighbour's GET, cached file or not) an
 *  8 MiB config took 9 ms of the server's only thread per request, where one costs 0.2 ms. The
 *  oldest go past MAX_TREE_FACTS. */
const facts = new Map<string, { machine: number; compression: Compression }>();
const MAX_TREE_FACTS = 1024;

function treeFacts(rootfs: string, kv: string): { machine: number; compression: Compression } {
  const key = `${rootfs}\0${kv}`;
  const known = facts.get(key);
  if (known) return known;
  const inode = () => {
    try {
      return Deno.statSync(rootfs).ino;
    } catch {
      return undefined;
    }
  };
  const before = inode();
  const f = {
    machine: imageMachine(rootfs) ?? EM_X86_64,
    compression: initramfsCompression(rootfs, kv),
  };
  // Kept only when read from one tree there all along: a thin version's tree is renamed into
  // place or away whole (src/images/store.ts), and what is read while it is missing says nothing.
  if (before !== undefined && before === inode()) {
    if (facts.size >= MAX_TREE_FACTS) facts.delete(facts.keys().next().value!);
    facts.set(key, f);
  }
  return f;
}

async function initramfsFor(
  ctx: InitramfsContext,
  imageId: string,
  opts: { program?: ProgramFiles },
): Promise<string> {
  const img = await ctx.images.get(imageId);
  if (!img) throw notFound(`image ${imageId}`);
  if (!img.bootable || !img.kernelVersion) {
    throw new UserError(
      `image ${img.name ?? img.id} is not bootable: ${img.reason ?? "no kernel found"}`,
      409,
    );
  }
  const cache = ctx.data.initramfs;
  const rootfs = ctx.data.rootfs(img.id);
  const tree = treeFacts(rootfs, img.kernelVersion);
  const program = opts.program ?? await programFor(tree.machine, join(cache, "program"));
  const compression = tree.compression;
  const name = initramfsFileName(img.id, img.kernelVersion, program, compression);
  const key = join(cache, name); // per data dir: a test process has many
  const failed = failures.get(key);
  if (failed && Date.now() - failed.at < BUILD_RETRY_MS) {
    const ago = Math.round((Date.now() - failed.at) / 1000);
    const again = `${failed.error.message} (the build failed ${ago} s ago; tried again ${
      BUILD_RETRY_MS / 1000
    } s after it)`;
    throw failed.error instanceof UserError
      ? new UserError(again, failed.error.status)
      : new Error(again);
  }
  // Looked up and registered with no await between: a concurrent caller for the key finds it.
  let build = inflight.get(name);
  if (!build) {
    build = buildOnce(img.id, img.kernelVersion, rootfs, program, compression, cache, name)
      .then((path) => {
        failures.delete(key);
        return path;
      }, (e) => {
        const now = Date.now();
        for (const [k, f] of failures) if (now - f.at >= BUILD_RETRY_MS) failures.delete(k);
        failures.set(key, { error: e as Error, at: now });
        throw e;
      })
      .finally(() => inflight.delete(name));
    inflight.set(name, build);
  }
  return await build;
}

async function buildOnce(
  imageId: string,
  kv: string,
  rootfs: string,
  program: ProgramFiles,
  compression: Compression,
  cache: string,
  name: string,
): Promise<string> {
  const path = join(cache, name);
  try {
    await Deno.stat(path);
    return path;
  } catch { /* not built yet */ }
  await Deno.mkdir(cache, { recursive: true });
  await sweepTempFiles(cache);
  const tmp = join(cache, `.${name}.${Deno.pid}.tmp`);
  try {
    const r = await buildInitramfs({ rootfs, kernelVersion: kv, out: tmp, program, compression });
    // On the disk before it has its name: the name alone is trusted later, and a rename can
    // reach the disk (any journal commit) before the file's data (ext4 allocates its blocks at
    // writeback), so a power cut would leave a truncated archive served to every node.
    await syncFile(tmp);
    await Deno.rename(tmp, path);
    // The previous program version's file stays for a rollback; older ones go.
    await keepNewest(cache, (n) => n.startsWith(`${imageId}-`) && /\.cpio\.(gz|zst)$/.test(n), 2);
    log.info("built", {
      image: imageId.slice(0, 12),
      kv,
      file: name,
      bytes: r.bytes,
      files: r.files,
      modules: r.modules.length,
      compression,
      ms: r.ms,
    });
    return path;
  } finally {
    await Deno.remove(tmp).catch(() => {});
    // zstd's context and the read buffers are free now but stay resident in the heap under what
    // was allocated since (~35 MB in a server, measured): give them back before the boot storm
    // that a build usually precedes.
    releaseFreeMemory();
  }
}

/** What of the image store the cache follows: the versions whose trees must stay on disk. */
interface NeededVersions {
  neededTrees(): Set<string>;
}

/** Drops the cached initramfs of every version nothing boots now (ImageStore.neededTrees: the
 *  current ones, those nodes are set to or booted last): kept until its version was removed,
 *  each version ever booted held its ≈ 40 MB for ever, though its tree, 1 % of that, was
 *  pruned. A version booted again gets both written again. */
export async function pruneInitramfsCache(
  ctx: { data: DataDir; images: NeededVersions },
): Promise<void> {
  const needed = ctx.images.neededTrees();
  try {
    for await (const e of Deno.readDir(ctx.data.initramfs)) {
      const id = /^([0-9a-f]{64})-/.exec(e.name)?.[1];
      if (id && !needed.has(id)) {
        await Deno.remove(join(ctx.data.initramfs, e.name)).catch(() => {});
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/**
 * Fire-and-forget, one at a time: the initramfs of every bootable version something boots
 * (pruneInitramfsCache) for the running program.
 * Call at server start so a program upgrade rebuilds before nodes ask (cache hits are cheap).
 */
export function prebuildAll(
  ctx: InitramfsContext & { images: NeededVersions & { list(): BootableImage[] } },
): Promise<void> {
  return (async () => {
    const needed = ctx.images.neededTrees();
    for (const img of ctx.images.list()) {
      if (!img.bootable || !needed.has(img.id)) continue;
      await ensureInitramfs(ctx, img.id).catch((e) =>
        log.warn("prebuild failed", { image: img.id, error: (e as Error).message })
      );
    }
  })();
}
