// `netroot node …` (and `netroot deploy`): node management through the running server's API.
import { resolve } from "node:path";
import type { Saved } from "../images/save.ts";
import type { Published } from "../images/versions.ts";
import { parseArgs } from "node:util";
import { progressText } from "../../contract/report.ts";
import { UserError } from "../errors.ts";
import type { Event } from "../events.ts";
import type { NodeInfo } from "../nodes.ts";
import type { RebootResult } from "../reboot.ts";
import type { PowerResult } from "../power/power.ts";
import type { WaitResult } from "../api.ts";
import { join } from "node:path";
import { defaultDataDir } from "../datadir.ts";
import { sshArgv, type SshTarget } from "../nodessh.ts";
import type { RunResult } from "../noderun.ts";
import { ApiClient, clientOptions } from "./client.ts";
import { jsonText } from "../log.ts";
import { nodeText, nodeTextReady } from "../nodetext.ts";
import { keyValues, print, table, visible } from "./output.ts";

type ListedNode = NodeInfo & { lastEvent?: { ts: string; kind: string } | null };

const common = "Common options: --server URL (or NETROOT_SERVER), --json, --help.";

const help: Record<string, string> = {
  node: `usage: netroot node COMMAND [ARGS…]

  add MAC [--name NAME] [--model MODEL] [--image IMAGE]   register a node
  ls                                        list nodes
  show NODE                                 one node, its settings and last events
  rename NODE NEW                           change a node's name
  forget NODE                               remove a node (keeps its persist data on the server)
  config NODE [key=value…]                  show or change settings (key= removes one)
  boot NODE[,NODE…] IMAGE [--no-reboot] [--force] [--hard]   deploy an image (alias: netroot deploy)
  reboot NODE[,NODE…]… [--hard] [--cause TEXT]   reboot nodes (cleanly first, over ssh)
  run NODE[,NODE…] [--timeout S] -- CMD…    run a command on nodes (ssh), output per node
  shell NODE                                an interactive root shell on the node (ssh)
  power NODE on|off|cycle|status            switch a node's power (its power.driver)
  wait NODE[,NODE…] [--state S] [--timeout S]   until the nodes reach a state (default booted)
  log NODE [--follow]                       the node's timeline
  console NODE [--follow] [--source S]      the node's console (serial or netconsole)
  save NODE NAME [--upper FILE] [--keep-machine-state] [--reboot-nodes]
                                            the node's changes as a new image version

NODE is a name or a MAC address (any common spelling). ${common}`,
  save: `usage: netroot node save NODE NAME [--upper FILE] [--keep-machine-state] [--reboot-nodes]

Turns what the node changed in its running system (its overlay upper: network mode, the RAM layer;
hybrid mode, walt-hybrid/<id>/diff; netroot init shows either read-only at /run/netroot/upper) into
a new version of image NAME on top of the image the node booted, deletions included (overlay
whiteouts and opaque directories). The server fetches the upper from the booted node over ssh, as
node run does, with the image's own GNU tar (busybox tar keeps no xattrs: refused). --upper FILE
instead reads a tarball of the upper on the server machine, made on the node with GNU tar keeping
xattrs and numeric owners (README, "Changing images"): for a node that is down. NAME may be the
booted image's own name (a new version of it) or another.
What the machine wrote for itself is left out (as systemd's "Building images safely" asks), as
the base image has it: /etc/machine-id, /var/lib/systemd/random-seed and credential.secret,
/var/lib/systemd/timers/, the contents of /var/log/journal/, /tmp/ and /var/tmp/, the /persist
mount point netroot made, and the server's key line netroot init adds to
/root/.ssh/authorized_keys (keys added on the node stay); the answer says what was left out.
--keep-machine-state saves it all. --reboot-nodes reboots the nodes that follow NAME. ${common}`,
  add: `usage: netroot node add MAC [--name NAME] [--model MODEL] [--image IMAGE]

Registers a node. Default name node-<last 3 MAC bytes>; default image the one named "default".
${common}`,
  ls: `usage: netroot node ls [--json]

Lists nodes: name, MAC, IP, image, state and its age, model, virtual, who added it, last event.
ADDED BY is "dhcp" for a node the DHCP service registered on its own at a machine's first request,
which no admin has adopted since (renamed, configured or deployed to): its MAC is only what a
machine on the boot network claimed, and its name (node-<last 3 MAC bytes>) only a guess from it.
A look-alike MAC registered first takes that name: check the MAC before deploying to the node.
"admin" for every other node. ${common}`,
  wait: `usage: netroot node wait NODE[,NODE…] [--state STATE] [--timeout SECONDS]

Waits until every node is in STATE (off, booting, booted, down, failed; default booted). Exits 0
when all got there, 1 naming the laggards (and their states) after --timeout (default 600) or
once each laggard is failed. The server answers when states change: waiting costs no polling.
A node asked to reboot is not booted until it went down and came back; one whose reboot did not
happen (no mechanism, or it failed) is not there until it reboots (power-cycled by hand, say).
${common}`,
  show: `usage: netroot node show NODE [--json]\n\n${common}`,
  rename: `usage: netroot node rename NODE NEW-NAME\n\n${common}`,
  forget: `usage: netroot node forget NODE

Removes the node from the database and its fs link. Its persist data stays in
<data>/nodes/<mac>/ (delete it by hand). ${common}`,
  config: `usage: netroot node config NODE [key=value…]

Without key=value prints the node's settings. key= (empty value) removes a setting.
Keys: kernel.cmdline (extra kernel arguments), boot.mode (auto|network), nfs.timeout (the init's
NFS retry budget, seconds), boot.timeout (watchdog, seconds or none), boot.retries, boot.probe-port,
tmpfs.size (e.g. 50% or 512m), initramfs (netroot|image), persist (true|false),
console.netconsole (true|false: the kernel log to the server, see node console), ip (the node's
address, fixed by you: its /persist export and kernel command line follow it), power.* (see
netroot node power --help), reboot.soft-timeout (seconds a clean reboot may take before the hard
one, default 30), node.down.action (reboot|none: what to do when a booted node stops answering),
and the virtual node keys when the server has them. Secret settings
(power.password, power.community, power.auth.key, power.priv.key) are shown as ***. ${common}`,
  boot: `usage: netroot node boot NODE[,NODE…] IMAGE [--no-reboot] [--force] [--hard]
       netroot deploy NODE[,NODE…] IMAGE …

Points the nodes at IMAGE (one transaction; each node's fs link flips atomically) and reboots
them as node reboot does (cleanly first; --hard: at once by the hard mechanism). --no-reboot only
switches; --force deploys an image that is not bootable. IMAGE as a name: the nodes follow its new
versions (image shell, cp, build, import, rollback move them at their next boot); as NAME@ID or an
id: they stay on that version. Exits 1 when a node's reboot mechanism failed (the deploy stands:
the node boots IMAGE at its next boot). ${common}`,
  reboot: `usage: netroot node reboot NODE[,NODE…]… [--hard] [--cause TEXT]

Soft first: a booted node is asked over ssh to reboot itself (its own init shuts down cleanly:
nothing written is lost); when it is not down within reboot.soft-timeout (default 30 s), or
cannot be asked (not booted, no sshd, no host keys in its image), the hard mechanism follows: a
virtual node is reset (QMP), a node with power.driver set is power-cycled. --hard skips the soft
step. The command returns once the requests are issued; the node's timeline (node log) says
which mechanism did it, any escalation, and the cause (--cause, default "user request"). Exits 1
when any node could not be rebooted. ${common}`,
  run: `usage: netroot node run NODE[,NODE…] [--timeout SECONDS] -- COMMAND…

Runs COMMAND as root on every node at once, over ssh with the server's key (netroot init puts it
in the image's /root/.ssh/authorized_keys at each boot; the node's host key is pinned from its
image). The words are joined with spaces and read by the node's shell, as ssh does. Prints each
output line prefixed by the node's name (stderr to stderr): on a terminal its colours kept and
any other control character shown as \\xNN, to a pipe or a file as the command wrote it. Then the
exit status of each node that failed; exits 1 when any node failed or could not be reached. --timeout (default 300) ends
a command that runs longer. Output is kept up to 64 KiB per stream and node. ${common}`,
  shell: `usage: netroot node shell NODE

An interactive root shell on the node: runs ssh with the server's key, <data>/ssh/id_ed25519
(readable by root on the server: NETROOT_DATA=DIR for a server whose data dir is DIR), and the
node's host keys as the server pinned them. ${common}`,
  power: `usage: netroot node power NODE on|off|cycle|status

Switches the node's power through the driver its settings name (virtual nodes: qemu):
  power.driver=ipmi      power.host=BMC[:port] power.user=U power.password=P [power.cipher=N]
  power.driver=snmp-poe  power.host=SWITCH[:port] power.poe.port=[GROUP.]PORT and either
                         power.community=C (SNMP v2c) or power.user=U [power.auth.protocol=SHA
                         power.auth.key=K [power.priv.protocol=AES power.priv.key=K]] (v3)
  power.driver=command   power.command='PROGRAM ARGS…' (PROGRAM in <data>/power/; {action} {mac}
                         {name} {ip} are replaced in arguments, also in NETROOT_* variables)
  power.driver=qemu      a virtual node's qemu (the default for virtual nodes)
power.timeout=S bounds each device command (default 15). Exits 1 when the device fails.
${common}`,
  log: `usage: netroot node log NODE [--follow] [--limit N]

The node's timeline (DHCP, TFTP, HTTP, init stages, deploys, reboots). --follow keeps polling.
A hybrid copy's progress is one line (percentage, MB/s, ETA); on a terminal --follow updates it
in place.
${common}`,
  console: `usage: netroot node console NODE [--follow] [--source serial|netconsole]

Prints the node's console output; --follow keeps printing new output. A node with
console.netconsole=true sends its kernel log (and netroot init's lines) to the server by the
kernel's netconsole: shown by default, for physical and virtual nodes. A virtual node's serial
console: --source serial (the default without netconsole). On a terminal the node's colours are
kept, elsewhere removed; any other control character is shown as \\xNN. ${common}`,
};

const options = {
  ...clientOptions,
  name: { type: "string" },
  model: { type: "string" },
  image: { type: "string" },
  follow: { type: "boolean", short: "f" },
  limit: { type: "string" },
  cause: { type: "string" },
  "no-reboot": { type: "boolean" },
  force: { type: "boolean" },
  state: { type: "string" },
  timeout: { type: "string" },
  hard: { type: "boolean" },
  upper: { type: "string" },
  "keep-machine-state": { type: "boolean" },
  "reboot-nodes": { type: "boolean" },
  source: { type: "string" },
} as const;

/** Poll period for --follow. */
const followMs = 1000;

function positionals(args: string[], n: number, usage: string): string[] {
  if (args.length < n) throw new UserError(`missing argument (${usage.split("\n")[0]})`);
  return args;
}

/** One timeline line: copy progress as text ("42% (126.0/300.0 MB, 12.3 MB/s, ETA 14 s)"), any
 *  other detail as JSON, its control characters shown: a detail may be what a sender on the boot
 *  network chose (a Range header, a URL, a DHCP vendor class), and JSON leaves C1 ones raw. */
export function eventLine(e: Event): string {
  const progress = progressText(e.detail);
  const detail = progress ?? (Object.keys(e.detail).length ? JSON.stringify(e.detail) : "");
  return visible(`${e.ts}  ${e.kind}${detail ? ` ${detail}` : ""}`);
}

/**
 * The printer of `node log`: on a terminal (`columns` wide), a progress event right after one of
 * its own kind rewrites that line (cursor up over its rows, erase), so a copy is one line that
 * updates under --follow. Elsewhere (a pipe, a file: no `columns`) every event is a line of its own.
 */
export function timelinePrinter(columns: number | undefined, write: (line: string) => void) {
  let progress: { kind: string; rows: number } | undefined;
  return (e: Event) => {
    const line = eventLine(e);
    const rewrite = columns && progress?.kind === e.kind && progressText(e.detail) !== undefined;
    write(`${rewrite ? `\x1b[${progress!.rows}A\r\x1b[0J` : ""}${line}`);
    progress = columns && progressText(e.detail) !== undefined
      ? { kind: e.kind, rows: Math.max(1, Math.ceil(line.length / columns)) }
      : undefined;
  };
}

/** The terminal's width when stdout is one (80 when it does not say), else undefined. */
function terminalColumns(): number | undefined {
  if (!Deno.stdout.isTerminal()) return undefined;
  try {
    return Deno.consoleSize().columns || 80;
  } catch {
    return 80;
  }
}

/** How long ago `since` was, short: 42s, 5m, 3h, 2d. */
export function age(since: string | null, now = Date.now()): string {
  if (!since) return "";
  const s = Math.max(0, Math.round((now - Date.parse(since)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** "booted 5m": the node's state and how long it has been in it. */
export function stateText(n: { state: string; stateSince: string | null }, now = Date.now()) {
  return n.stateSince ? `${n.state} ${age(n.stateSince, now)}` : n.state;
}

function nodeRow(n: ListedNode): Record<string, unknown> {
  return {
    name: n.name,
    mac: n.mac,
    ip: n.ip,
    image: n.imageName ?? n.imageId?.slice(0, 12),
    state: stateText(n),
    model: n.model,
    virtual: n.virtual ? "yes" : "no",
    "added by": n.autoRegistered ? "dhcp" : "admin",
    "last event": n.lastEvent ? `${n.lastEvent.kind} ${n.lastEvent.ts}` : null,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function run(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (!sub || sub === "--help" || sub === "-h" || sub === "help") {
    console.log(help.node);
    return sub ? 0 : 2;
  }
  const cmd = sub === "deploy" ? "boot" : sub;
  if (!help[cmd] || cmd === "node") {
    throw new UserError(`unknown node command ${sub} (try netroot node --help)`);
  }
  // node run NODES -- COMMAND…: the words after -- are the command, never options.
  const dd = cmd === "run" ? rest.indexOf("--") : -1;
  const command = dd < 0 ? [] : rest.splice(dd).slice(1);
  const { values: o, positionals: p } = parseArgs({
    args: rest,
    options,
    allowPositionals: true,
  });
  if (o.help) {
    console.log(help[cmd]);
    return 0;
  }
  const api = ApiClient.fromEnv(o.server);
  const json = o.json;
  const enc = encodeURIComponent;

  switch (cmd) {
    case "save": {
      const [node, name] = positionals(p, 2, help.save);
      const r = await api.post<Saved & Published>("/images/-/save", {
        node,
        name,
        upper: o.upper === undefined ? undefined : resolve(o.upper),
        keepMachineState: o["keep-machine-state"] ?? false,
        rebootNodes: o["reboot-nodes"] ?? false,
        command: ["netroot", "node", ...args].join(" "),
      });
      const { committedText } = await import("./imagework.ts");
      print(json, r, () => committedText(r));
      return 0;
    }
    case "add": {
      const [mac] = positionals(p, 1, help.add);
      const node = await api.post<NodeInfo>("/nodes", {
        mac,
        name: o.name,
        model: o.model,
        image: o.image,
      });
      print(json, node, () => `added ${node.name} (${node.mac})`);
      return 0;
    }
    case "ls": {
      const nodes = await api.get<ListedNode[]>("/nodes");
      print(
        json,
        nodes,
        () =>
          nodes.length
            ? table(nodes.map(nodeRow), [
              "name",
              "mac",
              "ip",
              "image",
              "state",
              "model",
              "virtual",
              "added by",
              "last event",
            ])
            : "no nodes (they register on first DHCP contact, or: netroot node add MAC)",
      );
      return 0;
    }
    case "show": {
      const [ref] = positionals(p, 1, help.show);
      const node = await api.get<ListedNode>(`/nodes/${enc(ref)}`);
      const events = await api.get<Event[]>(`/nodes/${enc(ref)}/events?limit=10`);
      print(json, { ...node, events }, () => {
        const { settings, lastEvent: _, ...rest } = node;
        const lines = [keyValues({ ...rest, lastEvent: node.lastEvent?.kind })];
        lines.push(`state: ${stateText(node)}${node.stateReason ? ` (${node.stateReason})` : ""}`);
        lines.push("", "settings:");
        lines.push(Object.keys(settings).length ? keyValues(settings) : "  (none)");
        lines.push("", "last events:");
        lines.push(events.length ? events.map(eventLine).join("\n") : "  (none)");
        return lines.join("\n");
      });
      return 0;
    }
    case "rename": {
      const [ref, name] = positionals(p, 2, help.rename);
      const node = await api.patch<NodeInfo>(`/nodes/${enc(ref)}`, { name });
      print(json, node, () => `renamed ${ref} to ${node.name}`);
      return 0;
    }
    case "forget": {
      const [ref] = positionals(p, 1, help.forget);
      const r = await api.delete<{ forgotten: string; name: string }>(`/nodes/${enc(ref)}`);
      print(json, r, () => `forgot ${r.name} (${r.forgotten})`);
      return 0;
    }
    case "config": {
      const [ref, ...pairs] = positionals(p, 1, help.config);
      let node: NodeInfo;
      if (pairs.length === 0) {
        node = await api.get<NodeInfo>(`/nodes/${enc(ref)}`);
      } else {
        const settings: Record<string, string | null> = {};
        for (const kv of pairs) {
          const i = kv.indexOf("=");
          if (i <= 0) throw new UserError(`expected key=value, got "${kv}"`);
          settings[kv.slice(0, i)] = kv.slice(i + 1) === "" ? null : kv.slice(i + 1);
        }
        node = await api.patch<NodeInfo>(`/nodes/${enc(ref)}/config`, settings);
      }
      print(
        json,
        node.settings,
        () =>
          Object.keys(node.settings).length
            ? keyValues(node.settings)
            : `${node.name}: no settings (defaults apply)`,
      );
      return 0;
    }
    case "boot": {
      const [refs, image] = positionals(p, 2, help.boot);
      const r = await api.post<{ nodes: NodeInfo[]; reboots: RebootResult[] }>("/deploy", {
        nodes: refs.split(",").map((s) => s.trim()).filter(Boolean),
        image,
        reboot: !o["no-reboot"],
        force: o.force ?? false,
        hard: o.hard ?? false,
      });
      print(json, r, () => {
        const reboot = new Map(r.reboots.map((x) => [x.mac, x]));
        return table(
          r.nodes.map((n) => ({
            name: n.name,
            mac: n.mac,
            image: n.imageName ?? n.imageId,
            reboot: reboot.get(n.mac)?.message ?? "not requested",
          })),
          ["name", "mac", "image", "reboot"],
        );
      });
      // Deployed, but a node whose reboot failed (a BMC refused) still runs its old image and is
      // `booted`: a script's `node wait` would answer at once. The exit status says so. A node
      // with no mechanism at all is the lab's normal case (the table says: by hand).
      return r.reboots.every((x) => x.ok || !x.mechanism) ? 0 : 1;
    }
    case "reboot": {
      const refs = positionals(p, 1, help.reboot).flatMap((a) => a.split(","))
        .map((r) => r.trim()).filter(Boolean);
      const results: (RebootResult & { ref: string })[] = new Array(refs.length);
      // 16 at a time, each slot taking the next node as soon as its own is done: each may wait
      // on a power device for up to power.timeout (twice for an ipmi cycle), and in batches of 16
      // one dead BMC held the next 16 nodes until its timeout.
      let next = 0;
      const worker = async () => {
        while (next < refs.length) {
          const i = next++;
          results[i] = {
            ref: refs[i],
            ...await api.post<RebootResult>(`/nodes/${enc(refs[i])}/reboot`, {
              cause: o.cause,
              hard: o.hard ?? false,
            }).catch((e): RebootResult => ({ mac: "", ok: false, message: e.message })),
          };
        }
      };
      await Promise.all(Array.from({ length: Math.min(16, refs.length) }, worker));
      const shown = results.map(({ ref: _, ...r }) => r);
      print(
        json,
        shown.length === 1 ? shown[0] : shown,
        () => results.map((r) => `${r.ref}: ${r.message}`).join("\n"),
      );
      // No mechanism or a failed one: the node did not reboot, which the exit status says.
      return results.every((r) => r.ok) ? 0 : 1;
    }
    case "power": {
      const [ref, action] = positionals(p, 2, help.power);
      const r = await api.post<PowerResult>(`/nodes/${enc(ref)}/power`, { action });
      const done = { on: "powered on", off: "powered off", cycle: "power-cycled" };
      print(
        json,
        r,
        () =>
          `${r.name}: ${
            r.action === "status" ? r.state : done[r.action as keyof typeof done]
          } (${r.driver})`,
      );
      return 0;
    }
    case "run":
      return await runCommand(api, positionals(p, 1, help.run), command, o.timeout, json);
    case "shell":
      return await shell(api, positionals(p, 1, help.shell)[0]);
    case "wait":
      return await waitNodes(api, positionals(p, 1, help.wait)[0], o.state, o.timeout, json);
    case "log": {
      const [ref] = positionals(p, 1, help.log);
      const limit = o.limit ?? "200";
      let since = 0;
      const print = timelinePrinter(terminalColumns(), (line) => console.log(line));
      for (;;) {
        const events = await api.get<Event[]>(
          `/nodes/${enc(ref)}/events?since=${since}&limit=${since ? 10000 : enc(limit)}`,
        );
        for (const e of events) {
          if (json) console.log(jsonText(e));
          else print(e);
        }
        if (events.length) since = events[events.length - 1].id;
        if (!o.follow) {
          if (!events.length && !json) console.log(`(no events for ${ref})`);
          return 0;
        }
        await sleep(followMs);
      }
    }
    case "console": {
      const [ref] = positionals(p, 1, help.console);
      // GET /nodes/:ref/console?offset=N[&source=S] answers {text, offset, size, source} (offset =
      // where the next read starts, size the log's then; src/consolelog.ts) or plain text.
      let offset = 0;
      /** Without --follow: the log's size at the first read, where the printing stops (a node
       *  writing faster than we read would otherwise keep it going for good). */
      let end: number | undefined;
      // Colours for a terminal, plain text elsewhere; the rest shown (src/nodetext.ts). A read may
      // end inside an escape sequence or between CR and LF: that waits for the next (or the end).
      const colours = Deno.stdout.isTerminal() ? "keep" : "strip";
      let waiting = "";
      for (;;) {
        const source = o.source ? `&source=${enc(o.source)}` : "";
        const r = await api.get<{ text: string; offset: number; size?: number } | string>(
          `/nodes/${enc(ref)}/console?offset=${offset}${source}`,
        ).catch((e) => {
          if (/no such API route/.test(e.message)) {
            throw new UserError("this server has no node console (no virtual-node support)", 404);
          }
          throw e;
        });
        const text = typeof r === "string" ? r : r.text;
        if (json) console.log(jsonText(r));
        else if (text) {
          const got = waiting + text;
          const ready = nodeTextReady(got);
          waiting = got.slice(ready);
          const shown = nodeText(got.slice(0, ready), colours);
          if (shown) await Deno.stdout.write(new TextEncoder().encode(shown));
        }
        offset = typeof r === "string" ? offset + new TextEncoder().encode(r).length : r.offset;
        if (typeof r !== "string") end ??= r.size;
        if (o.follow) await sleep(followMs);
        // An answer holds at most 1 MiB: without --follow, read on to the log's end (only the
        // first MiB was shown, of a log up to 16 MiB whose end is the latest boot); --json
        // answers the first read, its offset says where to go on.
        else if (json || !text || typeof r === "string" || (end !== undefined && offset >= end)) {
          if (waiting) {
            await Deno.stdout.write(new TextEncoder().encode(nodeText(waiting, colours)));
          }
          return 0;
        }
      }
    }
  }
  throw new UserError(`unknown node command ${sub}`);
}

/** `netroot deploy NODES IMAGE` = `netroot node boot NODES IMAGE`. */
export function deploy(args: string[]): Promise<number> {
  return run(["boot", ...args]);
}

/** `node wait`: re-issues GET /wait (the server holds each up to a minute) until the nodes are
 *  in the state, every laggard failed, or the timeout passes. */
async function waitNodes(
  api: ApiClient,
  refs: string,
  state = "booted",
  timeout = "600",
  json?: boolean,
): Promise<number> {
  if (!/^\d+$/.test(timeout)) {
    throw new UserError(`--timeout must be whole seconds, got "${timeout}"`);
  }
  const deadline = Date.now() + Number(timeout) * 1000;
  const nodes = refs.split(",").map((r) => r.trim()).filter(Boolean).join(",");
  const enc = encodeURIComponent;
  for (;;) {
    const left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
    const r = await api.get<WaitResult>(
      `/wait?nodes=${enc(nodes)}&state=${enc(state)}&timeout=${Math.min(left, 60)}`,
    );
    // the server's laggards: a node in the state but on its way down (a clean reboot asked) is one
    const lagging = r.nodes.filter((n) => r.laggards.includes(n.name));
    const givenUp = lagging.every((n) => n.state === "failed");
    if (r.reached || givenUp || Date.now() >= deadline) {
      print(json, r, () => {
        if (r.reached) return `${r.nodes.length} node(s) ${r.state}`;
        const late = lagging
          .map((n) => `${n.name} (${stateText(n)}${n.stateReason ? `: ${n.stateReason}` : ""})`);
        return `not ${r.state}: ${late.join(", ")}`;
      });
      return r.reached ? 0 : 1;
    }
  }
}

/** `node run`: POST /nodes/run, then each node's output, line by line, prefixed by its name. */
async function runCommand(
  api: ApiClient,
  p: string[],
  command: string[],
  timeout = "300", // the server's RUN_TIMEOUT_S
  json?: boolean,
): Promise<number> {
  if (p.length !== 1 || !command.length) {
    throw new UserError(
      `usage: netroot node run NODE[,NODE…] -- COMMAND… (got ${
        p.length > 1 ? `"${p.slice(1).join(" ")}" before --` : "no command"
      })`,
    );
  }
  if (!/^\d+$/.test(timeout)) {
    throw new UserError(`--timeout must be whole seconds, got "${timeout}"`);
  }
  const nodes = p[0].split(",").map((r) => r.trim()).filter(Boolean);
  const results = await api.post<RunResult[]>("/nodes/run", {
    nodes,
    command: command.join(" "),
    timeout: Number(timeout),
  });
  const failed = results.filter((r) => r.code !== 0);
  if (json) console.log(jsonText(results, 2));
  else {
    const width = Math.max(...results.map((r) => r.name.length));
    // What the node printed: on a terminal, its colours kept and every other control character
    // shown (src/nodetext.ts: a node is not trusted with the admin's terminal); to a pipe or a
    // file, as the command wrote it (`node run n1 -- cat f > out` wants the bytes).
    const lines = (text: string, terminal: boolean) =>
      (terminal ? nodeText(text, "keep") : text).replace(/\n$/, "").split("\n");
    const outTerminal = Deno.stdout.isTerminal(), errTerminal = Deno.stderr.isTerminal();
    for (const r of results) {
      const tag = `${r.name.padEnd(width)} |`;
      if (r.stdout) {
        console.log(lines(r.stdout, outTerminal).map((l) => `${tag} ${l}`).join("\n"));
      }
      if (r.stderr && r.code !== null) {
        console.error(lines(r.stderr, errTerminal).map((l) => `${tag} ${l}`).join("\n"));
      }
    }
    for (const r of failed) {
      console.error(
        `${r.name}: ${r.code === null ? visible(r.error ?? "") : `exit status ${r.code}`}`,
      );
    }
  }
  return failed.length ? 1 : 0;
}

/** `node shell`: ssh run here, with the data dir's key and the host keys the server pinned. */
async function shell(api: ApiClient, ref: string): Promise<number> {
  // The node first: one that is off or never booted is the answer, not the key the server makes
  // only when a node first boots (asked the other way round, root was told to run as root).
  const t = await api.get<SshTarget & { knownHosts: string[] }>(
    `/nodes/${encodeURIComponent(ref)}/ssh`,
  );
  const key = join(defaultDataDir(), "ssh", "id_ed25519");
  try {
    Deno.openSync(key).close();
  } catch (e) {
    throw new UserError(
      `cannot read the server's ssh key ${key}: ${(e as Error).message} (run this as root on the ` +
        "server, with NETROOT_DATA=DIR when it runs with --data DIR)",
    );
  }
  const knownHosts = Deno.makeTempFileSync({ prefix: "netroot-known-hosts-" });
  try {
    Deno.writeTextFileSync(knownHosts, t.knownHosts.join("\n") + "\n");
    const [bin, ...args] = sshArgv(t, "", { identity: key, knownHosts, tty: true });
    let st: Deno.CommandStatus;
    try {
      st = await new Deno.Command(bin, {
        args,
        stdin: "inherit",
        stdout: "inherit",
        stderr: "inherit",
      })
        .spawn().status;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new UserError("ssh not found: install the Debian package openssh-client");
      }
      throw e;
    }
    return st.code;
  } finally {
    Deno.removeSync(knownHosts);
  }
}
