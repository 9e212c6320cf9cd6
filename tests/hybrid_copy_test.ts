// Hybrid copy on real ext4 (loop device; needs root): faithful, verified, resumable after a kill,
// incremental, space handling and the two variants.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { manifestText } from "../contract/manifest.ts";
import { scanTree } from "../src/images/walk.ts";
import { removeXattr, setXattr as lsetxattr } from "../src/linux/xattr.ts";
import {
  copyPaths,
  type CopyReport,
  ensureLocalCopy,
  HybridError,
  indexOtherCopies,
  isComplete,
  maxManifestBytes,
} from "../hybrid/copy.ts";
import { makeRoom, prepareHybridRoot } from "../hybrid/mode.ts";
import { loopExt4, run } from "./support/ext4disk.ts";

const sha = (s: string) => createHash("sha256").update(s).digest("hex");

/** A source tree with every kind of entry an OS image holds; `files` files of `fileKiB` each. */
async function makeTree(root: string, opts: { files: number; fileKiB: number; seed: number }) {
  await Deno.mkdir(`${root}/etc`, { recursive: true });
  await Deno.mkdir(`${root}/usr/bin`, { recursive: true });
  await Deno.mkdir(`${root}/data`, { recursive: true });
  await Deno.mkdir(`${root}/dev`, { recursive: true });
  await Deno.writeTextFile(`${root}/etc/image-release`, `v${opts.seed}\n`);
  await Deno.writeTextFile(`${root}/usr/bin/ping`, "#!/bin/sh\necho ping\n");
  Deno.chmodSync(`${root}/usr/bin/ping`, 0o4755);
  lsetxattr(
    `${root}/usr/bin/ping`,
    "security.capability",
    new Uint8Array([1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
  );
  lsetxattr(`${root}/etc/image-release`, "user.origin", new TextEncoder().encode("test"));
  Deno.chownSync(`${root}/etc/image-release`, 1234, 5678);
  Deno.symlinkSync("../usr/bin/ping", `${root}/etc/ping-link`);
  Deno.linkSync(`${root}/usr/bin/ping`, `${root}/usr/bin/ping6`);
  run("mknod", `${root}/dev/null`, "c", "1", "3");
  run("mkfifo", `${root}/dev/fifo`);
  for (let i = 0; i < opts.files; i++) {
    const b = new Uint8Array(opts.fileKiB * 1024);
    let x = (opts.seed * 1000 + i) | 0;
    for (let j = 0; j < b.length; j += 4) {
      x = (x * 1103515245 + 12345) | 0;
      b[j] = x & 0xff;
      b[j + 1] = (x >> 8) & 0xff;
    }
    await Deno.writeFile(`${root}/data/f${String(i).padStart(4, "0")}`, b);
  }
  Deno.utimeSync(`${root}/etc/image-release`, 1_600_000_000, 1_600_000_000);
}

async function manifestOf(root: string): Promise<{ text: string; id: string }> {
  const { entries } = await scanTree(root);
  const text = manifestText(entries);
  return { text, id: sha(text) };
}

async function withDisk(
  sizeMiB: number,
  fn: (disk: Awaited<ReturnType<typeof loopExt4>>, tmp: string) => Promise<void>,
) {
  const tmp = await Deno.makeTempDir({ prefix: "netroot-hybrid-" });
  const disk = await loopExt4(sizeMiB);
  try {
    await Deno.mkdir(`${disk.mnt}/walt-hybrid`);
    await fn(disk, tmp);
  } finally {
    await disk.close();
    await Deno.remove(tmp, { recursive: true });
  }
}

/** A 32 MiB disk with its walt-hybrid/, and an image tree (makeTree `tree` at tmp/src) with its
 *  manifest. */
function withImageOnDisk(
  tree: { files: number; fileKiB: number; seed: number },
  fn: (d: {
    disk: Awaited<ReturnType<typeof loopExt4>>;
    tmp: string;
    hybridDir: string;
    m: { text: string; id: string };
  }) => Promise<void>,
) {
  return withDisk(32, async (disk, tmp) => {
    await makeTree(`${tmp}/src`, tree);
    const m = await manifestOf(`${tmp}/src`);
    await fn({ disk, tmp, hybridDir: `${disk.mnt}/walt-hybrid`, m });
  });
}

Deno.test("hybrid copy (root, loop ext4): faithful and verified; second boot copies nothing", async () => {
  await withDisk(64, async (disk, tmp) => {
    await makeTree(`${tmp}/src`, { files: 20, fileKiB: 64, seed: 1 });
    const m = await manifestOf(`${tmp}/src`);
    const hybridDir = `${disk.mnt}/walt-hybrid`;
    const r1 = await ensureLocalCopy({
      source: `${tmp}/src`,
      hybridDir,
      imageId: m.id,
      manifestText: m.text,
    });
    assert.equal(r1.bytesWritten, r1.bytesTotal);
    // The copy, scanned again, has exactly the source's manifest: owners, modes, xattrs, links…
    const copy = await manifestOf(copyPaths(hybridDir, m.id).image);
    assert.equal(copy.text, m.text);
    assert.equal(copy.id, m.id);
    const r2 = await ensureLocalCopy({
      source: `${tmp}/src`,
      hybridDir,
      imageId: m.id,
      manifestText: m.text,
    });
    assert.equal(r2.bytesWritten + r2.bytesReused + r2.bytesLinked, 0);
  });
});

Deno.test("hybrid copy (root): with a helper worker beside the main thread, as faithful; a mismatch still refused", async () => {
  if ((navigator.hardwareConcurrency || 1) < 2) return; // one core: no helper worker at all
  // big enough (48 MiB) for the worker to join before the main thread is done
  await withDisk(160, async (disk, tmp) => {
    await makeTree(`${tmp}/src`, { files: 1500, fileKiB: 32, seed: 7 });
    const m = await manifestOf(`${tmp}/src`);
    const hybridDir = `${disk.mnt}/walt-hybrid`;
    const opts = { source: `${tmp}/src`, hybridDir, imageId: m.id, manifestText: m.text };
    // The worker takes batches once its runtime is up; on a loaded machine the main thread once
    // copied all 48 MiB before that: copied again (a fresh copy) until the worker took part.
    for (let attempt = 1;; attempt++) {
      const r = await ensureLocalCopy({ ...opts, firstWorkerBytes: 0 });
      assert.equal(r.threads, 2);
      assert.equal(r.bytesWritten, r.bytesTotal);
      assert.equal((await manifestOf(copyPaths(hybridDir, m.id).image)).text, m.text);
      if (r.workerBatches > 0) break; // the worker copied some of the files, as faithfully
      assert.ok(attempt < 5, "the worker copied none of the files in 5 copies");
      await Deno.remove(copyPaths(hybridDir, m.id).base, { recursive: true });
    }
    // the same tree with one file changed, in a fresh directory: refused whichever thread read it
    await Deno.writeFile(`${tmp}/src/data/f1400`, new Uint8Array(32 * 1024));
    const hd2 = `${disk.mnt}/other`;
    await Deno.mkdir(hd2);
    await assert.rejects(
      ensureLocalCopy({ ...opts, hybridDir: hd2, firstWorkerBytes: 0 }),
      (e) => e instanceof HybridError && e.reason === "corrupt" && /f1400/.test(e.message),
    );
    assert.equal(isComplete(hd2, m.id), false);
  });
});

Deno.test("hybrid copy (root): a source that does not match the manifest is refused", async () => {
  await withDisk(32, async (disk, tmp) => {
    await makeTree(`${tmp}/src`, { files: 3, fileKiB: 4, seed: 2 });
    const m = await manifestOf(`${tmp}/src`);
    await Deno.writeTextFile(`${tmp}/src/etc/image-release`, "tampered\n");
    const hybridDir = `${disk.mnt}/walt-hybrid`;
    await assert.rejects(
      ensureLocalCopy({ source: `${tmp}/src`, hybridDir, imageId: m.id, manifestText: m.text }),
      (e) => e instanceof HybridError && e.reason === "corrupt" && /image-release/.test(e.message),
    );
    assert.throws(() => Deno.statSync(copyPaths(hybridDir, m.id).image));
    await assert.rejects(
      ensureLocalCopy({
        source: `${tmp}/src`,
        hybridDir,
        imageId: "0".repeat(64),
        manifestText: m.text,
      }),
      (e) => e instanceof HybridError && e.reason === "manifest",
    );
  });
});

Deno.test("hybrid copy (root): killed mid-copy, the next run resumes, re-verifies and completes", async () => {
  await withDisk(128, async (disk, tmp) => {
    await makeTree(`${tmp}/src`, { files: 60, fileKiB: 1024, seed: 3 });
    const m = await manifestOf(`${tmp}/src`);
    const hybridDir = `${disk.mnt}/walt-hybrid`;
    await Deno.writeTextFile(`${tmp}/manifest`, m.text);
    const script = `${tmp}/copy.ts`;
    await Deno.writeTextFile(
      script,
      `import { ensureLocalCopy } from "${new URL("../hybrid/copy.ts", import.meta.url).href}";
       await ensureLocalCopy({ source: "${tmp}/src", hybridDir: "${hybridDir}", imageId: "${m.id}",
         manifestText: Deno.readTextFileSync("${tmp}/manifest"), progressIntervalMs: 0,
         onProgress: (p) => console.log(p.done) });`,
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    // Power cut once about a third is written.
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      const last = Number(buf.trim().split("\n").at(-1));
      if (last > m.text.length && last > 20 * 1024 * 1024) break;
    }
    child.kill("SIGKILL");
    await child.status;
    await reader.cancel();
    const part = copyPaths(hybridDir, m.id).part;
    assert.ok(Deno.statSync(part).isDirectory, "an interrupted copy leaves image.part");
    // A half-written file with the right size but wrong bytes must not be trusted. (The workers
    // finish their batches in any order: the first complete file, not necessarily f0000.)
    const victim = [...Deno.readDirSync(`${part}/data`)].map((d) => `${part}/data/${d.name}`)
      .sort().find((f) => Deno.statSync(f).size === 1024 * 1024);
    assert.ok(victim, "at least one file was complete at the cut");
    const b = Deno.readFileSync(victim);
    b[100] ^= 0xff;
    Deno.writeFileSync(victim, b);
    const r = await ensureLocalCopy({
      source: `${tmp}/src`,
      hybridDir,
      imageId: m.id,
      manifestText: m.text,
    });
    assert.ok(r.resumed);
    assert.ok(r.bytesReused > 10 * 1024 * 1024, `reused ${r.bytesReused}`);
    assert.ok(r.bytesWritten < r.bytesTotal, `wrote ${r.bytesWritten} of ${r.bytesTotal}`);
    assert.equal((await manifestOf(copyPaths(hybridDir, m.id).image)).text, m.text);
  });
});

Deno.test("hybrid copy (root): a 1 %-changed image is re-deployed in place: ≤ 2 % written at the device", async () => {
  await withDisk(128, async (disk, tmp) => {
    await makeTree(`${tmp}/v1`, { files: 100, fileKiB: 256, seed: 4 });
    const v1 = await manifestOf(`${tmp}/v1`);
    run("cp", "-a", `${tmp}/v1`, `${tmp}/v2`);
    const b = Deno.readFileSync(`${tmp}/v2/data/f0042`);
    b.fill(7, 0, 4096);
    Deno.writeFileSync(`${tmp}/v2/data/f0042`, b); // one file of 100 = 1 % of the bytes
    const v2 = await manifestOf(`${tmp}/v2`);
    const hybridDir = `${disk.mnt}/walt-hybrid`;
    await ensureLocalCopy({
      source: `${tmp}/v1`,
      hybridDir,
      imageId: v1.id,
      manifestText: v1.text,
    });
    const before = disk.writtenBytes();
    const r = await ensureLocalCopy({
      source: `${tmp}/v2`,
      hybridDir,
      imageId: v2.id,
      manifestText: v2.text,
    });
    const deviceWrites = disk.writtenBytes() - before;
    assert.ok(
      r.bytesWritten <= 0.02 * r.bytesTotal,
      `copy wrote ${r.bytesWritten} of ${r.bytesTotal}`,
    );
    assert.ok(r.bytesKept >= 0.98 * r.bytesTotal, `kept ${r.bytesKept}`);
    assert.equal(r.bytesLinked + r.bytesReused, 0);
    // Block-device statistics include metadata, the manifest and the journal.
    assert.ok(
      deviceWrites < 0.02 * r.bytesTotal,
      `device wrote ${deviceWrites} of ${r.bytesTotal}`,
    );
    console.log(
      `1%-changed image: copy wrote ${(100 * r.bytesWritten / r.bytesTotal).toFixed(2)} % of ` +
        `${r.bytesTotal} B; block device wrote ${(100 * deviceWrites / r.bytesTotal).toFixed(2)} %`,
    );
    assert.equal((await manifestOf(copyPaths(hybridDir, v2.id).image)).text, v2.text);
    assert.ok(!isComplete(hybridDir, v1.id), "v1's tree became v2's");
  });
});

Deno.test("hybrid copy (root): in place, every kind of change; a file linked from another copy is left intact", async () => {
  await withDisk(64, async (disk, tmp) => {
    await makeTree(`${tmp}/v1`, { files: 20, fileKiB: 64, seed: 12 });
    await Deno.mkdir(`${tmp}/v1/gone/deep`, { recursive: true });
    await Deno.writeTextFile(`${tmp}/v1/gone/deep/x`, "x");
    await Deno.writeTextFile(`${tmp}/v1/etc/becomes-dir`, "file");
    lsetxattr(`${tmp}/v1/data/f0006`, "user.gone", new TextEncoder().encode("1"));
    lsetxattr(`${tmp}/v1/data`, "user.gone", new TextEncoder().encode("1"));
    const v1 = await manifestOf(`${tmp}/v1`);
    // Another image holding f0001 identical: v1's copy links it from there.
    await Deno.mkdir(`${tmp}/other/data`, { recursive: true });
    run("cp", "-a", `${tmp}/v1/data/f0001`, `${tmp}/other/data/f0001`);
    const other = await manifestOf(`${tmp}/other`);
    const hybridDir = `${disk.mnt}/walt-hybrid`;
    const copy = (src: string, m: { id: string; text: string }) =>
      ensureLocalCopy({ source: `${tmp}/${src}`, hybridDir, imageId: m.id, manifestText: m.text });
    await copy("other", other);
    assert.ok((await copy("v1", v1)).bytesLinked > 0);

    run("cp", "-a", `${tmp}/v1`, `${tmp}/v2`);
    const f1 = Deno.readFileSync(`${tmp}/v2/data/f0001`);
    f1[0] ^= 1;
    Deno.writeFileSync(`${tmp}/v2/data/f0001`, f1); // content change of a linked file
    Deno.utimeSync(`${tmp}/v2/data/f0001`, 1_600_000_000, 1_600_000_000);
    Deno.writeFileSync(`${tmp}/v2/data/f0002`, new Uint8Array(10)); // shorter
    Deno.chmodSync(`${tmp}/v2/data/f0003`, 0o600); // metadata only
    removeXattr(`${tmp}/v2/data/f0006`, "user.gone"); // an xattr dropped, file and directory
    removeXattr(`${tmp}/v2/data`, "user.gone");
    Deno.removeSync(`${tmp}/v2/data/f0004`);
    Deno.writeTextFileSync(`${tmp}/v2/data/new`, "new file");
    Deno.removeSync(`${tmp}/v2/gone`, { recursive: true });
    Deno.removeSync(`${tmp}/v2/etc/becomes-dir`);
    Deno.mkdirSync(`${tmp}/v2/etc/becomes-dir`);
    Deno.removeSync(`${tmp}/v2/etc/ping-link`);
    Deno.symlinkSync("elsewhere", `${tmp}/v2/etc/ping-link`);
    Deno.removeSync(`${tmp}/v2/usr/bin/ping6`); // the hard link goes…
    Deno.linkSync(`${tmp}/v2/data/f0005`, `${tmp}/v2/usr/bin/ping6`); // …to another file
    const v2 = await manifestOf(`${tmp}/v2`);
    const r = await copy("v2", v2);
    assert.ok(r.bytesKept > 0 && r.bytesWritten < r.bytesTotal / 2, JSON.stringify(r));
    assert.equal((await manifestOf(copyPaths(hybridDir, v2.id).image)).text, v2.text);
    assert.equal(
      (await manifestOf(copyPaths(hybridDir, other.id).image)).text,
      other.text,
      "the other image's copy, which shared f0001 with v1, is unchanged",
    );
  });
});

/** v1 copied, then a re-deploy of v2 (1 file of 40 changed, one added, one removed) cut by a power
 *  cut after `progressAt` progress reports (Infinity: right after the commit); the next boot must
 *  give v2 complete and verified. */
async function cutRedeploy(progressAt: number): Promise<{ cut: boolean; next: CopyReport }> {
  let out: { cut: boolean; next: CopyReport } | undefined;
  await withDisk(64, async (disk, tmp) => {
    await makeTree(`${tmp}/v1`, { files: 40, fileKiB: 256, seed: 13 });
    const v1 = await manifestOf(`${tmp}/v1`);
    run("cp", "-a", `${tmp}/v1`, `${tmp}/v2`);
    for (const i of [3, 17, 31]) {
      const f = `${tmp}/v2/data/f${String(i).padStart(4, "0")}`;
      const b = Deno.readFileSync(f);
      b[5] ^= 1;
      Deno.writeFileSync(f, b);
    }
    Deno.removeSync(`${tmp}/v2/data/f0020`);
    Deno.writeFileSync(`${tmp}/v2/data/added`, new Uint8Array(300_000).fill(3));
    const v2 = await manifestOf(`${tmp}/v2`);
    const hybridDir = `${disk.mnt}/walt-hybrid`;
    const prepare = (src: string, m: { id: string; text: string }) =>
      prepareHybridRoot({
        hybridDir,
        persistent: false,
        imageId: m.id,
        manifestText: m.text,
        source: `${tmp}/${src}`,
      });
    await prepare("v1", v1);
    run("sync");
    // The re-deploy runs in a child process that stops dead at its Nth progress report (or right
    // after its commit); the power is cut then, the child killed: nothing of it runs afterwards.
    await Deno.writeTextFile(`${tmp}/manifest`, v2.text);
    const script = `${tmp}/redeploy.ts`;
    await Deno.writeTextFile(
      script,
      `import { prepareHybridRoot } from "${new URL("../hybrid/mode.ts", import.meta.url).href}";
       const stop = () => { console.log("CUT"); Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0); };
       let n = 0;
       await prepareHybridRoot({ hybridDir: "${hybridDir}", persistent: false, imageId: "${v2.id}",
         manifestText: Deno.readTextFileSync("${tmp}/manifest"), source: "${tmp}/v2",
         progressIntervalMs: 0, onProgress: () => { if (++n === ${progressAt}) stop(); } });
       stop();`,
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "", cut = false;
    while (!buf.includes("CUT")) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
    }
    if (buf.includes("CUT")) disk.powerCut(), cut = true;
    child.kill("SIGKILL");
    await child.status;
    await reader.cancel();
    disk.powerOn();
    // Next boot: v2 is there, complete and exactly its manifest.
    const next = await prepare("v2", v2);
    assert.equal((await manifestOf(copyPaths(hybridDir, v2.id).image)).text, v2.text);
    assert.ok(isComplete(hybridDir, v2.id));
    // A complete copy's manifest survives the cut whole: the next re-deploy plans from it.
    assert.equal(Deno.readTextFileSync(copyPaths(hybridDir, v2.id).manifest), v2.text);
    out = { cut, next: next.report };
  });
  return out!;
}

Deno.test("hybrid (root): re-deploy in place cut by a power cut before its commit → the next boot re-verifies and completes it", async () => {
  for (const at of [1, 20, 45]) {
    const { cut, next } = await cutRedeploy(at);
    assert.ok(cut, `cut at progress report ${at}`);
    assert.ok(next.resumed, `the next boot resumed v2's image.part: ${JSON.stringify(next)}`);
  }
});

Deno.test("hybrid (root): re-deploy cut after its commit → the next boot finds it complete, copies nothing", async () => {
  const { cut, next } = await cutRedeploy(Infinity);
  assert.ok(cut);
  assert.equal(next.bytesWritten + next.bytesReused + next.bytesLinked + next.bytesKept, 0);
});

Deno.test("hybrid (root): no room → no-space error before copying; older copies evicted LRU first", async () => {
  await withDisk(48, async (disk, tmp) => {
    const hybridDir = `${disk.mnt}/walt-hybrid`;
    await makeTree(`${tmp}/big`, { files: 80, fileKiB: 1024, seed: 5 });
    const big = await manifestOf(`${tmp}/big`);
    await assert.rejects(
      prepareHybridRoot({
        hybridDir,
        persistent: false,
        imageId: big.id,
        manifestText: big.text,
        source: `${tmp}/big`,
      }),
      (e) => e instanceof HybridError && e.reason === "no-space" && /needs/.test(e.message),
    );
    assert.throws(() => Deno.statSync(copyPaths(hybridDir, big.id).part), "nothing written");
    // Three small complete copies, booted in order a, b, c; making room evicts a, then b.
    const ids: string[] = [];
    for (const seed of [6, 7, 8]) {
      await makeTree(`${tmp}/s${seed}`, { files: 10, fileKiB: 1024, seed });
      const m = await manifestOf(`${tmp}/s${seed}`);
      await prepareHybridRoot({
        hybridDir,
        persistent: false,
        imageId: m.id,
        manifestText: m.text,
        source: `${tmp}/s${seed}`,
      });
      ids.push(m.id);
      await new Promise((r) => setTimeout(r, 20));
    }
    let free = 0;
    const evicted = makeRoom(
      hybridDir,
      ids[2],
      { bytes: 1, inodes: 1 },
      () => ({ freeBytes: free++, freeInodes: 1e6 }),
    );
    assert.deepEqual(evicted, [ids[0]]);
    // Kept: the image being deployed and the copy it is re-deployed over, whatever their age.
    free = 0;
    assert.deepEqual(
      makeRoom(hybridDir, [ids[2], ids[1]], { bytes: 1e15, inodes: 1 }, () => ({
        freeBytes: free++,
        freeInodes: 1e6,
      })),
      [],
    );
    assert.ok(
      Deno.statSync(copyPaths(hybridDir, ids[2]).image).isDirectory,
      "current never evicted",
    );
  });
});

Deno.test("hybrid (root): disk full in the middle of the copy → no-space, partial copy removed, others kept", async () => {
  await withDisk(32, async (disk, tmp) => {
    const hybridDir = `${disk.mnt}/walt-hybrid`;
    await makeTree(`${tmp}/small`, { files: 2, fileKiB: 64, seed: 9 });
    const small = await manifestOf(`${tmp}/small`);
    await prepareHybridRoot({
      hybridDir,
      persistent: false,
      imageId: small.id,
      manifestText: small.text,
      source: `${tmp}/small`,
    });
    await makeTree(`${tmp}/big`, { files: 50, fileKiB: 1024, seed: 10 });
    const big = await manifestOf(`${tmp}/big`);
    await assert.rejects(
      prepareHybridRoot({
        hybridDir,
        persistent: false,
        imageId: big.id,
        manifestText: big.text,
        source: `${tmp}/big`,
        space: () => ({ freeBytes: 1e12, freeInodes: 1e9 }), // a lying statfs: the write must still fail cleanly
      }),
      (e) => e instanceof HybridError && e.reason === "no-space",
    );
    assert.throws(() => Deno.statSync(copyPaths(hybridDir, big.id).base));
    assert.equal((await manifestOf(copyPaths(hybridDir, small.id).image)).text, small.text);
  });
});

Deno.test("hybrid (root): volatile empties the upper at each boot, persistent keeps it (but /tmp)", async () => {
  await withImageOnDisk({ files: 1, fileKiB: 4, seed: 11 }, async ({ tmp, hybridDir, m }) => {
    const opts = { hybridDir, imageId: m.id, manifestText: m.text, source: `${tmp}/src` };
    const v1 = await prepareHybridRoot({ ...opts, persistent: false });
    assert.equal(v1.variant, "volatile");
    await Deno.writeTextFile(`${v1.upper}/written-at-boot-1`, "x");
    const v2 = await prepareHybridRoot({ ...opts, persistent: false });
    assert.deepEqual([...Deno.readDirSync(v2.upper)], []);
    const p1 = await prepareHybridRoot({ ...opts, persistent: true });
    await Deno.mkdir(`${p1.upper}/tmp`);
    await Deno.writeTextFile(`${p1.upper}/kept`, "x");
    await Deno.writeTextFile(`${p1.upper}/tmp/scratch`, "x");
    const p2 = await prepareHybridRoot({ ...opts, persistent: true });
    assert.equal(p2.variant, "persistent");
    assert.equal(Deno.readTextFileSync(`${p2.upper}/kept`), "x");
    assert.throws(() => Deno.statSync(`${p2.upper}/tmp`));
    assert.deepEqual([...Deno.readDirSync(p2.work)], []);
  });
});

// A hostile disk: root on the node before (any image, or a persistent hybrid image writing to this
// very partition) plants links, FIFOs and files inside walt-hybrid/ for the next boot, whose init
// runs as PID 1. The init must never write, remove or follow anything outside walt-hybrid/.

/** A tree outside walt-hybrid/ (on the same partition, where an attacker's links can point) that
 *  must come out of every boot exactly as it went in. */
function victim(root: string): { dir: string; check(): void } {
  const dir = `${root}/victim`;
  Deno.mkdirSync(`${dir}/tmp`, { recursive: true });
  Deno.mkdirSync(`${dir}/work`, { recursive: true });
  Deno.writeTextFileSync(`${dir}/data`, "precious\n");
  Deno.writeTextFileSync(`${dir}/tmp/data`, "precious\n");
  const names = () =>
    [...Deno.readDirSync(dir)].map((e) => e.name).sort().join(",") + "|" +
    [...Deno.readDirSync(`${dir}/tmp`)].map((e) => e.name).sort().join(",");
  const before = names();
  return {
    dir,
    check() {
      assert.equal(names(), before, "nothing created or removed outside walt-hybrid/");
      assert.equal(Deno.readTextFileSync(`${dir}/data`), "precious\n");
      assert.equal(Deno.readTextFileSync(`${dir}/tmp/data`), "precious\n");
    },
  };
}

Deno.test("hybrid (root, hostile disk): links planted at <id>, image.part, image, diff, work lead nowhere outside walt-hybrid/", async () => {
  for (const at of ["", "/image.part", "/image", "/diff", "/work"]) {
    for (const persistent of [false, true]) {
      await withImageOnDisk(
        { files: 2, fileKiB: 4, seed: 20 },
        async ({ disk, tmp, hybridDir, m }) => {
          const v = victim(disk.mnt);
          const p = copyPaths(hybridDir, m.id);
          if (at === "/image") Deno.writeTextFileSync(`${v.dir}/manifest`, m.text); // "complete"
          if (at) Deno.mkdirSync(p.base);
          Deno.symlinkSync(v.dir, p.base + at);
          const root = await prepareHybridRoot({
            hybridDir,
            persistent,
            imageId: m.id,
            manifestText: m.text,
            source: `${tmp}/src`,
          });
          if (at === "/image") Deno.removeSync(`${v.dir}/manifest`);
          v.check();
          for (const d of [p.base, root.lower, root.upper, root.work]) {
            assert.ok(Deno.lstatSync(d).isDirectory, `${d} ${at}: a real directory`);
          }
          assert.equal((await manifestOf(root.lower)).text, m.text);
        },
      );
    }
  }
});

Deno.test("hybrid (root, hostile disk): last-boot and manifest.tmp as links, FIFOs or device nodes are not written through", async () => {
  await withImageOnDisk({ files: 2, fileKiB: 4, seed: 21 }, async ({ disk, tmp, hybridDir, m }) => {
    const opts = { hybridDir, persistent: false, imageId: m.id, source: `${tmp}/src` };
    const p = copyPaths(hybridDir, m.id);
    const v = victim(disk.mnt);
    Deno.mkdirSync(p.base);
    Deno.symlinkSync(`${v.dir}/data`, `${p.manifest}.tmp`); // the copy's manifest, written last
    Deno.linkSync(`${v.dir}/data`, p.lastBoot); // a hard link: same inode as the victim
    await prepareHybridRoot({ ...opts, manifestText: m.text });
    v.check();
    assert.equal(Deno.readTextFileSync(p.manifest), m.text);
    // A complete copy: last-boot is written at every boot. A symlink, then a FIFO (whose open for
    // writing would wait for a reader forever: a reader here tells what went through it).
    Deno.removeSync(p.lastBoot);
    Deno.symlinkSync(`${v.dir}/data`, p.lastBoot);
    await prepareHybridRoot({ ...opts, manifestText: m.text });
    v.check();
    Deno.removeSync(p.lastBoot);
    run("mkfifo", p.lastBoot);
    const reader = new Deno.Command("cat", { args: [p.lastBoot], stdout: "piped" }).spawn();
    try {
      await prepareHybridRoot({ ...opts, manifestText: m.text });
    } finally {
      try {
        reader.kill();
      } catch { /* cat found no FIFO to open (removed first): nothing to kill */ }
    }
    assert.equal(new TextDecoder().decode((await reader.output()).stdout), "");
    assert.ok(Deno.lstatSync(p.lastBoot).isFile);
    // The disk's own device node there: the date went into its first bytes.
    const head = () => {
      const f = Deno.openSync(disk.loop);
      const b = new Uint8Array(1024);
      f.readSync(b);
      f.close();
      return b;
    };
    const before = head();
    Deno.removeSync(p.lastBoot);
    const [major, minor] = run("cat", `/sys/class/block/${disk.loop.slice(5)}/dev`).split(":");
    run("mknod", p.lastBoot, "b", major, minor);
    await prepareHybridRoot({ ...opts, manifestText: m.text });
    assert.deepEqual(head(), before, "nothing written into the block device");
  });
});

Deno.test("hybrid (root, hostile disk): a planted copy to re-deploy over, with a linked directory, linked entries or .. paths, changes nothing outside walt-hybrid/", async () => {
  for (const trick of ["linked dir", "linked entries", "dot-dot paths"]) {
    await withImageOnDisk(
      { files: 8, fileKiB: 64, seed: 22 },
      async ({ disk, tmp, hybridDir, m }) => {
        Deno.mkdirSync(`${disk.mnt}/victim`);
        Deno.writeTextFileSync(`${disk.mnt}/victim/image-release`, "precious\n", { mode: 0o640 });
        const v = victim(disk.mnt);
        v.check = ((check) => () => {
          check();
          assert.equal(Deno.readTextFileSync(`${v.dir}/image-release`), "precious\n");
          assert.equal(Deno.statSync(`${v.dir}/image-release`).mode! & 0o7777, 0o640);
        })(v.check);
        // A "complete copy" of another id holding the new image's data (so that it is re-deployed
        // over in place), whose manifest says /etc/image-release changed and /etc/old is stale.
        const fake = copyPaths(hybridDir, "f".repeat(64));
        Deno.mkdirSync(fake.base);
        run("cp", "-a", `${tmp}/src`, fake.image);
        const lines = m.text.split("\n").map((l) =>
          l.startsWith("/etc/image-release\t")
            ? l.replace(/\t[0-9a-f]{64}\t/, `\t${"0".repeat(64)}\t`)
            : l
        );
        const stale = (path: string) =>
          `${path}\tfile\t0644\t0\t0\t9\t1600000000\t${"1".repeat(64)}\t\t\t`;
        if (trick === "linked dir") {
          Deno.removeSync(`${fake.image}/etc`, { recursive: true });
          Deno.symlinkSync(v.dir, `${fake.image}/etc`);
          lines.splice(
            lines.findIndex((l) => l.startsWith("/etc/image-release\t")),
            0,
            stale("/etc/data"),
          );
        } else if (trick === "linked entries") {
          // the same data or device, another mode: only metadata to set, on a link out
          for (const [path, mode] of [["/etc/image-release", "0640"], ["/dev/null", "0600"]]) {
            const i = lines.findIndex((l) => l.startsWith(`${path}\t`));
            const f = m.text.split("\n")[i].split("\t");
            f[2] = mode;
            lines[i] = f.join("\t");
            Deno.removeSync(fake.image + path);
            Deno.symlinkSync(`${v.dir}/image-release`, fake.image + path);
          }
        } else {
          lines.splice(
            1,
            0,
            stale("/../../../victim/data"),
            stale("/etc/../../../../victim/tmp/data"),
          );
        }
        Deno.writeTextFileSync(fake.manifest, lines.join("\n"));
        const opts = {
          hybridDir,
          persistent: false,
          imageId: m.id,
          manifestText: m.text,
          source: `${tmp}/src`,
        };
        // One boot may fall back to network mode (the planted copy is not what it claims); the next
        // completes from what the first left, re-verified.
        const root = await prepareHybridRoot(opts).catch((e) => {
          assert.ok(e instanceof HybridError, String(e));
          return prepareHybridRoot(opts);
        });
        v.check();
        assert.equal((await manifestOf(root.lower)).text, m.text, trick);
      },
    );
  }
});

Deno.test("hybrid (root, hostile disk): other copies' manifests that are garbage, huge or FIFOs are passed over; the copy completes", async () => {
  await withImageOnDisk({ files: 2, fileKiB: 4, seed: 23 }, async ({ tmp, hybridDir, m }) => {
    const plant = (c: string, manifest: (path: string) => void) => {
      const p = copyPaths(hybridDir, c.repeat(64));
      Deno.mkdirSync(p.image, { recursive: true });
      manifest(p.manifest);
    };
    plant("a", (path) => Deno.writeTextFileSync(path, "netroot-manifest 1\nnot\ta\tmanifest\n"));
    plant("b", (path) => run("truncate", "-s", "4G", path)); // sparse: 4 GiB of NULs to read
    plant("c", (path) => run("mkfifo", path));
    const root = await prepareHybridRoot({
      hybridDir,
      persistent: false,
      imageId: m.id,
      manifestText: m.text,
      source: `${tmp}/src`,
    });
    assert.equal((await manifestOf(root.lower)).text, m.text);
  });
});

Deno.test("hybrid (root, hostile disk): a resume dir with a hard link out, a FIFO, the disk's device node and a symlink at file paths", async () => {
  await withImageOnDisk({ files: 2, fileKiB: 4, seed: 24 }, async ({ disk, tmp, hybridDir, m }) => {
    Deno.mkdirSync(`${disk.mnt}/victim`);
    // outside walt-hybrid/, the very bytes of the image's /etc/image-release (0644, 1234:5678)
    const release = `${disk.mnt}/victim/release`;
    Deno.copyFileSync(`${tmp}/src/etc/image-release`, release);
    Deno.chmodSync(release, 0o600);
    Deno.chownSync(release, 0, 0);
    Deno.utimeSync(release, 1_000_000_000, 1_000_000_000);
    const v = victim(disk.mnt);
    const part = copyPaths(hybridDir, m.id).part;
    for (const d of ["etc", "usr/bin", "data"]) Deno.mkdirSync(`${part}/${d}`, { recursive: true });
    Deno.linkSync(release, `${part}/etc/image-release`);
    run("mkfifo", `${part}/usr/bin/ping`);
    const [major, minor] = run("cat", `/sys/class/block/${disk.loop.slice(5)}/dev`).split(":");
    run("mknod", `${part}/data/f0000`, "b", major, minor);
    Deno.symlinkSync(`${v.dir}/data`, `${part}/data/f0001`);
    const root = await prepareHybridRoot({
      hybridDir,
      persistent: false,
      imageId: m.id,
      manifestText: m.text,
      source: `${tmp}/src`,
    });
    v.check();
    const st = Deno.lstatSync(release);
    assert.deepEqual(
      [st.mode! & 0o7777, st.uid, st.gid, st.mtime?.getTime(), st.nlink],
      [0o600, 0, 0, 1e12, 1],
      "the file outside keeps its metadata and is no part of the copy",
    );
    assert.equal((await manifestOf(root.lower)).text, m.text);
  });
});

Deno.test("hybrid (root, hostile disk): other copies' manifests are read up to 128 MiB in all (three planted 86 MB ones took 3 GB)", async () => {
  await withImageOnDisk({ files: 1, fileKiB: 4, seed: 25 }, async ({ tmp, hybridDir, m }) => {
    const other = await manifestOf(`${tmp}/src`);
    const a = copyPaths(hybridDir, "a".repeat(64)), b = copyPaths(hybridDir, "b".repeat(64));
    for (const p of [a, b]) Deno.mkdirSync(p.image, { recursive: true });
    // a: read first (name order), as big as the bound leaves room for nothing after it
    run("truncate", "-s", String(maxManifestBytes - other.text.length + 1), a.manifest);
    Deno.writeTextFileSync(b.manifest, other.text);
    assert.equal(indexOtherCopies(hybridDir, m.id).size, 0, "b is past the bound");
    Deno.truncateSync(a.manifest, 10);
    assert.ok(indexOtherCopies(hybridDir, m.id).size > 0, "within it, b is used");
  });
});

Deno.test("hybrid (root, hostile disk): an image/ without its manifest (a cut eviction, or planted) does not block the copy", async () => {
  await withImageOnDisk({ files: 2, fileKiB: 4, seed: 26 }, async ({ tmp, hybridDir, m }) => {
    const p = copyPaths(hybridDir, m.id);
    Deno.mkdirSync(`${p.image}/etc`, { recursive: true });
    Deno.writeTextFileSync(`${p.image}/etc/planted`, "x");
    const root = await prepareHybridRoot({
      hybridDir,
      persistent: false,
      imageId: m.id,
      manifestText: m.text,
      source: `${tmp}/src`,
    });
    assert.equal((await manifestOf(root.lower)).text, m.text);
  });
});
