// `netroot vnode create|ls|rm`: virtual nodes through the running server's API.
// (`netroot node reboot` and `netroot node console` work on them like on any node.)
import { parseArgs } from "node:util";
import { UserError } from "../errors.ts";
import { formatDisk, parseDiskSpec } from "../vnode/disks.ts";
import type { VnodeInfo } from "../vnode/manager.ts";
import { parseArch, parseCpus, parseFirmware, parseRam } from "../vnode/qemu.ts";
import { ApiClient, clientOptions } from "./client.ts";
import { print, table } from "./output.ts";

const usage = `usage: netroot vnode COMMAND [ARGS…]

  create NAME [--ram 512M] [--cpus 1] [--disk SIZE[template=T]]… [--image IMAGE]
         [--firmware bios|uefi|uefi-http] [--arch x86_64|aarch64]
        registers a node with a fresh 52:54:00:… MAC and starts it (qemu, PXE boot through the
        server's bridge). SIZE: e.g. 64M, 8G, 1T (decimal, as WalT). Templates: none (default),
        ext4, fat32, hybrid-volatile, hybrid-persistent (walt-hybrid/), or WalT's
        hybrid-boot-v, hybrid-boot-p (walt_hybrid/). Firmware: bios (SeaBIOS + qemu's iPXE
        ROM, default), uefi (OVMF's own PXE: TFTP of ipxe.efi), uefi-http (OVMF's HTTP boot,
        no TFTP); uefi needs the Debian package ovmf. Arch: x86_64 (default) or aarch64 (qemu's
        virt machine with AAVMF, Debian qemu-system-arm + qemu-efi-aarch64; firmware uefi,
        the default there: its PXE fetches ipxe-arm64.efi; TCG unless the host is arm64).
  ls    list virtual nodes
  rm NAME   stop it, forget the node and delete its disks

Also: \`netroot node reboot NAME\` (reset), \`netroot node console NAME [--follow]\`,
\`netroot node config NAME ram=1G cpus=2 disks=8G[template=ext4] firmware=uefi\` (applied at the
next reboot).
Common options: --server URL (or NETROOT_SERVER), --json, --help.`;

const options = {
  ...clientOptions,
  ram: { type: "string" },
  cpus: { type: "string" },
  disk: { type: "string", multiple: true },
  image: { type: "string" },
  firmware: { type: "string" },
  arch: { type: "string" },
} as const;

export async function run(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (!sub || sub === "--help" || sub === "-h" || sub === "help") {
    console.log(usage);
    return sub ? 0 : 2;
  }
  const { values: o, positionals: p } = parseArgs({ args: rest, options, allowPositionals: true });
  if (o.help) {
    console.log(usage);
    return 0;
  }
  const api = ApiClient.fromEnv(o.server);
  switch (sub) {
    case "create": {
      const [name] = p;
      if (!name || p.length > 1) throw new UserError("usage: netroot vnode create NAME [options]");
      // Checked here too so that a typo fails before any request.
      const body = {
        name,
        ram: o.ram === undefined ? undefined : parseRam(o.ram),
        cpus: o.cpus === undefined ? undefined : parseCpus(o.cpus),
        disks: (o.disk ?? []).map((d) => formatDisk(parseDiskSpec(d))),
        image: o.image,
        firmware: o.firmware === undefined ? undefined : parseFirmware(o.firmware),
        arch: o.arch === undefined ? undefined : parseArch(o.arch),
      };
      const v = await api.post<VnodeInfo>("/vnodes", body);
      print(o.json, v, () => `created ${v.name} ${v.mac} (${v.running ? "running" : "stopped"})`);
      return 0;
    }
    case "ls":
    case "list": {
      const list = await api.get<VnodeInfo[]>("/vnodes");
      print(o.json, list, () =>
        table(
          list.map((v) => ({
            name: v.name,
            mac: v.mac,
            image: v.image,
            ram: v.ram,
            cpus: v.cpus,
            disks: v.disks.map(formatDisk).join(",") || "-",
            firmware: v.firmware,
            state: v.running ? `running (${v.accel}, pid ${v.pid})` : "stopped",
          })),
          ["name", "mac", "image", "ram", "cpus", "disks", "firmware", "state"],
        ));
      return 0;
    }
    case "rm":
    case "remove": {
      if (p.length === 0) throw new UserError("usage: netroot vnode rm NAME…");
      for (const ref of p) {
        const r = await api.delete<{ removed: string; name: string }>(
          `/vnodes/${encodeURIComponent(ref)}`,
        );
        print(o.json, r, () => `removed ${r.name} ${r.removed}`);
      }
      return 0;
    }
  }
  throw new UserError(`unknown vnode command ${sub} (try netroot vnode --help)`);
}
