// Stage reports to the server: POST <netroot.url>/boot/report with the boot's identity and the
// reports (contract/report.ts). Reports made before the network is up are queued; once it is, every
// queued report goes in one POST (a batch), and reports made while a POST is under way go in the
// next one. Sending never blocks a boot stage, and a server that does not answer costs at most a
// bounded wait at handover.
import { MAX_BATCH, type StageReport } from "../contract/report.ts";
import { httpPostJson } from "./http.ts";
import { after } from "../src/timer.ts";

export type Post = (url: string, body: string, signal: AbortSignal) => Promise<void>;

/**
 * A signal that aborts once the event loop has been free for `ms`: it counts ticks of a short
 * timer, each worth at most its own period, so the time the loop was blocked (a synchronous mount
 * or module load of the init, seconds under TCG) is not counted against the server's answer.
 */
export function loopTimeout(ms: number, tickMs = 100): { signal: AbortSignal; clear(): void } {
  const ac = new AbortController();
  let left = ms;
  let last = performance.now();
  let cancel: () => void;
  const tick = () => {
    const now = performance.now();
    left -= Math.min(now - last, tickMs);
    last = now;
    if (left <= 0) ac.abort(new DOMException(`no answer within ${ms} ms`, "TimeoutError"));
    else cancel = after(Math.min(tickMs, left), tick);
  };
  cancel = after(Math.min(tickMs, left), tick);
  return { signal: ac.signal, clear: () => cancel() };
}

export class Reporter {
  #queue: (StageReport & { seq: number })[] = [];
  /** Numbers the reports of this boot: a retry sends the same number (contract/report.ts). */
  #seq = 0;
  #url?: string;
  #sending: Promise<void> = Promise.resolve();
  #busy = false;
  #failed = false;

  constructor(
    readonly ident: { token?: string; mac: string },
    private readonly onError: (msg: string) => void,
    private readonly post: Post = httpPostJson,
    private readonly perRequestMs = 3000,
  ) {}

  /** Starts sending (the network is up); the queued reports go first, in one POST. */
  enable(baseUrl: string | undefined): void {
    if (!baseUrl) return;
    this.#url = `${baseUrl}/boot/report`;
    this.#pump();
  }

  get enabled(): boolean {
    return this.#url !== undefined;
  }

  send(r: StageReport): void {
    this.#queue.push({ ...r, seq: ++this.#seq });
    if (this.#url) this.#pump();
  }

  /** One sender at a time: what is queued while a POST is under way goes in the next one. */
  #pump(): void {
    if (this.#busy) return;
    this.#busy = true;
    this.#sending = (async () => {
      try {
        while (this.#url && this.#queue.length) await this.#sendBatch(this.#url);
      } finally {
        this.#busy = false;
      }
    })();
  }

  async #sendBatch(url: string): Promise<void> {
    const batch = this.#queue.splice(0, MAX_BATCH);
    const body = JSON.stringify({ ...this.ident, reports: batch });
    // Two tries: a connection can stall (a lost packet; hybrid/mod.ts fetchManifest), a fresh one
    // may go through. The same numbers: the server records a report once.
    for (let attempt = 1; attempt <= 2; attempt++) {
      const t = loopTimeout(this.perRequestMs);
      try {
        await this.post(url, body, t.signal);
        return;
      } catch (e) {
        if (attempt < 2) continue;
        // Say it once: a server that ignores reports must not flood the console.
        if (!this.#failed) {
          const stages = batch.map((r) => r.stage).join(", ");
          this.onError(`report ${stages} to ${url} failed: ${e}`);
        }
        this.#failed = true;
      } finally {
        t.clear();
      }
    }
  }

  /** Waits until every queued report is sent, at most `ms`. False when time ran out. */
  async flush(ms: number): Promise<boolean> {
    let cancel = () => {};
    const timeout = new Promise<false>((res) => cancel = after(ms, () => res(false)));
    const done = (async () => {
      while (this.#busy || (this.#url && this.#queue.length)) await this.#sending;
      return true;
    })();
    try {
      return await Promise.race([done, timeout]);
    } finally {
      cancel();
    }
  }
}

/**
 * Bytes read from NFS servers so far, from /proc/self/mountstats: the `bytes:` line of each nfs/nfs4
 * mount, field 5 (server read bytes: what actually crossed the network, page cache hits excluded).
 */
export function nfsReadBytes(mountstats: string): number {
  let total = 0;
  let inNfs = false;
  for (const line of mountstats.split("\n")) {
    if (line.startsWith("device ")) inNfs = / with fstype nfs4? /.test(`${line} `);
    else if (inNfs) {
      const m = /^\s*bytes:\s+(.*)$/.exec(line);
      if (m) total += Number(m[1].trim().split(/\s+/)[4] ?? 0);
    }
  }
  return total;
}

export function readNfsBytes(path = "/proc/self/mountstats"): number | undefined {
  try {
    return nfsReadBytes(Deno.readTextFileSync(path));
  } catch {
    return undefined;
  }
}
