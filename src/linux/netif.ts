// IPv4 interface configuration with the classic ioctls (no `ip`, no netlink): list interfaces,
// read a MAC, set flags/address/netmask, add a gateway route; carrier from sysfs. x86_64 layouts:
// struct ifreq = 16-byte name + 24-byte union; struct rtentry = 120 bytes (checked with gcc).
import { ipv4Bytes } from "../../contract/ipv4.ts";
import { macFromBytes } from "../../contract/mac.ts";
import { check, cstr, enc, openLibc } from "./libc.ts";

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const SIOCADDRT = 0x890b;
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const SIOCSIFADDR = 0x8916;
const SIOCSIFNETMASK = 0x891c;
const SIOCGIFHWADDR = 0x8927;
export const IFF_UP = 0x1;
export const IFF_LOOPBACK = 0x8;
/** Set by the kernel when the link is operationally up (carrier present). */
export const IFF_RUNNING = 0x40;
const RTF_UP = 0x1;
const RTF_GATEWAY = 0x2;
const IFNAMSIZ = 16;

let lib:
  | Deno.DynamicLibrary<{
    socket: { parameters: ["i32", "i32", "i32"]; result: "i32" };
    ioctl: { parameters: ["i32", "u64", "buffer"]; result: "i32" };
    close: { parameters: ["i32"]; result: "i32" };
    if_nameindex: { parameters: []; result: "pointer" };
    if_freenameindex: { parameters: ["pointer"]; result: "void" };
  }>
  | undefined;

function libc() {
  lib ??= openLibc(
    {
      socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
      ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      if_nameindex: { parameters: [], result: "pointer" },
      if_freenameindex: { parameters: ["pointer"], result: "void" },
    } as const,
  );
  return lib;
}

/** Runs `fn` with a throwaway AF_INET socket, the handle the interface ioctls need. */
function withSocket<T>(fn: (fd: number) => T): T {
  const c = libc().symbols;
  const fd = check("socket", c.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  try {
    return fn(fd);
  } finally {
    c.close(fd);
  }
}

function ifreq(name: string): Uint8Array<ArrayBuffer> {
  if (enc.encode(name).length >= IFNAMSIZ) throw new Error(`interface name too long: ${name}`);
  const b = new Uint8Array(40);
  enc.encodeInto(name, b);
  return b;
}

function ioctl(fd: number, req: number, buf: Uint8Array<ArrayBuffer>, what: string): void {
  check(`ioctl(0x${req.toString(16)})`, libc().symbols.ioctl(fd, BigInt(req), buf), what);
}

/** Writes a struct sockaddr_in (family, port 0, address) at `off`. */
function putSockaddrIn(buf: Uint8Array, off: number, ip: string): void {
  new DataView(buf.buffer, buf.byteOffset).setUint16(off, AF_INET, true);
  buf.set(ipv4Bytes(ip), off + 4);
}

/** Names of all interfaces (if_nameindex: netlink, no /sys needed). */
export function interfaceNames(): string[] {
  const c = libc().symbols;
  const head = c.if_nameindex();
  if (!head) return [];
  const names: string[] = [];
  try {
    const v = new Deno.UnsafePointerView(head);
    for (let off = 0;; off += 16) { // struct if_nameindex { unsigned idx; char *name; }
      if (v.getUint32(off) === 0) break;
      const namePtr = Deno.UnsafePointer.create(v.getBigUint64(off + 8));
      if (namePtr) names.push(Deno.UnsafePointerView.getCString(namePtr));
    }
  } finally {
    c.if_freenameindex(head);
  }
  return names;
}

export function hardwareAddress(name: string): string {
  return withSocket((fd) => {
    const r = ifreq(name);
    ioctl(fd, SIOCGIFHWADDR, r, name);
    return macFromBytes(r.subarray(18, 24)); // ifr_hwaddr: sa_family (2) then sa_data
  });
}

/** The interface whose MAC is `mac` (normalized lower-case), or undefined. */
export function findByMac(mac: string): string | undefined {
  return interfaceNames().find((n) => {
    try {
      return hardwareAddress(n) === mac;
    } catch {
      return false; // vanished meanwhile
    }
  });
}

export function getFlags(name: string): number {
  return withSocket((fd) => {
    const r = ifreq(name);
    ioctl(fd, SIOCGIFFLAGS, r, name);
    return new DataView(r.buffer).getUint16(16, true);
  });
}

export function setUp(name: string): void {
  withSocket((fd) => {
    const r = ifreq(name);
    ioctl(fd, SIOCGIFFLAGS, r, name);
    const dv = new DataView(r.buffer);
    dv.setUint16(16, dv.getUint16(16, true) | IFF_UP, true);
    ioctl(fd, SIOCSIFFLAGS, r, `${name} up`);
  });
}

/**
 * Carrier, from sysfs (netif_carrier_ok). IFF_RUNNING is only the fallback when /sys is not
 * mounted: right after "up" it reads true until linkwatch has computed the operstate (seen with a
 * veth whose peer is down).
 */
export function hasCarrier(name: string): boolean {
  try {
    return Deno.readTextFileSync(`/sys/class/net/${name}/carrier`).trim() === "1";
  } catch {
    return (getFlags(name) & (IFF_UP | IFF_RUNNING)) === (IFF_UP | IFF_RUNNING);
  }
}

/** Sets the interface's IPv4 address and netmask (the broadcast follows from them). */
export function setAddress(name: string, address: string, netmask: string): void {
  withSocket((fd) => {
    const a = ifreq(name);
    putSockaddrIn(a, 16, address);
    ioctl(fd, SIOCSIFADDR, a, `${name} ${address}`);
    const m = ifreq(name);
    putSockaddrIn(m, 16, netmask);
    ioctl(fd, SIOCSIFNETMASK, m, `${name} netmask ${netmask}`);
  });
}

/** Adds the default route via `gateway` out of `dev` (SIOCADDRT). */
export function addDefaultRoute(gateway: string, dev: string): void {
  withSocket((fd) => {
    const rt = new Uint8Array(120);
    putSockaddrIn(rt, 8, "0.0.0.0"); // rt_dst
    putSockaddrIn(rt, 24, gateway); // rt_gateway
    putSockaddrIn(rt, 40, "0.0.0.0"); // rt_genmask
    new DataView(rt.buffer).setUint16(56, RTF_UP | RTF_GATEWAY, true);
    const devName = cstr(dev);
    new DataView(rt.buffer).setBigUint64(
      88,
      BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(devName))),
      true,
    );
    ioctl(fd, SIOCADDRT, rt, `default via ${gateway} dev ${dev}`);
    void devName; // alive until here
  });
}
