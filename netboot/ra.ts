// IPv6 router advertisements on the boot interface. iPXE spends ≈ 13 s in "Configuring" waiting
// for IPv6 autoconfiguration unless a router answers its solicitations (e2e-recipe.md §6), so we
// answer every router solicitation and advertise periodically. Router lifetime 0: nobody uses us
// as a default router; the on-link /64 prefixes of the interface are announced for SLAAC.
import { logger } from "../src/log.ts";
import { Icmp6Socket, ipv6Bytes } from "../src/linux/udp.ts";
import { macToBytes } from "../contract/mac.ts";

const log = logger("ra");
const ROUTER_SOLICITATION = 133, ROUTER_ADVERTISEMENT = 134;
const ALL_NODES = "ff02::1", ALL_ROUTERS = "ff02::2";

export interface Prefix {
  /** 16 bytes, host bits zero. */
  prefix: Uint8Array;
  length: number;
}

export interface RaOptions {
  mac?: Uint8Array;
  prefixes: Prefix[];
  validSeconds?: number;
  preferredSeconds?: number;
}

/** The ICMPv6 router advertisement (RFC 4861 §4.2); the kernel fills in the checksum. */
export function buildRouterAdvertisement(o: RaOptions): Uint8Array {
  const size = 16 + (o.mac ? 8 : 0) + 32 * o.prefixes.length;
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  b[0] = ROUTER_ADVERTISEMENT;
  b[4] = 64; // current hop limit suggested to hosts
  b[5] = 0; // M=0, O=0: no DHCPv6
  v.setUint16(6, 0); // router lifetime 0: not a default router
  let off = 16;
  if (o.mac) {
    b.set([1, 1, ...o.mac], off); // source link-layer address
    off += 8;
  }
  for (const p of o.prefixes) {
    b[off] = 3; // prefix information
    b[off + 1] = 4;
    b[off + 2] = p.length;
    b[off + 3] = p.length === 64 ? 0xc0 : 0x80; // on-link, + autonomous (SLAAC needs a /64)
    v.setUint32(off + 4, o.validSeconds ?? 3600);
    v.setUint32(off + 8, o.preferredSeconds ?? 1800);
    b.set(p.prefix, off + 16);
    off += 32;
  }
  return b;
}

function prefixLength(netmask: string): number {
  return Array.from(ipv6Bytes(netmask)).reduce(
    (n, byte) => n + byte.toString(2).split("1").length - 1,
    0,
  );
}

/** The interface's global/ULA prefixes (link-local excluded) and its MAC. */
export function interfacePrefixes(name: string): { prefixes: Prefix[]; mac?: Uint8Array } {
  const all = Deno.networkInterfaces().filter((i) => i.name === name);
  const prefixes: Prefix[] = [];
  for (const a of all) {
    if (a.family !== "IPv6" || /^fe[89ab]/i.test(a.address)) continue;
    const length = prefixLength(a.netmask);
    const prefix = ipv6Bytes(a.address);
    for (let i = 0; i < 16; i++) {
      const bits = Math.max(0, Math.min(8, length - 8 * i));
      prefix[i] &= (0xff << (8 - bits)) & 0xff;
    }
    if (!prefixes.some((p) => p.length === length && p.prefix.every((x, i) => x === prefix[i]))) {
      prefixes.push({ prefix, length });
    }
  }
  const mac = all[0]?.mac && all[0].mac !== "00:00:00:00:00:00"
    ? macToBytes(all[0].mac)
    : undefined;
  return { prefixes, mac };
}

export function startRouterAdvertisements(
  device: string | undefined,
  opts: { intervalSeconds?: number } = {},
): Promise<{ name: string; close(): Promise<void> }> {
  if (!device) return Promise.reject(new Error("router advertisements need --interface"));
  let sock: Icmp6Socket;
  try {
    sock = Icmp6Socket.open(device, [ROUTER_SOLICITATION], [ALL_ROUTERS]);
  } catch (e) {
    return Promise.reject(
      new Error(`cannot open the ICMPv6 socket on ${device}: ${(e as Error).message}`),
    );
  }
  let sent = 0, failed = 0, lastSent = 0;
  const advertise = (why: string) => {
    // Prefixes are read each time: addresses may be added after start.
    const info = interfacePrefixes(device);
    try {
      sock.send(buildRouterAdvertisement(info), ALL_NODES);
      sent++;
      lastSent = Date.now();
      log.debug("router advertisement sent", { why, prefixes: info.prefixes.length });
      return true;
    } catch (e) {
      // e.g. no link-local source address yet (duplicate address detection in progress).
      failed++;
      log.debug("router advertisement not sent", { why, error: e });
      return false;
    }
  };
  const timer = setInterval(() => advertise("periodic"), (opts.intervalSeconds ?? 60) * 1000);
  // The first one, retried each second while the interface has no usable source address yet
  // (a freshly created interface is still in duplicate address detection).
  let retry: ReturnType<typeof setTimeout> | undefined;
  const first = (attempt: number) => {
    if (!advertise("start") && attempt < 20) retry = setTimeout(() => first(attempt + 1), 1000);
  };
  first(0);
  const loop = (async () => {
    for (;;) {
      const d = await sock.recv();
      if (!d) return;
      if (d.data.length < 8 || d.data[0] !== ROUTER_SOLICITATION || d.data[1] !== 0) continue;
      // Answer at once (that is what ends iPXE's wait), but at most a few per second.
      if (Date.now() - lastSent >= 200) advertise(`solicitation from ${d.from.address}`);
    }
  })();
  log.info("router advertisements on", { interface: device });
  return Promise.resolve({
    name: "ra",
    async close() {
      clearInterval(timer);
      clearTimeout(retry);
      await sock.close();
      await loop;
      log.info("router advertisements stopped", { sent, failed });
    },
  });
}
