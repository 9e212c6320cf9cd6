// `netroot init`: the node side. The kernel runs it as PID 1 from the initramfs; `boot` reads top
// to bottom: API filesystems, kernel command line, modules, NIC, the new root (the first root mode
// that applies: hybrid when a local partition asks for it, else network — contract/rootmode.ts),
// /persist, then switchRoot + execve of the image's init. Each stage is printed and reported to the
// server. A fatal failure: a clear console message, a report when the network is up, a countdown,
// reboot(2).
import { type BootParams, parseCmdline } from "../contract/cmdline.ts";
import { defaultLayout, type Layout, type RootEnv, type RootMode } from "../contract/rootmode.ts";
import { hybridMode } from "../hybrid/mod.ts";
import { loadModuleFile } from "../src/linux/kmod.ts";
import { findByMac } from "../src/linux/netif.ts";
import { reboot, setHostname, uname, uptimeMs } from "../src/linux/sysinfo.ts";
import { consoleOn, fmtBytes, fmtMs, type InitConsole, toKernelLog } from "./console.ts";
import {
  DISK_DRIVERS,
  loadHardwareModules,
  type LoadModule,
  loadModules,
  loadNamed,
  type ModulesPlan,
  type ModulesResult,
  newModaliases,
  parseModulesOrder,
  parseModulesPlan,
  summarize,
} from "./modules.ts";
import { bringUpNetwork } from "./network.ts";
import { startNetconsole } from "./netconsole.ts";
import { networkMode } from "./nfsroot.ts";
import { httpGetText } from "./http.ts";
import { type Post, readNfsBytes, Reporter } from "./report.ts";
import { type MountSource, mountWithRetry, nfsSource } from "./rootsource.ts";
import { installServerKey } from "./sshkey.ts";
import { errText, InitFailure, Stages } from "./stage.ts";
import { sleep } from "../src/timer.ts";
import { isExecutableIn } from "../contract/rootpath.ts";
import { mountApiFilesystems, switchRoot } from "./switchroot.ts";

export interface InitDeps {
  out: InitConsole;
  layout: Layout;
  readCmdline: () => string;
  modulesOrder: string;
  /** Which of them to load for which device or mode (overlay/modules.ts); without it, all. */
  modulesPlan: string;
  /** The modalias of the devices the kernel found (the modalias files under /sys/bus); each call
   *  may return only those new since the last one. */
  modaliases: () => string[];
  /** Modules loaded only for netconsole (overlay/netconsole.ts). */
  netconsoleOrder: string;
  modulesDir: () => string;
  /** Console lines to the kernel log from now on (console.ts toKernelLog): asked for by
   *  netconsole= on the command line. */
  toKernelLog: () => boolean;
  loadModule: LoadModule;
  rootSource: (p: BootParams) => MountSource;
  persistSource: (p: BootParams) => MountSource | undefined;
  /** The ways to make the root, preferred first (netroot.mode=network keeps the network one). */
  rootModes: RootMode[];
  post?: Post;
  network?: { appearMs?: number; carrierMs?: number };
  /** Last action of the fatal path (reboot(2) in production; tests inject their own). */
  reboot: () => void;
  rebootDelayS: number;
  sleep: (ms: number) => Promise<void>;
}

export function productionDeps(): InitDeps {
  return {
    out: consoleOn(),
    layout: defaultLayout,
    readCmdline: () => Deno.readTextFileSync("/proc/cmdline"),
    modulesOrder: "/netroot/modules.order",
    modulesPlan: "/netroot/modules.plan",
    modaliases: newModaliases(),
    netconsoleOrder: "/netroot/netconsole.order",
    modulesDir: () => `/lib/modules/${uname().release}`,
    toKernelLog,
    loadModule: loadModuleFile,
    rootSource: (p) => nfsSource(p.root, p.nfsVersion, true),
    persistSource: (p) => p.persist && nfsSource(p.persist, p.nfsVersion, false),
    rootModes: [hybridMode, networkMode],
    reboot,
    rebootDelayS: 10,
    sleep,
  };
}

/**
 * The whole sequence. Never returns: it ends in execve (success) or in `deps.reboot` (failure);
 * the promise only settles if an injected reboot returns.
 */
export async function boot(deps: InitDeps): Promise<void> {
  const s = new Stages(deps.out);
  try {
    const bootedMs = await mountApi(s, deps);
    const p = await readCommandLine(s, deps, bootedMs);
    const mods = await loadKernelModules(s, deps);
    await configureNic(s, deps, p, mods);
    await mountRoot(s, deps, p);
    mountPersist(s, deps, p);
    installSshKey(s, deps, p);
    await handOver(s, deps, p);
  } catch (e) {
    const f = e instanceof InitFailure
      ? e
      : new InitFailure("init", errText(e), "the netroot-init console output above");
    await fatal(deps, f, s.reporter);
  }
}

/** /proc, /sys, /dev, /run; returns the kernel's uptime when init started. */
async function mountApi(s: Stages, { out }: InitDeps): Promise<number> {
  const bootedMs = uptimeMs();
  out.line(`starting (pid ${Deno.pid}, kernel uptime ${fmtMs(bootedMs)})`);
  await s.run("start", "the initramfs layout (/proc, /sys, /dev, /run mount points)", () => {
    const mounted = mountApiFilesystems();
    if (mounted.length) out.line(`mounted ${mounted.join(" ")}`);
  });
  return bootedMs;
}

/** The command line; from here on reports can be made (sent once the network is up). */
async function readCommandLine(s: Stages, deps: InitDeps, bootedMs: number): Promise<BootParams> {
  const p = await s.run(
    "cmdline",
    "the kernel command line rendered by the server (cat /proc/cmdline); see docs/architecture.md",
    () => parseCmdline(deps.readCmdline()),
  );
  for (const w of p.warnings) deps.out.line(`warning: ${w}`);
  // From here the init's lines are in the kernel log, which netconsole sends once it runs.
  if (p.netconsole && !deps.toKernelLog()) {
    deps.out.line("warning: /dev/kmsg is not writable: netconsole will carry kernel lines only");
  }
  s.reporter = new Reporter(
    { token: p.token, mac: p.mac },
    (m) => deps.out.line(`warning: ${m}`),
    deps.post,
  );
  s.report({
    stage: "start",
    ms: Math.round(performance.now() - s.t0),
    ok: true,
    detail: `image ${p.image ?? "?"}, init started ${fmtMs(bootedMs)} after kernel start`,
  });
  return p;
}

/** What the modules stage loaded, and what is left to load once the NIC is configuring. */
interface LoadedModules {
  plan?: ModulesPlan;
  /** Paths loaded or tried so far. */
  done: Set<string>;
  /** Names asked for by the devices (hardware round). */
  names: string[];
}

function readOptionalText(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/** The drivers of this node's devices (modules.plan), else every module of modules.order. */
async function loadKernelModules(s: Stages, deps: InitDeps): Promise<LoadedModules> {
  const loaded: LoadedModules = { done: new Set(), names: [] };
  await s.run(
    "modules",
    "the modules in the initramfs match the running kernel",
    () => {
      const planText = readOptionalText(deps.modulesPlan);
      if (planText !== undefined) {
        loaded.plan = parseModulesPlan(planText);
        const hw = loadHardwareModules(
          loaded.plan,
          deps.modulesDir(),
          deps.loadModule,
          deps.modaliases,
          loaded.done,
        );
        loaded.names = hw.names;
        for (const f of hw.result.failed) deps.out.line(`module ${f.path}: ${f.error} (going on)`);
        return hw.result;
      }
      const text = readOptionalText(deps.modulesOrder);
      if (text === undefined) return undefined;
      const r = loadModules(deps.modulesDir(), parseModulesOrder(text), deps.loadModule);
      for (const f of r.failed) deps.out.line(`module ${f.path}: ${f.error} (going on)`);
      return r;
    },
    (r) =>
      r
        ? summarize(r) + (loaded.plan ? ` for the devices found (${loaded.names.join(" ")})` : "")
        : `no ${deps.modulesOrder}: nothing to load`,
  );
  return loaded;
}

/** Every module of modules.order not loaded yet: the NIC was not among the devices matched. */
function loadRemaining(deps: InitDeps, m: LoadedModules): ModulesResult {
  const text = readOptionalText(deps.modulesOrder) ?? "";
  const order = parseModulesOrder(text).filter((p) => !m.done.has(p));
  for (const p of order) m.done.add(p);
  return loadModules(deps.modulesDir(), order, deps.loadModule);
}

/** The file systems the mode needs: NFS (the root or the hybrid copy's source) and overlay; ext4
 *  when a hybrid partition may exist (mode auto and a disk controller or block device present). */
function modeModules(p: BootParams, m: LoadedModules): string[] {
  const names = [p.nfsVersion === "3" ? "nfsv3" : "nfsv4", "overlay"];
  if (p.mode === "auto" && (m.names.some((n) => DISK_DRIVERS.includes(n)) || hasBlockDevice())) {
    names.push("ext4");
  }
  return names;
}

function hasBlockDevice(): boolean {
  try {
    return [...Deno.readDirSync("/sys/class/block")].some((e) =>
      !/^(loop|ram|zram|nbd)\d/.test(e.name)
    );
  } catch {
    return false;
  }
}

/** The boot NIC with the address the server gave; then the queued reports go out. While the link
 *  comes up, the mode's file system modules load (mount needs them next). */
async function configureNic(
  s: Stages,
  deps: InitDeps,
  p: BootParams,
  mods: LoadedModules,
): Promise<void> {
  const plan = mods.plan;
  if (plan && !findByMac(p.mac)) {
    // The boot NIC's driver did not match any device: load every candidate, as without a plan.
    const r = loadRemaining(deps, mods);
    deps.out.line(`no NIC ${p.mac} after the device drivers: loaded all modules (${summarize(r)})`);
  }
  let fsModules: ModulesResult | undefined;
  let fsMs = 0;
  const nic = await s.run(
    "network",
    `netroot.mac=${p.mac} is a NIC of this node and its driver is in ${deps.modulesOrder}`,
    async () => {
      const up = bringUpNetwork(p.mac, p.ip, deps.out, deps.network);
      if (plan) {
        const t = performance.now();
        fsModules = { loaded: [], present: [], failed: [] };
        const names = modeModules(p, mods);
        loadNamed(plan, names, deps.modulesDir(), deps.loadModule, mods.done, fsModules);
        fsMs = performance.now() - t;
        for (const f of fsModules.failed) deps.out.line(`module ${f.path}: ${f.error} (going on)`);
        deps.out.line(`modules for ${names.join(" ")}: ${summarize(fsModules)} (${fmtMs(fsMs)})`);
      }
      const n = await up;
      // The hostname the server chose (ip= field 5); the image's init may still override it.
      if (p.ip.hostname) setHostname(p.ip.hostname);
      return n;
    },
    (n) =>
      `${n.ifname} ${p.ip.address}/${p.ip.prefix}${p.ip.gateway ? ` via ${p.ip.gateway}` : ""}` +
      (n.carrier ? "" : " (no carrier)"),
  );
  if (fsModules) {
    s.report({ stage: "modules-fs", ms: Math.round(fsMs), ok: true, detail: summarize(fsModules) });
  }
  if (p.netconsole) {
    startNetconsole(p.netconsole, nic.ifname, {
      out: deps.out,
      order: deps.netconsoleOrder,
      modulesDir: deps.modulesDir(),
      loadModule: deps.loadModule,
    });
  }
  s.reporter!.enable(p.url);
}

/** The new root at layout.newRoot, by the first root mode that applies to this node. */
async function mountRoot(s: Stages, deps: InitDeps, p: BootParams): Promise<void> {
  const source = deps.rootSource(p);
  const env: RootEnv = {
    params: p,
    layout: deps.layout,
    log: (line) => deps.out.line(line),
    report: s.report,
    stage: s.run,
    getText: httpGetText,
    mountImage: async (target) => {
      Deno.mkdirSync(target, { recursive: true });
      const budgetMs = p.timeoutS * 1000;
      const r = await mountWithRetry(source, target, true, budgetMs, deps.out, deps.sleep);
      return { describe: source.describe, attempts: r.attempts };
    },
  };
  for (const mode of deps.rootModes) {
    if (p.mode !== "auto" && mode.name !== p.mode) continue;
    if (await mode.mountRoot(env)) return;
  }
  throw new InitFailure(
    "root",
    `no root mode for netroot.mode=${p.mode}`,
    "netroot.mode on the kernel command line",
  );
}

/** /persist over NFS: a failure is not fatal (WalT boots on), but it must not go unnoticed. */
function mountPersist(s: Stages, deps: InitDeps, p: BootParams): void {
  const { out, layout: l } = deps;
  const ps = performance.now();
  const persist = deps.persistSource(p);
  try {
    if (!persist) throw new Error("no netroot.persist on the kernel command line");
    Deno.mkdirSync(`${l.newRoot}/persist`, { recursive: true });
    persist.mount(`${l.newRoot}/persist`, false);
    const ms = performance.now() - ps;
    out.line(`persist: ${persist.describe} on /persist (${fmtMs(ms)})`);
    s.report({ stage: "persist", ms: Math.round(ms), ok: true, detail: persist.describe });
  } catch (e) {
    const msg = `/persist is NOT mounted: ${errText(e)}`;
    out.loud("WARNING: /persist was not mounted; files written there stay in RAM", [
      msg,
      "check: the node's persist export on the server (netroot node show <node>)",
    ]);
    s.report({ stage: "persist", ms: Math.round(performance.now() - ps), ok: false, detail: msg });
  }
}

/** The server's ssh key for the image's root (clean reboots, `node run`): a refusal (the image's
 *  /root is unsafe) is loud, not fatal — the server then reboots this node hard. */
function installSshKey(s: Stages, { out, layout: l }: InitDeps, p: BootParams): void {
  if (!p.sshKey) return;
  const t = performance.now();
  try {
    const detail = installServerKey(l.newRoot, p.sshKey);
    const ms = performance.now() - t;
    out.line(`ssh-key: ${detail} (${fmtMs(ms)})`);
    s.report({ stage: "ssh-key", ms: Math.round(ms), ok: true, detail });
  } catch (e) {
    const detail = errText(e);
    out.loud("WARNING: the server's ssh key was not installed", [
      detail,
      "the server can neither reboot this node cleanly nor run commands on it (node run)",
    ]);
    s.report({ stage: "ssh-key", ms: Math.round(performance.now() - t), ok: false, detail });
  }
}

/** The environment handed to the image's init: ours minus the Deno launcher's variables. */
function initEnv(): Record<string, string> {
  const env: Record<string, string> = {
    HOME: "/",
    TERM: "linux",
    PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  };
  for (const [k, v] of Object.entries(Deno.env.toObject())) {
    if (!/^(DENO_|RUST_|NO_COLOR$)/.test(k)) env[k] = v;
  }
  return env;
}

/** The last report, then the switch: the image's init replaces us (same PID). */
async function handOver(s: Stages, deps: InitDeps, p: BootParams): Promise<void> {
  const { out, layout: l } = deps;
  if (!isExecutableIn(l.newRoot, p.init)) {
    throw new InitFailure(
      "handover",
      `${p.init} is missing or not executable in the image`,
      `the image ${p.image ?? ""} has ${p.init} (or pass init=<path> in the node's kernel.cmdline)`,
    );
  }
  const nfsBytes = readNfsBytes();
  s.report({
    stage: "handover",
    ms: Math.round(performance.now() - s.t0),
    ok: true,
    detail: `${p.init}${nfsBytes !== undefined ? `, nfs read ${fmtBytes(nfsBytes)}` : ""}`,
  });
  const tf = performance.now();
  if (!(await s.reporter!.flush(3000))) {
    out.line("warning: reports not all delivered before handover");
  } else out.line(`reports delivered (waited ${fmtMs(performance.now() - tf)} at handover)`);
  await s.run(
    "handover",
    "the image's root filesystem layout (/dev /proc /sys /run)",
    () =>
      switchRoot(l.newRoot, p.init, {
        args: p.initArgs,
        env: initEnv(),
        initramfs: l.root,
        log: (line) => out.line(line),
        beforeExec: () =>
          out.line(`handover to ${p.init} (${fmtMs(performance.now() - s.t0)} since init start)`),
      }),
  );
}

async function fatal(deps: InitDeps, f: InitFailure, reporter?: Reporter): Promise<void> {
  const { out } = deps;
  const lines = f.details.length
    ? [`${f.stage}: ${f.details.length} problem(s):`, ...f.details.map((d) => `  - ${d}`)]
    : [f.message];
  out.loud(`FATAL: boot stage "${f.stage}" failed`, [
    ...lines,
    `check: ${f.hint}`,
    `rebooting in ${deps.rebootDelayS} s`,
  ]);
  if (reporter?.enabled) {
    reporter.send({ stage: "fatal", ok: false, detail: `${f.stage}: ${f.message}` });
    await reporter.flush(3000);
  }
  for (let s = deps.rebootDelayS; s > 0; s--) {
    out.line(`rebooting in ${s}…`);
    await deps.sleep(1000);
  }
  out.line("rebooting now");
  try {
    deps.reboot();
  } catch (e) {
    out.line(`reboot(2) failed: ${errText(e)}; power-cycle this node`);
  }
}

const USAGE = `usage: netroot init
Node side of netroot: run by the kernel as the initramfs /init (PID 1). Reads the kernel command
line (netroot.* keys, ip=, init=; see docs/architecture.md), mounts the image read-only over NFS
with a RAM overlay and /persist, reports each stage to the server, then switches root and execs
the image's init. On a fatal error it prints what to check and reboots.`;

export async function run(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(USAGE);
    return 0;
  }
  if (Deno.pid !== 1) {
    // It would take over this system's mounts and delete its root filesystem's contents.
    console.error("netroot init: refusing to run: not PID 1 (this is the initramfs /init)");
    return 2;
  }
  // From here on, returning or throwing means Deno exits and the kernel panics ("Attempted to kill
  // init"): stray arguments (the kernel passes unknown words to init) are only mentioned, and an
  // unexpected rejection is printed instead of ending the process.
  const deps = productionDeps();
  if (args.length) deps.out.line(`ignoring arguments: ${args.join(" ")}`);
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    deps.out.line(`internal error (ignored): ${errText(e.reason)}`);
  });
  await boot(deps);
  // Only reached when reboot(2) failed: a dying PID 1 panics the kernel, so stay, quietly.
  for (;;) await sleep(3_600_000);
}
