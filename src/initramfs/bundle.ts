// The program the node runs as /init, in the form this server runs in:
//  - bundle mode (running from source or from a `deno bundle` output): the pinned deno binary plus
//    one bundled .js, started by the generated launcher;
//  - compiled mode (running as a `deno compile` executable): that executable, started as
//    `netroot init` by a launcher at /init that mounts /proc first (the runtime needs it, as deno
//    does). Tested with a stand-in executable (denort cannot be fetched here).
// The node runs only `netroot init`: the bundle is made from overlay/node_main.ts (no server code).
// The version hash keys the initramfs cache, so a new program or a new deno gives a new initramfs.
import { oncePerKey } from "../once.ts";
import { createHash } from "node:crypto";
import { existsSync, realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkoutRoot } from "../datadir.ts";
import { EM_X86_64, launcherElf, machineName, readElfFile } from "./elf.ts";
import { keepNewest } from "./prune.ts";
import { nodeRuntime } from "./runtime.ts";
import { UserError } from "../errors.ts";

/** `machine`: the node's (EM_X86_64 when absent); `deno` is a runtime for that machine. */
export type ProgramFiles =
  | { kind: "bundle"; deno: string; script: string; hash: string; machine?: number }
  | { kind: "compiled"; exe: string; hash: string };

/** In-initramfs paths of bundle mode; overlay/init.ts runs from them. */
export const NODE_DENO = "/netroot/deno";
export const NODE_SCRIPT = "/netroot/netroot.js";
/**
 * V8 without its optimizing tiers (Maglev, TurboFan) and without background threads: the init runs
 * once, mostly cold code, and under qemu TCG every compiler run is itself cold machine code to
 * translate (on a single vCPU, a background compile only competes with the init). Measured with
 * bench/boottime_bench.ts (docs/benchmarks.md): the init phase 6.6 s → 3.9 s, the 8 device modules
 * 1.1–1.4 s → 0.6–0.7 s. Sparkplug (baseline code) and the regexp compiler stay: the hybrid copy's
 * loops run in this process too.
 */
export const INIT_V8_FLAGS = "--no-opt,--no-maglev,--single-threaded";
export const INIT_ARGV = [
  NODE_DENO,
  "run",
  "-A",
  "--no-config",
  "--no-code-cache",
  `--v8-flags=${INIT_V8_FLAGS}`,
  NODE_SCRIPT,
  "init",
];
/** DENO_DIR on the tmpfs /run (init mounts it): deno refuses to start without a cache dir. */
export const INIT_ENV = [
  "HOME=/",
  "TERM=linux",
  "DENO_DIR=/run/deno-cache",
  "DENO_NO_UPDATE_CHECK=1",
  "NO_COLOR=1",
  "RUST_BACKTRACE=0",
];

/**
 * /proc is mounted before deno starts: deno 2.9 panics ("no /proc/self/exe available. Is /proc
 * mounted?") as soon as a module imports node:fs, node:crypto, node:zlib or node:process — which
 * the one-file bundle does at its top, before any init code could mount it.
 * MS_NOSUID | MS_NODEV | MS_NOEXEC, as init would; init skips mounts already there.
 */
export const INIT_MOUNTS = [{ source: "proc", target: "/proc", fstype: "proc", flags: 2 | 4 | 8 }];

export function nodeLauncher(machine = EM_X86_64): Uint8Array {
  return launcherElf({
    machine,
    path: NODE_DENO,
    argv: INIT_ARGV,
    envp: INIT_ENV,
    mounts: INIT_MOUNTS,
  });
}

/** In-initramfs path of compiled mode's executable. */
export const NODE_EXE = "/netroot/netroot";

/** Compiled mode's /init: mounts /proc (INIT_MOUNTS), then runs the executable as `netroot init`. */
export function compiledLauncher(machine = EM_X86_64): Uint8Array {
  return launcherElf({
    machine,
    path: NODE_EXE,
    argv: [NODE_EXE, "init"],
    envp: INIT_ENV,
    mounts: INIT_MOUNTS,
  });
}

async function sha256File(path: string, extra = ""): Promise<string> {
  const h = createHash("sha256");
  using f = await Deno.open(path);
  for (;;) {
    const buf = new Uint8Array(1 << 20);
    const n = await f.read(buf);
    if (n === null) break;
    h.update(buf.subarray(0, n));
  }
  h.update(extra);
  return h.digest("hex");
}

/** True when this code runs inside a `deno compile` executable (its modules live in a virtual
 *  directory named after the binary, e.g. /tmp/deno-compile-netroot/). */
export function isCompiled(moduleUrl = import.meta.url): boolean {
  return moduleUrl.includes("/deno-compile-");
}

const programIn = oncePerKey(findProgram);

/** The running program, bundled into `cacheDir` first when running from source (once per process
 *  and cache dir). */
export function currentProgram(cacheDir: string): Promise<ProgramFiles> {
  return programIn(cacheDir);
}

/**
 * The node program for nodes of `machine`: the running one when the machine is the server's, else
 * the same bundled script with the Deno runtime of that machine (runtime.ts, fetched once into
 * `cacheDir/runtime`). A compiled netroot carries only its own machine's runtime.
 */
export async function programFor(machine: number, cacheDir: string): Promise<ProgramFiles> {
  const own = await currentProgram(cacheDir);
  const exe = own.kind === "bundle" ? own.deno : own.exe;
  if (readElfFile(exe).machine === machine) return own;
  if (own.kind === "compiled") {
    throw new UserError(
      `this netroot is a compiled ${
        machineName(readElfFile(exe).machine)
      } executable: it builds no ` +
        `initramfs for ${machineName(machine)} nodes; run the bundle (deno run -A netroot.js)`,
    );
  }
  const deno = await nodeRuntime(machine, join(cacheDir, "runtime"));
  const extra = `${own.hash}\n${machineName(machine)} deno ${Deno.version.deno}\n` +
    btoa(String.fromCharCode(...nodeLauncher(machine)));
  return {
    kind: "bundle",
    deno,
    script: own.script,
    machine,
    hash: createHash("sha256").update(extra).digest("hex"),
  };
}

/** `deno bundle` of `entry` into one JS file at `out` (what `deno task bundle` does for a release);
 *  a failure throws with the bundler's message. */
export async function denoBundle(entry: string, out: string, cwd?: string): Promise<void> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["bundle", "--quiet", "--platform", "deno", "-o", out, entry],
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
  }).output();
  if (!r.success) {
    const err = new TextDecoder().decode(r.stderr).trim();
    // Its bundler (esbuild) comes from npm the first time: an air-gapped checkout lacks it.
    const hint = /registry\.npmjs\.org|dns error|Connect/.test(err)
      ? " (deno bundle fetches its esbuild from npm once: run ./netroot once where the network " +
        "reaches npm, or run the release bundle, dist/netroot.js, which needs no bundling)"
      : "";
    throw new Error(`deno bundle failed: ${err}${hint}`);
  }
}

async function findProgram(cacheDir: string): Promise<ProgramFiles> {
  const exe = realpathSync(Deno.execPath());
  if (isCompiled()) return { kind: "compiled", exe, hash: await sha256File(exe) };
  // The deno binary and the launcher are part of the version: a deno upgrade rebuilds too.
  const extra = `deno ${Deno.version.deno}\n${exe}\n` +
    btoa(String.fromCharCode(...nodeLauncher()));
  const self = fileURLToPath(import.meta.url);
  if (self.endsWith(".js")) {
    // `deno task bundle` writes the node-only entry beside the server bundle; the full bundle
    // also works as /init (main.ts dispatches PID 1 to `init`), just larger and slower to start.
    const nodeOnly = join(dirname(self), "netroot-init.js");
    const script = existsSync(nodeOnly) ? nodeOnly : self;
    return { kind: "bundle", deno: exe, script, hash: await sha256File(script, extra) };
  }
  const root = checkoutRoot();
  if (!root) throw new Error(`cannot tell how netroot runs (module ${import.meta.url})`);
  await Deno.mkdir(cacheDir, { recursive: true });
  const tmp = join(cacheDir, `.netroot-${Deno.pid}-${crypto.randomUUID()}.js`);
  try {
    await denoBundle(join(root, "overlay", "node_main.ts"), tmp, root);
    const hash = await sha256File(tmp, extra);
    const script = join(cacheDir, `netroot-${hash.slice(0, 16)}.js`);
    await Deno.rename(tmp, script);
    await keepNewest(cacheDir, (n) => /^netroot-[0-9a-f]{16}\.js$/.test(n), 4);
    return { kind: "bundle", deno: exe, script, hash };
  } finally {
    await Deno.remove(tmp).catch(() => {});
  }
}
