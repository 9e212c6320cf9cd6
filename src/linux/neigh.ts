// The kernel's IPv4 neighbour (ARP) table, read from /proc/net/arp (of this process's network
// namespace). The HTTP boot route asks it which MAC answers for the address a request came from:
// evidence, bound to the MAC, of where a node is (src/nodes.ts observeAddress).
import { readFileSync } from "node:fs";
import { parseMac } from "../../contract/mac.ts";

export interface Neighbour {
  ip: string;
  mac: string;
  device: string;
}

const ATF_COM = 0x2; // the entry is complete: the link-layer address is known

/** The complete entries of /proc/net/arp text ("IP address  HW type  Flags  HW address  Mask
 *  Device" and one line per entry). */
export function parseArpTable(text: string): Neighbour[] {
  const out: Neighbour[] = [];
  for (const line of text.split("\n").slice(1)) {
    const [ip, _hw, flags, mac, _mask, device] = line.trim().split(/\s+/);
    if (!device || !(Number(flags) & ATF_COM)) continue;
    const canonical = parseMac(mac);
    if (!canonical) continue;
    out.push({ ip, mac: canonical, device });
  }
  return out;
}

/** The MAC the boot interface's neighbour table holds for `ip`, if a complete entry exists. A
 *  host that just opened a TCP connection to us has one: we resolved it to answer. */
export function neighbourMac(ip: string, device: string): string | undefined {
  let text: string;
  try {
    text = readFileSync("/proc/net/arp", "utf8");
  } catch {
    return undefined;
  }
  return parseArpTable(text).find((n) => n.ip === ip && n.device === device)?.mac;
}
