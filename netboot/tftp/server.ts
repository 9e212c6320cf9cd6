// TFTP server, read-only. Port 69 (main thread) takes requests, applies the path policy and option
// negotiation, then a transfer worker (engine.ts) moves the bytes from its own port (new TID per
// transfer). Files are read once and kept in the boot file cache (../bootcache.ts, shared with
// HTTP boot and, through SharedArrayBuffers, with the workers).
import { BootFileCache } from "../bootcache.ts";
import type { PiBootFile, TftpBooter } from "../booter.ts";
import { logger } from "../../src/log.ts";
import { type TransferEnd, TransferPool, type TransferRequest } from "./engine.ts";
import { decode, encode, ErrorCode, negotiate, TftpDecodeError } from "./packet.ts";
import { type Resolution, resolveRequest } from "./resolve.ts";
import type { EventKind } from "../../src/eventkinds.ts";
import { UdpSocket } from "../../src/linux/udp.ts";
import { Shares } from "../shares.ts";

const log = logger("tftp");

/** Requests one address may have answered at once (resolving, reading or transferring). A machine
 *  fetches one file at a time (UEFI's size probe ends before its fetch starts); 8 leaves room for
 *  a client that restarts and asks again while its old transfers time out. Without it one host
 *  that never ACKed held all of `maxTransfers` (≈ 170 requests a second) and every node's request
 *  was refused "server busy". Past it, a request takes the share of a transfer from its address
 *  whose client never answered (replaceUnheard). */
export const transfersPerAddress = 8;

/** What a filename names: a file, bytes, or a TFTP error. `meta` comes back in the transfer's
 *  event (e.g. which node asked, decided when the request came in). */
export type ResolveResult =
  & ({ file: string } | { data: Uint8Array } | { error: number; message: string })
  & { meta?: Record<string, unknown> };

export interface ClientAddress {
  address: string;
  port: number;
}

export interface TransferEvent {
  outcome: "done" | "aborted" | "failed" | "refused";
  /** The requested name, non-printable bytes escaped as \xNN (see printableName). */
  file: string;
  client: ClientAddress;
  bytes: number;
  ms: number;
  blksize: number;
  windowsize: number;
  /** Size of the file served (undefined when refused). */
  size?: number;
  resent?: number;
  reason?: string;
  /** TFTP error code: the one we sent (refused) or the client sent (aborted). */
  errorCode?: number;
  /** From the resolver's answer. */
  meta?: Record<string, unknown>;
}

export interface TftpServerOptions {
  port: number;
  /** Address to listen on (default 0.0.0.0); transfer sockets bind to it too. */
  host?: string;
  /** Requests are taken from this interface only (SO_BINDTODEVICE): the boot network's, not the
   *  server's other networks. */
  device?: string;
  /** Source address of transfers when listening on 0.0.0.0: the server address clients were
   *  told (siaddr). Without it the kernel picks by route, which is wrong when the boot address
   *  is a secondary one, and firmware then rejects the replies (UEFI: connection refused). */
  transferIp?: string;
  resolve(path: string, client: ClientAddress): Promise<ResolveResult>;
  onTransfer?(e: TransferEvent): void;
  /** Largest blksize granted (default 65464, the RFC 2348 maximum). */
  maxBlksize?: number;
  /** Largest windowsize granted (default 64: tftp-hpa fails above, and gains level out). */
  maxWindowsize?: number;
  /** Retransmission timeout when the client does not ask for one (default 1000 ms). */
  timeoutMs?: number;
  retries?: number;
  /** Transfer worker threads (default: CPU count, at most 4). */
  workers?: number;
  /** Where file contents are kept between transfers (the server hands HTTP's cache, so one copy
   *  serves both; default: a cache of this server's own). */
  cache?: BootFileCache;
  /** Transfers at once; more are refused with "server busy" so a flood cannot exhaust file
   *  descriptors (default 1000). One address holds at most `transfersPerAddress` of them. */
  maxTransfers?: number;
}

export interface TftpServer {
  /** The bound port (resolved when 0 was asked). */
  port: number;
  /** Transfers in progress. */
  readonly active: number;
  close(): Promise<void>;
}

/** A requested name as it may appear in logs and events: escaped, bounded (it is attacker text). */
export function printableName(name: string): string {
  const s = name.replace(
    /[^\x20-\x7e]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
  return s.length > 256 ? `${s.slice(0, 256)}…` : s;
}

/** What a request on port 69 needs of its server. */
interface RequestScope {
  opts: TftpServerOptions;
  host: string;
  pool: TransferPool;
  cache: BootFileCache;
  limits: { maxBlksize: number; maxWindowsize: number; defaultTimeoutMs: number };
  retries: number;
  report(e: TransferEvent): void;
  sendError(client: ClientAddress, code: number, message: string): void;
  /** The request each client (address:port) has in progress: a resent copy of it is not a
   *  second transfer (the client would abort one of the two with "unknown transfer ID"; the
   *  first one's OACK/DATA, resent by its worker, answers the client anyway). */
  inProgress: Map<string, string>;
  /** Requests being answered (resolving, reading or transferring). The busy check counts these,
   *  not the pool's transfers: a burst of requests all passed it while the first ones were still
   *  resolving (200 at once against a limit of 20: 43 transfers ran). */
  answering: number;
  /** The same, by client address: each address's share of them (transfersPerAddress). */
  answeringFrom: Shares;
  /** The transfers under way, by client address, oldest first. */
  underWay: Map<string, Set<Answering>>;
}

/** One request being answered, as its address's share sees it. */
interface Answering {
  /** It holds one of its address's share (given to a newer request when it is replaced). */
  inShare: boolean;
  /** Its client has answered the transfer (an ACK): a machine is there, whoever asked. */
  heard: boolean;
  /** Ends the transfer unless its client has answered (true: it ended); set once under way. */
  cancel?: () => Promise<boolean>;
  replacing?: boolean;
}

/** One request from one client while its first copy is in progress: the same bytes again. */
function resentRequest(s: RequestScope, msg: Uint8Array, client: ClientAddress): boolean {
  const key = `${client.address}:${client.port}`;
  const bytes = String.fromCharCode(...msg.subarray(0, 512));
  if (s.inProgress.get(key) === bytes) return true;
  s.inProgress.set(key, bytes);
  return false;
}

/** A request past its address's share takes the share of the oldest transfer from that address
 *  whose client never answered, which ends. UDP proves no sender: 8 requests forged from a node's
 *  address, sent again every 6 s (every 60 s asking `timeout=10`), held its share, and its
 *  firmware's request was refused. One address still holds its share at most: a transfer whose
 *  client answered is kept (the new request is refused), and one replaced gives its share away. */
async function replaceUnheard(s: RequestScope, address: string, a: Answering): Promise<boolean> {
  const old = [...s.underWay.get(address) ?? []].find((o) => o.inShare && !o.heard && !o.replacing);
  if (!old) return false;
  old.replacing = true;
  if (!(await old.cancel!())) return false; // its client answered meanwhile: kept
  // Ended: its share is this request's, unless its end gave it back already.
  if (old.inShare) old.inShare = false, a.inShare = true;
  else a.inShare = s.answeringFrom.take(address, transfersPerAddress);
  return a.inShare;
}

/** Answers one datagram on port 69: a refusal, or a transfer handed to the pool. */
async function handleRequest(
  s: RequestScope,
  msg: Uint8Array,
  client: ClientAddress,
): Promise<void> {
  const { sendError } = s;
  let p;
  try {
    p = decode(msg);
  } catch (e) {
    // Only answer what looks like a request; stray datagrams get silence.
    if (e instanceof TftpDecodeError && msg.length >= 2 && msg[0] === 0 && msg[1] <= 2) {
      sendError(client, ErrorCode.illegalOperation, `malformed request: ${e.message}`);
    }
    return;
  }
  if (p.op !== "RRQ" && p.op !== "WRQ") return; // belongs to no transfer of ours
  if (p.op === "RRQ" && resentRequest(s, msg, client)) return;
  s.answering++;
  const a: Answering = {
    inShare: s.answeringFrom.take(client.address, transfersPerAddress),
    heard: false,
  };
  try {
    await answerRequest(s, p, client, a);
  } finally {
    s.answering--;
    if (a.inShare) s.answeringFrom.give(client.address);
    s.inProgress.delete(`${client.address}:${client.port}`);
  }
}

async function answerRequest(
  s: RequestScope,
  p: Extract<ReturnType<typeof decode>, { op: "RRQ" | "WRQ" }>,
  client: ClientAddress,
  a: Answering,
): Promise<void> {
  const { opts, cache, limits, retries, report, sendError } = s;
  const file = printableName(p.filename);
  let meta: Record<string, unknown> | undefined;
  const refused = (code: number, reason: string) => {
    sendError(client, code, reason);
    report({
      outcome: "refused",
      file,
      client,
      bytes: 0,
      ms: 0,
      blksize: 0,
      windowsize: 0,
      reason,
      errorCode: code,
      meta,
    });
  };
  if (p.op === "WRQ") return refused(ErrorCode.accessViolation, "write requests are refused");
  if (s.answering > (opts.maxTransfers ?? 1000)) { // this request is one of them
    return refused(ErrorCode.notDefined, "server busy, try again");
  }
  if (!a.inShare && !(await replaceUnheard(s, client.address, a))) {
    return refused(
      ErrorCode.notDefined,
      `${transfersPerAddress} transfers under way from this address, try again`,
    );
  }
  if (p.mode !== "octet") {
    return refused(ErrorCode.illegalOperation, `mode ${p.mode} not supported, use octet`);
  }
  let data: Uint8Array;
  try {
    const r = await opts.resolve(p.filename, client);
    meta = r.meta;
    if ("error" in r) return refused(r.error, r.message);
    data = "data" in r ? r.data : await cache.read(r.file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      return refused(ErrorCode.fileNotFound, "file not found");
    }
    log.warn("cannot read file", { file, error: (e as Error).message });
    return refused(ErrorCode.accessViolation, "cannot read file");
  }
  const n = negotiate(p.options, data.length, limits);
  // Block numbers wrap after 65535 (as tftp-hpa, curl and iPXE expect), so any size goes.
  const end = await transferUnderWay(s, a, {
    ip: client.address,
    port: client.port,
    bindIp: opts.transferIp ?? s.host,
    data,
    blksize: n.blksize,
    windowsize: n.windowsize,
    timeoutMs: n.timeoutMs,
    retries,
    oack: n.oack ? encode({ op: "OACK", options: n.oack }) : undefined,
  });
  report({
    ...end,
    file,
    client,
    size: data.length,
    blksize: n.blksize,
    windowsize: n.windowsize,
    meta,
  });
}

/** Runs the transfer in the pool, listed under its client's address while it runs (what
 *  replaceUnheard looks at). */
async function transferUnderWay(
  s: RequestScope,
  a: Answering,
  req: TransferRequest,
): Promise<TransferEnd> {
  const transfer = s.pool.start(req, () => a.heard = true);
  a.cancel = transfer.cancel;
  const underWay = s.underWay.get(req.ip) ?? new Set();
  s.underWay.set(req.ip, underWay.add(a));
  try {
    return await transfer.done;
  } finally {
    underWay.delete(a);
    if (underWay.size === 0) s.underWay.delete(req.ip);
  }
}

/** Port 69's socket holds the requests of a whole storm until the main thread reads them: the
 *  default buffer (~208 KiB) overflowed while the main thread was busy streaming HTTP (a storm
 *  of 300: 44 RRQs dropped, each a 4 s PXE timeout for its client). 4 MiB, as DHCP's port 67;
 *  read with libc (one synchronous recvmsg per queued request, src/linux/udp.ts). */
function openRequestSocket(host: string, port: number, device?: string): UdpSocket {
  try {
    return UdpSocket.open({
      port,
      address: host,
      device,
      reuseAddress: false,
      broadcast: false,
      receiveBuffer: 4 << 20,
    });
  } catch (e) {
    const where = `${host}:${port}${device ? ` on ${device}` : ""}`;
    throw new Error(`TFTP cannot listen on ${where}: ${(e as Error).message}`);
  }
}

/** Reads requests until the socket closes; each is handled on its own (a slow file read does not
 *  hold the next request). */
async function receiveRequests(
  sock: UdpSocket,
  handle: (msg: Uint8Array, client: ClientAddress) => Promise<void>,
): Promise<void> {
  for (;;) {
    let d;
    try {
      d = await sock.recv();
    } catch (e) {
      log.warn("socket error", { error: (e as Error).message });
      await new Promise((r) => setTimeout(r, 100)); // not a hot loop if it persists
      continue;
    }
    if (!d) return;
    const client = d.from;
    handle(d.data, client).catch((e) =>
      log.error("request failed", { client: client.address, error: (e as Error).message })
    );
  }
}

export async function createTftpServer(opts: TftpServerOptions): Promise<TftpServer> {
  const host = opts.host ?? "0.0.0.0";
  const limits = {
    maxBlksize: opts.maxBlksize ?? 65464,
    maxWindowsize: opts.maxWindowsize ?? 64,
    defaultTimeoutMs: opts.timeoutMs ?? 1000,
  };
  const retries = opts.retries ?? 5;
  const cache = opts.cache ?? new BootFileCache();
  const pool = await TransferPool.create(
    opts.workers ?? Math.max(1, Math.min(4, navigator.hardwareConcurrency)),
  );
  let sock: UdpSocket;
  try {
    sock = openRequestSocket(host, opts.port, opts.device);
  } catch (e) {
    await pool.close();
    throw e;
  }
  const report = (e: TransferEvent) => {
    try {
      opts.onTransfer?.(e);
    } catch (err) {
      log.warn("onTransfer failed", { error: (err as Error).message });
    }
  };
  const sendError = (client: ClientAddress, code: number, message: string) => {
    try {
      sock.send(encode({ op: "ERROR", code, message }), client.address, client.port);
    } catch (e) { // unreachable client, full buffer: an error packet is best effort
      log.debug("cannot send error", { client: client.address, error: (e as Error).message });
    }
  };

  const scope: RequestScope = {
    opts,
    host,
    pool,
    cache,
    limits,
    retries,
    report,
    sendError,
    inProgress: new Map(),
    answering: 0,
    answeringFrom: new Shares(),
    underWay: new Map(),
  };
  const handle = (msg: Uint8Array, client: ClientAddress) => handleRequest(scope, msg, client);
  const receiving = receiveRequests(sock, handle);
  let closed = false;
  return {
    port: sock.port,
    get active() {
      return pool.active;
    },
    async close() {
      if (closed) return;
      closed = true;
      await sock.close();
      await receiving;
      await pool.close();
    },
  };
}

/** Largest blksize that fits one Ethernet frame on `iface` (MTU − IP 20 − UDP 8 − TFTP 4): a
 *  client asking more gets this, so no DATA packet is IP-fragmented (some firmware drops those). */
export function blksizeForInterface(iface: string | undefined): number {
  if (!iface) return 65464;
  try {
    const mtu = Number(Deno.readTextFileSync(`/sys/class/net/${iface}/mtu`).trim());
    if (mtu >= 68) return Math.min(65464, mtu - 32);
  } catch { /* interface gone or not Linux: the common Ethernet value */ }
  return 1468;
}

/** The real service: iPXE binaries for anyone, the node's image /boot for known nodes; every
 *  transfer lands on the node's timeline (or the server's, for an unknown client), within the
 *  rate limit of the client's address (recordFromSource; UDP sources are anyone's to forge):
 *  refusals and unknown clients on the tight budget, a node's transfers on the wide one. Log
 *  lines go with their events. */
export interface TftpServiceOptions {
  port: number;
  /** The boot interface: requests are taken from it only, and its MTU bounds blksize. */
  interface?: string;
  /** The server address clients were told (transfers' source address). */
  serverIp?: string;
  ipxeDir: string;
  /** Where an iPXE binary missing from ipxeDir is looked for (the release bundle's). */
  ipxeFallbackDir?: string;
  cache?: BootFileCache;
}

export async function startTftp(
  o: TftpServiceOptions,
  booter: TftpBooter,
): Promise<{ name: string; port: number; close(): Promise<void> }> {
  const server = await createTftpServer({
    port: o.port,
    device: o.interface,
    transferIp: o.serverIp,
    maxBlksize: blksizeForInterface(o.interface),
    cache: o.cache,
    resolve: async (path, client) => {
      const node = booter.nodeAt(client.address);
      const piFile = node && booter.piFile &&
        (async (name: PiBootFile): Promise<Resolution> => {
          let r;
          try {
            r = await booter.piFile!(node.mac, name, client.address);
          } catch (e) { // a missing kernel, a failed initramfs build: the node's event says which
            r = { refused: (e as Error).message };
          }
          return "refused" in r ? { error: ErrorCode.fileNotFound, message: r.refused } : r;
        });
      const r = await resolveRequest(path, {
        ipxeDir: o.ipxeDir,
        ipxeFallbackDir: o.ipxeFallbackDir,
        nodeFs: node?.fs,
        nodeRoot: node && booter.bootRoot && ((file) => booter.bootRoot!(node.mac, file)),
        piFile,
      });
      return { ...r, meta: { mac: node?.mac ?? null } };
    },
    onTransfer: (e) => {
      const mac = (e.meta?.mac as string | null | undefined) ?? null;
      const base = { file: e.file, client: e.client.address };
      const fields = { ...base, mac: mac ?? undefined };
      const budget = mac && e.outcome !== "refused" ? "node" : "refusal";
      const record = (kind: EventKind, detail: Record<string, unknown>) =>
        booter.events.fromSource(e.client.address, mac, kind, detail, budget);
      if (e.outcome === "done") {
        const d = {
          ...base,
          bytes: e.bytes,
          ms: e.ms,
          blksize: e.blksize,
          windowsize: e.windowsize,
        };
        if (record("tftp.done", d)) log.info("sent", { ...fields, ...d });
      } else if (e.outcome === "refused") {
        if (record("tftp.refused", { ...base, reason: e.reason, code: e.errorCode })) {
          log.warn("refused", { ...fields, reason: e.reason });
        }
      } else if (e.outcome === "aborted") {
        // UEFI asks for the size (tsize), then aborts with error 8 and asks again: normal.
        const probe = e.errorCode === ErrorCode.optionRefused && e.bytes === 0;
        const d = {
          ...base,
          bytes: e.bytes,
          code: e.errorCode,
          reason: e.reason,
          sizeProbe: probe,
        };
        if (record("tftp.aborted", d)) {
          (probe ? log.debug : log.info)("client aborted", {
            ...fields,
            bytes: e.bytes,
            code: e.errorCode,
          });
        }
      } else if (record("tftp.failed", { ...base, bytes: e.bytes, reason: e.reason })) {
        log.warn("transfer failed", { ...fields, bytes: e.bytes, reason: e.reason });
      }
    },
  });
  log.info("listening", { port: server.port });
  return { name: "tftp", port: server.port, close: () => server.close() };
}
