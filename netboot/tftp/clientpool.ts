// TFTP read transfers for a load generator, in worker threads on libc sockets: the client side of
// engine.ts. The boot-storm generator (netboot/storm.ts) runs 1,000 simulated machines in one
// process; with node:dgram (client.ts: a 64 KiB buffer allocated per datagram, one event-loop hop
// per packet, next to 1,000 HTTP downloads on the same thread) its ACKs left seconds late while the
// server answered in 1.6 ms. Here each worker drives its transfers' sockets through one blocking
// epoll loop (synchronous libc calls through FFI); the main thread posts a request and bumps the
// worker's eventfd, and gets one message back per transfer: its size, or why it failed.
//
// The worker is one self-contained function shipped as source text (src/worker.ts).
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

/** Runs inside the worker: only its own text is shipped. */
function clientWorker(): void {
  const scope = self as Any;
  const c = Deno.dlopen(
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
  const errnoView = new Deno.UnsafePointerView(c.__errno_location()!);
  const AF_INET = 2, SOCK_DGRAM = 2, NONBLOCK = 0x800, CLOEXEC = 0x80000, EPOLLIN = 1;
  const ADD = 1, DEL = 2, EINTR = 4;
  const fail = (call: string): never => {
    throw new Error(`${call}: errno ${errnoView.getInt32()}`);
  };
  // struct epoll_event: packed on x86_64 (12 bytes), naturally aligned elsewhere (16 bytes).
  const x86 = Deno.build.arch === "x86_64";
  const evSize = x86 ? 12 : 16, evData = x86 ? 4 : 8, maxEvents = 64;
  const events = new Uint8Array(evSize * maxEvents), eventsView = new DataView(events.buffer);
  const evOne = new Uint8Array(16), evOneView = new DataView(evOne.buffer);
  const recvBuf = new Uint8Array(65536), recvLen = BigInt(recvBuf.length);
  const rv = new DataView(recvBuf.buffer);
  const from = new Uint8Array(16), fromView = new DataView(from.buffer);
  const fromLen = new Uint32Array(1), fromLenBytes = new Uint8Array(fromLen.buffer);
  const u64 = new Uint8Array(8);
  const enc = new TextEncoder(), dec = new TextDecoder();
  const epfd = c.epoll_create1(CLOEXEC);
  if (epfd < 0) fail("epoll_create1");
  const evfd = c.eventfd(0, NONBLOCK | CLOEXEC);
  if (evfd < 0) fail("eventfd");
  const watch = (fd: number, op: number) => {
    evOneView.setUint32(0, EPOLLIN, true);
    evOneView.setInt32(evData, fd, true);
    if (c.epoll_ctl(epfd, op, fd, evOne) < 0) fail("epoll_ctl");
  };
  watch(evfd, ADD);

  interface T {
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
  const transfers = new Map<number, T>();
  const inbox: Any[] = [];
  let received = 0, announced = 0, closing = false;
  let wake: (() => void) | undefined;

  const sockaddr = (ip: string, port: number) => {
    const sa = new Uint8Array(16), v = new DataView(sa.buffer);
    v.setUint16(0, AF_INET, true);
    v.setUint16(2, port, false);
    ip.split(".").forEach((o, i) => sa[4 + i] = Number(o));
    return sa;
  };
  const sendTo = (t: T, pkt: Uint8Array, port: number) => {
    new DataView(t.addr.buffer).setUint16(2, port, false);
    c.sendto(t.fd, pkt, BigInt(pkt.length), 0, t.addr, 16);
  };
  const sendLast = (t: T) => sendTo(t, t.last, t.peerPort || t.port);
  const ack = (t: T, block: number) => {
    t.last = new Uint8Array([0, 4, (block >> 8) & 255, block & 255]);
    sendLast(t);
  };
  const end = (t: T, error?: string, code?: number) => {
    transfers.delete(t.fd);
    c.epoll_ctl(epfd, DEL, t.fd, evOne);
    c.close(t.fd);
    scope.postMessage({
      type: "end",
      id: t.id,
      bytes: t.bytes,
      retransmits: t.retransmits,
      error,
      code,
    });
  };
  const start = (m: Any) => {
    const fd = c.socket(AF_INET, SOCK_DGRAM | NONBLOCK | CLOEXEC, 0);
    if (fd < 0) {
      const e = errnoView.getInt32();
      scope.postMessage({ type: "end", id: m.id, bytes: 0, retransmits: 0, error: `socket: ${e}` });
      return;
    }
    // RRQ: opcode 1, file, "octet", options.
    const parts = [m.file, "octet"];
    if (m.blksize) parts.push("blksize", String(m.blksize));
    if (m.tsize) parts.push("tsize", "0");
    const body = enc.encode(parts.map((p) => p + "\0").join(""));
    const rrq = new Uint8Array(2 + body.length);
    rrq[1] = 1;
    rrq.set(body, 2);
    const addr = sockaddr(m.host, m.port);
    const t: T = {
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
    transfers.set(fd, t);
    watch(fd, ADD);
    sendTo(t, rrq, m.port);
  };
  const onPacket = (t: T, n: number, port: number) => {
    if (t.peerPort && port !== t.peerPort) {
      // Another TID (a duplicate transfer started by our resent RRQ): tell it to stop.
      const err = new Uint8Array([0, 5, 0, 5, ...enc.encode("unknown transfer ID"), 0]);
      sendTo(t, err, port);
      return;
    }
    if (n < 4) return;
    const op = rv.getUint16(0);
    t.peerPort ||= port;
    t.tries = 0;
    t.deadline = performance.now() + t.timeoutMs;
    if (op === 5) {
      const msg = dec.decode(recvBuf.subarray(4, n)).split("\0")[0];
      return end(t, `${t.file}: ${msg}`, rv.getUint16(2));
    }
    if (op === 6 && t.expected === 1) {
      const fields = dec.decode(recvBuf.subarray(2, n)).split("\0");
      for (let i = 0; i + 1 < fields.length; i += 2) {
        const k = fields[i].toLowerCase(), v = Number(fields[i + 1]);
        if (k === "blksize") t.blksize = v;
        if (k === "tsize") t.tsize = v;
      }
      return ack(t, 0);
    }
    if (op !== 3) return;
    const block = rv.getUint16(2);
    if (block !== (t.expected & 0xffff)) {
      if (block === ((t.expected - 1) & 0xffff)) sendLast(t); // the server missed our last ACK
      return;
    }
    t.bytes += n - 4;
    t.expected++;
    ack(t, block);
    if (n - 4 < t.blksize) {
      if (t.tsize >= 0 && t.tsize !== t.bytes) {
        return end(t, `${t.file}: ${t.bytes} bytes received, tsize ${t.tsize}`);
      }
      end(t);
    }
  };
  const receive = (t: T) => {
    for (;;) {
      fromLen[0] = 16;
      const n = c.recvfrom(t.fd, recvBuf, recvLen, 0, from, fromLenBytes);
      if (n < 0) return; // EAGAIN: drained (a transient ICMP error: read again next time)
      if (fromView.getUint32(4) !== t.host) continue;
      onPacket(t, n, fromView.getUint16(2, false));
      if (!transfers.has(t.fd)) return;
    }
  };
  const timers = (now: number) => {
    for (const t of [...transfers.values()]) {
      if (now < t.deadline) continue;
      if (++t.tries > t.retries) {
        end(t, `timeout fetching ${t.file}`);
        continue;
      }
      t.retransmits++;
      t.deadline = now + t.timeoutMs;
      sendLast(t);
    }
  };
  const nextDeadline = () => {
    let d = Infinity;
    for (const t of transfers.values()) d = Math.min(d, t.deadline);
    return d;
  };
  const handleInbox = () => {
    while (inbox.length) {
      const m = inbox.shift();
      if (m.type === "close") closing = true;
      else start(m);
    }
  };
  scope.onmessage = (e: MessageEvent) => {
    inbox.push(e.data);
    received++;
    wake?.();
  };
  const nextMessage = () => new Promise<void>((r) => wake = r);
  (async () => {
    while (!closing) {
      handleInbox();
      if (closing) break;
      if (transfers.size === 0) {
        if (inbox.length === 0) await nextMessage();
        continue;
      }
      const wait = Math.max(0, Math.ceil(nextDeadline() - performance.now()));
      const n = c.epoll_wait(epfd, events, maxEvents, Math.min(wait, 60_000));
      if (n < 0 && errnoView.getInt32() !== EINTR) fail("epoll_wait");
      let needMessages = false;
      for (let i = 0; i < n; i++) {
        const fd = eventsView.getInt32(i * evSize + evData, true);
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
      timers(performance.now());
      while (needMessages && received < announced) await nextMessage();
    }
    for (const t of [...transfers.values()]) end(t, "generator closing");
    c.close(evfd);
    c.close(epfd);
    scope.postMessage({ type: "closed" });
  })().catch((e) => scope.postMessage({ type: "fatal", error: String(e?.stack ?? e) }));
  scope.postMessage({ type: "ready", eventfd: evfd });
}

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
    const worker = workerFromSource(clientWorker);
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
