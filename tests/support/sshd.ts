// A real OpenSSH sshd on loopback standing in for a node's: its own config, host key and
// authorized_keys in a temp dir, started as a child process (never the system's service) and
// stopped by PID. Every command runs through a forced command that stands in for the node's
// shell: `reboot` only appends a line to `<dir>/reboots` (and, with `dieOnReboot`, stops this
// sshd, as a node going down closes its port); anything else runs under /bin/sh with NODE_ID set
// (no command: an interactive /bin/sh, as a login shell). With `upper`, each command runs in a
// private mount namespace where that directory is /run/netroot/upper, read-only, as netroot init
// leaves a node's overlay upper (a tmpfs on /run there: nothing of the host's /run is touched),
// and, with `cmdline`, a file of ours as /proc/cmdline.
import { join } from "node:path";
import { freeTcpPort, waitFor } from "./power.ts";

export const sshdBin = "/usr/sbin/sshd";

export interface FakeNodeSshd {
  dir: string;
  port: number;
  /** The host key line (`ssh-ed25519 AAAA…`), as an image's /etc/ssh/ssh_host_ed25519_key.pub. */
  hostKey: string;
  /** Where a command that must never end writes its pid (`echo $$ >> <hung>; exec sleep …`):
   *  stop() ends those, which outlive a session the client left. */
  hung: string;
  /** Lines appended by `reboot` requests. */
  reboots(): number;
  running(): boolean;
  stop(): Promise<void>;
}

async function sh(cmd: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd} failed: ${new TextDecoder().decode(out.stderr)}`);
}

/** Starts sshd accepting `authorizedKey` for root (any user name), on loopback `addresses`
 *  (default 127.0.0.1; one per node: the registry gives an address to one node only). */
export async function startSshd(
  authorizedKey: string,
  opts: {
    nodeId?: string;
    dieOnReboot?: boolean;
    /** `reboot` is taken and never answered (a hostile or hung node: the session stays open). */
    hangOnReboot?: boolean;
    maxStartups?: number;
    addresses?: string[];
    /** Runs sshd (and its sessions) on these CPUs only (`taskset -c` list): a bench's stand-in
     *  nodes, whose CPU is on other machines in a lab, do not take the server's. */
    cpus?: string;
    /** The node's overlay upper (a host directory) and, optionally, the `tar` it runs. */
    upper?: string;
    tar?: string;
    /** With `upper`: a host file the node's commands see as /proc/cmdline (the kernel command
     *  line netroot gave the node, naming the image it booted). */
    cmdline?: string;
  } = {},
): Promise<FakeNodeSshd> {
  try {
    await Deno.stat(sshdBin);
  } catch {
    throw new Error(`${sshdBin} not found: install the Debian package openssh-server`);
  }
  // sshd refuses to start without its privilege separation directory.
  await Deno.mkdir("/run/sshd", { recursive: true, mode: 0o755 });
  const dir = await Deno.makeTempDir({ prefix: "nr-sshd-" });
  await sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, "host_ed25519"));
  await Deno.writeTextFile(join(dir, "authorized_keys"), authorizedKey.trim() + "\n");
  if (opts.tar) {
    await Deno.mkdir(join(dir, "bin"));
    await Deno.symlink(opts.tar, join(dir, "bin/tar"));
  }
  const path = opts.tar ? `PATH=${join(dir, "bin")}:$PATH ` : "";
  const asNode = opts.upper
    ? `unshare --mount --propagation private /bin/sh -c 'mount -t tmpfs nr-run /run && ` +
      `mkdir -p /run/netroot/upper && mount --bind -o ro "$0" /run/netroot/upper && ` +
      (opts.cmdline ? `mount --bind -o ro ${opts.cmdline} /proc/cmdline && ` : "") +
      `${path}exec "$@"' ${opts.upper}`
    : "";
  const force = join(dir, "force.sh");
  await Deno.writeTextFile(
    force,
    `#!/bin/sh
case "$SSH_ORIGINAL_COMMAND" in
  reboot)
    echo "$SSH_CONNECTION" >> ${dir}/reboots
    ${opts.dieOnReboot ? `kill "$(cat ${dir}/sshd.pid)"` : ""}
    ${opts.hangOnReboot ? `echo $$ >> ${dir}/hung; exec sleep 600` : ""}
    exit 0 ;;
  "") NODE_ID=${opts.nodeId ?? "node"} exec /bin/sh ;;
  *) NODE_ID=${opts.nodeId ?? "node"} exec ${asNode} /bin/sh -c "$SSH_ORIGINAL_COMMAND" ;;
esac
`,
    { mode: 0o755 },
  );
  await Deno.chmod(force, 0o755);
  const port = freeTcpPort(); // free on 127.0.0.1, hence on every loopback address
  const config = join(dir, "sshd_config");
  await Deno.writeTextFile(
    config,
    [
      `Port ${port}`,
      ...(opts.addresses ?? ["127.0.0.1"]).map((a) => `ListenAddress ${a}`),
      `HostKey ${join(dir, "host_ed25519")}`,
      `PidFile ${join(dir, "sshd.pid")}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
      "StrictModes no",
      "PermitRootLogin prohibit-password",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "UsePAM no",
      `ForceCommand ${force}`,
      `MaxStartups ${opts.maxStartups ?? 10}`,
      "LogLevel ERROR",
      "",
    ].join("\n"),
  );
  const argv = [...(opts.cpus ? ["taskset", "-c", opts.cpus] : []), sshdBin];
  const child = new Deno.Command(argv[0], {
    args: [...argv.slice(1), "-D", "-e", "-f", config],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited = false;
  const status = child.status.then((s) => (exited = true, s));
  const hostKey = (await Deno.readTextFile(join(dir, "host_ed25519.pub"))).trim().split(/\s+/)
    .slice(0, 2).join(" ");
  try {
    await waitFor(`sshd on port ${port}`, () => {
      if (exited) throw new Error(`sshd exited at start (try: ${sshdBin} -t -f ${config})`);
      try {
        return Deno.statSync(join(dir, "sshd.pid")).isFile;
      } catch {
        return false;
      }
    });
  } catch (e) {
    if (!exited) child.kill("SIGKILL");
    await status;
    await Deno.remove(dir, { recursive: true });
    throw e;
  }
  return {
    dir,
    port,
    hostKey,
    hung: join(dir, "hung"),
    reboots: () => {
      try {
        return Deno.readTextFileSync(join(dir, "reboots")).trim().split("\n").length;
      } catch {
        return 0;
      }
    },
    running: () => !exited,
    async stop() {
      if (!exited) {
        try {
          child.kill("SIGTERM");
        } catch { /* gone */ }
      }
      await status;
      let hung: string[] = [];
      try {
        hung = Deno.readTextFileSync(join(dir, "hung")).split("\n").filter(Boolean);
      } catch { /* none */ }
      for (const pid of hung) {
        try {
          Deno.kill(Number(pid), "SIGKILL");
        } catch { /* gone */ }
      }
      await Deno.remove(dir, { recursive: true });
    },
  };
}
