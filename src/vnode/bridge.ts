// The boot bridge `serve --bridge NAME --address A.B.C.D/NN` creates: virtual nodes' taps join it
// and the boot services listen on it. A bridge we created is deleted when the server stops; an
// existing bridge (an admin's, or one left by a crashed server) is reused and left in place.
//
// The bridge's MAC address is pinned. Linux gives a bridge whose address nobody set the lowest
// MAC of its ports, and a node's tap gets a random one each time its qemu starts: so a node VM
// starting or stopping could change the server's MAC, and every other node, whose ARP cache
// still held the old one, sent to an address nobody answered until that entry went stale (30–60
// s: boots stalled at their first connection to the server, seen as hybrid nodes falling back to
// network mode in the e2e tests). A bridge we create gets a MAC derived from the host and the
// bridge name (the same across server restarts, so running nodes keep reaching the server); a
// bridge we reuse keeps the MAC it has, made fixed.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Service } from "../context.ts";
import { UserError } from "../errors.ts";
import { logger } from "../log.ts";
import { runTool } from "./exec.ts";

const log = logger("bridge");

interface IpLink {
  ifname: string;
  /** the MAC address */
  address?: string;
  linkinfo?: { info_kind?: string };
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

export async function linkInfo(name: string): Promise<IpLink | undefined> {
  try {
    const [l] = JSON.parse(await runTool("ip", ["-d", "-j", "addr", "show", "dev", name]));
    return l;
  } catch (e) {
    if (e instanceof UserError) throw e; // ip itself missing
    return undefined; // "Device does not exist"
  }
}

export function isBridge(l: IpLink | undefined): boolean {
  return l?.linkinfo?.info_kind === "bridge";
}

function checkCidr(address: string): { ip: string; prefix: number } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(address);
  if (!m || m[1].split(".").some((o) => Number(o) > 255) || Number(m[2]) > 30 || Number(m[2]) < 8) {
    throw new UserError(`--address expects A.B.C.D/NN (prefix 8–30), got ${address}`);
  }
  return { ip: m[1], prefix: Number(m[2]) };
}

export async function ensureBridge(b: { name: string; address: string }): Promise<Service> {
  const { ip, prefix } = checkCidr(b.address);
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(b.name)) {
    throw new UserError(`bad bridge name ${b.name}: up to 15 letters, digits, _ . -`);
  }
  let link = await linkInfo(b.name);
  const created = !link;
  if (link && !isBridge(link)) {
    throw new UserError(`${b.name} exists and is not a bridge: choose another --bridge name`, 409);
  }
  if (!link) {
    // forward_delay 0: a node's tap forwards at once (iPXE sends DHCP within a second of reset).
    const mac = bridgeMac(b.name); // b.name is checked above: no spaces
    await runTool("ip", `link add ${b.name} address ${mac} type bridge forward_delay 0`.split(" "));
    link = await linkInfo(b.name);
  }
  try {
    if (!created) await pinMac(b.name, link!.address!); // one we create has its MAC set already
    const has = link?.addr_info?.some((a) =>
      a.family === "inet" && a.local === ip && a.prefixlen === prefix
    );
    if (!has) await runTool("ip", ["addr", "add", b.address, "dev", b.name]);
    await runTool("ip", ["link", "set", b.name, "up"]);
  } catch (e) {
    if (created) await runTool("ip", ["link", "del", b.name]).catch(() => {});
    throw e;
  }
  log.info(created ? "bridge created" : "bridge reused", { bridge: b.name, address: b.address });
  return {
    name: "bridge",
    async close() {
      if (created) await runTool("ip", ["link", "del", b.name]).catch(() => {});
    },
  };
}

/** A locally administered unicast MAC for bridge `name` on this host (/etc/machine-id, else the
 *  host name: two hosts must not derive the same one if their bridges ever share a segment). */
export function bridgeMac(name: string, hostId = readHostId()): string {
  const h = createHash("sha256").update(`netroot bridge\n${hostId}\n${name}`).digest();
  const bytes = [0x02, ...h.subarray(0, 5)]; // 0x02: locally administered, unicast
  return bytes.map((x) => x.toString(16).padStart(2, "0")).join(":");
}

function readHostId(): string {
  try {
    return readFileSync("/etc/machine-id", "utf8").trim() || Deno.hostname();
  } catch {
    return Deno.hostname();
  }
}

/** Sets the bridge's MAC to the one it has (`mac`, as `ip` showed it: its own netlink view of this
 *  network namespace, not /sys, which can show another namespace's devices): the address is then
 *  one somebody set (addr_assign_type 3, NET_ADDR_SET), which the kernel never replaces by a
 *  port's. */
async function pinMac(name: string, mac: string): Promise<void> {
  await runTool("ip", ["link", "set", "dev", name, "address", mac]);
  log.info("bridge MAC address pinned (ports joining or leaving no longer change it)", {
    bridge: name,
    mac,
  });
}

/** Adds a tap for a virtual node to `bridge` (recreated if a stale one exists). */
export async function addTap(tap: string, bridge: string): Promise<void> {
  if (await linkInfo(tap)) await runTool("ip", ["link", "del", tap]);
  await runTool("ip", ["tuntap", "add", "dev", tap, "mode", "tap"]);
  try {
    await runTool("ip", ["link", "set", tap, "master", bridge]);
    await runTool("ip", ["link", "set", tap, "up"]);
  } catch (e) {
    await deleteTap(tap);
    throw e;
  }
}

export async function deleteTap(tap: string): Promise<void> {
  await runTool("ip", ["link", "del", tap]).catch(() => {});
}
