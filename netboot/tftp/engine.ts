// The TFTP data path: read transfers run in worker threads that drive their own epoll loop through
// synchronous libc calls (Deno FFI). Why: a stop-and-wait transfer is one round trip per block, and
// a round trip through Deno's async UDP costs ≈ 43 µs against ≈ 10 µs in C (deno-toolchain.md §8);
// a blocking epoll_wait/recv/send loop has no event-loop hop per packet. The main thread keeps port
// 69, the path policy and the events; it hands each accepted transfer (bytes + negotiated options)
// to the least busy worker and gets one "end" message back.
//
// The worker body is a set of functions shipped as source text to workerFromSource (src/worker.ts).
import {
  createEpollState,
  type EpollState,
  EpollWorkerPool,
  epollWorkerSource,
  errno,
  sockaddr,
  type Started,
  startEpollWorker,
  strerror,
  unwatchClose,
  watch,
} from "./epoll.ts";

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

// deno-lint-ignore no-explicit-any
type Any = any;

// Everything below up to TransferPool runs inside the worker, not in this module: the functions
// are shipped as their own source text (WORKER_SOURCE), so each may use only the others in its
// list, epoll.ts's EPOLL_KIT, its arguments and globals. Their shared state is one WorkerState.

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
  /** The client has answered (an ACK of ours): it is there, whoever sent the request. */
  heard: boolean;
  /** Length of a full DATA packet, as the usize send() takes. */
  fullLen: bigint;
}

/** A transfer worker's state: the epoll loop's (epoll.ts), a send buffer, the next timer scan. */
interface WorkerState extends EpollState<Transfer> {
  sendBuf: Uint8Array;
  /** Earliest deadline of any transfer. */
  nextScan: number;
}

function createWorkerState(scope: Any): WorkerState {
  // The same record, not a copy: the message handler of createEpollState updates it.
  return Object.assign(createEpollState<Transfer>(scope, 1500), {
    sendBuf: new Uint8Array(4 + 65464),
    nextScan: Infinity,
  });
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
    heard: false,
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
  unwatchClose(w, t.fd);
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
  if (!t.heard) {
    t.heard = true;
    w.scope.postMessage({ type: "note", id: t.id, heard: true });
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

/** Runs the timer scan once the earliest deadline has passed. */
function timersDue(w: WorkerState, now: number): void {
  if (now >= w.nextScan) scanTimers(w, now);
}

function abandonTransfer(w: WorkerState, t: Transfer): void {
  endTransfer(w, t, "failed", { reason: "server closing" });
}

/** Ends transfer `id` if its client never answered (a request forged from the client's address
 *  looks like that); one that has answered is kept. */
function cancelUnheard(w: WorkerState, id: number): void {
  for (const t of w.transfers.values()) {
    if (t.id !== id) continue;
    if (t.heard) w.scope.postMessage({ type: "kept", id });
    else endTransfer(w, t, "failed", { reason: "replaced by a newer request from its address" });
    return;
  }
}

function workerMain(): void {
  startEpollWorker(createWorkerState(self), {
    start: startTransfer,
    deadline: (w) => w.nextScan,
    receive,
    timers: timersDue,
    abandon: abandonTransfer,
    cancel: cancelUnheard,
  });
}

/** The worker's module text: the epoll kit and the functions above. */
const WORKER_SOURCE = epollWorkerSource([
  createWorkerState,
  startTransfer,
  endTransfer,
  arm,
  sendPacket,
  sendWindow,
  onPacket,
  receive,
  clientGone,
  scanTimers,
  timersDue,
  abandonTransfer,
  cancelUnheard,
], workerMain);

/** A fixed set of transfer workers. */
export class TransferPool {
  private constructor(private pool: EpollWorkerPool<TransferEnd>) {}

  static async create(workers: number): Promise<TransferPool> {
    return new TransferPool(
      await EpollWorkerPool.create<TransferEnd>(WORKER_SOURCE, workers, {
        what: "transfer worker",
        settle: ({ type: _t, id: _i, ...end }) => end as TransferEnd,
        lost: (reason) => ({ outcome: "failed", bytes: 0, ms: 0, resent: 0, reason }),
      }),
    );
  }

  get active(): number {
    return this.pool.active;
  }

  /** Starts a transfer; `heard` is called once its client has answered. */
  start(req: TransferRequest, heard: () => void): Started<TransferEnd> {
    return this.pool.start(req, heard);
  }

  /** Stops the workers; transfers still running end as failed ("server closing"). */
  close(): Promise<void> {
    return this.pool.close();
  }
}
