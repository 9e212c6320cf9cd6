// `netroot backup FILE` and `netroot restore FILE`: the server's state in one tar file.
//
//   netroot-backup.json   what this is: format, version, schema version, when, from where
//   netroot.db            the database: SQLite's online backup (one read transaction: a
//                         consistent copy while the server keeps writing)
//   token                 the API write token
//   power/                the power programs (power.command), files and symlinks
//   config/config.*       the settings file(s) (/etc/netroot/config.* or --config FILE)
//   ssh/id_ed25519(.pub)  the server's ssh key pair (src/nodessh.ts), when it has one: every
//                         node that booted holds its public half in authorized_keys
//
// Not in it: the image trees, the nodes' /persist and the initramfs cache (file trees, big;
// copy <data>/images, objects and nodes in one `rsync -aHAX --numeric-ids`, or a file-system
// snapshot: a version no node uses is only its manifest and objects). The file holds the
// token, the power passwords and the ssh key: it is written mode 0600.
//
// Restore takes the data dir's lock (a running server holds it: restore refuses), checks the
// whole backup before touching anything, moves the current files to <data>/replaced-<time>/
// (nothing is lost), then renames the backup's files in. The next start migrates an older schema
// and reconciles the tree with the database.
import { backup as sqliteBackup, DatabaseSync } from "node:sqlite";
import { existsSync } from "node:fs";
import { basename, dirname, extname, join, resolve } from "node:path";
import { DataDir } from "../datadir.ts";
import { type Db, migrate, openDatabase, schemaVersion, versionOf } from "../db.ts";
import { ImageStore } from "../images/store.ts";
import { UserError } from "../errors.ts";
import { fsyncDir, statvfs, syncFile, syncfs } from "../linux/fsops.ts";
import { lockDataDir } from "./lock.ts";

export const MANIFEST = "netroot-backup.json";
const FORMAT = "netroot-backup", VERSION = 1;
/** The settings directory of an installed service (install-service). */
export const etcDir = "/etc/netroot";

const powerName = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;
const configName = /^config\.[a-z]{1,8}$/;
/** The server's key pair in <data>/ssh/. Restored on a new machine without it, the server made a
 *  new one, which no running node accepts: `node run` and clean reboots failed on every node
 *  until it was power-cycled. */
const sshKeyNames = ["id_ed25519", "id_ed25519.pub"];

export interface Manifest {
  format: typeof FORMAT;
  version: number;
  schemaVersion: number;
  createdAt: string;
  dataDir: string;
  config: string[];
  power: string[];
  /** The server's ssh key pair is in it (absent in backups of older netroots). */
  ssh?: boolean;
}

/** The tar processes running (an interrupted backup stops them before it exits). */
const tars = new Set<Deno.ChildProcess>();

/** tar with `args`, its output piped, counted in `tars` until the caller takes it out. */
function spawnTar(args: string[]): Deno.ChildProcess {
  const child = new Deno.Command("tar", {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C" },
  }).spawn();
  tars.add(child);
  return child;
}

async function tar(args: string[]): Promise<string> {
  const child = spawnTar(args);
  const out = await child.output().finally(() => tars.delete(child));
  const text = new TextDecoder();
  if (!out.success) {
    throw new UserError(`tar: ${text.decode(out.stderr).trim().split("\n").pop()}`);
  }
  return text.decode(out.stdout);
}

/**
 * Runs tar with its archive on stdout, written into `out` (closed after): only this process opens
 * the file by its name. Told `--file PATH`, tar's compressor (a process of its own) opened it,
 * and a backup interrupted before it did had the file made again after it was removed, then
 * written whole, by a compressor that outlived us.
 */
async function tarInto(out: Deno.FsFile, path: string, args: string[]): Promise<void> {
  const child = spawnTar(args);
  try {
    const [written, status, err] = await Promise.all([
      child.stdout.pipeTo(out.writable).then(() => undefined, (e: Error) => e),
      child.status,
      new Response(child.stderr).text(),
    ]);
    if (written) throw new UserError(`cannot write ${path}: ${written.message}`);
    if (!status.success) throw new UserError(`tar: ${err.trim().split("\n").pop()}`);
  } finally {
    tars.delete(child);
  }
}

/** Compression from the file name (tar's own --auto-compress would look at the temporary name). */
function compressionFlag(file: string): string[] {
  if (/\.(t?gz)$/.test(file)) return ["--gzip"];
  if (/\.(t?zst)$/.test(file)) return ["--zstd"];
  if (/\.(t?xz)$/.test(file)) return ["--xz"];
  return [];
}

/** A directory's entries; none when it does not exist. */
async function entries(dir: string): Promise<Deno.DirEntry[]> {
  try {
    return await Array.fromAsync(Deno.readDir(dir));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
}

/** Settings files to save: --config FILE, else /etc/netroot/config.* of an installed service. A
 *  symlink there (configuration management's usual way) is saved as the file it names: skipped,
 *  the settings were silently not in the backup. */
async function configFiles(
  config: string | undefined,
  warn: (l: string) => void,
): Promise<string[]> {
  if (config) return [resolve(config)];
  const found: string[] = [];
  for (const e of await entries(etcDir)) {
    if (!configName.test(e.name)) continue;
    const path = join(etcDir, e.name);
    if ((await Deno.stat(path).catch(() => undefined))?.isFile) found.push(path);
    else warn(`not saved: ${path} (not a file, nor a symlink to one)`);
  }
  return found.sort();
}

/** Copies the power programs: regular files and symlinks with plain names (others are named). */
async function copyPower(from: string, to: string, warn: (l: string) => void): Promise<string[]> {
  await Deno.mkdir(to);
  // With its mode: a power/ of 0700 came back 0755 (the umask's), and its scripts of 0644 with a
  // PDU's password in them readable by every user of the server.
  const mode = (await Deno.stat(from).catch(() => undefined))?.mode;
  await Deno.chmod(to, mode == null ? 0o700 : mode & 0o7777);
  const names: string[] = [];
  for (const e of await entries(from)) {
    if (!powerName.test(e.name) || !(e.isFile || e.isSymlink)) {
      warn(`not saved: ${join(from, e.name)} (power programs are plain files or symlinks)`);
      continue;
    }
    if (e.isSymlink) await Deno.symlink(await Deno.readLink(join(from, e.name)), join(to, e.name));
    else await Deno.copyFile(join(from, e.name), join(to, e.name));
    names.push(e.name);
  }
  return names.sort();
}

/** Copies the server's key pair when it has both halves as files; false when it has none yet. */
async function copySshKey(from: string, to: string): Promise<boolean> {
  const files = await Promise.all(
    sshKeyNames.map((n) => Deno.lstat(join(from, n)).then((st) => st.isFile, () => false)),
  );
  if (!files.every(Boolean)) return false;
  await Deno.mkdir(to, { mode: 0o700 });
  for (const n of sshKeyNames) await Deno.copyFile(join(from, n), join(to, n));
  await Deno.chmod(join(to, "id_ed25519"), 0o600);
  return true;
}

export interface BackupResult {
  file: string;
  bytes: number;
  manifest: Manifest;
}

export async function backupTo(
  file: string,
  opts: { dataDir: string; config?: string; warn?: (line: string) => void },
): Promise<BackupResult> {
  const warn = opts.warn ?? ((l: string) => console.error(l));
  const data = new DataDir(opts.dataDir);
  if (!existsSync(data.db)) throw new UserError(`no netroot database in ${opts.dataDir}`);
  const target = resolve(file);
  // Staged in the data dir's tmp/ (owner-only, wiped at every start of the server, and on the
  // file system sized for the database), not the system's /tmp: a backup interrupted there
  // (Ctrl-C, a cron job's timeout) left a copy of the database and the token for good, in RAM
  // where /tmp is a tmpfs (553 MB of database, per interrupted backup).
  // (A data dir that cannot be written, a read-only snapshot's, stages in the system's.)
  await Deno.mkdir(data.tmp, { recursive: true, mode: 0o700 }).catch(() => {});
  const stage = await Deno.makeTempDir({ dir: data.tmp, prefix: "backup-" })
    .catch(() => Deno.makeTempDir({ prefix: "netroot-backup-" }));
  const partial = join(dirname(target), `.${basename(target)}.${Deno.pid}.partial`);
  // Interrupted, the process exits without running `finally`: tar (which, left running, wrote the
  // whole file on) and the half-written file and the stage go first.
  const interrupted = () => {
    for (const child of tars) {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
    }
    for (const path of [partial, stage]) {
      try {
        Deno.removeSync(path, { recursive: true });
      } catch { /* not made yet */ }
    }
    Deno.exit(130);
  };
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const sig of signals) Deno.addSignalListener(sig, interrupted);
  try {
    const db = new DatabaseSync(data.db, { timeout: 5000 });
    let schema: number;
    try {
      schema = versionOf(db);
      // rate -1: every page in one step, so one read transaction: writers go on (WAL), the copy
      // is the database as of one commit and the backup never restarts.
      await sqliteBackup(db, join(stage, "netroot.db"), { rate: -1 });
    } finally {
      db.close();
    }
    await Deno.copyFile(data.token, join(stage, "token")).catch(() => {
      throw new UserError(`no token in ${opts.dataDir} (has the server ever run there?)`);
    });
    const power = await copyPower(join(data.root, "power"), join(stage, "power"), warn);
    const ssh = await copySshKey(join(data.root, "ssh"), join(stage, "ssh"));
    const config: string[] = [];
    const configs = await configFiles(opts.config, warn);
    if (configs.length) await Deno.mkdir(join(stage, "config"));
    for (const c of configs) {
      // Saved as config.<ext> (any other name keeps its extension, else .json).
      const ext = /^\.[a-z]{1,8}$/.test(extname(c)) ? extname(c) : ".json";
      const name = configName.test(basename(c)) ? basename(c) : `config${ext}`;
      await Deno.copyFile(c, join(stage, "config", name)).catch((e) => {
        throw new UserError(`cannot read the settings file ${c}: ${e.message}`);
      });
      config.push(name);
    }
    const manifest: Manifest = {
      format: FORMAT,
      version: VERSION,
      schemaVersion: schema,
      createdAt: new Date().toISOString(),
      dataDir: resolve(opts.dataDir),
      config,
      power,
      ssh,
    };
    await Deno.writeTextFile(join(stage, MANIFEST), JSON.stringify(manifest, null, 2) + "\n");
    const members = [
      MANIFEST,
      "netroot.db",
      "token",
      "power",
      ...(config.length ? ["config"] : []),
      ...(ssh ? ["ssh"] : []),
    ];
    // Created 0600 before tar writes into it: the token and the power passwords are inside.
    const out = await Deno.open(partial, { write: true, createNew: true, mode: 0o600 });
    await tarInto(out, partial, [
      "--create",
      ...compressionFlag(target),
      "--file",
      "-",
      "--directory",
      stage,
      "--owner=0",
      "--group=0",
      "--numeric-owner",
      ...members,
    ]);
    await syncFile(partial); // whole under its name after a power cut, on any file system
    await Deno.rename(partial, target);
    return { file: target, bytes: (await Deno.stat(target)).size, manifest };
  } finally {
    for (const sig of signals) Deno.removeSignalListener(sig, interrupted);
    await Deno.remove(partial).catch(() => {});
    await Deno.remove(stage, { recursive: true });
  }
}

/** The most bytes a member holds: the token is 65, a manifest and a settings file a few KiB, a
 *  power program a script or a small binary; the database, whatever the disk has room for. */
function memberMax(name: string): number {
  if (name === "netroot.db") return Infinity;
  if (name === "token") return 1024;
  if (name.startsWith("ssh/")) return 64 << 10;
  return name.startsWith("power/") ? 64 << 20 : 1 << 20;
}

/**
 * The members of a backup, checked before anything is extracted: only the names above, regular
 * files (symlinks only in power/), nothing else, each of a size it can have, all of them within
 * the data dir's free space. A hostile or damaged file is refused whole. (A 110 KiB backup whose
 * token was a sparse 6 GiB file took 2.5 minutes and 6.3 GB of memory to end in a TypeError; a
 * compressed one of zeros filled the data dir's file system.)
 */
async function checkMembers(file: string, room: string): Promise<void> {
  const names = (await tar(["--list", "--file", file, "--quoting-style=escape"])).split("\n")
    .filter(Boolean);
  // Numeric owners: a hostile archive's user name with a blank would shift the size's column.
  const long = (await tar([
    "--list",
    "--verbose",
    "--numeric-owner",
    "--file",
    file,
    "--quoting-style=escape",
  ])).split("\n").filter(Boolean);
  if (names.length !== long.length) throw new UserError(`${file}: unreadable member list`);
  let total = 0;
  names.forEach((raw, i) => {
    const name = raw.replace(/\/$/, "").replace(/^\.\//, "");
    const type = long[i][0];
    const ok = (name === MANIFEST || name === "netroot.db" || name === "token")
      ? type === "-"
      : name === "power" || name === "config" || name === "ssh"
      ? type === "d"
      : name.startsWith("ssh/")
      ? sshKeyNames.includes(name.slice(4)) && type === "-"
      : name.startsWith("power/")
      ? powerName.test(name.slice(6)) && (type === "-" || type === "l")
      : name.startsWith("config/")
      ? configName.test(name.slice(7)) && type === "-"
      : false;
    if (!ok) throw new UserError(`${file} is not a netroot backup: unexpected member ${raw}`);
    if (type !== "-") return;
    // (GNU tar lists a sparse member by the size it extracts to.)
    const size = Number(/^\S+\s+\S+\s+(\d+)\s/.exec(long[i])?.[1] ?? NaN);
    if (!(size <= memberMax(name))) {
      throw new UserError(
        `${file} is not a netroot backup: ${raw} holds ${size} bytes (at most ${memberMax(name)})`,
      );
    }
    total += size;
  });
  const free = statvfs(room).freeBytes;
  if (total > free) {
    throw new UserError(
      `${file} extracts to ${total} bytes, more than the ${free} free for ${room}`,
    );
  }
  for (const needed of [MANIFEST, "netroot.db", "token"]) {
    if (!names.some((n) => n.replace(/^\.\//, "") === needed)) {
      throw new UserError(`${file} is not a netroot backup: no ${needed}`);
    }
  }
}

/** Reads and checks what was extracted: manifest, token, database integrity and schema. */
async function checkExtracted(stage: string, file: string): Promise<Manifest> {
  let manifest: Manifest;
  try {
    manifest = JSON.parse(await Deno.readTextFile(join(stage, MANIFEST)));
  } catch (e) {
    throw new UserError(`${file}: unreadable ${MANIFEST} (${(e as Error).message})`);
  }
  if (manifest.format !== FORMAT || manifest.version !== VERSION) {
    throw new UserError(`${file}: not a netroot backup of version ${VERSION}`);
  }
  // The settings names become paths (config/NAME in the backup, /etc/netroot/NAME): a name with
  // "/" or ".." would make restore copy a file from outside the backup, or over one outside
  // /etc/netroot (the one there moved aside first). The same names the members may have.
  const names = (v: unknown, rule: RegExp) =>
    Array.isArray(v) && v.every((n) => typeof n === "string" && rule.test(n));
  if (!names(manifest.config, configName) || !names(manifest.power, powerName)) {
    throw new UserError(`${file}: ${MANIFEST} names files that are not in a netroot backup`);
  }
  const token = (await Deno.readTextFile(join(stage, "token"))).trim();
  if (!/^[0-9a-f]{64}$/.test(token)) throw new UserError(`${file}: malformed token`);
  const keys = sshKeyNames.filter((n) => existsSync(join(stage, "ssh", n)));
  if (
    keys.length === 1 ||
    keys.length === 2 &&
      !/^ssh-ed25519 \S+/.test(await Deno.readTextFile(join(stage, "ssh", "id_ed25519.pub")))
  ) {
    throw new UserError(`${file}: malformed ssh key pair`);
  }
  let db: DatabaseSync | undefined;
  try {
    // Read-write on the staged copy: a WAL-mode file opened read-only needs a -shm it lacks.
    db = new DatabaseSync(join(stage, "netroot.db"));
    const check = db.prepare("PRAGMA integrity_check").all() as { integrity_check: string }[];
    if (check[0]?.integrity_check !== "ok") {
      throw new UserError(`${file}: the database is damaged (${check[0]?.integrity_check})`);
    }
    const v = versionOf(db);
    if (v > schemaVersion) {
      throw new UserError(
        `${file} comes from a newer netroot (schema ${v}, this one knows ${schemaVersion}): ` +
          "upgrade netroot first",
      );
    }
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${file}: the database is damaged (${(e as Error).message})`);
  } finally {
    db?.close();
  }
  return manifest;
}

export interface RestoreResult {
  manifest: Manifest;
  /** Where the files the backup replaced went (absent when there were none). */
  replaced?: string;
  /** Where the settings file(s) went, or why not. */
  config: string[];
  /** Images of the database whose tree is not in the data dir. */
  missingImages: string[];
}

export async function restoreFrom(
  file: string,
  opts: { dataDir: string; config?: string },
): Promise<RestoreResult> {
  const source = resolve(file);
  if (!existsSync(source)) throw new UserError(`${file}: no such file`);
  await Deno.mkdir(opts.dataDir, { recursive: true });
  using _lock = await lockDataDir(opts.dataDir, "netroot restore");
  const data = new DataDir(opts.dataDir);
  await data.ensure();
  await checkMembers(source, data.tmp);
  const stage = await Deno.makeTempDir({ dir: data.tmp, prefix: "restore-" });
  try {
    await tar(["--extract", "--file", source, "--directory", stage, "--no-same-owner"]);
    const manifest = await checkExtracted(stage, file);
    const missing = checkedDatabase(join(stage, "netroot.db"), data, file);
    // The extracted files on the disk before they are renamed in: a rename can reach the disk
    // (any journal commit) before the data of a file just written (ext4 allocates its blocks at
    // writeback), and an empty netroot.db after a power cut opens as a new, empty database — the
    // next start would then remove every image tree as having no row.
    syncfs(stage);
    // Everything checked: from here on only renames within the data dir.
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    const replaced = join(data.root, `replaced-${stamp}`);
    const key = existsSync(join(stage, "ssh", "id_ed25519"));
    const current = [
      ...["netroot.db", "netroot.db-wal", "netroot.db-shm", "token", "power"],
      ...(key ? sshKeyNames.map((n) => join("ssh", n)) : []),
    ].filter((n) => existsSync(join(data.root, n)));
    // Owner-only, as what it keeps is: the database, the token, the ssh key.
    if (current.length) await Deno.mkdir(replaced, { mode: 0o700 });
    if (current.some((n) => n.startsWith("ssh/"))) await Deno.mkdir(join(replaced, "ssh"));
    for (const n of current) await Deno.rename(join(data.root, n), join(replaced, n));
    await Deno.chmod(join(stage, "token"), 0o600);
    for (const n of ["netroot.db", "token"]) {
      await Deno.rename(join(stage, n), join(data.root, n));
    }
    if (existsSync(join(stage, "power"))) {
      await Deno.rename(join(stage, "power"), join(data.root, "power"));
    }
    if (key) {
      const ssh = join(data.root, "ssh");
      await Deno.mkdir(ssh, { mode: 0o700 }).catch((e) => {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      });
      await Deno.chmod(join(stage, "ssh", "id_ed25519"), 0o600);
      for (const n of sshKeyNames) await Deno.rename(join(stage, "ssh", n), join(ssh, n));
      fsyncDir(ssh);
    }
    fsyncDir(data.root); // restored once restore returns
    const config = await restoreConfig(stage, manifest, opts.config, stamp);
    return {
      manifest,
      replaced: current.length ? replaced : undefined,
      config,
      missingImages: missing,
    };
  } finally {
    await Deno.remove(stage, { recursive: true }).catch(() => {});
  }
}

/** Puts the settings file back: to --config FILE, else into /etc/netroot when it exists. The
 *  file it replaces is kept beside it as NAME.replaced-<time>. */
async function restoreConfig(
  stage: string,
  manifest: Manifest,
  config: string | undefined,
  stamp: string,
): Promise<string[]> {
  const names = manifest.config.filter((n) => existsSync(join(stage, "config", n)));
  if (!names.length) return [];
  if (!config && !existsSync(etcDir)) {
    return [`not restored: ${names.join(", ")} (no ${etcDir}; --config FILE says where)`];
  }
  const done: string[] = [];
  for (const n of config ? names.slice(0, 1) : names) {
    const target = config ? resolve(config) : join(etcDir, n);
    if (existsSync(target)) await Deno.rename(target, `${target}.replaced-${stamp}`);
    await Deno.copyFile(join(stage, "config", n), target);
    await syncFile(target); // not an empty settings file after a power cut
    done.push(target);
  }
  return done;
}

/** Opens the staged database as the server will (migrating an older schema now, so a failure
 *  shows before anything is replaced), refuses one without netroot's tables and columns (a
 *  database that is not ours, whatever its user_version says: it replaced the data dir's, then
 *  failed), and names the images whose files are not in the data dir. */
function checkedDatabase(path: string, data: DataDir, file: string): string[] {
  // Every table.column and view.column of netroot's schema: a database with the tables' names
  // but not their columns (a hand-made or half-copied one at the current user_version) was
  // restored, and the next start failed on "no such column".
  const columns = (db: Db) =>
    new Set(
      (db.prepare(
        `SELECT m.name || '.' || c.name AS col FROM sqlite_master m, pragma_table_info(m.name) c
         WHERE m.type IN ('table', 'view')`,
      ).all() as { col: string }[]).map((r) => r.col),
    );
  const fresh = new DatabaseSync(":memory:");
  let db: Db | undefined;
  try {
    migrate(fresh);
    db = openDatabase(path);
    const have = columns(db);
    const lacking = [...columns(fresh)].filter((c) => !have.has(c));
    if (lacking.length) {
      throw new UserError(
        `${file}: not a netroot database (no column ${lacking.slice(0, 8).join(", ")}` +
          `${lacking.length > 8 ? ", …" : ""})`,
      );
    }
    return new ImageStore(data, db).list().filter((i) => !existsSync(data.manifest(i.id)))
      .map((i) => i.name);
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${file}: the database is damaged (${(e as Error).message})`);
  } finally {
    db?.close();
    fresh.close();
  }
}
