// qemu for virtual nodes: the command line (pure), and QMP (reset, quit, status) over the unix
// socket each VM listens on. A `bios` node boots through qemu's own PXE ROM (iPXE) on virtio-net;
// a `uefi` node through OVMF's own network stack (EDK2 PXE, as a UEFI PC's firmware: the NIC's
// option ROM is left out), `uefi-http` through OVMF's HTTP boot client (PXE switched off).
// An aarch64 node (`arch` aarch64) is qemu's `virt` machine with AAVMF (EDK2 for ARM, Debian
// package qemu-efi-aarch64), UEFI only: its PXE fetches ipxe-arm64.efi as an x86 UEFI node's
// fetches ipxe.efi.
import { macFromBytes } from "../../contract/mac.ts";
import { UserError } from "../errors.ts";

/** The machine a virtual node emulates (node setting `arch`, fixed at creation). */
export type VnodeArch = "x86_64" | "aarch64";
export const VNODE_ARCHES: readonly VnodeArch[] = ["x86_64", "aarch64"];

/** The qemu program of a machine. */
export function qemuBinaryFor(arch: VnodeArch = "x86_64"): string {
  return arch === "aarch64" ? "qemu-system-aarch64" : "qemu-system-x86_64";
}
export const qemuBinary = qemuBinaryFor("x86_64");

export function parseArch(v: unknown): VnodeArch {
  const a = String(v).trim().toLowerCase();
  const alias: Record<string, VnodeArch> = { amd64: "x86_64", arm64: "aarch64" };
  const r = alias[a] ?? a;
  if (!(VNODE_ARCHES as readonly string[]).includes(r)) {
    throw new UserError(`bad arch ${v}: expected ${VNODE_ARCHES.join(", ")}`);
  }
  return r as VnodeArch;
}

/** The node model a virtual node registers with (the boot plan picks its consoles by it). */
export function vnodeModel(arch: VnodeArch = "x86_64"): string {
  return arch === "aarch64" ? "qemu-virt-aarch64" : "pc-x86-64";
}

/** What the virtual machine boots with (node setting `firmware`). */
export type VnodeFirmware = "bios" | "uefi" | "uefi-http";
export const VNODE_FIRMWARES: readonly VnodeFirmware[] = ["bios", "uefi", "uefi-http"];
/** OVMF (Debian package `ovmf`): read-only code, and the variable store each node copies. */
export const OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd";
export const OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/** AAVMF (Debian package `qemu-efi-aarch64`): the same pair for aarch64 nodes (64 MiB each, the
 *  flash size of qemu's virt machine). */
export const AAVMF_CODE = "/usr/share/AAVMF/AAVMF_CODE.fd";
export const AAVMF_VARS = "/usr/share/AAVMF/AAVMF_VARS.fd";

/** The UEFI firmware pair of a machine. */
export function uefiFirmware(arch: VnodeArch = "x86_64"): { code: string; vars: string } {
  return arch === "aarch64"
    ? { code: AAVMF_CODE, vars: AAVMF_VARS }
    : { code: OVMF_CODE, vars: OVMF_VARS };
}

export function parseFirmware(v: unknown): VnodeFirmware {
  const f = String(v).trim().toLowerCase();
  if (!(VNODE_FIRMWARES as readonly string[]).includes(f)) {
    throw new UserError(`bad firmware ${v}: expected ${VNODE_FIRMWARES.join(", ")}`);
  }
  return f as VnodeFirmware;
}

export interface VmSpec {
  name: string;
  mac: string;
  /** qemu -m syntax, e.g. 512M. */
  ram: string;
  cpus: number;
  accel: "kvm" | "tcg";
  tap: string;
  disks: string[];
  consoleLog: string;
  qmpSocket: string;
  pidFile: string;
  /** Default bios. UEFI needs `uefiVars`: the node's own copy of OVMF's variable store. */
  firmware?: VnodeFirmware;
  uefiVars?: string;
  /** Default x86_64. aarch64 is UEFI only (firmware uefi or uefi-http). */
  arch?: VnodeArch;
}

/** qemu's option parser splits on commas; a literal comma is written twice. */
const esc = (s: string) => s.replaceAll(",", ",,");

export function qemuArgs(vm: VmSpec): string[] {
  const arm = vm.arch === "aarch64";
  if (arm && (vm.firmware ?? "bios") === "bios") {
    throw new UserError("an aarch64 virtual node boots UEFI only (firmware uefi or uefi-http)");
  }
  const uefi = (vm.firmware ?? "bios") !== "bios";
  return [
    "-name",
    esc(`netroot-${vm.name}`),
    "-accel",
    vm.accel,
    // KVM: the host CPU; TCG: qemu's default model (`host` needs KVM), on aarch64 a Cortex-A72
    // (virt has no default CPU; `max` emulates features, pointer authentication…, at a cost).
    ...(vm.accel === "kvm" ? ["-cpu", "host"] : arm ? ["-cpu", "cortex-a72"] : []),
    // graphics=off: SeaBIOS and iPXE print to the serial console too (their boot steps land in
    // console.log next to the kernel's); no VGA card to emulate.
    "-machine",
    arm ? "virt,graphics=off" : "pc,graphics=off",
    "-vga",
    "none",
    "-m",
    vm.ram,
    "-smp",
    String(vm.cpus),
    // No window, no monitor on stdio (stdin is /dev/null: CI has none), the serial console goes to
    // a log that survives restarts (append) so console offsets stay valid.
    "-display",
    "none",
    "-monitor",
    "none",
    "-chardev",
    `file,id=console,path=${esc(vm.consoleLog)},append=on`,
    "-serial",
    "chardev:console",
    "-qmp",
    `unix:${esc(vm.qmpSocket)},server=on,wait=off`,
    "-pidfile",
    vm.pidFile,
    "-boot",
    "n",
    "-netdev",
    `tap,id=n0,ifname=${vm.tap},script=no,downscript=no`,
    "-device",
    `virtio-net-pci,netdev=n0,mac=${vm.mac}${uefi ? ",romfile=,bootindex=1" : ""}`,
    ...(uefi ? uefiArgs(vm) : []),
    ...vm.disks.flatMap((d) => ["-drive", `file=${esc(d)},format=raw,if=virtio`]),
  ];
}

/** OVMF in two flash chips (code read-only, the node's variables), and for HTTP boot its PXE
 *  client switched off through fw_cfg (OvmfPkg RUNTIME_CONFIG.md): the firmware's boot manager
 *  then tries the NIC's "UEFI HTTPv4" entry, whose DHCP asks with vendor class HTTPClient. */
function uefiArgs(vm: VmSpec): string[] {
  if (!vm.uefiVars) throw new Error("a UEFI vnode needs its variable store (uefiVars)");
  return [
    "-drive",
    `if=pflash,format=raw,readonly=on,file=${esc(uefiFirmware(vm.arch).code)}`,
    "-drive",
    `if=pflash,format=raw,file=${esc(vm.uefiVars)}`,
    ...(vm.firmware === "uefi-http"
      ? [
        "-fw_cfg",
        "name=opt/org.tianocore/IPv4PXESupport,string=n",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv6PXESupport,string=n",
      ]
      : []),
  ];
}

/** `512M`, `1G` (binary units, as qemu -m); at least 64M. Returns the canonical form. */
export function parseRam(s: string): string {
  const m = /^(\d+)([MG])$/i.exec(String(s).trim());
  const mib = m ? Number(m[1]) * (m[2].toUpperCase() === "G" ? 1024 : 1) : NaN;
  if (!m || !(mib >= 64) || mib > 1024 * 1024) {
    throw new UserError(`bad RAM size ${s}: expected e.g. 512M or 2G (at least 64M)`);
  }
  return `${Number(m[1])}${m[2].toUpperCase()}`;
}

export function parseCpus(v: unknown): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 64) {
    throw new UserError(`bad CPU count ${v}: expected an integer from 1 to 64`);
  }
  return n;
}

/** Linux limits interface names to 15 bytes: "nr" + the 12 hex digits of the MAC. */
export function tapName(mac: string): string {
  return `nr${mac.replaceAll(":", "")}`;
}

/** A locally administered MAC in qemu's 52:54:00 range. */
export function randomVnodeMac(): string {
  const b = crypto.getRandomValues(new Uint8Array(3));
  return macFromBytes(new Uint8Array([0x52, 0x54, 0x00, ...b]));
}

/** One QMP exchange: connect, negotiate capabilities, run `command`, return its result. */
export async function qmp(
  socket: string,
  command: string,
  args?: Record<string, unknown>,
  timeoutMs = 5000,
): Promise<unknown> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    const lines = readLines(conn);
    const next = async (): Promise<Record<string, unknown>> => {
      for (;;) {
        const r = await lines.next();
        if (r.done) throw new Error(`QMP ${socket}: connection closed`);
        const msg = JSON.parse(r.value);
        if (!("event" in msg)) return msg; // asynchronous events are not answers
      }
    };
    const greeting = await next();
    if (!("QMP" in greeting)) throw new Error(`QMP ${socket}: unexpected greeting`);
    const send = async (execute: string, a?: Record<string, unknown>) => {
      await conn.write(new TextEncoder().encode(JSON.stringify({ execute, arguments: a }) + "\n"));
      const res = await next();
      if ("error" in res) {
        throw new Error(`QMP ${execute}: ${(res.error as { desc?: string }).desc ?? "error"}`);
      }
      return res.return;
    };
    await send("qmp_capabilities");
    return await send(command, args);
  } catch (e) {
    if (e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted) {
      throw new Error(`QMP ${command} on ${socket}: no answer within ${timeoutMs} ms`);
    }
    throw e;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}

async function* readLines(conn: Deno.Conn): AsyncGenerator<string> {
  const dec = new TextDecoder();
  const buf = new Uint8Array(65536);
  let pending = "";
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) return;
    pending += dec.decode(buf.subarray(0, n), { stream: true });
    let i;
    while ((i = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, i).trim();
      pending = pending.slice(i + 1);
      if (line) yield line;
    }
  }
}
