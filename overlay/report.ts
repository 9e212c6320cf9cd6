// Stage reports to the server: POST <netroot.url>/boot/report with the boot's identity and the
// report's fields (contract/report.ts). Reports made before the network is up are queued and sent
// once it is; sending never blocks a boot stage, and a server that does not answer costs at most a
// bounded wait at handover.
import type { StageReport } from "../contract/report.ts";

export type Post = (url: string, body: string, signal: AbortSignal) => Promise<void>;

const httpPost: Post = async (url, body, signal) => {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
    signal,
  });
  await r.body?.cancel();
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
};

export class Reporter {
  #queue: (StageReport & { seq: number })[] = [];
  /** Numbers the reports of this boot: a retry sends the same number (contract/report.ts). */
  #seq = 0;
  #url?: string;
  #sending: Promise<void> = Promise.resolve();
  #failed = false;

  constructor(
    readonly ident: { token?: string; mac: string },
    private readonly onError: (msg: string) => void,
    private readonly post: Post = httpPost,
    private readonly perRequestMs = 3000,
  ) {}

  /** Starts sending (the network is up); queued reports go first, in order. */
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

  #pump(): void {
    this.#sending = this.#sending.then(async () => {
      while (this.#url && this.#queue.length) {
        const r = this.#queue.shift()!;
        const body = JSON.stringify({ ...this.ident, ...r });
        // Two tries: right after the NIC comes up a first connection can stall (seen under qemu
        // TCG); a fresh one usually goes through. Still bounded: flush() caps the wait at handover.
        for (let attempt = 1; attempt <= 2; attempt++) {
          try {
            await this.post(this.#url, body, AbortSignal.timeout(this.perRequestMs));
            break;
          } catch (e) {
            if (attempt < 2) continue;
            // Say it once: a server that ignores reports must not flood the console.
            if (!this.#failed) this.onError(`report ${r.stage} to ${this.#url} failed: ${e}`);
            this.#failed = true;
          }
        }
      }
    });
  }

  /** Waits until every queued report is sent, at most `ms`. False when time ran out. */
  async flush(ms: number): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<false>((res) => timer = setTimeout(() => res(false), ms));
    try {
      return await Promise.race([this.#sending.then(() => true), timeout]);
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
