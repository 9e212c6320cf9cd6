// Hybrid mode (a RootMode, contract/rootmode.ts), the node side of `netroot init` in
// netroot.mode=auto: detect the partition, copy/verify the image, lay out the overlay. Not applying
// (false) means network mode: no partition, or any failure — the node must still boot, so failures
// fall back to network mode and are said loudly.
import { bootFileUrl } from "../contract/bootfiles.ts";
import { progressText, type StageReport } from "../contract/report.ts";
import type { Layout, RootEnv, RootMode } from "../contract/rootmode.ts";
import {
  bindReadOnly,
  MNT_DETACH,
  mount,
  MS_BIND,
  MS_RDONLY,
  MS_REMOUNT,
  umount,
} from "../src/linux/mount.ts";
import { findHybridPartition, type HybridTarget } from "./detect.ts";
import { type HybridRoot, prepareHybridRoot } from "./mode.ts";
import { type CopyProgress, type CopyReport, type HybridError, maxManifestBytes } from "./copy.ts";
import { withEarlyWriteback } from "./writeback.ts";
import { isExecutableIn } from "../contract/rootpath.ts";
import { sleep } from "../src/timer.ts";

export { HYBRID_DIR_NAMES } from "./detect.ts";
export type { HybridRoot, HybridTarget };

export interface HybridBootOptions {
  imageId: string;
  /** mounts the image tree (read-only NFS) and returns where; called only when a partition is found */
  mountSource(): Promise<string>;
  unmountSource(): Promise<void>;
  /** where candidate partitions get mounted, e.g. /run/netroot/disks */
  mountBase: string;
  mount(device: string, dir: string, readOnly: boolean): Promise<void>;
  umount(dir: string): Promise<void>;
  fetchManifest(): Promise<string>;
  log(msg: string): void;
  report(r: StageReport): void;
  sysClassBlock?: string;
  devDir?: string;
  skip?: RegExp;
  /** Runs the copy, once a partition is found: the init sets the kernel's writeback for it
   *  (writeback.ts); tests and tools that call the copy leave the host's setting alone. */
  aroundCopy?: <T>(copy: () => Promise<T>) => Promise<T>;
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
    const from = source;
    const copy = () =>
      prepareHybridRoot({
        hybridDir: target.dir,
        persistent: target.persistent,
        imageId: o.imageId,
        manifestText,
        source: from,
        onProgress: progressReporter(o),
        log: o.log,
      });
    const root = await (o.aroundCopy ? o.aroundCopy(copy) : copy());
    const done = copyDoneText(root.report);
    o.log(done);
    o.report({ stage: "hybrid-ready", ok: true, detail: done, ...readyFields(root) });
    return { ...root, target };
  } catch (e) {
    const msg = (e as Error).message;
    o.log(`HYBRID MODE FAILED: ${msg} — falling back to network mode`);
    o.report({ stage: "hybrid-failed", ok: false, detail: msg, reason: (e as HybridError).reason });
    if (source) await o.unmountSource().catch(() => {});
    await o.umount(target.mountpoint).catch(() => {});
    return undefined;
  }
}

/** Progress on the console and to the server, once per whole percent. */
function progressReporter(o: HybridBootOptions): (p: CopyProgress) => void {
  let lastPct = -1;
  return (p) => {
    const pct = p.total ? Math.floor((p.done / p.total) * 100) : 100;
    if (pct === lastPct) return;
    lastPct = pct;
    o.log(`hybrid copy ${progressText(p)}`);
    o.report({ stage: "hybrid-copy", done: p.done, total: p.total, rate: Math.round(p.rate) });
  };
}

function copyDoneText(r: CopyReport): string {
  if (r.bytesWritten + r.bytesLinked + r.bytesReused + r.bytesKept === 0) {
    return "hybrid copy already complete: no copy";
  }
  return `hybrid copy done: ${mb(r.bytesWritten)} MB written, ${mb(r.bytesLinked)} MB linked ` +
    `from other copies, ${mb(r.bytesReused)} MB kept from an interrupted copy, ` +
    `${mb(r.bytesKept)} MB kept in place from the previous version, ` +
    `${(r.ms / 1000).toFixed(1)} s`;
}

/** The hybrid-ready report's fields: what the copy did (contract/report.ts). */
function readyFields(root: HybridRoot): Partial<StageReport> {
  const r = root.report;
  return {
    ms: Math.round(r.ms),
    variant: root.variant,
    entries: r.entries,
    bytesTotal: r.bytesTotal,
    bytesWritten: r.bytesWritten,
    bytesLinked: r.bytesLinked,
    bytesReused: r.bytesReused,
    bytesKept: r.bytesKept,
    resumed: r.resumed,
    evicted: root.evicted.length,
  };
}

const mb = (n: number) => (n / 1e6).toFixed(1);

/** The local copy's overlay as the new root, its upper read-only at layout.upper (where
 *  `node save` reads it); the NFS image it was copied from is let go. */
function mountLocalRoot(boot: HybridBoot, l: Layout): void {
  Deno.mkdirSync(l.newRoot, { recursive: true });
  mount(
    "overlay",
    l.newRoot,
    "overlay",
    0,
    `lowerdir=${boot.lower},upperdir=${boot.upper},workdir=${boot.work}`,
  );
  bindReadOnly(boot.upper, l.upper);
  // The partition's own mount (under /run, which the image sees) made read-only, the mount only
  // (the file system stays writable: the overlay writes its upper through a private clone of the
  // mount, taken above). The copy is the clean lower layer every boot trusts without hashing it
  // again ("kept read-only", the spec says): a stray write under /run/netroot/disks/ from the
  // image would have changed it for every later boot.
  mount(null, boot.target.mountpoint, null, MS_REMOUNT | MS_BIND | MS_RDONLY);
  umount(l.lower, MNT_DETACH);
}

/** A candidate partition (read-only while detect.ts looks at it). Its superblock is the disk's, not trusted: one that says
 *  `errors=panic` (tune2fs -e panic), with a corruption the copy then meets, would panic the node
 *  at every boot, network mode never reached; the kernel is told to go read-only instead, which
 *  fails the copy (back to network mode). */
export function mountPartition(device: string, dir: string, readOnly = false): void {
  mount(device, dir, "ext4", readOnly ? MS_RDONLY : 0, "errors=remount-ro");
}

/** tryHybridBoot on the node's real disks, with the init's NFS mount and reports. */
function detectAndCopy(env: RootEnv): Promise<HybridBoot | undefined> {
  const { params: p, layout: l } = env;
  if (!p.image || !p.url) {
    env.log("hybrid: no netroot.image/netroot.url on the command line: network mode");
    return Promise.resolve(undefined);
  }
  // Pinned to the version the command line names, the one mounted as the copy's source: unpinned,
  // a deploy landing after the script gave the new version's manifest, which that tree failed.
  const manifestUrl = bootFileUrl(p.url, p.mac, "manifest", p.image);
  const imageId = p.image;
  return tryHybridBoot({
    imageId,
    mountBase: "/run/netroot/disks",
    mount: (dev, dir, readOnly) => Promise.resolve(mountPartition(dev, dir, readOnly)),
    // A failed umount (EBUSY) is a rejection the fallback to network mode catches, not a throw out
    // of that fallback, which ended the boot.
    umount: (dir) => Promise.resolve().then(() => umount(dir)),
    mountSource: async () => {
      await env.mountImage(l.lower);
      return l.lower;
    },
    unmountSource: () => Promise.resolve().then(() => umount(l.lower, MNT_DETACH)),
    fetchManifest: () => fetchManifest(env.getText, manifestUrl, env.log),
    log: env.log,
    report: env.report,
    // The init owns the node until it hands over: its copy may change how the kernel writes
    // back (put back before the handover).
    aroundCopy: (copy) => withEarlyWriteback(copy, { log: env.log }),
  });
}

export const hybridMode: RootMode = {
  name: "hybrid",
  async mountRoot(env) {
    const boot = await env.stage(
      "hybrid-detect",
      "the local disks of this node (or boot with netroot.mode=network)",
      () => detectAndCopy(env),
      (b) =>
        b
          ? `hybrid-${b.variant} on ${b.target.device} (${b.target.dirName}/)`
          : "no walt-hybrid partition: network mode",
    );
    if (!boot) return false;
    return await env.stage(
      "hybrid",
      "the hybrid partition of this node",
      () => enterLocalRoot(boot, env.layout, env, env.params.init),
    );
  },
};

/**
 * mountLocalRoot, or network mode when the kernel refuses it (an overlay it will not mount over
 * what the partition holds) or when the root it makes has no `init` to hand over to: like a
 * failed copy, said loudly, reported, and every mount made for the hybrid root let go — the node
 * boots, where it went into a fatal reboot loop before. (A complete copy is trusted as it stands:
 * a file of it gone since — a fsck's lost+found, a persistent copy's user removing /sbin/init —
 * failed the handover at every boot, network mode never tried.)
 */
export function enterLocalRoot(
  boot: HybridBoot,
  l: Layout,
  o: Pick<RootEnv, "log" | "report">,
  init?: string,
): boolean {
  let reason = "overlay";
  try {
    mountLocalRoot(boot, l);
    if (init !== undefined && !isExecutableIn(l.newRoot, init)) {
      reason = "init";
      throw new Error(`${init} is missing or not executable there`);
    }
    return true;
  } catch (e) {
    const msg = `the local copy's ${reason}: ${(e as Error).message}`;
    o.log(`HYBRID MODE FAILED: ${msg} — falling back to network mode`);
    o.report({ stage: "hybrid-failed", ok: false, detail: msg, reason });
    // Whatever of it was mounted (each absent one fails alone), the image's NFS mount included:
    // network mode mounts it again.
    for (const dir of [l.upper, l.newRoot, l.lower, boot.target.mountpoint]) {
      try {
        umount(dir, MNT_DETACH);
      } catch { /* not mounted */ }
    }
    return false;
  }
}

/**
 * The manifest, with a few short attempts rather than one long one: a connection can stall (a
 * lost packet on a busy boot network; the server's MAC changed under the node's ARP cache, as a
 * bridge whose MAC was not pinned did, src/vnode/bridge.ts), and a fresh connection may go through
 * where a hybrid node would otherwise fall back to network mode. Each failed attempt is logged
 * with the step it failed at (connecting, waiting, reading).
 */
export async function fetchManifest(
  getText: RootEnv["getText"],
  url: string,
  log: (m: string) => void,
  attempts = 4,
  timeoutMs = 8000,
): Promise<string> {
  for (let i = 1;; i++) {
    try {
      return await getText(url, AbortSignal.timeout(timeoutMs), maxManifestBytes);
    } catch (e) {
      const msg = (e as Error).message;
      if (/^HTTP 4\d\d/.test(msg)) throw new Error(`manifest: ${msg}`);
      if (i >= attempts) throw new Error(`manifest: ${attempts} attempts failed, the last: ${msg}`);
      log(`manifest attempt ${i} failed: ${msg}; retrying`);
      await sleep(1000);
    }
  }
}
