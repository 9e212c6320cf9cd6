// `netroot init`: the node side, network boot mode. Runs as PID 1 from the initramfs, builds the
// new root (NFS read-only lower + tmpfs overlay + /persist over NFS), reports each stage to the
// server, then switch_root + execve of the image's init (Deno must not stay PID 1). Any fatal
// failure: a clear console message, a report when the network is up, a countdown, reboot(2).
import { execve, switchRoot } from "../src/linux/exec.ts";
import { loadModuleFile } from "../src/linux/kmod.ts";
import { reboot, setHostname, uname, uptimeMs } from "../src/linux/sysinfo.ts";
import { type BootParams, CmdlineError, parseCmdline } from "./cmdline.ts";
import { consoleOn, fmtBytes, fmtMs, type InitConsole } from "./console.ts";
import { type LoadModule, loadModules, parseModulesOrder, summarize } from "./modules.ts";
import { bringUpNetwork } from "./network.ts";
import {
  defaultLayout,
  freeInitramfs,
  isExecutableIn,
  type Layout,
  mountApiFilesystems,
  mountOverlay,
  moveApiMounts,
} from "./newroot.ts";
import { type Post, readNfsBytes, Reporter, type StageReport } from "./report.ts";
import { type MountSource, mountWithRetry, nfsSource } from "./rootsource.ts";
import { hybridProbe } from "../hybrid/mod.ts";

/** What a hybrid-mode implementation gets (see HybridProbe). */
export interface HybridEnv {
  params: BootParams;
  out: InitConsole;
  report: (r: StageReport) => void;
  /** The image, not mounted yet: hybrid mounts it where it wants to copy from. */
  rootSource: MountSource;
  layout: Layout;
}

/** A hybrid root: mounts the complete new root (lower on local disk + overlay) at `newRoot`. */
export interface HybridRoot {
  mode: string;
  mountNewRoot(newRoot: string): Promise<void>;
}

/**
 * The hybrid seam (netroot.mode=auto): called once the network is up and before the NFS-root
 * overlay. Returns null to go on in network mode (no walt-hybrid partition), or a HybridRoot.
 * /persist, the mount moves and the switch stay common to both modes.
 */
export type HybridProbe = (env: HybridEnv) => Promise<HybridRoot | null>;

export interface InitDeps {
  out: InitConsole;
  layout: Layout;
  readCmdline: () => string;
  modulesOrder: string;
  modulesDir: () => string;
  loadModule: LoadModule;
  rootSource: (p: BootParams) => MountSource;
  persistSource: (p: BootParams) => MountSource | undefined;
  hybrid?: HybridProbe;
  post?: Post;
  network?: { appearMs?: number; carrierMs?: number };
  /** Last action of the fatal path (reboot(2) in production; tests inject their own). */
  reboot: () => void;
  rebootDelayS: number;
  sleep: (ms: number) => Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function productionDeps(): InitDeps {
  return {
    out: consoleOn(),
    layout: defaultLayout,
    readCmdline: () => Deno.readTextFileSync("/proc/cmdline"),
    modulesOrder: "/netroot/modules.order",
    modulesDir: () => `/lib/modules/${uname().release}`,
    loadModule: loadModuleFile,
    rootSource: (p) => nfsSource(p.root, p.nfsVersion),
    persistSource: (p) => p.persist && nfsSource(p.persist, p.nfsVersion),
    hybrid: hybridProbe,
    reboot,
    rebootDelayS: 10,
    sleep,
  };
}

/** A fatal failure: where, what, and what a human should check. */
export class InitFailure extends Error {
  constructor(
    readonly stage: string,
    message: string,
    readonly hint: string,
    readonly details: string[] = [],
  ) {
    super(message);
  }
}

const errText = (e: unknown) => e instanceof Error ? e.message : String(e);

/** Runs `fn` as stage `stage`; any error becomes an InitFailure carrying `hint`. */
async function step<T>(stage: string, hint: string, fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof InitFailure) throw e;
    throw new InitFailure(stage, errText(e), hint, e instanceof CmdlineError ? e.problems : []);
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

/**
 * The whole sequence. Never returns: it ends in execve (success) or in `deps.reboot` (failure);
 * the promise only settles if an injected reboot returns.
 */
export async function boot(deps: InitDeps): Promise<void> {
  const { out, layout: l } = deps;
  const t0 = performance.now();
  let reporter: Reporter | undefined;
  // Every report carries the NFS bytes read so far (0 before the root is mounted).
  const report = (r: StageReport) => reporter?.send({ ...r, nfsReadBytes: readNfsBytes() });
  // Runs a stage, prints its duration and reports it.
  const timed = async <T>(
    stage: string,
    hint: string,
    fn: () => T | Promise<T>,
    detail: (v: T) => string,
  ): Promise<T> => {
    const ts = performance.now();
    const v = await step(stage, hint, fn);
    const ms = performance.now() - ts;
    const d = detail(v);
    out.line(`${stage}: ${d} (${fmtMs(ms)})`);
    report({ stage, ms: Math.round(ms), ok: true, detail: d });
    return v;
  };

  try {
    const bootedMs = uptimeMs();
    out.line(`starting (pid ${Deno.pid}, kernel uptime ${fmtMs(bootedMs)})`);
    await step("start", "the initramfs layout (/proc, /sys, /dev, /run mount points)", () => {
      const mounted = mountApiFilesystems();
      if (mounted.length) out.line(`mounted ${mounted.join(" ")}`);
    });
    const p = await step(
      "cmdline",
      "the kernel command line rendered by the server (cat /proc/cmdline); see docs/architecture.md",
      () => parseCmdline(deps.readCmdline()),
    );
    for (const w of p.warnings) out.line(`warning: ${w}`);
    reporter = new Reporter(
      { token: p.token, mac: p.mac },
      (m) => out.line(`warning: ${m}`),
      deps.post,
    );
    report({
      stage: "start",
      ms: Math.round(performance.now() - t0),
      ok: true,
      detail: `image ${p.image ?? "?"}, init started ${fmtMs(bootedMs)} after kernel start`,
    });

    await timed(
      "modules",
      "the modules in the initramfs match the running kernel",
      () => {
        let text: string;
        try {
          text = Deno.readTextFileSync(deps.modulesOrder);
        } catch (e) {
          if (e instanceof Deno.errors.NotFound) return undefined;
          throw e;
        }
        const r = loadModules(deps.modulesDir(), parseModulesOrder(text), deps.loadModule);
        for (const f of r.failed) out.line(`module ${f.path}: ${f.error} (going on)`);
        return r;
      },
      (r) => r ? summarize(r) : `no ${deps.modulesOrder}: nothing to load`,
    );

    await timed(
      "network",
      `netroot.mac=${p.mac} is a NIC of this node and its driver is in ${deps.modulesOrder}`,
      async () => {
        const n = await bringUpNetwork(p.mac, p.ip, out, deps.network);
        // The hostname the server chose (ip= field 5); the image's init may still override it.
        if (p.ip.hostname) setHostname(p.ip.hostname);
        return n;
      },
      (n) =>
        `${n.ifname} ${p.ip.address}/${p.ip.prefix}${p.ip.gateway ? ` via ${p.ip.gateway}` : ""}` +
        (n.carrier ? "" : " (no carrier)"),
    );
    reporter.enable(p.url);

    const rootSource = deps.rootSource(p);
    let hybridRoot: HybridRoot | null = null;
    const hybrid = p.mode === "auto" ? deps.hybrid : undefined;
    if (hybrid) {
      hybridRoot = await timed(
        "hybrid-detect",
        "the local disks of this node (or boot with netroot.mode=network)",
        () => hybrid({ params: p, out, report, rootSource, layout: l }),
        (h) => h ? h.mode : "no walt-hybrid partition: network mode",
      );
    }
    if (hybridRoot) {
      const h = hybridRoot;
      await step("hybrid", "the hybrid partition of this node", () => h.mountNewRoot(l.newRoot));
    } else {
      await timed(
        "nfs-root",
        `the server exports ${p.root.host}:${p.root.path} (netroot serve running, NFS server up) ` +
          `and this node reaches ${p.root.host} (TCP 2049); netroot.timeout=${p.timeoutS}`,
        async () => {
          Deno.mkdirSync(l.lower, { recursive: true });
          return await mountWithRetry(
            rootSource,
            l.lower,
            true,
            p.timeoutS * 1000,
            out,
            deps.sleep,
          );
        },
        (r) => `${rootSource.describe} on ${l.lower}, attempt ${r.attempts}`,
      );
      await timed(
        "overlay",
        "the kernel has overlay and tmpfs (modules.order) and netroot.tmpfs is a valid size",
        () => mountOverlay(l, p.tmpfsSize),
        () => `overlay on ${l.newRoot}, upper in tmpfs size=${p.tmpfsSize}`,
      );
    }

    // /persist: failure is not fatal (WalT boots on), but it must not go unnoticed.
    const ps = performance.now();
    const persist = deps.persistSource(p);
    try {
      if (!persist) throw new Error("no netroot.persist on the kernel command line");
      Deno.mkdirSync(`${l.newRoot}/persist`, { recursive: true });
      persist.mount(`${l.newRoot}/persist`, false);
      const ms = performance.now() - ps;
      out.line(`persist: ${persist.describe} on /persist (${fmtMs(ms)})`);
      report({ stage: "persist", ms: Math.round(ms), ok: true, detail: persist.describe });
    } catch (e) {
      const msg = `/persist is NOT mounted: ${errText(e)}`;
      out.loud("WARNING: /persist was not mounted; files written there stay in RAM", [
        msg,
        "check: the node's persist export on the server (netroot node show <node>)",
      ]);
      report({ stage: "persist", ms: Math.round(performance.now() - ps), ok: false, detail: msg });
    }

    if (!isExecutableIn(l.newRoot, p.init)) {
      throw new InitFailure(
        "handover",
        `${p.init} is missing or not executable in the image`,
        `the image ${
          p.image ?? ""
        } has ${p.init} (or pass init=<path> in the node's kernel.cmdline)`,
      );
    }
    const total = performance.now() - t0;
    const nfsBytes = readNfsBytes();
    report({
      stage: "handover",
      ms: Math.round(total),
      ok: true,
      detail: `${p.init}${nfsBytes !== undefined ? `, nfs read ${fmtBytes(nfsBytes)}` : ""}`,
    });
    if (!(await reporter.flush(3000))) {
      out.line("warning: reports not all delivered before handover");
    }

    await step("handover", "the image's root filesystem layout (/dev /proc /sys /run)", () => {
      moveApiMounts(l.newRoot);
      const freed = freeInitramfs(l.root);
      out.line(`freed ${fmtBytes(freed)} of initramfs`);
      switchRoot(l.newRoot);
    });
    out.line(`handover to ${p.init} (${fmtMs(performance.now() - t0)} since init start)`);
    execve(p.init, [p.init, ...p.initArgs], initEnv());
  } catch (e) {
    const f = e instanceof InitFailure
      ? e
      : new InitFailure("init", errText(e), "the netroot-init console output above");
    await fatal(deps, f, reporter);
  }
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
