// Hybrid boot, node side: make room (evict least-recently-booted copies), ensure the verified local
// copy, then lay out the overlay dirs for the variant:
//   volatile   — upper and work emptied at every boot: each boot starts from the image alone;
//   persistent — upper kept across reboots (except /tmp), work emptied.
// Any HybridError makes the caller fall back to network mode.
import { readDirStream, statvfs } from "../src/linux/fsops.ts";
import { manifestLines } from "../contract/manifest.ts";
import {
  checkImageId,
  checkManifestDigest,
  clearImmutableTree,
  clearPlanted,
  copyPaths,
  type CopyPlan,
  type CopyProgress,
  type CopyReport,
  ensureLocalCopy,
  estimateNeed,
  failedOnImmutable,
  HybridError,
  imageIdPattern,
  indexOtherCopies,
  isComplete,
  makeOwnDir,
  planCopy,
  removeTree,
  sha256hex,
  writeOwnFile,
} from "./copy.ts";

export type Variant = "volatile" | "persistent";

export interface HybridRoot {
  variant: Variant;
  lower: string;
  upper: string;
  work: string;
  report: CopyReport;
  evicted: string[];
}

function lastBooted(hybridDir: string, id: string): number {
  try {
    return Deno.statSync(copyPaths(hybridDir, id).lastBoot).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

/**
 * Frees space for `need` by removing other images' copies, least recently booted first (unfinished
 * copies of other images before complete ones). Never touches `keep`: the image being deployed and
 * the copy it is re-deployed over in place. Returns the removed ids.
 */
export function makeRoom(
  hybridDir: string,
  keep: string | string[],
  need: { bytes: number; inodes: number },
  space: (path: string) => { freeBytes: number; freeInodes: number } = statvfs,
): string[] {
  const fits = () => {
    const s = space(hybridDir);
    return s.freeBytes >= need.bytes && s.freeInodes >= need.inodes;
  };
  const evicted: string[] = [];
  if (fits()) return evicted;
  const kept = new Set([keep].flat());
  // Each copy's order read from the disk once, not at each comparison of the sort: the disk's
  // directories, planted by the thousand, each with its own last-boot time, made the sort's
  // stat calls ~n·log2(n)·4 (3,000: 125,624 calls, 5.9 s).
  const others = [...Deno.readDirSync(hybridDir)]
    .filter((e) => e.isDirectory && imageIdPattern.test(e.name) && !kept.has(e.name))
    .map((e) => ({
      id: e.name,
      complete: Number(isComplete(hybridDir, e.name)),
      booted: lastBooted(hybridDir, e.name),
    }))
    .sort((a, b) => a.complete - b.complete || a.booted - b.booted)
    .map((c) => c.id);
  for (const id of others) {
    removeTree(copyPaths(hybridDir, id).base);
    evicted.push(id);
    if (fits()) return evicted;
  }
  return evicted;
}

export interface PrepareOptions {
  hybridDir: string;
  persistent: boolean;
  imageId: string;
  manifestText: string;
  source: string;
  onProgress?(p: CopyProgress): void;
  progressIntervalMs?: number;
  log?(msg: string): void;
  space?: (path: string) => { freeBytes: number; freeInodes: number };
}

/** walt-hybrid/ holds a directory per image copy: a few dozen names. One whose directory takes
 *  more than this (ext4: ~14,000 names of an image id's length) was filled by the root of an
 *  earlier boot, and a copy lists it several times and looks at each entry, in PID 1's memory
 *  (100,000 planted directories: 22.5 s and 237 MB per copy; millions: PID 1 killed for memory,
 *  a kernel panic). Emptying it would take as long: the node boots in network mode and says so. */
export const maxHybridDirBytes = 1 << 20;

function checkHybridDirSize(dir: string): void {
  const size = Deno.lstatSync(dir).size;
  if (size <= maxHybridDirBytes) return;
  throw new HybridError(
    "corrupt",
    `${dir} is a directory of ${size} bytes, far more names than copies of images: ` +
      "not read; wipe it (the copies are made again)",
  );
}

export async function prepareHybridRoot(opts: PrepareOptions): Promise<HybridRoot> {
  const log = opts.log ?? (() => {});
  const p = copyPaths(opts.hybridDir, opts.imageId);
  let evicted: string[] = [];
  let plan: CopyPlan | undefined;
  checkImageId(opts.imageId);
  checkHybridDirSize(opts.hybridDir);
  clearPlanted(opts.hybridDir, opts.imageId);
  if (!isComplete(opts.hybridDir, opts.imageId)) {
    // The manifest came over plain HTTP, where anyone on the boot network can answer in the
    // server's place: nothing is planned, evicted or removed from what it says before it hashes
    // to the image id (a forged one declaring 1 TB evicted every other copy, a persistent
    // image's diff/ with it). A complete copy does not use it: ensureLocalCopy checks it then
    // (and only then: it takes the plan made here as checked).
    checkManifestDigest(opts.imageId, await sha256hex(opts.manifestText));
    const entries = [...manifestLines(opts.manifestText)];
    plan = planCopy(opts.hybridDir, opts.imageId, entries);
    const need = { ...plan.need };
    // 5 % margin: directory blocks, journal, metadata of the overlay dirs
    need.bytes = Math.ceil(need.bytes * 1.05) + (1 << 20);
    // Evicting a copy we would hard-link from defeats the purpose, but correctness first: the
    // copy indexes the other copies again after eviction (links to evicted copies vanish). The
    // base of a re-deploy in place is kept with the image itself: its tree becomes the new copy.
    evicted = makeRoom(opts.hybridDir, [opts.imageId, plan.base ?? opts.imageId], need, opts.space);
    if (plan.mode === "fresh" && evicted.length) {
      plan = {
        ...plan,
        need: estimateNeed(entries, indexOtherCopies(opts.hybridDir, opts.imageId)),
      };
    }
    if (evicted.length) log(`evicted ${evicted.length} older image copies to make room`);
    const s = (opts.space ?? statvfs)(opts.hybridDir);
    if (s.freeBytes < need.bytes || s.freeInodes < need.inodes) {
      throw new HybridError(
        "no-space",
        `the image needs ${mb(need.bytes)} MB on the hybrid partition, only ${
          mb(s.freeBytes)
        } MB free`,
      );
    }
  }
  const copy = (plan?: CopyPlan) =>
    ensureLocalCopy({
      source: opts.source,
      hybridDir: opts.hybridDir,
      imageId: opts.imageId,
      manifestText: opts.manifestText,
      onProgress: opts.onProgress,
      progressIntervalMs: opts.progressIntervalMs,
      plan,
    });
  let report: CopyReport;
  try {
    report = await copy(plan).catch((e) => {
      // Files made immutable on the partition (evenIfImmutable, copy.ts) in the copy this one
      // works in (the previous version, re-deployed in place; an interrupted copy): cleared
      // once, and the copy resumes from what is on the disk now (planned again).
      if (!failedOnImmutable(e) || !clearImmutableTree(p.base)) throw e;
      log(`${e.message}: cleared immutable and append-only flags in the copy, copying on`);
      return copy();
    });
  } catch (e) {
    // A full disk leaves the partial copy useless and in the way of other copies: remove it.
    if (e instanceof HybridError && e.reason === "no-space") {
      removeTree(p.base);
    }
    throw e;
  }
  const variant: Variant = opts.persistent ? "persistent" : "volatile";
  removeTree(p.work);
  if (variant === "volatile") emptyLastBoot(p.upper, "diff/", log);
  else emptyLastBoot(`${p.upper}/tmp`, "diff/tmp/", log);
  makeOwnDir(p.upper);
  makeOwnDir(p.work);
  writeOwnFile(p.lastBoot, new Date().toISOString() + "\n");
  return { variant, lower: p.image, upper: p.upper, work: p.work, report, evicted };
}

/** Removes what the last boot left at `path` (its changes, its /tmp), said on the console when
 *  there is something: any user of that boot may have left millions of files there, and PID 1
 *  was silent while it removed them (11.5 µs a file on the test host's disk: a 1 TB partition's
 *  61 million inodes would take 12 minutes; an SD card is slower). */
function emptyLastBoot(path: string, what: string, log: (msg: string) => void): void {
  let held = false;
  try {
    // Its first name only (readDirStream: not the whole listing, which a user may make huge).
    if (lstatOrNull(path)?.isDirectory) {
      const names = readDirStream(path);
      held = !names.next().done;
      names.return(undefined); // closes the directory
    }
  } catch { /* removeTree says what fails */ }
  if (!held) return removeTree(path);
  log(`emptying ${what} (what the last boot left there)`);
  const t0 = performance.now();
  removeTree(path);
  const ms = performance.now() - t0;
  if (ms >= 1000) log(`emptied ${what} in ${(ms / 1000).toFixed(1)} s`);
}

function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch {
    return null;
  }
}

const mb = (n: number) => (n / 1e6).toFixed(1);
