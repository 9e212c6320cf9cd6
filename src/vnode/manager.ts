// Virtual nodes: a registered node (virtual=1) plus a `vnodes` row (ram, cpus, disks), run as a
// qemu process that PXE-boots through its own iPXE ROM on a tap in the server's boot bridge.
// The server starts every vnode when it starts and stops them when it stops; a guest poweroff ends
// the qemu process (the node stays registered; `node reboot` starts it again). Reboot resets the
// VM through QMP, or restarts qemu when its ram/cpus/disks changed since it started.
// Files under ctx.data.vm(mac): disk<i>.img/.json, console.log (serial, appended), qemu.log
// (qemu's stderr, 1 MiB then .1: src/supervisor.ts), qmp.sock (see qmpAddress), qemu.pid.
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Context, Service } from "../context.ts";
import { tx } from "../db.ts";
import { conflict, notFound, UserError } from "../errors.ts";
import { recordEvent } from "../events.ts";
import { logger } from "../log.ts";
import { type ManagedProcess, StartFailure, startProcess, stopStale } from "../supervisor.ts";
import type { NodeInfo, Setting } from "../nodes.ts";
import type { RebootTarget } from "../reboot.ts";
import { consoleLogPath, consoleRotateBytes, rotateConsole } from "../consolelog.ts";
import { chooseAccel } from "./accel.ts";
import { addTap, deleteTap, isBridge, linkInfo } from "./bridge.ts";
import {
  checkDisk,
  checkDiskCount,
  type DiskSpec,
  ensureDisks,
  formatDisk,
  parseDiskSpec,
} from "./disks.ts";
import { haveTool, missingTool } from "./exec.ts";
import { rotateInPlace, syncFile } from "../linux/fsops.ts";
import {
  parseArch,
  parseCpus,
  parseFirmware,
  parseRam,
  qemuArgs,
  qemuBinaryFor,
  qmp,
  randomVnodeMac,
  tapName,
  uefiFirmware,
  type VmSpec,
  type VnodeArch,
  type VnodeFirmware,
  vnodeModel,
} from "./qemu.ts";
import { VnodeStore } from "./store.ts";

const log = logger("vnode");

/** What a vnode runs with. Node settings `ram`, `cpus`, `disks` override the vnodes row; the
 *  firmware and the machine are only node settings (`firmware`, default bios, uefi for aarch64;
 *  `arch`, default x86_64). */
export interface VnodeSpec {
  ram: string;
  cpus: number;
  disks: DiskSpec[];
  firmware: VnodeFirmware;
  arch: VnodeArch;
}

export interface VnodeInfo extends VnodeSpec {
  name: string;
  mac: string;
  image: string | null;
  running: boolean;
  pid?: number;
  accel?: string;
  startedAt?: string;
}

export interface CreateRequest {
  name: string;
  ram?: string;
  cpus?: number | string;
  disks?: (string | { size: unknown; template?: unknown })[];
  image?: string;
  firmware?: string;
  /** x86_64 (default) or aarch64 (qemu-system-aarch64 -M virt with AAVMF, UEFI only). */
  arch?: string;
}

interface Running {
  proc: ManagedProcess;
  spec: string; // JSON of the VnodeSpec it started with
  accel: string;
  startedAt: string;
}

/** Splits `8G[template=ext4],64M` on the commas outside brackets. */
export function parseDiskList(s: string): DiskSpec[] {
  return s.trim() === "" || s.trim() === "none"
    ? []
    : s.split(/,(?![^[]*\])/).map((d) => parseDiskSpec(d));
}

/** Node settings `ram`, `cpus`, `disks`, `firmware`: a vnode's spec overridden per node. */
export const vnodeSettings: Setting[] = [
  { key: "firmware", check: (_k, v) => parseFirmware(v) },
  { key: "arch", check: (_k, v) => parseArch(v) },
  { key: "ram", check: (_k, v) => parseRam(v) },
  { key: "cpus", check: (_k, v) => String(parseCpus(v)) },
  {
    key: "disks",
    check: (_k, v) => {
      const disks = parseDiskList(v);
      checkDiskCount(disks);
      return disks.map(formatDisk).join(",");
    },
  },
];

/** Where qemu builds look for option ROMs (Debian: /usr/lib/ipxe/qemu, others: share/qemu). */
const virtioRomDirs = ["/usr/lib/ipxe/qemu", "/usr/share/qemu", "/usr/local/share/qemu"];
/** How long qemu gets to open its QMP socket (a failure to start shows up within this). */
const startTimeoutMs = 10_000;
/** How often the serial logs of running VMs are measured: qemu appends whatever the guest writes,
 *  for as long as it runs (months; root on a node can write without end), so a log is bounded
 *  at its bound plus this long of output, not only when its VM next starts. */
const consoleCheckMs = 10_000;

export class VnodeManager {
  #running = new Map<string, Running>();
  #locks = new Map<string, Promise<unknown>>();
  #closed = false;
  readonly store: VnodeStore;
  #onNodes = () => void this.#reapForgotten();
  #consoleCheckMs: number;
  #consoleTimer: ReturnType<typeof setInterval> | undefined;

  constructor(
    readonly ctx: Context,
    readonly bridge: string | undefined,
    opts: { consoleCheckMs?: number } = {},
  ) {
    this.store = new VnodeStore(ctx.db);
    this.#consoleCheckMs = opts.consoleCheckMs ?? consoleCheckMs;
    ctx.changes.addEventListener("nodes", this.#onNodes);
  }

  /** Serialises operations on one vnode (create/start/stop/reboot/remove). */
  #lock<T>(mac: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#locks.get(mac) ?? Promise.resolve();
    const next = prev.catch(() => {}).then(fn);
    this.#locks.set(mac, next);
    return next.finally(() => {
      if (this.#locks.get(mac) === next) this.#locks.delete(mac);
    });
  }

  spec(node: NodeInfo): VnodeSpec {
    const row = this.store.get(node.mac);
    if (!row) throw notFound(`virtual node ${node.name}`);
    const s = node.settings;
    const arch = parseArch(s.arch ?? "x86_64");
    return {
      ram: s.ram ?? row.ram,
      cpus: Number(s.cpus ?? row.cpus),
      disks: s.disks !== undefined
        ? parseDiskList(s.disks)
        : (JSON.parse(row.disks) as DiskSpec[]).map(checkDisk),
      firmware: parseFirmware(s.firmware ?? defaultFirmware(arch)),
      arch,
    };
  }

  /** The vnode behind a node reference (name or MAC), or 404. */
  node(ref: string): NodeInfo {
    const node = this.ctx.nodes.get(ref);
    if (!node.virtual || !this.store.get(node.mac)) {
      throw new UserError(
        `${node.name} is not a virtual node (netroot node forget ${node.name} removes a node)`,
        404,
      );
    }
    return node;
  }

  list(): VnodeInfo[] {
    const macs = this.store.macs();
    return this.ctx.nodes.list().filter((n) => macs.has(n.mac)).map((n) => this.info(n));
  }

  info(node: NodeInfo): VnodeInfo {
    const r = this.#running.get(node.mac);
    return {
      name: node.name,
      mac: node.mac,
      image: node.imageName ?? node.imageId,
      ...this.spec(node),
      running: !!r,
      pid: r?.proc.pid,
      accel: r?.accel,
      startedAt: r?.startedAt,
    };
  }

  #requireHost(arch: VnodeArch = "x86_64"): string {
    if (!this.bridge) {
      throw new UserError(
        "virtual nodes need a boot bridge: start the server with " +
          "`netroot serve --bridge netroot0 --address 10.x.y.1/24 --dhcp-range …`",
        409,
      );
    }
    const qemuBinary = qemuBinaryFor(arch);
    if (!haveTool(qemuBinary)) throw missingTool(qemuBinary);
    // An aarch64 node boots through its firmware's own network stack (no option ROM).
    if (arch === "aarch64") return this.bridge;
    // qemu loads virtio-net's PXE ROM from its data dirs; Debian ships it in ipxe-qemu.
    if (!virtioRomDirs.some((d) => existsSync(join(d, "efi-virtio.rom")))) {
      throw new UserError(
        `efi-virtio.rom (qemu's PXE ROM for virtio-net) not found in ${
          virtioRomDirs.join(", ")
        }: ` +
          "install the Debian package ipxe-qemu",
        503,
      );
    }
    return this.bridge;
  }

  async create(req: CreateRequest): Promise<VnodeInfo> {
    if (typeof req.name !== "string" || !req.name) {
      throw new UserError("a virtual node needs a name");
    }
    if (!Array.isArray(req.disks ?? [])) throw new UserError("disks must be a list");
    const arch = parseArch(req.arch ?? "x86_64");
    checkDiskCount(req.disks ?? []);
    const spec: VnodeSpec = {
      ram: parseRam(req.ram ?? "512M"),
      cpus: parseCpus(req.cpus ?? 1),
      disks: (req.disks ?? []).map((d) => typeof d === "string" ? parseDiskSpec(d) : checkDisk(d)),
      firmware: parseFirmware(req.firmware ?? defaultFirmware(arch)),
      arch,
    };
    if (arch === "aarch64" && spec.firmware === "bios") {
      throw new UserError("an aarch64 virtual node boots UEFI only (firmware uefi or uefi-http)");
    }
    this.#requireHost(arch);
    if (this.ctx.nodes.find(req.name)) throw conflict(`node name ${req.name} is already taken`);
    let mac = randomVnodeMac();
    while (this.ctx.nodes.find(mac)) mac = randomVnodeMac();
    return await this.#lock(mac, async () => {
      tx(this.ctx.db, () => {
        this.ctx.nodes.add(mac, {
          name: req.name,
          model: vnodeModel(arch),
          virtual: true,
          image: req.image,
        });
        this.store.add(mac, spec);
        if (spec.firmware !== defaultFirmware(arch)) {
          this.ctx.nodes.configure(mac, { firmware: spec.firmware });
        }
        if (arch !== "x86_64") this.ctx.nodes.configure(mac, { arch });
        recordEvent(this.ctx.db, mac, "vnode.created", {
          ram: spec.ram,
          cpus: spec.cpus,
          disks: spec.disks.map(formatDisk),
          firmware: spec.firmware,
          ...(arch !== "x86_64" ? { arch } : {}),
        });
      });
      try {
        await this.#start(mac);
      } catch (e) {
        // Nothing half-made stays behind: the node, its row and its disks go.
        await this.#stop(mac, "create failed");
        this.ctx.nodes.forget(mac);
        await Deno.remove(this.ctx.data.vm(mac), { recursive: true }).catch(() => {});
        throw e;
      }
      return this.info(this.ctx.nodes.get(mac));
    });
  }

  async remove(ref: string): Promise<void> {
    const node = this.node(ref);
    await this.#lock(node.mac, async () => {
      await this.#stop(node.mac, "removed");
      // A qemu a dead server left (one that this server never started the VM over, having no
      // bridge) would run on for good, on disk files deleted under it.
      await killStale(this.ctx.data.vm(node.mac));
      this.ctx.nodes.forget(node.mac); // cascades to the vnodes row
      await Deno.remove(this.ctx.data.vm(node.mac), { recursive: true }).catch(() => {});
    });
  }

  /** Reset through QMP; a changed spec (or a stopped VM) means a fresh qemu. */
  reboot(mac: string): Promise<void> {
    return this.#lock(mac, async () => {
      const r = this.#running.get(mac);
      const node = this.ctx.nodes.get(mac);
      if (r && r.spec === JSON.stringify(this.spec(node))) {
        await qmp(qmpAddress(r.proc.pid), "system_reset");
        recordEvent(this.ctx.db, mac, "vnode.reset", {});
        this.ctx.nodes.poweredOn(mac, "vnode reset: no boot script fetched yet");
        return;
      }
      if (r) await this.#stop(mac, "restart with new settings");
      await this.#start(mac);
    });
  }

  /** Power on (power.driver=qemu): starts qemu; nothing when it runs. */
  powerOn(mac: string): Promise<void> {
    return this.#lock(mac, () => this.#start(mac));
  }

  /** Power off: stops qemu (SIGTERM: a power cut for the guest). */
  powerOff(mac: string): Promise<void> {
    return this.#lock(mac, () => this.#stop(mac, "power off"));
  }

  isRunning(mac: string): boolean {
    return this.#running.has(mac);
  }

  async #start(mac: string): Promise<void> {
    if (this.#closed) throw new UserError("the server is stopping", 503);
    if (this.#running.has(mac)) return;
    const node = this.ctx.nodes.get(mac);
    const spec = this.spec(node);
    checkDiskCount(spec.disks);
    const bridge = this.#requireHost(spec.arch);
    const vm = this.ctx.data.vm(mac);
    this.ctx.data.makeVm(mac);
    await killStale(vm);
    const disks = await ensureDisks(vm, spec.disks);
    const uefiVars = spec.firmware === "bios" ? undefined : await ensureUefiVars(vm, spec.arch);
    // qemu appends to the serial console log: a long one is rotated when the VM starts.
    const consoleLog = consoleLogPath(this.ctx.data, mac, "serial");
    await rotateConsole(consoleLog);
    const accel = await chooseAccel(this.ctx.config.vnode.accel, {
      kernels: this.#probeKernels(),
      cacheFile: join(this.ctx.data.run, "accel.json"),
    });
    const tap = tapName(mac);
    await addTap(tap, bridge);
    const vmSpec: VmSpec = {
      name: node.name,
      mac,
      ram: spec.ram,
      cpus: spec.cpus,
      accel: accel.accel,
      tap,
      disks,
      consoleLog,
      qmpSocket: qmpSocketName,
      pidFile: pidFilePath(vm),
      firmware: spec.firmware,
      uefiVars,
      arch: spec.arch,
    };
    const qemuBinary = qemuBinaryFor(spec.arch);
    let proc: ManagedProcess;
    try {
      // SIGTERM on stop: qemu flushes its disk files and exits (a power cut for the guest).
      proc = startProcess({
        argv: [qemuBinary, ...qemuArgs(vmSpec)],
        stderrFile: join(vm, "qemu.log"),
        stopGraceMs: 5000,
        cwd: vm, // where its QMP socket is made
      });
    } catch (e) {
      await deleteTap(tap);
      if (e instanceof Deno.errors.NotFound) throw missingTool(qemuBinary);
      throw e;
    }
    const r: Running = {
      proc,
      spec: JSON.stringify(spec),
      accel: accel.accel,
      startedAt: new Date().toISOString(),
    };
    this.#running.set(mac, r);
    proc.onExit((st) => this.#exited(mac, r, st));
    this.#consoleTimer ??= setInterval(() => void this.#boundConsoles(), this.#consoleCheckMs);
    await qmpReady(proc, node.name, vm);
    recordEvent(this.ctx.db, mac, "vnode.start", {
      pid: proc.pid,
      accel: accel.accel,
      accelReason: accel.reason,
      ram: spec.ram,
      cpus: spec.cpus,
      disks: spec.disks.map(formatDisk),
      firmware: spec.firmware,
    });
    this.ctx.nodes.poweredOn(mac, "vnode started: no boot script fetched yet");
    log.info("vnode started", { name: node.name, mac, pid: proc.pid, accel: accel.accel });
  }

  /** qemu ended without #stop (guest poweroff, crash). */
  #exited(mac: string, r: Running, st: Deno.CommandStatus): void {
    if (this.#running.get(mac) === r) this.#running.delete(mac);
    // Under the lock, so that it cannot remove the tap of a qemu started meanwhile.
    void this.#lock(mac, async () => {
      if (!this.#running.has(mac)) await deleteTap(tapName(mac));
    }).catch(() => {});
    // Guest poweroff ends qemu with status 0; anything else is a crash worth a warning.
    const detail = { code: st.code, signal: st.signal ?? undefined };
    try {
      recordEvent(this.ctx.db, mac, "vnode.exit", detail);
      this.ctx.nodes.setState(mac, "off", st.success ? "qemu exited" : `qemu exited (${st.code})`);
    } catch { /* database closed during shutdown */ }
    (st.success ? log.info : log.warn)("vnode exited", { mac, ...detail });
  }

  async #stop(mac: string, cause: string): Promise<void> {
    const r = this.#running.get(mac);
    if (!r) return;
    await r.proc.stop();
    this.#running.delete(mac);
    await deleteTap(tapName(mac));
    try {
      recordEvent(this.ctx.db, mac, "vnode.stop", { cause });
      this.ctx.nodes.setState(mac, "off", `vnode stopped: ${cause}`);
    } catch { /* database closed */ }
  }

  /** Kernels that can verify KVM: the images' own, then the host's. */
  #probeKernels(): string[] {
    return [
      ...this.ctx.images.list().filter((i) =>
        i.bootable && i.kernel && this.ctx.images.hasTree(i.id)
      )
        .map((i) => join(this.ctx.data.rootfs(i.id), i.kernel!)),
      `/boot/vmlinuz-${Deno.osRelease()}`,
    ];
  }

  /** Rotates the serial log of each running VM past its bound (qemu holds it open). */
  async #boundConsoles(): Promise<void> {
    for (const mac of this.#running.keys()) {
      const path = consoleLogPath(this.ctx.data, mac, "serial");
      await rotateInPlace(path, consoleRotateBytes).catch((e) =>
        log.warn("cannot rotate a serial console log", { mac, error: (e as Error).message })
      );
    }
  }

  /** `node rm` of a running vnode: its qemu goes too. */
  async #reapForgotten(): Promise<void> {
    for (const mac of [...this.#running.keys()]) {
      if (!this.ctx.nodes.find(mac)) {
        await this.#lock(mac, () => this.#stop(mac, "node forgotten")).catch(() => {});
      }
    }
  }

  /** Starts every vnode (server start). One failing does not stop the others. */
  async startAll(): Promise<void> {
    const all = this.list();
    if (all.length && !this.bridge) {
      log.warn("virtual nodes not started: the server has no boot bridge (serve --bridge …)", {
        count: all.length,
      });
      return;
    }
    await Promise.all(
      all.map((v) =>
        this.#lock(v.mac, () => this.#start(v.mac)).catch((e) => {
          const error = (e as Error).message;
          log.error("vnode failed to start", { name: v.name, error });
          recordEvent(this.ctx.db, v.mac, "vnode.error", { error });
        })
      ),
    );
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#consoleTimer);
    this.ctx.changes.removeEventListener("nodes", this.#onNodes);
    await Promise.all([...this.#running.keys()].map((mac) => this.#stop(mac, "server stop")));
  }
}

/** A UEFI node's variable store (boot entries OVMF writes), copied from OVMF's template at its
 *  first start and kept across restarts, as a PC keeps its NVRAM. */
export async function ensureUefiVars(vm: string, arch: VnodeArch): Promise<string> {
  const { code, vars: template } = uefiFirmware(arch);
  if (!existsSync(code) || !existsSync(template)) {
    const pkg = arch === "aarch64" ? "qemu-efi-aarch64" : "ovmf";
    throw new UserError(
      `${code} or ${template} not found: UEFI ${arch} virtual nodes need the Debian package ${pkg}`,
      503,
    );
  }
  const vars = join(vm, "uefi-vars.fd");
  // One of another size is another machine's (the node's `arch` changed since): qemu refuses it at
  // every start, so this machine's template replaces it.
  const size = (await Deno.stat(template)).size;
  if ((await Deno.stat(vars).catch(() => undefined))?.size === size) return vars;
  // Copied aside, flushed, then named: a file under this name is kept for good, so a kill or a
  // power cut must not leave an empty or partial one there (qemu refuses a short flash image).
  const tmp = `${vars}.new`;
  await Deno.copyFile(template, tmp);
  await syncFile(tmp);
  await Deno.rename(tmp, vars);
  return vars;
}

/** bios for x86-64 nodes; aarch64 nodes have UEFI only. */
function defaultFirmware(arch: VnodeArch): VnodeFirmware {
  return arch === "aarch64" ? "uefi" : "bios";
}

/** qemu makes its QMP socket in its working directory, the VM's (the server's alone), and the
 *  server reaches it through /proc: a unix socket's path holds at most 107 bytes, which a deep
 *  data dir's VM directory passes. (Such sockets went to a name in /tmp that any local user could
 *  work out and take first: a directory of theirs there made every start of the VM fail.) */
const qmpSocketName = "qmp.sock";
export const qmpAddress = (pid: number) => `/proc/${pid}/cwd/${qmpSocketName}`;

/** Where a VM's qemu writes its pid. */
const pidFilePath = (vm: string) => join(vm, "qemu.pid");

/** A qemu left running by a server that died (kill -9) still holds the tap and disks: end it.
 *  Only a qemu whose command line names this VM's pid file is ours to stop: an argument of its
 *  own, as given (the paths inside qemu's options have their commas doubled). */
export async function killStale(vm: string): Promise<void> {
  const pidFile = pidFilePath(vm);
  await stopStale(
    pidFile,
    (argv) => argv.includes(pidFile),
    5000,
    (pid) => log.warn("stopping a stale qemu from a previous server run", { pid }),
  );
}

/** The running manager of a server context (the API routes look it up per request). */
export function vnodeManager(ctx: Context): VnodeManager {
  if (!ctx.vnodes) throw new UserError("virtual nodes are not running on this server", 503);
  return ctx.vnodes;
}

export async function startVnodes(ctx: Context): Promise<Service> {
  let bridge = ctx.config.bridge?.name;
  // A server on an existing bridge (--interface br0) can host vnodes too.
  if (
    !bridge && ctx.config.interface &&
    isBridge(await linkInfo(ctx.config.interface).catch(() => undefined))
  ) {
    bridge = ctx.config.interface;
  }
  const m = new VnodeManager(ctx, bridge);
  ctx.vnodes = m;
  ctx.rebooter.register({
    name: "qemu",
    handles: (n: RebootTarget) => n.virtual && ctx.vnodes === m,
    reboot: (n: RebootTarget) => m.reboot(n.mac),
  });
  await m.startAll();
  return {
    name: "vnodes",
    async close() {
      await m.close();
      if (ctx.vnodes === m) ctx.vnodes = undefined;
    },
  };
}

/** Started means QMP answers; an early exit (bad tap, bad drive…) is the caller's error, with the
 *  end of qemu's log. */
async function qmpReady(proc: ManagedProcess, name: string, vm: string): Promise<void> {
  try {
    await proc.waitReady(async () => {
      await qmp(qmpAddress(proc.pid), "query-status", undefined, 2000);
      return true;
    }, startTimeoutMs);
  } catch (e) {
    if (!(e instanceof StartFailure)) throw e;
    if (!e.exit) {
      throw new Error(`qemu for ${name} did not open QMP: ${(e.cause as Error)?.message}`);
    }
    const tail = (await Deno.readTextFile(join(vm, "qemu.log")).catch(() => "")).trim()
      .split("\n").slice(-3).join(" | ");
    throw new Error(`qemu for ${name} exited at start: ${tail || "no message"}`);
  }
}
