// The boot decision, in one pure function: what a node boots — which loader, kernel and initramfs,
// which kernel command line, which NFS exports, which root mode — or why it boots nothing.
// `planBoot` reads no database, socket or file: src/boot/booter.ts gathers its input from the
// stores, and HTTP boot (netboot/http.ts) renders the plan as an iPXE script. The command line is
// the node contract's (contract/cmdline.ts).
import { bootFileUrl } from "../../contract/bootfiles.ts";
import { renderCmdline } from "../../contract/cmdline.ts";
import { networkCidr } from "../../contract/ipv4.ts";
import type { Refusal } from "../../netboot/booter.ts";

export type { Refusal };

/** What the plan needs of a node (src/nodes.ts NodeInfo). */
export interface PlanNode {
  mac: string;
  name: string;
  model?: string | null;
  /** The registry's last known address. */
  ip?: string | null;
  settings: Record<string, string | undefined>;
}

/** What the plan needs of an image (src/images/store.ts ImageInfo). */
export interface PlanImage {
  id: string;
  name: string;
  bootable: boolean | number;
  reason?: string | null;
  initrd?: string | null;
}

/** The boot network as the node sees it. */
export interface PlanNetwork {
  serverIp: string;
  netmask: string;
  gateway?: string;
  /** Base URL of the HTTP server (reports, manifests, kernel and initramfs). */
  base: string;
  nfs: "4.2" | "3";
  /** Export paths of the image's root and of the node's /persist (src/nfs.ts). */
  rootPath: string;
  persistPath: string;
  /** The netconsole receiver (src/netconsole.ts) and the boot interface's MAC, when both are
   *  known: nodes with console.netconsole=true on the boot subnet send their kernel log there. */
  netconsole?: { port: number; serverMac: string };
}

export interface PlanInput {
  mac: string;
  node: PlanNode;
  /** The node's current image id (null: none deployed) and that image, if it exists. */
  imageId: string | null;
  image?: PlanImage;
  network: PlanNetwork;
  /** The node's address (`nodeAddress`); undefined → `ip=dhcp`. */
  nodeIp?: string;
  /** The boot's per-boot token (src/boots.ts openBoot). */
  token: string;
  /** The server's ssh public key, for the image's root (src/nodessh.ts); undefined: none. */
  sshKey?: string;
}

/** Which initramfs the node boots: netroot's own (built per image) or the image's. */
export type InitramfsSource = "netroot" | "image";

export interface BootPlan {
  mac: string;
  nodeName: string;
  image: { id: string; name: string };
  /** The loader: an iPXE script (the only one today; DHCP hands out iPXE itself). */
  loader: "ipxe";
  initramfs: InitramfsSource;
  kernelUrl: string;
  initramfsUrl: string;
  cmdline: string;
  exports: { root: string; persist?: string };
  /** The root mode asked for (netroot.mode; undefined → the node's default, auto). */
  mode?: string;
}

function setting(node: PlanNode, key: string, fallback: string): string {
  const v = node.settings[key];
  return v === undefined || v === "" ? fallback : v;
}

/** The setting `initramfs`: netroot's (default) or the image's own. */
export function initramfsSource(node: PlanNode): InitramfsSource {
  return setting(node, "initramfs", "netroot") === "image" ? "image" : "netroot";
}

/**
 * The node's address on its command line: the admin's `ip` setting, else its DHCP lease, else
 * where the script request came from, else the registry's last known one.
 */
export function nodeAddress(
  node: PlanNode,
  lease: string | undefined,
  remote: string | undefined,
): string | undefined {
  return node.settings.ip ?? lease ?? remote ?? node.ip ?? undefined;
}

/** Why the node cannot boot its image, before anything is opened for it; undefined when it can. */
export function checkBoot(i: Omit<PlanInput, "token" | "nodeIp" | "network">): Refusal | undefined {
  const { node, image } = i;
  if (!i.imageId) return { refused: `node ${node.name} has no image deployed` };
  if (!image) return { refused: `image ${i.imageId} of node ${node.name} is missing` };
  if (!image.bootable) {
    return { refused: `image ${image.name} is not bootable: ${image.reason ?? "no kernel found"}` };
  }
  if (initramfsSource(node) === "image" && !image.initrd) {
    return {
      refused: `image ${image.name} has no initrd of its own (node setting initramfs=image)`,
    };
  }
  return undefined;
}

/** Whether the node reaches the server without a router: the kernel's netconsole sends to one
 *  MAC, which the server knows only on its own link. */
function sameSubnet(a: string, b: string, netmask: string): boolean {
  return networkCidr(a, netmask) === networkCidr(b, netmask);
}

/** The boot plan of a node, or why it gets none (a setting the command line refuses, say). */
export function planBoot(i: PlanInput): BootPlan | Refusal {
  const early = checkBoot(i);
  if (early) return early;
  const { node, network: net } = i;
  const image = i.image!;
  const persist = setting(node, "persist", "true") === "false"
    ? undefined
    : `${net.serverIp}:${net.persistPath}`;
  const root = `${net.serverIp}:${net.rootPath}`;
  let cmdline: string;
  try {
    cmdline = renderCmdline({
      mac: i.mac,
      hostname: node.name,
      nodeIp: i.nodeIp,
      serverIp: net.serverIp,
      gateway: net.gateway,
      netmask: net.netmask,
      url: net.base,
      root,
      persist,
      nfs: net.nfs,
      imageId: image.id,
      token: i.token,
      mode: node.settings["boot.mode"],
      timeout: node.settings["nfs.timeout"],
      tmpfs: node.settings["tmpfs.size"],
      // The last console= is /dev/console: serial last so virtual nodes (and serial-attached lab
      // PCs) get the init's output; the screen still shows kernel messages.
      consoles: node.model === "pc-x86-64"
        ? ["tty0", "ttyS0,115200"]
        // qemu's virt machine (aarch64 vnodes): its PL011 UART.
        : node.model === "qemu-virt-aarch64"
        ? ["ttyAMA0,115200"]
        : [],
      netconsole: setting(node, "console.netconsole", "false") === "true" &&
          i.nodeIp && sameSubnet(i.nodeIp, net.serverIp, net.netmask)
        ? net.netconsole
        : undefined,
      extra: node.settings["kernel.cmdline"],
      sshKey: i.sshKey,
    });
  } catch (e) {
    return { refused: (e as Error).message };
  }
  // The kernel's last segment, `kernel`, is its name under EFI iPXE, on the command line
  // (cmdline.ts LOADER_PREFIX).
  return {
    mac: i.mac,
    nodeName: node.name,
    image: { id: image.id, name: image.name },
    loader: "ipxe",
    initramfs: initramfsSource(node),
    kernelUrl: bootFileUrl(net.base, i.mac, "kernel", image.id),
    initramfsUrl: bootFileUrl(net.base, i.mac, "initramfs", image.id),
    cmdline,
    exports: { root, persist },
    mode: node.settings["boot.mode"] || undefined,
  };
}

/**
 * A Raspberry Pi node's config.txt: the firmware (start*.elf, or the Pi 5 EEPROM) loads netroot's
 * kernel and initramfs by TFTP, beside the image's own firmware files and device trees, and boots
 * the kernel in 64-bit mode with cmdline.txt (the plan's command line). `kernel=` takes Debian's
 * gzip-compressed arm64 vmlinuz as Debian's raspi-firmware does; `followkernel` loads the
 * initramfs right after it.
 */
export function renderPiConfig(plan: Pick<BootPlan, "nodeName" | "image">): string {
  return [
    `# netroot: node ${plan.nodeName}, image ${plan.image.name} (rendered at each boot)`,
    "[all]",
    "arm_64bit=1",
    "kernel=netroot-kernel",
    "initramfs netroot-initramfs followkernel",
    "enable_uart=1",
    "",
  ].join("\n");
}
