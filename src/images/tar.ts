// GNU tar as the extractor of layers and of every rootfs archive our own reader (tarfast.ts, tried
// first) leaves to it (it knows every header format, xattrs, sparse files, hardlinks), driven so
// that the import stays observable, fast and confined to its tree:
//   - progress is tar's read offset in the archive (/proc/<pid>/fdinfo);
//   - `-vv` names each member (type, name, link target) as tar starts it, so the previous member
//     is complete: a hashing worker digests it while tar extracts the next one (the manifest's
//     sha256 pass overlaps the extraction on a second core);
//   - every name is checked as it is listed (archivepath.ts): a hostile one stops tar at once.
//     Within one run GNU tar itself never writes outside `-C` (it strips a leading "/", skips
//     ".." names, and extracts a symlink pointing up or out as a placeholder file until the end);
//     what runs before and after it (layers, whiteouts, directory fix-ups) is ours to confine.
import { readUpTo, statvfs } from "../linux/fsops.ts";
import { UserError } from "../errors.ts";
import {
  MAX_MEMBERS,
  type Member,
  place,
  type Placed,
  shown,
  tooManyMembers,
  unsafe,
} from "./archivepath.ts";
import type { CachedHash, Progress, Written } from "./walk.ts";
import { workerFromSource } from "../worker.ts";
import { logger } from "../log.ts";
import { extractFast, Unsupported } from "./tarfast.ts";

const log = logger("images");

export type Compression = "gzip" | "xz" | "zstd" | "bzip2" | "none";

const tarFlag: Record<Compression, string | null> = {
  gzip: "--gzip",
  xz: "--xz",
  zstd: "--zstd",
  bzip2: "--bzip2",
  none: null,
};

/** Flags that keep everything an OS tree carries: numeric owners, modes incl. suid, xattrs. */
export const EXTRACT_FLAGS = [
  "--numeric-owner",
  "--same-owner",
  "--same-permissions",
  "--xattrs",
  "--xattrs-include=*",
  "--quoting-style=c",
];

function tarHeaderValid(b: Uint8Array): boolean {
  if (b.length < 512) return false;
  const stored = parseInt(new TextDecoder().decode(b.subarray(148, 156)).replace(/\0.*$/, ""), 8);
  if (isNaN(stored)) return false;
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : b[i];
  return sum === stored;
}

/** Compression of a file from its first bytes; null when it is neither a tar nor compressed. */
export function sniff(head: Uint8Array): Compression | null {
  const starts = (...m: number[]) => m.every((v, i) => head[i] === v);
  if (starts(0x1f, 0x8b)) return "gzip";
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return "xz";
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return "zstd";
  if (starts(0x42, 0x5a, 0x68)) return "bzip2";
  if (tarHeaderValid(head)) return "none";
  return null;
}

/**
 * Whether the file at `path` is a tar archive, plain or compressed: from its content, never its
 * name, as Docker's ADD decides whether it extracts a local file (a `.tar.gz` that is no tar is
 * copied as it is; a gzipped tar named `x.gz` is extracted). A compressed file is decompressed
 * only up to its first header.
 */
export async function holdsTar(path: string): Promise<boolean> {
  const compression = sniff(await readUpTo(path, 512));
  if (compression === null || compression === "none") return compression === "none";
  // on its standard input: zstd ignores a path that is a link (the held file's /proc/…/fd/N)
  const file = await Deno.open(path);
  const child = new Deno.Command(compression, {
    args: ["-dc"],
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const fed = file.readable.pipeTo(child.stdin).catch(() => {}); // ends when the child does
  const head = new Uint8Array(512);
  let got = 0;
  const reader = child.stdout.getReader();
  try {
    while (got < head.length) {
      const { value, done } = await reader.read();
      if (done) break;
      head.set(value.subarray(0, head.length - got), got);
      got += Math.min(value.length, head.length - got);
    }
  } finally {
    await reader.cancel().catch(() => {});
    try {
      child.kill("SIGKILL");
    } catch { /* it ended */ }
    await child.status;
    await fed;
  }
  return got === head.length && tarHeaderValid(head);
}

/** A hint for the unknown-format error: what the file looks like instead. */
export function describe(head: Uint8Array): string {
  const starts = (s: string) => new TextDecoder().decode(head.subarray(0, s.length)) === s;
  if (head.length === 0) return "an empty file";
  if (starts("PK\x03\x04")) return "a zip archive";
  if (starts("\x7fELF")) return "an ELF executable";
  if (starts("QFI\xfb")) return "a qcow2 disk image (export its file system as a tarball first)";
  if (
    head.length >= 0x8006 && new TextDecoder().decode(head.subarray(0x8001, 0x8006)) === "CD001"
  ) {
    return "an ISO 9660 image";
  }
  if (head[0x438] === 0x53 && head[0x439] === 0xef) {
    return "an ext2/3/4 file system image (export its content as a tarball first)";
  }
  const text = head.subarray(0, 512).every((c) => c === 9 || c === 10 || c === 13 || c >= 32);
  return text ? "a text file" : "unrecognised binary data";
}

const cEscapes: Record<string, number> = {
  a: 7,
  b: 8,
  f: 12,
  n: 10,
  r: 13,
  t: 9,
  v: 11,
  "\\": 92,
  '"': 34,
  "?": 63,
};

/** GNU tar's "c" quoting at `s[at]` (a `"`) back to the name; octal escapes are UTF-8 bytes in
 *  the C locale. Returns the name and the index after the closing quote. */
export function unquoteTarName(s: string, at: number): { name: string; end: number } {
  let i = at + 1;
  while (i < s.length && s[i] !== '"' && s[i] !== "\\") i++;
  if (s[i] !== "\\") return { name: s.slice(at + 1, i), end: i + 1 }; // the common case
  const bytes: number[] = [];
  for (i = at + 1; i < s.length && s[i] !== '"'; i++) {
    if (s[i] === "\\" && i + 1 < s.length) {
      const oct = /^[0-7]{3}/.exec(s.slice(i + 1, i + 4));
      if (oct) {
        bytes.push(parseInt(oct[0], 8));
        i += 3;
        continue;
      }
      if (s[i + 1] in cEscapes) {
        bytes.push(cEscapes[s[i + 1]]);
        i++;
        continue;
      }
    }
    bytes.push(...new TextEncoder().encode(s[i]));
  }
  return { name: new TextDecoder().decode(new Uint8Array(bytes)), end: i + 1 };
}

/** `"./a b": Cannot open` (tar's message about a member, c-quoted) → `./a b: Cannot open` */
function unquoteLead(line: string): string {
  if (!line.startsWith('"')) return line;
  const { name, end } = unquoteTarName(line, 0);
  return shown(name) + line.slice(end);
}

const kinds: Record<string, Member["kind"]> = { d: "dir", l: "symlink", h: "hardlink" };

/**
 * One line of `tar -tv` / `tar -xvv` (with --numeric-owner --quoting-style=c):
 *   `hrw-r--r-- 0/0  0 2024-01-01 00:00 "usr/bin/x" link to "usr/bin/y"`
 * undefined for other lines ("Creating directory: …") and volume labels, which are not members.
 */
export function parseListLine(line: string): Member | undefined {
  const q = line.indexOf('"');
  if (q < 0) return undefined;
  const fields = line.slice(0, q).trim().split(/\s+/);
  if (!/^\d+\/\d+$/.test(fields[1] ?? "") || line[0] === "V") return undefined;
  const { name, end } = unquoteTarName(line, q);
  const kind = kinds[line[0]] ?? "other";
  const size = kind === "other" && /^\d+$/.test(fields[2]) ? Number(fields[2]) : 0;
  const rest = line.slice(end);
  const arrow = rest.startsWith(" -> ") ? 4 : rest.startsWith(" link to ") ? 9 : -1;
  if (arrow < 0 || rest[arrow] !== '"') return { name, kind, size };
  return { name, kind, size, link: unquoteTarName(rest, arrow).name };
}

/** One clear line out of tar's (and its decompressor's) stderr. */
export function tarFailure(stderr: string, what: string, compression: Compression): UserError {
  const lines = stderr.split("\n").map((l) => l.trim().replace(/^\S*\btar: /, "")).filter((l) =>
    l &&
    !/Removing leading|Exiting with failure status|Error is not recoverable|Ignoring unknown extended header/
      .test(l)
  ).map(unquoteLead);
  const all = lines.join(" | ");
  // tar reports a short write ("Wrote only 512 of 10240 bytes") when the disk fills mid-block
  if (/No space left on device|Wrote only \d+ of \d+ bytes/.test(all)) {
    return new UserError(`no space left on device while importing ${what}`, 500);
  }
  if (/does not look like a tar archive/.test(all)) {
    return new UserError(
      compression === "none"
        ? `unknown format: ${what} is not a tar archive`
        : `unknown format: ${what} is ${compression}-compressed but holds no tar archive`,
    );
  }
  if (/Unexpected EOF|unexpected end of (file|input)|Truncated|premature end/i.test(all)) {
    return new UserError(`truncated archive: ${what} (${lines[0] ?? "unexpected end"})`);
  }
  if (
    /corrupt|crc error|format violated|invalid compressed|Skipping to next header|checksum/i.test(
      all,
    )
  ) {
    return new UserError(`corrupt archive: ${what} (${lines[0]})`);
  }
  return new UserError(`cannot extract ${what}: ${lines[0] ?? "tar failed"}`);
}

// Runs in a worker: digests files named by the main thread (paths of members tar has finished).
// It reads only what tar wrote at that path: the file is opened as a bare reference (O_PATH, no
// symlink followed, no device opened), the kernel's name for it must be the path itself (no
// symlink on the way, e.g. one tar put in place of its placeholder at the end), and only a
// regular file is then read, through that reference.
const hashWorkerCode = `
import { createHash } from "node:crypto";
import fs from "node:fs";
const O_PATH = 0o10000000;
const buf = new Uint8Array(1 << 20);
self.onmessage = (e) => {
  const m = e.data;
  if (m.end) { self.postMessage({ end: true }); return; }
  let ref;
  try {
    ref = fs.openSync(m.full, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | O_PATH);
    const self_ = "/proc/self/fd/" + ref;
    if (Deno.readLinkSync(self_) !== m.full) return;
    const st = Deno.statSync(self_);
    if (!st.isFile) return;
    const h = createHash("sha256");
    const f = Deno.openSync(self_);
    try {
      for (;;) { const n = f.readSync(buf); if (!n) break; h.update(buf.subarray(0, n)); }
    } finally { f.close(); }
    self.postMessage({ rel: m.rel, ino: st.ino, size: st.size, mtimeMs: st.mtime.getTime(), sha256: h.digest("hex") });
  } catch { /* gone or unreadable: the final walk hashes it */ } finally {
    if (ref !== undefined) fs.closeSync(ref);
  }
};`;

/** The worker is an optimisation: without it (e.g. workers unavailable) the walk hashes all. */
function tryStartHashWorker(): ReturnType<typeof startHashWorker> | undefined {
  try {
    return startHashWorker();
  } catch {
    return undefined;
  }
}

function startHashWorker() {
  const worker = workerFromSource(hashWorkerCode);
  const cache = new Map<string, CachedHash>();
  const ended = Promise.withResolvers<void>();
  worker.onmessage = (e) => {
    const m = e.data;
    if (m.end) ended.resolve();
    else cache.set(m.rel, { ino: m.ino, size: m.size, mtimeMs: m.mtimeMs, sha256: m.sha256 });
  };
  worker.onerror = (e) => {
    e.preventDefault();
    ended.resolve();
  };
  return {
    cache,
    post: (rel: string, full: string) => worker.postMessage({ rel, full }),
    async finish() {
      worker.postMessage({ end: true });
      await ended.promise;
      worker.terminate();
    },
    stop: () => worker.terminate(),
  };
}

/** Kills the child when the import is cancelled; returns the un-registration. */
function killOnAbort(child: Deno.ChildProcess, signal?: AbortSignal): () => void {
  if (!signal) return () => {};
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  };
  if (signal.aborted) kill();
  signal.addEventListener("abort", kill, { once: true });
  return () => signal.removeEventListener("abort", kill);
}

/** Offset in `file` of the first process in pid's tree that has it open. */
function archiveOffset(pid: number, file: string): number | undefined {
  const queue = [pid];
  for (let n = 0; queue.length && n < 8; n++) {
    const p = queue.shift()!;
    try {
      for (const fd of Deno.readDirSync(`/proc/${p}/fd`)) {
        let target: string;
        try {
          target = Deno.readLinkSync(`/proc/${p}/fd/${fd.name}`);
        } catch {
          continue;
        }
        if (target !== file) continue;
        const m = /^pos:\s+(\d+)/m.exec(Deno.readTextFileSync(`/proc/${p}/fdinfo/${fd.name}`));
        if (m) return Number(m[1]);
      }
      const kids = Deno.readTextFileSync(`/proc/${p}/task/${p}/children`).trim();
      if (kids) queue.push(...kids.split(/\s+/).map(Number));
    } catch { /* exited meanwhile */ }
  }
  return undefined;
}

export interface Extracted {
  /** Every member by its place in the image (the last one listed under a name). */
  members: Map<string, Placed>;
  /** Digests of files computed during extraction, keyed by path. */
  cache: Map<string, CachedHash>;
  /** From the import's own reader only: every path it made and the metadata it set (for the
   *  manifest without a scan, walk.ts manifestOfWritten). */
  made?: Map<string, string>;
  written?: Map<string, Written>;
}

const looksLikeImageArchive =
  /^\/(oci-layout|index\.json|manifest\.json|repositories|blobs|[0-9a-f]{64}(\.json|\.tar)?)$/;

/** The longest line of tar's listing taken: a member's name and link target, c-quoted (4
 *  characters a byte at worst), each fit in PATH_MAX (4 KiB) in a tree that can be extracted. */
const MAX_LINE = 1 << 20;

/**
 * Lines of tar's listing as they come (the last one may lack its newline). A line longer than
 * MAX_LINE is a hostile name (a pax record holds any length): refused, not joined chunk after
 * chunk, which took time in the square of its length on the server's only thread.
 */
async function eachLine(
  stream: ReadableStream<Uint8Array>,
  take: (line: string) => void,
  what: string,
) {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    const lines = chunk.split("\n");
    if (lines.length > 1) {
      lines[0] = rest + lines[0];
      rest = lines.pop()!;
      for (const l of lines) {
        if (l.length > MAX_LINE) throw tooLong(l, what);
        take(l);
      }
    } else rest += chunk;
    if (rest.length > MAX_LINE) throw tooLong(rest, what);
  }
  if (rest) take(rest);
}

function tooLong(line: string, what: string): UserError {
  const q = line.indexOf('"');
  return unsafe(
    what,
    `${line.slice(q + 1, q + 61)}…`,
    `has a name or link target longer than ${MAX_LINE >> 20} MiB`,
  );
}

/** A child's stderr, kept to its first 64 KiB (a hostile archive can make tar say a lot). */
async function readCapped(stream: ReadableStream<Uint8Array>): Promise<string> {
  let text = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    if (text.length < 64 * 1024) text += chunk;
  }
  return text;
}

function killQuietly(child: Deno.ChildProcess): void {
  try {
    child.kill("SIGKILL");
  } catch { /* already gone */ }
}

export interface ExtractOptions {
  onProgress?: Progress;
  what?: string;
  hash?: boolean;
  signal?: AbortSignal;
  /** "tar": GNU tar only (tests compare both paths); default: the fast path, GNU tar for what
   *  it does not handle. */
  extractor?: "fast" | "tar";
  /** Members refused past this many (default MAX_MEMBERS; tests give a small one). */
  maxMembers?: number;
}

/**
 * Extracts archive `file` into the existing, empty directory `dest`: our own reader first
 * (tarfast.ts: one pass writing and hashing), GNU tar when that reader does not handle the
 * archive (anything but plain members, or any error but a refused name or a full disk).
 * Throws a UserError on any tar failure or hostile member name (the caller removes `dest`).
 */
export async function extractArchive(
  file: string,
  compression: Compression,
  dest: string,
  opts: ExtractOptions = {},
): Promise<Extracted> {
  if (opts.extractor !== "tar") {
    try {
      return await extractFast(file, compression, dest, {
        what: opts.what ?? file,
        hash: opts.hash !== false,
        total: (await Deno.stat(file)).size,
        onProgress: opts.onProgress,
        signal: opts.signal,
        offsetOf: (pid) => archiveOffset(pid, file),
        imageArchive: looksLikeImageArchive,
        maxMembers: opts.maxMembers,
      });
    } catch (e) {
      if (!(e instanceof Unsupported)) throw e;
      log.debug("archive left to GNU tar", { file, why: e.message });
      await Deno.remove(dest, { recursive: true });
      await Deno.mkdir(dest);
    }
  }
  return await extractWithTar(file, compression, dest, opts);
}

/** extractArchive with GNU tar. */
async function extractWithTar(
  file: string,
  compression: Compression,
  dest: string,
  opts: ExtractOptions,
): Promise<Extracted> {
  const what = opts.what ?? file;
  const size = (await Deno.stat(file)).size;
  const flag = tarFlag[compression];
  const child = new Deno.Command("tar", {
    args: ["-x", "-vv", "-f", file, "-C", dest, ...EXTRACT_FLAGS, ...(flag ? [flag] : [])],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C" },
  }).spawn();
  const stop = killOnAbort(child, opts.signal);
  const hasher = opts.hash === false ? undefined : tryStartHashWorker();
  // The worker checks that the kernel's name of what it opens is exactly this path.
  const realDest = Deno.realPathSync(dest);
  const members = new Map<string, Placed>();
  const relisted = new Set<string>();
  let refused: UserError | undefined;
  // The members' sizes must fit in the room there is, as a layer's must (listMembers): GNU tar
  // makes a sparse file's holes without writing them, so a few KB of archive stand for TiB the
  // disk never refuses, which the hash then reads in full.
  const room = roomIn(dest);
  let bytes = 0;

  const readNames = async () => {
    let prev: string | undefined;
    let first = true;
    let hashing = hasher !== undefined;
    await eachLine(child.stdout, (line) => {
      const m = parseListLine(line);
      if (!m || refused) return;
      let p: Placed;
      try {
        p = place(m, what);
      } catch (e) {
        refused = e as UserError;
        killQuietly(child);
        return;
      }
      // A member listed twice was overwritten: its early digest may be of the old content.
      if (members.has(p.rel)) relisted.add(p.rel);
      members.set(p.rel, p);
      if (members.size > (opts.maxMembers ?? MAX_MEMBERS)) {
        refused = tooManyMembers(what, opts.maxMembers ?? MAX_MEMBERS);
        killQuietly(child);
        return;
      }
      bytes += p.size;
      if (exceeds(room, bytes, members.size)) {
        refused = noRoomFor(what);
        killQuietly(child);
        return;
      }
      if (first && p.rel !== "/") {
        if (looksLikeImageArchive.test(p.rel)) hashing = false; // blobs of layers, not a rootfs
        first = false;
      }
      if (hashing && prev !== undefined) hasher!.post(prev, realDest + prev);
      prev = p.kind === "other" || p.kind === "hardlink" ? p.rel : undefined;
    }, what).catch((e) => {
      if (!(e instanceof UserError)) throw e;
      refused ??= e;
      killQuietly(child);
    });
    if (hashing && prev !== undefined && !refused) hasher!.post(prev, realDest + prev);
  };
  // Progress: the read offset of whichever process of tar's tree (tar, or the decompressor it
  // forks) has the archive open, from /proc/<pid>/fdinfo. Piping the archive through us instead
  // cost 2-3x the extraction time.
  let running = true;
  const watch = async () => {
    while (running) {
      const pos = archiveOffset(child.pid, file);
      try {
        if (pos !== undefined) opts.onProgress?.({ phase: "extract", done: pos, total: size });
      } catch { /* a cancelled import: tar is being killed */ }
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  opts.onProgress?.({ phase: "extract", done: 0, total: size });
  try {
    const watching = watch();
    const [, stderr, status] = await Promise.all([
      readNames(),
      readCapped(child.stderr),
      child.status,
    ]);
    running = false;
    await watching;
    opts.onProgress?.({ phase: "extract", done: size, total: size });
    opts.signal?.throwIfAborted();
    if (refused) throw refused;
    // tar strips a leading "/" or "../" from hard link targets (and says so), and skips a member
    // whose name holds ".." (and fails): the stored names, listed again, name the member.
    const rewrote = /Removing leading .* from hard link targets|contains '\.\.'/.test(stderr);
    if (rewrote) {
      const bad = await firstUnsafeMember(file, what, opts.signal);
      if (bad) throw bad;
    }
    if (!status.success) throw tarFailure(stderr, what, compression);
    if (rewrote) throw new UserError(`${what}: tar rewrote unsafe names; refusing (unsafe image)`);
    await hasher?.finish();
    for (const rel of relisted) hasher?.cache.delete(rel);
    return { members, cache: hasher?.cache ?? new Map() };
  } finally {
    stop();
    hasher?.stop();
  }
}

/** The first member of an archive whose name or hard link target is refused, if any. */
async function firstUnsafeMember(
  file: string,
  what: string,
  signal?: AbortSignal,
): Promise<UserError | undefined> {
  let list: Map<string, Member>;
  try {
    list = await listMembers(file, what, { signal });
  } catch {
    return undefined; // unreadable: tar's own error says why
  }
  for (const m of list.values()) {
    try {
      place(m, what);
    } catch (e) {
      return e as UserError;
    }
  }
  return undefined;
}

/** Room left for an extraction (statvfs of the directory it goes to). */
export function roomIn(dir: string): Room {
  const s = statvfs(dir);
  // Some file systems (btrfs) report no inode counts at all.
  return { bytes: s.freeBytes, inodes: s.freeInodes > 0 ? s.freeInodes : undefined };
}

export interface Room {
  bytes: number;
  inodes?: number;
}

/** Whether `members` of `bytes` in all need more than `room`. */
function exceeds(room: Room, bytes: number, members: number): boolean {
  return bytes > room.bytes || (room.inodes !== undefined && members > room.inodes);
}

function noRoomFor(what: string): UserError {
  return new UserError(
    `no space left on device while importing ${what} (its files need more than is free)`,
    500,
  );
}

/**
 * The members of an archive file by stored name (tar detects the compression itself), names and
 * link targets exactly as stored (-P: nothing stripped). With `room`, the listing stops with the
 * disk-full error as soon as the members need more bytes or inodes than that: a decompression
 * bomb is not decompressed to its end just to be listed.
 */
export async function listMembers(
  file: string,
  what: string,
  opts: { signal?: AbortSignal; room?: Room } = {},
): Promise<Map<string, Member>> {
  const child = new Deno.Command("tar", {
    args: ["-t", "-v", "-P", "-f", file, "--numeric-owner", "--quoting-style=c"],
    env: { LC_ALL: "C" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stop = killOnAbort(child, opts.signal);
  const members = new Map<string, Member>();
  let bytes = 0, full = false;
  let refused: UserError | undefined;
  const readList = () =>
    eachLine(child.stdout, (line) => {
      const m = parseListLine(line);
      if (!m || full || refused) return;
      const before = members.get(m.name);
      if (before && (before.retyped || before.kind !== m.kind)) m.retyped = true;
      members.set(m.name, m);
      if (members.size > MAX_MEMBERS) {
        refused ??= tooManyMembers(what, MAX_MEMBERS);
        killQuietly(child);
        return;
      }
      bytes += m.size;
      if (opts.room && exceeds(opts.room, bytes, members.size)) {
        full = true;
        killQuietly(child);
      }
    }, what).catch((e) => {
      if (!(e instanceof UserError)) throw e;
      refused = e;
      killQuietly(child);
    });
  try {
    const [, stderr, status] = await Promise.all([
      readList(),
      readCapped(child.stderr),
      child.status,
    ]);
    opts.signal?.throwIfAborted();
    if (refused) throw refused;
    if (full) throw noRoomFor(what);
    if (!status.success) throw tarFailure(stderr, what, "none");
    return members;
  } finally {
    stop();
  }
}

/**
 * Runs a tool that writes into the import's scratch dir with `-v` output drained by us: if this
 * process is killed, the tool's next write hits a closed pipe (SIGPIPE) and it stops, instead of
 * writing on into tmp/ while the next start wipes it. Returns stderr (capped) and success.
 */
export async function runDrained(
  cmd: string,
  args: string[],
  signal?: AbortSignal,
): Promise<{ ok: boolean; stderr: string }> {
  const child = new Deno.Command(cmd, {
    args,
    env: { LC_ALL: "C" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stop = killOnAbort(child, signal);
  const drain = (async () => {
    for await (const _ of child.stdout) { /* discard */ }
  })();
  const stderr = await readCapped(child.stderr);
  await drain;
  const status = await child.status;
  stop();
  signal?.throwIfAborted();
  return { ok: status.success, stderr };
}

/** Extracts an archive file (a layer) with tar reading it directly; no progress, no hashing. */
export async function extractFile(
  file: string,
  dest: string,
  what: string,
  extraArgs: string[] = [],
  signal?: AbortSignal,
): Promise<void> {
  const r = await runDrained("tar", [
    "-x",
    "-v",
    "-f",
    file,
    "-C",
    dest,
    ...EXTRACT_FLAGS,
    ...extraArgs,
  ], signal);
  if (!r.ok) throw tarFailure(r.stderr, what, "none");
}
