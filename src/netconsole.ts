// The netconsole receiver: the kernel's netconsole (the `netconsole=` kernel parameter the boot
// plan adds for nodes with `console.netconsole=true`, src/boot/plan.ts) and netroot init's own
// lines (the init writes them to the kernel log once netconsole runs, overlay/console.ts) arrive
// as UDP datagrams on the boot address, port `netconsole.port` (default 6666). Each is stored in
// the sending node's console log (src/consolelog.ts: bounded and rotated like a virtual node's
// serial console), which `node console` shows.
//
// Everything here comes from the boot network, unauthenticated:
// - a datagram belongs to a node only when its source address is that node's address from
//   evidence bound to its MAC (the admin's `ip` setting, a bound lease, the neighbour evidence of
//   its boot-script request: NodeRegistry.netconsoleSources) and the node has
//   console.netconsole=true; anything else is dropped and counted, never stored, and nothing is
//   kept per unknown source (one counter, one log line a minute at most);
// - a forged source address can still add lines to that node's log (UDP proves nothing more):
//   bounded by the log's rotation and by a per-node byte budget (a burst, then a rate);
// - datagrams larger than netconsole sends are dropped; control characters other than tab and
//   newline are removed (the log ends up on an admin's terminal).
import type { Context, Service } from "./context.ts";
import { consoleLogPath, consoleRotateBytes, rotateConsole } from "./consolelog.ts";
import { logger } from "./log.ts";
import { UdpSocket } from "./linux/udp.ts";

const log = logger("netconsole");

export interface NetconsoleLimits {
  /** Larger datagrams are dropped (the kernel sends at most 1000 bytes of text per datagram). */
  maxDatagram: number;
  /** Per node: bytes taken at once, then `ratePerS` a second; the rest is dropped. */
  burstBytes: number;
  ratePerS: number;
  /** Pending text is written at this interval. */
  flushMs: number;
  /** The address → node table is re-read this often, after node changes, and, at most every
   *  `unknownRefreshMs`, for an address it lacks (a node whose lease was just bound). */
  sourcesMs: number;
  unknownRefreshMs: number;
  /** A node's log past this size becomes `.1` (src/consolelog.ts). */
  rotateBytes: number;
}

export const NETCONSOLE_LIMITS: NetconsoleLimits = {
  maxDatagram: 2048,
  burstBytes: 256 * 1024,
  ratePerS: 64 * 1024,
  flushMs: 200,
  sourcesMs: 2000,
  unknownRefreshMs: 250,
  rotateBytes: consoleRotateBytes,
};

export interface NetconsoleStats {
  /** Datagrams stored, and their bytes (after sanitising). */
  stored: number;
  bytes: number;
  /** Dropped: from no node with console.netconsole=true, too large, over the node's budget. */
  unknown: number;
  oversize: number;
  overBudget: number;
}

export interface NetconsoleService extends Service {
  port: number;
  stats: NetconsoleStats;
  /** Writes what is pending now (tests; close does it too). */
  flush(): Promise<void>;
}

/** Control characters but tab and newline (C0, DEL, C1): removed from what a node sends. */
// deno-lint-ignore no-control-regex -- removing control characters is the point
const controls = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;
const dec = new TextDecoder();
const enc = new TextEncoder();

interface NodeBuffer {
  chunks: Uint8Array[];
  bytes: number;
  tokens: number;
  refilledAt: number;
}

export interface NetconsoleOptions {
  host: string;
  /** 0: any free port (see the service's `.port`). */
  port: number;
  /** Receive from this interface only (the boot interface). */
  device?: string;
  limits?: NetconsoleLimits;
}

/** Listens on `host:port` (UDP). */
export function startNetconsole(
  ctx: Pick<Context, "nodes" | "data" | "changes">,
  opts: NetconsoleOptions,
): NetconsoleService {
  const { host, limits = NETCONSOLE_LIMITS } = opts;
  const sock = openSocket(opts);
  const stats: NetconsoleStats = { stored: 0, bytes: 0, unknown: 0, oversize: 0, overBudget: 0 };
  let sources = new Map<string, string>();
  let sourcesAt = -Infinity;
  const onNodes = () => sourcesAt = -Infinity;
  ctx.changes.addEventListener("nodes", onNodes);
  const pending = new Map<string, NodeBuffer>();

  const nodeOf = (address: string): string | undefined => {
    const now = performance.now();
    let mac = sources.get(address);
    const age = now - sourcesAt;
    if (age >= limits.sourcesMs || (!mac && age >= limits.unknownRefreshMs)) {
      sources = ctx.nodes.netconsoleSources();
      sourcesAt = now;
      mac = sources.get(address);
    }
    return mac;
  };

  const take = (msg: Uint8Array, address: string) => {
    if (msg.length > limits.maxDatagram) {
      stats.oversize++;
      return;
    }
    const mac = nodeOf(address);
    if (!mac) {
      stats.unknown++;
      return;
    }
    const text = enc.encode(dec.decode(msg).replace(controls, ""));
    if (!buffer(pending, mac, text, limits)) {
      stats.overBudget++;
      return;
    }
    stats.stored++;
    stats.bytes += text.length;
  };
  const receiving = receive(sock, take);

  let writing: Promise<void> = Promise.resolve();
  const flush = () => writing = writing.then(() => writePending(ctx, pending, limits));
  const flusher = setInterval(() => void flush(), limits.flushMs);
  const reporter = reportDrops(stats);

  const bound = sock.port;
  log.info("netconsole receiver listening", { address: `${host}:${bound}` });
  return {
    name: "netconsole",
    port: bound,
    stats,
    flush,
    async close() {
      clearInterval(flusher);
      clearInterval(reporter);
      ctx.changes.removeEventListener("nodes", onNodes);
      await sock.close();
      await receiving;
      await flush();
    },
  };
}

function openSocket(opts: NetconsoleOptions): UdpSocket {
  try {
    // Room for bursts: each node sends its whole kernel log so far when its netconsole starts.
    return UdpSocket.open({
      port: opts.port,
      address: opts.host,
      device: opts.device,
      broadcast: false,
      reuseAddress: false,
      receiveBuffer: 4 << 20,
    });
  } catch (e) {
    throw new Error(
      `netconsole cannot listen on ${opts.host}:${opts.port}: ${(e as Error).message}`,
    );
  }
}

/** Every datagram to `take` until the socket closes (a failed receive is logged, then retried). */
async function receive(sock: UdpSocket, take: (msg: Uint8Array, from: string) => void) {
  for (;;) {
    let d;
    try {
      d = await sock.recv();
    } catch (e) {
      log.warn("netconsole receive failed", { error: (e as Error).message });
      await new Promise((r) => setTimeout(r, 100));
      continue;
    }
    if (!d) return;
    take(d.data, d.from.address);
  }
}

/** Queues `text` for the node within its byte budget (a token bucket); false when over it. */
function buffer(
  pending: Map<string, NodeBuffer>,
  mac: string,
  text: Uint8Array,
  limits: NetconsoleLimits,
): boolean {
  const now = performance.now();
  let b = pending.get(mac);
  if (!b) {
    pending.set(mac, b = { chunks: [], bytes: 0, tokens: limits.burstBytes, refilledAt: now });
  }
  b.tokens = Math.min(
    limits.burstBytes,
    b.tokens + (now - b.refilledAt) / 1000 * limits.ratePerS,
  );
  b.refilledAt = now;
  if (text.length > b.tokens) return false;
  b.tokens -= text.length;
  b.chunks.push(text);
  b.bytes += text.length;
  return true;
}

/** Appends each node's queued text to its netconsole log (rotated at the limit). */
async function writePending(
  ctx: Pick<Context, "data">,
  pending: Map<string, NodeBuffer>,
  limits: NetconsoleLimits,
): Promise<void> {
  const now = performance.now();
  for (const [mac, b] of pending) {
    if (!b.bytes) {
      // Idle with its budget full again: nothing to remember about this node.
      const idle = b.tokens + (now - b.refilledAt) / 1000 * limits.ratePerS;
      if (idle >= limits.burstBytes) pending.delete(mac);
      continue;
    }
    const data = new Uint8Array(b.bytes);
    let at = 0;
    for (const c of b.chunks) data.set(c, (at += c.length) - c.length);
    b.chunks = [];
    b.bytes = 0;
    try {
      ctx.data.makeConsole(mac);
      const path = consoleLogPath(ctx.data, mac, "netconsole");
      await rotateConsole(path, data.length, limits.rotateBytes);
      await Deno.writeFile(path, data, { append: true, mode: 0o600 });
    } catch (e) {
      log.warn("cannot store netconsole text", { mac, error: (e as Error).message });
    }
  }
}

/** Drops are said once a minute at most, as totals since the last time (the interval's id). */
function reportDrops(stats: NetconsoleStats): ReturnType<typeof setInterval> {
  let reported = { unknown: 0, oversize: 0, overBudget: 0 };
  return setInterval(() => {
    const d = {
      unknown: stats.unknown - reported.unknown,
      oversize: stats.oversize - reported.oversize,
      overBudget: stats.overBudget - reported.overBudget,
    };
    if (d.unknown || d.oversize || d.overBudget) {
      log.warn("netconsole datagrams dropped in the last minute", d);
    }
    reported = { ...stats };
  }, 60_000);
}
