// TFTP read transfers for a load generator, in worker threads on libc sockets: the client side of
// engine.ts. The boot-storm generator (netboot/storm.ts) runs 1,000 simulated machines in one
// process; with node:dgram (client.ts: a 64 KiB buffer allocated per datagram, one event-loop hop
// per packet, next to 1,000 HTTP downloads on the same thread) its ACKs left seconds late while the
// server answered in 1.6 ms. Here each worker drives its transfers' sockets through one blocking
// epoll loop (synchronous libc calls through FFI); the main thread posts a request and bumps the
// worker's eventfd, and gets one message back per transfer: its size, or why it failed.
//
// The worker's functions are shipped as source text (src/worker.ts).
import { workerFromSource } from "../../src/worker.ts";
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
}

export interface PooledResult {
  /** Payload bytes received (the data is counted, not kept). */
  bytes: number;
  /** Packets resent after a timeout. */
  retransmits: number;
}

type FromWorker =
  | { type: "ready"; eventfd: number }
  | { type: "end"; id: number; bytes: number; retransmits: number; error?: string; code?: number }
  | { type: "closed" }
  | { type: "fatal"; error: string };

// deno-lint-ignore no-explicit-any
type Any = any;

// The worker: top-level functions shipped together as source text (CLIENT_FUNCTIONS), sharing
// one ClientState record, as engine.ts's transfer workers do.

/** libc through FFI. */
function openClientLibc() {
  return Deno.dlopen(
    "libc.so.6",
    {
      socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
      sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "i32" },
      recvfrom: {
        parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"],
        result: "i32",
      },
      read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      epoll_create1: { parameters: ["i32"], result: "i32" },
      epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
      epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
      eventfd: { parameters: ["u32", "i32"], result: "i32" },
      __errno_location: { parameters: [], result: "pointer" },
    } as const,
  ).symbols;
}

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

type ClientState = ReturnType<typeof createClientState>;

function createClientState(scope: Any) {
  const c = openClientLibc();
  // struct epoll_event: packed on x86_64 (12 bytes), naturally aligned elsewhere (16 bytes).
  const x86 = Deno.build.arch === "x86_64";
  const maxEvents = 64, evSize = x86 ? 12 : 16;
  const events = new Uint8Array(evSize * maxEvents);
  const evOne = new Uint8Array(16);
  const recvBuf = new Uint8Array(65536);
  const from = new Uint8Array(16);
  const fromLen = new Uint32Array(1);
  return {
    scope,
    c,
    errnoView: new Deno.UnsafePointerView(c.__errno_location()!),
    k: { AF_INET: 2, SOCK_DGRAM: 2, NONBLOCK: 0x800, CLOEXEC: 0x80000, EPOLLIN: 1 },
    k2: { ADD: 1, DEL: 2, EINTR: 4 },
    evSize,
    evData: x86 ? 4 : 8,
    maxEvents,
    events,
    eventsView: new DataView(events.buffer),
    evOne,
    evOneView: new DataView(evOne.buffer),
    recvBuf,
    recvLen: BigInt(recvBuf.length),
    rv: new DataView(recvBuf.buffer),
    from,
    fromView: new DataView(from.buffer),
    fromLen,
    fromLenBytes: new Uint8Array(fromLen.buffer),
    u64: new Uint8Array(8),
    enc: new TextEncoder(),
    dec: new TextDecoder(),
    epfd: -1,
    evfd: -1,
    transfers: new Map<number, ClientTransfer>(),
    inbox: [] as Any[],
    received: 0,
    announced: 0,
    closing: false,
    wake: undefined as (() => void) | undefined,
  };
}

function clientFail(g: ClientState, call: string): never {
  throw new Error(`${call}: errno ${g.errnoView.getInt32()}`);
}

function clientWatch(g: ClientState, fd: number, op: number): void {
  g.evOneView.setUint32(0, g.k.EPOLLIN, true);
  g.evOneView.setInt32(g.evData, fd, true);
  if (g.c.epoll_ctl(g.epfd, op, fd, g.evOne) < 0) clientFail(g, "epoll_ctl");
}

function clientSockaddr(g: ClientState, ip: string, port: number): Uint8Array {
  const sa = new Uint8Array(16), v = new DataView(sa.buffer);
  v.setUint16(0, g.k.AF_INET, true);
  v.setUint16(2, port, false);
  ip.split(".").forEach((o, i) => sa[4 + i] = Number(o));
  return sa;
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
  g.c.epoll_ctl(g.epfd, g.k2.DEL, t.fd, g.evOne);
  g.c.close(t.fd);
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
  if (fd < 0) {
    const e = g.errnoView.getInt32();
    g.scope.postMessage({ type: "end", id: m.id, bytes: 0, retransmits: 0, error: `socket: ${e}` });
    return;
  }
  const rrq = readRequest(g, m);
  const addr = clientSockaddr(g, m.host, m.port);
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
  clientWatch(g, fd, g.k2.ADD);
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

function handleInbox(g: ClientState): void {
  while (g.inbox.length) {
    const m = g.inbox.shift();
    if (m.type === "close") g.closing = true;
    else startTransfer(g, m);
  }
}

function nextMessage(g: ClientState): Promise<void> {
  return new Promise<void>((r) => g.wake = r);
}

/** One epoll_wait round: packets to their transfers; true when the eventfd announced messages. */
function pollOnce(g: ClientState): boolean {
  const wait = Math.max(0, Math.ceil(nextDeadline(g) - performance.now()));
  const n = g.c.epoll_wait(g.epfd, g.events, g.maxEvents, Math.min(wait, 60_000));
  if (n < 0 && g.errnoView.getInt32() !== g.k2.EINTR) clientFail(g, "epoll_wait");
  let announced = false;
  for (let i = 0; i < n; i++) {
    const fd = g.eventsView.getInt32(i * g.evSize + g.evData, true);
    if (fd === g.evfd) {
      if (g.c.read(g.evfd, g.u64, 8n) === 8) {
        g.announced += Number(new DataView(g.u64.buffer).getBigUint64(0, true));
        announced = true;
      }
      continue;
    }
    const t = g.transfers.get(fd);
    if (t) receive(g, t);
  }
  scanTimers(g, performance.now());
  return announced;
}

async function clientLoop(g: ClientState): Promise<void> {
  while (!g.closing) {
    handleInbox(g);
    if (g.closing) break;
    if (g.transfers.size === 0) {
      if (g.inbox.length === 0) await nextMessage(g);
      continue;
    }
    const announced = pollOnce(g);
    while (announced && g.received < g.announced) await nextMessage(g);
  }
  for (const t of [...g.transfers.values()]) endTransfer(g, t, "generator closing");
  g.c.close(g.evfd);
  g.c.close(g.epfd);
  g.scope.postMessage({ type: "closed" });
}

function clientMain(): void {
  const scope = self as Any;
  const g = createClientState(scope);
  g.epfd = g.c.epoll_create1(g.k.CLOEXEC);
  if (g.epfd < 0) clientFail(g, "epoll_create1");
  g.evfd = g.c.eventfd(0, g.k.NONBLOCK | g.k.CLOEXEC);
  if (g.evfd < 0) clientFail(g, "eventfd");
  clientWatch(g, g.evfd, g.k2.ADD);
  scope.onmessage = (e: MessageEvent) => {
    g.inbox.push(e.data);
    g.received++;
    g.wake?.();
  };
  clientLoop(g).catch((e) => scope.postMessage({ type: "fatal", error: String(e?.stack ?? e) }));
  scope.postMessage({ type: "ready", eventfd: g.evfd });
}

const CLIENT_FUNCTIONS = [
  openClientLibc,
  createClientState,
  clientFail,
  clientWatch,
  clientSockaddr,
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
  handleInbox,
  nextMessage,
  pollOnce,
  clientLoop,
  clientMain,
];
/** The worker's module text. Calls clientMain by its own name: a bundler may rename a top-level
 *  function, but then renames it in the shipped text too. */
const CLIENT_SOURCE = CLIENT_FUNCTIONS.map(String).join("\n") + `\n${clientMain.name}();\n`;

interface Slot {
  worker: Worker;
  eventfd: number;
  active: number;
}

/** A fixed set of TFTP client workers; get() runs one read transfer on the least busy. */
export class TftpClientPool {
  #slots: Slot[] = [];
  #pending = new Map<number, {
    slot: Slot;
    resolve: (r: PooledResult) => void;
    reject: (e: Error) => void;
  }>();
  #nextId = 1;
  #lib = Deno.dlopen(
    "libc.so.6",
    {
      write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
    } as const,
  );
  #one = new Uint8Array(new BigUint64Array([1n]).buffer);

  private constructor() {}

  static async create(workers: number): Promise<TftpClientPool> {
    const pool = new TftpClientPool();
    try {
      await Promise.all(Array.from({ length: Math.max(1, workers) }, () => pool.#spawn()));
    } catch (e) {
      await pool.close();
      throw e;
    }
    return pool;
  }

  #spawn(): Promise<void> {
    const worker = workerFromSource(CLIENT_SOURCE);
    const ready = Promise.withResolvers<void>();
    const slot: Slot = { worker, eventfd: -1, active: 0 };
    worker.onmessage = (e: MessageEvent<FromWorker>) => {
      const m = e.data;
      if (m.type === "ready") {
        slot.eventfd = m.eventfd;
        this.#slots.push(slot);
        ready.resolve();
      } else if (m.type === "end") {
        const p = this.#pending.get(m.id);
        if (!p) return;
        this.#pending.delete(m.id);
        slot.active--;
        if (m.error === undefined) p.resolve({ bytes: m.bytes, retransmits: m.retransmits });
        else {
          const e = new TftpError(m.code ?? 0, m.error) as TftpError & { retransmits: number };
          e.retransmits = m.retransmits;
          p.reject(e);
        }
      } else if (m.type === "fatal") {
        this.#slots = this.#slots.filter((s) => s !== slot);
        for (const [id, p] of this.#pending) {
          if (p.slot !== slot) continue;
          this.#pending.delete(id);
          p.reject(new Error(`TFTP client worker failed: ${m.error}`));
        }
        worker.terminate();
        ready.reject(new Error(`TFTP client worker failed: ${m.error}`));
      }
    };
    worker.onerror = (e) => {
      e.preventDefault();
      ready.reject(new Error(`TFTP client worker failed: ${e.message}`));
    };
    return ready.promise;
  }

  /** Fetches one file; rejects with a TftpError (with `retransmits`) on a server error or timeout. */
  get(o: PooledGet): Promise<PooledResult> {
    const slot = this.#slots.reduce((a, b) => (b.active < a.active ? b : a), this.#slots[0]);
    if (!slot) return Promise.reject(new Error("no TFTP client worker"));
    const id = this.#nextId++;
    const done = Promise.withResolvers<PooledResult>();
    this.#pending.set(id, { slot, resolve: done.resolve, reject: done.reject });
    slot.active++;
    slot.worker.postMessage({ type: "start", id, ...o });
    this.#lib.symbols.write(slot.eventfd, this.#one, 8n);
    return done.promise;
  }

  /** Stops the workers; transfers still running fail ("generator closing"). */
  async close(): Promise<void> {
    await Promise.all(this.#slots.map((slot) => {
      const closed = Promise.withResolvers<void>();
      const prev = slot.worker.onmessage!;
      slot.worker.onmessage = (e: MessageEvent) => {
        if (e.data?.type === "closed") closed.resolve();
        else prev.call(slot.worker, e);
      };
      slot.worker.postMessage({ type: "close" });
      this.#lib.symbols.write(slot.eventfd, this.#one, 8n);
      const timer = setTimeout(closed.resolve, 2000);
      return closed.promise.finally(() => {
        clearTimeout(timer);
        slot.worker.terminate();
      });
    }));
    this.#slots = [];
    this.#lib.close();
  }
}
