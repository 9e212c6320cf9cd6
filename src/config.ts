// Server configuration: embedded defaults, an optional JSON config file, then command-line flags.
import { bundledIpxeDir, defaultIpxeDir } from "./release/ipxe.ts";
import { parseArgs } from "node:util";
import { defaultDataDir } from "./datadir.ts";
import { readTextUpTo } from "./linux/fsops.ts";
import { UserError } from "./errors.ts";
import { ipToInt, ipv4Octets } from "../contract/ipv4.ts";
import { defaultRetention, type Retention } from "./events.ts";

export type DhcpMode = "full" | "proxy" | "off";
export type ProxyStrategy = "option43" | "port4011";
export type NfsMode = "kernel" | "ganesha" | "off";
/** Which API requests need the token: writes only, or reads too. */
export type ApiAuth = "writes" | "all";

export interface ServerConfig {
  dataDir: string;
  /** `host` unset: the boot interface's address and 127.0.0.1 when there is a boot interface,
   *  else 0.0.0.0. A host given (--http HOST:PORT, e.g. 0.0.0.0:8080) is the only one. */
  http: { host?: string; port: number };
  api: { auth: ApiAuth };
  /** Retention of the events table (src/events.ts). */
  events: Retention;
  /** Boot services (DHCP, TFTP) run on this interface; its IPv4 address is the server address. */
  interface?: string;
  /** IPv4 address nodes use to reach us (from --interface or --address). */
  serverIp?: string;
  /** Create and own this bridge with `address` (CIDR) — for virtual nodes. */
  bridge?: { name: string; address: string };
  dhcp: {
    mode: DhcpMode;
    range?: { start: string; end: string };
    leaseSeconds: number;
    proxyStrategy: ProxyStrategy;
    registerUnknown: boolean;
    /** How long an OFFER holds its address for the client (the lease is made at ACK). */
    offerSeconds: number;
    /** New nodes the DHCP service registers per minute on the boot interface (a burst of this
     *  many, then this many a minute). */
    registerRate: number;
    /** Auto-registered nodes kept at most (not counting those an admin added or adopted). */
    registerMax: number;
    /** Idle seconds after which an auto-registered node that never got past DHCP is forgotten
     *  (0: never). */
    registerTtlSeconds: number;
    router?: string;
    dns?: string[];
  };
  tftp: { port: number };
  /** UDP port of the netconsole receiver on the boot address (src/netconsole.ts; 0: any). */
  netconsole: { port: number };
  /** Directory holding undionly.kpxe / ipxe.efi / snponly.efi (Debian package `ipxe`). */
  ipxeDir: string;
  /** Not a setting: where a loader missing from ipxeDir is served from when --ipxe-dir is not
   *  given (the release bundle's ipxe/, e.g. ipxe-arm64.efi beside bookworm's x86 package). */
  ipxeFallbackDir?: string;
  /** `reserve`: bytes of the data dir's file system nodes' /persist may not take (src/nfs.ts,
   *  PersistRoom; 0: none); not set: 5 % of the file system, at most 1 GiB. */
  nfs: { mode: NfsMode; version: 3 | 4; reserve?: number };
  /** Send IPv6 router advertisements on the boot interface (stops iPXE's ~13 s IPv6 wait). */
  ra: boolean;
  vnode: { accel: "auto" | "kvm" | "tcg" };
  /** Log line format (--log-format; NETROOT_LOG_FORMAT when neither is given). */
  logFormat?: "text" | "json";
}

/** Read when no --config is given and it exists (`netroot install-service` writes it). */
export const DEFAULT_CONFIG_PATH = "/etc/netroot/config.json";

export function defaultConfig(): ServerConfig {
  return {
    dataDir: defaultDataDir(),
    http: { port: 8080 },
    api: { auth: "writes" },
    events: { ...defaultRetention },
    dhcp: {
      mode: "proxy",
      leaseSeconds: 86400,
      proxyStrategy: "option43",
      registerUnknown: true,
      offerSeconds: 60,
      registerRate: 60,
      registerMax: 1000,
      registerTtlSeconds: 86400,
    },
    tftp: { port: 69 },
    netconsole: { port: 6666 },
    ipxeDir: "/usr/lib/ipxe",
    nfs: { mode: "off", version: 4 },
    ra: true,
    vnode: { accel: "auto" },
  };
}

export const serveOptions = {
  config: { type: "string" },
  data: { type: "string" },
  http: { type: "string" },
  "api-auth": { type: "string" },
  interface: { type: "string" },
  bridge: { type: "string" },
  address: { type: "string" },
  "dhcp-mode": { type: "string" },
  "dhcp-range": { type: "string" },
  "lease-time": { type: "string" },
  "dhcp-router": { type: "string" },
  "proxy-strategy": { type: "string" },
  "register-unknown": { type: "string" },
  "offer-time": { type: "string" },
  "register-rate": { type: "string" },
  "register-max": { type: "string" },
  "register-ttl": { type: "string" },
  "tftp-port": { type: "string" },
  "netconsole-port": { type: "string" },
  "ipxe-dir": { type: "string" },
  nfs: { type: "string" },
  "nfs-version": { type: "string" },
  "nfs-reserve": { type: "string" },
  ra: { type: "string" },
  accel: { type: "string" },
  "log-format": { type: "string" },
  "check-config": { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/** HOST:PORT, or PORT alone (the default addresses, see ServerConfig.http). */
function parseHostPort(s: string): { host?: string; port: number } {
  const m = /^(?:(.*):)?(\d+)$/.exec(s);
  if (!m) throw new UserError(`--http expects HOST:PORT or PORT, got ${s}`);
  const port = Number(m[2]);
  if (port < 0 || port > 65535) throw new UserError(`--http port out of range: ${s}`);
  return m[1] ? { host: m[1].replace(/^\[(.*)\]$/, "$1"), port } : { port };
}

function port(name: string, v: string): number {
  if (!/^\d{1,5}$/.test(v) || Number(v) > 65535) {
    throw new UserError(`--${name} expects a port number (0-65535), got ${v}`);
  }
  return Number(v);
}

function bool(name: string, v: string): boolean {
  if (/^(true|yes|1|on)$/i.test(v)) return true;
  if (/^(false|no|0|off)$/i.test(v)) return false;
  throw new UserError(`--${name} expects true or false, got ${v}`);
}

function oneOf<T extends string>(name: string, v: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(v)) {
    throw new UserError(`--${name} must be one of ${allowed.join(", ")}, got ${v}`);
  }
  return v as T;
}

/** A whole number in [min, max] (flag text or a config file's number), or a UserError naming the
 *  flag. */
function wholeNumber(name: string, v: string | number, min: number, max: number): number {
  const n = typeof v === "number" ? v : /^\d{1,10}$/.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UserError(`--${name} expects a whole number from ${min} to ${max}, got ${v}`);
  }
  return n;
}

/** A size in bytes: a whole number, or one with unit K, M, G or T (powers of 1024), e.g. 512M. */
export function parseBytes(name: string, v: string | number): number {
  const m = /^(\d{1,15})([KMGT]?)$/.exec(String(v).trim());
  const n = m ? Number(m[1]) * 1024 ** " KMGT".indexOf(m[2] || " ") : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new UserError(
      `--${name} expects a size (bytes, or with unit K, M, G or T: 1G), got ${v}`,
    );
  }
  return n;
}

export function parseRange(s: string): { start: string; end: string } {
  const [start, end] = s.split("-").map((x) => x.trim());
  if (!start || !end || !ipv4Octets(start) || !ipv4Octets(end)) {
    throw new UserError(`--dhcp-range expects START-END IPv4 addresses, got ${s}`);
  }
  // Here, not first at the DHCP service's start: --check-config said "config ok", then serve
  // (or a SIGHUP) failed with a stack trace.
  if (ipToInt(end) < ipToInt(start)) {
    throw new UserError(`--dhcp-range ${s} is empty: its end comes before its start`);
  }
  return { start, end };
}

// ---- the config file: every key, its flag, its check ----

type Check = (v: unknown) => unknown;
interface Spec {
  [key: string]: Check | Spec;
}

const text = (flag: string): Check => (v) => {
  if (typeof v !== "string" || !v) throw new UserError(`--${flag} expects a non-empty string`);
  return v;
};
const choice = (flag: string, allowed: readonly string[]): Check => (v) =>
  oneOf(flag, String(v), allowed);
const flagBool = (flag: string): Check => (v) => {
  if (typeof v !== "boolean") throw new UserError(`--${flag} expects true or false, got ${v}`);
  return v;
};
const ipv4 = (flag: string): Check => (v) => {
  if (typeof v !== "string" || !ipv4Octets(v)) {
    throw new UserError(`--${flag} expects an IPv4 address, got ${JSON.stringify(v)}`);
  }
  return v;
};
const portNumber = (flag: string): Check => (v) => {
  if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 65535) {
    throw new UserError(`--${flag} expects a port number (0-65535), got ${JSON.stringify(v)}`);
  }
  return v;
};
/** Checked with the flags' rules after the merge (their messages name the key or flag). */
const later: Check = (v) => v;

/** Every key of the config file (the shape of ServerConfig); docs/service.md lists them. */
const FILE_SPEC: Spec = {
  dataDir: text("data"),
  http: { host: text("http"), port: portNumber("http") },
  api: { auth: later },
  events: { maxAgeDays: later, maxPerNode: later, maxOther: later },
  interface: text("interface"),
  serverIp: ipv4("address"),
  bridge: {
    name: text("bridge"),
    address: (v) => {
      if (typeof v !== "string" || !/^[\d.]+\/\d{1,2}$/.test(v) || !ipv4Octets(v.split("/")[0])) {
        throw new UserError(`--address expects A.B.C.D/NN, got ${JSON.stringify(v)}`);
      }
      return v;
    },
  },
  dhcp: {
    mode: later,
    range: (v) =>
      typeof v === "string"
        ? parseRange(v)
        : parseRange(`${(v as { start?: unknown })?.start}-${(v as { end?: unknown })?.end}`),
    leaseSeconds: (v) => wholeNumber("lease-time", v as number, 60, 10 * 365 * 86400),
    proxyStrategy: choice("proxy-strategy", ["option43", "port4011"]),
    registerUnknown: flagBool("register-unknown"),
    offerSeconds: later,
    registerRate: later,
    registerMax: later,
    registerTtlSeconds: later,
    router: ipv4("dhcp-router"),
    dns: (v) => {
      if (!Array.isArray(v) || v.some((a) => typeof a !== "string" || !ipv4Octets(a))) {
        throw new UserError(`expects a list of IPv4 addresses, got ${JSON.stringify(v)}`);
      }
      return v;
    },
  },
  tftp: { port: portNumber("tftp-port") },
  netconsole: { port: portNumber("netconsole-port") },
  ipxeDir: text("ipxe-dir"),
  nfs: {
    mode: choice("nfs", ["kernel", "ganesha", "off"]),
    version: choice("nfs-version", ["3", "4"]),
    reserve: (v) => parseBytes("nfs-reserve", v as string | number),
  },
  ra: flagBool("ra"),
  vnode: { accel: choice("accel", ["auto", "kvm", "tcg"]) },
  logFormat: choice("log-format", ["text", "json"]),
};

/** The file's object checked against the spec: unknown keys and bad values are a UserError naming
 *  the key; values come back normalised (a "START-END" range becomes {start, end}). */
function checkFileValues(obj: unknown, spec: Spec, prefix = ""): Record<string, unknown> {
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
    throw new UserError(`config key ${prefix || "(top level)"} expects an object`);
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix}.${k}` : k;
    const rule = Object.hasOwn(spec, k) ? spec[k] : undefined;
    if (!rule) {
      throw new UserError(`config key ${key} is unknown (keys: ${Object.keys(spec).join(", ")})`);
    }
    if (typeof rule !== "function") {
      out[k] = checkFileValues(v, rule, key);
      continue;
    }
    try {
      out[k] = key === "nfs.version" ? Number(rule(String(v))) : rule(v);
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      throw new UserError(`config key ${key}: ${e.message}`);
    }
  }
  return out;
}

/** The config file to read: --config, else DEFAULT_CONFIG_PATH when it exists, else none. */
export function configPath(args: string[]): string | undefined {
  const { values } = parseArgs({ args, options: serveOptions, allowPositionals: false });
  if (values.config) return values.config;
  try {
    Deno.statSync(DEFAULT_CONFIG_PATH);
    return DEFAULT_CONFIG_PATH;
  } catch {
    return undefined;
  }
}

/** The config file's text: a regular file (a FIFO there held serve's start, or a SIGHUP's reload
 *  and the SIGTERM waiting for it, for ever) of at most 1 MiB (a wrong --config of a big file was
 *  read whole). */
async function readConfigText(path: string): Promise<string> {
  if (!(await Deno.stat(path)).isFile) throw new Error("not a regular file");
  const text = await readTextUpTo(path, 1 << 20);
  if (text === undefined) throw new Error("larger than 1 MiB");
  return text;
}

/** Merge a config file (JSON, same shape as ServerConfig, partial) and flags over the defaults. */
export async function loadServeConfig(args: string[]): Promise<ServerConfig> {
  const { values } = parseArgs({ args, options: serveOptions, allowPositionals: false });
  const cfg = defaultConfig();
  let fileSetsDhcpMode = false;
  let ipxeGiven = values["ipxe-dir"] !== undefined;
  const path = configPath(args);
  if (path) {
    let raw: unknown;
    try {
      raw = JSON.parse(await readConfigText(path));
    } catch (e) {
      throw new UserError(`cannot read config file ${path}: ${(e as Error).message}`);
    }
    const file = checkFileValues(raw, FILE_SPEC) as Partial<ServerConfig>;
    Object.assign(cfg, file, {
      http: { ...cfg.http, ...file.http },
      dhcp: { ...cfg.dhcp, ...file.dhcp },
      tftp: { ...cfg.tftp, ...file.tftp },
      netconsole: { ...cfg.netconsole, ...file.netconsole },
      nfs: { ...cfg.nfs, ...file.nfs },
      vnode: { ...cfg.vnode, ...file.vnode },
      api: { ...cfg.api, ...file.api },
      events: { ...cfg.events, ...file.events },
    });
    fileSetsDhcpMode = file.dhcp?.mode !== undefined;
    ipxeGiven ||= file.ipxeDir !== undefined;
    if (file.bridge) {
      if (!file.bridge.name || !file.bridge.address) {
        throw new UserError("config key bridge needs both name and address (A.B.C.D/NN)");
      }
      cfg.interface ??= file.bridge.name;
      cfg.serverIp ??= file.bridge.address.split("/")[0];
    }
  }
  if (values["log-format"]) {
    cfg.logFormat = oneOf("log-format", values["log-format"], ["text", "json"] as const);
  }
  if (values.data) cfg.dataDir = values.data;
  if (values.http) cfg.http = parseHostPort(values.http);
  if (values["api-auth"]) cfg.api.auth = values["api-auth"] as ApiAuth;
  cfg.api.auth = oneOf("api-auth", cfg.api.auth, ["writes", "all"] as const);
  // Bounded: past a date's range (≈ 273,790 years) every prune pass failed on the cutoff, and
  // the counts (run after it) with it, so the events table grew for ever; past SQLite's integers
  // the count's OFFSET failed the same way.
  for (
    const [k, max] of [["maxAgeDays", 36_500], ["maxPerNode", 1e9], ["maxOther", 1e9]] as const
  ) {
    const v = cfg.events[k];
    if (!Number.isInteger(v) || v < 1 || v > max) {
      throw new UserError(`config events.${k} expects a whole number from 1 to ${max}, got ${v}`);
    }
  }
  if (values.interface) cfg.interface = values.interface;
  if (values.bridge) {
    if (!values.address) throw new UserError("--bridge needs --address A.B.C.D/NN");
    cfg.bridge = { name: values.bridge, address: values.address };
    cfg.interface ??= values.bridge;
  }
  if (values.address && !ipv4Octets(values.address.split("/")[0])) {
    throw new UserError(`--address expects A.B.C.D or A.B.C.D/NN, got ${values.address}`);
  }
  // With --bridge too: a reused bridge may hold other addresses, and the first one is not ours.
  if (values.address) cfg.serverIp = values.address.split("/")[0];
  if (values["dhcp-range"]) cfg.dhcp.range = parseRange(values["dhcp-range"]);
  if (values["dhcp-mode"]) {
    cfg.dhcp.mode = oneOf("dhcp-mode", values["dhcp-mode"], ["full", "proxy", "off"] as const);
  } else if (!fileSetsDhcpMode) cfg.dhcp.mode = cfg.dhcp.range ? "full" : "proxy";
  // A config file's values get the same checks as the flags.
  cfg.dhcp.mode = oneOf("dhcp-mode", cfg.dhcp.mode, ["full", "proxy", "off"] as const);
  if (cfg.dhcp.mode === "full" && !cfg.dhcp.range) {
    throw new UserError("--dhcp-mode full needs --dhcp-range START-END");
  }
  if (values["dhcp-router"]) {
    if (!ipv4Octets(values["dhcp-router"])) {
      throw new UserError(`--dhcp-router expects an IPv4 address, got ${values["dhcp-router"]}`);
    }
    cfg.dhcp.router = values["dhcp-router"];
  }
  if (values["lease-time"]) {
    const n = Number(values["lease-time"]);
    if (!Number.isInteger(n) || n < 60) throw new UserError("--lease-time expects seconds ≥ 60");
    cfg.dhcp.leaseSeconds = n;
  }
  if (values["proxy-strategy"]) {
    cfg.dhcp.proxyStrategy = oneOf(
      "proxy-strategy",
      values["proxy-strategy"],
      [
        "option43",
        "port4011",
      ] as const,
    );
  }
  if (values["register-unknown"]) {
    cfg.dhcp.registerUnknown = bool("register-unknown", values["register-unknown"]);
  }
  // Flag over file over default, the file's values checked like the flags.
  const d = cfg.dhcp;
  d.offerSeconds = wholeNumber("offer-time", values["offer-time"] ?? d.offerSeconds, 5, 3600);
  d.registerRate = wholeNumber("register-rate", values["register-rate"] ?? d.registerRate, 1, 1e6);
  d.registerMax = wholeNumber("register-max", values["register-max"] ?? d.registerMax, 1, 1e7);
  d.registerTtlSeconds = wholeNumber(
    "register-ttl",
    values["register-ttl"] ?? d.registerTtlSeconds,
    0,
    10 * 365 * 86400,
  );
  if (d.registerTtlSeconds > 0 && d.registerTtlSeconds < 60) {
    throw new UserError(
      `--register-ttl expects 0 (never) or seconds ≥ 60, got ${d.registerTtlSeconds}`,
    );
  }
  if (values["tftp-port"]) cfg.tftp.port = port("tftp-port", values["tftp-port"]);
  if (values["netconsole-port"]) {
    cfg.netconsole.port = port("netconsole-port", values["netconsole-port"]);
  }
  if (values["ipxe-dir"]) cfg.ipxeDir = values["ipxe-dir"];
  // Not given: the system's iPXE, else the release bundle's (src/release/ipxe.ts).
  if (!ipxeGiven) {
    cfg.ipxeDir = defaultIpxeDir();
    const bundled = bundledIpxeDir();
    if (bundled && bundled !== cfg.ipxeDir) cfg.ipxeFallbackDir = bundled;
  }
  if (values.nfs) cfg.nfs.mode = oneOf("nfs", values.nfs, ["kernel", "ganesha", "off"] as const);
  if (values["nfs-version"]) {
    cfg.nfs.version = Number(oneOf("nfs-version", values["nfs-version"], ["3", "4"])) as 3 | 4;
  }
  if (values["nfs-reserve"]) cfg.nfs.reserve = parseBytes("nfs-reserve", values["nfs-reserve"]);
  if (values.ra) cfg.ra = bool("ra", values.ra);
  if (values.accel) {
    cfg.vnode.accel = oneOf("accel", values.accel, ["auto", "kvm", "tcg"] as const);
  }
  return cfg;
}
