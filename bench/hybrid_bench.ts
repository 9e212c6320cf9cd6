// Hybrid copy benchmark (root: loop device). Peer: WalT's method, `tar cf - . | tar xf -` of the
// same tree onto the same kind of disk (a fresh ext4 on a loop device), both ending with sync.
// Prints first-copy throughput ratio (target ≥ 0.9×) and the bytes written for a 1 %-changed image
// (target ≤ 2 %).
import { createHash } from "node:crypto";
import { manifestText } from "../contract/manifest.ts";
import { scanTree } from "../src/images/walk.ts";
import { ensureLocalCopy } from "../hybrid/copy.ts";
import { loopExt4, run } from "../tests/support/ext4disk.ts";

const FILES = Number(Deno.env.get("FILES") ?? 3000);
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
const { entries } = await scanTree(src);
const text = manifestText(entries);
const id = createHash("sha256").update(text).digest("hex");

async function timed(fn: () => Promise<void>): Promise<number> {
  run("sync");
  const t = performance.now();
  await fn();
  run("sync");
  return (performance.now() - t) / 1000;
}

const results: Record<string, number> = {};
for (const round of [1, 2]) {
  const disk = await loopExt4(1024, await Deno.makeTempDir({ dir: tmp }));
  try {
    await Deno.mkdir(`${disk.mnt}/tar`);
    const tarS = await timed(async () => {
      const p = new Deno.Command("bash", {
        args: ["-c", `cd '${src}' && tar cf - . | (cd '${disk.mnt}/tar' && tar xpf -)`],
      }).spawn();
      if (!(await p.status).success) throw new Error("tar pipe failed");
    });
    await Deno.mkdir(`${disk.mnt}/walt-hybrid`);
    const oursS = await timed(async () => {
      await ensureLocalCopy({
        source: src,
        hybridDir: `${disk.mnt}/walt-hybrid`,
        imageId: id,
        manifestText: text,
      });
    });
    results[`tar${round}`] = tarS;
    results[`ours${round}`] = oursS;
  } finally {
    await disk.close();
  }
}
const tarS = Math.min(results.tar1, results.tar2), oursS = Math.min(results.ours1, results.ours2);
const mbs = (s: number) => (total / 1e6 / s).toFixed(0);
console.log(`image: ${FILES} files, ${(total / 1e6).toFixed(0)} MB (page-cached source)`);
console.log(`tar | tar (WalT):         ${tarS.toFixed(2)} s  ${mbs(tarS)} MB/s`);
console.log(
  `netroot verified copy:    ${oursS.toFixed(2)} s  ${mbs(oursS)} MB/s (sha256 of every file)`,
);
console.log(`ratio netroot/tar:        ${(tarS / oursS).toFixed(2)}x  (target >= 0.9x)`);

// 1 %-changed image on a disk holding the previous copy
const disk = await loopExt4(1024, await Deno.makeTempDir({ dir: tmp }));
try {
  const hd = `${disk.mnt}/walt-hybrid`;
  await Deno.mkdir(hd);
  await ensureLocalCopy({ source: src, hybridDir: hd, imageId: id, manifestText: text });
  // change ~1 % of the bytes: rewrite the first large files until 1 % is reached
  let changed = 0;
  for (let i = 1; changed < total / 100; i++) {
    if (i % 100 === 0) continue; // small files only: 1 % of the bytes, not one 4 MB file
    const f = `${src}/d${i % 50}/f${i}`;
    const b = await Deno.readFile(f);
    b[0] ^= 1;
    await Deno.writeFile(f, b);
    changed += b.length;
  }
  const e2 = (await scanTree(src)).entries;
  const t2 = manifestText(e2);
  const id2 = createHash("sha256").update(t2).digest("hex");
  const before = disk.writtenBytes();
  const r = await ensureLocalCopy({ source: src, hybridDir: hd, imageId: id2, manifestText: t2 });
  const dev = disk.writtenBytes() - before;
  console.log(
    `1%-changed image (${(100 * changed / total).toFixed(2)} % of bytes): copy wrote ` +
      `${(100 * r.bytesWritten / r.bytesTotal).toFixed(2)} %, block device wrote ${
        (100 * dev / r.bytesTotal).toFixed(2)
      } % ` +
      `(target <= 2 %; WalT rewrites 100 %)`,
  );
} finally {
  await disk.close();
  await Deno.remove(tmp, { recursive: true });
}
