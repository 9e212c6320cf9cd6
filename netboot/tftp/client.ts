// A small TFTP read client (RRQ with blksize/tsize/windowsize; tests, mod.ts). Async node:dgram:
// simple rather than fast (the boot-storm generator uses clientpool.ts, worker threads on libc).
import dgram from "node:dgram";
import { decode, encode } from "./packet.ts";

export interface TftpGetOptions {
  blksize?: number;
  windowsize?: number;
  /** Ask for the size (tsize 0) in the request. */
  tsize?: boolean;
  /** Wait this long for a packet before resending the last one (default 1000 ms). */
  timeoutMs?: number;
  /** Resends before giving up (default 5). */
  retries?: number;
  /** Called at each resend after a timeout (a load generator counts them). */
  onRetransmit?(): void;
  /** Test seam: decides the fate of each ACK we are about to send. */
  onAck?(block: number): "send" | "drop" | "duplicate";
}

export class TftpError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
    this.name = "TftpError";
  }
}

export interface TftpGetResult {
  data: Uint8Array;
  /** Options the server granted (empty without OACK). */
  options: Record<string, string>;
}

/** Fetches `file` and returns its bytes; throws TftpError for a server error or a timeout. */
export async function tftpGet(
  host: string,
  port: number,
  file: string,
  opts: TftpGetOptions = {},
): Promise<Uint8Array> {
  return (await tftpGetDetailed(host, port, file, opts)).data;
}

export function tftpGetDetailed(
  host: string,
  port: number,
  file: string,
  opts: TftpGetOptions = {},
): Promise<TftpGetResult> {
  return new ReadTransfer(host, port, file, opts).run();
}

/** One read transfer, the client's side: RRQ, optional OACK, DATA in windows, our ACKs. */
class ReadTransfer {
  readonly #sock = dgram.createSocket("udp4");
  readonly #result = Promise.withResolvers<TftpGetResult>();
  readonly #timeoutMs: number;
  readonly #retries: number;
  #blksize = 512;
  #windowsize = 1;
  #granted: Record<string, string> = {};
  /** The server's TID, from its first reply. */
  #peer: { address: string; port: number } | undefined;
  /** Next block we need. */
  #expected = 1;
  /** Blocks received in order since our last ACK (RFC 7440 window). */
  #sinceAck = 0;
  readonly #chunks: Uint8Array[] = [];
  /** The packet a timeout resends. */
  #last: Uint8Array;
  #tries = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #sending = Promise.resolve();
  #finished = false;

  constructor(
    readonly host: string,
    readonly port: number,
    readonly file: string,
    readonly opts: TftpGetOptions,
  ) {
    const options: Record<string, string> = {};
    if (opts.blksize) options.blksize = String(opts.blksize);
    if (opts.windowsize) options.windowsize = String(opts.windowsize);
    if (opts.tsize) options.tsize = "0";
    this.#timeoutMs = opts.timeoutMs ?? 1000;
    this.#retries = opts.retries ?? 5;
    this.#last = encode({ op: "RRQ", filename: file, mode: "octet", options });
  }

  run(): Promise<TftpGetResult> {
    this.#sock.on("message", (msg, rinfo) => this.#onMessage(msg, rinfo));
    this.#sock.on("error", (e) => this.#finish(e));
    this.#sock.bind(0, () => {
      this.#sendLast();
      this.#arm();
    });
    return this.#result.promise;
  }

  #finish(err?: Error): void {
    if (this.#finished) return;
    this.#finished = true;
    clearTimeout(this.#timer);
    // Close only after the final ACK left: closing first drops it, and the server would then
    // resend into a closed port.
    this.#sending.finally(() => this.#sock.close());
    if (err) return this.#result.reject(err);
    const data = new Uint8Array(this.#chunks.reduce((n, c) => n + c.length, 0));
    let off = 0;
    for (const c of this.#chunks) data.set(c, off), off += c.length;
    this.#result.resolve({ data, options: this.#granted });
  }

  #sendLast(): void {
    const last = this.#last, peer = this.#peer;
    this.#sending = new Promise((r) =>
      this.#sock.send(last, peer?.port ?? this.port, peer?.address ?? this.host, () => r())
    );
  }

  #arm(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      if (++this.#tries > this.#retries) {
        return this.#finish(new TftpError(0, `timeout fetching ${this.file}`));
      }
      this.opts.onRetransmit?.();
      this.#sendLast();
      this.#arm();
    }, this.#timeoutMs);
  }

  #ack(block: number): void {
    this.#last = encode({ op: "ACK", block: block & 0xffff });
    const fate = this.opts.onAck?.(block) ?? "send";
    if (fate !== "drop") this.#sendLast();
    if (fate === "duplicate") this.#sendLast();
  }

  #onMessage(msg: Uint8Array, rinfo: { address: string; port: number }): void {
    if (this.#finished) return;
    const peer = this.#peer;
    if (peer && (rinfo.port !== peer.port || rinfo.address !== peer.address)) {
      // Another TID (e.g. a duplicate transfer started by our resent RRQ): tell it to stop.
      this.#sock.send(
        encode({ op: "ERROR", code: 5, message: "unknown transfer ID" }),
        rinfo.port,
        rinfo.address,
      );
      return;
    }
    let p;
    try {
      p = decode(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength));
    } catch {
      return;
    }
    this.#peer ??= { address: rinfo.address, port: rinfo.port };
    this.#tries = 0;
    if (p.op === "ERROR") return this.#finish(new TftpError(p.code, `${this.file}: ${p.message}`));
    if (p.op === "OACK" && this.#expected === 1) {
      this.#granted = p.options;
      this.#blksize = Number(p.options.blksize ?? 512);
      this.#windowsize = Number(p.options.windowsize ?? 1);
      this.#ack(0);
      return this.#arm();
    }
    if (p.op === "DATA") this.#onData(p.block, p.data);
  }

  #onData(block: number, payload: Uint8Array): void {
    if (block !== (this.#expected & 0xffff)) {
      if (block === ((this.#expected - 1) & 0xffff)) this.#sendLast(); // the server missed our last ACK
      else if (this.#windowsize > 1) {
        // A gap in the window: ACK what we have, the server resends from there (RFC 7440).
        this.#ack(this.#expected - 1);
        this.#sinceAck = 0;
      }
      return this.#arm();
    }
    this.#chunks.push(payload.slice());
    this.#expected++;
    const lastBlock = payload.length < this.#blksize;
    if (lastBlock || ++this.#sinceAck >= this.#windowsize) {
      this.#ack(this.#expected - 1);
      this.#sinceAck = 0;
    }
    if (lastBlock) return this.#finish();
    this.#arm();
  }
}
