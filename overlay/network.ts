// Step 2: the boot NIC, found by the MAC the server put on the command line, gets the address the
// server gave (ip=), goes up, and we wait (bounded) for carrier. lo goes up too.
import {
  addDefaultRoute,
  findByMac,
  hardwareAddress,
  hasCarrier,
  interfaceNames,
  setAddress,
  setUp,
} from "../src/linux/netif.ts";
import type { IpConfig } from "../contract/cmdline.ts";
import type { InitConsole } from "./console.ts";
import { fmtMs } from "./console.ts";
import { sleep } from "../src/timer.ts";

export interface NetworkUp {
  ifname: string;
  carrier: boolean;
  ms: number;
}

export class NetworkError extends Error {}

/**
 * Waits up to `appearMs` for the NIC (its driver may still be probing after the module load), then
 * configures it. No carrier after `carrierMs` is not fatal: the NFS stage retries and says so.
 */
export async function bringUpNetwork(
  mac: string,
  ip: IpConfig,
  out: InitConsole,
  opts: { appearMs?: number; carrierMs?: number } = {},
): Promise<NetworkUp> {
  const t0 = performance.now();
  const { appearMs = 10_000, carrierMs = 10_000 } = opts;
  // The kernel gives lo 127.0.0.1/8 when it goes up.
  if (interfaceNames().includes("lo")) setUp("lo");
  let ifname = findByMac(mac);
  while (!ifname && performance.now() - t0 < appearMs) {
    await sleep(50);
    ifname = findByMac(mac);
  }
  if (!ifname) {
    const seen = interfaceNames().filter((n) => n !== "lo").map((n) => {
      try {
        return `${n} ${hardwareAddress(n)}`;
      } catch {
        return n;
      }
    });
    throw new NetworkError(
      `no network interface with MAC ${mac} after ${fmtMs(appearMs)} (seen: ${
        seen.join(", ") || "none"
      })`,
    );
  }
  setAddress(ifname, ip.address, ip.netmask);
  setUp(ifname);
  if (ip.gateway) {
    // A gateway off this subnet (dhcp.router, or a node's own ip=) is refused (ENETUNREACH): not
    // fatal, the server the boot needs is on this link (else NFS fails next, and says so).
    try {
      addDefaultRoute(ip.gateway, ifname);
    } catch (e) {
      out.line(`warning: no default route via ${ip.gateway} (${(e as Error).message}); going on`);
    }
  }
  const tc = performance.now();
  while (!hasCarrier(ifname) && performance.now() - tc < carrierMs) await sleep(20);
  const carrier = hasCarrier(ifname);
  if (!carrier) out.line(`warning: ${ifname} has no carrier after ${fmtMs(carrierMs)}; going on`);
  return { ifname, carrier, ms: performance.now() - t0 };
}
