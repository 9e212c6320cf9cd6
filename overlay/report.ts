// Stage reports to the server: POST <netroot.url>/boot/report with the boot's identity and the
// reports (contract/report.ts). Reports made before the network is up are queued; once it is, every
// queued report goes in one POST (a batch), and reports made while a POST is under way go in the
// next one. Sending never blocks a boot stage, and a server that does not answer costs at most a
// bounded wait at handover.
import { MAX_BATCH, type StageReport } from "../contract/report.ts";

export type Post = (url: string, body: string, signal: AbortSignal) => Promise<void>;

/** fetch: for https (and anything but plain http). */
const fetchPost: Post = async (url, body, signal) => {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
    signal,
  });
  await r.body?.cancel();
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
};

/**
 * One HTTP/1.1 POST over a plain TCP connection, answered by its status line. Cheaper than fetch
 * for the init: fetch's first call sets up an HTTP client (TLS roots included) that costs about a
 * third of a second of CPU under qemu TCG, on the boot's critical path.
 */
export async function rawHttpPost(url: string, body: string, signal: AbortSignal): Promise<void> {
  const u = new URL(url);
  if (u.protocol !== "http:") return fetchPost(url, body, signal);
  signal.throwIfAborted();
  const connecting = Deno.connect({
    hostname: u.hostname.replace(/^\[|\]$/g, ""),
    port: Number(u.port || 80),
  });
  let aborted: () => void = () => {};
  const abort = new Promise<never>((_, rej) => {
    aborted = () => rej(signal.reason);
    signal.addEventListener("abort", aborted, { once: true });
  });
  let conn: Deno.TcpConn;
  try {
    conn = await Promise.race([connecting, abort]);
  } catch (e) {
    connecting.then((c) => c.close(), () => {}); // a connection that comes too late
    throw e;
  } finally {
    signal.removeEventListener("abort", aborted);
  }
  const onAbort = () => conn.close();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    const data = new TextEncoder().encode(body);
    const head = `POST ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${data.length}\r\n` +
      `Connection: close\r\n\r\n`;
    const req = new Uint8Array([...new TextEncoder().encode(head), ...data]);
    for (let at = 0; at < req.length;) at += await conn.write(req.subarray(at));
    const buf = new Uint8Array(512);
    let got = "";
    while (!/\r?\n/.test(got) && got.length < 512) {
      const n = await conn.read(buf);
      if (n === null) break;
      got += new TextDecoder().decode(buf.subarray(0, n));
    }
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(got)?.[1];
    if (!status) throw new Error(`no HTTP answer (${JSON.stringify(got.slice(0, 40))})`);
    if (!status.startsWith("2")) throw new Error(`HTTP ${status}`);
  } catch (e) {
    if (signal.aborted) throw signal.reason;
    throw e;
  } finally {
    signal.removeEventListener("abort", onAbort);
    try {
      conn.close();
    } catch { /* closed by the abort */ }
  }
}

/**
 * A signal that aborts once the event loop has been free for `ms`: it counts ticks of a short
 * timer, each worth at most its own period, so the time the loop was blocked (a synchronous mount
 * or module load of the init, seconds under TCG) is not counted against the server's answer.
 */
export function loopTimeout(ms: number, tickMs = 100): { signal: AbortSignal; clear(): void } {
  const ac = new AbortController();
  let left = ms;
  let last = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const tick = () => {
    const now = performance.now();
    left -= Math.min(now - last, tickMs);
    last = now;
    if (left <= 0) ac.abort(new DOMException(`no answer within ${ms} ms`, "TimeoutError"));
    else timer = setTimeout(tick, Math.min(tickMs, left));
  };
  timer = setTimeout(tick, Math.min(tickMs, left));
  return { signal: ac.signal, clear: () => clearTimeout(timer) };
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
    private readonly post: Post = rawHttpPost,
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
    // Two tries: right after the NIC comes up a first connection can stall (seen under qemu TCG);
    // a fresh one usually goes through. The same numbers: the server records a report once.
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
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<false>((res) => timer = setTimeout(() => res(false), ms));
    const done = (async () => {
      while (this.#busy || (this.#url && this.#queue.length)) await this.#sending;
      return true;
    })();
    try {
      return await Promise.race([done, timeout]);
    } finally {
      clearTimeout(timer);
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
