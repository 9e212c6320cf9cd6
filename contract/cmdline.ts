// The kernel command line the server renders (docs/architecture.md), parsed into what the node
// init needs. Pure: text in, BootParams out, or one CmdlineError listing every problem at once.
import { isMac, normalizeMac } from "../src/mac.ts";

export interface IpConfig {
  address: string;
  server: string;
  gateway?: string;
  netmask: string;
  prefix: number;
  hostname?: string;
}

export interface NfsTarget {
  host: string; // IPv4: the kernel does not resolve names and the initramfs has no resolver
  path: string;
}

export interface BootParams {
  mac: string;
  ip: IpConfig;
  server?: string;
  url?: string;
  root: NfsTarget;
  persist?: NfsTarget;
  nfsVersion: "3" | "4" | "4.0" | "4.1" | "4.2";
  image?: string;
  token?: string;
  mode: "auto" | "network";
  timeoutS: number;
  tmpfsSize: string;
  init: string;
  /** Arguments after ` -- ` (the kernel hands them to init). */
  initArgs: string[];
  /** Unknown `netroot.*` keys: reported, not fatal (an older init on a newer server). */
  warnings: string[];
}

export class CmdlineError extends Error {
  constructor(readonly problems: string[]) {
    super(`bad kernel command line: ${problems.join("; ")}`);
    this.name = "CmdlineError";
  }
}

/** Splits like the kernel's next_arg(): spaces separate, double quotes group (and are dropped). */
export function splitCmdline(text: string): string[] {
  const out: string[] = [];
  let cur = "";
  let quoted = false;
  let has = false;
  for (const ch of text) {
    if (ch === '"') {
      quoted = !quoted;
      has = true;
    } else if (!quoted && /\s/.test(ch)) {
      if (has) out.push(cur);
      cur = "";
      has = false;
    } else {
      cur += ch;
      has = true;
    }
  }
  if (has) out.push(cur);
  return out;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
export const isIPv4 = (s: string) => IPV4.test(s);

/** Prefix length of a contiguous netmask, or -1. */
export function netmaskPrefix(mask: string): number {
  if (!isIPv4(mask)) return -1;
  const n = mask.split(".").reduce((a, o) => a * 256 + Number(o), 0);
  const bits = n.toString(2).padStart(32, "0");
  return /^1*0*$/.test(bits) ? bits.indexOf("0") === -1 ? 32 : bits.indexOf("0") : -1;
}

/** `ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>` (static form only). */
export function parseIpParam(v: string, problems: string[]): IpConfig | undefined {
  const f = v.split(":");
  if (f.length < 4 || !f[0] || ["dhcp", "on", "any", "bootp", "rarp", "both"].includes(f[0])) {
    problems.push(
      `ip=${v}: need the static form ip=<node-ip>:<server-ip>:<gateway>:<netmask>:<hostname>::off`,
    );
    return undefined;
  }
  const [address, server, gateway, netmask, hostname] = f;
  const bad = (what: string, x: string) =>
    problems.push(`ip=: ${what} ${x} is not an IPv4 address`);
  if (!isIPv4(address)) return void bad("node address", address);
  if (server && !isIPv4(server)) return void bad("server", server);
  if (gateway && !isIPv4(gateway)) return void bad("gateway", gateway);
  const prefix = netmaskPrefix(netmask);
  if (prefix < 0) return void problems.push(`ip=: netmask ${netmask || "(empty)"} is not valid`);
  return {
    address,
    server,
    gateway: gateway && gateway !== "0.0.0.0" ? gateway : undefined,
    netmask,
    prefix,
    hostname: hostname || undefined,
  };
}

function parseNfsTarget(key: string, v: string, problems: string[]): NfsTarget | undefined {
  const i = v.indexOf(":");
  const host = v.slice(0, i);
  const path = v.slice(i + 1);
  if (i < 0 || !path.startsWith("/")) {
    problems.push(`${key}=${v}: expected <server-ip>:/export/path`);
  } else if (!isIPv4(host)) {
    problems.push(`${key}=${v}: the server must be an IPv4 address (no DNS in the initramfs)`);
  } else return { host, path };
}

const KNOWN = new Set([
  "mac",
  "server",
  "url",
  "root",
  "persist",
  "nfs",
  "image",
  "token",
  "mode",
  "timeout",
  "tmpfs",
]);

export function parseCmdline(text: string): BootParams {
  const problems: string[] = [];
  const warnings: string[] = [];
  const words = splitCmdline(text);
  const dd = words.indexOf("--");
  const kv = new Map<string, string>();
  for (const w of dd < 0 ? words : words.slice(0, dd)) {
    const eq = w.indexOf("=");
    if (eq > 0) kv.set(w.slice(0, eq), w.slice(eq + 1)); // last one wins, as for the kernel
  }
  for (const k of kv.keys()) {
    if (k.startsWith("netroot.") && !KNOWN.has(k.slice(8))) warnings.push(`unknown ${k} ignored`);
  }
  const need = (k: string) => {
    const v = kv.get(k);
    if (v === undefined || v === "") problems.push(`${k}= is missing`);
    return v || undefined;
  };

  const macText = need("netroot.mac");
  let mac = "";
  if (macText !== undefined) {
    if (isMac(macText)) mac = normalizeMac(macText);
    else problems.push(`netroot.mac=${macText} is not a MAC address`);
  }
  const ipText = need("ip");
  const ip = ipText === undefined ? undefined : parseIpParam(ipText, problems);
  const rootText = need("netroot.root");
  const root = rootText === undefined
    ? undefined
    : parseNfsTarget("netroot.root", rootText, problems);
  const persistText = kv.get("netroot.persist");
  const persist = persistText
    ? parseNfsTarget("netroot.persist", persistText, problems)
    : undefined;

  const nfs = kv.get("netroot.nfs") ?? "4.2";
  if (!["3", "4", "4.0", "4.1", "4.2"].includes(nfs)) {
    problems.push(`netroot.nfs=${nfs}: expected 3, 4, 4.0, 4.1 or 4.2`);
  }
  const mode = kv.get("netroot.mode") ?? "auto";
  if (mode !== "auto" && mode !== "network") {
    problems.push(`netroot.mode=${mode}: expected auto or network`);
  }
  const timeoutText = kv.get("netroot.timeout") ?? "180";
  const timeoutS = Number(timeoutText);
  if (!/^\d+$/.test(timeoutText) || timeoutS < 1) {
    problems.push(`netroot.timeout=${timeoutText}: expected a whole number of seconds ≥ 1`);
  }
  const tmpfsSize = kv.get("netroot.tmpfs") ?? "50%";
  const pct = /^(\d+)%$/.exec(tmpfsSize);
  if (pct ? Number(pct[1]) < 1 || Number(pct[1]) > 100 : !/^\d+[kmgKMG]?$/.test(tmpfsSize)) {
    problems.push(`netroot.tmpfs=${tmpfsSize}: expected a percentage of RAM (50%) or a size (2g)`);
  }
  const url = kv.get("netroot.url");
  if (url !== undefined && !/^https?:\/\/[^/\s]+/.test(url)) {
    problems.push(`netroot.url=${url}: expected http://<server-ip>:<port>`);
  }
  const init = kv.get("init") ?? "/sbin/init";
  if (!init.startsWith("/")) problems.push(`init=${init}: must be an absolute path`);

  if (problems.length) throw new CmdlineError(problems);
  return {
    mac,
    ip: ip!,
    server: kv.get("netroot.server"),
    url: url?.replace(/\/+$/, ""),
    root: root!,
    persist,
    nfsVersion: nfs as BootParams["nfsVersion"],
    image: kv.get("netroot.image"),
    token: kv.get("netroot.token"),
    mode: mode as BootParams["mode"],
    timeoutS,
    tmpfsSize,
    init,
    initArgs: dd < 0 ? [] : words.slice(dd + 1),
    warnings,
  };
}
