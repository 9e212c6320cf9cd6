// Datagram sockets through libc FFI. Deno's UDP APIs can neither bind to a device
// (SO_BINDTODEVICE, needed to broadcast DHCP replies with no route to 255.255.255.255) nor tell
// which interface and destination address a datagram arrived on (IP_PKTINFO).
//
// Receiving: a synchronous recvmsg(MSG_DONTWAIT) first (cheap under load: no thread hop), then a
// blocking recvmsg on an FFI worker thread. close() calls shutdown(), which wakes that blocked
// call (Linux wakes readers even on unconnected UDP sockets), then close()s the descriptor.
// One recv() at a time per socket: the receive buffers are shared with the worker thread.
import { ipv4Bytes } from "../../contract/ipv4.ts";
import { check, cstr, errno, openLibc, SyscallError } from "./libc.ts";

const AF_INET = 2, AF_INET6 = 10;
const SOCK_DGRAM = 2, SOCK_RAW = 3, SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1, SO_REUSEADDR = 2, SO_BROADCAST = 6, SO_RCVBUF = 8, SO_BINDTODEVICE = 25;
const SO_RCVBUFFORCE = 33;
const IPPROTO_IP = 0, IP_PKTINFO = 8;
const IPPROTO_IPV6 = 41, IPV6_UNICAST_HOPS = 16, IPV6_MULTICAST_HOPS = 18, IPV6_JOIN_GROUP = 20;
const IPPROTO_ICMPV6 = 58, ICMP6_FILTER = 1;
const MSG_DONTWAIT = 0x40, SHUT_RDWR = 2;
/** recvmsg's errors that mean the descriptor is unusable: EBADF, EFAULT, EINVAL, ENOTSOCK. */
const DEAD_SOCKET = new Set([9, 14, 22, 88]);

let lib: ReturnType<typeof load> | undefined;
function load() {
  return openLibc(
    {
      socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
      setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
      bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
      getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
      recvmsg_wait: {
        name: "recvmsg",
        parameters: ["i32", "buffer", "i32"],
        result: "isize",
        nonblocking: true,
      },
      recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
      sendto: {
        parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"],
        result: "isize",
      },
      shutdown: { parameters: ["i32", "i32"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      if_nametoindex: { parameters: ["buffer"], result: "u32" },
    } as const,
  ).symbols;
}
function libc() {
  return (lib ??= load());
}

export interface Datagram {
  data: Uint8Array;
  from: { address: string; port: number };
  /** Interface the datagram arrived on (IP_PKTINFO; 0 when unknown). */
  ifindex: number;
  /** Destination address of the datagram, e.g. 255.255.255.255 for a broadcast ("" when unknown). */
  dst: string;
}

export function ifIndex(name: string): number {
  const i = libc().if_nametoindex(cstr(name));
  if (i === 0) throw new SyscallError("if_nametoindex", errno(), name);
  return i;
}

function int32(v: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, v, true);
  return b;
}

export function ipv6Bytes(address: string): Uint8Array {
  const [head, tail] = address.includes("::") ? address.split("::") : [address, undefined];
  const words = (s: string) => (s ? s.split(":").map((w) => parseInt(w, 16)) : []);
  const h = words(head), t = tail === undefined ? [] : words(tail);
  const all = tail === undefined ? h : [...h, ...new Array(8 - h.length - t.length).fill(0), ...t];
  if (all.length !== 8 || all.some((w) => !(w >= 0 && w <= 0xffff))) {
    throw new Error(`invalid IPv6 address: ${address}`);
  }
  const out = new Uint8Array(16);
  all.forEach((w, i) => {
    out[2 * i] = w >> 8;
    out[2 * i + 1] = w & 0xff;
  });
  return out;
}

function sockaddrIn(address: string, port: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint16(0, AF_INET, true);
  v.setUint16(2, port, false);
  b.set(ipv4Bytes(address), 4);
  return b;
}

function sockaddrIn6(address: string, port: number, scopeId: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(28);
  const v = new DataView(b.buffer);
  v.setUint16(0, AF_INET6, true);
  v.setUint16(2, port, false);
  b.set(ipv6Bytes(address), 8);
  v.setUint32(24, scopeId, true);
  return b;
}

const ptr = (b: Uint8Array<ArrayBuffer>) =>
  BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b)));

/** Base: one descriptor, preallocated msghdr/iovec/control buffers, the receive protocol. */
class FfiDatagramSocket {
  protected closed = false;
  private receiving = false;
  private pending?: Promise<number | bigint>;
  private readonly buf: Uint8Array<ArrayBuffer>;
  private readonly name = new Uint8Array(28);
  private readonly control = new Uint8Array(128);
  private readonly iov = new BigUint64Array(2);
  private readonly msg = new Uint8Array(56);

  protected constructor(protected readonly fd: number, bufSize: number) {
    this.buf = new Uint8Array(bufSize);
    this.iov[0] = ptr(this.buf);
    this.iov[1] = BigInt(bufSize);
    const v = new DataView(this.msg.buffer);
    v.setBigUint64(0, ptr(this.name), true);
    v.setBigUint64(16, ptr(new Uint8Array(this.iov.buffer)), true);
    v.setBigUint64(24, 1n, true);
    v.setBigUint64(32, ptr(this.control), true);
  }

  protected setopt(level: number, name: number, value: Uint8Array<ArrayBuffer>, what: string) {
    check(
      `setsockopt(${what})`,
      libc().setsockopt(this.fd, level, name, value, value.length),
    );
  }

  /** Resets the lengths the kernel overwrites on each call. */
  private arm() {
    const v = new DataView(this.msg.buffer);
    v.setUint32(8, this.name.length, true);
    v.setBigUint64(40, BigInt(this.control.length), true);
    v.setInt32(48, 0, true);
  }

  /** The next datagram, or null once the socket is closed. */
  async recv(): Promise<Datagram | null> {
    if (this.receiving) throw new Error("recv() already pending on this socket");
    this.receiving = true;
    try {
      while (!this.closed) {
        this.arm();
        let n = Number(libc().recvmsg(this.fd, this.msg, MSG_DONTWAIT));
        if (n < 0) {
          // Nothing queued (EAGAIN), as a rule. errno is read by a second FFI call, and under load
          // it has come back as 2 (ENOENT, which recvmsg never sets: overwritten in between; a
          // storm generator in 4 processes died of it): only a descriptor that cannot work ends
          // the receiver, anything else waits on the worker thread, whose result says more.
          const e = errno();
          if (DEAD_SOCKET.has(e)) throw new SyscallError("recvmsg", e);
          this.arm();
          this.pending = libc().recvmsg_wait(this.fd, this.msg, 0);
          n = Number(await this.pending);
          this.pending = undefined;
          // errno of the worker thread is lost; a failure here is transient (e.g. ICMP errors).
          if (n < 0 || this.closed) continue;
        }
        return this.parse(n);
      }
      return null;
    } finally {
      this.receiving = false;
    }
  }

  private parse(n: number): Datagram {
    const data = this.buf.slice(0, n);
    const nv = new DataView(this.name.buffer);
    const family = nv.getUint16(0, true);
    let from = { address: "", port: 0 };
    if (family === AF_INET) {
      from = { address: this.name.subarray(4, 8).join("."), port: nv.getUint16(2, false) };
    } else if (family === AF_INET6) {
      const w = new DataView(this.name.buffer, 8, 16);
      const parts = Array.from({ length: 8 }, (_, i) => w.getUint16(2 * i).toString(16));
      from = { address: parts.join(":"), port: nv.getUint16(2, false) };
    }
    let ifindex = 0, dst = "";
    const mv = new DataView(this.msg.buffer);
    const clen = Number(mv.getBigUint64(40, true));
    const cv = new DataView(this.control.buffer);
    for (let off = 0; off + 16 <= clen;) {
      const len = Number(cv.getBigUint64(off, true));
      const level = cv.getInt32(off + 8, true), type = cv.getInt32(off + 12, true);
      if (level === IPPROTO_IP && type === IP_PKTINFO && len >= 28) {
        ifindex = cv.getInt32(off + 16, true);
        dst = this.control.subarray(off + 24, off + 28).join(".");
      }
      if (len < 16) break;
      off += (len + 7) & ~7;
    }
    return { data, from, ifindex, dst };
  }

  protected sendRaw(data: Uint8Array, addr: Uint8Array<ArrayBuffer>, what: string): void {
    if (this.closed) throw new Error("socket closed");
    const payload = data.buffer instanceof ArrayBuffer
      ? (data as Uint8Array<ArrayBuffer>)
      : new Uint8Array(data);
    check(
      "sendto",
      libc().sendto(this.fd, payload, BigInt(payload.length), 0, addr, addr.length),
      what,
    );
  }

  /** Stops a pending recv() (it resolves to null) and releases the descriptor. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    libc().shutdown(this.fd, SHUT_RDWR); // ENOTCONN on unconnected sockets, but readers wake up
    await this.pending?.catch(() => {});
    libc().close(this.fd);
  }
}

export interface UdpOptions {
  port: number;
  address?: string;
  /** SO_BINDTODEVICE: receive from and send through this interface only. */
  device?: string;
  broadcast?: boolean;
  reuseAddress?: boolean;
  /** SO_RCVBUF(FORCE) in bytes (a boot storm queues many packets). */
  receiveBuffer?: number;
}

/** IPv4 UDP socket with SO_BINDTODEVICE and IP_PKTINFO. */
export class UdpSocket extends FfiDatagramSocket {
  private constructor(fd: number, readonly port: number) {
    super(fd, 65536);
  }

  static open(o: UdpOptions): UdpSocket {
    const fd = check("socket", libc().socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    try {
      const on = int32(1);
      const set = (level: number, name: number, v: Uint8Array<ArrayBuffer>, what: string) =>
        check(`setsockopt(${what})`, libc().setsockopt(fd, level, name, v, v.length));
      if (o.reuseAddress ?? true) set(SOL_SOCKET, SO_REUSEADDR, on, "SO_REUSEADDR");
      if (o.broadcast ?? true) set(SOL_SOCKET, SO_BROADCAST, on, "SO_BROADCAST");
      if (o.device) set(SOL_SOCKET, SO_BINDTODEVICE, cstr(o.device), `SO_BINDTODEVICE ${o.device}`);
      if (o.receiveBuffer) {
        // Past net.core.rmem_max when we may (CAP_NET_ADMIN), else up to it.
        const size = int32(o.receiveBuffer);
        if (libc().setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, size, size.length) < 0) {
          set(SOL_SOCKET, SO_RCVBUF, size, "SO_RCVBUF");
        }
      }
      set(IPPROTO_IP, IP_PKTINFO, on, "IP_PKTINFO");
      const addr = sockaddrIn(o.address ?? "0.0.0.0", o.port);
      check("bind", libc().bind(fd, addr, addr.length), `${o.address ?? "0.0.0.0"}:${o.port}`);
      const len = new Uint32Array([16]);
      check("getsockname", libc().getsockname(fd, addr, new Uint8Array(len.buffer)));
      return new UdpSocket(fd, new DataView(addr.buffer).getUint16(2, false));
    } catch (e) {
      libc().close(fd);
      throw e;
    }
  }

  send(data: Uint8Array, address: string, port: number): void {
    this.sendRaw(data, sockaddrIn(address, port), `${address}:${port}`);
  }
}

/** Raw ICMPv6 socket on one interface (router advertisements). The kernel fills the checksum. */
export class Icmp6Socket extends FfiDatagramSocket {
  private constructor(fd: number, readonly ifindex: number) {
    super(fd, 2048);
  }

  /** `acceptTypes`: ICMPv6 types delivered to recv() (everything else is filtered in the kernel);
   *  `groups`: multicast groups to join on the interface (e.g. ff02::2 for router solicitations). */
  static open(device: string, acceptTypes: number[], groups: string[] = []): Icmp6Socket {
    const ifindex = ifIndex(device);
    const fd = check("socket", libc().socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMPV6));
    const s = new Icmp6Socket(fd, ifindex);
    try {
      s.setopt(SOL_SOCKET, SO_BINDTODEVICE, cstr(device), `SO_BINDTODEVICE ${device}`);
      // Neighbour discovery packets must carry hop limit 255 (RFC 4861 §6.1.2).
      s.setopt(IPPROTO_IPV6, IPV6_MULTICAST_HOPS, int32(255), "IPV6_MULTICAST_HOPS");
      s.setopt(IPPROTO_IPV6, IPV6_UNICAST_HOPS, int32(255), "IPV6_UNICAST_HOPS");
      const filter = new Uint32Array(8).fill(0xffffffff); // a set bit blocks that type
      for (const t of acceptTypes) filter[t >> 5] &= ~(1 << (t & 31));
      s.setopt(IPPROTO_ICMPV6, ICMP6_FILTER, new Uint8Array(filter.buffer), "ICMP6_FILTER");
      for (const g of groups) {
        const mreq = new Uint8Array(20);
        mreq.set(ipv6Bytes(g), 0);
        new DataView(mreq.buffer).setUint32(16, ifindex, true);
        s.setopt(IPPROTO_IPV6, IPV6_JOIN_GROUP, mreq, `IPV6_JOIN_GROUP ${g}`);
      }
      return s;
    } catch (e) {
      libc().close(fd);
      throw e;
    }
  }

  send(data: Uint8Array, address: string): void {
    this.sendRaw(data, sockaddrIn6(address, 0, this.ifindex), address);
  }
}
