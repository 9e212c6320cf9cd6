// GNU tar as the extractor (it knows every header format, xattrs, sparse files, hardlinks), driven
// so that the import stays observable and fast:
//   - progress is tar's read offset in the archive (/proc/<pid>/fdinfo);
//   - `-v` names each member as tar starts it, so the previous member is complete: a hashing
//     worker digests it while tar extracts the next one (the manifest's sha256 pass overlaps the
//     extraction on a second core);
//   - the member list tells which directories the archive did not carry (see normalizeDirs).
import { UserError } from "../errors.ts";
import type { CachedHash, Progress } from "./walk.ts";
import { workerFromSource } from "../worker.ts";

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
  "--quoting-style=escape",
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

/** GNU tar's "escape" quoting back to the name (octal escapes are UTF-8 bytes in the C locale). */
export function unescapeTarName(s: string): string {
  if (!s.includes("\\")) return s;
  const bytes: number[] = [];
  const simple: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, "\\": 92 };
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "\\" && i + 1 < s.length) {
      const oct = /^[0-7]{3}/.exec(s.slice(i + 1, i + 4));
      if (oct) {
        bytes.push(parseInt(oct[0], 8));
        i += 3;
        continue;
      }
      if (s[i + 1] in simple) {
        bytes.push(simple[s[i + 1]]);
        i++;
        continue;
      }
    }
    bytes.push(...new TextEncoder().encode(c));
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

/** "./usr/bin/" → { rel: "/usr/bin", dir: true }; "./" → the root "/". */
export function memberPath(name: string): { rel: string; dir: boolean } {
  const dir = name.endsWith("/");
  const parts = name.split("/").filter((p) => p && p !== ".");
  return { rel: "/" + parts.join("/"), dir: dir || parts.length === 0 };
}

/** One clear line out of tar's (and its decompressor's) stderr. */
export function tarFailure(stderr: string, what: string, compression: Compression): UserError {
  const lines = stderr.split("\n").map((l) => l.trim().replace(/^\S*\btar: /, "")).filter((l) =>
    l &&
    !/Removing leading|Exiting with failure status|Error is not recoverable|Ignoring unknown extended header/
      .test(l)
  );
  const all = lines.join(" | ");
  if (/No space left on device/.test(all)) {
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
const hashWorkerCode = `
import { createHash } from "node:crypto";
const buf = new Uint8Array(1 << 20);
self.onmessage = (e) => {
  const m = e.data;
  if (m.end) { self.postMessage({ end: true }); return; }
  try {
    const st = Deno.lstatSync(m.full);
    if (!st.isFile) return;
    const h = createHash("sha256");
    const f = Deno.openSync(m.full);
    try {
      for (;;) { const n = f.readSync(buf); if (!n) break; h.update(buf.subarray(0, n)); }
    } finally { f.close(); }
    self.postMessage({ rel: m.rel, ino: st.ino, size: st.size, mtimeMs: st.mtime.getTime(), sha256: h.digest("hex") });
  } catch { /* gone or unreadable: the final walk hashes it */ }
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

export interface Members {
  /** Every member path (normalised, "/"-rooted) → whether it is a directory. */
  paths: Map<string, boolean>;
  /** Digests of files computed during extraction, keyed by path. */
  cache: Map<string, CachedHash>;
}

const looksLikeImageArchive =
  /^\/(oci-layout|index\.json|manifest\.json|repositories|blobs|[0-9a-f]{64}(\.json|\.tar)?)$/;

/**
 * Extracts archive `file` into the existing directory `dest`, feeding it on stdin.
 * Throws a UserError on any tar failure (the caller removes `dest`).
 */
export async function extractArchive(
  file: string,
  compression: Compression,
  dest: string,
  opts: { onProgress?: Progress; what?: string; hash?: boolean; signal?: AbortSignal } = {},
): Promise<Members> {
  const what = opts.what ?? file;
  const size = (await Deno.stat(file)).size;
  const flag = tarFlag[compression];
  const child = new Deno.Command("tar", {
    args: ["-x", "-v", "-f", file, "-C", dest, ...EXTRACT_FLAGS, ...(flag ? [flag] : [])],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C" },
  }).spawn();
  const stop = killOnAbort(child, opts.signal);
  const hasher = opts.hash === false ? undefined : tryStartHashWorker();
  const paths = new Map<string, boolean>();
  const relisted = new Set<string>();

  const readNames = async () => {
    let prev: string | undefined;
    let first = true;
    let hashing = hasher !== undefined;
    let rest = "";
    const take = (line: string) => {
      if (!line) return;
      const { rel, dir } = memberPath(unescapeTarName(line));
      // A member listed twice was overwritten: its early digest may be of the old content.
      if (paths.has(rel)) relisted.add(rel);
      paths.set(rel, dir);
      if (first && rel !== "/") {
        if (looksLikeImageArchive.test(rel)) hashing = false; // blobs of layers, not a rootfs
        first = false;
      }
      if (hashing && prev !== undefined) hasher!.post(prev, dest + prev);
      prev = dir ? undefined : rel;
    };
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      const lines = (rest + chunk).split("\n");
      rest = lines.pop()!;
      for (const l of lines) take(l);
    }
    take(rest);
    if (hashing && prev !== undefined) hasher!.post(prev, dest + prev);
  };
  const readErrors = async () => {
    let text = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      if (text.length < 64 * 1024) text += chunk;
    }
    return text;
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
    const [, stderr, status] = await Promise.all([readNames(), readErrors(), child.status]);
    running = false;
    await watching;
    opts.onProgress?.({ phase: "extract", done: size, total: size });
    opts.signal?.throwIfAborted();
    if (!status.success) throw tarFailure(stderr, what, compression);
    await hasher?.finish();
    for (const rel of relisted) hasher?.cache.delete(rel);
    return { paths, cache: hasher?.cache ?? new Map() };
  } finally {
    stop();
    hasher?.stop();
  }
}

/** The member list of an archive file (tar detects the compression itself). */
export async function listArchive(file: string, what: string): Promise<Map<string, boolean>> {
  const out = await new Deno.Command("tar", {
    args: ["-t", "-f", file, "--quoting-style=escape"],
    env: { LC_ALL: "C" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw tarFailure(new TextDecoder().decode(out.stderr), what, "none");
  const paths = new Map<string, boolean>();
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    if (!line) continue;
    const { rel, dir } = memberPath(unescapeTarName(line));
    paths.set(rel, dir);
  }
  return paths;
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
  let stderr = "";
  for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
    if (stderr.length < 64 * 1024) stderr += chunk;
  }
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
