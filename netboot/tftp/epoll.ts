// What the TFTP server's transfer workers (engine.ts) and the load generator's client workers
// (clientpool.ts) share: on the worker side, libc through FFI, one epoll loop's state and its
// eventfd handshake with the main thread (EPOLL_KIT, shipped as source text with each worker's own
// functions, so each may use only the others in its list, its arguments and globals); on the main
// thread, the pool of such workers (EpollWorkerPool).
//
// The handshake: messages only arrive while a worker awaits, so the main thread bumps the worker's
// eventfd after each postMessage; a blocked epoll_wait wakes up and the loop knows how many
// messages to wait for before it blocks again.
import { workerFromSource } from "../../src/worker.ts";

// deno-lint-ignore no-explicit-any
type Any = any;

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
      strerror: { parameters: ["i32"], result: "pointer" },
    } as const,
  ).symbols;
}

/** The Linux constants the workers use (the same on x86_64 and aarch64). */
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

/** One worker's epoll loop: its transfers (of type T) by socket fd, and the message handshake. */
export interface EpollState<T> {
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
  transfers: Map<number, T>;
  recvBuf: Uint8Array;
  recvLen: bigint;
  u64: Uint8Array;
  inbox: Any[];
  received: number;
  announced: number;
  wake: (() => void) | undefined;
  closing: boolean;
}

/** Opens libc, the epoll instance and the eventfd the main thread bumps per message; messages go
 *  to `inbox`. */
function createEpollState<T>(scope: Any, recvBytes: number): EpollState<T> {
  const c = openLibc();
  const k = linuxConstants();
  const x86 = Deno.build.arch === "x86_64";
  const evSize = x86 ? 12 : 16, maxEvents = 64;
  const evOne = new Uint8Array(16);
  const events = new Uint8Array(evSize * maxEvents);
  const recvBuf = new Uint8Array(recvBytes);
  const w: EpollState<T> = {
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
    recvBuf,
    // usize parameters are passed as BigInt, computed once: a plain number is accepted too but
    // takes Deno's slow FFI path (≈ 220 ns a call against ≈ 30 ns, measured).
    recvLen: BigInt(recvBuf.length),
    u64: new Uint8Array(8),
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
  scope.onmessage = (e: MessageEvent) => {
    w.inbox.push(e.data);
    w.received++;
    w.wake?.();
  };
  return w;
}

function errno(w: EpollState<unknown>): number {
  return w.errnoView.getInt32();
}

function strerror(w: EpollState<unknown>, e: number): string {
  return Deno.UnsafePointerView.getCString(w.c.strerror(e)!);
}

function failCall(w: EpollState<unknown>, call: string): never {
  const e = errno(w);
  throw new Error(`${call}: ${strerror(w, e)} (errno ${e})`);
}

function sockaddr(w: EpollState<unknown>, ip: string, port: number): Uint8Array {
  const sa = new Uint8Array(16);
  const v = new DataView(sa.buffer);
  v.setUint16(0, w.k.AF_INET, true);
  v.setUint16(2, port, false);
  ip.split(".").forEach((o, i) => sa[4 + i] = Number(o));
  return sa;
}

function watch(w: EpollState<unknown>, fd: number): void {
  w.evOneView.setUint32(0, w.k.EPOLLIN, true);
  w.evOneView.setInt32(w.evData, fd, true);
  if (w.c.epoll_ctl(w.epfd, w.k.EPOLL_CTL_ADD, fd, w.evOne) < 0) failCall(w, "epoll_ctl");
}

/** Stops watching a transfer's socket and closes it. */
function unwatchClose(w: EpollState<unknown>, fd: number): void {
  w.c.epoll_ctl(w.epfd, w.k.EPOLL_CTL_DEL, fd, w.evOne);
  w.c.close(fd);
}

function nextMessage(w: EpollState<unknown>): Promise<void> {
  return new Promise<void>((r) => w.wake = r);
}

/** Reads the eventfd: how many messages the main thread has posted since the last read. */
function readAnnounced(w: EpollState<unknown>): boolean {
  if (w.c.read(w.evfd, w.u64, 8n) !== 8) return false;
  w.announced += Number(new DataView(w.u64.buffer).getBigUint64(0, true));
  return true;
}

/** One epoll_wait of at most `waitMs`: each ready socket's transfer to `receive`; true when the
 *  eventfd announced messages (the loop then awaits them). */
function pollOnce<T, W extends EpollState<T>>(
  w: W,
  waitMs: number,
  receive: (w: W, t: T) => void,
): boolean {
  const n = w.c.epoll_wait(w.epfd, w.events, w.maxEvents, Math.max(0, Math.min(waitMs, 60_000)));
  if (n < 0 && errno(w) !== w.k.EINTR) failCall(w, "epoll_wait");
  let announced = false;
  for (let i = 0; i < n; i++) {
    const fd = w.eventsView.getInt32(i * w.evSize + w.evData, true);
    if (fd === w.evfd) {
      if (readAnnounced(w)) announced = true;
      continue;
    }
    const t = w.transfers.get(fd);
    if (t) receive(w, t);
  }
  return announced;
}

/** Waits for every message the eventfd announced. */
async function awaitAnnounced(w: EpollState<unknown>): Promise<void> {
  while (w.received < w.announced) await nextMessage(w);
}

/** What a worker's own functions do inside the shared loop. */
export interface LoopHooks<T, W extends EpollState<T>> {
  /** A "start" message: open the transfer's socket, watch it, send its first packet. */
  start(w: W, m: Any): void;
  /** When the next timer is due (Infinity: none). */
  deadline(w: W): number;
  /** Reads what the transfer's socket holds. */
  receive(w: W, t: T): void;
  /** Resends or gives up what is overdue at `now`. */
  timers(w: W, now: number): void;
  /** Ends a transfer still running when the worker closes. */
  abandon(w: W, t: T): void;
  /** A "cancel" message for transfer `id` (EpollWorkerPool.start's cancel): end it, or answer
   *  "kept"; nothing when it has ended already (its "end" is on its way). */
  cancel?(w: W, id: number): void;
}

/** The worker's loop: messages, then one epoll_wait until the next timer, then the timers; on a
 *  "close" message the running transfers are abandoned and the descriptors closed. */
async function runEpollLoop<T, W extends EpollState<T>>(w: W, h: LoopHooks<T, W>): Promise<void> {
  while (!w.closing) {
    for (const m of w.inbox.splice(0)) {
      if (m.type === "start") h.start(w, m);
      else if (m.type === "cancel") h.cancel?.(w, m.id);
      else if (m.type === "close") w.closing = true;
    }
    if (w.closing) break;
    if (w.transfers.size === 0) {
      if (w.inbox.length === 0) await nextMessage(w);
      continue;
    }
    const announced = pollOnce(w, Math.ceil(h.deadline(w) - performance.now()), h.receive);
    h.timers(w, performance.now());
    if (announced) await awaitAnnounced(w);
  }
  for (const t of [...w.transfers.values()]) h.abandon(w, t);
  w.c.close(w.evfd);
  w.c.close(w.epfd);
  w.scope.postMessage({ type: "closed" });
}

/** Runs the loop and tells the main thread the worker is ready (with its eventfd), or why it died. */
function startEpollWorker<T, W extends EpollState<T>>(w: W, h: LoopHooks<T, W>): void {
  runEpollLoop(w, h).catch((e) =>
    w.scope.postMessage({ type: "fatal", error: String(e?.stack ?? e) })
  );
  w.scope.postMessage({ type: "ready", eventfd: w.evfd });
}

/** The functions every epoll worker ships with its own. */
export const EPOLL_KIT = [
  openLibc,
  linuxConstants,
  createEpollState,
  errno,
  strerror,
  failCall,
  sockaddr,
  watch,
  unwatchClose,
  nextMessage,
  readAnnounced,
  pollOnce,
  awaitAnnounced,
  runEpollLoop,
  startEpollWorker,
];

/** A worker's module text: the kit, its own functions, then a call of `main` by its own name (a
 *  bundler may rename a top-level function, but then renames it in the shipped text too). */
export function epollWorkerSource(own: ((...a: Any[]) => unknown)[], main: () => void): string {
  return [...EPOLL_KIT, ...own, main].map(String).join("\n") + `\n${main.name}();\n`;
}

// Exported for the workers' own functions to call (type-checked here; shipped as text).
export {
  createEpollState,
  errno,
  failCall,
  sockaddr,
  startEpollWorker,
  strerror,
  unwatchClose,
  watch,
};

interface Slot {
  worker: Worker;
  eventfd: number;
  active: number;
}

/** What a pool makes of a worker's messages. */
export interface PoolCodec<End> {
  /** Names the workers in errors ("transfer worker"). */
  what: string;
  /** A worker's "end" message as the transfer's result, or the Error it rejects with. */
  settle(m: Any): End | Error;
  /** A transfer that no worker can run or whose worker died. */
  lost(reason: string): End | Error;
}

interface Pending<End> {
  slot: Slot;
  settle: (r: End | Error) => void;
  /** The worker's "note" messages about the request (what they say is the worker's). */
  note?: (m: Any) => void;
  /** A cancel under way: told whether the request ended (true) or was kept (false). */
  cancelled?: (ended: boolean) => void;
}

/** A request posted to a worker: its end, and a cancel that asks the worker to end it. */
export interface Started<End> {
  done: Promise<End>;
  /** Resolves true once the request has ended (cancelled, or ended meanwhile), false when the
   *  worker kept it (its hook said so). */
  cancel(): Promise<boolean>;
}

/** A fixed set of epoll workers: run() posts one request to the least busy and bumps its eventfd;
 *  each request gets one "end" message back. */
export class EpollWorkerPool<End> {
  #slots: Slot[] = [];
  #pending = new Map<number, Pending<End>>();
  #nextId = 1;
  #lib = Deno.dlopen(
    "libc.so.6",
    { write: { parameters: ["i32", "buffer", "usize"], result: "isize" } } as const,
  );
  #one = new Uint8Array(new BigUint64Array([1n]).buffer);

  private constructor(private source: string, private codec: PoolCodec<End>) {}

  static async create<End>(
    source: string,
    workers: number,
    codec: PoolCodec<End>,
  ): Promise<EpollWorkerPool<End>> {
    const pool = new EpollWorkerPool(source, codec);
    try {
      await Promise.all(Array.from({ length: Math.max(1, workers) }, () => pool.#spawn()));
    } catch (e) {
      await pool.close();
      throw e;
    }
    return pool;
  }

  #spawn(): Promise<void> {
    const worker = workerFromSource(this.source);
    const ready = Promise.withResolvers<void>();
    const slot: Slot = { worker, eventfd: -1, active: 0 };
    worker.onmessage = (e: MessageEvent) => {
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
        p.settle(this.codec.settle(m));
        p.cancelled?.(true);
      } else if (m.type === "note") {
        this.#pending.get(m.id)?.note?.(m);
      } else if (m.type === "kept") {
        const p = this.#pending.get(m.id);
        p?.cancelled?.(false);
        if (p) p.cancelled = undefined;
      } else if (m.type === "fatal") {
        // A broken worker fails its transfers; the others keep serving.
        const reason = `${this.codec.what} failed: ${m.error}`;
        this.#slots = this.#slots.filter((s) => s !== slot);
        for (const [id, p] of this.#pending) {
          if (p.slot !== slot) continue;
          this.#pending.delete(id);
          p.settle(this.codec.lost(reason));
          p.cancelled?.(true);
        }
        worker.terminate();
        ready.reject(new Error(reason));
      }
    };
    worker.onerror = (e) => {
      e.preventDefault();
      ready.reject(new Error(`${this.codec.what} failed: ${e.message}`));
    };
    return ready.promise;
  }

  /** Requests posted and not ended yet. */
  get active(): number {
    return this.#pending.size;
  }

  run(req: object): Promise<End> {
    return this.start(req).done;
  }

  /** Posts `req` to the least busy worker; `note` gets the worker's notes about it. */
  start(req: object, note?: (m: Any) => void): Started<End> {
    const slot = this.#slots.reduce((a, b) => (b.active < a.active ? b : a), this.#slots[0]);
    const done = Promise.withResolvers<End>();
    const settle = (r: End | Error) => r instanceof Error ? done.reject(r) : done.resolve(r);
    if (!slot) {
      settle(this.codec.lost(`no ${this.codec.what}`));
      return { done: done.promise, cancel: () => Promise.resolve(true) };
    }
    const id = this.#nextId++;
    const pending: Pending<End> = { slot, settle, note };
    this.#pending.set(id, pending);
    slot.active++;
    slot.worker.postMessage({ type: "start", id, ...req });
    this.#lib.symbols.write(slot.eventfd, this.#one, 8n);
    const cancel = () => {
      if (this.#pending.get(id) !== pending) return Promise.resolve(true);
      const told = Promise.withResolvers<boolean>();
      pending.cancelled = told.resolve;
      slot.worker.postMessage({ type: "cancel", id });
      this.#lib.symbols.write(slot.eventfd, this.#one, 8n);
      return told.promise;
    };
    return { done: done.promise, cancel };
  }

  /** Stops the workers; what still runs ends as each worker's loop says when it closes. */
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
