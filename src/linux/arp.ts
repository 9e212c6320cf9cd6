// Who answers ARP for an address on one interface, asked on the wire (an AF_PACKET socket). The
// kernel's neighbour table cannot say: netroot pins node addresses there as permanent entries
// (src/boot/pins.ts), and the kernel never resolves a pinned address again, whoever holds it.
import { ipv4Bytes } from "../../contract/ipv4.ts";
import { macFromBytes, macToBytes } from "../../contract/mac.ts";
import { check, openLibc } from "./libc.ts";
import { hardwareAddress } from "./netif.ts";
import { ifIndex } from "./udp.ts";

const AF_PACKET = 17, SOCK_DGRAM = 2, SOCK_CLOEXEC = 0o2000000;
const ETH_P_ARP = 0x0806, ARPHRD_ETHER = 1, ETH_P_IP = 0x0800;
const ARPOP_REQUEST = 1, ARPOP_REPLY = 2;
const MSG_DONTWAIT = 0x40;
const SOL_PACKET = 263, PACKET_STATISTICS = 6;
const READS_PER_TURN = 64, MAX_READS = 4096;

let lib: ReturnType<typeof load> | undefined;
function load() {
  return openLibc(
    {
      socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
      bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
      sendto: {
        parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"],
        result: "isize",
      },
      recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
      getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
    } as const,
  ).symbols;
}
const libc = () => (lib ??= load());
const htons = (n: number) => ((n & 0xff) << 8) | (n >> 8);

/** struct sockaddr_ll for ARP on `ifindex`, to `mac` (bytes) when sending. */
function sockaddrLl(ifindex: number, mac?: Uint8Array): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(20);
  const v = new DataView(b.buffer);
  v.setUint16(0, AF_PACKET, true);
  v.setUint16(2, ETH_P_ARP, false);
  v.setInt32(4, ifindex, true);
  if (mac) {
    b[11] = 6;
    b.set(mac, 12);
  }
  return b;
}

/** The MACs that answer an ARP request for `ip` sent from `device` (as `from`, our address
 *  there) within `waitMs`, each once, in the order they answered. */
export async function arpAnswers(
  device: string,
  ip: string,
  from: string,
  waitMs: number,
): Promise<string[]> {
  const ifindex = ifIndex(device);
  const request = new Uint8Array(28);
  const v = new DataView(request.buffer);
  v.setUint16(0, ARPHRD_ETHER);
  v.setUint16(2, ETH_P_IP);
  request[4] = 6;
  request[5] = 4;
  v.setUint16(6, ARPOP_REQUEST);
  request.set(macToBytes(hardwareAddress(device)), 8);
  request.set(ipv4Bytes(from), 14);
  request.set(ipv4Bytes(ip), 24);
  const fd = check("socket", libc().socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ARP)));
  try {
    const here = sockaddrLl(ifindex);
    check("bind", libc().bind(fd, here, here.length), device);
    const to = sockaddrLl(ifindex, new Uint8Array(6).fill(0xff));
    check("sendto", libc().sendto(fd, request, 28n, 0, to, to.length), `ARP ${ip}`);
    const answers = await collectAnswers(
      (buf) => Number(libc().recv(fd, buf, BigInt(buf.length), MSG_DONTWAIT)),
      ip,
      waitMs,
    );
    // A flood faster than the reads fills the socket's buffer: the kernel drops what comes
    // next, the answer that matters maybe among them.
    const dropped = droppedFrames(fd);
    if (dropped) throw new Error(`ARP flood: ${dropped} frames dropped, not read`);
    return answers;
  } finally {
    libc().close(fd);
  }
}

/** The frames the kernel dropped for want of room in the socket's buffer (struct tpacket_stats's
 *  tp_drops), since the socket was made. */
function droppedFrames(fd: number): number {
  const stats = new Uint8Array(8);
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, stats.length, true);
  check("getsockopt", libc().getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, stats, len));
  return new DataView(stats.buffer).getUint32(4, true);
}

/**
 * The MACs of the ARP replies for `ip` that `recv` (a non-blocking read of one frame into the
 * buffer: its length, or < 0 when none is waiting) gives within `waitMs`, each once, in the order
 * they came. Polled: a packet socket has no shutdown() to wake a blocked read, and a few hundred ms
 * of 20 ms polls cost nothing. Every ARP reply on the link comes here: a link flooded with them
 * must not keep the server's thread in this loop (the event loop gets its turn every
 * READS_PER_TURN frames), nor for more than MAX_READS of them. Past MAX_READS there is no answer
 * (an error): the replies not read may hold the one that matters, and "nobody answered" taken from
 * the answers so far let a flood hide a node's own reply to a DECLINE forged with its MAC.
 */
export async function collectAnswers(
  recv: (buf: Uint8Array<ArrayBuffer>) => number,
  ip: string,
  waitMs: number,
): Promise<string[]> {
  const answers: string[] = [];
  const buf = new Uint8Array(64);
  const r = new DataView(buf.buffer);
  const want = ipv4Bytes(ip);
  const started = performance.now(), end = started + waitMs;
  for (let reads = 0; performance.now() < end;) {
    if (reads === MAX_READS) {
      const ms = Math.round(performance.now() - started);
      throw new Error(`ARP flood: ${MAX_READS} frames in ${ms} ms, the rest not read`);
    }
    const n = recv(buf);
    if (n < 0) {
      await new Promise((r) => setTimeout(r, 20));
      continue;
    }
    if (++reads % READS_PER_TURN === 0) await new Promise((r) => setTimeout(r, 0));
    if (n < 28 || r.getUint16(6) !== ARPOP_REPLY || r.getUint16(2) !== ETH_P_IP) continue;
    if (!want.every((b, i) => buf[14 + i] === b)) continue;
    const mac = macFromBytes(buf.subarray(8, 14));
    if (!answers.includes(mac)) answers.push(mac);
  }
  return answers;
}
