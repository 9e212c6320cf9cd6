// Hybrid copy benchmark (root: loop devices). Peer: WalT's method, `tar cf - . | tar xpf -` of the
// same tree onto the same kind of disk (a fresh 1 GiB ext4 image file on a loop device, one per
// run, deleted after it; `--direct-io`: the loop device writes its image file with O_DIRECT, as a
// real disk is written, without a second page cache), both timed from a `sync` to the end of a
// `sync`. Runs alternate A B A B… (tar, netroot, tar, netroot…) so that load from elsewhere hits
// both alike; each round gives one ratio, with its split into copy and flush. netroot's copy runs
// as a node's hybrid mode runs it, with early background writeback (hybrid/writeback.ts: a global
// kernel setting, changed for the copy and put back after it); tar runs with the kernel's own.
//   hybrid.first-copy     tar time / netroot time of a first, verified copy (target ≥ 1.0×; a
//                         RATIO line in the full run only)
//   hybrid.redeploy-2pct  2 % / what the block device wrote for a re-deploy after a 1 % change
//                         (sectors written, /sys/block/loopN/stat; target ≤ 2 %, so ≥ 1.0)
//   deno run -A bench/hybrid_bench.ts [--quick] [--rounds N] [--files N] [--direct-io]
import { createHash } from "node:crypto";
import { parseArgs } from "node:util";
import { manifestText } from "../contract/manifest.ts";
import { scanTree } from "../src/images/walk.ts";
import { type CopyOptions, ensureLocalCopy as copyAlone } from "../hybrid/copy.ts";
import { withEarlyWriteback } from "../hybrid/writeback.ts";
import { loopExt4, run } from "../tests/support/ext4disk.ts";
import { ratio } from "./ratio.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean" },
    rounds: { type: "string" },
    files: { type: "string" },
    "direct-io": { type: "boolean" },
  },
});
const disk0 = { directIo: a["direct-io"] };
/** A fresh disk in a directory of its own; `done` unmounts it and deletes its image file (not
 *  the directory: a busy mount is only detached lazily). Kept until the end of the bench, as
 *  they were before 2026-12-02 evening, the images' ~200 MB each stayed in the page cache and
 *  every flush (`sync`, `syncfs`) grew from 0.2 s to 0.6–1.5 s over a run's rounds, netroot's
 *  mostly: the slow rounds (docs/benchmarks.md). */
async function freshDisk() {
  const dir = await Deno.makeTempDir({ dir: tmp });
  const disk = await loopExt4(1024, dir, disk0);
  const done = async () => {
    await disk.close();
    await Deno.remove(disk.file).catch(() => {});
  };
  return { disk, done };
}
/** The copy as the node's init runs it (hybrid/mod.ts): with early background writeback. */
const ensureLocalCopy = (o: CopyOptions) => withEarlyWriteback(() => copyAlone(o));
const FILES = Number(a.files ?? Deno.env.get("FILES") ?? 3000);
const rounds = Number(a.rounds ?? (a.quick ? 3 : 5));
const tmp = await Deno.makeTempDir({ prefix: "netroot-hybrid-bench-" });
const src = `${tmp}/src`;
// A size mix like an OS image: many small files, some large ones (≈ 200 MB total).
let total = 0;
for (let i = 0; i < FILES; i++) {
  const dir = `${src}/d${i % 50}`;
  await Deno.mkdir(dir, { recursive: true });
  const size = i % 100 === 0 ? 4 << 20 : (i % 7 + 1) * 6000;
  const b = new Uint8Array(size);
  crypto.getRandomValues(b.subarray(0, Math.min(size, 65536)));
  await Deno.writeFile(`${dir}/f${i}`, b);
  total += size;
}
async function manifestOf(dir: string) {
  const text = manifestText((await scanTree(dir)).entries);
  return { text, id: createHash("sha256").update(text).digest("hex") };
}
const v1 = await manifestOf(src);

/** A run's time: `fn` and the `sync` after it; `flush` is the part spent flushing to the disk
 *  (tar: the `sync`; netroot: its own final syncfs, which `fn` sets through `flushed`, and the
 *  `sync`), so a round's figures show whether the copy or the disk moved. */
async function timed(fn: () => Promise<void>): Promise<{ s: number; flush: number }> {
  run("sync");
  flushed = 0;
  const t = performance.now();
  await fn();
  const t1 = performance.now();
  run("sync");
  const end = performance.now();
  return { s: (end - t) / 1000, flush: (end - t1 + flushed) / 1000 };
}
let flushed = 0;

/** One timed run on a fresh disk. */
async function onFreshDisk(fn: (mnt: string) => Promise<void>) {
  const { disk, done } = await freshDisk();
  try {
    return await timed(() => fn(disk.mnt));
  } finally {
    await done();
  }
}

const tarRun = () =>
  onFreshDisk(async (mnt) => {
    await Deno.mkdir(`${mnt}/tar`);
    const p = new Deno.Command("bash", {
      args: ["-c", `cd '${src}' && tar cf - . | (cd '${mnt}/tar' && tar xpf -)`],
    }).spawn();
    if (!(await p.status).success) throw new Error("tar pipe failed");
  });

const oursRun = () =>
  onFreshDisk(async (mnt) => {
    await Deno.mkdir(`${mnt}/walt-hybrid`);
    const r = await ensureLocalCopy({
      source: src,
      hybridDir: `${mnt}/walt-hybrid`,
      imageId: v1.id,
      manifestText: v1.text,
    });
    if (r.bytesWritten !== total) throw new Error(`copied ${r.bytesWritten} of ${total} bytes`);
    flushed = r.flushMs;
    threads = `${r.threads} thread${
      r.threads > 1 ? "s" : ""
    }, ${r.workerBatches} batches on workers`;
  });
let threads = "";

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
const span = (xs: number[], d = 2) =>
  `median ${median(xs).toFixed(d)} (min ${Math.min(...xs).toFixed(d)}, max ${
    Math.max(...xs).toFixed(d)
  })`;
const mbs = (s: number) => (total / 1e6 / s).toFixed(0);

console.log(
  `image: ${FILES} files, ${(total / 1e6).toFixed(0)} MB (page-cached source), ${rounds} rounds, ` +
    `${navigator.hardwareConcurrency} cores, load ${Deno.loadavg()[0].toFixed(1)}`,
);
// A warm-up of each (not counted): page cache of the source, JIT, worker start-up code.
await tarRun(), await oursRun();
const ratios: number[] = [], tars: number[] = [], ours: number[] = [];
const flushes = { tar: [] as number[], ours: [] as number[] };
const split = (x: { s: number; flush: number }) =>
  `copy ${(x.s - x.flush).toFixed(2)} + flush ${x.flush.toFixed(2)}`;
for (let r = 0; r < rounds; r++) {
  const tr = await tarRun();
  const or = await oursRun();
  const t = tr.s, o = or.s;
  tars.push(t), ours.push(o), ratios.push(t / o);
  flushes.tar.push(tr.flush), flushes.ours.push(or.flush);
  console.log(
    `round ${r + 1}: tar | tar ${t.toFixed(2)} s (${mbs(t)} MB/s; ${split(tr)}), netroot ` +
      `${o.toFixed(2)} s (${mbs(o)} MB/s; ${split(or)}; ${threads}), ratio ${
        (t / o).toFixed(2)
      }×, load ${Deno.loadavg()[0].toFixed(1)}`,
  );
}
console.log(`tar | tar (WalT):      ${span(tars)} s`);
console.log(`netroot verified copy: ${span(ours)} s (sha256 of every file against the manifest)`);
console.log(`ratio tar/netroot:     ${span(ratios)}× (target ≥ 1.0×)`);
const copyOnly = (xs: number[], fs: number[]) => xs.map((x, i) => x - fs[i]);
console.log(
  `of which flushing to the disk: tar ${span(flushes.tar)} s, netroot ${span(flushes.ours)} s; ` +
    `copy alone: tar ${span(copyOnly(tars, flushes.tar))} s, netroot ${
      span(copyOnly(ours, flushes.ours))
    } s`,
);
// The target as floor, in the full run only: on this shared 2-core machine the first copy moves
// between 0.45× and 1.4× with the neighbours' load (docs/benchmarks.md), so CI's quick check does
// not hold it; the re-deploy figure (block-device sectors, not time) is steady and is held.
if (a.quick) console.log(`first copy (not a floor in --quick): ${median(ratios).toFixed(3)}`);
else ratio("hybrid.first-copy", median(ratios), 1.0);

// Re-deploy: a 1 %-changed image on a disk holding the previous copy.
const redeploys: number[] = [];
for (let r = 0; r < (a.quick ? 2 : 3); r++) {
  const { disk, done } = await freshDisk();
  const tree = `${tmp}/redeploy-src`;
  try {
    run("cp", "-a", src, tree);
    const hd = `${disk.mnt}/walt-hybrid`;
    await Deno.mkdir(hd);
    await ensureLocalCopy({ source: tree, hybridDir: hd, imageId: v1.id, manifestText: v1.text });
    // change ~1 % of the bytes: one byte of each of the first small files until 1 % is reached
    // (different files each round)
    let changed = 0;
    for (let i = 1 + r * 500; changed < total / 100; i++) {
      if (i % 100 === 0) continue; // small files only: 1 % of the bytes, not one 4 MB file
      const f = `${tree}/d${i % 50}/f${i}`;
      const b = await Deno.readFile(f);
      b[0] ^= 1;
      await Deno.writeFile(f, b);
      changed += b.length;
    }
    const v2 = await manifestOf(tree);
    const before = disk.writtenBytes();
    const rep = await ensureLocalCopy({
      source: tree,
      hybridDir: hd,
      imageId: v2.id,
      manifestText: v2.text,
    });
    const dev = disk.writtenBytes() - before;
    const pct = 100 * dev / rep.bytesTotal;
    redeploys.push(pct);
    console.log(
      `re-deploy ${r + 1}: ${(100 * changed / total).toFixed(2)} % of the bytes changed; copy ` +
        `wrote ${(100 * rep.bytesWritten / rep.bytesTotal).toFixed(2)} %, the block device ` +
        `${pct.toFixed(2)} % (${(dev / 1e6).toFixed(2)} MB)`,
    );
  } finally {
    await done();
    await Deno.remove(tree, { recursive: true });
  }
}
console.log(
  `re-deploy after a 1 % change, block device writes: ${span(redeploys)} % of the image ` +
    `(target ≤ 2 %; WalT rewrites 100 %)`,
);
ratio("hybrid.redeploy-2pct", 2 / median(redeploys), 1.0);
await Deno.remove(tmp, { recursive: true });
