// DHCPv4 wire format (RFC 2131 / 2132): bytes ↔ DhcpPacket. Pure: no I/O, no policy.
// Options are a map keyed by code holding the raw value bytes (so option 77 "iPXE", which iPXE
// sends without the RFC 3004 length prefix, stays exactly as received). Repeated options are
// concatenated (RFC 3396); an option 52 overload pulls options out of the file/sname fields.
import { ipv4Bytes } from "../../contract/ipv4.ts";

export const MAGIC_COOKIE = 0x63825363;
export const BOOTREQUEST = 1, BOOTREPLY = 2;
const HEADER = 236, FIXED = 240;

export class DhcpDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DhcpDecodeError";
  }
}

export interface DhcpPacket {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  xid: number;
  secs: number;
  flags: number;
  ciaddr: string;
  yiaddr: string;
  siaddr: string;
  giaddr: string;
  /** The 16-byte client hardware address field (the MAC is the first hlen bytes). */
  chaddr: Uint8Array;
  sname: string;
  file: string;
  /** Option code → value bytes, in the order first seen (pad and end excluded). */
  options: Map<number, Uint8Array>;
}

const dec = new TextDecoder("latin1");
const enc = new TextEncoder();

function ip(b: Uint8Array, off: number): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

function cString(b: Uint8Array): string {
  const end = b.indexOf(0);
  return dec.decode(end < 0 ? b : b.subarray(0, end));
}

/** Parses one option area, adding each option's value to its code's pieces in `into`; throws on
 *  an option running past the area. */
function parseOptions(area: Uint8Array, into: Map<number, Uint8Array[]>, where: string): void {
  let i = 0;
  while (i < area.length) {
    const code = area[i];
    if (code === 0) {
      i++;
      continue;
    }
    if (code === 255) return;
    if (i + 1 >= area.length) throw new DhcpDecodeError(`option ${code} truncated in ${where}`);
    const len = area[i + 1];
    if (i + 2 + len > area.length) {
      throw new DhcpDecodeError(`option ${code} (length ${len}) runs past the end of ${where}`);
    }
    const value = area.subarray(i + 2, i + 2 + len);
    const pieces = into.get(code);
    if (pieces) pieces.push(value);
    else into.set(code, [value]);
    i += 2 + len;
  }
  // No end option: tolerated (some clients pad to the end or stop short).
}

/** An option's pieces joined (RFC 3396), in one copy: joined piece by piece, a datagram of
 *  21,000 one-byte pieces of one option copied 220 MB (140 to 330 ms of the server's only thread). */
function joined(pieces: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of pieces) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export function decode(bytes: Uint8Array): DhcpPacket {
  if (bytes.length < FIXED) {
    throw new DhcpDecodeError(`packet too short: ${bytes.length} bytes (< ${FIXED})`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const op = bytes[0];
  if (op !== BOOTREQUEST && op !== BOOTREPLY) throw new DhcpDecodeError(`bad op ${op}`);
  const hlen = bytes[2];
  if (hlen > 16) throw new DhcpDecodeError(`bad hlen ${hlen}`);
  if (v.getUint32(HEADER) !== MAGIC_COOKIE) throw new DhcpDecodeError("no DHCP magic cookie");
  const pieces = new Map<number, Uint8Array[]>();
  parseOptions(bytes.subarray(FIXED), pieces, "options");
  const fileField = bytes.subarray(108, 236), snameField = bytes.subarray(44, 108);
  const overload = pieces.has(52) ? joined(pieces.get(52)!)[0] ?? 0 : 0;
  if (overload & 1) parseOptions(fileField, pieces, "file field");
  if (overload & 2) parseOptions(snameField, pieces, "sname field");
  const options = new Map([...pieces].map(([code, p]) => [code, joined(p)]));
  return {
    op,
    htype: bytes[1],
    hlen,
    hops: bytes[3],
    xid: v.getUint32(4),
    secs: v.getUint16(8),
    flags: v.getUint16(10),
    ciaddr: ip(bytes, 12),
    yiaddr: ip(bytes, 16),
    siaddr: ip(bytes, 20),
    giaddr: ip(bytes, 24),
    chaddr: bytes.slice(28, 44),
    sname: overload & 2 ? "" : cString(snameField),
    file: overload & 1 ? "" : cString(fileField),
    options,
  };
}

function putIp(out: Uint8Array, off: number, address: string): void {
  out.set(ipv4Bytes(address), off);
}

function putString(out: Uint8Array, off: number, size: number, s: string, what: string): void {
  const b = enc.encode(s);
  if (b.length >= size) throw new RangeError(`${what} longer than ${size - 1} bytes`);
  out.set(b, off);
}

/** Serializes a packet. Values longer than 255 bytes are split into repeated options (RFC 3396).
 *  `maxSize` (e.g. 576, or the client's option 57) drops trailing options that do not fit. */
export function encode(p: DhcpPacket, maxSize = 65535): Uint8Array {
  const parts: Uint8Array[] = [];
  let size = FIXED + 1; // + end option
  for (const [code, value] of p.options) {
    if (code === 0 || code === 255 || code > 255) continue;
    const chunks = Math.max(1, Math.ceil(value.length / 255));
    const opt = new Uint8Array(value.length + 2 * chunks);
    for (let c = 0, o = 0; c < chunks; c++) {
      const piece = value.subarray(c * 255, c * 255 + 255);
      opt[o] = code;
      opt[o + 1] = piece.length;
      opt.set(piece, o + 2);
      o += 2 + piece.length;
    }
    if (size + opt.length > maxSize) continue; // leave out what does not fit; keep the rest
    parts.push(opt);
    size += opt.length;
  }
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  out[0] = p.op;
  out[1] = p.htype;
  out[2] = p.hlen;
  out[3] = p.hops;
  v.setUint32(4, p.xid >>> 0);
  v.setUint16(8, p.secs);
  v.setUint16(10, p.flags);
  putIp(out, 12, p.ciaddr);
  putIp(out, 16, p.yiaddr);
  putIp(out, 20, p.siaddr);
  putIp(out, 24, p.giaddr);
  out.set(p.chaddr.subarray(0, 16), 28);
  putString(out, 44, 64, p.sname, "sname");
  putString(out, 108, 128, p.file, "file");
  v.setUint32(HEADER, MAGIC_COOKIE);
  let off = FIXED;
  for (const part of parts) {
    out.set(part, off);
    off += part.length;
  }
  out[off] = 255;
  return out;
}
