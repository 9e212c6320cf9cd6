// Hybrid boot entry point for `netroot init`: detect the partition, copy/verify the image, lay out
// the overlay. Returns undefined for network mode (no partition, or any failure — the node must
// still boot, so failures fall back to network mode and are said loudly).
import { findHybridPartition, type HybridTarget } from "./detect.ts";
import { type HybridRoot, prepareHybridRoot } from "./mode.ts";
import type { CopyProgress } from "./copy.ts";

export { HYBRID_DIR_NAMES } from "./detect.ts";
export type { HybridRoot, HybridTarget };

export interface HybridBootOptions {
  imageId: string;
  /** the image tree (read-only NFS mount) */
  source: string;
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
  const detectMs = Math.round(performance.now() - t0);
  if (!target) {
    o.report("hybrid-detect", { found: false, ms: detectMs });
    return undefined;
  }
  const variant = target.persistent ? "persistent" : "volatile";
  o.log(`hybrid mode (${variant}): ${target.device} holds ${target.dirName}/`);
  o.report("hybrid-detect", {
    found: true,
    device: target.device,
    dir: target.dirName,
    variant,
    ms: detectMs,
  });
  try {
    const manifestText = await o.fetchManifest();
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
      source: o.source,
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
    await o.umount(target.mountpoint).catch(() => {});
    return undefined;
  }
}

const mb = (n: number) => (n / 1e6).toFixed(1);
