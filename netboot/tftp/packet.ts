// TFTP wire format (RFC 1350, options RFC 2347/2348/2349/7440): bytes <-> values, and the
// server's option negotiation. Pure: no I/O, so the fuzz test can hammer it.
//
// Strings on the wire are bytes; they are decoded as latin1 (one char per byte) so that nothing is
// lost or replaced before the path policy (resolve.ts) judges them.

export const Op = { RRQ: 1, WRQ: 2, DATA: 3, ACK: 4, ERROR: 5, OACK: 6 } as const;

/** RFC 1350 error codes, plus 8 (option negotiation refused, RFC 2347). */
export const ErrorCode = {
  notDefined: 0,
  fileNotFound: 1,
  accessViolation: 2,
  diskFull: 3,
  illegalOperation: 4,
  unknownTid: 5,
  fileExists: 6,
  noSuchUser: 7,
  optionRefused: 8,
} as const;

export type Packet =
  | { op: "RRQ" | "WRQ"; filename: string; mode: string; options: Record<string, string> }
  | { op: "DATA"; block: number; data: Uint8Array }
  | { op: "ACK"; block: number }
  | { op: "ERROR"; code: number; message: string }
  | { op: "OACK"; options: Record<string, string> };

export class TftpDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TftpDecodeError";
  }
}

// Not TextDecoder("latin1"): WHATWG maps that label to windows-1252, which changes 0x80–0x9f.
const latin1 = {
  decode(b: Uint8Array): string {
    let s = "";
    for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
    return s;
  },
};

/** Splits b into NUL-terminated strings; every string must be terminated. */
function cstrings(b: Uint8Array, what: string): string[] {
  const out: string[] = [];
  let start = 0;
  while (start < b.length) {
    const end = b.indexOf(0, start);
    if (end < 0) throw new TftpDecodeError(`${what}: string not NUL-terminated`);
    out.push(latin1.decode(b.subarray(start, end)));
    start = end + 1;
  }
  return out;
}

function optionPairs(strs: string[], what: string): Record<string, string> {
  if (strs.length % 2) throw new TftpDecodeError(`${what}: option ${strs.at(-1)} has no value`);
  const options: Record<string, string> = {};
  for (let i = 0; i < strs.length; i += 2) {
    const name = strs[i].toLowerCase(); // option names are case-insensitive (RFC 2347)
    if (name === "") throw new TftpDecodeError(`${what}: empty option name`);
    if (Object.hasOwn(options, name)) throw new TftpDecodeError(`${what}: option ${name} twice`);
    options[name] = strs[i + 1];
  }
  return options;
}

export function decode(b: Uint8Array): Packet {
  if (b.length < 2) throw new TftpDecodeError(`packet of ${b.length} bytes`);
  const op = (b[0] << 8) | b[1];
  const u16 = () => {
    if (b.length < 4) throw new TftpDecodeError(`opcode ${op}: packet of ${b.length} bytes`);
    return (b[2] << 8) | b[3];
  };
  switch (op) {
    case Op.RRQ:
    case Op.WRQ: {
      const kind = op === Op.RRQ ? "RRQ" : "WRQ";
      const strs = cstrings(b.subarray(2), kind);
      if (strs.length < 2) throw new TftpDecodeError(`${kind}: missing filename or mode`);
      return {
        op: kind,
        filename: strs[0],
        mode: strs[1].toLowerCase(),
        options: optionPairs(strs.slice(2), kind),
      };
    }
    case Op.DATA:
      return { op: "DATA", block: u16(), data: b.subarray(4) };
    case Op.ACK:
      if (b.length !== 4) throw new TftpDecodeError(`ACK of ${b.length} bytes`);
      return { op: "ACK", block: u16() };
    case Op.ERROR: {
      const code = u16();
      // Some stacks omit the final NUL of the message; accept that, it costs nothing.
      const rest = b.subarray(4);
      const end = rest.indexOf(0);
      if (end >= 0 && end !== rest.length - 1) {
        throw new TftpDecodeError("ERROR: bytes after the message");
      }
      return { op: "ERROR", code, message: latin1.decode(end < 0 ? rest : rest.subarray(0, end)) };
    }
    case Op.OACK:
      return { op: "OACK", options: optionPairs(cstrings(b.subarray(2), "OACK"), "OACK") };
    default:
      throw new TftpDecodeError(`unknown opcode ${op}`);
  }
}

function latin1Bytes(s: string, what: string): number[] {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0 || c > 255) throw new RangeError(`${what}: character ${c} cannot be sent`);
    out.push(c);
  }
  return out;
}

export function encode(p: Packet): Uint8Array {
  const bytes: number[] = [];
  const str = (s: string, what: string) => bytes.push(...latin1Bytes(s, what), 0);
  const u16 = (n: number) => {
    if (!Number.isInteger(n) || n < 0 || n > 0xffff) throw new RangeError(`not a u16: ${n}`);
    bytes.push(n >> 8, n & 0xff);
  };
  const opts = (o: Record<string, string>) => {
    for (const [k, v] of Object.entries(o)) str(k, "option name"), str(v, "option value");
  };
  switch (p.op) {
    case "RRQ":
    case "WRQ":
      u16(Op[p.op]), str(p.filename, "filename"), str(p.mode, "mode"), opts(p.options);
      break;
    case "DATA": {
      const out = new Uint8Array(4 + p.data.length);
      u16(Op.DATA), u16(p.block), out.set(bytes), out.set(p.data, 4);
      return out;
    }
    case "ACK":
      u16(Op.ACK), u16(p.block);
      break;
    case "ERROR":
      // Peers truncate long messages; keep ours short (≤ 500 bytes, as PXC does).
      u16(Op.ERROR), u16(p.code), str(p.message.slice(0, 500), "error message");
      break;
    case "OACK":
      u16(Op.OACK), opts(p.options);
      break;
  }
  return new Uint8Array(bytes);
}

/** What a read transfer runs with after negotiation. */
export interface Negotiated {
  blksize: number;
  windowsize: number;
  /** Retransmission timeout in ms. */
  timeoutMs: number;
  /** The OACK to send first, or undefined when the client asked for no option we accept. */
  oack?: Record<string, string>;
}

export interface NegotiationLimits {
  maxBlksize: number;
  maxWindowsize: number;
  defaultTimeoutMs: number;
}

const decimal = /^[0-9]{1,10}$/;
/** The largest `timeout` option taken (s). */
export const MAX_TIMEOUT_S = 10;

/** Server side of RFC 2347: accepted options are echoed (clamped) in the OACK, others ignored. */
export function negotiate(
  requested: Record<string, string>,
  fileSize: number,
  limits: NegotiationLimits,
): Negotiated {
  const oack: Record<string, string> = {};
  const num = (name: string) => {
    const v = requested[name];
    return v !== undefined && decimal.test(v) ? Number(v) : undefined;
  };
  let blksize = 512, windowsize = 1, timeoutMs = limits.defaultTimeoutMs;
  const b = num("blksize");
  if (b !== undefined && b >= 8) { // RFC 2348: 8..65464; larger requests get our maximum
    blksize = Math.min(b, limits.maxBlksize, 65464);
    oack.blksize = String(blksize);
  }
  if (num("tsize") !== undefined) oack.tsize = String(fileSize);
  const t = num("timeout");
  // RFC 2349 allows 1..255 s, echoed exactly or not at all. Past MAX_TIMEOUT_S it is not taken (the
  // client keeps its own): 255 s held a transfer slot 6 × 255 s per forged request, so 1,000
  // packets kept the server "busy" for 25 min. Boot firmware asks for a few seconds if at all.
  if (t !== undefined && t >= 1 && t <= MAX_TIMEOUT_S) {
    timeoutMs = t * 1000;
    oack.timeout = String(t);
  }
  const w = num("windowsize");
  if (w !== undefined && w >= 1) { // RFC 7440: 1..65535
    windowsize = Math.min(w, limits.maxWindowsize, 65535);
    oack.windowsize = String(windowsize);
  }
  return { blksize, windowsize, timeoutMs, oack: Object.keys(oack).length ? oack : undefined };
}
