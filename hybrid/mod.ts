// Hybrid boot entry point for `netroot init`: detect the partition, copy/verify the image, lay out
// the overlay. Returns undefined for network mode (no partition, or any failure — the node must
// still boot, so failures fall back to network mode and are said loudly).
import type { HybridProbe } from "../overlay/init.ts";
import { mountWithRetry } from "../overlay/rootsource.ts";
import { MNT_DETACH, mount, umount } from "../src/linux/mount.ts";
import { findHybridPartition, type HybridTarget } from "./detect.ts";
import { type HybridRoot, prepareHybridRoot } from "./mode.ts";
import type { CopyProgress } from "./copy.ts";

export { HYBRID_DIR_NAMES } from "./detect.ts";
export type { HybridRoot, HybridTarget };

export interface HybridBootOptions {
  imageId: string;
  /** mounts the image tree (read-only NFS) and returns where; called only when a partition is found */
  mountSource(): Promise<string>;
  unmountSource(): Promise<void>;
  /** where candidate partitions get mounted, e.g. /run/netroot/disks */
  mountBase: string;
  mount(device: string, dir: string): Promise<void>;
  umount(dir: string): Promise<void>;
  fetchManifest(): Promise<string>;
  log(msg: string): void;
  report(stage: string, detail: Record<string, unknown>, ok?: boolean): void;
  sysClassBlock?: string;
  devDir?: string;
  skip?: RegExp;
}

export interface HybridBoot extends HybridRoot {
  target: HybridTarget;
}

export async function tryHybridBoot(o: HybridBootOptions): Promise<HybridBoot | undefined> {
  const t0 = performance.now();
  const target = await findHybridPartition({
    mount: o.mount,
    umount: o.umount,
    mountBase: o.mountBase,
    sysClassBlock: o.sysClassBlock,
    devDir: o.devDir,
    skip: o.skip,
    log: o.log,
  });
  if (!target) return undefined;
  const variant = target.persistent ? "persistent" : "volatile";
  o.log(
    `hybrid mode (${variant}): ${target.device} holds ${target.dirName}/ ` +
      `(${Math.round(performance.now() - t0)} ms)`,
  );
  let source: string | undefined;
  try {
    const manifestText = await o.fetchManifest();
    source = await o.mountSource();
    let lastPct = -1;
    const onProgress = (p: CopyProgress) => {
      const pct = p.total ? Math.floor((p.done / p.total) * 100) : 100;
      if (pct === lastPct) return;
      lastPct = pct;
      o.log(`hybrid copy ${pct}% (${mb(p.done)}/${mb(p.total)} MB, ${mb(p.rate)} MB/s)`);
      o.report("hybrid-copy", { done: p.done, total: p.total, rate: Math.round(p.rate) });
    };
    const root = await prepareHybridRoot({
      hybridDir: target.dir,
      persistent: target.persistent,
      imageId: o.imageId,
      manifestText,
      source,
      onProgress,
      log: o.log,
    });
    const r = root.report;
    o.log(
      r.bytesWritten + r.bytesLinked + r.bytesReused === 0
        ? "hybrid copy already complete: no copy"
        : `hybrid copy done: ${mb(r.bytesWritten)} MB written, ${
          mb(r.bytesLinked)
        } MB linked from ` +
          `other copies, ${mb(r.bytesReused)} MB kept from an interrupted copy, ${
            (r.ms / 1000).toFixed(1)
          } s`,
    );
    o.report("hybrid-ready", { variant, ...r, evicted: root.evicted.length });
    return { ...root, target };
  } catch (e) {
    const msg = (e as Error).message;
    o.log(`HYBRID MODE FAILED: ${msg} — falling back to network mode`);
    o.report("hybrid-failed", { error: msg, reason: (e as { reason?: string }).reason }, false);
    if (source) await o.unmountSource().catch(() => {});
    await o.umount(target.mountpoint).catch(() => {});
    return undefined;
  }
}

const mb = (n: number) => (n / 1e6).toFixed(1);

/** The HybridProbe that `netroot init` calls in netroot.mode=auto (overlay/init.ts). */
export const hybridProbe: HybridProbe = async (
  { params: p, out, report, rootSource, layout: l },
) => {
  if (!p.image || !p.url) {
    out.line("hybrid: no netroot.image/netroot.url on the command line: network mode");
    return null;
  }
  const boot = await tryHybridBoot({
    imageId: p.image,
    mountBase: "/run/netroot/disks",
    mount: (dev, dir) => Promise.resolve(mount(dev, dir, "ext4", 0, null)),
    umount: (dir) => Promise.resolve(umount(dir)),
    mountSource: async () => {
      Deno.mkdirSync(l.lower, { recursive: true });
      await mountWithRetry(rootSource, l.lower, true, p.timeoutS * 1000, out);
      return l.lower;
    },
    unmountSource: () => Promise.resolve(umount(l.lower, MNT_DETACH)),
    fetchManifest: () => fetchManifest(`${p.url}/boot/${p.mac}/manifest`, (m) => out.line(m)),
    log: (m) => out.line(m),
    report: (stage, detail, ok = true) => report({ stage, ok, detail: JSON.stringify(detail) }),
  });
  if (!boot) return null;
  return {
    mode: `hybrid-${boot.variant} on ${boot.target.device} (${boot.target.dirName}/)`,
    mountNewRoot(newRoot: string) {
      Deno.mkdirSync(newRoot, { recursive: true });
      mount(
        "overlay",
        newRoot,
        "overlay",
        0,
        `lowerdir=${boot.lower},upperdir=${boot.upper},workdir=${boot.work}`,
      );
      // The local copy is the root now: the NFS image is no longer needed.
      umount(l.lower, MNT_DETACH);
      return Promise.resolve();
    },
  };
};

/**
 * The manifest, with a few short attempts rather than one long one: right after the NIC comes up a
 * first connection can stall (seen under TCG: a request hung for its whole 30 s), and a fresh
 * connection goes through while a hybrid node would otherwise fall back to network mode.
 */
export async function fetchManifest(
  url: string,
  log: (m: string) => void,
  attempts = 4,
  timeoutMs = 8000,
): Promise<string> {
  for (let i = 1;; i++) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
      if (!r.ok) {
        await r.body?.cancel();
        throw new Error(`manifest: HTTP ${r.status} from ${url}`);
      }
      return await r.text();
    } catch (e) {
      if (i >= attempts || /HTTP 4\d\d/.test((e as Error).message)) throw e;
      log(`manifest attempt ${i} failed: ${(e as Error).message}; retrying`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}
