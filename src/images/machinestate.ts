// What one running machine wrote for itself, left out of the upper a `node save` commits: every
// node that boots the saved image would otherwise share it (one random seed, one machine's old
// journal and timer stamps, its sockets in /tmp) and the image would carry the lab server's key.
// systemd's "Building images safely" (https://systemd.io/BUILDING_IMAGES/) names these files.
// Applied to the unpacked upper (save.ts), before the manifest is derived from it: what is taken
// out of the upper is, in the new version, as the base version has it. `--keep-machine-state`
// skips it.
import { dirname } from "node:path";
import { isServerLine } from "../../contract/serverkey.ts";
import { type ManifestEntry, parseEntry } from "../../contract/manifest.ts";
import { lchown, lutimes } from "../linux/fsops.ts";
import { listXattrs, setXattr } from "../linux/xattr.ts";
import { lstatOrNull } from "./archivepath.ts";
import type { BaseIndex } from "./derive.ts";
import { objectKey, type ObjectStore } from "./objects.ts";
import { isOpaque } from "./upper.ts";
import { Turns } from "../turns.ts";

/**
 * The paths left out, with what is taken out of the upper:
 * - `entry`: the upper's entry and all below it (a whiteout too): the base's stays;
 * - `contents`: all below it; the entry itself too when the base has that path (a directory the
 *   node made stays, empty: /var/log/journal made to keep the journal is a choice of the admin's);
 * - `madeByNetroot`: the entry and all below it when the base lacks the path (the init made it).
 */
const RULES: { path: string; label: string; kind: "entry" | "contents" | "madeByNetroot" }[] = [
  { path: "/etc/machine-id", label: "machine-id", kind: "entry" },
  { path: "/var/lib/systemd/random-seed", label: "random-seed", kind: "entry" },
  { path: "/var/lib/systemd/credential.secret", label: "credential.secret", kind: "entry" },
  { path: "/var/lib/systemd/timers", label: "timer stamps", kind: "entry" },
  { path: "/var/log/journal", label: "journal", kind: "contents" },
  { path: "/tmp", label: "/tmp", kind: "contents" },
  { path: "/var/tmp", label: "/var/tmp", kind: "contents" },
  { path: "/persist", label: "the /persist mount point", kind: "madeByNetroot" },
];

const AUTHORIZED_KEYS = "/root/.ssh/authorized_keys";
/** An authorized_keys larger than this is left as it is (the init refuses over 256 KiB). */
const MAX_KEYS_BYTES = 1 << 20;

/** The base version's manifest, looked up by path. */
interface Base {
  entry(path: string): ManifestEntry | undefined;
  /** A regular file's content, from the object store (never through the base's tree, whose
   *  symlinks are the image's); undefined when it cannot be read. */
  content(path: string): Uint8Array | undefined;
}

function baseOf(index: BaseIndex, objects: ObjectStore): Base {
  const entry = (path: string) => {
    const i = index.index.get(path);
    return i === undefined ? undefined : parseEntry(index.lines[i]);
  };
  return {
    entry,
    content(path) {
      let e = entry(path);
      if (e?.type === "hardlink") e = entry(e.target!);
      if (e?.type !== "file") return undefined;
      try {
        return Deno.readFileSync(objects.path(objectKey(e)));
      } catch {
        return undefined;
      }
    },
  };
}

/** The host path of `path` in the upper when every directory on the way is a real one (a link
 *  in the upper is the node's entry, never followed), else undefined. */
function inUpper(upper: string, path: string): string | undefined {
  let at = upper;
  const parts = path.split("/").filter(Boolean);
  for (const [i, part] of parts.entries()) {
    at = `${at}/${part}`;
    const st = lstatOrNull(at);
    if (!st) return undefined;
    if (i < parts.length - 1 && !st.isDirectory) return undefined;
  }
  return at;
}

/** Removes `host` and all below it (a link never followed); returns the non-directory entries
 *  removed: what a summary counts as files. */
async function removeCounting(host: string, turns: Turns): Promise<number> {
  let n = 1;
  if (Deno.lstatSync(host).isDirectory) {
    n = 0;
    // Read off the thread (readDirSync reads all entries at once: 0.5 s for 200,000).
    for await (const e of Deno.readDir(host)) n += await removeCounting(`${host}/${e.name}`, turns);
  }
  Deno.removeSync(host);
  await turns.take();
  return n;
}

/**
 * Takes the machine's own state out of `upper` (an unpacked overlay upper: whiteouts are char
 * devices 0/0, opaque directories marked by their xattr) that is to be applied onto the version
 * `index` describes. Returns what was left out, a short phrase each ("journal (3 files)").
 */
export async function leaveOutMachineState(
  upper: string,
  index: BaseIndex,
  objects: ObjectStore,
): Promise<string[]> {
  const base = baseOf(index, objects);
  const out: string[] = [];
  /** The paths whose entry, or something below it, was taken out. */
  const touched: string[] = [];
  // Its size is the node's: a /tmp of 200,000 files held the server's only thread 4 s.
  const turns = new Turns();
  const drop = (host: string) => removeCounting(host, turns);
  for (const rule of RULES) {
    const host = inUpper(upper, rule.path);
    if (!host) continue;
    const st = Deno.lstatSync(host);
    const inBase = base.entry(rule.path) !== undefined;
    let files = 0, left = false;
    if (rule.kind === "entry" || (rule.kind === "madeByNetroot" && !inBase)) {
      files = (await drop(host)) - (st.isDirectory ? 0 : 1); // (a whiteout: 0)
      left = true;
    } else if (rule.kind === "contents") {
      if (st.isDirectory) {
        for await (const e of Deno.readDir(host)) {
          files += await drop(`${host}/${e.name}`);
          left = true;
        }
      }
      if (inBase) {
        await drop(host);
        left = true;
      }
    }
    if (!left) continue;
    touched.push(rule.path);
    out.push(files ? `${rule.label} (${files} file${files === 1 ? "" : "s"})` : rule.label);
  }
  const key = leaveOutServerKey(upper, base);
  if (key) {
    out.push(`the server's key in ${AUTHORIZED_KEYS}`);
    if (key === "dropped") touched.push(AUTHORIZED_KEYS);
  }
  for (const path of touched) pruneEmptied(upper, dirname(path));
  return out;
}

/** A directory with nothing in it and not opaque: in an upper, only its own metadata. */
function emptyPlainDir(host: string): boolean {
  const st = lstatOrNull(host);
  if (!st?.isDirectory || isOpaque(listXattrs(host))) return false;
  for (const _ of Deno.readDirSync(host)) return false;
  return true;
}

/** Removes `dir` and its parents from the upper while each is an empty, plain directory: it was
 *  there only for what was left out — made on the node for it (/var/lib/systemd, netroot init's
 *  /root/.ssh) or copied up by overlayfs for it — and kept, it would give the new version this
 *  machine's directory times. Without it the base's stays, or the path stays absent. */
function pruneEmptied(upper: string, dir: string): void {
  for (; dir !== "/"; dir = dirname(dir)) {
    const host = inUpper(upper, dir);
    if (!host || !emptyPlainDir(host)) return;
    Deno.removeSync(host);
  }
}

/**
 * The server's line (netroot init's, found by its marker) out of the upper's authorized_keys;
 * the admin's own keys stay. When no other line changed from the base's, the file is left as the
 * base has it (the upper's entry dropped). Undefined when there was no such line.
 */
function leaveOutServerKey(upper: string, base: Base): "dropped" | "rewritten" | undefined {
  const host = inUpper(upper, AUTHORIZED_KEYS);
  const st = host && Deno.lstatSync(host);
  if (!host || !st || !st.isFile || st.size > MAX_KEYS_BYTES) return undefined;
  const lines = new TextDecoder().decode(Deno.readFileSync(host)).split("\n");
  const kept = lines.filter((l) => !isServerLine(l));
  if (kept.length === lines.length) return undefined;
  // netroot init writes the image's keys back without blank lines, its own line last: compared
  // that way, "nothing else changed" holds for a base file with blank lines too.
  const keys = (ls: string[]) => ls.filter((l) => l.trim() !== "" && !isServerLine(l)).join("\n");
  // The base's keys: none when it has no such file; unknown when it has one that cannot be read
  // (then the rest of the upper's file is kept).
  let baseKeys: string | undefined = "";
  if (base.entry(AUTHORIZED_KEYS)) {
    const was = base.content(AUTHORIZED_KEYS);
    baseKeys = was && keys(new TextDecoder().decode(was).split("\n"));
  }
  if (keys(kept) === baseKeys) {
    Deno.removeSync(host);
    return "dropped";
  }
  rewrite(host, st, kept.join("\n"));
  return "rewritten";
}

/** `host`'s content replaced by `text` through a new file renamed over it (a hard link to another
 *  entry of the upper keeps its content), with `st`'s owner, mode, xattrs and time. */
function rewrite(host: string, st: Deno.FileInfo, text: string): void {
  const tmp = `${host}.netroot-${crypto.randomUUID()}`;
  const x = listXattrs(host);
  Deno.writeTextFileSync(tmp, text, { createNew: true, mode: 0o600 });
  lchown(tmp, st.uid!, st.gid!);
  Deno.chmodSync(tmp, st.mode! & 0o7777); // after chown, which drops suid
  for (const [k, v] of x ?? []) setXattr(tmp, k, v);
  lutimes(tmp, st.mtime!.getTime() / 1000);
  Deno.renameSync(tmp, host);
}
