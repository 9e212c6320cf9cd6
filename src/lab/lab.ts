// The lab: a private network namespace in which `netroot serve` creates and owns its boot bridge,
// runs DHCP, TFTP, HTTP, router advertisements (and NFS when asked), and virtual nodes PXE-boot
// through qemu's real iPXE ROM. `netroot demo` shows one boot in it; the end-to-end tests
// (tests/e2e/) run in it. Needs root, qemu (TCG), iproute2. The server and the CLI commands are
// this same netroot, in the form it runs in (source, bundle or executable: self.ts).
//
//   const lab = await startLab();
//   await lab.cli("image", "import", dir, "--name", "test");
//   const vm = await lab.createVnode("vm1", { image: "test" });
//   await lab.waitConsole(vm.mac, /IMAGE-BOOT-OK/, 120_000);
//   const kinds = (await lab.events(vm.mac)).map((e) => e.kind);
//   await lab.close();            // always (finally): stops everything by PID, deletes the netns
//
// Never connect to a namespace address from the host namespace (it would leave through the
// host's default route): every request runs inside the namespace (`ip netns exec`).
// NETROOT_E2E_KEEP=1 keeps the lab directory (server log, data dir, console logs) for debugging.
import { join } from "node:path";
import type { Event } from "../events.ts";
import { killStale, type VnodeInfo } from "../vnode/manager.ts";
import { netrootCommand } from "./self.ts";

export const serverIp = "10.77.0.1";
/** Run by `deno eval` inside the namespace: METHOD URL TOKEN BODY → status line, then the body. */
const fetchScript = `const [method, url, token, body] = Deno.args;
const res = await fetch(url, { method, body: body || undefined,
  headers: { authorization: "Bearer " + token, "content-type": "application/json" } });
console.log(res.status); console.log(await res.text());`;
export const httpPort = 8080;

export interface LabOptions {
  /** NFS server mode for the lab (ganesha for network-mode boots). Default off. */
  nfs?: "ganesha" | "off";
  /** qemu accelerator; default tcg (the e2e budget cannot afford a KVM probe timing out). */
  accel?: "auto" | "kvm" | "tcg";
  /** `full` (default): netroot hands out the addresses. `proxy`: the lab's own DHCP server
   *  (dnsmasq, in a second namespace on the bridge, at .3) does, and netroot answers proxy
   *  offers beside it (`--dhcp-mode proxy`, strategy option43 unless serveArgs say otherwise). */
  dhcp?: "full" | "proxy";
  /** More `netroot serve` flags. */
  serveArgs?: string[];
  /** The boot network's prefix length and netroot's address range (full DHCP), for labs of more
   *  than the default 51 clients (a boot storm). Default 24 and .100–.150. */
  network?: { prefixLen: number; dhcpRange: string };
  /** More environment for `netroot serve` (e.g. DENO_V8_FLAGS for the server alone). */
  serverEnv?: Record<string, string>;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

const dec = new TextDecoder();
/** SeaBIOS/iPXE colour and cursor sequences, stripped from console tails in error messages. */
// deno-lint-ignore no-control-regex
const ansiEscape = /\x1b\[[0-9;?]*[a-zA-Z]/g;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Lab {
  readonly t0 = performance.now();
  readonly url = `http://127.0.0.1:${httpPort}`;
  readonly data: string;
  readonly serverLog: string;
  token = "";
  #server?: Deno.ChildProcess;
  #serverExit?: Promise<Deno.CommandStatus>;
  #closed = false;
  #opts: LabOptions = {};
  #dnsmasq?: Deno.ChildProcess;
  #labDhcpNs?: string;

  constructor(readonly ns: string, readonly dir: string) {
    this.data = join(dir, "data");
    this.serverLog = join(dir, "server.log");
  }

  /** Timestamped progress line (seconds since the lab started). */
  log(msg: string): void {
    console.log(`[lab ${((performance.now() - this.t0) / 1000).toFixed(1).padStart(6)}s] ${msg}`);
  }

  /** Runs a command inside the namespace; kills it after timeoutMs. */
  async run(
    cmd: string[],
    opts: { timeoutMs?: number; env?: Record<string, string> } = {},
  ): Promise<
    CliResult
  > {
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", this.ns, ...cmd],
      env: opts.env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
    }, opts.timeoutMs ?? 120_000);
    const out = await child.output();
    clearTimeout(timer);
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  }

  /** `netroot ARGS…` inside the namespace against the lab's server; throws on a non-zero exit
   *  unless `check: false` is the last argument. */
  async cli(...args: (string | { check: false })[]): Promise<CliResult> {
    const check = typeof args[args.length - 1] !== "object";
    const argv = args.filter((a): a is string => typeof a === "string");
    const r = await this.run([...netrootCommand(), ...argv], {
      env: { NETROOT_SERVER: this.url, NETROOT_TOKEN: this.token, NO_COLOR: "1" },
    });
    if (check && r.code !== 0) {
      throw new Error(`netroot ${argv.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
    }
    return r;
  }

  /** A JSON API call from inside the namespace (a one-line deno fetch: no curl needed). */
  async api<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const r = await this.run([
      Deno.execPath(),
      "eval",
      fetchScript,
      method,
      `${this.url}/api/v1${path}`,
      this.token,
      body === undefined ? "" : JSON.stringify(body),
    ], { timeoutMs: 30_000 });
    const nl = r.stdout.indexOf("\n");
    const status = Number(r.stdout.slice(0, nl));
    const text = r.stdout.slice(nl + 1).trimEnd();
    if (r.code !== 0 || !(status < 400)) {
      throw new Error(`${method} ${path}: HTTP ${status || "-"} ${text} ${r.stderr.trim()}`);
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /** Starts `netroot serve` in the namespace (startLab calls it). */
  async startServer(opts: LabOptions): Promise<void> {
    this.#opts = opts;
    // The shell redirects the server's output straight into the log file and execs `ip netns
    // exec`, which execs deno: the child's PID is the server's, and no pipe depends on us.
    const serveArgs = [
      ...netrootCommand(),
      "serve",
      "--data",
      this.data,
      "--bridge",
      "netroot0",
      "--address",
      `${serverIp}/${opts.network?.prefixLen ?? 24}`,
      ...(opts.dhcp === "proxy"
        ? ["--dhcp-mode", "proxy"]
        : ["--dhcp-range", opts.network?.dhcpRange ?? "10.77.0.100-10.77.0.150"]),
      "--http",
      `0.0.0.0:${httpPort}`,
      "--nfs",
      opts.nfs ?? "off",
      "--accel",
      opts.accel ?? "tcg",
      ...(opts.serveArgs ?? []),
    ];
    this.#server = new Deno.Command("sh", {
      args: [
        "-c",
        'log="$1"; shift; exec "$@" >>"$log" 2>&1',
        "sh",
        this.serverLog,
        "ip",
        "netns",
        "exec",
        this.ns,
        ...serveArgs,
      ],
      env: { NO_COLOR: "1", NETROOT_LOG: "debug", ...opts.serverEnv },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    this.#serverExit = this.#server.status;
    const deadline = Date.now() + 60_000;
    for (;;) {
      const exited = await Promise.race([
        this.#serverExit.then(() => true),
        sleep(200).then(() => false),
      ]);
      if (exited) throw new Error(`netroot serve exited at start:\n${await this.serverLogTail()}`);
      try {
        this.token = (await Deno.readTextFile(join(this.data, "token"))).trim();
        await this.api("GET", "/health");
        break;
      } catch (e) {
        if (Date.now() > deadline) {
          throw new Error(
            `netroot serve not ready in 60 s (${(e as Error).message}):\n${await this
              .serverLogTail()}`,
          );
        }
      }
    }
  }

  /** The PID of `netroot serve` (the shell and `ip netns exec` exec'd into it). */
  get serverPid(): number | undefined {
    return this.#server?.pid;
  }

  /** Stops the server gracefully (as an admin would; `crash`: SIGKILL, as a crash would) and
   *  starts it again on the same data. */
  async restartServer(opts: { crash?: boolean } = {}): Promise<void> {
    await this.#stopServer(opts.crash ? "SIGKILL" : "SIGTERM");
    await this.startServer(this.#opts);
    this.log(`server restarted${opts.crash ? " after a crash" : ""}`);
  }

  async #stopServer(signal: Deno.Signal = "SIGTERM"): Promise<void> {
    if (!this.#server) return;
    try {
      this.#server.kill(signal);
    } catch { /* exited */ }
    const done = await Promise.race([
      this.#serverExit!.then(() => true),
      sleep(20_000).then(() => false),
    ]);
    if (!done) {
      this.log("server did not stop on SIGTERM: SIGKILL");
      try {
        this.#server.kill("SIGKILL");
      } catch { /* exited */ }
      await this.#serverExit;
    }
    this.#server = undefined;
  }

  /** Waits for a line matching `re` in the server's log (copied from its stderr asynchronously). */
  async waitServerLog(re: RegExp, timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = (await Deno.readTextFile(this.serverLog)).split("\n").find((l) => re.test(l));
      if (line) return line;
      if (Date.now() > deadline) {
        throw new Error(`no ${re} in the server log within ${timeoutMs} ms`);
      }
      await sleep(200);
    }
  }

  async serverLogTail(lines = 40): Promise<string> {
    const t = await Deno.readTextFile(this.serverLog).catch(() => "");
    return t.trim().split("\n").slice(-lines).join("\n");
  }

  /** The lab's own DHCP server for proxy mode: dnsmasq in namespace `<ns>-d`, on a veth whose
   *  other end is on the server's bridge (the server created it), addresses .100–.150. */
  async startLabDhcp(): Promise<void> {
    const ns = `${this.ns}-d`;
    const sh = async (...a: string[]) => {
      const r = await new Deno.Command(a[0], { args: a.slice(1), stderr: "piped" }).output();
      if (!r.success) throw new Error(`${a.join(" ")}: ${dec.decode(r.stderr).trim()}`);
    };
    await sh("ip", "netns", "add", ns);
    this.#labDhcpNs = ns; // deleted by close(), whatever fails below
    await sh("ip", "-n", this.ns, "link", "add", "labdhcp", "type", "veth", "peer", "name", "vd");
    await sh("ip", "-n", this.ns, "link", "set", "vd", "netns", ns);
    await sh("ip", "-n", this.ns, "link", "set", "labdhcp", "master", "netroot0", "up");
    await sh("ip", "-n", ns, "addr", "add", "10.77.0.3/24", "dev", "vd");
    await sh("ip", "-n", ns, "link", "set", "vd", "up");
    // --keep-in-foreground: the child is dnsmasq itself, stopped by its PID in close().
    this.#dnsmasq = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        ns,
        "dnsmasq",
        "--keep-in-foreground",
        "--port=0",
        "--user=root",
        "--interface=vd",
        "--bind-interfaces",
        "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
        `--dhcp-leasefile=${join(this.dir, "dnsmasq.leases")}`,
        "--no-ping",
        `--log-facility=${join(this.dir, "dnsmasq.log")}`,
        "--log-dhcp",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    this.log(`lab DHCP server (dnsmasq) at 10.77.0.3 in ${ns}`);
  }

  async #stopLabDhcp(): Promise<void> {
    if (this.#dnsmasq) {
      try {
        this.#dnsmasq.kill("SIGTERM");
      } catch { /* exited */ }
      await this.#dnsmasq.status;
      this.#dnsmasq = undefined;
    }
    if (!this.#labDhcpNs) return;
    await new Deno.Command("ip", { args: ["netns", "del", this.#labDhcpNs], stderr: "null" })
      .output();
    this.#labDhcpNs = undefined;
  }

  async createVnode(
    name: string,
    opts: {
      ram?: string;
      cpus?: number;
      disks?: string[];
      image?: string;
      firmware?: string;
      arch?: string;
    } = {},
  ): Promise<VnodeInfo> {
    const args = ["vnode", "create", name, "--json"];
    if (opts.firmware) args.push("--firmware", opts.firmware);
    if (opts.arch) args.push("--arch", opts.arch);
    if (opts.ram) args.push("--ram", opts.ram);
    if (opts.cpus) args.push("--cpus", String(opts.cpus));
    for (const d of opts.disks ?? []) args.push("--disk", d);
    if (opts.image) args.push("--image", opts.image);
    const v = JSON.parse((await this.cli(...args)).stdout) as VnodeInfo;
    this.log(`vnode ${name} created: ${v.mac}`);
    return v;
  }

  consolePath(mac: string): string {
    return join(this.data, "nodes", mac, "vm", "console.log");
  }

  async console(mac: string): Promise<string> {
    return await Deno.readTextFile(this.consolePath(mac)).catch(() => "");
  }

  /** Waits until the node's serial console matches `re` (counting from byte `from`); fails fast
   *  on a kernel panic, and with the console's tail on timeout. Returns the console text. */
  async waitConsole(
    mac: string,
    re: RegExp,
    timeoutMs: number,
    opts: { from?: number; failOn?: RegExp } = {},
  ): Promise<string> {
    const failOn = opts.failOn ?? /Kernel panic|E2E[^\n]*FAIL/;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = (await this.console(mac)).slice(opts.from ?? 0);
      if (re.test(text)) {
        this.log(`console ${mac}: ${re}`);
        return text;
      }
      const tail = () => text.replace(ansiEscape, "").split("\n").slice(-25).join("\n");
      if (failOn.test(text)) throw new Error(`console of ${mac} shows ${failOn}:\n${tail()}`);
      if (Date.now() > deadline) {
        throw new Error(`no ${re} on the console of ${mac} within ${timeoutMs} ms:\n${tail()}`);
      }
      await sleep(250);
    }
  }

  events(mac: string): Promise<Event[]> {
    return this.api<Event[]>("GET", `/nodes/${mac}/events?limit=10000`);
  }

  /** Waits for an event of `kind` after event id `since`. */
  async waitEvent(mac: string, kind: string, timeoutMs: number, since = 0): Promise<Event> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const e = (await this.events(mac)).find((e) => e.id > since && e.kind === kind);
      if (e) return e;
      if (Date.now() > deadline) {
        const kinds = (await this.events(mac)).filter((e) => e.id > since).map((e) => e.kind);
        throw new Error(
          `no ${kind} event for ${mac} within ${timeoutMs} ms; got ${kinds.join(", ")}`,
        );
      }
      await sleep(500);
    }
  }

  /** Stops the server (SIGTERM, then SIGKILL), any qemu it left, and deletes the namespace. */
  async close(opts: { keep?: boolean } = {}): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#stopServer();
    // A server that died hard leaves its qemu processes: their pid files say which.
    for (
      const mac of await Array.fromAsync(Deno.readDir(join(this.data, "nodes"))).catch(() => [])
    ) {
      await killStale(join(this.data, "nodes", mac.name, "vm"));
    }
    await new Deno.Command("ip", { args: ["netns", "del", this.ns], stderr: "null" }).output();
    await this.#stopLabDhcp();
    const keep = opts.keep ?? Deno.env.get("NETROOT_E2E_KEEP") === "1";
    if (keep) this.log(`lab kept in ${this.dir}`);
    else await Deno.remove(this.dir, { recursive: true }).catch(() => {});
    this.log("lab closed");
  }
}

/** Creates the namespace and starts `netroot serve` in it. On any failure everything is undone. */
export async function startLab(opts: LabOptions = {}): Promise<Lab> {
  const ns = `nr-lab-${Deno.pid}-${crypto.getRandomValues(new Uint32Array(1))[0].toString(36)}`;
  const dir = await Deno.makeTempDir({ prefix: "nr-lab-" });
  const add = await new Deno.Command("ip", { args: ["netns", "add", ns], stderr: "piped" })
    .output();
  if (!add.success) {
    await Deno.remove(dir, { recursive: true });
    throw new Error(`ip netns add ${ns}: ${dec.decode(add.stderr)} (root needed)`);
  }
  const lab = new Lab(ns, dir);
  try {
    await lab.run(["ip", "link", "set", "lo", "up"]);
    await lab.startServer(opts);
    lab.log(`server up in ${ns} (data ${lab.data})`);
    if (opts.dhcp === "proxy") await lab.startLabDhcp();
    return lab;
  } catch (e) {
    await lab.close({ keep: true });
    throw e;
  }
}
