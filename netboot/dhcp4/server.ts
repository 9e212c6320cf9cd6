// The DHCPv4 service: full mode (leases from a range, reservations for registered nodes) or proxy
// mode (boot information only, beside the lab's DHCP server; answers on 67 with option 43, or on
// UDP 4011). `DhcpResponder` is the socket-free policy (packet in → reply + destination out);
// `startDhcp` wires it to FFI sockets bound to the boot interface. Nodes, leases and the
// timeline come through the DhcpBooter (../booter.ts): no SQL here.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { intToIp, ipToInt, ipv4Bytes, isIPv4 } from "../../contract/ipv4.ts";
import { logger } from "../../src/log.ts";
import { UdpSocket } from "../../src/linux/udp.ts";
import { arpAnswers } from "../../src/linux/arp.ts";
import type { DhcpBooter, DhcpNode, Leases } from "../booter.ts";
import type { EventKind } from "../../src/eventkinds.ts";
import { type Classification, classify, REQUIRED_IPXE_FILES } from "./classify.ts";
import {
  ipv4List,
  IPXE_NO_PXEDHCP,
  MessageType,
  messageTypeName,
  Opt,
  PXE_BOOT_FILE_DIRECTLY,
  readIp,
  readU16,
  RPI_PXE_MENU,
  text,
  u32,
  u8,
} from "./options.ts";
import {
  BOOTREPLY,
  BOOTREQUEST,
  decode,
  DhcpDecodeError,
  type DhcpPacket,
  encode,
} from "./packet.ts";

const log = logger("dhcp");
const ZERO = "0.0.0.0";
const BROADCAST = "255.255.255.255";
/** How long a declined address is asked for on the link: a host on the segment answers ARP in
 *  well under a millisecond; Linux itself retries a neighbour each second. */
const DECLINE_PROBE_MS = 300;
const MAX_DECLINE_CHECKS = 16;

export type { DhcpBooter, DhcpNode };

export interface ResponderConfig {
  mode: "full" | "proxy";
  serverIp: string;
  netmask: string;
  range?: { start: string; end: string };
  leaseSeconds: number;
  proxyStrategy: "option43" | "port4011";
  registerUnknown: boolean;
  /** How long an OFFER holds its address (default 60 s; ISC dhcpd holds one 120 s). */
  offerSeconds?: number;
  /** Registrations of unknown MACs per minute on this interface (default 60, in a burst of as
   *  many); past it, or past registerMax auto-registered nodes (default 1000), unknown clients
   *  are ignored. */
  registerRate?: number;
  registerMax?: number;
  router?: string;
  dns?: string[];
  nodeUrl?: string;
}

export interface Reply {
  packet: DhcpPacket;
  bytes: Uint8Array;
  to: { address: string; port: number };
}

export interface DhcpStats {
  received: number;
  malformed: number;
  ignored: number;
  sent: Record<string, number>;
  errors: number;
}

/** Token bucket: `perMinute` registrations in a burst, refilled at `perMinute` a minute. */
export class RegistrationLimit {
  private tokens: number;
  private last: number;
  constructor(private readonly perMinute: number, now: number) {
    this.tokens = perMinute;
    this.last = now;
  }
  take(now: number): boolean {
    this.tokens = Math.min(
      this.perMinute,
      this.tokens + (now - this.last) * this.perMinute / 60_000,
    );
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  }
}

export class DhcpResponder {
  readonly stats: DhcpStats = { received: 0, malformed: 0, ignored: 0, sent: {}, errors: 0 };
  readonly leases?: Leases;
  private readonly limit: RegistrationLimit;
  /** Per warning kind: packets ignored since it was last said, and when (once a minute). */
  private readonly notices = new Map<string, { count: number; at: number }>();
  private readonly broadcastAddr: string;
  /** DECLINEs being checked (checkDecline), by address. */
  private readonly declines = new Map<string, Promise<void>>();

  constructor(
    private readonly cfg: ResponderConfig,
    private readonly booter: DhcpBooter,
    /** Milliseconds since the epoch (tests move it). */
    private readonly clock: () => number = Date.now,
    /** The MACs that answer at an address on the boot network (startDhcp asks by ARP); none
     *  without a network (tests). */
    private readonly whoAnswers: (ip: string) => Promise<string[]> = () => Promise.resolve([]),
  ) {
    this.limit = new RegistrationLimit(cfg.registerRate ?? 60, clock());
    const mask = ipToInt(cfg.netmask);
    this.broadcastAddr = intToIp((ipToInt(cfg.serverIp) & mask) | (~mask >>> 0));
    if (cfg.mode === "full") {
      if (!cfg.range) throw new Error("full DHCP mode needs a range");
      this.leases = booter.leases({
        range: cfg.range,
        exclude: [cfg.serverIp, ...(cfg.router ? [cfg.router] : [])],
        offerSeconds: cfg.offerSeconds,
      });
    }
  }

  /** Decodes and answers one datagram; never throws (bad input is counted and dropped).
   *  One SQLite transaction per request: a handful of writes, one commit. */
  handle(
    data: Uint8Array,
    via: { port: number; from: { address: string; port: number } },
  ): Reply | null {
    this.stats.received++;
    let req: DhcpPacket;
    try {
      req = decode(data);
    } catch (e) {
      this.stats.malformed++;
      if (!(e instanceof DhcpDecodeError)) log.warn("unexpected decode failure", { error: e });
      return null;
    }
    try {
      const reply = this.booter.transaction(() => this.respond(req, via));
      if (!reply) this.stats.ignored++;
      else {
        const t = messageTypeName(reply.packet.options.get(Opt.messageType)![0]);
        this.stats.sent[t] = (this.stats.sent[t] ?? 0) + 1;
      }
      return reply;
    } catch (e) {
      this.stats.errors++;
      log.error("request failed", { error: e, xid: req.xid });
      return null;
    }
  }

  private respond(
    req: DhcpPacket,
    via: { port: number; from: { address: string; port: number } },
  ): Reply | null {
    const type = req.options.get(Opt.messageType)?.[0];
    if (req.op !== BOOTREQUEST || req.htype !== 1 || req.hlen !== 6 || type === undefined) {
      return null;
    }
    const cls = classify(req, { nodeUrl: this.cfg.nodeUrl });
    if (/^(00:){5}00$|^ff(:ff){5}$/.test(cls.mac) || (req.chaddr[0] & 1) === 1) return null;
    // Beside the lab's DHCP server we see every device on the LAN: only network-booting
    // firmware and iPXE are ours (and become nodes), and only their DISCOVER/REQUEST/INFORM.
    if (
      (via.port === 4011 || this.cfg.mode === "proxy") &&
      ((!cls.netboot && cls.firmware !== "ipxe") ||
        (type !== MessageType.Discover && type !== MessageType.Request &&
          type !== MessageType.Inform))
    ) return null;
    // Full mode serves the boot subnet only: a relay (giaddr) elsewhere has its clients on another
    // subnet, where none of our addresses works; any answer but a NAK goes to a ciaddr (finish),
    // whatever the message. Both are the sender's to write: off the subnet, they sent our answers
    // (an OFFER or ACK to a DISCOVER or REQUEST with a forged ciaddr too) to any host, through the
    // boot interface's routes.
    if (
      this.cfg.mode === "full" &&
      ((req.giaddr !== ZERO && !this.onSubnet(req.giaddr)) ||
        (req.ciaddr !== ZERO && !this.onSubnet(req.ciaddr)))
    ) return null;
    // A first DISCOVER, or a REQUEST for us (not one choosing the lab's server), may register.
    const serverId = readIp(req.options.get(Opt.serverId));
    const mayRegister = type === MessageType.Discover ||
      (type === MessageType.Request && (!serverId || serverId === this.cfg.serverIp));
    const node = this.nodeFor(cls, mayRegister);
    if (!node) return null;
    const fields = { mac: cls.mac, type: messageTypeName(type), firmware: cls.firmware };
    log.debug("request", { ...fields, vendorClass: cls.vendorClass, port: via.port });
    if (via.port === 4011) return this.pxeBootServer(req, cls, type, via.from);
    if (this.cfg.mode === "proxy") return this.proxy(req, cls, type);
    return this.full(req, cls, type, node);
  }

  /** The node's reserved address, if it is on our subnet (a range moved to another subnet, or
   *  an address set by hand elsewhere, must not be handed out here). */
  private reservation(node: DhcpNode): string | undefined {
    return node.ip && isIPv4(node.ip) && this.onSubnet(node.ip) ? node.ip : undefined;
  }

  private onSubnet(ip: string): boolean {
    return ((ipToInt(ip) ^ ipToInt(this.cfg.serverIp)) & ipToInt(this.cfg.netmask)) === 0;
  }

  private event(mac: string | null, kind: EventKind, detail: Record<string, unknown>): void {
    this.booter.events.record(mac, kind, detail, this.clock());
  }

  /** The known node, or a first-seen MAC registered (when `mayRegister`) within the
   *  registration rate and cap, or null (also when registerUnknown is off). Spoofed packets from
   *  made-up MACs can therefore add at most registerRate nodes a minute and registerMax in all. */
  private nodeFor(cls: Classification, mayRegister: boolean): DhcpNode | null {
    const known = this.booter.seen(cls.mac, this.clock());
    if (known) return known;
    if (!this.cfg.registerUnknown || !mayRegister) return null;
    // The bucket first: a flood costs no query past it.
    const now = this.clock();
    const max = this.cfg.registerMax ?? 1000;
    const limited = (limit: string) =>
      this.notice("dhcp.register-limited", "registration limit reached: unknown clients ignored", {
        limit,
      });
    if (!this.limit.take(now)) {
      limited(`${this.cfg.registerRate ?? 60} new nodes a minute`);
      return null;
    }
    if (this.booter.countAutoRegistered() >= max) {
      limited(`${max} auto-registered nodes`);
      return null;
    }
    const node = this.booter.register(cls.mac, {
      via: "dhcp",
      // One option's worth (what firmware sends): repeated pieces are joined (RFC 3396), and one
      // datagram's 60,000 bytes went into the timeline whole (360 KB of JSON a registration).
      vendorClass: cls.vendorClass?.slice(0, 255),
      arch: cls.arch,
      firmware: cls.firmware,
      ...(cls.rpi && { rpi: cls.rpi }),
    });
    log.info("registered node", { mac: cls.mac, name: node.name, firmware: cls.firmware });
    return node;
  }

  /** Counts a packet ignored for `kind`; says so (log warning and server event) at most once a
   *  minute per kind, with how many were ignored since: a flood cannot flood the log. */
  private notice(kind: EventKind, message: string, detail: Record<string, unknown>): void {
    const now = this.clock();
    const n = this.notices.get(kind) ?? { count: 0, at: -Infinity };
    n.count++;
    this.notices.set(kind, n);
    if (now - n.at < 60_000) return;
    const fields = { ...detail, ignored: n.count };
    log.warn(message, fields);
    this.event(null, kind, fields);
    this.notices.set(kind, { count: 0, at: now });
  }

  // ---- full mode -------------------------------------------------------------------------

  private full(
    req: DhcpPacket,
    cls: Classification,
    type: number,
    node: DhcpNode,
  ): Reply | null {
    const leases = this.leases!;
    const now = Math.floor(this.clock() / 1000);
    const mac = cls.mac;
    const serverId = readIp(req.options.get(Opt.serverId));
    const requested = readIp(req.options.get(Opt.requestedIp));
    switch (type) {
      case MessageType.Discover: {
        const ip = leases.pick(mac, now, this.reservation(node), requested);
        if (!ip) {
          log.warn("address pool exhausted", { mac, range: this.cfg.range });
          this.event(mac, "dhcp.exhausted", {});
          return null;
        }
        // Held for offerSeconds only: the address is the client's at ACK (a DISCOVER flood
        // from made-up MACs cannot take the pool for longer).
        leases.offer(mac, ip, now);
        return this.answer(req, cls, MessageType.Offer, ip, "dhcp.offer", node.name);
      }
      case MessageType.Request: {
        if (serverId && serverId !== this.cfg.serverIp) {
          // The client chose another server: free our offer at once.
          const cur = leases.get(mac);
          if (cur?.state === "offered") leases.release(mac, cur.ip, now);
          return null;
        }
        const want = requested ?? (req.ciaddr !== ZERO ? req.ciaddr : undefined);
        if (!want) return null;
        const ip = leases.pick(mac, now, this.reservation(node), want);
        if (ip !== want) {
          this.event(mac, "dhcp.nak", { requested: want, offered: ip ?? null });
          return this.nak(req, `address ${want} not available`);
        }
        leases.bind(mac, ip, this.cfg.leaseSeconds, now);
        if (node.ip !== ip) this.booter.observeAddress(mac, ip, "lease"); // its reservation
        return this.answer(req, cls, MessageType.Ack, ip, "dhcp.ack", node.name);
      }
      case MessageType.Decline: {
        if (serverId !== this.cfg.serverIp || !requested) return null;
        // Only the client the address was offered or leased to can decline it: a DECLINE for
        // another client's address (a spoof) must not take it away.
        if (!leases.declinable(mac, requested)) {
          this.notice(
            "dhcp.decline-ignored",
            "DECLINE of an address not offered or leased to that client: ignored",
            { mac, ip: requested },
          );
          return null;
        }
        this.checkDecline(mac, requested);
        return null;
      }
      case MessageType.Release: {
        if (serverId && serverId !== this.cfg.serverIp) return null;
        if (leases.release(mac, req.ciaddr, now)) {
          this.event(mac, "dhcp.release", { ip: req.ciaddr });
        }
        return null;
      }
      case MessageType.Inform: {
        if (req.ciaddr === ZERO) return null;
        return this.answer(req, cls, MessageType.Ack, undefined, "dhcp.inform", node.name);
      }
      default:
        return null;
    }
  }

  /** A DECLINE says another host has the address (RFC 2131 §3.1.5). Anyone may send one with a
   *  node's MAC: four broadcast packets (DISCOVER, DECLINE, DISCOVER, REQUEST) moved a running
   *  node's lease, reservation and /persist export to another address, and after the hold its
   *  address went to the next client. So it is applied only once the address is asked for on
   *  the link (ARP) and the declining MAC itself does not answer; asked after the reply path, as
   *  a DECLINE gets no reply. One question per address, MAX_DECLINE_CHECKS in all at a time:
   *  each holds a packet socket for DECLINE_PROBE_MS, which sees every ARP reply on the link;
   *  DECLINEs forged for every lease held one each at once (and a question that cannot be asked,
   *  descriptors run out, let its DECLINE stand). Past it a DECLINE is ignored: a client that
   *  really found its address taken declines it again. So is one whose question found no answer
   *  (the link flooded with ARP replies, the interface gone): taken as "nobody answers", a flood
   *  hid the node's own reply to a DECLINE forged with its MAC, and its address moved. */
  private checkDecline(mac: string, ip: string): void {
    if (this.declines.has(ip)) return;
    if (this.declines.size >= MAX_DECLINE_CHECKS) {
      this.notice("dhcp.decline-ignored", "DECLINE ignored: too many being checked", { mac, ip });
      return;
    }
    const apply = (answers: string[] | Error) => {
      this.booter.transaction(() => {
        if (answers instanceof Error) {
          log.warn("DECLINE refused: who answers at the address is not known", {
            mac,
            ip,
            error: answers,
          });
          this.event(mac, "dhcp.decline-refused", { ip, unanswered: answers.message });
          return;
        }
        if (answers.includes(mac)) {
          log.warn("DECLINE refused: the declining client answers at the address itself", {
            mac,
            ip,
          });
          this.event(mac, "dhcp.decline-refused", { ip, answeredBy: mac });
          return;
        }
        // Checked again: the lease may have moved while the address was asked for.
        if (!this.leases!.decline(mac, ip, Math.floor(this.clock() / 1000))) return;
        log.warn("client declined address (in use elsewhere)", { mac, ip, answeredBy: answers });
        this.event(mac, "dhcp.decline", { ip, answeredBy: answers });
      });
    };
    const asked = this.whoAnswers(ip)
      .catch((e) => e instanceof Error ? e : new Error(String(e)))
      .then(apply)
      .catch((e) => log.error("DECLINE failed", { mac, ip, error: e }))
      .finally(() => this.declines.delete(ip));
    this.declines.set(ip, asked);
  }

  /** Resolves once every DECLINE being checked is applied or refused. */
  async settled(): Promise<void> {
    while (this.declines.size) await Promise.all(this.declines.values());
  }

  /** OFFER/ACK with an address (full mode) or without (INFORM). */
  private answer(
    req: DhcpPacket,
    cls: Classification,
    type: MessageType,
    ip: string | undefined,
    event: EventKind,
    name?: string,
  ): Reply {
    const o = new Map<number, Uint8Array>();
    o.set(Opt.messageType, u8(type));
    o.set(Opt.serverId, ipv4Bytes(this.cfg.serverIp));
    if (ip) {
      const t = this.cfg.leaseSeconds;
      o.set(Opt.leaseTime, u32(t));
      o.set(Opt.renewalTime, u32(Math.floor(t / 2)));
      o.set(Opt.rebindingTime, u32(Math.floor((t * 7) / 8)));
    }
    o.set(Opt.subnetMask, ipv4Bytes(this.cfg.netmask));
    o.set(Opt.broadcast, ipv4Bytes(this.broadcastAddr));
    if (this.cfg.router) o.set(Opt.router, ipv4Bytes(this.cfg.router));
    if (this.cfg.dns?.length) o.set(Opt.dns, ipv4List(this.cfg.dns));
    // The node's name as its host name, for clients that ask (udhcpc, dhclient do).
    if (name && req.options.get(Opt.paramRequest)?.includes(Opt.hostname)) {
      o.set(Opt.hostname, text(name));
    }
    const packet = this.reply(req, o, ip ?? ZERO);
    if (type === MessageType.Inform || type === MessageType.Ack && req.ciaddr !== ZERO) {
      packet.ciaddr = req.ciaddr;
    }
    this.bootInfo(req, cls, packet, false);
    this.event(cls.mac, event, {
      ip: ip ?? req.ciaddr,
      firmware: cls.firmware,
      bootfile: cls.bootfile ?? null,
      ...(cls.rpi && { rpi: cls.rpi }), // what the Pi said of itself: information only
    });
    log.info(event.slice(5), { mac: cls.mac, ip: ip ?? req.ciaddr, firmware: cls.firmware });
    return this.finish(req, packet);
  }

  private nak(req: DhcpPacket, message: string): Reply {
    const o = new Map<number, Uint8Array>([
      [Opt.messageType, u8(MessageType.Nak)],
      [Opt.serverId, ipv4Bytes(this.cfg.serverIp)],
      [Opt.message, text(message)],
    ]);
    const packet = this.reply(req, o, ZERO);
    return this.finish(req, packet, true);
  }

  // ---- proxy mode (UDP 67) and the PXE boot server (UDP 4011) ----------------------------

  private proxy(req: DhcpPacket, cls: Classification, type: number): Reply | null {
    const serverId = readIp(req.options.get(Opt.serverId));
    if (type === MessageType.Request && serverId !== this.cfg.serverIp) return null;
    if (type !== MessageType.Discover && type !== MessageType.Request) return null;
    const reply = type === MessageType.Discover ? MessageType.Offer : MessageType.Ack;
    const o = new Map<number, Uint8Array>([
      [Opt.messageType, u8(reply)],
      [Opt.serverId, ipv4Bytes(this.cfg.serverIp)],
    ]);
    const packet = this.reply(req, o, ZERO);
    // port4011: a bare offer, so the firmware asks the boot server on 4011 for the file (PXE
    // spec; Pixiecore's EFI path). iPXE and HTTP boot never go to 4011: they get the file here.
    const bare = this.cfg.proxyStrategy === "port4011" && cls.firmware !== "ipxe" &&
      cls.firmware !== "uefi-http" && cls.firmware !== "rpi";
    this.bootInfo(req, cls, packet, !bare, bare);
    const event = reply === MessageType.Offer ? "dhcp.proxy-offer" : "dhcp.proxy-ack";
    this.event(cls.mac, event, {
      firmware: cls.firmware,
      bootfile: bare ? null : cls.bootfile ?? null,
      strategy: this.cfg.proxyStrategy,
    });
    log.info(event.slice(5), {
      mac: cls.mac,
      firmware: cls.firmware,
      bootfile: bare ? "(ask on port 4011)" : cls.bootfile,
    });
    return this.finish(req, packet);
  }

  private pxeBootServer(
    req: DhcpPacket,
    cls: Classification,
    type: number,
    from: { address: string; port: number },
  ): Reply | null {
    if (type !== MessageType.Request && type !== MessageType.Inform) return null;
    const o = new Map<number, Uint8Array>([
      [Opt.messageType, u8(MessageType.Ack)],
      [Opt.serverId, ipv4Bytes(this.cfg.serverIp)],
    ]);
    const packet = this.reply(req, o, ZERO);
    packet.ciaddr = req.ciaddr;
    this.bootInfo(req, cls, packet, true);
    this.event(cls.mac, "dhcp.pxe-ack", {
      ip: from.address,
      firmware: cls.firmware,
      bootfile: cls.bootfile ?? null,
    });
    log.info("pxe-ack", { mac: cls.mac, ip: from.address, bootfile: cls.bootfile });
    const bytes = encode(packet, this.maxSize(req));
    return { packet, bytes, to: { address: from.address, port: from.port } };
  }

  // ---- shared -----------------------------------------------------------------------------

  private reply(req: DhcpPacket, options: Map<number, Uint8Array>, yiaddr: string): DhcpPacket {
    return {
      op: BOOTREPLY,
      htype: req.htype,
      hlen: req.hlen,
      hops: 0,
      xid: req.xid,
      secs: 0,
      flags: req.flags,
      ciaddr: ZERO,
      yiaddr,
      siaddr: ZERO,
      giaddr: req.giaddr,
      chaddr: req.chaddr,
      sname: "",
      file: "",
      options,
    };
  }

  /** Adds what makes the client boot: next-server + file, and the vendor options PXE firmware
   *  (proxy offers), UEFI HTTP boot, the Raspberry Pi ROM and iPXE each need. */
  private bootInfo(
    req: DhcpPacket,
    cls: Classification,
    p: DhcpPacket,
    pxeVendor: boolean,
    bare = false,
  ): void {
    const o = p.options;
    if (cls.firmware === "uefi-http") o.set(Opt.vendorClass, text("HTTPClient"));
    else if (pxeVendor || bare) {
      o.set(Opt.vendorClass, text("PXEClient"));
      if (!bare) o.set(Opt.vendorSpecific, PXE_BOOT_FILE_DIRECTLY);
    }
    if (cls.firmware === "rpi") {
      o.set(Opt.vendorClass, text("PXEClient"));
      o.set(Opt.vendorSpecific, RPI_PXE_MENU);
    }
    const uuid = req.options.get(Opt.clientUuid);
    if (pxeVendor && uuid?.length === 17 && uuid[0] === 0) o.set(Opt.clientUuid, uuid);
    if (bare) {
      p.siaddr = this.cfg.serverIp;
      return;
    }
    if (cls.firmware === "rpi") {
      // The 3B+ ROM TFTPs the DHCP server unless option 66 names another (gh:raspberrypi/
      // firmware#670): in proxy mode that is the lab's server, so name ours. Text, as dnsmasq.
      p.siaddr = this.cfg.serverIp;
      o.set(Opt.tftpServer, text(this.cfg.serverIp));
    }
    if (!cls.bootfile) return;
    p.siaddr = this.cfg.serverIp;
    if (cls.bootfile.length < 128) p.file = cls.bootfile;
    o.set(Opt.bootfile, text(cls.bootfile));
    if (cls.firmware === "ipxe") o.set(Opt.ipxe, IPXE_NO_PXEDHCP);
  }

  /** Biggest reply the client accepts: 576 (RFC 2131) unless option 57 allows more. */
  private maxSize(req: DhcpPacket): number {
    const asked = readU16(req.options.get(Opt.maxMessageSize)) ?? 576;
    return Math.min(Math.max(asked, 576), 1472 + 28) - 28; // option 57 counts IP + UDP headers
  }

  /** Destination per RFC 2131 §4.1: relay, else ciaddr, else broadcast (no ARP injection). */
  private finish(req: DhcpPacket, packet: DhcpPacket, isNak = false): Reply {
    const bytes = encode(packet, this.maxSize(req));
    let to = { address: BROADCAST, port: 68 };
    if (req.giaddr !== ZERO) to = { address: req.giaddr, port: 67 };
    else if (!isNak && req.ciaddr !== ZERO) to = { address: req.ciaddr, port: 68 };
    return { packet, bytes, to };
  }
}

/** Warns (once, at start) about iPXE binaries missing from config.ipxeDir. */
export function checkIpxeFiles(dir: string): string[] {
  const missing = REQUIRED_IPXE_FILES.filter((f) => !existsSync(join(dir, f)));
  if (missing.length) {
    log.warn(
      `iPXE binaries missing from ${dir}: ${missing.join(", ")}; PXE ROM clients cannot boot ` +
        "(install the Debian package 'ipxe', or set ipxeDir)",
    );
  }
  return missing;
}

/** Runs nodes.ageOut (src/nodes.ts) now and then every tenth of the TTL (at least every second,
 *  at most every ten minutes) while the DHCP service runs; undefined when aging is off (TTL 0). */
function startAgeOut(
  nodes: { ageOut(ttlSeconds: number): unknown },
  ttlSeconds: number,
): ReturnType<typeof setInterval> | undefined {
  if (ttlSeconds <= 0) return undefined;
  const run = () => {
    try {
      nodes.ageOut(ttlSeconds);
    } catch (e) {
      log.error("aging out unbooted nodes failed", { error: e });
    }
  };
  run();
  return setInterval(run, Math.min(600_000, Math.max(1000, ttlSeconds * 100)));
}

export interface DhcpServiceOptions {
  /** The boot interface: the sockets bind to it. */
  device: string;
  ipxeDir: string;
  /** Auto-registered nodes that never booted are forgotten after this long (0: never). */
  registerTtlSeconds: number;
  responder: ResponderConfig;
}

/** The DHCP sockets on the boot interface: 67, and 4011 (PXE boot server) in proxy mode. */
function openSockets(device: string, mode: ResponderConfig["mode"]): UdpSocket[] {
  const ports = mode === "proxy" ? [67, 4011] : [67];
  const sockets: UdpSocket[] = [];
  try {
    for (const port of ports) {
      sockets.push(UdpSocket.open({ port, device, receiveBuffer: 4 << 20 }));
    }
  } catch (e) {
    for (const s of sockets) s.close();
    throw new Error(`cannot open DHCP sockets on ${device}: ${(e as Error).message}`);
  }
  return sockets;
}

export function startDhcp(
  o: DhcpServiceOptions,
  booter: DhcpBooter,
): Promise<{ name: string; stats: DhcpStats; close(): Promise<void> }> {
  const { device, responder: cfg } = o;
  checkIpxeFiles(o.ipxeDir);
  const responder = new DhcpResponder(
    cfg,
    booter,
    Date.now,
    (ip) => arpAnswers(device, ip, cfg.serverIp, DECLINE_PROBE_MS),
  );
  let sockets: UdpSocket[];
  try {
    sockets = openSockets(device, cfg.mode);
  } catch (e) {
    return Promise.reject(e);
  }
  const loops = sockets.map(async (sock) => {
    for (;;) {
      const d = await sock.recv();
      if (!d) return;
      const reply = responder.handle(d.data, { port: sock.port, from: d.from });
      if (!reply) continue;
      try {
        sock.send(reply.bytes, reply.to.address, reply.to.port);
      } catch (e) {
        responder.stats.errors++;
        log.warn("send failed", { to: reply.to.address, error: e });
      }
    }
  });
  const ageOut = startAgeOut(booter, o.registerTtlSeconds);
  log.info("listening", {
    interface: device,
    mode: cfg.mode,
    server: cfg.serverIp,
    range: cfg.range ? `${cfg.range.start}-${cfg.range.end}` : undefined,
    strategy: cfg.mode === "proxy" ? cfg.proxyStrategy : undefined,
  });
  return Promise.resolve({
    name: "dhcp",
    stats: responder.stats,
    async close() {
      clearInterval(ageOut);
      await Promise.all(sockets.map((s) => s.close()));
      await Promise.all(loops);
      await responder.settled();
      log.info("stopped", {
        ...responder.stats,
        sent: JSON.stringify(responder.stats.sent),
      });
    },
  });
}
