// DHCP option codes and typed value helpers (RFC 2132, RFC 4578 PXE, iPXE's encapsulated 175).
import { ipv4Bytes } from "../../contract/ipv4.ts";
import { DhcpDecodeError } from "./packet.ts";

export const Opt = {
  subnetMask: 1,
  router: 3,
  dns: 6,
  hostname: 12,
  rootPath: 17,
  broadcast: 28,
  vendorSpecific: 43,
  requestedIp: 50,
  leaseTime: 51,
  overload: 52,
  messageType: 53,
  serverId: 54,
  paramRequest: 55,
  message: 56,
  maxMessageSize: 57,
  renewalTime: 58,
  rebindingTime: 59,
  vendorClass: 60,
  clientId: 61,
  tftpServer: 66,
  bootfile: 67,
  userClass: 77,
  clientArch: 93,
  clientNdi: 94,
  clientUuid: 97,
  ipxe: 175,
} as const;

export enum MessageType {
  Discover = 1,
  Offer = 2,
  Request = 3,
  Decline = 4,
  Ack = 5,
  Nak = 6,
  Release = 7,
  Inform = 8,
}

export const messageTypeName = (t: number): string => MessageType[t]?.toLowerCase() ?? `type${t}`;

const latin1 = new TextDecoder("latin1");
const utf8 = new TextEncoder();

export const u8 = (n: number) => new Uint8Array([n]);
export function u16(n: number): Uint8Array {
  return new Uint8Array([(n >> 8) & 0xff, n & 0xff]);
}
export function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0);
  return b;
}
export function ipv4List(addresses: string[]): Uint8Array {
  const out = new Uint8Array(4 * addresses.length);
  addresses.forEach((a, i) => out.set(ipv4Bytes(a), 4 * i));
  return out;
}
export const text = (s: string) => utf8.encode(s);

/** The text without its trailing NULs (some firmware pads its strings). Trimmed as bytes: the
 *  regex /\0+$/ tries every NUL from the first, so a vendor class of 60,000 NULs then one letter
 *  (one datagram, in repeated options) took 3 s of the server's only thread. */
export function readText(v: Uint8Array | undefined): string | undefined {
  if (v === undefined) return undefined;
  let end = v.length;
  while (end > 0 && v[end - 1] === 0) end--;
  return latin1.decode(v.subarray(0, end));
}
export function readIp(v: Uint8Array | undefined): string | undefined {
  return v && v.length === 4 ? v.join(".") : undefined;
}
export function readU16(v: Uint8Array | undefined): number | undefined {
  return v && v.length >= 2 ? (v[0] << 8) | v[1] : undefined;
}

/** Sub-options inside an encapsulated option (43, 175): code → value; throws on truncation. */
export function decodeSubOptions(v: Uint8Array): Map<number, Uint8Array> {
  const out = new Map<number, Uint8Array>();
  for (let i = 0; i < v.length;) {
    const code = v[i];
    if (code === 0) {
      i++;
      continue;
    }
    if (code === 255) break;
    if (i + 1 >= v.length || i + 2 + v[i + 1] > v.length) {
      throw new DhcpDecodeError(`sub-option ${code} truncated`);
    }
    out.set(code, v.slice(i + 2, i + 2 + v[i + 1]));
    i += 2 + v[i + 1];
  }
  return out;
}

export function encodeSubOptions(entries: [number, Uint8Array][], end = false): Uint8Array {
  const size = entries.reduce((n, [, v]) => n + 2 + v.length, 0) + (end ? 1 : 0);
  const out = new Uint8Array(size);
  let o = 0;
  for (const [code, v] of entries) {
    out[o] = code;
    out[o + 1] = v.length;
    out.set(v, o + 2);
    o += 2 + v.length;
  }
  if (end) out[o] = 255;
  return out;
}

/** 175 = {176: 1}: iPXE's no-pxedhcp, so iPXE does not wait for ProxyDHCP offers. */
export const IPXE_NO_PXEDHCP = encodeSubOptions([[176, u8(1)]]);

/** 43 = {6: 8}: PXE discovery control "skip discovery, boot the file from this offer". */
export const PXE_BOOT_FILE_DIRECTLY = encodeSubOptions([[6, u8(8)]], true);

/** 43 for the Raspberry Pi ROM: a PXE boot menu whose text is "Raspberry Pi Boot" (sub-option 9:
 *  type 0, length 17, text) plus the discovery control; the ROM checks for the text. */
export const RPI_PXE_MENU = encodeSubOptions([
  [6, u8(3)],
  [10, new Uint8Array([0, ...text("PXE")])],
  [9, new Uint8Array([0, 0, 17, ...text("Raspberry Pi Boot")])],
], true);
