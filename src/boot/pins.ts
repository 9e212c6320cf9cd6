// Pinned neighbour entries: each address the registry binds firmly to a node's MAC (the admin's
// `ip` setting; in full DHCP mode every address a node's exports follow, its lease or its
// reservation, when DHCP hands it out: NodeRegistry.pinnedAddresses, wantedPins) is written
// into the boot interface's ARP table as a permanent entry. The server then sends to that address
// only at the node's MAC: a machine that takes the address keeping its own MAC (the node being
// off) gets no answer from any service — not NFS, which exports a node's /persist read-write to
// its address alone, not the boot routes, not ssh — and a forged ARP reply cannot move the entry
// (a permanent one is not updated by ARP). Our entries carry protocol 110, so that a start finds
// and drops what a previous run left; they are removed on close. Addresses off the boot subnet
// are not pinned (the node is behind a router: the link holds its router's MAC, not its own).
import type { Context, Service } from "../context.ts";
import { followRegistry } from "../follow.ts";
import { bootNetwork } from "../nfs.ts";
import { ipToInt } from "../../contract/ipv4.ts";
import { logger } from "../log.ts";
import { runIp } from "../linux/iproute.ts";

const log = logger("pins");

/** Marks netroot's entries among the interface's permanent ones (any number iproute2 does not
 *  name; "110" in `ip neigh` output). */
const PROTOCOL = "110";

/** netroot's pinned entries on `device`: address → MAC. */
export async function listPins(device: string): Promise<Map<string, string>> {
  const rows = JSON.parse(
    await runIp(["-j", "neigh", "show", "dev", device, "nud", "permanent"]) ||
      "[]",
  ) as { dst: string; lladdr?: string; protocol?: string }[];
  return new Map(
    rows.filter((r) => r.protocol === PROTOCOL && r.lladdr).map((r) => [r.dst, r.lladdr!]),
  );
}

/** Makes netroot's pins on `device` exactly `want` (address → MAC), from `held` (what they are
 *  believed to be), in one `ip -batch`; when that fails (an entry removed or changed by hand
 *  meanwhile), once more from what the table really holds. Returns the new state. */
export async function syncPins(
  device: string,
  held: Map<string, string>,
  want: Map<string, string>,
): Promise<Map<string, string>> {
  const batch = (from: Map<string, string>) => {
    const lines: string[] = [];
    for (const ip of from.keys()) if (!want.has(ip)) lines.push(`neigh del ${ip} dev ${device}`);
    for (const [ip, mac] of want) {
      if (from.get(ip) === mac) continue;
      lines.push(
        `neigh replace ${ip} lladdr ${mac} dev ${device} nud permanent protocol ${PROTOCOL}`,
      );
    }
    return lines.length ? runIp(["-force"], lines.join("\n") + "\n") : Promise.resolve("");
  };
  try {
    await batch(held);
  } catch {
    await batch(await listPins(device));
  }
  return new Map(want);
}

/** The pins the registry asks for now, on the boot subnet: the admin's `ip` settings and, in
 *  full DHCP mode, the other addresses only where DHCP hands them out (the range, less the
 *  router). An address outside it is not ours to give (as none is in proxy mode), and may come
 *  from the neighbour table, which a forged ARP moves: a node that claimed the router's address
 *  that way, and fetched its script from it, had the router pinned to its own MAC, for good (a
 *  permanent entry is what the real router's ARP cannot move). */
export function wantedPins(ctx: Context): Map<string, string> {
  const net = bootNetwork(ctx);
  if (!net) return new Map();
  const mask = ipToInt(net.netmask), at = ipToInt(net.address) & mask;
  const { mode, range, router } = ctx.config.dhcp;
  const full = mode === "full";
  const fixed = new Set(ctx.nodes.pinnedAddresses(false).map((p) => `${p.mac} ${p.ip}`));
  const handedOut = (ip: string) =>
    full && !!range && ip !== router && ipToInt(ip) >= ipToInt(range.start) &&
    ipToInt(ip) <= ipToInt(range.end);
  return new Map(
    ctx.nodes.pinnedAddresses(full)
      .filter((p) => fixed.has(`${p.mac} ${p.ip}`) || handedOut(p.ip))
      .filter((p) => (ipToInt(p.ip) & mask) === at && p.ip !== net.address)
      .map((p) => [p.ip, p.mac]),
  );
}

/** Keeps the boot interface's pins in line with the registry; removes them on close. */
export async function startAddressPins(ctx: Context, device: string): Promise<Service> {
  let held: Map<string, string>;
  try {
    held = await listPins(device);
  } catch (e) {
    log.warn("node addresses are not pinned in the ARP table", {
      device,
      error: (e as Error).message,
    });
    return { name: "pins", close: () => Promise.resolve() };
  }
  const apply = async () => {
    const want = wantedPins(ctx);
    const before = held.size;
    held = await syncPins(device, held, want);
    if (held.size !== before) log.info("node addresses pinned", { device, pinned: held.size });
  };
  await apply().catch((e) => log.error("pinning node addresses failed", { error: e.message }));
  const f = followRegistry(ctx, apply, {
    failed: (e) => log.error("pinning node addresses failed", { error: e.message }),
  });
  return {
    name: "pins",
    async close() {
      await f.stop();
      held = await syncPins(device, held, new Map()).catch((e) => {
        log.warn("unpinning node addresses failed", { error: (e as Error).message });
        return held;
      });
    },
  };
}
