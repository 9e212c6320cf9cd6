// The boot storm's simulated machines on a lab's link (bench/storm_bench.ts, tests/storm_test.ts),
// each with its own MAC and address: one macvlan per client on the generator's interface (the
// client's MAC, an address that its DHCP asks for, netboot/storm.ts) with its own routing table,
// so each client's TFTP and HTTP go out from its address and its MAC, and the server's neighbour
// table maps that address to the client's MAC (the server refuses a node's script to an address
// the table maps to another MAC, src/boot/booter.ts; in full DHCP mode it pins each lease to its
// MAC, src/boot/pins.ts; it holds each address to its share of TFTP transfers and HTTP
// connections). The generator's DHCP goes out from the interface itself. Each address answers
// ARP on its own macvlan only (arp_ignore); broadcasts are not copied to the macvlans
// (bcqueuelen 0: the DHCP replies are for the interface's socket, and the server learns each
// client's MAC from the client's own ARP request). The server then has a neighbour entry per
// client: past the kernel's default of 1,024 (one table for every namespace) it would drop some,
// as a lab's server of 1,000 nodes on one link needs more too: raise them for the run
// (neighThresholds).
import { macFor } from "../../netboot/storm.ts";
import { macFromBytes } from "../../contract/mac.ts";
import { runIp } from "../../src/linux/iproute.ts";

/** Gives namespace `ns` one macvlan on `device` per client: the client of index `indexes[k]`
 *  (macFor) at `addresses[k]`, routed to `subnet` (a CIDR) from that address only. */
export async function addStormClients(
  ns: string,
  device: string,
  subnet: string,
  indexes: number[],
  addresses: string[],
): Promise<void> {
  if (indexes.length > addresses.length) {
    throw new Error(`${indexes.length} clients, ${addresses.length} addresses`);
  }
  const lines: string[] = [];
  for (const [k, index] of indexes.entries()) {
    const mac = macFromBytes(macFor(index));
    const dev = `mv${k}`, ip = addresses[k], table = 1000 + k; // (253–255: the kernel's tables)
    lines.push(
      `link add ${dev} link ${device} address ${mac} type macvlan mode private bcqueuelen 0`,
      `addr add ${ip}/32 dev ${dev}`,
      `link set ${dev} up`,
      `route add ${subnet} dev ${dev} src ${ip} table ${table}`,
      `rule add from ${ip} table ${table} priority 100`,
    );
  }
  const sysctls = [["arp_ignore", "1"], ["arp_announce", "2"], ["rp_filter", "0"]].flatMap((
    [key, value],
  ) => [`net.ipv4.conf.all.${key}=${value}`, `net.ipv4.conf.default.${key}=${value}`]);
  const out = await new Deno.Command("ip", {
    args: ["netns", "exec", ns, "sysctl", "-qw", ...sysctls],
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`sysctl: ${new TextDecoder().decode(out.stderr)}`);
  await runIp(["-n", ns], lines.join("\n") + "\n");
}

/** Sets the kernel's neighbour table thresholds (gc_thresh1–3: one table for every network
 *  namespace, set in the first one only); returns the values they had. */
export function neighThresholds(values: number[]): number[] {
  const path = (i: number) => `/proc/sys/net/ipv4/neigh/default/gc_thresh${i + 1}`;
  const before = values.map((_, i) => Number(Deno.readTextFileSync(path(i))));
  // Raised from the top down, lowered from the bottom up: thresh1 ≤ thresh2 ≤ thresh3 throughout.
  const order = values[2] >= before[2] ? [2, 1, 0] : [0, 1, 2];
  for (const i of order) Deno.writeTextFileSync(path(i), String(values[i]));
  return before;
}
