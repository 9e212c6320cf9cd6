// From an import source to a root file system tree: a rootfs tarball (any compression GNU tar
// reads), a directory, or an OCI/Docker image (archive or layout directory) whose layers are
// applied in order with whiteouts and opaque directories. The caller owns `rootfs` (a fresh path
// in the data dir's tmp/) and removes it on failure.
import { basename, dirname, join, normalize } from "node:path";
import { UserError } from "../errors.ts";
import {
  type Compression,
  describe,
  extractArchive,
  extractFile,
  listArchive,
  runDrained,
  sniff,
} from "./tar.ts";
import { type CachedHash, hashFileSync, type Progress } from "./walk.ts";

export interface Unpacked {
  /** e.g. "tar+gzip", "directory", "oci", "docker" */
  format: string;
  /** Digests computed during extraction (see walk.ts scanTree). */
  cache: Map<string, CachedHash>;
}

const expected =
  "expected a directory, a tar archive (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2) or an OCI/Docker image archive";

export async function unpack(
  source: string,
  rootfs: string,
  opts: { onProgress?: Progress; signal?: AbortSignal } = {},
): Promise<Unpacked> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(source);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`${source}: no such file or directory`);
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new UserError(`${source}: permission denied`);
    }
    throw e;
  }
  if (st.isDirectory) {
    const layout = await imageLayout(source, source);
    await Deno.mkdir(rootfs);
    if (layout) {
      await applyLayers(layout, rootfs, source, opts);
      return { format: layout.kind, cache: new Map() };
    }
    await copyTree(source, rootfs, opts);
    return { format: "directory", cache: new Map() };
  }
  if (!st.isFile) {
    throw new UserError(`unknown format: ${source} is not a regular file; ${expected}`);
  }

  const head = await readHead(source, 0x8800);
  const compression = sniff(head);
  if (!compression) {
    throw new UserError(`unknown format: ${source} is ${describe(head)}; ${expected}`);
  }
  if (compression === "none") await checkTarEnd(source, st.size);
  await Deno.mkdir(rootfs);
  const members = await extractArchive(source, compression, rootfs, {
    onProgress: opts.onProgress,
    signal: opts.signal,
    what: source,
  });
  const layout = await imageLayout(rootfs, source);
  if (layout) {
    // The archive held an image's blobs, not a root file system: apply its layers.
    const archive = `${rootfs}.archive`;
    await Deno.rename(rootfs, archive);
    layout.layers = layout.layers.map((l) => ({
      ...l,
      path: archive + l.path.slice(rootfs.length),
    }));
    await Deno.mkdir(rootfs);
    await applyLayers(layout, rootfs, source, opts);
    await Deno.remove(archive, { recursive: true });
    return { format: layout.kind, cache: new Map() };
  }
  const touched = new Set<string>();
  for (const p of members.paths.keys()) for (const a of ancestorsOf(p)) touched.add(a);
  touched.add("/");
  const listed = new Set([...members.paths].filter(([, dir]) => dir).map(([p]) => p));
  normalizeDirs(rootfs, touched, listed);
  return { format: compression === "none" ? "tar" : `tar+${compression}`, cache: members.cache };
}

async function readHead(path: string, n: number): Promise<Uint8Array> {
  const f = await Deno.open(path);
  try {
    const buf = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const r = await f.read(buf.subarray(got));
      if (r === null) break;
      got += r;
    }
    return buf.subarray(0, got);
  } catch (e) {
    throw new UserError(`cannot read ${path}: ${(e as Error).message}`);
  } finally {
    f.close();
  }
}

/** An uncompressed tar ends with two zero blocks; GNU tar accepts a cut at a header boundary
 *  silently, so we look before extracting anything. */
async function checkTarEnd(path: string, size: number): Promise<void> {
  const bad = () => new UserError(`truncated archive: ${path} (no end-of-archive marker)`);
  if (size % 512 !== 0 || size < 1536) throw bad();
  const f = await Deno.open(path);
  try {
    await f.seek(size - 1024, Deno.SeekMode.Start);
    const tail = new Uint8Array(1024);
    let got = 0;
    while (got < 1024) {
      const r = await f.read(tail.subarray(got));
      if (r === null) break;
      got += r;
    }
    if (got < 1024 || tail.some((b) => b !== 0)) throw bad();
  } finally {
    f.close();
  }
}

async function copyTree(
  src: string,
  dest: string,
  { onProgress, signal }: { onProgress?: Progress; signal?: AbortSignal },
): Promise<void> {
  onProgress?.({ phase: "copy", done: 0 });
  // cp -a keeps owners, modes, hardlinks, xattrs, devices and times; -x stays on one file system
  // (importing "/" of a machine must not descend into /proc).
  const out = await runDrained("cp", [
    "-a",
    "-v",
    "--one-file-system",
    "--reflink=auto",
    `${src}/.`,
    dest,
  ], signal);
  if (!out.ok) {
    const err = out.stderr.trim().split("\n");
    if (err.some((l) => /No space left on device/.test(l))) {
      throw new UserError(`no space left on device while importing ${src}`, 500);
    }
    throw new UserError(`cannot copy ${src}: ${err[0].replace(/^\S*\bcp: /, "")}`);
  }
  onProgress?.({ phase: "copy", done: 1, total: 1 });
}

/** "/a/b/c" → "/", "/a", "/a/b" */
export function ancestorsOf(rel: string): string[] {
  const out: string[] = [];
  let i = rel.indexOf("/", 1);
  if (rel !== "/") out.push("/");
  while (i > 0) {
    out.push(rel.slice(0, i));
    i = rel.indexOf("/", i + 1);
  }
  return out;
}

function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return null;
    throw e;
  }
}

/**
 * Directories tar had to create or that a layer changed without carrying them (parents of
 * members missing from the archive, the root of an archive without "./") would get the import's
 * clock as mtime: the id would change from one import to the next. They get fixed metadata
 * (0755, root:root, mtime 0) instead.
 */
function normalizeDirs(rootfs: string, touched: Set<string>, listed: Set<string>): void {
  for (const rel of touched) {
    if (listed.has(rel)) continue;
    const full = rootfs + (rel === "/" ? "" : rel);
    const st = lstatOrNull(full);
    if (!st?.isDirectory) continue;
    Deno.chmodSync(full, 0o755);
    Deno.chownSync(full, 0, 0);
    Deno.utimeSync(full, 0, 0);
  }
}

// ---- OCI / Docker images ----

interface Layout {
  kind: "oci" | "docker";
  layers: { path: string; digest?: string }[];
}

async function readJson(path: string, what: string): Promise<unknown> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new UserError(
      `corrupt image archive ${what}: ${basename(path)}: ${(e as Error).message}`,
    );
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

function inside(dir: string, rel: string, what: string): string {
  const p = normalize(join(dir, rel));
  if (!p.startsWith(dir + "/")) {
    throw new UserError(`corrupt image archive ${what}: bad path ${rel}`);
  }
  return p;
}

function blobPath(dir: string, digest: string, what: string): string {
  const m = /^(sha256|sha512):([0-9a-f]+)$/.exec(digest ?? "");
  if (!m) throw new UserError(`corrupt image archive ${what}: bad digest ${digest}`);
  return join(dir, "blobs", m[1], m[2]);
}

const hostArch = Deno.build.arch === "aarch64" ? "arm64" : "amd64";

interface Descriptor {
  mediaType?: string;
  digest: string;
  platform?: { os?: string; architecture?: string };
}

/** The layers of an image archive laid out in `dir`, or undefined when dir is not one. */
async function imageLayout(dir: string, what: string): Promise<Layout | undefined> {
  if (await exists(join(dir, "manifest.json"))) {
    // docker save (both the classic <id>/layer.tar layout and Docker 25+'s OCI blobs).
    const m = await readJson(join(dir, "manifest.json"), what);
    if (Array.isArray(m) && m.every((x) => Array.isArray(x?.Layers))) {
      if (m.length !== 1) {
        const tags = m.flatMap((x) => x.RepoTags ?? []).join(", ");
        throw new UserError(
          `${what} holds ${m.length} images${tags ? ` (${tags})` : ""}: save one image per archive`,
        );
      }
      return {
        kind: "docker",
        layers: (m[0].Layers as string[]).map((l) => {
          const blob = /^blobs\/(sha256)\/([0-9a-f]{64})$/.exec(l);
          return { path: inside(dir, l, what), digest: blob ? `${blob[1]}:${blob[2]}` : undefined };
        }),
      };
    }
  }
  if (!(await exists(join(dir, "oci-layout"))) || !(await exists(join(dir, "index.json")))) {
    return undefined;
  }
  let index = await readJson(join(dir, "index.json"), what) as { manifests?: Descriptor[] };
  for (let depth = 0; depth < 4; depth++) {
    const all = (index.manifests ?? []).filter((d) => d.platform?.architecture !== "unknown");
    const matching = all.filter((d) =>
      !d.platform || (d.platform.os === "linux" && d.platform.architecture === hostArch)
    );
    const pick = all.length === 1 ? all[0] : matching.length === 1 ? matching[0] : undefined;
    if (!pick) {
      throw new UserError(
        all.length
          ? `${what} holds ${all.length} images and none single for linux/${hostArch}`
          : `corrupt image archive ${what}: index.json lists no image`,
      );
    }
    const doc = await readJson(blobPath(dir, pick.digest, what), what) as {
      manifests?: Descriptor[];
      layers?: Descriptor[];
    };
    if (doc.manifests) {
      index = doc; // a nested index (multi-platform image)
      continue;
    }
    if (!Array.isArray(doc.layers)) {
      throw new UserError(`corrupt image archive ${what}: manifest ${pick.digest} has no layers`);
    }
    return {
      kind: "oci",
      layers: doc.layers.map((l) => ({ path: blobPath(dir, l.digest, what), digest: l.digest })),
    };
  }
  throw new UserError(`corrupt image archive ${what}: index nesting too deep`);
}

const WH = ".wh.", OPAQUE = ".wh..wh..opq";

function removeTree(full: string): void {
  // Deno.remove does not follow a symlink it is given: the link itself goes.
  Deno.removeSync(full, { recursive: true });
}

/** Applies the layers in order, OCI changeset semantics (image-spec layer.md). */
async function applyLayers(
  layout: Layout,
  rootfs: string,
  what: string,
  { onProgress, signal }: { onProgress?: Progress; signal?: AbortSignal },
): Promise<void> {
  const listedAll = new Set<string>(), touchedAll = new Set<string>(["/"]);
  const n = layout.layers.length;
  const at = (rel: string) => rootfs + (rel === "/" ? "" : rel);
  for (const [i, layer] of layout.layers.entries()) {
    const lw = `layer ${i + 1}/${n} of ${what}`;
    onProgress?.({ phase: "layers", done: i, total: n });
    if (!(await exists(layer.path))) {
      throw new UserError(`corrupt image archive ${what}: ${lw} is missing`);
    }
    if (layer.digest?.startsWith("sha256:") && hashFileSync(layer.path) !== layer.digest.slice(7)) {
      throw new UserError(`corrupt image archive ${what}: ${lw} does not match its digest`);
    }
    const members = await listArchive(layer.path, lw);
    const whiteouts: string[] = [], opaques: string[] = [];
    const entries: [string, boolean][] = [];
    for (const [rel, dir] of members) {
      const base = basename(rel), parent = dirname(rel);
      if (base === OPAQUE) opaques.push(parent);
      else if (base.startsWith(WH)) whiteouts.push(join(parent, base.slice(WH.length)));
      else entries.push([rel, dir]);
    }
    const layerDirs = new Set(entries.filter(([, d]) => d).map(([p]) => p));
    const touched = new Set<string>();
    for (const p of [...entries.map(([p]) => p), ...whiteouts]) {
      for (const a of ancestorsOf(p)) touched.add(a);
    }
    for (const d of opaques) for (const a of [...ancestorsOf(d), d]) touched.add(a);

    // Only act through real directories: a lower layer's symlink must not lead a whiteout or a
    // member out of the tree.
    const realDir = new Map<string, boolean>();
    const throughRealDirs = (rel: string) =>
      ancestorsOf(rel).every((a) => {
        let ok = realDir.get(a);
        if (ok === undefined) {
          const st = lstatOrNull(at(a));
          ok = st === null || st.isDirectory;
          realDir.set(a, ok);
        }
        return ok;
      });
    const saved = new Map<string, Date>();
    for (const a of touched) {
      if (layerDirs.has(a) || !listedAll.has(a)) continue;
      const st = lstatOrNull(at(a));
      if (st?.isDirectory && st.mtime) saved.set(a, st.mtime);
    }
    for (const w of whiteouts) {
      if (throughRealDirs(w) && lstatOrNull(at(w))) removeTree(at(w));
    }
    for (const d of opaques) {
      if (!throughRealDirs(d) || !lstatOrNull(at(d))?.isDirectory) continue;
      for (const e of Deno.readDirSync(at(d))) removeTree(`${at(d)}/${e.name}`);
    }
    for (const [rel, dir] of entries) {
      if (rel === "/" || !throughRealDirs(rel)) continue;
      const st = lstatOrNull(at(rel));
      // A type change replaces the lower entry (a directory over a file or symlink, or back).
      if (st && (dir ? !st.isDirectory : st.isDirectory)) {
        removeTree(at(rel));
        realDir.delete(rel);
      }
    }
    realDir.clear();
    for (const [rel] of entries) {
      if (!throughRealDirs(rel)) {
        const link = ancestorsOf(rel).find((a) => !realDir.get(a));
        throw new UserError(
          `${lw}: ${rel} would be written through the symlink ${link}; refusing (unsafe image)`,
        );
      }
    }
    await extractFile(layer.path, rootfs, lw, [`--exclude=${WH}*`], signal);
    for (const [rel, mtime] of saved) Deno.utimeSync(at(rel), mtime, mtime);
    for (const d of layerDirs) listedAll.add(d);
    for (const t of touched) touchedAll.add(t);
  }
  onProgress?.({ phase: "layers", done: n, total: n });
  normalizeDirs(rootfs, touchedAll, listedAll);
}

export type { Compression };
