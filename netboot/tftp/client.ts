// A small TFTP read client (RRQ with blksize/tsize/windowsize), used by the tests and the boot-storm
// generator. Async node:dgram: simple rather than fast.
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
  const options: Record<string, string> = {};
  if (opts.blksize) options.blksize = String(opts.blksize);
  if (opts.windowsize) options.windowsize = String(opts.windowsize);
  if (opts.tsize) options.tsize = "0";
  const timeoutMs = opts.timeoutMs ?? 1000;
  const retries = opts.retries ?? 5;
  const sock = dgram.createSocket("udp4");
  const { promise, resolve, reject } = Promise.withResolvers<TftpGetResult>();

  let blksize = 512, windowsize = 1;
  let granted: Record<string, string> = {};
  let peer: { address: string; port: number } | undefined; // the server's TID, from its first reply
  let expected = 1; // next block we need
  let sinceAck = 0; // blocks received in order since our last ACK (RFC 7440 window)
  const chunks: Uint8Array[] = [];
  let last = encode({ op: "RRQ", filename: file, mode: "octet", options });
  let tries = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;

  let sending = Promise.resolve();
  let finished = false;
  const finish = (err?: Error) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    // Close only after the final ACK left: closing first drops it, and the server would then
    // resend into a closed port.
    sending.finally(() => sock.close());
    if (err) reject(err);
    else {
      const data = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      let off = 0;
      for (const c of chunks) data.set(c, off), off += c.length;
      resolve({ data, options: granted });
    }
  };
  const sendLast = () => {
    sending = new Promise((r) =>
      sock.send(last, peer?.port ?? port, peer?.address ?? host, () => r())
    );
  };
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (++tries > retries) return finish(new TftpError(0, `timeout fetching ${file}`));
      sendLast();
      arm();
    }, timeoutMs);
  };
  const ack = (block: number) => {
    last = encode({ op: "ACK", block: block & 0xffff });
    const fate = opts.onAck?.(block) ?? "send";
    if (fate !== "drop") sendLast();
    if (fate === "duplicate") sendLast();
  };

  sock.on("message", (msg, rinfo) => {
    if (finished) return;
    if (peer && (rinfo.port !== peer.port || rinfo.address !== peer.address)) {
      // Another TID (e.g. a duplicate transfer started by our resent RRQ): tell it to stop.
      sock.send(
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
    peer ??= { address: rinfo.address, port: rinfo.port };
    tries = 0;
    if (p.op === "ERROR") return finish(new TftpError(p.code, `${file}: ${p.message}`));
    if (p.op === "OACK" && expected === 1) {
      granted = p.options;
      blksize = Number(p.options.blksize ?? 512);
      windowsize = Number(p.options.windowsize ?? 1);
      ack(0);
      return arm();
    }
    if (p.op !== "DATA") return;
    if (p.block !== (expected & 0xffff)) {
      if (p.block === ((expected - 1) & 0xffff)) sendLast(); // the server missed our last ACK
      else if (windowsize > 1) {
        // A gap in the window: ACK what we have, the server resends from there (RFC 7440).
        ack(expected - 1);
        sinceAck = 0;
      }
      return arm();
    }
    chunks.push(p.data.slice());
    expected++;
    const lastBlock = p.data.length < blksize;
    if (lastBlock || ++sinceAck >= windowsize) {
      ack(expected - 1);
      sinceAck = 0;
    }
    if (lastBlock) return finish();
    arm();
  });
  sock.on("error", (e) => finish(e));
  sock.bind(0, () => {
    sendLast();
    arm();
  });
  return promise;
}
