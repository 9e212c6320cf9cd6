// Where the read-only lower layer (and /persist) come from. Production: NFS through mount(2) with
// kernel text options. Tests on a host without an NFS client: a bind mount of a local directory.
// Both go through the same sequence (overlay/init.ts hands the image to the root modes).
import type { NfsTarget, NfsVersion } from "../contract/cmdline.ts";
import { mount, MS_BIND, MS_RDONLY, MS_REMOUNT } from "../src/linux/mount.ts";
import type { InitConsole } from "./console.ts";
import { fmtMs } from "./console.ts";
import { sleep as sleepMs } from "../src/timer.ts";

export interface MountSource {
  /** What a human reads on the console ("nfs4 10.77.0.1:/netroot/images/x"). */
  describe: string;
  /** Mounts it at `target` (read-only or read-write as `readOnly` says); throws on failure. */
  mount(target: string, readOnly: boolean): void;
}

/** Caching for an image version's tree, which the server never changes in place (a change is
 *  a new version in a new tree; docs/architecture.md, "Object store"): no attribute check at
 *  each open (`nocto`) and attributes kept an hour. A stock Debian boot to multi-user asked the
 *  server 207 GETATTRs without them, 1 with them (of ≈ 1,700 calls; docs/benchmarks.md). */
const IMMUTABLE_TREE = "nocto,actimeo=3600";

/** fstype and data for mount(2): no mount.nfs to translate, so `addr=` is explicit. `immutable`:
 *  an image's tree (IMMUTABLE_TREE), not a node's /persist. */
export function nfsMountArgs(
  t: NfsTarget,
  version: NfsVersion,
  immutable: boolean,
): { source: string; fstype: string; data: string } {
  const source = `${t.host}:${t.path}`;
  const caching = immutable ? `,${IMMUTABLE_TREE}` : "";
  if (version === "3") {
    return { source, fstype: "nfs", data: `vers=3,proto=tcp,nolock,addr=${t.host}${caching}` };
  }
  return { source, fstype: "nfs4", data: `vers=${version},addr=${t.host}${caching}` };
}

export function nfsSource(t: NfsTarget, version: NfsVersion, immutable: boolean): MountSource {
  const a = nfsMountArgs(t, version, immutable);
  return {
    describe: `${a.fstype} ${a.source} (${a.data})`,
    mount: (target, ro) => mount(a.source, target, a.fstype, ro ? MS_RDONLY : 0, a.data),
  };
}

/** A local directory, bind-mounted (read-only via a remount, as the bind flag alone ignores it). */
export function bindSource(dir: string): MountSource {
  return {
    describe: `bind ${dir}`,
    mount: (target, ro) => {
      mount(dir, target, null, MS_BIND);
      if (ro) mount(null, target, null, MS_BIND | MS_REMOUNT | MS_RDONLY);
    },
  };
}

/** Backoff between attempts: 0.5 s doubling, at most 5 s. */
export const backoffMs = (attempt: number) => Math.min(5000, 500 * 2 ** (attempt - 1));

/**
 * Mounts `src` at `target`, retrying until `budgetMs` is spent, printing each failed attempt.
 * Each mount(2) is synchronous (errno is per thread, so the call stays on ours); the budget is
 * checked between attempts.
 */
export async function mountWithRetry(
  src: MountSource,
  target: string,
  readOnly: boolean,
  budgetMs: number,
  out: InitConsole,
  sleep = sleepMs,
): Promise<{ attempts: number; ms: number }> {
  const t0 = performance.now();
  for (let attempt = 1;; attempt++) {
    try {
      src.mount(target, readOnly);
      return { attempts: attempt, ms: performance.now() - t0 };
    } catch (e) {
      const spent = performance.now() - t0;
      const wait = Math.min(backoffMs(attempt), budgetMs - spent);
      const msg = e instanceof Error ? e.message : String(e);
      if (wait <= 0) {
        throw new Error(`${msg} — gave up after ${attempt} attempts in ${fmtMs(spent)}`);
      }
      // msg names source, target and options already (SyscallError detail).
      out.line(
        `mount attempt ${attempt} failed: ${msg}; retrying in ${fmtMs(wait)} ` +
          `(${fmtMs(spent)} of ${fmtMs(budgetMs)} spent)`,
      );
      await sleep(wait);
    }
  }
}
