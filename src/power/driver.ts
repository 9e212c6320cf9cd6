// Power drivers: how netroot switches a node on and off. A node picks its driver with the setting
// `power.driver` (virtual nodes default to `qemu`); each driver reads its own `power.*` settings.
// Every external tool runs with a deadline, in its own process group (a timeout ends the tool and
// whatever it started), and fails with one clear line: the tool's own stderr, never a secret.
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import type { NodeInfo } from "../nodes.ts";

export type PowerAction = "on" | "off" | "cycle" | "status";
export const powerActions: PowerAction[] = ["on", "off", "cycle", "status"];
export type PowerState = "on" | "off";

/** What a driver acts on: the node, its settings with secrets in clear, and the server. */
export interface PowerTarget {
  ctx: Context;
  node: NodeInfo;
  settings: Record<string, string>;
  /** Deadline for each external command, ms (setting power.timeout, default 15 s). */
  timeoutMs: number;
}

export interface PowerDriver {
  name: string;
  on(t: PowerTarget): Promise<void>;
  off(t: PowerTarget): Promise<void>;
  /** Off then on (or the device's own cycle); a node that is off ends up on. */
  cycle(t: PowerTarget): Promise<void>;
  status(t: PowerTarget): Promise<PowerState>;
}

/** Commands sent to one power device at once. A PDU or PoE switch is a small agent that answers
 *  one request at a time: a hard reboot of 100 nodes on one switch sent 100 snmpsets at once, the
 *  queue outgrew the tools' 2 s timeout, their retries queued more, and all 100 cycles failed,
 *  each port left off (measured with snmpd). */
export const commandsPerDevice = 4;
/** Device commands (tools) running at once in all: a deploy to 200 nodes with a BMC each ran 200
 *  ipmitools at once, 6.9 MB each (Pss, measured with 50). */
export const deviceCommandsAtOnce = 32;

/** At most `size` calls of run() at once; the others wait their turn, in order. */
class Slots {
  #running = 0;
  #waiting: (() => void)[] = [];
  constructor(readonly size: number) {}

  get idle(): boolean {
    return this.#running === 0;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#running < this.size) this.#running++;
    else await new Promise<void>((r) => this.#waiting.push(r)); // handed an ending one's place
    try {
      return await fn();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#running--;
    }
  }
}

/** The power drivers of one server (built-in and an embedder's), selectable with
 *  `power.driver=<name>`; a later driver with the same name replaces an earlier one. */
export class PowerDrivers {
  #byName = new Map<string, PowerDriver>();
  /** The action running per node: one at a time (a cycle must not interleave with an off). */
  readonly running = new Map<string, Promise<unknown>>();
  /** Per device (host:port), while commands run or wait there. */
  #devices = new Map<string, Slots>();
  #all = new Slots(deviceCommandsAtOnce);

  constructor(drivers: PowerDriver[]) {
    for (const d of drivers) this.#byName.set(d.name, d);
  }

  get(name: string): PowerDriver | undefined {
    return this.#byName.get(name);
  }

  names(): string[] {
    return [...this.#byName.keys()].sort();
  }

  /** Runs `fn` (one command to the device `key`) once fewer than commandsPerDevice run there and
   *  fewer than deviceCommandsAtOnce in all; its deadline starts when it runs, not while it
   *  waits. The device's turn first: a device that hangs holds at most its own 4 of the 32. */
  async toDevice<T>(key: string, fn: () => Promise<T>): Promise<T> {
    let device = this.#devices.get(key);
    if (!device) this.#devices.set(key, device = new Slots(commandsPerDevice));
    try {
      return await device.run(() => this.#all.run(fn));
    } finally {
      if (device.idle) this.#devices.delete(key);
    }
  }
}

/** A failure of the power device or its tool (bad credentials, no answer): HTTP 502.
 *  `leftOff`: the action failed half-way with the node switched off (a cycle whose "on" failed). */
export class PowerError extends UserError {
  readonly leftOff: boolean;
  constructor(message: string, opts: { leftOff?: boolean } = {}) {
    super(message, 502);
    this.name = "PowerError";
    this.leftOff = opts.leftOff ?? false;
  }
}

/** A setting the driver needs, or a 409 saying how to set it. */
export function required(t: PowerTarget, key: string, what: string): string {
  const v = t.settings[key];
  if (v === undefined || v === "") {
    throw new UserError(
      `node ${t.node.name}: power.driver=${t.settings["power.driver"]} needs ${key} (${what}): ` +
        `netroot node config ${t.node.name} ${key}=…`,
      409,
    );
  }
  return v;
}

/** `power.host` as host and port: `name`, `1.2.3.4`, `name:port`, `[v6]` or `[v6]:port`. */
export function parseHostPort(value: string, defaultPort: number): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9][A-Za-z0-9.-]*))(?::(\d{1,5}))?$/.exec(value);
  const port = m?.[3] === undefined ? defaultPort : Number(m[3]);
  if (!m || port < 1 || port > 65535) {
    throw new UserError(
      `power.host must be a host name or address with an optional :port (IPv6 in brackets), ` +
        `got "${value}"`,
    );
  }
  return { host: m[1] ?? m[2], port };
}

/** True when `s` holds a control character (a line break would split a config line). */
export function hasControlChars(s: string): boolean {
  // deno-lint-ignore no-control-regex -- rejecting control characters is the point
  return /[\0-\x1f\x7f]/.test(s);
}

/** Debian package of each tool, for the "install X" hint. */
const packageOf: Record<string, string> = {
  ipmitool: "ipmitool",
  snmpget: "snmp",
  snmpset: "snmp",
};

/** The first non-empty line of a tool's output, trimmed and bounded. */
export function firstLine(text: string): string {
  return shortLine(text.split("\n").map((l) => l.trim()).find((l) => l !== "") ?? "");
}

/** The last non-empty line of `text`, as firstLine (what ssh says last is why it failed). */
export function lastLine(text: string): string {
  return shortLine(text.split("\n").map((l) => l.trim()).findLast((l) => l !== "") ?? "");
}

/** A line of a tool's output as events and errors keep it: at most 300 characters. */
const shortLine = (line: string) => line.length > 300 ? line.slice(0, 300) + "…" : line;

/** Output kept per stream: enough for any status line or error, bounded against a chatty tool. */
const outputCap = 64 * 1024;
/** After SIGTERM on timeout, SIGKILL follows after this long. */
const killGraceMs = 1000;

async function readCapped(stream: ReadableStream<Uint8Array>, done: Promise<unknown>) {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = stream.getReader();
  // A grandchild that outlives the tool may keep the pipe open: stop reading soon after the exit.
  let timer: ReturnType<typeof setTimeout> | undefined;
  let finished = false;
  done.then(() => {
    if (!finished) timer = setTimeout(() => reader.cancel().catch(() => {}), 500);
  });
  try {
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      if (size < outputCap) chunks.push(r.value.subarray(0, outputCap - size));
      size += r.value.length;
    }
  } catch {
    /* cancelled */
  } finally {
    finished = true;
    clearTimeout(timer);
  }
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return new TextDecoder().decode(out);
}

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The server's environment without its own NETROOT_* variables (NETROOT_TOKEN among them): a
 *  power tool sees only the NETROOT_* values its action sets. */
function inheritedEnv(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([k]) => !k.startsWith("NETROOT_")),
  );
}

/**
 * Runs `argv` (no shell) with `env` added, stdin closed, in its own process group; after
 * `timeoutMs` the group gets SIGTERM, then SIGKILL, and a PowerError says so. A missing program
 * is a 503 naming its package. The exit code is returned: the caller decides what failed means.
 */
export async function runTool(
  argv: string[],
  opts: {
    env?: Record<string, string>;
    timeoutMs: number;
    /** false: no process group of its own (a tool that starts nothing, like ssh): spawned without
     *  fork (posix_spawn), ~4× less CPU for the server; the timeout ends the tool alone. */
    group?: boolean;
    /** Ends the tool at once (SIGKILL) with a UserError naming the signal's reason: the server
     *  stops, and a node that holds its ssh open must not hold the stop, nor outlive it. */
    signal?: AbortSignal;
  },
): Promise<ToolResult> {
  const group = opts.group ?? true;
  // The tool a `nice -n N` runs is the one to name (ssh's timeouts were said as nice's).
  const tool = argv[0] === "nice" && argv[1] === "-n" ? argv[3] : argv[0];
  if (opts.signal?.aborted) throw new UserError(`${opts.signal.reason}`, 503);
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      env: { ...inheritedEnv(), ...opts.env },
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      detached: group, // setsid: the timeout can end the whole group
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      const pkg = packageOf[argv[0]];
      throw new UserError(
        `${argv[0]} not found${pkg ? `: install the Debian package ${pkg}` : ""}`,
        503,
      );
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new UserError(`${argv[0]} is not executable`, 409);
    }
    throw e;
  }
  const signal = (sig: Deno.Signal) => {
    try {
      Deno.kill(group ? -child.pid : child.pid, sig);
    } catch { /* gone */ }
  };
  let timedOut = false;
  let killer: ReturnType<typeof setTimeout> | undefined;
  const timer = setTimeout(() => {
    timedOut = true;
    signal("SIGTERM");
    killer = setTimeout(() => signal("SIGKILL"), killGraceMs);
  }, opts.timeoutMs);
  const abort = () => signal("SIGKILL");
  opts.signal?.addEventListener("abort", abort);
  const status = child.status;
  const [stdout, stderr, st] = await Promise.all([
    readCapped(child.stdout, status),
    readCapped(child.stderr, status),
    status,
  ]).finally(() => {
    clearTimeout(timer);
    clearTimeout(killer);
    opts.signal?.removeEventListener("abort", abort);
  });
  if (opts.signal?.aborted) throw new UserError(`${opts.signal.reason}`, 503);
  if (timedOut) {
    signal("SIGKILL"); // whatever the tool left behind in its group
    const said = firstLine(stderr);
    throw new PowerError(
      `${tool} did not finish within ${opts.timeoutMs / 1000} s${said ? ` (${said})` : ""}`,
    );
  }
  return { code: st.code, stdout, stderr };
}
