// IPv4 text helpers shared by the server (DHCP leases, the boot network) and the node (`ip=`).
// Dotted quads only: the initramfs has no resolver and the kernel does not resolve names.

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export const isIPv4 = (s: string): boolean => IPV4.test(s);

export function ipToInt(ip: string): number {
  const p = ip.split(".").map(Number);
  return ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

/** Prefix length of a contiguous netmask ("255.255.255.0" → 24), or -1. */
export function netmaskPrefix(mask: string): number {
  if (!isIPv4(mask)) return -1;
  const bits = ipToInt(mask).toString(2).padStart(32, "0");
  if (!/^1*0*$/.test(bits)) return -1;
  const zero = bits.indexOf("0");
  return zero < 0 ? 32 : zero;
}

/** The four numbers of `a.b.c.d` (each 0–255; leading zeros allowed, so "010.0.0.1" is 10.0.0.1),
 *  or undefined. For admin input, which is then written back normalised. */
export function ipv4Octets(s: string): number[] | undefined {
  const o = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s)?.slice(1).map(Number);
  return o && o.every((x) => x <= 255) ? o : undefined;
}

/** The four bytes of a dotted quad (network order, for packets and socket addresses); a
 *  RangeError for anything else. */
export function ipv4Bytes(address: string): Uint8Array<ArrayBuffer> {
  const o = ipv4Octets(address);
  if (!o) throw new RangeError(`invalid IPv4 address: ${address}`);
  return new Uint8Array(o);
}

/** `a.b.c.d/nn` of the network holding `ip` under `netmask`. */
export function networkCidr(ip: string, netmask: string): string {
  const mask = ipToInt(netmask);
  const bits = mask.toString(2).replaceAll("0", "").length;
  return `${intToIp((ipToInt(ip) & mask) >>> 0)}/${bits}`;
}
