// The TFTP data path: read transfers run in worker threads that drive their own epoll loop through
// synchronous libc calls (Deno FFI). Why: a stop-and-wait transfer is one round trip per block, and
// a round trip through Deno's async UDP costs ≈ 43 µs against ≈ 10 µs in C (deno-toolchain.md §8);
// a blocking epoll_wait/recv/send loop has no event-loop hop per packet. The main thread keeps port
// 69, the path policy and the events; it hands each accepted transfer (bytes + negotiated options)
// to the least busy worker and gets one "end" message back.
//
// The worker body is one self-contained function started by workerFromSource (src/worker.ts).
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

/** Runs inside the worker. Must not reference anything outside its own body. */
function workerMain(): void {
  const scope = self as Any;
  const x86 = Deno.build.arch === "x86_64";
  const lib = Deno.dlopen(
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
  );
  const c = lib.symbols;
  // usize parameters are passed as BigInt, computed once: a plain number is accepted too but
  // takes Deno's slow FFI path (≈ 220 ns a call against ≈ 30 ns, measured).
  const errnoView = new Deno.UnsafePointerView(c.__errno_location()!);
  const errno = () => errnoView.getInt32();
  const strerror = (e: number) => Deno.UnsafePointerView.getCString(c.strerror(e)!);
  const AF_INET = 2, SOCK_DGRAM = 2, NONBLOCK = 0x800, CLOEXEC = 0x80000;
  const EAGAIN = 11, EINTR = 4, EPOLLIN = 1, EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2;
  // struct epoll_event is packed on x86_64 (12 bytes), naturally aligned elsewhere (16 bytes).
  const EV_SIZE = x86 ? 12 : 16, EV_DATA = x86 ? 4 : 8, MAX_EVENTS = 64;

  const sockaddr = (ip: string, port: number) => {
    const sa = new Uint8Array(16);
    const v = new DataView(sa.buffer);
    v.setUint16(0, AF_INET, true);
    v.setUint16(2, port, false);
    ip.split(".").forEach((o, i) => sa[4 + i] = Number(o));
    return sa;
  };
  const fail = (call: string) => {
    const e = errno();
    throw new Error(`${call}: ${strerror(e)} (errno ${e})`);
  };
  const epfd = c.epoll_create1(CLOEXEC);
  if (epfd < 0) fail("epoll_create1");
  const evfd = c.eventfd(0, NONBLOCK | CLOEXEC);
  if (evfd < 0) fail("eventfd");
  const evOne = new Uint8Array(16);
  const evOneView = new DataView(evOne.buffer);
  const watch = (fd: number) => {
    evOneView.setUint32(0, EPOLLIN, true);
    evOneView.setInt32(EV_DATA, fd, true);
    if (c.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, evOne) < 0) fail("epoll_ctl");
  };
  watch(evfd);

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
  const transfers = new Map<number, Transfer>();
  const sendBuf = new Uint8Array(4 + 65464);
  const recvBuf = new Uint8Array(1500);
  const RECV_LEN = BigInt(recvBuf.length);
  const u64 = new Uint8Array(8);
  let nextScan = Infinity;

  const end = (t: Transfer, outcome: string, extra: Record<string, unknown> = {}) => {
    t.ended = true;
    c.epoll_ctl(epfd, EPOLL_CTL_DEL, t.fd, evOne);
    c.close(t.fd);
    transfers.delete(t.fd);
    const acked = t.base === 0 ? 0 : Math.min((t.base - 1) * t.blksize, t.data.length);
    scope.postMessage({
      type: "end",
      id: t.id,
      outcome,
      bytes: acked,
      ms: Math.round(performance.now() - t.started),
      resent: t.resent,
      ...extra,
    });
  };
  const arm = (t: Transfer) => {
    t.deadline = performance.now() + t.timeoutMs;
    if (t.deadline < nextScan) nextScan = t.deadline;
  };
  /** Sends one packet; false when the transfer ended (client unreachable). */
  const sendPacket = (t: Transfer, buf: Uint8Array, len: bigint): boolean => {
    for (;;) {
      if (c.send(t.fd, buf, len, 0) >= 0) return true;
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return true; // socket buffer full: the timeout resends
      clientGone(t, "send", e);
      return false;
    }
  };
  /** Sends the window starting at t.base (RFC 7440: the whole window, then wait for its ACK). */
  const sendWindow = (t: Transfer) => {
    arm(t);
    if (t.base === 0) {
      sendBuf.set(t.oack!);
      sendPacket(t, sendBuf, BigInt(t.oack!.length));
      return;
    }
    const last = Math.min(t.base + t.windowsize - 1, t.blocks);
    for (let b = t.base; b <= last; b++) {
      const from = (b - 1) * t.blksize;
      const to = Math.min(from + t.blksize, t.data.length);
      sendBuf[0] = 0, sendBuf[1] = 3, sendBuf[2] = (b >> 8) & 0xff, sendBuf[3] = b & 0xff;
      sendBuf.set(t.data.subarray(from, to), 4);
      const len = to - from === t.blksize ? t.fullLen : BigInt(4 + to - from);
      if (!sendPacket(t, sendBuf, len) || t.ended) return;
    }
  };
  const onPacket = (t: Transfer, n: number) => {
    const op = n >= 2 ? (recvBuf[0] << 8) | recvBuf[1] : -1;
    if (op === 5 && n >= 4) { // ERROR: the client gives up (UEFI's tsize probe sends code 8)
      const stop = recvBuf.indexOf(0, 4);
      const msg = String.fromCharCode(...recvBuf.subarray(4, stop < 0 ? n : stop));
      end(t, "aborted", { errorCode: (recvBuf[2] << 8) | recvBuf[3], reason: msg });
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
        end(t, "done");
        return;
      }
    }
    t.tries = 0;
    sendWindow(t);
  };
  /** One datagram per readiness event: epoll is level-triggered and will report the socket again
   *  if more wait, and stop-and-wait never has more, so no extra recv ending in EAGAIN. */
  const receive = (t: Transfer) => {
    const n = c.recv(t.fd, recvBuf, RECV_LEN, 0);
    if (n >= 0) return onPacket(t, n);
    const e = errno();
    if (e !== EAGAIN && e !== EINTR) clientGone(t, "recv", e);
  };
  /** A socket error (ICMP port unreachable: the client exited). Linux reports it before the
   *  datagrams already queued, and the client's final ACK may be among them: read those first. */
  const clientGone = (t: Transfer, call: string, e: number) => {
    for (let n; !t.ended && (n = c.recv(t.fd, recvBuf, RECV_LEN, 0)) >= 0;) {
      onPacket(t, n);
    }
    if (!t.ended) end(t, "failed", { reason: `${call}: ${strerror(e)}` });
  };
  const scanTimers = (now: number) => {
    nextScan = Infinity;
    for (const t of [...transfers.values()]) {
      if (t.deadline <= now) {
        if (++t.tries > t.retries) {
          end(t, "failed", { reason: `no ACK after ${t.retries} retransmissions` });
          continue;
        }
        t.resent += t.base === 0 ? 1 : Math.min(t.windowsize, t.blocks - t.base + 1);
        sendWindow(t);
      }
      if (t.deadline < nextScan) nextScan = t.deadline;
    }
  };
  const start = (m: Any) => {
    const fd = c.socket(AF_INET, SOCK_DGRAM | NONBLOCK | CLOEXEC, 0);
    const started = performance.now();
    const refuse = (call: string) => {
      const reason = `${call}: ${strerror(errno())}`;
      if (fd >= 0) c.close(fd);
      scope.postMessage({
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
    if (c.bind(fd, sockaddr(m.bindIp, 0), 16) < 0) return refuse("bind");
    // Connected: the kernel drops datagrams from any other TID, and reports ICMP unreachable.
    if (c.connect(fd, sockaddr(m.ip, m.port), 16) < 0) return refuse("connect");
    watch(fd);
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
    transfers.set(fd, t);
    sendWindow(t);
  };

  // Messages only arrive while this worker awaits; the main thread bumps the eventfd after each
  // postMessage so a blocked epoll_wait wakes up and the loop knows how many to wait for.
  const inbox: Any[] = [];
  let received = 0, announced = 0;
  let wake: (() => void) | undefined;
  scope.onmessage = (e: MessageEvent) => {
    inbox.push(e.data);
    received++;
    wake?.();
  };
  const messages = () => new Promise<void>((r) => wake = r);
  let closing = false;
  const handleInbox = () => {
    for (const m of inbox.splice(0)) {
      if (m.type === "start") start(m);
      else if (m.type === "close") closing = true;
    }
  };
  const events = new Uint8Array(EV_SIZE * MAX_EVENTS);
  const eventsView = new DataView(events.buffer);

  const loop = async () => {
    while (!closing) {
      handleInbox();
      if (closing) break;
      if (transfers.size === 0) {
        if (inbox.length === 0) await messages();
        continue;
      }
      const wait = Math.max(0, Math.ceil(nextScan - performance.now()));
      const n = c.epoll_wait(epfd, events, MAX_EVENTS, Math.min(wait, 60_000));
      if (n < 0 && errno() !== EINTR) fail("epoll_wait");
      let needMessages = false;
      for (let i = 0; i < n; i++) {
        const fd = eventsView.getInt32(i * EV_SIZE + EV_DATA, true);
        if (fd === evfd) {
          if (c.read(evfd, u64, 8n) === 8) {
            announced += Number(new DataView(u64.buffer).getBigUint64(0, true));
            needMessages = true;
          }
          continue;
        }
        const t = transfers.get(fd);
        if (t) receive(t);
      }
      const now = performance.now();
      if (now >= nextScan) scanTimers(now);
      while (needMessages && received < announced) await messages();
    }
    for (const t of [...transfers.values()]) end(t, "failed", { reason: "server closing" });
    c.close(evfd);
    c.close(epfd);
    scope.postMessage({ type: "closed" });
  };
  loop().catch((e) => scope.postMessage({ type: "fatal", error: String(e?.stack ?? e) }));
  scope.postMessage({ type: "ready", eventfd: evfd });
}

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
    const worker = workerFromSource(workerMain);
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
