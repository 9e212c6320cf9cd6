// The content manifest of an OS image: pure codec (no file system, no server imports) because the
// node side (hybrid/) parses it too. An image id is the sha256 of the manifest file's bytes, so the
// text form below is canonical: same tree → same bytes → same id.
//
// File format (UTF-8 text, "\n" line ends, one entry per line, sorted by path in byte order):
//
//   netroot-manifest 1
//   <path>\t<type>\t<mode>\t<uid>\t<gid>\t<size>\t<mtime>\t<sha256>\t<target>\t<rdev>\t<xattrs>
//
//   path    absolute inside the image; the root is "/"
//   type    file | dir | symlink | hardlink | char | block | fifo | socket
//   mode    permission bits incl. suid/sgid/sticky, 4 octal digits ("0755", "4755")
//   uid gid numeric owner
//   size    bytes for file and hardlink entries, 0 for every other type (a directory's st_size
//           depends on the file system, so it is not content)
//   mtime   integer seconds since the epoch (tar's default formats keep seconds only)
//   sha256  hex digest of a file's content; empty otherwise
//   target  symlink target as stored; for a hardlink the path of the first entry (in manifest
//           order) of the same inode, which is always a "file" entry; empty otherwise
//   rdev    "major,minor" for char and block devices; empty otherwise
//   xattrs  "name=base64value" items joined by "," in name order (e.g.
//           "security.capability=AQAAAgAgAAAAAAAAAAAAAAAAAAA="); empty when none
//
// Text fields (path, target, xattr names) escape "\", control characters (< 0x20, 0x7f) and, in
// xattr names, "," and "=" as \xHH, so a line never holds a raw tab or newline. Because lines are
// sorted by path, two manifests diff with one merge pass (diffManifests) and `diff`/`grep` work on
// them directly.

export type EntryType =
  | "file"
  | "dir"
  | "symlink"
  | "hardlink"
  | "char"
  | "block"
  | "fifo"
  | "socket";

export interface ManifestEntry {
  /** "/etc/passwd"; the root is "/". */
  path: string;
  type: EntryType;
  /** Permission bits incl. suid/sgid/sticky (st_mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes for file/hardlink entries, 0 otherwise. */
  size: number;
  /** Integer seconds since the epoch. */
  mtime: number;
  /** Hex sha256 of the content (file entries). */
  sha256?: string;
  /** Symlink target, or for "hardlink" the path of the first entry of that inode. */
  target?: string;
  rdev?: { major: number; minor: number };
  /** xattr name → base64 value. */
  xattrs?: Record<string, string>;
}

export const MANIFEST_HEADER = "netroot-manifest 1";

const types = new Set<string>([
  "file",
  "dir",
  "symlink",
  "hardlink",
  "char",
  "block",
  "fifo",
  "socket",
]);

function escapeText(s: string, extra = ""): string {
  // Fast path: almost every path needs no escaping.
  // deno-lint-ignore no-control-regex
  const needs = extra ? /[\x00-\x1f\x7f\\,=]/ : /[\x00-\x1f\x7f\\]/;
  if (!needs.test(s)) return s;
  let out = "";
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    out += c < 0x20 || c === 0x7f || ch === "\\" || extra.includes(ch)
      ? `\\x${c.toString(16).padStart(2, "0")}`
      : ch;
  }
  return out;
}

function unescapeText(s: string): string {
  if (!s.includes("\\")) return s;
  return s.replace(/\\x([0-9a-f]{2})|\\/g, (_m, hex: string | undefined) => {
    if (hex === undefined) throw new Error(`bad escape in manifest field ${JSON.stringify(s)}`);
    return String.fromCharCode(parseInt(hex, 16));
  });
}

export function serializeEntry(e: ManifestEntry): string {
  const xattrs = e.xattrs
    ? Object.keys(e.xattrs).sort(compareBytes).map((k) => `${escapeText(k, ",=")}=${e.xattrs![k]}`)
      .join(",")
    : "";
  return [
    escapeText(e.path),
    e.type,
    e.mode.toString(8).padStart(4, "0"),
    e.uid,
    e.gid,
    e.size,
    e.mtime,
    e.sha256 ?? "",
    e.target === undefined ? "" : escapeText(e.target),
    e.rdev ? `${e.rdev.major},${e.rdev.minor}` : "",
    xattrs,
  ].join("\t");
}

function int(field: string, what: string, line: string): number {
  if (!/^-?\d+$/.test(field)) {
    throw new Error(`manifest: bad ${what} in line ${JSON.stringify(line)}`);
  }
  return Number(field);
}

export function parseEntry(line: string): ManifestEntry {
  const f = line.split("\t");
  if (f.length !== 11) {
    throw new Error(`manifest: expected 11 tab-separated fields, got ${f.length}: ${line}`);
  }
  const [path, type, mode, uid, gid, size, mtime, sha256, target, rdev, xattrs] = f;
  if (!path.startsWith("/")) throw new Error(`manifest: path must be absolute: ${line}`);
  if (!types.has(type)) throw new Error(`manifest: unknown type ${type}: ${line}`);
  if (!/^[0-7]{4}$/.test(mode)) throw new Error(`manifest: bad mode ${mode}: ${line}`);
  const e: ManifestEntry = {
    path: unescapeText(path),
    type: type as EntryType,
    mode: parseInt(mode, 8),
    uid: int(uid, "uid", line),
    gid: int(gid, "gid", line),
    size: int(size, "size", line),
    mtime: int(mtime, "mtime", line),
  };
  if (sha256) {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`manifest: bad sha256: ${line}`);
    e.sha256 = sha256;
  }
  // A path with an empty, "." or ".." component names something else once joined to a root: a
  // node's hybrid copy joins the paths of manifests it finds on its (untrusted) disk.
  if (!normalPath(e.path)) throw new Error(`manifest: path not normalised: ${line}`);
  if (target) e.target = unescapeText(target);
  if (type === "hardlink" && !normalPath(e.target ?? "")) {
    throw new Error(`manifest: hard link target not normalised: ${line}`);
  }
  if (rdev) {
    const m = /^(\d+),(\d+)$/.exec(rdev);
    if (!m) throw new Error(`manifest: bad rdev ${rdev}: ${line}`);
    e.rdev = { major: Number(m[1]), minor: Number(m[2]) };
  }
  if (xattrs) {
    e.xattrs = {};
    for (const item of xattrs.split(",")) {
      const eq = item.indexOf("=");
      if (eq <= 0) throw new Error(`manifest: bad xattr item ${item}: ${line}`);
      e.xattrs[unescapeText(item.slice(0, eq))] = item.slice(eq + 1);
    }
  }
  return e;
}

function normalPath(p: string): boolean {
  return p === "/" || (p.startsWith("/") && !/\/\/|\/\.\.?(\/|$)|\/$/.test(p));
}

/** Streams the entries of a manifest text (checks the header line). */
export function* manifestLines(text: string): Generator<ManifestEntry> {
  let pos = text.indexOf("\n");
  const header = pos < 0 ? text : text.slice(0, pos);
  if (header !== MANIFEST_HEADER) {
    throw new Error(`manifest: unsupported header ${JSON.stringify(header.slice(0, 40))}`);
  }
  while (pos >= 0 && pos < text.length - 1) {
    const next = text.indexOf("\n", pos + 1);
    const line = text.slice(pos + 1, next < 0 ? text.length : next);
    if (line) yield parseEntry(line);
    pos = next;
  }
}

export function parseManifest(text: string): ManifestEntry[] {
  return [...manifestLines(text)];
}

/** The canonical manifest text: header, entries sorted by path, trailing newline. */
export function manifestText(entries: ManifestEntry[]): string {
  const sorted = [...entries].sort((a, b) => compareBytes(a.path, b.path));
  const lines = [MANIFEST_HEADER];
  for (const e of sorted) lines.push(serializeEntry(e));
  return lines.join("\n") + "\n";
}

/** Orders strings by their UTF-8 bytes (= code point order), which differs from JS's UTF-16
 *  order only when a surrogate pair meets a character in U+E000–U+FFFF. */
export function compareBytes(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i), y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) {
      // Surrogates (astral code points) sort after U+E000–U+FFFF in code point order.
      x += x <= 0xdfff ? 0x2000 : -0x800;
      y += y <= 0xdfff ? 0x2000 : -0x800;
    }
    return x - y;
  }
  return a.length - b.length;
}

export interface ManifestChange {
  path: string;
  /** absent: added */
  old?: ManifestEntry;
  /** absent: removed */
  new?: ManifestEntry;
}

/** Differences between two sorted entry streams in one merge pass: added, removed and changed
 *  entries (changed = any field differs), in path order. */
export function* diffManifests(
  oldEntries: Iterable<ManifestEntry>,
  newEntries: Iterable<ManifestEntry>,
): Generator<ManifestChange> {
  const a = oldEntries[Symbol.iterator](), b = newEntries[Symbol.iterator]();
  let x = a.next(), y = b.next();
  while (!x.done || !y.done) {
    const c = x.done ? 1 : y.done ? -1 : compareBytes(x.value.path, y.value.path);
    if (c < 0) {
      yield { path: x.value!.path, old: x.value! };
      x = a.next();
    } else if (c > 0) {
      yield { path: y.value!.path, new: y.value! };
      y = b.next();
    } else {
      if (serializeEntry(x.value!) !== serializeEntry(y.value!)) {
        yield { path: x.value!.path, old: x.value!, new: y.value! };
      }
      x = a.next();
      y = b.next();
    }
  }
}
