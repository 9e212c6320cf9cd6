// From an import source to a root file system tree: a rootfs tarball (any compression GNU tar
// reads), a directory, or an OCI/Docker image (archive or layout directory) whose layers are
// applied in order with whiteouts and opaque directories. The caller owns `rootfs` (a fresh path
// in the data dir's tmp/) and removes it on failure. Nothing here acts outside `rootfs`: see
// archivepath.ts for the rules every name from an archive goes through.
import { readTextUpTo, readUpTo, syncfsLater } from "../linux/fsops.ts";
import { resolveInRoot } from "../../contract/rootpath.ts";
import { UserError } from "../errors.ts";
import {
  ancestorsOf,
  archivePath,
  type Blocker,
  type Member,
  place,
  type Placed,
  TreeView,
  unsafe,
} from "./archivepath.ts";
import {
  type Compression,
  describe,
  extractArchive,
  extractFile,
  listMembers,
  roomIn,
  runDrained,
  sniff,
} from "./tar.ts";
import { type CachedHash, manifestOfWritten, type Progress } from "./walk.ts";
import { hashFile } from "./sha256.ts";
import type { ManifestEntry } from "../../contract/manifest.ts";

export interface Unpacked {
  /** e.g. "tar+gzip", "directory", "oci", "docker" */
  format: string;
  /** Digests computed during extraction (see walk.ts scanTree). */
  cache: Map<string, CachedHash>;
  /** The tree's manifest entries when the import's reader wrote all of it (no scan needed). */
  manifest?: { entries: ManifestEntry[]; bytes: number };
  /** A flush of the file system started once the tree was written (the commit awaits it). */
  flushing?: Promise<void>;
  /** Directories of a tarball's tree that it does not list (tar made them as parents of its
   *  members): their metadata is ours (normalizeDirs), not the archive's. */
  implied?: Set<string>;
}

const expected =
  "expected a directory, a tar archive (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2) or an OCI/Docker image archive";

export async function unpack(
  source: string,
  rootfs: string,
  opts: {
    onProgress?: Progress;
    signal?: AbortSignal;
    /** A tarball's members (their sizes as stored: a sparse file's whole size) are listed first
     *  and refused past this room, as a layer's are, before anything is written or hashed. */
    room?: { bytes: number; inodes?: number };
    /** The tarball is a root file system tree, whatever it holds (a node's upper with a
     *  /manifest.json or /oci-layout of its own is no image archive). */
    treeOnly?: boolean;
  } = {},
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
  if (opts.room) await listMembers(source, source, { signal: opts.signal, room: opts.room });
  await Deno.mkdir(rootfs);
  const { members, cache, made, written } = await extractArchive(source, compression, rootfs, {
    onProgress: opts.onProgress,
    signal: opts.signal,
    what: source,
  });
  const tree = new TreeView(rootfs);
  refuseDetours(tree, members.values(), source);
  const layout = opts.treeOnly ? undefined : await imageLayout(rootfs, source);
  if (layout) {
    // The archive held an image's blobs, not a root file system: apply its layers.
    const archive = `${rootfs}.archive`;
    await Deno.rename(rootfs, archive);
    layout.layers = layout.layers.map((l) => ({
      ...l,
      path: l.path && archive + l.path.slice(rootfs.length),
    }));
    await Deno.mkdir(rootfs);
    await applyLayers(layout, rootfs, source, opts);
    await Deno.remove(archive, { recursive: true });
    return { format: layout.kind, cache: new Map() };
  }
  // The tree's data and metadata go to disk while its manifest is made; the commit waits for
  // this flush, then flushes what changed since, before its row.
  const flushing = syncfsLater(rootfs);
  const touched = new Set<string>(["/"]);
  for (const p of members.keys()) for (const a of ancestorsOf(p)) touched.add(a);
  const listed = new Set([...members.values()].filter((m) => m.kind === "dir").map((m) => m.rel));
  const normalized = normalizeDirs(tree, touched, listed);
  const format = compression === "none" ? "tar" : `tar+${compression}`;
  const manifest = made && written &&
    await manifestOfWritten(rootfs, made, written, normalized, {
      cache,
      onProgress: opts.onProgress,
    });
  return { format, cache, manifest, flushing, implied: normalized };
}

async function readHead(path: string, n: number): Promise<Uint8Array> {
  try {
    return await readUpTo(path, n);
  } catch (e) {
    throw new UserError(`cannot read ${path}: ${(e as Error).message}`);
  }
}

/** An uncompressed tar ends with two zero blocks; GNU tar accepts a cut at a header boundary
 *  silently, so we look before extracting anything. */
async function checkTarEnd(path: string, size: number): Promise<void> {
  const bad = () => new UserError(`truncated archive: ${path} (no end-of-archive marker)`);
  if (size % 512 !== 0 || size < 1536) throw bad();
  const tail = await readUpTo(path, 1024, size - 1024);
  if (tail.length < 1024 || tail.some((b) => b !== 0)) throw bad();
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

/** "the symlink /a" or "/a, which is not a directory" */
function detour(b: Blocker): string {
  return b.kind === "symlink" ? `the symlink ${b.at}` : `${b.at}, which is not a directory`;
}

/**
 * After one tar run: no member went through a symlink or a file of the tree. GNU tar follows a
 * symlink it made earlier in the run when it points inside (others are placeholders until the
 * end); the image then holds a path it does not show, so it is refused like in a layer.
 */
function refuseDetours(tree: TreeView, members: Iterable<Placed>, what: string): void {
  for (const m of members) {
    const b = tree.blocker(m.rel);
    if (b) throw unsafe(what, m.rel, `would be written through ${detour(b)}`);
    const l = m.linkRel && tree.blocker(m.linkRel);
    if (l) throw unsafe(what, m.rel, `would hard-link through ${detour(l)}`);
  }
}

/**
 * Directories tar had to create or that a layer changed without carrying them (parents of
 * members missing from the archive, the root of an archive without "./") would get the import's
 * clock as mtime: the id would change from one import to the next. They get fixed metadata
 * (0755, root:root, mtime 0) instead; only real directories reached through real directories
 * (a later layer may have made a parent a symlink).
 */
function normalizeDirs(
  tree: TreeView,
  touched: Set<string>,
  listed: Set<string>,
): Set<string> {
  const done = new Set<string>();
  tree.forget();
  for (const rel of touched) {
    if (listed.has(rel)) continue;
    const full = tree.dir(rel);
    if (!full) continue;
    Deno.chmodSync(full, 0o755);
    Deno.chownSync(full, 0, 0);
    Deno.utimeSync(full, 0, 0);
    done.add(rel);
  }
  return done;
}

// ---- OCI / Docker images ----

interface Layout {
  kind: "oci" | "docker";
  /** Host path of each layer (undefined: the archive does not hold it). */
  layers: { path: string | undefined; digest?: string }[];
}

/** Manifests and indexes are small; the OCI distribution spec's limit for a manifest is 4 MiB. */
const MAX_JSON = 4 << 20;

/** The most layers an image may have: Docker refuses a build past 127 (overlayfs's depth), and
 *  each layer is hashed, listed and extracted in full, once per time the manifest names it (a
 *  manifest of 4 MiB names one layer 30,000 times: 5,000 copies of an empty one took 157 s, and
 *  each copy of a 1 GiB one writes its GiB again). */
const MAX_LAYERS = 256;

function refuseLayers(n: number, what: string): void {
  if (n > MAX_LAYERS) {
    throw new UserError(`${what} has ${n} layers, more than ${MAX_LAYERS}; refusing`);
  }
}

/**
 * The host path of a file an image archive refers to (manifest.json, a blob, a layer), resolved
 * inside `dir` as if chrooted there (classic `docker save` links a repeated layer.tar to the first
 * one); undefined when it does not exist. A reference that is absolute, holds "..", or leads out
 * through a symlink is refused.
 */
function archiveFile(dir: string, ref: string, what: string): string | undefined {
  const p = archivePath(ref);
  if (p.bad !== undefined) throw unsafe(what, ref, p.bad);
  let r;
  try {
    r = resolveInRoot(dir, p.rel);
  } catch {
    throw unsafe(what, ref, "is a symlink loop");
  }
  if (r.escaped) throw unsafe(what, ref, "leads out of the archive through a symlink");
  if (r.missing) return undefined;
  if (!Deno.lstatSync(r.host).isFile) {
    throw new UserError(`corrupt image archive ${what}: ${ref} is not a regular file`);
  }
  return r.host;
}

/** Whether `dir` holds `ref` as a regular file (looking only; a hostile one is no image file). */
function holds(dir: string, ref: string): boolean {
  try {
    return archiveFile(dir, ref, "") !== undefined;
  } catch {
    return false;
  }
}

async function readJson(path: string, ref: string, what: string): Promise<unknown> {
  const text = await readTextUpTo(path, MAX_JSON);
  if (text === undefined) {
    throw new UserError(
      `corrupt image archive ${what}: ${ref} is larger than ${MAX_JSON >> 20} MiB`,
    );
  }
  if (nestedDeeperThan(text, MAX_JSON_DEPTH)) {
    throw new UserError(
      `corrupt image archive ${what}: ${ref} nests deeper than ${MAX_JSON_DEPTH} levels`,
    );
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UserError(`corrupt image archive ${what}: ${ref}: ${(e as Error).message}`);
  }
}

/** OCI and Docker documents nest a few levels (an index's descriptor's platform: 3). JSON.parse
 *  took 1.2 s of the server's thread for 4 MiB of "[[[…]]]" (86 ms for 4 MiB of flat objects),
 *  once per document of an archive. */
const MAX_JSON_DEPTH = 64;

/** Whether arrays and objects in JSON `text` nest deeper than `max` (strings skipped). */
function nestedDeeperThan(text: string, max: number): boolean {
  let depth = 0, inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // "\": the next character is escaped
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return false;
}

/** A blob the image needs: present (a regular file inside the archive) and matching its digest
 *  (hashed off the server's thread: its size is the author's). */
async function blob(dir: string, digest: unknown, what: string, role: string): Promise<string> {
  const m = /^(sha256|sha512):([0-9a-f]+)$/.exec(typeof digest === "string" ? digest : "");
  if (!m) throw new UserError(`corrupt image archive ${what}: bad digest ${digest}`);
  const path = archiveFile(dir, `blobs/${m[1]}/${m[2]}`, what);
  if (!path) throw new UserError(`corrupt image archive ${what}: ${role} ${digest} is missing`);
  if (await hashFile(path, m[1]) !== m[2]) {
    throw new UserError(
      `corrupt image archive ${what}: ${role} ${digest} does not match its digest`,
    );
  }
  return path;
}

const hostArch = Deno.build.arch === "aarch64" ? "arm64" : "amd64";

interface Descriptor {
  mediaType?: string;
  digest: string;
  platform?: { os?: string; architecture?: string };
}

interface OciDocument {
  manifests?: Descriptor[];
  config?: Descriptor;
  layers?: Descriptor[];
}

const isObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);

/** An index or a manifest as JSON gave it, of the shape the code below reads (else a clear
 *  error: `{"manifests": {}}` or `null` reached the API as "internal error: … is not a
 *  function", logged as the server's own failure). */
function ociDocument(v: unknown, ref: string, what: string): OciDocument {
  const bad = (why: string) => new UserError(`corrupt image archive ${what}: ${ref} ${why}`);
  if (!isObject(v)) throw bad("is not a JSON object");
  const doc = v as Record<string, unknown>;
  for (const key of ["manifests", "layers"]) {
    const list = doc[key];
    if (list !== undefined && (!Array.isArray(list) || !list.every(isObject))) {
      throw bad(`has a "${key}" that is not a list of descriptors`);
    }
  }
  if (doc.config !== undefined && !isObject(doc.config)) {
    throw bad(`has a "config" that is not a descriptor`);
  }
  return doc as OciDocument;
}

/** The layers of an image archive laid out in `dir`, or undefined when dir is not one. */
async function imageLayout(dir: string, what: string): Promise<Layout | undefined> {
  if (holds(dir, "manifest.json")) {
    // docker save (both the classic <id>/layer.tar layout and Docker 25+'s OCI blobs).
    const m = await readJson(archiveFile(dir, "manifest.json", what)!, "manifest.json", what);
    if (Array.isArray(m) && m.every((x) => Array.isArray(x?.Layers))) {
      if (m.length !== 1) {
        const tags = m.flatMap((x) => x.RepoTags ?? []).join(", ");
        throw new UserError(
          `${what} holds ${m.length} images${tags ? ` (${tags})` : ""}: save one image per archive`,
        );
      }
      const { Config: config, Layers: layers } = m[0] as { Config?: unknown; Layers: unknown[] };
      refuseLayers(layers.length, what);
      const ref = (x: unknown) => {
        if (typeof x !== "string") {
          throw new UserError(`corrupt image archive ${what}: manifest.json names ${x}`);
        }
        return x;
      };
      const configPath = archiveFile(dir, ref(config), what);
      if (!configPath) {
        throw new UserError(`corrupt image archive ${what}: config ${config} is missing`);
      }
      // Named by its digest (Docker 25+: blobs/sha256/<hex>; before: <hex>.json): it must match,
      // as every blob of an OCI layout must.
      const named = /^(?:blobs\/sha256\/([0-9a-f]{64})|([0-9a-f]{64})\.json)$/.exec(ref(config));
      if (named && await hashFile(configPath) !== (named[1] ?? named[2])) {
        throw new UserError(
          `corrupt image archive ${what}: config ${config} does not match its digest`,
        );
      }
      return {
        kind: "docker",
        layers: layers.map((l) => {
          const blob = /^blobs\/(sha256)\/([0-9a-f]{64})$/.exec(ref(l));
          return {
            path: archiveFile(dir, ref(l), what),
            digest: blob ? `${blob[1]}:${blob[2]}` : undefined,
          };
        }),
      };
    }
  }
  if (!holds(dir, "oci-layout") || !holds(dir, "index.json")) return undefined;
  let index = ociDocument(
    await readJson(archiveFile(dir, "index.json", what)!, "index.json", what),
    "index.json",
    what,
  );
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
    const doc = ociDocument(
      await readJson(await blob(dir, pick.digest, what, "manifest"), pick.digest, what),
      pick.digest,
      what,
    );
    if (doc.manifests) {
      index = doc; // a nested index (multi-platform image)
      continue;
    }
    if (!Array.isArray(doc.layers)) {
      throw new UserError(`corrupt image archive ${what}: manifest ${pick.digest} has no layers`);
    }
    refuseLayers(doc.layers.length, what);
    await blob(dir, doc.config?.digest, what, "config");
    return {
      kind: "oci",
      layers: doc.layers.map((l) => {
        const m = /^sha(256|512):([0-9a-f]+)$/.exec(l?.digest ?? "");
        if (!m) throw new UserError(`corrupt image archive ${what}: bad digest ${l?.digest}`);
        return { path: archiveFile(dir, `blobs/sha${m[1]}/${m[2]}`, what), digest: l.digest };
      }),
    };
  }
  throw new UserError(`corrupt image archive ${what}: index nesting too deep`);
}

const WH = ".wh.", META = ".wh..wh.", OPAQUE = ".wh..wh..opq";

function removeTree(full: string): void {
  // Deno.remove does not follow a symlink it is given: the link itself goes.
  Deno.removeSync(full, { recursive: true });
}

/** What one layer does to the tree, checked in full before anything is changed. */
interface LayerPlan {
  /** Members tar extracts (whiteouts excluded). */
  entries: Placed[];
  /** Paths removed first (`.wh.NAME`). */
  whiteouts: string[];
  /** Directories emptied first (`.wh..wh..opq`). */
  opaques: string[];
  /** Directories the layer carries. */
  dirs: Set<string>;
  /** Directories whose content the layer changes. */
  touched: Set<string>;
}

/**
 * Reads one layer's member list into a plan; refuses the layer when a name, a hard link target, a
 * whiteout or an opaque marker would act outside the tree or through something that is not a
 * real directory (a symlink of a lower layer or of this one), checked against the tree as it is.
 */
function planLayer(listing: Map<string, Member>, tree: TreeView, lw: string): LayerPlan {
  const plan: LayerPlan = {
    entries: [],
    whiteouts: [],
    opaques: [],
    dirs: new Set(),
    touched: new Set(),
  };
  const kinds = new Map<string, Member["kind"]>();
  const checks: { member: Placed; path: string; verb: string }[] = [];
  for (const m of listing.values()) {
    const p = place(m, lw);
    if (m.retyped) throw unsafe(lw, m.name, "is listed twice with different types");
    const parts = p.rel.split("/");
    const base = parts.pop()!;
    const parent = parts.join("/") || "/";
    if (parts.some((c) => c.startsWith(WH))) {
      throw unsafe(lw, m.name, "has a whiteout name as a directory");
    }
    if (base === OPAQUE) {
      plan.opaques.push(parent);
      for (const a of [...ancestorsOf(parent), parent]) plan.touched.add(a);
      checks.push({ member: p, path: p.rel, verb: "would empty a directory" });
    } else if (base.startsWith(META)) {
      continue; // other AUFS metadata (.wh..wh.plnk…): ignored, as containerd does
    } else if (base.startsWith(WH)) {
      const name = base.slice(WH.length);
      if (name === "" || name === "." || name === "..") {
        throw unsafe(lw, m.name, "is a whiteout of no name");
      }
      const target = parent === "/" ? `/${name}` : `${parent}/${name}`;
      plan.whiteouts.push(target);
      for (const a of ancestorsOf(target)) plan.touched.add(a);
      checks.push({ member: p, path: target, verb: "would delete" });
    } else {
      // The listing is keyed by stored name: "d" and "d/" are one path listed twice, and which
      // of them tar extracts last is not the one this loop sees last.
      const before = kinds.get(p.rel);
      if (before !== undefined && before !== p.kind) {
        throw unsafe(lw, m.name, "is listed twice with different types");
      }
      plan.entries.push(p);
      kinds.set(p.rel, p.kind);
      if (p.kind === "dir") plan.dirs.add(p.rel);
      for (const a of ancestorsOf(p.rel)) plan.touched.add(a);
      checks.push({ member: p, path: p.rel, verb: "would be written" });
      if (p.linkRel) checks.push({ member: p, path: p.linkRel, verb: "would hard-link" });
    }
  }
  // The first ancestor of `path` that is not a real directory when tar runs: one this layer
  // makes a symlink or file, or one on disk that the layer does not replace by a directory.
  const blockerOf = (path: string): Blocker | undefined => {
    const onDisk = tree.blocker(path);
    for (const a of ancestorsOf(path)) {
      const k = kinds.get(a);
      if (k !== undefined && k !== "dir") return { at: a, kind: k === "symlink" ? k : "other" };
      if (onDisk?.at === a) return k === "dir" ? undefined : onDisk;
    }
    return undefined;
  };
  for (const { member, path, verb } of checks) {
    const b = blockerOf(path);
    if (b) throw unsafe(lw, member.rel, `${verb} through ${detour(b)}`);
  }
  return plan;
}

/** Whiteouts, opaque directories and type changes of one layer, before tar extracts it.
 *  Returns the mtimes of lower directories the layer changes without carrying them. */
function prepareLayer(plan: LayerPlan, tree: TreeView, listedAll: Set<string>): Map<string, Date> {
  const saved = new Map<string, Date>();
  for (const a of plan.touched) {
    if (plan.dirs.has(a) || !listedAll.has(a)) continue;
    const st = tree.lstat(a);
    if (st?.isDirectory && st.mtime) saved.set(a, st.mtime);
  }
  for (const w of plan.whiteouts) {
    if (tree.lstat(w)) removeTree(tree.host(w));
  }
  tree.forget();
  for (const d of plan.opaques) {
    const full = tree.dir(d);
    if (full) { for (const e of Deno.readDirSync(full)) removeTree(`${full}/${e.name}`); }
  }
  tree.forget();
  for (const p of plan.entries) {
    if (p.rel === "/") continue;
    const st = tree.lstat(p.rel);
    // A type change replaces the lower entry (a directory over a file or symlink, or back): tar
    // would otherwise apply a directory's metadata through a lower symlink.
    if (st && (p.kind === "dir") !== st.isDirectory) {
      removeTree(tree.host(p.rel));
      tree.forget();
    }
  }
  return saved;
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
  const tree = new TreeView(rootfs);
  for (const [i, layer] of layout.layers.entries()) {
    const lw = `layer ${i + 1}/${n} of ${what}`;
    onProgress?.({ phase: "layers", done: i, total: n });
    if (!layer.path) throw new UserError(`corrupt image archive ${what}: ${lw} is missing`);
    const m = /^(sha256|sha512):([0-9a-f]+)$/.exec(layer.digest ?? "");
    if (m && await hashFile(layer.path, m[1]) !== m[2]) {
      throw new UserError(`corrupt image archive ${what}: ${lw} does not match its digest`);
    }
    const listing = await listMembers(layer.path, lw, { signal, room: roomIn(rootfs) });
    tree.forget();
    const plan = planLayer(listing, tree, lw);
    const saved = prepareLayer(plan, tree, listedAll);
    await extractFile(layer.path, rootfs, lw, [`--exclude=${WH}*`], signal);
    tree.forget();
    for (const [rel, mtime] of saved) {
      const full = tree.dir(rel);
      if (full) Deno.utimeSync(full, mtime, mtime);
    }
    for (const d of plan.dirs) listedAll.add(d);
    for (const t of plan.touched) touchedAll.add(t);
  }
  onProgress?.({ phase: "layers", done: n, total: n });
  normalizeDirs(tree, touchedAll, listedAll);
}

export type { Compression };
