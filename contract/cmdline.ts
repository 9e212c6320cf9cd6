// The kernel command line: the one contract between the server, which renders it into the node's
// iPXE script (netboot/http.ts), and the node init, which parses /proc/cmdline (overlay/init.ts).
// Rendering, parsing, the defaults and the value rules live here only: a node setting is accepted
// (src/nodes.ts) exactly when the node accepts it on its command line, and a value the server
// renders is one the node parses. Pure: text in, values out. Keys: docs/architecture.md.
import { isIPv4, netmaskPrefix } from "./ipv4.ts";
import { isMac, parseMac } from "./mac.ts";

export const NFS_VERSIONS = ["3", "4", "4.0", "4.1", "4.2"] as const;
export type NfsVersion = typeof NFS_VERSIONS[number];
export const BOOT_MODES = ["auto", "network"] as const;
export type BootMode = typeof BOOT_MODES[number];

/** What a missing key (on the command line) or a missing node setting (on the server) means. */
export const DEFAULTS = {
  mode: "auto" as BootMode,
  timeoutS: 180,
  tmpfs: "50%",
  nfs: "4.2" as NfsVersion,
  init: "/sbin/init",
};

/** A value rule: the node's parser and the server's setting validator both apply it. */
export interface ValueRule {
  /** What is expected, for error messages ("a whole number of seconds between 10 and 3600"). */
  expected: string;
  test(value: string): boolean;
}

/** The rules of the values a node setting puts on the command line. */
export const RULES = {
  /** netroot.mode (setting boot.mode) */
  mode: { expected: "auto or network", test: (v) => (BOOT_MODES as readonly string[]).includes(v) },
  /** netroot.timeout (setting nfs.timeout): the NFS retry budget. */
  timeout: {
    expected: "a whole number of seconds between 10 and 3600",
    test: (v) => /^\d+$/.test(v) && Number(v) >= 10 && Number(v) <= 3600,
  },
  /** netroot.tmpfs (setting tmpfs.size): mount(2)'s tmpfs size=, a share of RAM or a size. */
  tmpfs: {
    expected: "a percentage of RAM (1%-100%) or a size like 512m",
    test: (v) => {
      const pct = /^(\d{1,3})%$/.exec(v);
      if (pct) return Number(pct[1]) >= 1 && Number(pct[1]) <= 100;
      return /^\d+[kmgKMG]?$/.test(v) && !/^0+[kmgKMG]?$/.test(v);
    },
  },
  nfs: { expected: "3, 4, 4.0, 4.1 or 4.2", test: (v) => NFS_VERSIONS.some((n) => n === v) },
  /** netroot.ssh: the server's public key, `ssh-ed25519:<base64>` (a space would end the word). */
  ssh: {
    expected: "ssh-ed25519:<base64 key>",
    test: (v) => /^ssh-ed25519:AAAAC3NzaC1lZDI1NTE5[A-Za-z0-9+/]{20,200}={0,2}$/.test(v),
  },
} satisfies Record<string, ValueRule>;

/** The server's public key line (`ssh-ed25519 AAAA… comment`) as one command-line word. */
export function encodeSshKey(publicKeyLine: string): string {
  const [type, blob] = publicKeyLine.trim().split(/\s+/);
  const word = `${type}:${blob}`;
  if (!RULES.ssh.test(word)) {
    throw new Error(`the server's ssh key is not ${RULES.ssh.expected}: ${publicKeyLine.trim()}`);
  }
  return word;
}

/** `netroot.ssh`'s value as an authorized_keys key (`ssh-ed25519 AAAA…`). */
export function decodeSshKey(word: string): string {
  return word.replace(":", " ");
}

// ---- the server side: rendering ------------------------------------------------------------

export interface CmdlineValues {
  mac: string;
  hostname: string;
  /** The node's IPv4 address; undefined → `ip=dhcp` (which the netroot init refuses). */
  nodeIp?: string;
  serverIp: string;
  gateway?: string;
  netmask: string;
  /** Base URL of the HTTP server as the node sees it (reports, manifests). */
  url: string;
  /** `<server>:<path>` of the read-only image export. */
  root: string;
  /** `<server>:<path>` of the node's /persist export; undefined when persist is off. */
  persist?: string;
  nfs: "4.2" | "3";
  imageId: string;
  token: string;
  /** The node settings boot.mode, nfs.timeout, tmpfs.size; undefined or "" → DEFAULTS. */
  mode?: string;
  timeout?: string;
  tmpfs?: string;
  /** The server's ssh public key line (src/sshkeys.ts): netroot init adds it to the new root's
   *  /root/.ssh/authorized_keys (soft reboot, node run); undefined → none. */
  sshKey?: string;
  /** console= arguments (without the key), e.g. ["tty0", "ttyS0,115200"]; the last is /dev/console. */
  consoles: string[];
  /** The kernel's netconsole to the server (node setting console.netconsole=true): UDP port of
   *  the server's receiver and the MAC the node sends to (the server's, on the boot network). */
  netconsole?: { port: number; serverMac: string };
  /** Per-node `kernel.cmdline`, appended last so it can override anything before it. */
  extra?: string;
}

/** The UDP source port of the node's netconsole (the kernel's default). */
export const NETCONSOLE_SOURCE_PORT = 6665;

/** The kernel's `netconsole=[src-port]@[src-ip]/[dev],[tgt-port]@<tgt-ip>/[tgt-mac]`. The device
 *  is left empty: only the node init knows the NIC's name (netconsoleOnDevice fills it in). */
export function netconsoleParam(nodeIp: string, serverIp: string, port: number, mac: string) {
  if (!isMac(mac)) throw new Error(`netconsole: ${JSON.stringify(mac)} is not a MAC address`);
  return `${NETCONSOLE_SOURCE_PORT}@${nodeIp}/,${port}@${serverIp}/${parseMac(mac)}`;
}

/** A `netconsole=` value with the local device named (kept when it names one already). */
export function netconsoleOnDevice(value: string, ifname: string): string {
  const comma = value.indexOf(",");
  const local = comma < 0 ? value : value.slice(0, comma);
  return local.endsWith("/") ? `${local}${ifname}${value.slice(local.length)}` : value;
}

/** Characters that would break a command line word, the iPXE script line, or the `ip=` fields. */
// deno-lint-ignore no-control-regex -- rejecting control characters is the point
const unsafeWord = /[\s\x00-\x1f\x7f"'\\$]/;

/** Throws (with the setting name) when a value cannot be put on the command line as one word. */
export function checkWord(name: string, value: string): string {
  if (value === "" || unsafeWord.test(value)) {
    throw new Error(`${name} ${JSON.stringify(value)} cannot go on the kernel command line`);
  }
  return value;
}

/** A setting's value (or its default) checked against its rule; throws naming the setting. */
function ruled(name: string, rule: ValueRule, value: string | undefined, fallback: string) {
  const v = value || fallback;
  if (!rule.test(v)) throw new Error(`${name} ${JSON.stringify(v)}: expected ${rule.expected}`);
  return v;
}

/** A hostname safe for the `ip=` field (colons separate fields there). */
export function ipHostname(name: string): string {
  return name.replace(/[^A-Za-z0-9.-]/g, "-").slice(0, 63);
}

/** Words iPXE reads as the end of the `kernel` command: `||`, `&&` and `;` start another command
 *  (`&& chain http://elsewhere/`), a word from `#` on is a comment (the `|| goto failed` after it
 *  is lost). */
const ipxeTerminator = /(^|\s)((\|\||&&|;)(\s|$)|#)/;

/** Throws when the per-node `kernel.cmdline` cannot be appended to the iPXE `kernel` line as
 *  kernel arguments only: a newline would end the line, `${` would be expanded by iPXE, and a
 *  terminator word would run an iPXE command of the setter's choosing. Refused rather than boot
 *  something else than asked. */
export function checkExtra(extra: string): string {
  // deno-lint-ignore no-control-regex -- rejecting control characters is the point
  if (/[\x00-\x1f\x7f]|\$\{/.test(extra)) {
    throw new Error(`kernel.cmdline ${JSON.stringify(extra)} contains control characters or \${`);
  }
  if (ipxeTerminator.test(extra)) {
    throw new Error(
      `kernel.cmdline ${JSON.stringify(extra)}: a word must not be ||, && or ; or start with #`,
    );
  }
  return extra;
}

/** The per-node `kernel.cmdline`, as words (checkExtra). */
function extraWords(extra: string | undefined): string[] {
  if (extra === undefined || extra.trim() === "") return [];
  return [checkExtra(extra).trim().replace(/\s+/g, " ")];
}

/** What the boot loader's kernel line puts before the command line: EFI iPXE hands the initrd
 *  over by this name (netboot/ipxe.ts); the kernel counts it with the rest. */
export const LOADER_ARGS = "initrd=initramfs";

/** What x86 Linux gets from iPXE before the command line, at most: under EFI the image's name
 *  first (iPXE's LoadOptions are `<name> <arguments>`, the name the last segment of the kernel's
 *  URL, `…/kernel`: src/boot/plan.ts), then LOADER_ARGS; BIOS iPXE passes the arguments alone. */
const LOADER_PREFIX = `kernel ${LOADER_ARGS} `;

/** The bytes of command line x86 Linux keeps (COMMAND_LINE_SIZE less its NUL); BIOS iPXE keeps
 *  one less of its arguments (snprintf into the header's cmdline_size, 2047, NUL included),
 *  which LOADER_PREFIX's name more than covers. */
const KERNEL_ARGS_MAX = 2047;

/** The command line the server sends; throws a one-line reason when it cannot be rendered. */
export function renderCmdline(v: CmdlineValues): string {
  const ip = v.nodeIp
    ? `ip=${v.nodeIp}:${v.serverIp}:${v.gateway ?? ""}:${v.netmask}:${ipHostname(v.hostname)}::off`
    : "ip=dhcp";
  const words = [
    ...v.consoles.map((c) => `console=${checkWord("console", c)}`),
    ip,
    `netroot.mac=${v.mac}`,
    `netroot.server=${v.serverIp}`,
    `netroot.url=${checkWord("url", v.url)}`,
    `netroot.root=${checkWord("root", v.root)}`,
    ...(v.persist ? [`netroot.persist=${checkWord("persist", v.persist)}`] : []),
    `netroot.nfs=${v.nfs}`,
    `netroot.image=${checkWord("image", v.imageId)}`,
    `netroot.token=${checkWord("token", v.token)}`,
    `netroot.mode=${ruled("boot.mode", RULES.mode, v.mode, DEFAULTS.mode)}`,
    `netroot.timeout=${ruled("nfs.timeout", RULES.timeout, v.timeout, `${DEFAULTS.timeoutS}`)}`,
    `netroot.tmpfs=${ruled("tmpfs.size", RULES.tmpfs, v.tmpfs, DEFAULTS.tmpfs)}`,
    ...(v.sshKey ? [`netroot.ssh=${encodeSshKey(v.sshKey)}`] : []),
    ...(v.netconsole && v.nodeIp
      ? [
        `netconsole=${
          netconsoleParam(v.nodeIp, v.serverIp, v.netconsole.port, v.netconsole.serverMac)
        }`,
      ]
      : []),
    `init=${DEFAULTS.init}`,
    ...extraWords(v.extra),
  ];
  const line = words.join(" ");
  // Silently cut past it, the per-node words last: what the kernel gets is the iPXE kernel line's
  // arguments (the loader's first), in bytes (UTF-8: a setting of 1,000 `é` took 2,000).
  const bytes = new TextEncoder().encode(`${LOADER_PREFIX}${line}`).length;
  if (bytes > KERNEL_ARGS_MAX) {
    throw new Error(
      `kernel command line is ${bytes} bytes with iPXE's "${LOADER_PREFIX.trim()}"; Linux keeps ` +
        `${KERNEL_ARGS_MAX}`,
    );
  }
  return line;
}

// ---- the node side: parsing ----------------------------------------------------------------

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
  nfsVersion: NfsVersion;
  image?: string;
  token?: string;
  mode: BootMode;
  timeoutS: number;
  tmpfsSize: string;
  /** The server's public key for root's authorized_keys (`ssh-ed25519 AAAA…`), if sent. */
  sshKey?: string;
  init: string;
  /** The kernel's `netconsole=` value, when there is one (the init loads netconsole with it). */
  netconsole?: string;
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
  "ssh",
]);

/** The words before ` -- ` as key → value (the last one wins, as for the kernel). */
function keyValues(words: string[]): Map<string, string> {
  const kv = new Map<string, string>();
  for (const w of words) {
    const eq = w.indexOf("=");
    if (eq > 0) kv.set(w.slice(0, eq), w.slice(eq + 1));
  }
  return kv;
}

/** The key's value (or `fallback`), with a problem noted when it breaks its rule. */
function ruledKey(
  kv: Map<string, string>,
  key: string,
  rule: ValueRule,
  fallback: string,
  problems: string[],
): string {
  const v = kv.get(key) ?? fallback;
  if (!rule.test(v)) problems.push(`${key}=${v}: expected ${rule.expected}`);
  return v;
}

/** The keys every boot needs: the NIC, its address and the image export. */
function parseIdentity(kv: Map<string, string>, problems: string[]) {
  const need = (k: string) => {
    const v = kv.get(k);
    if (v === undefined || v === "") problems.push(`${k}= is missing`);
    return v || undefined;
  };
  const macText = need("netroot.mac");
  const mac = macText === undefined ? undefined : isMac(macText) ? parseMac(macText) : undefined;
  if (macText !== undefined && !mac) problems.push(`netroot.mac=${macText} is not a MAC address`);
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
  return { mac: mac ?? "", ip: ip!, root: root!, persist };
}

/** /proc/cmdline as the node init needs it, or one CmdlineError listing every problem at once. */
export function parseCmdline(text: string): BootParams {
  const problems: string[] = [];
  const words = splitCmdline(text);
  const dd = words.indexOf("--");
  const kv = keyValues(dd < 0 ? words : words.slice(0, dd));
  const warnings = [...kv.keys()].filter((k) => k.startsWith("netroot.") && !KNOWN.has(k.slice(8)))
    .map((k) => `unknown ${k} ignored`);
  const id = parseIdentity(kv, problems);
  // The node's kernel.cmdline comes last and its ip= wins: a hostname longer than Linux takes
  // (HOST_NAME_MAX) failed sethostname(2), a fatal network stage at every boot; it is left out.
  const hostname = id.ip?.hostname;
  if (hostname !== undefined && new TextEncoder().encode(hostname).length > 64) {
    warnings.push(
      `ip=: hostname ${hostname.slice(0, 16)}… is ${hostname.length} characters, ` +
        `more than the 64 bytes Linux takes: not set`,
    );
    id.ip.hostname = undefined;
  }
  const nfs = ruledKey(kv, "netroot.nfs", RULES.nfs, DEFAULTS.nfs, problems);
  const mode = ruledKey(kv, "netroot.mode", RULES.mode, DEFAULTS.mode, problems);
  const timeout = ruledKey(kv, "netroot.timeout", RULES.timeout, `${DEFAULTS.timeoutS}`, problems);
  const tmpfsSize = ruledKey(kv, "netroot.tmpfs", RULES.tmpfs, DEFAULTS.tmpfs, problems);
  const url = kv.get("netroot.url");
  if (url !== undefined && !/^https?:\/\/[^/\s]+/.test(url)) {
    problems.push(`netroot.url=${url}: expected http://<server-ip>:<port>`);
  }
  const ssh = kv.get("netroot.ssh");
  if (ssh !== undefined && !RULES.ssh.test(ssh)) {
    problems.push(`netroot.ssh=${ssh.slice(0, 80)}: expected ${RULES.ssh.expected}`);
  }
  const init = kv.get("init") ?? DEFAULTS.init;
  if (!init.startsWith("/")) problems.push(`init=${init}: must be an absolute path`);

  if (problems.length) throw new CmdlineError(problems);
  return {
    ...id,
    server: kv.get("netroot.server"),
    url: url?.replace(/\/+$/, ""),
    nfsVersion: nfs as NfsVersion,
    image: kv.get("netroot.image"),
    token: kv.get("netroot.token"),
    mode: mode as BootMode,
    timeoutS: Number(timeout),
    tmpfsSize,
    ...(ssh === undefined ? {} : { sshKey: decodeSshKey(ssh) }),
    init,
    ...(kv.get("netconsole") ? { netconsole: kv.get("netconsole") } : {}),
    initArgs: dd < 0 ? [] : words.slice(dd + 1),
    warnings,
  };
}
