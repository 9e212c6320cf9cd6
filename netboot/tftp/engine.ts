// The TFTP data path: read transfers run in worker threads that drive their own epoll loop through
// synchronous libc calls (Deno FFI). Why: a stop-and-wait transfer is one round trip per block, and
// a round trip through Deno's async UDP costs ≈ 43 µs against ≈ 10 µs in C (deno-toolchain.md §8);
// a blocking epoll_wait/recv/send loop has no event-loop hop per packet. The main thread keeps port
// 69, the path policy and the events; it hands each accepted transfer (bytes + negotiated options)
// to the least busy worker and gets one "end" message back.
//
// The worker body is a set of functions shipped as source text to workerFromSource (src/worker.ts).
import { workerFromSource } from "../../src/worker.ts";

export interface TransferRequest {
  /** Client address and port (its TID). */
  ip: string;
  port: number;
  /** Local address the transfer socket binds to (0.0.0.0: the kernel picks by route). */
  bindIp: string;
  data: Uint8Array;
  blksize: number;
  windowsize: number;
  timeoutMs: number;
  /** Retransmissions of one packet before giving up. */
  retries: number;
  /** Encoded OACK to send first (then wait for ACK 0), or undefined to start with DATA 1. */
  oack?: Uint8Array;
}

export interface TransferEnd {
  outcome: "done" | "aborted" | "failed";
  /** Payload bytes the client acknowledged. */
  bytes: number;
  ms: number;
  /** Retransmitted packets (timeouts and rewinds). */
  resent: number;
  reason?: string;
  /** TFTP error code the client sent (aborted). */
  errorCode?: number;
}

type FromWorker =
  | { type: "ready"; eventfd: number }
  | ({ type: "end"; id: number } & TransferEnd)
  | { type: "fatal"; error: string };

// deno-lint-ignore no-explicit-any
type Any = any;

// Everything below up to TransferPool runs inside the worker, not in this module: the functions
// are shipped as their own source text (WORKER_SOURCE), so each may use only the others in
// WORKER_FUNCTIONS, its arguments and globals. Their shared state is one WorkerState record.

/** libc through FFI. */
function openLibc() {
  return Deno.dlopen(
    "libc.so.6",
    {
      socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
      bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
      connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
      // ssize_t results read as i32: exact for our sizes (< 2^31), and no BigInt per packet.
      send: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
      recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
      read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      epoll_create1: { parameters: ["i32"], result: "i32" },
      epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
      epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
      eventfd: { parameters: ["u32", "i32"], result: "i32" },
      __errno_location: { parameters: [], result: "pointer" },
      strerror: { parameters: ["i32"], result: "pointer" },
    } as const,
  ).symbols;
}

/** The Linux constants the worker uses (the same on x86_64 and aarch64). */
function linuxConstants() {
  return {
    AF_INET: 2,
    SOCK_DGRAM: 2,
    NONBLOCK: 0x800,
    CLOEXEC: 0x80000,
    EAGAIN: 11,
    EINTR: 4,
    EPOLLIN: 1,
    EPOLL_CTL_ADD: 1,
    EPOLL_CTL_DEL: 2,
  } as const;
}

interface Transfer {
  id: number;
  fd: number;
  data: Uint8Array;
  blksize: number;
  windowsize: number;
  timeoutMs: number;
  retries: number;
  oack: Uint8Array | null;
  /** Total blocks: the last one is short (possibly empty). */
  blocks: number;
  /** First unacknowledged block; 0 while the OACK waits for ACK 0. */
  base: number;
  deadline: number;
  tries: number;
  resent: number;
  started: number;
  ended: boolean;
  /** Length of a full DATA packet, as the usize send() takes. */
  fullLen: bigint;
}

interface WorkerState {
  scope: Any;
  c: ReturnType<typeof openLibc>;
  k: ReturnType<typeof linuxConstants>;
  errnoView: Deno.UnsafePointerView;
  epfd: number;
  evfd: number;
  /** One struct epoll_event for epoll_ctl. */
  evOne: Uint8Array;
  evOneView: DataView;
  /** struct epoll_event is packed on x86_64 (12 bytes), naturally aligned elsewhere (16 bytes). */
  evSize: number;
  evData: number;
  maxEvents: number;
  events: Uint8Array;
  eventsView: DataView;
  /** Running transfers by socket fd. */
  transfers: Map<number, Transfer>;
  sendBuf: Uint8Array;
  recvBuf: Uint8Array;
  recvLen: bigint;
  u64: Uint8Array;
  /** Earliest deadline of any transfer. */
  nextScan: number;
  inbox: Any[];
  received: number;
  announced: number;
  wake: (() => void) | undefined;
  closing: boolean;
}

/** Opens libc, the epoll instance and the eventfd the main thread bumps per message. */
function createWorkerState(scope: Any): WorkerState {
  const c = openLibc();
  const k = linuxConstants();
  const x86 = Deno.build.arch === "x86_64";
  const evSize = x86 ? 12 : 16, maxEvents = 64;
  const evOne = new Uint8Array(16);
  const events = new Uint8Array(evSize * maxEvents);
  const recvBuf = new Uint8Array(1500);
  const w: WorkerState = {
    scope,
    c,
    k,
    errnoView: new Deno.UnsafePointerView(c.__errno_location()!),
    epfd: -1,
    evfd: -1,
    evOne,
    evOneView: new DataView(evOne.buffer),
    evSize,
    evData: x86 ? 4 : 8,
    maxEvents,
    events,
    eventsView: new DataView(events.buffer),
    transfers: new Map(),
    sendBuf: new Uint8Array(4 + 65464),
    recvBuf,
    // usize parameters are passed as BigInt, computed once: a plain number is accepted too but
    // takes Deno's slow FFI path (≈ 220 ns a call against ≈ 30 ns, measured).
    recvLen: BigInt(recvBuf.length),
    u64: new Uint8Array(8),
    nextScan: Infinity,
    inbox: [],
    received: 0,
    announced: 0,
    wake: undefined,
    closing: false,
  };
  w.epfd = c.epoll_create1(k.CLOEXEC);
  if (w.epfd < 0) failCall(w, "epoll_create1");
  w.evfd = c.eventfd(0, k.NONBLOCK | k.CLOEXEC);
  if (w.evfd < 0) failCall(w, "eventfd");
  watch(w, w.evfd);
  return w;
}

function errno(w: WorkerState): number {
  return w.errnoView.getInt32();
}

function strerror(w: WorkerState, e: number): string {
  return Deno.UnsafePointerView.getCString(w.c.strerror(e)!);
}

function failCall(w: WorkerState, call: string): never {
  const e = errno(w);
  throw new Error(`${call}: ${strerror(w, e)} (errno ${e})`);
}

function sockaddr(w: WorkerState, ip: string, port: number): Uint8Array {
  const sa = new Uint8Array(16);
  const v = new DataView(sa.buffer);
  v.setUint16(0, w.k.AF_INET, true);
  v.setUint16(2, port, false);
  ip.split(".").forEach((o, i) => sa[4 + i] = Number(o));
  return sa;
}

function watch(w: WorkerState, fd: number): void {
  w.evOneView.setUint32(0, w.k.EPOLLIN, true);
  w.evOneView.setInt32(w.evData, fd, true);
  if (w.c.epoll_ctl(w.epfd, w.k.EPOLL_CTL_ADD, fd, w.evOne) < 0) failCall(w, "epoll_ctl");
}

/** Opens the transfer's connected socket and sends its first packet (or reports why not). */
function startTransfer(w: WorkerState, m: Any): void {
  const { c, k } = w;
  const fd = c.socket(k.AF_INET, k.SOCK_DGRAM | k.NONBLOCK | k.CLOEXEC, 0);
  const started = performance.now();
  const refuse = (call: string) => {
    const reason = `${call}: ${strerror(w, errno(w))}`;
    if (fd >= 0) c.close(fd);
    w.scope.postMessage({
      type: "end",
      id: m.id,
      outcome: "failed",
      bytes: 0,
      ms: 0,
      resent: 0,
      reason,
    });
  };
  if (fd < 0) return refuse("socket");
  if (c.bind(fd, sockaddr(w, m.bindIp, 0), 16) < 0) return refuse("bind");
  // Connected: the kernel drops datagrams from any other TID, and reports ICMP unreachable.
  if (c.connect(fd, sockaddr(w, m.ip, m.port), 16) < 0) return refuse("connect");
  watch(w, fd);
  const t: Transfer = {
    id: m.id,
    fd,
    data: m.data,
    blksize: m.blksize,
    windowsize: m.windowsize,
    timeoutMs: m.timeoutMs,
    retries: m.retries,
    oack: m.oack ?? null,
    blocks: Math.floor(m.data.length / m.blksize) + 1,
    base: m.oack ? 0 : 1,
    deadline: 0,
    tries: 0,
    resent: 0,
    started,
    ended: false,
    fullLen: BigInt(4 + m.blksize),
  };
  w.transfers.set(fd, t);
  sendWindow(w, t);
}

function endTransfer(
  w: WorkerState,
  t: Transfer,
  outcome: string,
  extra: Record<string, unknown> = {},
): void {
  t.ended = true;
  w.c.epoll_ctl(w.epfd, w.k.EPOLL_CTL_DEL, t.fd, w.evOne);
  w.c.close(t.fd);
  w.transfers.delete(t.fd);
  const acked = t.base === 0 ? 0 : Math.min((t.base - 1) * t.blksize, t.data.length);
  w.scope.postMessage({
    type: "end",
    id: t.id,
    outcome,
    bytes: acked,
    ms: Math.round(performance.now() - t.started),
    resent: t.resent,
    ...extra,
  });
}

function arm(w: WorkerState, t: Transfer): void {
  t.deadline = performance.now() + t.timeoutMs;
  if (t.deadline < w.nextScan) w.nextScan = t.deadline;
}

/** Sends one packet; false when the transfer ended (client unreachable). */
function sendPacket(w: WorkerState, t: Transfer, buf: Uint8Array, len: bigint): boolean {
  for (;;) {
    if (w.c.send(t.fd, buf, len, 0) >= 0) return true;
    const e = errno(w);
    if (e === w.k.EINTR) continue;
    if (e === w.k.EAGAIN) return true; // socket buffer full: the timeout resends
    clientGone(w, t, "send", e);
    return false;
  }
}

/** Sends the window starting at t.base (RFC 7440: the whole window, then wait for its ACK). */
function sendWindow(w: WorkerState, t: Transfer): void {
  arm(w, t);
  const sendBuf = w.sendBuf;
  if (t.base === 0) {
    sendBuf.set(t.oack!);
    sendPacket(w, t, sendBuf, BigInt(t.oack!.length));
    return;
  }
  const last = Math.min(t.base + t.windowsize - 1, t.blocks);
  for (let b = t.base; b <= last; b++) {
    const from = (b - 1) * t.blksize;
    const to = Math.min(from + t.blksize, t.data.length);
    sendBuf[0] = 0, sendBuf[1] = 3, sendBuf[2] = (b >> 8) & 0xff, sendBuf[3] = b & 0xff;
    sendBuf.set(t.data.subarray(from, to), 4);
    const len = to - from === t.blksize ? t.fullLen : BigInt(4 + to - from);
    if (!sendPacket(w, t, sendBuf, len) || t.ended) return;
  }
}

/** The client's datagram of n bytes in w.recvBuf: an ACK moves the window, an ERROR ends. */
function onPacket(w: WorkerState, t: Transfer, n: number): void {
  const recvBuf = w.recvBuf;
  const op = n >= 2 ? (recvBuf[0] << 8) | recvBuf[1] : -1;
  if (op === 5 && n >= 4) { // ERROR: the client gives up (UEFI's tsize probe sends code 8)
    const stop = recvBuf.indexOf(0, 4);
    const msg = String.fromCharCode(...recvBuf.subarray(4, stop < 0 ? n : stop));
    endTransfer(w, t, "aborted", { errorCode: (recvBuf[2] << 8) | recvBuf[3], reason: msg });
    return;
  }
  if (op !== 4 || n !== 4) return; // not an ACK: ignored, like any stray datagram
  const block = (recvBuf[2] << 8) | recvBuf[3];
  if (t.base === 0) {
    if (block !== 0) return;
    t.base = 1;
  } else {
    // Map the 16-bit block number (it wraps after 65535) onto the blocks in flight.
    const acked = t.base - 1;
    const inFlight = Math.min(t.base + t.windowsize - 1, t.blocks) - acked;
    const ahead = (block - acked) & 0xffff;
    // ahead 0 is a duplicate ACK: never answer it with data (Sorcerer's Apprentice); the
    // timeout covers a genuinely lost window.
    if (ahead === 0 || ahead > inFlight) return;
    if (ahead < inFlight) t.resent += inFlight - ahead; // the client saw a gap: rewind
    t.base = acked + ahead + 1;
    if (t.base > t.blocks) {
      endTransfer(w, t, "done");
      return;
    }
  }
  t.tries = 0;
  sendWindow(w, t);
}

/** One datagram per readiness event: epoll is level-triggered and will report the socket again
 *  if more wait, and stop-and-wait never has more, so no extra recv ending in EAGAIN. */
function receive(w: WorkerState, t: Transfer): void {
  const n = w.c.recv(t.fd, w.recvBuf, w.recvLen, 0);
  if (n >= 0) return onPacket(w, t, n);
  const e = errno(w);
  if (e !== w.k.EAGAIN && e !== w.k.EINTR) clientGone(w, t, "recv", e);
}

/** A socket error (ICMP port unreachable: the client exited). Linux reports it before the
 *  datagrams already queued, and the client's final ACK may be among them: read those first. */
function clientGone(w: WorkerState, t: Transfer, call: string, e: number): void {
  for (let n; !t.ended && (n = w.c.recv(t.fd, w.recvBuf, w.recvLen, 0)) >= 0;) {
    onPacket(w, t, n);
  }
  if (!t.ended) endTransfer(w, t, "failed", { reason: `${call}: ${strerror(w, e)}` });
}

/** Resends the windows whose deadline passed (or gives up on them); recomputes w.nextScan. */
function scanTimers(w: WorkerState, now: number): void {
  w.nextScan = Infinity;
  for (const t of [...w.transfers.values()]) {
    if (t.deadline <= now) {
      if (++t.tries > t.retries) {
        endTransfer(w, t, "failed", { reason: `no ACK after ${t.retries} retransmissions` });
        continue;
      }
      t.resent += t.base === 0 ? 1 : Math.min(t.windowsize, t.blocks - t.base + 1);
      sendWindow(w, t);
    }
    if (t.deadline < w.nextScan) w.nextScan = t.deadline;
  }
}

function handleInbox(w: WorkerState): void {
  for (const m of w.inbox.splice(0)) {
    if (m.type === "start") startTransfer(w, m);
    else if (m.type === "close") w.closing = true;
  }
}

function nextMessage(w: WorkerState): Promise<void> {
  return new Promise<void>((r) => w.wake = r);
}

/** Reads the eventfd: how many messages the main thread has posted since the last read. */
function readAnnounced(w: WorkerState): boolean {
  if (w.c.read(w.evfd, w.u64, 8n) !== 8) return false;
  w.announced += Number(new DataView(w.u64.buffer).getBigUint64(0, true));
  return true;
}

async function runLoop(w: WorkerState): Promise<void> {
  const { c, transfers, events, eventsView, evSize, evData, maxEvents } = w;
  while (!w.closing) {
    handleInbox(w);
    if (w.closing) break;
    if (transfers.size === 0) {
      if (w.inbox.length === 0) await nextMessage(w);
      continue;
    }
    const wait = Math.max(0, Math.ceil(w.nextScan - performance.now()));
    const n = c.epoll_wait(w.epfd, events, maxEvents, Math.min(wait, 60_000));
    if (n < 0 && errno(w) !== w.k.EINTR) failCall(w, "epoll_wait");
    let needMessages = false;
    for (let i = 0; i < n; i++) {
      const fd = eventsView.getInt32(i * evSize + evData, true);
      if (fd === w.evfd) {
        if (readAnnounced(w)) needMessages = true;
        continue;
      }
      const t = transfers.get(fd);
      if (t) receive(w, t);
    }
    const now = performance.now();
    if (now >= w.nextScan) scanTimers(w, now);
    while (needMessages && w.received < w.announced) await nextMessage(w);
  }
  for (const t of [...transfers.values()]) {
    endTransfer(w, t, "failed", { reason: "server closing" });
  }
  c.close(w.evfd);
  c.close(w.epfd);
  w.scope.postMessage({ type: "closed" });
}

function workerMain(): void {
  const scope = self as Any;
  const w = createWorkerState(scope);
  // Messages only arrive while this worker awaits; the main thread bumps the eventfd after each
  // postMessage so a blocked epoll_wait wakes up and the loop knows how many to wait for.
  scope.onmessage = (e: MessageEvent) => {
    w.inbox.push(e.data);
    w.received++;
    w.wake?.();
  };
  runLoop(w).catch((e) => scope.postMessage({ type: "fatal", error: String(e?.stack ?? e) }));
  scope.postMessage({ type: "ready", eventfd: w.evfd });
}

const WORKER_FUNCTIONS = [
  openLibc,
  linuxConstants,
  createWorkerState,
  errno,
  strerror,
  failCall,
  sockaddr,
  watch,
  startTransfer,
  endTransfer,
  arm,
  sendPacket,
  sendWindow,
  onPacket,
  receive,
  clientGone,
  scanTimers,
  handleInbox,
  nextMessage,
  readAnnounced,
  runLoop,
  workerMain,
];
/** The worker's module text. Calls workerMain by its own name: a bundler may rename a top-level
 *  function, but then renames it in the shipped text too. */
const WORKER_SOURCE = WORKER_FUNCTIONS.map(String).join("\n") + `\n${workerMain.name}();\n`;

interface Slot {
  worker: Worker;
  eventfd: number;
  active: number;
}

/** A fixed set of transfer workers. */
export class TransferPool {
  #slots: Slot[] = [];
  #pending = new Map<number, { slot: Slot; resolve: (e: TransferEnd) => void }>();
  #nextId = 1;
  #lib = Deno.dlopen(
    "libc.so.6",
    {
      write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
    } as const,
  );
  #one = new Uint8Array(new BigUint64Array([1n]).buffer);

  private constructor() {}

  static async create(workers: number): Promise<TransferPool> {
    const pool = new TransferPool();
    await Promise.all(Array.from({ length: workers }, () => pool.#spawn()));
    return pool;
  }

  #spawn(): Promise<void> {
    const worker = workerFromSource(WORKER_SOURCE);
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
        const { type: _t, id: _i, ...end } = m;
        p.resolve(end);
      } else if (m.type === "fatal") {
        // A broken worker fails its transfers; the others keep serving.
        this.#slots = this.#slots.filter((s) => s !== slot);
        for (const [id, p] of this.#pending) {
          if (p.slot !== slot) continue;
          this.#pending.delete(id);
          p.resolve({ outcome: "failed", bytes: 0, ms: 0, resent: 0, reason: m.error });
        }
        worker.terminate();
        ready.reject(new Error(`TFTP worker failed: ${m.error}`));
      }
    };
    worker.onerror = (e) => {
      e.preventDefault();
      ready.reject(new Error(`TFTP worker failed: ${e.message}`));
    };
    return ready.promise;
  }

  get active(): number {
    return this.#pending.size;
  }

  run(req: TransferRequest): Promise<TransferEnd> {
    const slot = this.#slots.reduce((a, b) => (b.active < a.active ? b : a), this.#slots[0]);
    if (!slot) {
      return Promise.resolve({
        outcome: "failed",
        bytes: 0,
        ms: 0,
        resent: 0,
        reason: "no transfer worker",
      });
    }
    const id = this.#nextId++;
    const done = Promise.withResolvers<TransferEnd>();
    this.#pending.set(id, { slot, resolve: done.resolve });
    slot.active++;
    slot.worker.postMessage({ type: "start", id, ...req });
    this.#lib.symbols.write(slot.eventfd, this.#one, 8n);
    return done.promise;
  }

  /** Stops the workers; transfers still running end as failed ("server closing"). */
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
      // A worker stuck in a libc call cannot answer; do not wait for it forever.
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
