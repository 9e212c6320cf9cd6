// TFTP read transfers for a load generator, in worker threads on libc sockets: the client side of
// engine.ts. The boot-storm generator (netboot/storm.ts) runs 1,000 simulated machines in one
// process; with node:dgram (client.ts: a 64 KiB buffer allocated per datagram, one event-loop hop
// per packet, next to 1,000 HTTP downloads on the same thread) its ACKs left seconds late while the
// server answered in 1.6 ms. Here each worker drives its transfers' sockets through one blocking
// epoll loop (synchronous libc calls through FFI); the main thread posts a request and bumps the
// worker's eventfd, and gets one message back per transfer: its size, or why it failed.
//
// The worker's functions are shipped as source text (src/worker.ts).
import {
  createEpollState,
  type EpollState,
  EpollWorkerPool,
  epollWorkerSource,
  errno,
  sockaddr,
  startEpollWorker,
  unwatchClose,
  watch,
} from "./epoll.ts";
import { TftpError } from "./client.ts";

export interface PooledGet {
  host: string;
  port: number;
  file: string;
  blksize?: number;
  /** Ask for the size (tsize 0); the transfer fails if the bytes received differ from it. */
  tsize?: boolean;
  /** Wait this long for a packet before resending the last one (default 1000 ms). */
  timeoutMs?: number;
  /** Resends before giving up (default 5). */
  retries?: number;
  /** The address to send from (default: the kernel's choice by route). A simulated machine
   *  sends from its own: the server holds each address to its share of transfers. */
  localAddress?: string;
}

export interface PooledResult {
  /** Payload bytes received (the data is counted, not kept). */
  bytes: number;
  /** Packets resent after a timeout. */
  retransmits: number;
}

// deno-lint-ignore no-explicit-any
type Any = any;

// The worker: top-level functions shipped together as source text (CLIENT_FUNCTIONS), sharing
// one ClientState record, as engine.ts's transfer workers do.

/** One read transfer in the worker. */
interface ClientTransfer {
  id: number;
  fd: number;
  file: string;
  addr: Uint8Array;
  /** The port the RRQ went to (69). */
  port: number;
  /** The server's address as a u32 (network order as read), and its TID port once known. */
  host: number;
  peerPort: number;
  blksize: number;
  tsize: number;
  expected: number;
  bytes: number;
  last: Uint8Array;
  timeoutMs: number;
  retries: number;
  tries: number;
  retransmits: number;
  deadline: number;
}

/** A client worker's state: the epoll loop's (epoll.ts) and the sender of each datagram. */
interface ClientState extends EpollState<ClientTransfer> {
  rv: DataView;
  from: Uint8Array;
  fromView: DataView;
  fromLen: Uint32Array;
  fromLenBytes: Uint8Array;
  enc: TextEncoder;
  dec: TextDecoder;
}

function createClientState(scope: Any): ClientState {
  const w = createEpollState<ClientTransfer>(scope, 65536);
  const from = new Uint8Array(16), fromLen = new Uint32Array(1);
  // The same record, not a copy: the message handler of createEpollState updates it.
  return Object.assign(w, {
    rv: new DataView(w.recvBuf.buffer),
    from,
    fromView: new DataView(from.buffer),
    fromLen,
    fromLenBytes: new Uint8Array(fromLen.buffer),
    enc: new TextEncoder(),
    dec: new TextDecoder(),
  });
}

function sendTo(g: ClientState, t: ClientTransfer, pkt: Uint8Array, port: number): void {
  new DataView(t.addr.buffer).setUint16(2, port, false);
  g.c.sendto(t.fd, pkt, BigInt(pkt.length), 0, t.addr, 16);
}

function sendLast(g: ClientState, t: ClientTransfer): void {
  sendTo(g, t, t.last, t.peerPort || t.port);
}

function ackBlock(g: ClientState, t: ClientTransfer, block: number): void {
  t.last = new Uint8Array([0, 4, (block >> 8) & 255, block & 255]);
  sendLast(g, t);
}

function endTransfer(g: ClientState, t: ClientTransfer, error?: string, code?: number): void {
  g.transfers.delete(t.fd);
  unwatchClose(g, t.fd);
  g.scope.postMessage({
    type: "end",
    id: t.id,
    bytes: t.bytes,
    retransmits: t.retransmits,
    error,
    code,
  });
}

/** RRQ: opcode 1, file, "octet", options. */
function readRequest(g: ClientState, m: Any): Uint8Array {
  const parts = [m.file, "octet"];
  if (m.blksize) parts.push("blksize", String(m.blksize));
  if (m.tsize) parts.push("tsize", "0");
  const body = g.enc.encode(parts.map((p) => p + "\0").join(""));
  const rrq = new Uint8Array(2 + body.length);
  rrq[1] = 1;
  rrq.set(body, 2);
  return rrq;
}

function startTransfer(g: ClientState, m: Any): void {
  const k = g.k;
  const fd = g.c.socket(k.AF_INET, k.SOCK_DGRAM | k.NONBLOCK | k.CLOEXEC, 0);
  const fail = (call: string) => {
    const e = errno(g);
    if (fd >= 0) g.c.close(fd);
    g.scope.postMessage({
      type: "end",
      id: m.id,
      bytes: 0,
      retransmits: 0,
      error: `${call}: ${e}`,
    });
  };
  if (fd < 0) return fail("socket");
  if (m.localAddress && g.c.bind(fd, sockaddr(g, m.localAddress, 0), 16) < 0) return fail("bind");
  const rrq = readRequest(g, m);
  const addr = sockaddr(g, m.host, m.port);
  const t: ClientTransfer = {
    id: m.id,
    fd,
    file: m.file,
    addr,
    port: m.port,
    host: new DataView(addr.buffer).getUint32(4),
    peerPort: 0,
    blksize: 512,
    tsize: -1,
    expected: 1,
    bytes: 0,
    last: rrq,
    timeoutMs: m.timeoutMs ?? 1000,
    retries: m.retries ?? 5,
    tries: 0,
    retransmits: 0,
    deadline: performance.now() + (m.timeoutMs ?? 1000),
  };
  g.transfers.set(fd, t);
  watch(g, fd);
  sendTo(g, t, rrq, m.port);
}

/** OACK: the options the server took; acknowledged as block 0. */
function onOack(g: ClientState, t: ClientTransfer, n: number): void {
  const fields = g.dec.decode(g.recvBuf.subarray(2, n)).split("\0");
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const key = fields[i].toLowerCase(), v = Number(fields[i + 1]);
    if (key === "blksize") t.blksize = v;
    if (key === "tsize") t.tsize = v;
  }
  ackBlock(g, t, 0);
}

function onData(g: ClientState, t: ClientTransfer, n: number): void {
  const block = g.rv.getUint16(2);
  if (block !== (t.expected & 0xffff)) {
    if (block === ((t.expected - 1) & 0xffff)) sendLast(g, t); // the server missed our last ACK
    return;
  }
  t.bytes += n - 4;
  t.expected++;
  ackBlock(g, t, block);
  if (n - 4 < t.blksize) {
    if (t.tsize >= 0 && t.tsize !== t.bytes) {
      return endTransfer(g, t, `${t.file}: ${t.bytes} bytes received, tsize ${t.tsize}`);
    }
    endTransfer(g, t);
  }
}

function onPacket(g: ClientState, t: ClientTransfer, n: number, port: number): void {
  if (t.peerPort && port !== t.peerPort) {
    // Another TID (a duplicate transfer started by our resent RRQ): tell it to stop.
    const err = new Uint8Array([0, 5, 0, 5, ...g.enc.encode("unknown transfer ID"), 0]);
    sendTo(g, t, err, port);
    return;
  }
  if (n < 4) return;
  const op = g.rv.getUint16(0);
  t.peerPort ||= port;
  t.tries = 0;
  t.deadline = performance.now() + t.timeoutMs;
  if (op === 5) {
    const msg = g.dec.decode(g.recvBuf.subarray(4, n)).split("\0")[0];
    return endTransfer(g, t, `${t.file}: ${msg}`, g.rv.getUint16(2));
  }
  if (op === 6 && t.expected === 1) return onOack(g, t, n);
  if (op === 3) onData(g, t, n);
}

function receive(g: ClientState, t: ClientTransfer): void {
  for (;;) {
    g.fromLen[0] = 16;
    const n = g.c.recvfrom(t.fd, g.recvBuf, g.recvLen, 0, g.from, g.fromLenBytes);
    if (n < 0) return; // EAGAIN: drained (a transient ICMP error: read again next time)
    if (g.fromView.getUint32(4) !== t.host) continue;
    onPacket(g, t, n, g.fromView.getUint16(2, false));
    if (!g.transfers.has(t.fd)) return;
  }
}

function scanTimers(g: ClientState, now: number): void {
  for (const t of [...g.transfers.values()]) {
    if (now < t.deadline) continue;
    if (++t.tries > t.retries) {
      endTransfer(g, t, `timeout fetching ${t.file}`);
      continue;
    }
    t.retransmits++;
    t.deadline = now + t.timeoutMs;
    sendLast(g, t);
  }
}

function nextDeadline(g: ClientState): number {
  let d = Infinity;
  for (const t of g.transfers.values()) d = Math.min(d, t.deadline);
  return d;
}

function abandonTransfer(g: ClientState, t: ClientTransfer): void {
  endTransfer(g, t, "generator closing");
}

function clientMain(): void {
  startEpollWorker(createClientState(self), {
    start: startTransfer,
    deadline: nextDeadline,
    receive,
    timers: scanTimers,
    abandon: abandonTransfer,
  });
}

/** The worker's module text: the epoll kit and the functions above. */
const CLIENT_SOURCE = epollWorkerSource([
  createClientState,
  sendTo,
  sendLast,
  ackBlock,
  endTransfer,
  readRequest,
  startTransfer,
  onOack,
  onData,
  onPacket,
  receive,
  scanTimers,
  nextDeadline,
  abandonTransfer,
], clientMain);

/** A fixed set of TFTP client workers; get() runs one read transfer on the least busy. */
export class TftpClientPool {
  private constructor(private pool: EpollWorkerPool<PooledResult>) {}

  static async create(workers: number): Promise<TftpClientPool> {
    return new TftpClientPool(
      await EpollWorkerPool.create<PooledResult>(CLIENT_SOURCE, workers, {
        what: "TFTP client worker",
        settle(m) {
          if (m.error === undefined) return { bytes: m.bytes, retransmits: m.retransmits };
          const e = new TftpError(m.code ?? 0, m.error) as TftpError & { retransmits: number };
          e.retransmits = m.retransmits;
          return e;
        },
        lost: (reason) => new Error(reason),
      }),
    );
  }

  /** Fetches one file; rejects with a TftpError (with `retransmits`) on a server error or timeout. */
  get(o: PooledGet): Promise<PooledResult> {
    return this.pool.run(o);
  }

  /** Stops the workers; transfers still running fail ("generator closing"). */
  close(): Promise<void> {
    return this.pool.close();
  }
}
