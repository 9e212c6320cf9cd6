// `netroot install-service` / `uninstall-service`: the running program (bundle + its deno, or a
// `deno compile` executable; from a checkout it is bundled first), the systemd unit, a `netroot`
// command, shell completions and an empty settings file under the standard paths. Files are
// replaced whole (written beside, then renamed), so a re-install is an upgrade: the new program
// starts with `systemctl restart` and migrates the data dir. Uninstall keeps the settings and the
// data dir.
import { bundledIpxeDir } from "../release/ipxe.ts";
import { existsSync, realpathSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { DatabaseSync } from "node:sqlite";
import { loadServeConfig } from "../config.ts";
import { checkoutRoot } from "../datadir.ts";
import { schemaVersion, versionOf } from "../db.ts";
import { UserError } from "../errors.ts";
import { isCompiled } from "../initramfs/bundle.ts";
import { completionScript } from "../cli/completion.ts";
import { syncFile, writeFileDurable } from "../linux/fsops.ts";
import { dropKernelExports, kernelExportsFile } from "../nfs.ts";
import unitTemplate from "./netroot.service" with { type: "text" };

export const paths = {
  lib: "/usr/local/lib/netroot",
  bin: "/usr/local/bin/netroot",
  unit: "/etc/systemd/system/netroot.service",
  etc: "/etc/netroot",
  config: "/etc/netroot/config.json",
  data: "/var/lib/netroot",
  bashCompletion: "/usr/local/share/bash-completion/completions/netroot",
  zshCompletion: "/usr/local/share/zsh/site-functions/_netroot",
};

/** Marks files this program wrote, so uninstall removes only those. */
const marker = "installed by netroot install-service";
/** In the shipped unit's first lines: what tells netroot's unit from another one of that name. */
const unitMarker = "`netroot install-service` installs this file";
/** What installProgram puts in the program directory (a bundle, or a compiled executable). */
const programEntries = new Set(["deno", "netroot.js", "netroot-init.js", "netroot", "ipxe"]);

/**
 * The paths install and uninstall replace or remove whole that hold something else: a netroot
 * checkout cloned to /usr/local/lib/netroot (install moved it aside and removed it, local changes
 * and all, while bundling from it), another program's or the admin's own netroot.service or
 * `netroot` command (replaced, or removed by uninstall).
 */
async function notOurs(root: string): Promise<string[]> {
  const at = (p: string) => join(root, p);
  const found: string[] = [];
  const lib = await Deno.lstat(at(paths.lib)).catch(() => undefined);
  if (
    lib && (!lib.isDirectory ||
      [...Deno.readDirSync(at(paths.lib))].some((e) => !programEntries.has(e.name)))
  ) found.push(paths.lib);
  for (const [path, sign] of [[paths.unit, unitMarker], [paths.bin, marker]]) {
    const text = await Deno.readTextFile(at(path)).catch((e) => {
      if (e instanceof Deno.errors.NotFound) return undefined;
      return ""; // a directory, unreadable: not ours either
    });
    if (text !== undefined && !text.includes(sign)) found.push(path);
  }
  return found;
}

/** The kept settings file, read as the installed service will: an upgrade over one this program
 *  refuses (a key it does not know, a value it now bounds) restarted the service into a failure
 *  at every start, with the old program already replaced. */
async function checkSettings(root: string): Promise<void> {
  const file = join(root, paths.config);
  if (!existsSync(file)) return;
  try {
    await loadServeConfig(["--config", file]);
  } catch (e) {
    if (!(e instanceof UserError)) throw e;
    throw new UserError(
      `install-service: the service would not start with ${paths.config} (${e.message}): ` +
        "fix it first; nothing was changed",
    );
  }
}

/** The data dir's database, read as the installed program will: an older program over a data dir
 *  a newer one migrated (a rollback after an upgrade) replaced the newer program, then refused
 *  the database at every start of the service. */
function checkDataDir(root: string, data: string): void {
  const file = join(root, data, "netroot.db");
  if (!existsSync(file)) return;
  let version: number;
  const db = new DatabaseSync(file, { readOnly: true, timeout: 5000 });
  try {
    version = versionOf(db);
  } finally {
    db.close();
  }
  if (version > schemaVersion) {
    throw new UserError(
      `install-service: ${join(data, "netroot.db")} was upgraded by a newer netroot (schema ` +
        `${version}; this one knows ${schemaVersion}), which this program would refuse at every ` +
        "start: install that netroot or a newer one, or restore the backup taken before the " +
        "upgrade (netroot restore); nothing was changed",
    );
  }
}

/** Refuses, before anything changes, when a path it would replace or remove is not netroot's. */
async function refuseOthers(root: string, what: string): Promise<void> {
  const others = await notOurs(root);
  if (others.length) {
    throw new UserError(
      `${what}: ${others.join(", ")} ${others.length > 1 ? "are" : "is"} not netroot's ` +
        "(not written by install-service): move it away first; nothing was changed",
    );
  }
}

export interface InstallOptions {
  /** The service's data dir (default /var/lib/netroot). */
  data?: string;
  /** Install under this directory instead of / (an image being built): no systemctl. */
  root?: string;
  /** Do not enable and (re)start the service. */
  noStart?: boolean;
  log?: (line: string) => void;
}

type Program = { kind: "bundle"; files: Map<string, string> } | { kind: "compiled"; exe: string };

/** What ExecStart and the `netroot` command run, once installed. */
function installedCommand(p: Program): string[] {
  return p.kind === "compiled"
    ? [join(paths.lib, "netroot")]
    : [join(paths.lib, "deno"), "run", "-A", "--no-config", join(paths.lib, "netroot.js")];
}

/** The unit for this install: the shipped file with its data dir and program path. */
export function renderUnit(command: string[], data: string): string {
  const replace = (text: string, re: RegExp, line: string) => {
    if (!re.test(text)) throw new Error(`netroot.service has no line matching ${re}`);
    return text.replace(re, line);
  };
  let unit = replace(
    unitTemplate,
    /^Environment=NETROOT_DATA=.*$/m,
    `Environment=NETROOT_DATA=${data}`,
  );
  unit = replace(
    unit,
    /^ExecStart=\S+(?: run -A --no-config \S+)? /m,
    `ExecStart=${command.join(" ")} `,
  );
  return unit;
}

export function wrapperScript(command: string[], data: string): string {
  return `#!/bin/sh
# netroot command, ${marker}: the same program as the service, and its data dir (for the API
# token and backup/restore) unless NETROOT_DATA says otherwise.
export DENO_NO_UPDATE_CHECK=1 RUST_BACKTRACE=0
: "\${NETROOT_DATA:=${data}}"
export NETROOT_DATA
exec ${command.map((w) => `'${w}'`).join(" ")} "$@"
`;
}

async function run(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, {
      args,
      cwd: opts.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    }).output();
  } catch (e) {
    throw new UserError(`cannot run ${cmd}: ${(e as Error).message}`);
  }
  const text = new TextDecoder();
  if (!out.success) {
    const err = (text.decode(out.stderr) || text.decode(out.stdout)).trim().split("\n").pop();
    throw new UserError(`${cmd} ${args.join(" ")} failed: ${err}`);
  }
  return text.decode(out.stdout);
}

/** The running program's files, bundled into `scratch` first when running from a checkout. */
async function currentProgram(scratch: string): Promise<Program> {
  if (isCompiled()) return { kind: "compiled", exe: realpathSync(Deno.execPath()) };
  const deno = realpathSync(Deno.execPath());
  const self = fileURLToPath(import.meta.url);
  if (self.endsWith(".js")) {
    const files = new Map([["deno", deno], ["netroot.js", self]]);
    const init = join(dirname(self), "netroot-init.js");
    if (existsSync(init)) files.set("netroot-init.js", init);
    return { kind: "bundle", files };
  }
  const root = checkoutRoot();
  if (!root) throw new Error(`cannot tell how netroot runs (module ${import.meta.url})`);
  for (
    const [out, entry] of [["netroot.js", "main.ts"], ["netroot-init.js", "overlay/node_main.ts"]]
  ) {
    await run(deno, ["bundle", "--quiet", "--platform", "deno", "-o", join(scratch, out), entry], {
      cwd: root,
    });
  }
  return {
    kind: "bundle",
    files: new Map([
      ["deno", deno],
      ["netroot.js", join(scratch, "netroot.js")],
      ["netroot-init.js", join(scratch, "netroot-init.js")],
    ]),
  };
}

/** `text` at `path`, whole (a power cut after an install leaves no empty unit or wrapper). */
async function writeWhole(path: string, text: string, mode: number): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  await writeFileDurable(path, text, mode);
}

/** Fills a fresh program directory, then swaps it with the installed one. */
async function installProgram(root: string, program: Program): Promise<void> {
  const lib = join(root, paths.lib);
  const fresh = `${lib}.new-${Deno.pid}`, old = `${lib}.old-${Deno.pid}`;
  await Deno.remove(fresh, { recursive: true }).catch(() => {});
  await Deno.mkdir(fresh, { recursive: true, mode: 0o755 });
  const files = program.kind === "compiled" ? new Map([["netroot", program.exe]]) : program.files;
  for (const [name, from] of files) {
    await Deno.copyFile(from, join(fresh, name));
    await Deno.chmod(join(fresh, name), name.endsWith(".js") ? 0o644 : 0o755);
    await syncFile(join(fresh, name));
  }
  // The bundle's boot loaders go along (src/release/ipxe.ts looks for ipxe/ beside the program).
  const loaders = bundledIpxeDir();
  if (loaders && existsSync(loaders)) {
    await Deno.mkdir(join(fresh, "ipxe"), { mode: 0o755 });
    for (const e of Deno.readDirSync(loaders)) {
      if (!e.isFile) continue;
      await Deno.copyFile(join(loaders, e.name), join(fresh, "ipxe", e.name));
      await Deno.chmod(join(fresh, "ipxe", e.name), 0o644);
      await syncFile(join(fresh, "ipxe", e.name));
    }
  }
  const had = existsSync(lib);
  if (had) await Deno.rename(lib, old);
  await Deno.rename(fresh, lib);
  if (had) await Deno.remove(old, { recursive: true });
}

const systemdRunning = (root: string) => root === "/" && existsSync("/run/systemd/system");

export async function installService(opts: InstallOptions = {}): Promise<void> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const root = opts.root ?? "/";
  // An upgrade (install again without --data) keeps the data dir the installed unit names.
  const data = opts.data ?? (await installedDataDir(root)) ?? paths.data;
  // It goes into the wrapper script inside "…" (where $ and ` substitute) and into the unit
  // (where % is a specifier).
  if (!data.startsWith("/") || /[\s"'`\\$%]/.test(data)) {
    throw new UserError(
      `--data must be an absolute path without spaces, quotes, backquotes, $ or %, got ${data}`,
    );
  }
  if (root === "/" && Deno.uid() !== 0) throw new UserError("install-service needs root");
  await refuseOthers(root, "install-service");
  await checkSettings(root);
  checkDataDir(root, data);
  const scratch = await Deno.makeTempDir({ prefix: "netroot-install-" });
  let command: string[];
  try {
    const program = await currentProgram(scratch);
    await installProgram(root, program);
    command = installedCommand(program);
    log(`program: ${paths.lib}/ (${program.kind})`);
  } finally {
    await Deno.remove(scratch, { recursive: true });
  }
  const at = (p: string) => join(root, p);
  await writeWhole(at(paths.unit), renderUnit(command, data), 0o644);
  await writeWhole(at(paths.bin), wrapperScript(command, data), 0o755);
  await writeWhole(at(paths.bashCompletion), completionScript("bash"), 0o644);
  await writeWhole(at(paths.zshCompletion), completionScript("zsh"), 0o644);
  log(`unit: ${paths.unit}; command: ${paths.bin}`);
  await Deno.mkdir(at(paths.etc), { recursive: true, mode: 0o755 });
  if (!existsSync(at(paths.config))) {
    await writeWhole(at(paths.config), "{}\n", 0o644);
    log(`settings: ${paths.config} (new, empty: embedded defaults)`);
  } else log(`settings: ${paths.config} (kept)`);
  await Deno.mkdir(at(data), { recursive: true, mode: 0o755 });
  log(`data: ${data}`);
  if (!systemdRunning(root)) {
    log(
      root === "/"
        ? "systemd is not running here: start the service at the next boot (systemctl enable --now netroot)"
        : `installed under ${root}: enable it there with systemctl enable netroot`,
    );
    return;
  }
  await run("systemctl", ["daemon-reload"]);
  if (opts.noStart) {
    log("not started (--no-start): systemctl enable --now netroot");
    return;
  }
  await run("systemctl", ["enable", "--quiet", "netroot.service"]);
  // restart = start when stopped; when running, the new program takes over (an upgrade).
  await run("systemctl", ["restart", "netroot.service"]);
  log("netroot.service enabled and (re)started: systemctl status netroot; journalctl -u netroot");
}

/** The data dir the installed unit names (to tell the user what was kept). */
async function installedDataDir(root: string): Promise<string | undefined> {
  const unit = await Deno.readTextFile(join(root, paths.unit)).catch(() => "");
  return /^Environment=NETROOT_DATA=(\S+)$/m.exec(unit)?.[1];
}

export async function uninstallService(
  opts: { root?: string; log?: (line: string) => void } = {},
): Promise<void> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const root = opts.root ?? "/";
  if (root === "/" && Deno.uid() !== 0) throw new UserError("uninstall-service needs root");
  const at = (p: string) => join(root, p);
  if (!existsSync(at(paths.unit)) && !existsSync(at(paths.lib))) {
    throw new UserError(`netroot is not installed as a service (no ${paths.unit})`);
  }
  await refuseOthers(root, "uninstall-service");
  const data = (await installedDataDir(root)) ?? paths.data;
  if (systemdRunning(root)) {
    // disable --now stops it; a unit systemd does not know (already removed) is not an error.
    await run("systemctl", ["disable", "--now", "--quiet", "netroot.service"]).catch((e) =>
      log(`systemctl disable: ${(e as Error).message}`)
    );
  }
  // Its kernel NFS exports stay when netroot stops (booted nodes keep their roots through a
  // restart); uninstalled, nothing follows them any more: nfsd would go on exporting every
  // /persist, root kept, to addresses the lab may now give to any machine (dropKernelExports).
  const nfs = await dropKernelExports(resolve(data), {
    file: at(kernelExportsFile),
    apply: root === "/",
    why: "uninstall-service",
  });
  if (nfs === "dropped") log(`removed ${kernelExportsFile} (netroot's kernel NFS exports)`);
  await Deno.remove(at(paths.unit)).catch(() => {});
  await Deno.remove(at(paths.lib), { recursive: true }).catch(() => {});
  for (const f of [paths.bin, paths.bashCompletion, paths.zshCompletion]) {
    await Deno.remove(at(f)).catch(() => {});
  }
  if (systemdRunning(root)) await run("systemctl", ["daemon-reload"]);
  log(
    `removed the service and ${paths.lib}; kept the settings (${paths.etc}) and the data (${data})`,
  );
}
