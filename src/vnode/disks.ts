// Virtual node disks: sparse raw files under the node's vm/ directory, one partition formatted
// from a template. Built without loop devices: sfdisk writes the table into the file, then
// mkfs.ext4 -E offset=… / mkfs.vfat --offset=… format the partition in place.
// A disk whose size or template changed is recreated; otherwise it persists across restarts.
import { join } from "node:path";
import { UserError } from "../errors.ts";
import { syncFile, writeFileDurable } from "../linux/fsops.ts";
import { runTool } from "./exec.ts";

export type Template =
  | "none"
  | "ext4"
  | "fat32"
  | "hybrid-volatile"
  | "hybrid-persistent"
  | "hybrid-boot-v"
  | "hybrid-boot-p";
export interface DiskSpec {
  /** Bytes. */
  size: number;
  template: Template;
}

const templates: readonly Template[] = [
  "none",
  "ext4",
  "fat32",
  "hybrid-volatile",
  "hybrid-persistent",
  "hybrid-boot-v",
  "hybrid-boot-p",
];
/** The hybrid templates: the directory they create and whether it is marked `.persistent`.
 *  WalT's own templates (hybrid-boot-v/-p) create WalT's directory name `walt_hybrid/`; netroot's
 *  (hybrid-volatile/-persistent) the spec's `walt-hybrid/`. The node accepts both. */
export const hybridTemplates: Readonly<
  Record<string, { dir: "walt-hybrid" | "walt_hybrid"; persistent: boolean }>
> = {
  "hybrid-volatile": { dir: "walt-hybrid", persistent: false },
  "hybrid-persistent": { dir: "walt-hybrid", persistent: true },
  "hybrid-boot-v": { dir: "walt_hybrid", persistent: false },
  "hybrid-boot-p": { dir: "walt_hybrid", persistent: true },
};
/** Decimal units, as WalT (`32G` = 32·10⁹ bytes). */
const units: Record<string, number> = { M: 1e6, G: 1e9, T: 1e12 };
/** The partition starts at sector 2048 (1 MiB), like WalT's and every modern partitioner. */
export const partitionOffset = 1024 * 1024;
/** mkfs.vfat needs ≥ 65525 clusters for FAT32; 64 MB is a round size above that at 512 B/cluster. */
const minFormatted = 64e6;
/** Each disk is a virtio-blk PCI device: qemu's pc machine has 29 slots left for them (its virt
 *  machine 30), and refuses the VM past that, after every disk file was made and formatted. */
export const maxDisks = 29;

export function parseTemplate(s: string): Template {
  if (!(templates as readonly string[]).includes(s)) {
    throw new UserError(`unknown disk template ${s}: expected one of ${templates.join(", ")}`);
  }
  return s as Template;
}

export function parseSize(s: string): number {
  const m = /^(\d+)([MGT])$/.exec(s.trim());
  if (!m || Number(m[1]) === 0) {
    throw new UserError(
      `bad disk size ${s}: expected a positive number with unit M, G or T, e.g. 8G`,
    );
  }
  return Number(m[1]) * units[m[2]];
}

/** `8G`, `8G[template=ext4]`, `64M[template=hybrid-boot-v]`. */
export function parseDiskSpec(s: string): DiskSpec {
  const m = /^([^[\]]+)(?:\[(.*)\])?$/.exec(s.trim());
  if (!m) throw new UserError(`bad disk ${s}: expected SIZE or SIZE[template=T]`);
  let template: Template = "none";
  for (const opt of (m[2] ?? "").split(",").filter(Boolean)) {
    const [k, v] = opt.split("=");
    if (k !== "template" || v === undefined) {
      throw new UserError(`bad disk option ${opt} in ${s}: only template=T is known`);
    }
    template = parseTemplate(v);
  }
  return checkDisk({ size: parseSize(m[1]), template });
}

/** Refuses more disks than a VM can have: where disks are set, and again before any is made (a
 *  list an older netroot stored). */
export function checkDiskCount(disks: readonly unknown[]): void {
  if (disks.length > maxDisks) {
    throw new UserError(
      `${disks.length} disks: a virtual node has at most ${maxDisks} (qemu's free PCI slots)`,
    );
  }
}

/** Validates a disk (also the JSON form the API receives). */
export function checkDisk(d: { size: unknown; template?: unknown }): DiskSpec {
  if (typeof d !== "object" || d === null) {
    throw new UserError(
      `bad disk ${JSON.stringify(d)}: a disk is SIZE[template=T] or {size, template}`,
    );
  }
  const size = typeof d.size === "string" ? parseSize(d.size) : d.size;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 1e6) {
    throw new UserError(`bad disk size ${d.size}: at least 1M`);
  }
  const template = parseTemplate(String(d.template ?? "none"));
  if (template !== "none" && size < minFormatted) {
    throw new UserError(`disk template ${template} needs at least 64M, got ${formatSize(size)}`);
  }
  return { size, template };
}

export function formatSize(n: number): string {
  for (const u of ["T", "G", "M"]) if (n % units[u] === 0) return `${n / units[u]}${u}`;
  return `${n}`;
}

export function formatDisk(d: DiskSpec): string {
  return d.template === "none"
    ? formatSize(d.size)
    : `${formatSize(d.size)}[template=${d.template}]`;
}

export const diskPath = (vmDir: string, i: number) => join(vmDir, `disk${i}.img`);
const infoPath = (vmDir: string, i: number) => join(vmDir, `disk${i}.json`);

/** Brings vmDir's disk files in line with `disks`: creates missing ones, recreates changed ones,
 *  removes surplus ones; returns the image paths in order. */
export async function ensureDisks(vmDir: string, disks: DiskSpec[]): Promise<string[]> {
  await Deno.mkdir(vmDir, { recursive: true });
  const paths: string[] = [];
  for (const [i, d] of disks.entries()) {
    const path = diskPath(vmDir, i);
    if (!(await matches(vmDir, i, d))) {
      await createDisk(path, d);
      // The info file is written last: a crash mid-build leaves a disk that is rebuilt next time.
      // Flushed: an empty one after a power cut would make the next start rebuild the disk over
      // what the guest wrote on it meanwhile.
      await writeFileDurable(infoPath(vmDir, i), JSON.stringify(d) + "\n", 0o644);
    }
    paths.push(path);
  }
  for (let i = disks.length;; i++) {
    const gone = await Promise.all(
      [diskPath(vmDir, i), infoPath(vmDir, i)].map((p) =>
        Deno.remove(p).then(() => true, () => false)
      ),
    );
    if (!gone.some(Boolean)) break;
  }
  return paths;
}

async function matches(vmDir: string, i: number, d: DiskSpec): Promise<boolean> {
  try {
    const info = JSON.parse(await Deno.readTextFile(infoPath(vmDir, i)));
    const st = await Deno.stat(diskPath(vmDir, i));
    return info.size === d.size && info.template === d.template && st.size === d.size;
  } catch {
    return false;
  }
}

/** Creates (or overwrites) one disk image file from its template. */
export async function createDisk(path: string, d: DiskSpec): Promise<void> {
  const tmp = `${path}.new`;
  await Deno.remove(tmp).catch(() => {});
  // A fresh sparse file: only what mkfs writes takes space.
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    await f.truncate(d.size);
  } finally {
    f.close();
  }
  try {
    if (d.template !== "none") await formatPartition(tmp, d.template);
    await syncFile(tmp); // what mkfs wrote, on the disk before the image has its name
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

async function formatPartition(img: string, t: Exclude<Template, "none">): Promise<void> {
  const type = t === "fat32" ? "c" : "83";
  await runTool("sfdisk", ["-q", img], { stdin: `label: dos\nstart=2048, type=${type}\n` });
  const table = JSON.parse(await runTool("sfdisk", ["-J", img]));
  const sectors: number = table.partitiontable.partitions[0].size;
  const bytes = sectors * 512;
  if (t === "fat32") {
    // Block count is in KiB units; size the filesystem from the partition, not the file.
    await runTool("mkfs.vfat", [
      "-F",
      "32",
      "-S",
      "512",
      `--offset=${partitionOffset / 512}`,
      img,
      String(Math.floor(bytes / 1024)),
    ]);
    return;
  }
  const args = ["-q", "-F", "-b", "4096", "-E", `offset=${partitionOffset}`];
  let stage: string | undefined;
  const hybrid = hybridTemplates[t];
  if (hybrid) {
    // The hybrid boot mode looks for this directory (.persistent: keep the upper layer).
    stage = await Deno.makeTempDir({ prefix: "netroot-disk-" });
    await Deno.mkdir(join(stage, hybrid.dir));
    if (hybrid.persistent) await Deno.writeTextFile(join(stage, hybrid.dir, ".persistent"), "");
    args.push("-L", "WALTDATA", "-d", stage);
  }
  try {
    await runTool("mkfs.ext4", [...args, img, String(Math.floor(bytes / 4096))]);
  } finally {
    if (stage) await Deno.remove(stage, { recursive: true });
  }
}
