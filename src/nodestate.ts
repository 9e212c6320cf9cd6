// Node state, as the server knows it: off → booting (boot script fetched, or netroot powered the
// node on: vnode start or reset, power on or cycle) → booted (the image's own
// userland answers) → down (no longer answers); failed when the watchdog gave up. Nothing runs in
// the image for it: after the node's `handover` report the server probes a TCP port of the node
// (setting `boot.probe-port`, default 22: sshd, as WalT does) until it accepts a connection, and
// re-probes booted nodes every `recheckMs` (one connect per node, bounded concurrency).
//
// The watchdog (setting `boot.timeout`, default 180 s) hard-reboots a booting node that shows no
// progress (no report, no script fetch) for that long, through the reboot seam (src/reboot.ts), up
// to `boot.retries` (default 3) times; then the node is `failed`. A node whose init handed over
// but whose probe port never answers counts as hung, and is retried the same way, when an answer
// is expected: its image has an sshd (ssh host keys) or `boot.probe-port` is set explicitly. An
// image without sshd is not rebooted in a loop: when the watchdog fires it is `booted` with the
// reason "no answer on port N" and not re-probed.
import type { Context, Service } from "./context.ts";
import { UserError } from "./errors.ts";
import { logger } from "./log.ts";
import type { MonitoredNode, Setting } from "./nodes.ts";

const log = logger("state");

export const NODE_STATES = ["off", "booting", "booted", "down", "failed"] as const;
export type NodeState = typeof NODE_STATES[number];

/** The reason of `booting` that the boot script's fetch sets. */
export const SCRIPT_FETCHED = "boot script fetched";

export const STATE_DEFAULTS = { probePort: 22, watchdogS: 180, retries: 3 };

function numberOrNone(min: number, max: number, what: string) {
  return (key: string, value: string): string => {
    const v = value.trim().toLowerCase();
    if (v === "none") return v;
    if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
      throw new UserError(`${key} must be ${what} ${min}–${max} or none, got "${value}"`);
    }
    return String(Number(v));
  };
}

export const stateSettings: Setting[] = [
  { key: "boot.probe-port", check: numberOrNone(1, 65535, "a TCP port") },
  { key: "boot.timeout", check: numberOrNone(10, 86400, "seconds") },
  {
    key: "boot.retries",
    check: (key, value) => {
      const v = value.trim();
      if (!/^\d+$/.test(v) || Number(v) > 20) {
        throw new UserError(`${key} must be a whole number 0–20, got "${value}"`);
      }
      return String(Number(v));
    },
  },
];

/** The node's probe port, or null (`none`: the handover report means booted). */
export function probePort(settings: Record<string, string>): number | null {
  const v = settings["boot.probe-port"];
  return v === "none" ? null : Number(v) || STATE_DEFAULTS.probePort;
}

/** How far the node's boot got, for the watchdog's messages: the latest boot's last report,
 *  else whether the firmware fetched the boot script at all (a boot that netroot powered on
 *  starts before any script). */
function bootStage(n: MonitoredNode): string {
  if (n.stage) return n.stage;
  if (n.stateReason === SCRIPT_FETCHED) return "boot script fetched, no report from the init";
  return "no boot script fetched (the firmware's network boot)";
}

/** The node's watchdog in ms, or null (`none`: disabled). */
export function watchdogMs(settings: Record<string, string>): number | null {
  const v = settings["boot.timeout"];
  return v === "none" ? null : (Number(v) || STATE_DEFAULTS.watchdogS) * 1000;
}

export function retries(settings: Record<string, string>): number {
  const v = settings["boot.retries"];
  return v === undefined ? STATE_DEFAULTS.retries : Number(v);
}

/** One TCP connect to ip:port within `timeoutMs`: whether it was accepted. */
export async function tcpProbe(ip: string, port: number, timeoutMs: number): Promise<boolean> {
  const ac = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const connecting = Deno.connect({ hostname: ip, port, signal: ac.signal } as Deno.ConnectOptions);
  const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), timeoutMs));
  try {
    const c = await Promise.race([connecting, timeout]);
    if (c === "timeout") {
      ac.abort();
      connecting.then((late) => late.close(), () => {});
      return false;
    }
    c.close();
    return true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A report of the node's init (the Booter's `reported`): `handover` is booted at once when the
 * node has no probe port, else the monitor probes it; `fatal` means the node reboots itself: one
 * more attempt of this boot, or `failed` when the retries are used up.
 */
export function nodeReported(
  ctx: Pick<Context, "nodes" | "monitor">,
  mac: string,
  stage: string,
  now = Date.now(),
): void {
  if (stage !== "handover" && stage !== "fatal") return;
  const settings = ctx.nodes.secretSettings(mac);
  if (stage === "handover") {
    if (probePort(settings) === null) {
      ctx.nodes.setState(mac, "booted", "handover reported (boot.probe-port=none)", {
        from: ["off", "booting", "down", "failed"],
        at: now,
      });
    } else ctx.monitor?.probeSoon(mac);
    return;
  }
  // A fatal after handover (the switch to the image's init failed): not booted after all.
  ctx.nodes.setState(mac, "booting", "init reported fatal after handover", {
    from: ["booted"],
    at: now,
  });
  const used = ctx.nodes.retriesUsed(mac);
  if (used < retries(settings)) {
    ctx.nodes.countRetry(mac, "init reported fatal: the node reboots itself", now);
  } else {
    ctx.nodes.setState(mac, "failed", `init reported fatal; ${used} retries used`, {
      from: ["booting"],
      at: now,
    });
  }
}

export interface MonitorOptions {
  /** The clock (tests pass a fake one). */
  now?: () => number;
  probe?: (ip: string, port: number, timeoutMs: number) => Promise<boolean>;
  /** How often a pass runs (booting nodes past handover are probed at every pass; a handover
   *  report starts one at once). */
  tickMs?: number;
  /** How often a booted node is re-probed. */
  recheckMs?: number;
  /** Failed probes in a row after which a booted node is down. */
  downAfter?: number;
  probeTimeoutMs?: number;
  /** Probes at once. */
  concurrency?: number;
}

/** A reason the monitor gives when a node is booted without its port answering: never re-probed. */
const unprobed = (r: string | null) => r?.startsWith("handover") ?? false;

export class NodeMonitor {
  #ctx: Pick<Context, "nodes" | "rebooter"> & Partial<Pick<Context, "ssh">>;
  #now: () => number;
  #probe: NonNullable<MonitorOptions["probe"]>;
  readonly tickMs: number;
  #recheckMs: number;
  #downAfter: number;
  #probeTimeoutMs: number;
  #concurrency: number;
  #failures = new Map<string, number>();
  #probedAt = new Map<string, number>();
  /** The message of each node's last watchdog or down reboot, while it failed. */
  #rebootFailed = new Map<string, { reason: string; message: string }>();
  #pass?: Promise<void>;
  /** Hard reboots under way, beside the passes (#hardReboot). */
  #rebooting = new Set<Promise<void>>();

  constructor(
    ctx: Pick<Context, "nodes" | "rebooter"> & Partial<Pick<Context, "ssh">>,
    opts: MonitorOptions = {},
  ) {
    this.#ctx = ctx;
    this.#now = opts.now ?? Date.now;
    this.#probe = opts.probe ?? tcpProbe;
    this.tickMs = opts.tickMs ?? 5000;
    this.#recheckMs = opts.recheckMs ?? 10_000;
    this.#downAfter = opts.downAfter ?? 3;
    this.#probeTimeoutMs = opts.probeTimeoutMs ?? 2000;
    this.#concurrency = opts.concurrency ?? 32;
  }

  /** Probes the node at the next pass (its init just handed over). */
  probeSoon(mac: string): void {
    this.#probedAt.delete(mac);
    queueMicrotask(() => this.tick().catch(() => {}));
  }

  /** One pass over every node; concurrent calls share the running pass. The hard reboots it
   *  starts go on after it (settled). */
  tick(): Promise<void> {
    return this.#pass ??= this.#run().finally(() => this.#pass = undefined);
  }

  async #run(): Promise<void> {
    const now = this.#now();
    const work: (() => Promise<void>)[] = [];
    const nodes = this.#ctx.nodes.monitored();
    for (const n of nodes) {
      const job = this.#plan(n, now);
      if (job) work.push(job);
    }
    // Forgotten nodes leave nothing behind here.
    const known = new Set(nodes.map((n) => n.mac));
    for (const map of [this.#failures, this.#probedAt, this.#rebootFailed]) {
      for (const mac of map.keys()) if (!known.has(mac)) map.delete(mac);
    }
    let next = 0;
    const worker = async () => {
      while (next < work.length) {
        const job = work[next++];
        try {
          await job();
        } catch (e) {
          log.warn("node monitor step failed", { error: (e as Error).message });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.#concurrency, work.length) }, worker));
  }

  /** What this pass does for one node, or nothing. */
  #plan(n: MonitoredNode, now: number): (() => Promise<void>) | undefined {
    const port = probePort(n.settings);
    if (n.state === "booting") return this.#booting(n, now, port);
    if ((n.state === "booted" && !unprobed(n.stateReason)) || n.state === "down") {
      if (port === null || !n.ip || now - (this.#probedAt.get(n.mac) ?? 0) < this.#recheckMs) {
        return undefined;
      }
      this.#probedAt.set(n.mac, now);
      return async () => {
        const ok = await this.#probe(n.ip!, port, this.#probeTimeoutMs);
        const misses = ok ? 0 : (this.#failures.get(n.mac) ?? 0) + 1;
        this.#failures.set(n.mac, misses);
        if (ok && n.state === "down") {
          this.#set(n, "booted", `port ${port} answered again`, ["down"]);
        } else if (misses >= this.#downAfter && n.state === "booted") {
          const reason = `port ${port}: no answer to ${misses} probes`;
          this.#set(n, "down", reason, ["booted"]);
          if (n.settings["node.down.action"] === "reboot") {
            // Unreachable: the clean path (ssh) cannot work, so hard at once.
            this.#hardReboot(n, `node.down.action=reboot: ${reason}`, { state: "down", reason });
          }
        }
      };
    }
    return undefined;
  }

  #booting(n: MonitoredNode, now: number, port: number | null) {
    const handedOver = n.stage === "handover" && (n.reportedAt ?? 0) >= n.stateSince;
    const wd = watchdogMs(n.settings);
    const lastSign = Math.max(n.stateSince, n.reportedAt ?? 0);
    const expired = wd !== null && now - lastSign >= wd;
    if (!handedOver && !expired) return undefined; // nothing to do this pass: no job
    return async () => {
      if (handedOver && port === null) {
        this.#set(n, "booted", "handover reported (boot.probe-port=none)", ["booting"]);
        return;
      }
      // Silent past the watchdog, yet its port answers: the node runs its userland. Anyone on the
      // boot network may fetch its script, which makes it "booting" (and a flood of fetches drops
      // its boot's token, refusing its reports): without this probe one GET of a booted node's
      // script had the watchdog hard-reboot it 180 s later.
      const silent = !handedOver && port !== null;
      if ((handedOver || silent) && n.ip && await this.#probe(n.ip, port!, this.#probeTimeoutMs)) {
        this.#failures.set(n.mac, 0);
        this.#probedAt.set(n.mac, this.#now());
        const why = handedOver ? "" : " (no report from a boot since: not its boot, or lost)";
        this.#set(n, "booted", `port ${port} answered${why}`, ["booting"]);
        return;
      }
      if (!expired) return;
      const stage = handedOver ? `handover, then no answer on port ${port}` : bootStage(n);
      if (handedOver && !this.#answerExpected(n)) {
        this.#set(
          n,
          "booted",
          `handover reported; no answer on port ${port} within the watchdog (${wd! / 1000} s)`,
          ["booting"],
        );
      } else if (n.watchdogReboots < retries(n.settings)) {
        const cause = `watchdog: no progress for ${wd! / 1000} s (last stage: ${stage}), ` +
          `retry ${n.watchdogReboots + 1}/${retries(n.settings)}`;
        this.#ctx.nodes.countRetry(n.mac, cause, this.#now());
        this.#hardReboot(n, cause, { state: "booting", reason: cause });
      } else {
        // The last reboot's failure, while its reason still stands (no sign of a boot since).
        const failed = this.#rebootFailed.get(n.mac);
        const lastFailed = failed?.reason === n.stateReason ? failed.message : undefined;
        this.#set(
          n,
          "failed",
          `watchdog: gave up after ${n.watchdogReboots} reboots` +
            `${lastFailed ? ` (the last failed: ${lastFailed})` : ""}; last stage: ${stage}`,
          ["booting"],
        );
      }
    };
  }

  /** Whether a node that handed over must also answer on its probe port to count as booted (its
   *  userland hung otherwise: the watchdog retries it): when `boot.probe-port` is set explicitly,
   *  or its image has an sshd netroot knows (ctx.ssh: host keys in the image). Otherwise the
   *  handover suffices when the watchdog fires (an image without sshd is not rebooted in a loop). */
  #answerExpected(n: MonitoredNode): boolean {
    if ("boot.probe-port" in n.settings) return true;
    return n.imageId !== null && (this.#ctx.ssh?.serves(n.imageId) ?? false);
  }

  /** A hard reboot, not awaited by the pass: a power device that takes its whole timeout (twice
   *  for an ipmi cycle) held every other node's watchdog and probes until it answered. No second
   *  one for the node follows while it runs: the retry count restarts its watchdog, and a down
   *  node is rebooted only as it goes down. */
  #hardReboot(n: MonitoredNode, cause: string, shown: { state: NodeState; reason: string }): void {
    // A target without settings: mechanisms look the node's up (n.settings holds boot.* only).
    const { mac, name, virtual, ip } = n;
    const r = this.#ctx.rebooter.reboot({ mac, name, virtual, ip }, cause, { hard: true })
      .then((result) => {
        // A failed reboot (a BMC refusing the password, a PDU not answering) changed nothing on
        // the node: its state's reason says so, not only its log, and so does the giving up.
        if (result.ok) return void this.#rebootFailed.delete(mac);
        const reason = `${shown.reason}; ${result.message}`;
        this.#rebootFailed.set(mac, { reason, message: result.message });
        this.#ctx.nodes.amendReason(mac, shown.state, shown.reason, reason);
      })
      .catch((e) => log.warn("hard reboot failed", { node: name, error: e.message }))
      .finally(() => this.#rebooting.delete(r));
    this.#rebooting.add(r);
  }

  /** Resolves when the hard reboots started so far have ended. */
  async settled(): Promise<void> {
    while (this.#rebooting.size) await Promise.all([...this.#rebooting]);
  }

  #set(n: MonitoredNode, to: NodeState, reason: string, from: NodeState[]): void {
    this.#ctx.nodes.setState(n.mac, to, reason, { from, at: this.#now() });
  }

  /** Runs a pass every tickMs until closed. */
  start(): Service {
    const timer = setInterval(() => {
      this.tick().catch((e) =>
        log.warn("node monitor pass failed", { error: (e as Error).message })
      );
    }, this.tickMs);
    return {
      name: "node-monitor",
      close: async () => {
        clearInterval(timer);
        await this.#pass;
        await this.settled();
      },
    };
  }
}
