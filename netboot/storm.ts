// Boot-storm generator: N simulated PXE clients, each doing what a BIOS PXE ROM + iPXE does —
// DHCP as a PXE ROM, TFTP of the iPXE binary, DHCP again as iPXE, HTTP of its script, then HTTP
// of the kernel and initramfs the script names. Run it on a host (or netns) attached to the boot
// network; the simulated clients' DHCP shares one interface (told apart by MAC and xid). A client
// whose MAC is on an interface of its own (a macvlan on the boot network) asks DHCP for that
// interface's address and sends its TFTP and HTTP from it, as a machine does from its NIC; the
// others send them from their leased address when the namespace holds it, else from any.
import { TftpClientPool } from "./tftp/clientpool.ts";
import { UdpSocket } from "../src/linux/udp.ts";
import { BOOTREQUEST, decode, type DhcpPacket, encode } from "./dhcp4/packet.ts";
import { MessageType, Opt, readIp, readText, text, u16, u8 } from "./dhcp4/options.ts";
import { macFromBytes } from "../contract/mac.ts";

const ZERO = "0.0.0.0";

export interface ClientIdentity {
  mac: Uint8Array;
  /** "pxe": a BIOS PXE ROM; "ipxe": iPXE (user class + 175); "linux": plain. */
  kind: "pxe" | "ipxe" | "linux";
}

export function macFor(index: number, prefix = [0x02, 0x6e, 0x72]): Uint8Array {
  return new Uint8Array([...prefix, (index >> 16) & 255, (index >> 8) & 255, index & 255]);
}

/** A client request as the real firmware sends it (options from our iPXE/udhcpc captures). */
export function clientPacket(
  id: ClientIdentity,
  xid: number,
  type: MessageType,
  extra: { serverId?: string; requestedIp?: string; ciaddr?: string } = {},
): DhcpPacket {
  const o = new Map<number, Uint8Array>();
  o.set(Opt.messageType, u8(type));
  o.set(Opt.maxMessageSize, u16(1472));
  if (id.kind !== "linux") {
    o.set(Opt.clientArch, u16(0));
    o.set(Opt.clientNdi, new Uint8Array([1, 2, 1]));
    o.set(Opt.vendorClass, text("PXEClient:Arch:00000:UNDI:002001"));
  }
  if (id.kind === "ipxe") {
    o.set(Opt.userClass, text("iPXE"));
    o.set(Opt.ipxe, new Uint8Array([19, 1, 1, 21, 1, 1, 24, 1, 1]));
  }
  o.set(Opt.paramRequest, new Uint8Array([1, 3, 6, 12, 15, 17, 43, 60, 66, 67, 175]));
  o.set(Opt.clientId, new Uint8Array([1, ...id.mac]));
  if (extra.serverId) o.set(Opt.serverId, new Uint8Array(extra.serverId.split(".").map(Number)));
  if (extra.requestedIp) {
    o.set(Opt.requestedIp, new Uint8Array(extra.requestedIp.split(".").map(Number)));
  }
  const chaddr = new Uint8Array(16);
  chaddr.set(id.mac);
  return {
    op: BOOTREQUEST,
    htype: 1,
    hlen: 6,
    hops: 0,
    xid,
    secs: 0,
    flags: 0x8000, // broadcast: one shared socket receives for every simulated client
    ciaddr: extra.ciaddr ?? ZERO,
    yiaddr: ZERO,
    siaddr: ZERO,
    giaddr: ZERO,
    chaddr,
    sname: "",
    file: "",
    options: o,
  };
}

export const msgType = (p: DhcpPacket) => p.options.get(Opt.messageType)?.[0];

/** One UDP port 68 socket on the interface, shared by all simulated clients (replies by xid). */
export class DhcpClientPort {
  private readonly waiters = new Map<number, (p: DhcpPacket) => void>();
  private readonly loop: Promise<void>;
  private nextXid = (Math.random() * 0x7fffffff) >>> 0;
  received = 0;
  /** Requests sent again after a timeout (lost or slow answers). */
  retransmits = 0;

  private constructor(private readonly sock: UdpSocket) {
    this.loop = (async () => {
      for (;;) {
        const d = await sock.recv();
        if (!d) return;
        try {
          const p = decode(d.data);
          this.received++;
          if (p.op === 2) this.waiters.get(p.xid)?.(p);
        } catch { /* not for us / malformed: a load generator ignores it */ }
      }
    })();
  }

  static open(device: string, port = 68): DhcpClientPort {
    return new DhcpClientPort(
      UdpSocket.open({ port, device, broadcast: true, receiveBuffer: 8 << 20 }),
    );
  }

  xid(): number {
    return (this.nextXid = (this.nextXid + 1) >>> 0);
  }

  /** Sends `req` (retransmitting) until `accept` returns a reply; collects every reply seen
   *  in `seen` when given. Rejects after the last retry. */
  exchange(
    req: DhcpPacket,
    accept: (p: DhcpPacket) => boolean,
    o: { to?: string; port?: number; timeoutMs?: number; retries?: number; seen?: DhcpPacket[] } =
      {},
  ): Promise<DhcpPacket> {
    const bytes = encode(req);
    const timeoutMs = o.timeoutMs ?? 2000;
    let tries = 0;
    return new Promise<DhcpPacket>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout>;
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(req.xid);
      };
      const send = () => {
        if (tries++ > (o.retries ?? 3)) {
          done();
          reject(new Error(`no answer to ${MessageType[msgType(req)!]} after ${tries - 1} tries`));
          return;
        }
        if (tries > 1) this.retransmits++;
        try {
          this.sock.send(bytes, o.to ?? "255.255.255.255", o.port ?? 67);
        } catch (e) {
          done();
          reject(e);
          return;
        }
        timer = setTimeout(send, timeoutMs);
      };
      this.waiters.set(req.xid, (p) => {
        o.seen?.push(p);
        if (accept(p)) {
          done();
          resolve(p);
        }
      });
      send();
    });
  }

  /** DISCOVER → OFFER (with an address) → REQUEST → ACK. Returns the ACK. */
  /** DORA for `id`; `wanted`: the address it asks for in its DISCOVER (option 50). */
  async lease(id: ClientIdentity, timeoutMs = 2000, wanted?: string): Promise<DhcpPacket> {
    const offer = await this.exchange(
      clientPacket(id, this.xid(), MessageType.Discover, { requestedIp: wanted }),
      (p) => msgType(p) === MessageType.Offer && p.yiaddr !== ZERO,
      { timeoutMs },
    );
    const serverId = readIp(offer.options.get(Opt.serverId));
    const ack = await this.exchange(
      clientPacket(id, this.xid(), MessageType.Request, {
        serverId,
        requestedIp: offer.yiaddr,
      }),
      (p) => msgType(p) === MessageType.Ack || msgType(p) === MessageType.Nak,
      { timeoutMs },
    );
    if (msgType(ack) === MessageType.Nak) {
      throw new Error(`NAK: ${readText(ack.options.get(Opt.message)) ?? ""}`);
    }
    return ack;
  }

  async close(): Promise<void> {
    await this.sock.close();
    await this.loop;
  }
}

export function bootfileOf(p: DhcpPacket): string | undefined {
  return readText(p.options.get(Opt.bootfile)) || p.file || undefined;
}

async function httpGet(
  url: string,
  client?: Deno.HttpClient,
): Promise<{ bytes: number; script?: string }> {
  const res = await fetch(url, { client });
  if (!res.ok) {
    await res.body?.cancel();
    throw new Error(`GET ${url}: HTTP ${res.status}`);
  }
  // Count every byte; keep the text only of what is an iPXE script (small, "#!ipxe").
  const dec = new TextDecoder();
  let bytes = 0, text = "";
  for await (const chunk of res.body!) {
    bytes += chunk.length;
    if (bytes <= 65536) text += dec.decode(chunk, { stream: true });
  }
  return { bytes, script: bytes <= 65536 && text.startsWith("#!ipxe") ? text : undefined };
}

/** The kernel and initrd URLs of an iPXE script (`kernel [--opts] URL args…`, `initrd URL`). */
export function scriptDownloads(script: string): string[] {
  const out: string[] = [];
  for (const line of script.split("\n")) {
    const m = /^\s*(kernel|initrd|imgfetch|module)\s+(.*)$/.exec(line);
    if (!m) continue;
    const url = m[2].split(/\s+/).find((w) => /^https?:\/\//.test(w));
    if (url) out.push(url);
  }
  return out;
}

export interface StormOptions {
  device: string;
  clients: number;
  /** Clients in flight at once (default: all of them, a real storm). */
  concurrency?: number;
  timeoutMs?: number;
  /** Skip phases (e.g. measure DHCP + TFTP only). */
  http?: boolean;
  tftp?: boolean;
  firstIndex?: number;
  /** Worker threads running the TFTP downloads (default 1). */
  tftpWorkers?: number;
}

export interface StormReport {
  clients: number;
  ok: number;
  failures: number;
  errors: Record<string, number>;
  seconds: number;
  bytes: number;
  bytesPerSecond: number;
  perClientMs: { p50: number; p95: number; max: number };
  dhcpExchanges: number;
  /** DHCP requests and TFTP packets the generator sent again after a timeout. */
  retransmits: { dhcp: number; tftp: number };
  /** How late the generator's own event loop ran a 100 ms timer: its max and 99th percentile, ms
   *  (a busy generator delays every client's packets, and its figures would be its own). */
  loopLagMs: { p99: number; max: number };
  /** CPU seconds the generator used, all its threads (Linux only, else 0). */
  cpuSeconds: { user: number; system: number };
}

/** CPU seconds of this process so far: /proc/self/stat, in clock ticks of 10 ms. */
function cpuSeconds(): { user: number; system: number } {
  try {
    const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
    return { user: Number(f[11]) / 100, system: Number(f[12]) / 100 };
  } catch {
    return { user: 0, system: 0 };
  }
}

/** One simulated client, start to finish; returns bytes fetched. */
async function bootOne(
  port: DhcpClientPort,
  tftp: TftpClientPool,
  mac: Uint8Array,
  o: StormOptions,
  count: () => void,
  tftpRetransmits: (n: number) => void,
  local: Set<string>,
  wanted: string | undefined,
): Promise<number> {
  const t = o.timeoutMs ?? 2000;
  let bytes = 0;
  const pxeAck = await port.lease({ mac, kind: "pxe" }, t, wanted);
  count();
  const file = bootfileOf(pxeAck);
  if (!file) throw new Error("PXE: no boot file in the ACK");
  const next = pxeAck.siaddr !== ZERO ? pxeAck.siaddr : readIp(pxeAck.options.get(Opt.serverId))!;
  if (o.tftp ?? true) {
    // In a worker on libc sockets, not on this thread's event loop (netboot/tftp/clientpool.ts);
    // from the leased address when the namespace holds it, as its HTTP below: the server holds
    // each address to its share of transfers (netboot/tftp/server.ts).
    try {
      const got = await tftp.get({
        host: next,
        port: 69,
        file,
        blksize: 1432,
        tsize: true,
        timeoutMs: t,
        localAddress: local.has(pxeAck.yiaddr) ? pxeAck.yiaddr : undefined,
      });
      tftpRetransmits(got.retransmits);
      bytes += got.bytes;
    } catch (e) {
      tftpRetransmits((e as { retransmits?: number }).retransmits ?? 0);
      throw e;
    }
  }
  const ipxeAck = await port.lease({ mac, kind: "ipxe" }, t, wanted);
  count();
  const script = bootfileOf(ipxeAck);
  if (!script?.startsWith("http")) throw new Error(`iPXE: boot file is not a URL: ${script}`);
  if (o.http ?? true) {
    // From the leased address when the namespace holds it, as a lab's machine sends: the server
    // holds each address to its share of connections (src/httpbounds.ts) and refuses a node's
    // script to an address its neighbour table maps to another MAC, or (once it knows the
    // node's) to any other address.
    using http = local.has(ipxeAck.yiaddr)
      ? Deno.createHttpClient({ localAddress: ipxeAck.yiaddr })
      : undefined;
    const s = await httpGet(script, http);
    bytes += s.bytes;
    const downloads = scriptDownloads(s.script ?? "");
    if (downloads.length === 0) throw new Error("iPXE script names no kernel/initrd");
    for (const url of downloads) bytes += (await httpGet(url, http)).bytes;
  }
  return bytes;
}

/** The namespace's IPv4 addresses, and those of interfaces other than `device` by their MAC: a
 *  client's own interface (see the top of this file). */
function namespaceAddresses(device: string) {
  const v4 = Deno.networkInterfaces().filter((i) => i.family === "IPv4");
  return {
    local: new Set(v4.map((i) => i.address)),
    own: new Map(v4.filter((i) => i.name !== device).map((i) => [i.mac, i.address])),
  };
}

export async function runStorm(o: StormOptions): Promise<StormReport> {
  const { local, own } = namespaceAddresses(o.device);
  const tftp = await TftpClientPool.create(o.tftpWorkers ?? 1);
  const port = DhcpClientPort.open(o.device);
  const errors: Record<string, number> = {};
  const times: number[] = [];
  let bytes = 0, ok = 0, exchanges = 0, nextIndex = 0, tftpRetransmits = 0;
  const t0 = performance.now(), cpu0 = cpuSeconds();
  const lags: number[] = [];
  let tick = t0;
  const probe = setInterval(() => {
    const now = performance.now();
    lags.push(Math.max(0, now - tick - 100));
    tick = now;
  }, 100);
  const worker = async () => {
    while (nextIndex < o.clients) {
      const i = nextIndex++;
      const t1 = performance.now();
      try {
        // (not `bytes += await …`: that reads `bytes` before the await and loses updates)
        const mac = macFor((o.firstIndex ?? 0) + i);
        const got = await bootOne(
          port,
          tftp,
          mac,
          o,
          () => exchanges++,
          (n) => tftpRetransmits += n,
          local,
          own.get(macFromBytes(mac)),
        );
        bytes += got;
        ok++;
        times.push(performance.now() - t1);
      } catch (e) {
        const key = (e as Error).message.replace(
          /\d+(\.\d+){3}|[0-9a-f]{2}(:[0-9a-f]{2}){5}/g,
          "*",
        );
        errors[key] = (errors[key] ?? 0) + 1;
      }
    }
  };
  try {
    await Promise.all(
      Array.from({ length: Math.min(o.concurrency ?? o.clients, o.clients) }, worker),
    );
  } finally {
    clearInterval(probe);
    await port.close();
    await tftp.close();
  }
  lags.sort((a, b) => a - b);
  const seconds = (performance.now() - t0) / 1000;
  times.sort((a, b) => a - b);
  const pct = (q: number) =>
    Math.round(times[Math.min(times.length - 1, Math.floor(q * times.length))] ?? 0);
  return {
    clients: o.clients,
    ok,
    failures: o.clients - ok,
    errors,
    seconds,
    bytes,
    bytesPerSecond: bytes / seconds,
    perClientMs: { p50: pct(0.5), p95: pct(0.95), max: Math.round(times.at(-1) ?? 0) },
    dhcpExchanges: exchanges,
    retransmits: { dhcp: port.retransmits, tftp: tftpRetransmits },
    loopLagMs: {
      p99: Math.round(lags[Math.floor(0.99 * (lags.length - 1))] ?? 0),
      max: Math.round(lags.at(-1) ?? 0),
    },
    cpuSeconds: (({ user, system }) => ({ user: user - cpu0.user, system: system - cpu0.system }))(
      cpuSeconds(),
    ),
  };
}
