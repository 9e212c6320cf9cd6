// The server's ssh access to its nodes: how a node is rebooted cleanly (`reboot` through the
// image's own sshd) and how `node run` / `node shell` reach it. Nothing netroot-specific runs on
// the node: netroot init writes the server's public key into the new root's authorized_keys
// (overlay/sshkey.ts; the key travels as netroot.ssh on the kernel command line).
//
//   <data>/ssh/              0700
//     id_ed25519(.pub)       the server's key pair, made with ssh-keygen on first need (0600)
//     known_hosts            the nodes' host keys, pinned from their images (HostKeyAlias:
//                            hostKeyAlias(name))
//
// The node is authenticated by the host keys of the image it booted (`/etc/ssh/ssh_host_*_key.pub`
// in the image tree, which the server holds): an image without them cannot be told from an
// impostor at the node's address, so the server does not ssh to it (soft reboots go hard).
// Every ssh is BatchMode (no password prompt), no agent, no X11, no user config.
import { join } from "node:path";
import { resolveInRoot } from "../contract/rootpath.ts";
import { bootedImages } from "./boots.ts";
import type { Context } from "./context.ts";
import { UserError } from "./errors.ts";
import { logger } from "./log.ts";
import { syncFileSync, writeFileDurableSync } from "./linux/fsops.ts";
import type { NodeInfo } from "./nodes.ts";
import { probePort, tcpProbe } from "./nodestate.ts";
import { lastLine, PowerError, runTool, type ToolResult } from "./power/driver.ts";
import { type RebootTarget, type SoftReboot, softTimeoutMs } from "./reboot.ts";

const log = logger("ssh");

/** How long ssh may take to connect (ConnectTimeout). */
export const connectTimeoutS = 10; // also bounds sshd's banner: a busy node is not "gone"
/** A host key file larger than this in an image is ignored (they are ~100 bytes). */
const maxHostKeyFile = 16 * 1024;
/** An image's /etc/ssh directory larger than this is not read (Debian's: 4 KiB, 15 names; 64 KiB
 *  holds ~2,000 names of a key's length). Its listing and a key per name were read on the server's
 *  only thread at a node's first ssh or watchdog check, or a GET of its ssh target (open to the
 *  boot network): 100,000 key files named `ssh_host_N_key.pub` in an image took 8.7 s, and pinned
 *  8.6 MB that known_hosts rewrote for every other node's pin and each ssh then parsed. */
const maxSshDirBytes = 64 * 1024;
/** Host keys taken from an image at most: one per type (ed25519, rsa, ecdsa; dsa of old ones). */
const maxHostKeys = 8;
/** Host key types ssh pins (a line of another form in the image is skipped), each at most as long
 *  as ssh takes one: an RSA key of 16,384 bits, OpenSSH's largest, is 2,764 characters of base64.
 *  Every node of an image carries its keys in known_hosts: 8 of 16 KiB for 200 nodes were 26 MB,
 *  built again at each GET of a node's ssh target (175 ms of the server's only thread). */
const hostKeyLine =
  /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) ([A-Za-z0-9+/]{1,2764}={0,2})(?:\s|$)/;

/** The server's key pair, generated once with ssh-keygen (sync: a few ms, once). */
export class ServerKey {
  #public?: string;
  #failedAt = 0;
  #failure = "";
  constructor(readonly dir: string) {}

  get privateKey(): string {
    return join(this.dir, "id_ed25519");
  }
  get knownHosts(): string {
    return join(this.dir, "known_hosts");
  }

  /** `ssh-ed25519 AAAA… netroot@host`, made on first need; throws a one-line reason. */
  publicKey(): string {
    if (this.#public) return this.#public;
    // A missing ssh-keygen is not retried on every boot script (once a minute).
    if (Date.now() - this.#failedAt < 60_000) throw new UserError(this.#failure, 503);
    try {
      this.#public = this.#load();
      return this.#public;
    } catch (e) {
      this.#failedAt = Date.now();
      this.#failure = (e as Error).message;
      log.warn("no ssh key: nodes are rebooted hard and node run is off", { error: this.#failure });
      throw new UserError(this.#failure, 503);
    }
  }

  #load(): string {
    Deno.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    Deno.chmodSync(this.dir, 0o700);
    try {
      const pub = Deno.readTextFileSync(`${this.privateKey}.pub`).trim();
      if (/^ssh-ed25519 \S+/.test(pub) && Deno.statSync(this.privateKey).size > 0) return pub;
      log.warn("the server's ssh key is damaged (empty or torn): making a new one", {
        key: this.privateKey,
      });
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    // A private key without its .pub, or a damaged pair (ssh-keygen cut short, a power cut before
    // the pair reached the disk): made anew.
    for (const f of [this.privateKey, `${this.privateKey}.pub`]) {
      try {
        Deno.removeSync(f);
      } catch { /* none */ }
    }
    let out: Deno.CommandOutput;
    try {
      out = new Deno.Command("ssh-keygen", {
        args: [
          "-q",
          "-t",
          "ed25519",
          "-N",
          "",
          "-C",
          `netroot@${Deno.hostname()}`,
          "-f",
          this.privateKey,
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).outputSync();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error("ssh-keygen not found: install the Debian package openssh-client");
      }
      throw e;
    }
    if (!out.success) {
      throw new Error(`ssh-keygen failed: ${new TextDecoder().decode(out.stderr).trim()}`);
    }
    Deno.chmodSync(this.privateKey, 0o600);
    // ssh-keygen writes both files in place without a flush: on the disk before nodes get the key.
    syncFileSync(this.privateKey);
    syncFileSync(`${this.privateKey}.pub`);
    return Deno.readTextFileSync(`${this.privateKey}.pub`).trim();
  }
}

/** The host key lines (`type base64`) of an image, from its /etc/ssh/ssh_host_*_key.pub, resolved
 *  inside the image; bounded and validated (the image is untrusted). */
export function imageHostKeys(rootfs: string): string[] {
  const dir = resolveInRoot(rootfs, "/etc/ssh");
  if (dir.missing) return [];
  const keys: string[] = [];
  let names: string[];
  try {
    const st = Deno.statSync(dir.host);
    if (!st.isDirectory) return [];
    if (st.size > maxSshDirBytes) {
      log.warn("an image's /etc/ssh is too large to be read: its nodes are rebooted hard", {
        image: rootfs,
        bytes: st.size,
      });
      return [];
    }
    names = [...Deno.readDirSync(dir.host)].map((e) => e.name)
      .filter((name) => /^ssh_host_[a-z0-9]+_key\.pub$/.test(name)).sort();
  } catch {
    return [];
  }
  for (const name of names) {
    if (keys.length === maxHostKeys) break;
    try {
      const p = resolveInRoot(rootfs, `/etc/ssh/${name}`);
      if (p.missing) continue;
      const st = Deno.statSync(p.host);
      if (!st.isFile || st.size > maxHostKeyFile) continue;
      const m = hostKeyLine.exec(Deno.readTextFileSync(p.host).trim());
      if (m) keys.push(`${m[1]} ${m[2]}`);
    } catch { /* unreadable, a loop: not a key */ }
  }
  return keys;
}

/** What ssh needs to reach one node. */
export interface SshTarget {
  mac: string;
  name: string;
  ip: string;
  port: number;
}

/** The ssh access of one server: key, host key pins, and the ssh command line. */
export class NodeSsh {
  readonly key: ServerKey;
  /** Host keys per image id (images never change: content-addressed). */
  #imageKeys = new Map<string, string[]>();
  /** Pinned lines per node name, and the text last written to known_hosts. By name, not MAC: ssh
   *  checks a host key under the node's name (HostKeyAlias), so a name must carry its current
   *  node's keys only. Kept per MAC, the lines of a node forgotten or renamed stayed under its
   *  old name, and the next node given that name accepted the old image's keys: root on any node
   *  that booted that image (its host private keys) answering at the new node's address got the
   *  commands and reboots meant for it. */
  #pins = new Map<string, string[]>();
  #written = "";
  /** Aborted when the server stops: every ssh under way ends then (close). */
  #stopping = new AbortController();
  /** Aborted when the server stops: an ssh run outside `run` (node save's stream) ends on it. */
  readonly stopping = this.#stopping.signal;

  constructor(private ctx: Pick<Context, "data" | "db" | "nodes">) {
    this.key = new ServerKey(join(ctx.data.root, "ssh"));
  }

  #keysOf(imageId: string): string[] {
    let k = this.#imageKeys.get(imageId);
    if (!k) {
      k = imageHostKeys(this.ctx.data.rootfs(imageId));
      if (this.#imageKeys.size > 256) this.#imageKeys.clear();
      this.#imageKeys.set(imageId, k);
    }
    return k;
  }

  /** Whether the image runs an sshd netroot can authenticate (it carries ssh host keys). */
  serves(imageId: string): boolean {
    return this.#keysOf(imageId).length > 0;
  }

  /** The node's ssh target with its host keys pinned, or a one-line reason it has none. */
  target(node: NodeInfo): SshTarget | { unavailable: string } {
    const ip = this.ctx.nodes.addressOf(node.mac);
    if (!ip) return { unavailable: `the node's address is unknown (it is ${node.state})` };
    // The images it booted (a deploy flips the link before the reboot) and its current one.
    const images = new Set([...bootedImages(this.ctx.db, node.mac), node.imageId]);
    const keys = [...images].filter((i): i is string => !!i).flatMap((i) => this.#keysOf(i));
    if (!keys.length) {
      return {
        unavailable: "its image has no ssh host keys (/etc/ssh/ssh_host_*_key.pub): " +
          "the node cannot be authenticated",
      };
    }
    this.#pin(node.name, keys.map((k) => `${hostKeyAlias(node.name)} ${k}`));
    const port = probePort(node.settings) ?? 22;
    return { mac: node.mac, name: node.name, ip, port };
  }

  #pin(name: string, lines: string[]): void {
    // Unchanged (every ssh, every GET of the node's target, open to the boot network): the whole
    // file's text is not built again, in time growing with every node's keys.
    const had = this.#pins.get(name);
    if (had?.length === lines.length && had.every((l, i) => l === lines[i])) return;
    this.#pins.set(name, lines);
    const text = [...this.#pins.values()].flat().join("\n") + "\n";
    if (text === this.#written) return;
    try {
      this.key.publicKey(); // makes the directory (and the key) first
      writeFileDurableSync(this.key.knownHosts, text, 0o600);
    } catch (e) {
      this.#pins.delete(name); // not written: the next ssh to the node pins it again
      throw e;
    }
    this.#written = text;
  }

  /** The host key lines pinned for the node named `name` (`node shell` writes them for its own
   *  ssh). */
  pinned(name: string): string[] {
    return this.#pins.get(name) ?? [];
  }

  /** ssh's argv for `command` on the target. */
  argv(
    t: SshTarget,
    command: string,
    opts: { tty?: boolean; knownHosts?: string; identity?: string } = {},
  ): string[] {
    return sshArgv(t, command, {
      identity: opts.identity ?? this.key.privateKey,
      knownHosts: opts.knownHosts ?? this.key.knownHosts,
      tty: opts.tty,
    });
  }

  /** Runs `command` on the node (its shell), within `timeoutMs`. ssh runs niced: its key exchange
   *  is CPU work that must not delay the server's own (DHCP, TFTP, the next spawn — each spawn
   *  waits until its child has exec'd, which a CPU busy with 50 handshakes delays tenfold). */
  run(t: SshTarget, command: string, timeoutMs: number): Promise<ToolResult> {
    this.key.publicKey();
    return runTool(["nice", "-n", "19", ...this.argv(t, command)], {
      timeoutMs,
      group: false,
      signal: this.stopping,
    });
  }

  /** Ends every ssh under way, and refuses new ones: the node's sshd decides when a session ends
   *  (a `reboot` or a `node run` command taken and never answered, an upper trickled to
   *  `node save` a byte a minute), and the stop waited for the run's or the save's deadline (HTTP
   *  answers its requests first: up to an hour), then left the soft reboots' ssh running after
   *  the server, up to `reboot.soft-timeout` (an hour), or for ever once orphaned. */
  close(): void {
    this.#stopping.abort("ssh ended: the server stops");
  }
}

/** The name ssh knows a node's host keys by (HostKeyAlias, the first field of its known_hosts
 *  lines). ssh matches those names regardless of case, where node names are unique
 *  case-sensitively: the pins of a node named LAB1 were taken for lab1's, so root on a machine that
 *  booted LAB1's image answering at lab1's address got lab1's commands. Each capital is written `_`
 *  and its lower case (a node name holds no `_`: nodes.ts), one alias per name. */
export function hostKeyAlias(name: string): string {
  return name.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
}

/** The ssh command line: key only, pinned host key, no prompt, no agent, no X11, no user config. */
export function sshArgv(
  t: { name: string; ip: string; port: number },
  command: string,
  o: { identity: string; knownHosts: string; tty?: boolean },
): string[] {
  return [
    "ssh",
    "-F",
    "/dev/null",
    "-i",
    o.identity,
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "IdentityAgent=none",
    "-o",
    "BatchMode=yes",
    "-o",
    `ConnectTimeout=${connectTimeoutS}`,
    "-o",
    "StrictHostKeyChecking=yes",
    "-o",
    `UserKnownHostsFile=${o.knownHosts}`,
    "-o",
    "GlobalKnownHostsFile=/dev/null",
    "-o",
    `HostKeyAlias=${hostKeyAlias(t.name)}`,
    "-o",
    "ForwardAgent=no",
    "-o",
    "ForwardX11=no",
    "-o",
    "LogLevel=INFO",
    "-o",
    "ServerAliveInterval=10",
    o.tty ? "-t" : "-T",
    "-p",
    String(t.port),
    "-l",
    "root",
    t.ip,
    ...(command ? ["--", command] : []),
  ];
}

/** ssh's failure (exit 255) as one line: its own last stderr line. */
export function sshFailure(r: ToolResult): string {
  // The node's sshd, or its root, writes that line: at most 300 characters into an event.
  return lastLine(r.stderr) || `ssh exited ${r.code}`;
}

/** ssh failures after which the node certainly did not get the command: escalate at once. */
const notDelivered =
  /Connection refused|timed out|No route to host|Network is unreachable|Permission denied|Host key verification failed|IDENTIFICATION HAS CHANGED|Could not resolve/i;

/** The soft step of src/reboot.ts: `reboot` over ssh (systemd: a clean reboot; busybox: its
 *  init's signal), then "down" = a new boot, another state, or the port no longer answering. */
export function sshSoftReboot(ctx: Pick<Context, "nodes"> & { ssh: NodeSsh }): SoftReboot {
  return {
    name: "ssh",
    request(n: RebootTarget) {
      const node = ctx.nodes.find(n.mac);
      if (!node) return { unavailable: "no such node" };
      if (node.state !== "booted") {
        return { unavailable: `the node is ${node.state}, not booted`, expected: true };
      }
      if (node.stateReason?.startsWith("handover")) {
        // Booted by the watchdog without its port ever answering: an image without sshd.
        return { unavailable: `no sshd: ${node.stateReason}` };
      }
      ctx.ssh.key.publicKey(); // throws the reason when there is no key
      const t = ctx.ssh.target(node);
      if ("unavailable" in t) return t;
      const timeoutMs = softTimeoutMs(node.settings);
      const since = node.stateSince;
      const sent = ctx.ssh.run(t, "reboot", timeoutMs).then(
        (r) =>
          r.code === 0 ? { delivered: true, detail: `reboot accepted by ${t.ip}` } : {
            delivered: !(r.code === 255 && notDelivered.test(r.stderr)),
            detail: sshFailure(r),
          },
        // ssh's own deadline passed: the node may well have the request; wait for it to go down.
        (e) => ({ delivered: e instanceof PowerError, detail: (e as Error).message }),
      );
      return {
        sent,
        timeoutMs,
        async isDown() {
          const now = ctx.nodes.find(n.mac);
          if (!now || now.state !== "booted" || now.stateSince !== since) return true;
          return !(await tcpProbe(t.ip, t.port, 1000));
        },
      };
    },
  };
}
