// The seam between "deploy" (or `node reboot`, the watchdog, node.down.action) and "make the node
// boot again". Soft first: a booted node is asked to reboot itself (`soft`: ssh `reboot` in
// src/nodessh.ts, a clean shutdown by the image's own init), then watched until it goes down; a
// node that is not down within `reboot.soft-timeout` (default 30 s), or that could not be asked,
// gets the hard mechanism. Hard mechanisms (virtual node reset, a power driver) register
// themselves; the first that handles a node wins. The caller gets its answer once the soft
// request is issued: the wait and any escalation run in the background, as timeline events.
import type { Db } from "./db.ts";
import { UserError } from "./errors.ts";
import { recordEvent } from "./events.ts";
import { logger } from "./log.ts";
import type { Setting } from "./nodes.ts";

const log = logger("reboot");

export interface RebootTarget {
  mac: string;
  name: string;
  virtual: boolean;
  ip?: string | null;
}

export interface RebootMechanism {
  name: string;
  handles(node: RebootTarget): boolean;
  reboot(node: RebootTarget, cause: string): Promise<void>;
}

export interface RebootResult {
  mac: string;
  mechanism?: string;
  ok: boolean;
  message: string;
}

/** A soft request under way (see SoftReboot). */
export interface SoftRequest {
  /** Settles once the node has the request (`delivered`) or certainly never got it (not
   *  delivered: no sshd, refused key, wrong host key: escalate at once). */
  sent: Promise<{ delivered: boolean; detail: string }>;
  /** Within this long the node must go down, else the hard mechanism follows. */
  timeoutMs: number;
  /** Whether the node went down (its port closed, a new boot began, it is off). */
  isDown(): Promise<boolean>;
}

/** The soft step: asks the node's own init for a clean reboot. */
export interface SoftReboot {
  name: string;
  /** Issues the request before returning (the API answers once requests are issued), or says
   *  why this node cannot be asked (not booted, no address, no host keys to trust, no key). */
  request(node: RebootTarget): SoftRequest | SoftUnavailable;
}

/** Why a node cannot be asked; `expected` (it is not booted): the hard way is the normal one,
 *  said in the event but not in the caller's message. */
export interface SoftUnavailable {
  unavailable: string;
  expected?: boolean;
}

/** The settings of the reboot path (src/server.ts adds them to every node's rules). */
export const rebootSettings: Setting[] = [
  {
    key: "reboot.soft-timeout",
    check: (key, value) => {
      const v = value.trim();
      if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 3600) {
        throw new UserError(`${key} must be whole seconds 1–3600, got "${value}"`);
      }
      return String(Number(v));
    },
  },
  {
    key: "node.down.action",
    check: (key, value) => {
      const v = value.trim().toLowerCase();
      if (v !== "reboot" && v !== "none") {
        throw new UserError(`${key} must be reboot or none, got "${value}"`);
      }
      return v;
    },
  },
];

export const SOFT_TIMEOUT_S = 30;

/** The node's soft-reboot timeout in ms (setting reboot.soft-timeout). */
export function softTimeoutMs(settings: Record<string, string>): number {
  return (Number(settings["reboot.soft-timeout"]) || SOFT_TIMEOUT_S) * 1000;
}

export interface RebooterOptions {
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
  /** How often a soft-rebooted node is checked for being down. */
  pollMs?: number;
}

export class Rebooter {
  #mechanisms: RebootMechanism[] = [];
  /** The soft step (set by openContext once the context exists); none: every reboot is hard. */
  soft?: SoftReboot;
  /** A soft-rebooted node went down (openContext: it is `booting`, under the watchdog). */
  wentDown?: (mac: string, mechanism: string) => void;
  /** Node `mac`'s clean reboots have all ended (down, escalated, given up, or the server
   *  stops): softRebooting is false again, though its state may not have changed. */
  softEnded?: (mac: string) => void;
  #following = new Set<Promise<void>>();
  /** Nodes asked for a clean reboot that have not gone down (nor been rebooted hard) yet: still
   *  `booted`, on their way out (GET /wait does not count them there). */
  #softPending = new Map<string, number>();
  /** Node → its last reboot that did not happen (no mechanism, or it failed: the node still runs
   *  what it booted before), with when (Date.now()). Kept until the node's next reboot request;
   *  GET /wait compares it with the node's state's start. */
  #notRebooted = new Map<string, { at: number; why: string }>();
  #closed = false;
  /** The waits under way (sleeps, soft requests being sent), each ended early when the server
   *  stops. Each leaves the set as it ends: callbacks hung on a promise of the server's closing
   *  stayed until the server stopped (~1 KB per node and second of every soft reboot, for the
   *  server's whole life). */
  #waiting = new Set<() => void>();
  #now: () => number;
  #sleep: (ms: number) => Promise<void>;
  #pollMs: number;

  constructor(private db: Db, opts: RebooterOptions = {}) {
    this.#now = opts.now ?? Date.now;
    // A sleep that ends when the server stops (no timer left behind).
    this.#sleep = opts.sleep ?? ((ms) =>
      new Promise((r) => {
        if (this.#closed) return r();
        const wake = () => {
          clearTimeout(t);
          this.#waiting.delete(wake);
          r();
        };
        const t = setTimeout(wake, ms);
        this.#waiting.add(wake);
      }));
    // Each check may be a TCP connect to the node's sshd (a fork there): once a second is enough.
    this.#pollMs = opts.pollMs ?? 1000;
  }

  register(m: RebootMechanism): void {
    this.#mechanisms.push(m);
  }

  /** Soft first (unless `hard`); returns once the soft request is issued or the hard one done. */
  reboot(node: RebootTarget, cause: string, opts: { hard?: boolean } = {}): Promise<RebootResult> {
    this.#notRebooted.delete(node.mac);
    if (opts.hard || !this.soft) return this.#hard(node, cause, {});
    let req: SoftRequest | SoftUnavailable;
    try {
      req = this.soft.request(node);
    } catch (e) {
      req = { unavailable: (e as Error).message };
    }
    if ("unavailable" in req) {
      return this.#hard(node, cause, { soft: `not tried: ${req.unavailable}` }, req.expected);
    }
    const mechanism = this.soft.name;
    const timeoutS = req.timeoutMs / 1000;
    recordEvent(this.db, node.mac, "reboot.requested", { cause, mechanism, timeoutS });
    this.#softPending.set(node.mac, (this.#softPending.get(node.mac) ?? 0) + 1);
    const follow = this.#follow(node, cause, req).catch((e) =>
      log.warn("soft reboot follow-up failed", { node: node.name, error: (e as Error).message })
    ).finally(() => {
      this.#following.delete(follow);
      const left = (this.#softPending.get(node.mac) ?? 1) - 1;
      if (left) this.#softPending.set(node.mac, left);
      else {
        this.#softPending.delete(node.mac);
        this.softEnded?.(node.mac);
      }
    });
    this.#following.add(follow);
    return Promise.resolve({
      mac: node.mac,
      mechanism,
      ok: true,
      message:
        `clean reboot requested (${mechanism}); hard reboot if not down within ${timeoutS} s`,
    });
  }

  /** Waits for the soft-rebooted node to go down; else escalates to the hard mechanism. */
  async #follow(node: RebootTarget, cause: string, req: SoftRequest): Promise<void> {
    const t0 = this.#now();
    const mechanism = this.soft!.name;
    const sent = await this.#unlessClosed(req.sent);
    if (sent === null) return; // the server stops
    if (!sent.delivered) {
      await this.#hard(node, cause, { soft: `${mechanism} failed: ${sent.detail}` });
      return;
    }
    for (;;) {
      if (this.#closed) return;
      if (await req.isDown()) {
        recordEvent(this.db, node.mac, "reboot", {
          cause,
          mechanism,
          downMs: Math.round(this.#now() - t0),
        });
        this.wentDown?.(node.mac, mechanism);
        return;
      }
      if (this.#now() - t0 >= req.timeoutMs) break;
      await this.#sleep(this.#pollMs);
    }
    if (this.#closed) return;
    await this.#hard(node, cause, {
      soft: `${mechanism}: not down within ${req.timeoutMs / 1000} s (${sent.detail})`,
    });
  }

  /** `p`'s value, or null as soon as the server stops. */
  #unlessClosed<T>(p: Promise<T>): Promise<T | null> {
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const stop = () => {
        this.#waiting.delete(stop);
        resolve(null);
      };
      this.#waiting.add(stop);
      p.then(resolve, reject).finally(() => this.#waiting.delete(stop));
    });
  }

  /** The hard mechanism; `extra` says why the soft step was not (or not enough). */
  async #hard(
    node: RebootTarget,
    cause: string,
    extra: { soft?: string },
    quiet = false,
  ): Promise<RebootResult> {
    const m = this.#mechanisms.find((x) => x.handles(node));
    const after = extra.soft && !quiet ? ` (clean reboot ${extra.soft})` : "";
    if (!m) {
      const message = `no reboot mechanism for this node: power-cycle it by hand${after}`;
      recordEvent(this.db, node.mac, "reboot.none", { cause, message, ...extra });
      this.#notRebooted.set(node.mac, { at: Date.now(), why: message });
      return { mac: node.mac, ok: false, message };
    }
    try {
      await m.reboot(node, cause);
      recordEvent(this.db, node.mac, "reboot", { cause, mechanism: m.name, ...extra });
      return {
        mac: node.mac,
        mechanism: m.name,
        ok: true,
        message: `rebooted by ${m.name}${after}`,
      };
    } catch (e) {
      const message = `${m.name} reboot failed: ${(e as Error).message}`;
      recordEvent(this.db, node.mac, "reboot.failed", {
        cause,
        mechanism: m.name,
        message,
        ...extra,
      });
      this.#notRebooted.set(node.mac, { at: Date.now(), why: message });
      // in the server's log too: a BMC refusing its password, say, fails every reboot of the node
      // (the watchdog's, a deploy's) and the journal said nothing of it
      log.warn("reboot failed", { node: node.name, cause, error: message });
      return { mac: node.mac, mechanism: m.name, ok: false, message };
    }
  }

  /** Whether node `mac` was asked for a clean reboot and has not gone down yet (nor been
   *  rebooted hard): its state still says what it was before. */
  softRebooting(mac: string): boolean {
    return this.#softPending.has(mac);
  }

  /** Why node `mac`'s last reboot did not happen, if it did not and the node has been in its
   *  state since before then (`stateSince`, ISO): it still runs what it booted before. A node
   *  that went down or booted since (power-cycled by hand) is past it. */
  notRebootedSince(mac: string, stateSince: string | null): string | undefined {
    const f = this.#notRebooted.get(mac);
    if (!f || (stateSince && Date.parse(stateSince) > f.at)) return undefined;
    return f.why;
  }

  /** Resolves when every soft reboot under way has ended (down, or escalated). */
  async settled(): Promise<void> {
    while (this.#following.size) await Promise.all([...this.#following]);
  }

  /** Stops following soft reboots (the server stops): nothing escalates after this. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const stop of this.#waiting) stop();
    await this.settled();
  }
}
