// iPXE scripts and the node kernel command line, as pure text rendering (no I/O): http.ts gathers
// the values, this module only formats them. The command line contract is in docs/architecture.md
// and is parsed on the node by overlay/cmdline.ts.

export interface CmdlineParams {
  mac: string;
  hostname: string;
  /** The node's IPv4 address; undefined → `ip=dhcp` (the node configures itself). */
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
  mode: string;
  timeout: string;
  tmpfs: string;
  /** console= arguments (without the key), e.g. ["tty0", "ttyS0,115200"]; the last is /dev/console. */
  consoles: string[];
  /** Per-node `kernel.cmdline`, appended last so it can override anything before it. */
  extra?: string;
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

/** A hostname safe for the `ip=` field (colons separate fields there). */
export function ipHostname(name: string): string {
  return name.replace(/[^A-Za-z0-9.-]/g, "-").slice(0, 63);
}

export function renderCmdline(p: CmdlineParams): string {
  const ip = p.nodeIp
    ? `ip=${p.nodeIp}:${p.serverIp}:${p.gateway ?? ""}:${p.netmask}:${ipHostname(p.hostname)}::off`
    : "ip=dhcp";
  const words = [
    ...p.consoles.map((c) => `console=${checkWord("console", c)}`),
    ip,
    `netroot.mac=${p.mac}`,
    `netroot.server=${p.serverIp}`,
    `netroot.url=${checkWord("url", p.url)}`,
    `netroot.root=${checkWord("root", p.root)}`,
    ...(p.persist ? [`netroot.persist=${checkWord("persist", p.persist)}`] : []),
    `netroot.nfs=${p.nfs}`,
    `netroot.image=${checkWord("image", p.imageId)}`,
    `netroot.token=${checkWord("token", p.token)}`,
    `netroot.mode=${checkWord("boot.mode", p.mode)}`,
    `netroot.timeout=${checkWord("boot.timeout", p.timeout)}`,
    `netroot.tmpfs=${checkWord("tmpfs.size", p.tmpfs)}`,
    "init=/sbin/init",
  ];
  if (p.extra !== undefined && p.extra.trim() !== "") {
    // Spaces separate arguments here, but a newline would end the iPXE `kernel` line and `${`
    // would be expanded by iPXE: refuse those rather than boot something else than asked.
    // deno-lint-ignore no-control-regex -- rejecting control characters is the point
    if (/[\x00-\x1f\x7f]|\$\{/.test(p.extra)) {
      throw new Error(
        `kernel.cmdline ${JSON.stringify(p.extra)} contains control characters or \${`,
      );
    }
    words.push(p.extra.trim().replace(/\s+/g, " "));
  }
  const line = words.join(" ");
  // x86 Linux keeps 2048 bytes (COMMAND_LINE_SIZE) and silently cuts the rest.
  if (line.length > 2047) {
    throw new Error(`kernel command line is ${line.length} bytes; Linux keeps 2047`);
  }
  return line;
}

/** Text safe inside an iPXE `echo` (no setting expansion, no line breaks). */
export function echoText(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, "?").replace(/\$/g, "S");
}

export interface BootScriptParams {
  mac: string;
  node: string;
  imageName: string;
  imageId: string;
  kernelUrl: string;
  initramfsUrl: string;
  cmdline: string;
  /** Download attempts before giving up and rebooting. */
  tries?: number;
}

/**
 * The per-node boot script. A failed download is retried (after `imgfree`, so a half-fetched image
 * is not booted) and after the last try the node reboots instead of sitting at an iPXE prompt.
 * `initrd=initramfs` on the kernel line is what EFI iPXE needs to hand the initrd over; BIOS
 * ignores it.
 */
export function renderBootScript(p: BootScriptParams): string {
  const tries = p.tries ?? 5;
  return [
    "#!ipxe",
    `echo netroot: node ${echoText(p.node)} (${p.mac})`,
    `echo netroot: image ${echoText(p.imageName)} (${p.imageId.slice(0, 12)})`,
    "set netroot-try:int32 0",
    ":retry",
    `kernel ${p.kernelUrl} initrd=initramfs ${p.cmdline} || goto failed`,
    `initrd --name initramfs ${p.initramfsUrl} || goto failed`,
    "boot || goto failed",
    ":failed",
    "imgfree ||",
    "inc netroot-try",
    `iseq \${netroot-try} ${tries} && goto giveup ||`,
    `echo netroot: download failed (try \${netroot-try} of ${tries}), retrying in 5 s`,
    "sleep 5",
    "goto retry",
    ":giveup",
    `echo netroot: boot failed ${tries} times, rebooting in 30 s`,
    "sleep 30",
    "reboot",
    "",
  ].join("\n");
}

/** A script for a node that cannot boot now: says why on its console, then reboots to try again. */
export function renderRefusalScript(reason: string, delaySeconds = 30): string {
  return [
    "#!ipxe",
    `echo netroot: ${echoText(reason)}`,
    `echo netroot: rebooting in ${delaySeconds} s`,
    `sleep ${delaySeconds}`,
    "reboot",
    "",
  ].join("\n");
}
