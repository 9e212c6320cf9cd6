// Hybrid copy against an attacker on the boot network (who answers the manifest request in the
// server's place) or one who wrote the node's disk before this boot. Runs in a temporary directory
// (root needed: the copy sets owners).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { manifestText } from "../contract/manifest.ts";
import { scanTree } from "../src/images/walk.ts";
import { copyPaths, ensureLocalCopy, HybridError, isComplete } from "../hybrid/copy.ts";
import { makeRoom, maxHybridDirBytes, prepareHybridRoot } from "../hybrid/mode.ts";

const sha = (s: string) => createHash("sha256").update(s).digest("hex");

async function manifestOf(root: string): Promise<{ text: string; id: string }> {
  const text = manifestText((await scanTree(root)).entries);
  return { text, id: sha(text) };
}

/** A copy of the image at `source` (as a boot makes it), volatile unless `persistent`. */
const bootFrom = (
  hybridDir: string,
  source: string,
  img: { id: string; text: string },
  persistent = false,
) => prepareHybridRoot({ hybridDir, persistent, imageId: img.id, manifestText: img.text, source });

/** An image tree of `n` 16 KiB files under /data, and /etc/release. */
function makeTree(root: string, n: number, seed: number): void {
  Deno.mkdirSync(`${root}/data`, { recursive: true });
  Deno.mkdirSync(`${root}/etc`, { recursive: true });
  Deno.writeTextFileSync(`${root}/etc/release`, `v${seed}\n`);
  for (let i = 0; i < n; i++) {
    Deno.writeFileSync(`${root}/data/f${i}`, new Uint8Array(16 << 10).fill(seed * 31 + i));
  }
}

async function withTmp(fn: (tmp: string, hybridDir: string) => Promise<void>): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "nr-hybrid-hostile-" });
  try {
    const hybridDir = `${tmp}/part/walt-hybrid`;
    Deno.mkdirSync(hybridDir, { recursive: true });
    await fn(tmp, hybridDir);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

Deno.test("hybrid (hostile): a manifest that does not hash to the image id evicts nothing", async () => {
  await withTmp(async (tmp, hybridDir) => {
    // Another image's complete copy, persistent, with the user's work in its diff/.
    makeTree(`${tmp}/other`, 4, 1);
    const other = await manifestOf(`${tmp}/other`);
    const op = copyPaths(hybridDir, other.id);
    await prepareHybridRoot({
      hybridDir,
      persistent: true,
      imageId: other.id,
      manifestText: other.text,
      source: `${tmp}/other`,
    });
    Deno.writeTextFileSync(`${op.upper}/work-of-a-week`, "keep me\n");
    // This boot's image (its id on the command line), and the manifest an attacker answered in
    // the server's place: one 1 TB file, more than the disk holds, which only eviction could seat.
    makeTree(`${tmp}/img`, 4, 2);
    const img = await manifestOf(`${tmp}/img`);
    const forged = "netroot-manifest 1\n" +
      `/\tdir\t0755\t0\t0\t0\t1600000000\t\t\t\t\n` +
      `/huge\tfile\t0644\t0\t0\t${1e12}\t1600000000\t${"0".repeat(64)}\t\t\t\n`;
    const err = await prepareHybridRoot({
      hybridDir,
      persistent: false,
      imageId: img.id,
      manifestText: forged,
      source: `${tmp}/img`,
      space: () => ({ freeBytes: 1 << 30, freeInodes: 1e6 }),
    }).then(() => undefined, (e) => e);
    assert.ok(isComplete(hybridDir, other.id), "the other image's copy is still there");
    assert.equal(Deno.readTextFileSync(`${op.upper}/work-of-a-week`), "keep me\n");
    assert.ok(err instanceof HybridError && err.reason === "manifest", String(err));
  });
});

Deno.test("hybrid (hostile): an image id that is not a sha256 never names a path", async () => {
  await withTmp(async (tmp, hybridDir) => {
    // What the copy would clear at `walt-hybrid/../`: the partition's own entries.
    Deno.writeTextFileSync(`${tmp}/part/diff`, "the partition's\n");
    await assert.rejects(
      prepareHybridRoot({
        hybridDir,
        persistent: false,
        imageId: "..",
        manifestText: "netroot-manifest 1\n",
        source: `${tmp}/nowhere`,
      }),
      (e) => e instanceof HybridError && e.reason === "manifest",
    );
    assert.equal(Deno.readTextFileSync(`${tmp}/part/diff`), "the partition's\n");
  });
});

Deno.test("hybrid (hostile): re-deploy in place over a copy with a planted symlink at a new file's path writes nothing outside", async () => {
  await withTmp(async (tmp, hybridDir) => {
    makeTree(`${tmp}/v1`, 8, 3);
    const v1 = await manifestOf(`${tmp}/v1`);
    await ensureLocalCopy({
      source: `${tmp}/v1`,
      hybridDir,
      imageId: v1.id,
      manifestText: v1.text,
    });
    // Root on the node (a previous boot) plants, in v1's complete copy, a symlink where the next
    // version has a new file, and points it out of walt-hybrid/.
    const victim = `${tmp}/part/victim`;
    Deno.writeTextFileSync(victim, "precious\n", { mode: 0o600 });
    Deno.symlinkSync(victim, `${copyPaths(hybridDir, v1.id).image}/data/new`);
    // v2: v1 plus that file (mostly shared: re-deployed over v1 in place).
    Deno.mkdirSync(`${tmp}/v2`);
    new Deno.Command("cp", { args: ["-a", `${tmp}/v1/.`, `${tmp}/v2/`] }).outputSync();
    Deno.writeTextFileSync(`${tmp}/v2/data/new`, "new file of v2\n");
    Deno.chmodSync(`${tmp}/v2/data/new`, 0o4755);
    const v2 = await manifestOf(`${tmp}/v2`);
    const r = await ensureLocalCopy({
      source: `${tmp}/v2`,
      hybridDir,
      imageId: v2.id,
      manifestText: v2.text,
    });
    assert.equal(Deno.lstatSync(victim).mode! & 0o7777, 0o600, "the file outside: its mode");
    assert.equal(Deno.readTextFileSync(victim), "precious\n", "the file outside is unchanged");
    assert.ok(r.bytesKept > 0, "re-deployed in place");
    // the planted link went: the copy holds v2's file
    assert.equal((await manifestOf(copyPaths(hybridDir, v2.id).image)).text, v2.text);
  });
});

/** RLIMIT_NOFILE's soft limit set to `soft` while `fn` runs (the hard limit kept). */
async function withOpenFileLimit(soft: number, fn: () => Promise<void>): Promise<void> {
  const libc = Deno.dlopen(
    "libc.so.6",
    {
      getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
      setrlimit: { parameters: ["i32", "buffer"], result: "i32" },
    } as const,
  );
  const RLIMIT_NOFILE = 7;
  const saved = new BigUint64Array(2);
  try {
    assert.equal(libc.symbols.getrlimit(RLIMIT_NOFILE, saved), 0);
    assert.equal(
      libc.symbols.setrlimit(RLIMIT_NOFILE, BigUint64Array.of(BigInt(soft), saved[1])),
      0,
    );
    try {
      await fn();
    } finally {
      libc.symbols.setrlimit(RLIMIT_NOFILE, saved);
    }
  } finally {
    libc.close();
  }
}

Deno.test("hybrid (hostile): a directory 1500 levels deep left in a volatile copy's diff/ by the last boot's /tmp is removed at the next boot", async () => {
  await withTmp(async (tmp, hybridDir) => {
    makeTree(`${tmp}/img`, 2, 3);
    const img = await manifestOf(`${tmp}/img`);
    const boot = () => bootFrom(hybridDir, `${tmp}/img`, img);
    await boot();
    // Any user of the booted image (no root needed): mkdir -p in /tmp, a path of 1500 levels,
    // lands in the overlay's upper, diff/.
    const p = copyPaths(hybridDir, img.id);
    Deno.mkdirSync(`${p.upper}/tmp/${"d/".repeat(1500)}`, { recursive: true });
    // The init runs with PID 1's limit of 1024 open files (the kernel's default).
    await withOpenFileLimit(1024, async () => {
      await boot();
    });
    assert.deepEqual(
      [...Deno.readDirSync(p.upper)],
      [],
      "the next boot starts from the image alone",
    );
  });
});

Deno.test("hybrid (hostile): a directory with files planted at a copy's last-boot and manifest is removed, not a failure at every boot", async () => {
  await withTmp(async (tmp, hybridDir) => {
    makeTree(`${tmp}/img`, 2, 4);
    const img = await manifestOf(`${tmp}/img`);
    const boot = () => bootFrom(hybridDir, `${tmp}/img`, img);
    await boot();
    const p = copyPaths(hybridDir, img.id);
    for (const own of [p.lastBoot, p.manifest]) {
      Deno.removeSync(own);
      Deno.mkdirSync(`${own}/planted`, { recursive: true });
      Deno.writeTextFileSync(`${own}/planted/file`, "x");
    }
    const r = await boot();
    assert.ok(isComplete(hybridDir, img.id), "copied again, complete");
    assert.equal(r.report.bytesWritten, r.report.bytesTotal);
    assert.ok(Deno.lstatSync(p.lastBoot).isFile);
  });
});

Deno.test("hybrid (hostile): thousands of planted copy directories are each looked at a few times when room is made, not at every comparison of the sort", async () => {
  await withTmp((_tmp, hybridDir) => {
    // Each with a last-boot of its own time, in no order: the sort compares ~n·log2(n) pairs.
    const n = 3000;
    for (let i = 0; i < n; i++) {
      const base = `${hybridDir}/${sha(`planted ${i}`)}`;
      Deno.mkdirSync(base);
      Deno.writeTextFileSync(`${base}/last-boot`, "");
      Deno.utimeSync(`${base}/last-boot`, 0, 1e6 + ((i * 7919) % n));
    }
    const { lstatSync, statSync } = Deno;
    let calls = 0;
    Object.assign(Deno, {
      lstatSync: (p: string | URL) => (calls++, lstatSync(p)),
      statSync: (p: string | URL) => (calls++, statSync(p)),
    });
    let evicted: string[];
    const t0 = performance.now();
    try {
      // a disk that never has room: every other copy goes, least recently booted first
      evicted = makeRoom(hybridDir, sha("this image"), { bytes: 1, inodes: 1 }, () => ({
        freeBytes: 0,
        freeInodes: 0,
      }));
    } finally {
      Object.assign(Deno, { lstatSync, statSync });
    }
    const ms = performance.now() - t0;
    assert.equal(evicted.length, n);
    assert.deepEqual([...Deno.readDirSync(hybridDir)], []);
    assert.ok(calls <= 5 * n, `${calls} stat calls for ${n} planted directories (${ms} ms)`);
    return Promise.resolve();
  });
});

Deno.test("hybrid (hostile): a walt-hybrid/ filled with names by an earlier root is refused at once, not listed (network mode)", async () => {
  await withTmp(async (tmp, hybridDir) => {
    // Long names fill the directory's blocks with few entries (ext4: ~1 MiB for 4,500 of 250
    // bytes); the attack is millions of short ones, each looked at by every copy.
    for (let i = 0; Deno.lstatSync(hybridDir).size <= maxHybridDirBytes; i++) {
      Deno.writeFileSync(`${hybridDir}/${String(i).padStart(250, "x")}`, new Uint8Array());
    }
    makeTree(`${tmp}/img`, 2, 3);
    const img = await manifestOf(`${tmp}/img`);
    const { readDirSync } = Deno;
    let listed = 0;
    Object.assign(Deno, { readDirSync: (p: string | URL) => (listed++, readDirSync(p)) });
    let err: unknown;
    try {
      err = await prepareHybridRoot({
        hybridDir,
        persistent: false,
        imageId: img.id,
        manifestText: img.text,
        source: `${tmp}/img`,
      }).then(() => undefined, (e) => e);
    } finally {
      Object.assign(Deno, { readDirSync });
    }
    assert.ok(err instanceof HybridError && err.reason === "corrupt", String(err));
    assert.match((err as Error).message, /wipe it/);
    assert.equal(listed, 0, "nothing of it listed");
    assert.equal(isComplete(hybridDir, img.id), false);
  });
});

const lstatOrNull = (path: string) => {
  try {
    return Deno.lstatSync(path);
  } catch {
    return null;
  }
};

function chattr(...args: string[]): void {
  const r = new Deno.Command("chattr", { args, stderr: "piped" }).outputSync();
  assert.ok(r.success, `chattr ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
}

Deno.test("hybrid (hostile): entries made immutable or append-only (chattr +i/+a) on the partition in diff/, at last-boot and in a copy to evict are removed, not a failure at every boot", async () => {
  await withTmp(async (tmp, hybridDir) => {
    try {
      makeTree(`${tmp}/img`, 2, 5);
      const img = await manifestOf(`${tmp}/img`);
      const boot = (persistent: boolean) => bootFrom(hybridDir, `${tmp}/img`, img, persistent);
      const p = copyPaths(hybridDir, img.id);
      // Root on the node, on the partition's own mount (remounted read-write), in the overlay's
      // upper: an immutable /etc/resolv.conf, an append-only log directory, the same in /tmp,
      // and an immutable last-boot. (Through the overlay, chattr sets only an attribute of
      // overlayfs's own.)
      const plant = () => {
        Deno.mkdirSync(`${p.upper}/etc`, { recursive: true });
        Deno.writeTextFileSync(`${p.upper}/etc/resolv.conf`, "nameserver 10.0.0.1\n");
        chattr("+i", `${p.upper}/etc/resolv.conf`);
        for (const d of [`${p.upper}/var/log/app`, `${p.upper}/tmp/app`]) {
          Deno.mkdirSync(d, { recursive: true });
          Deno.writeTextFileSync(`${d}/log`, "x\n");
          chattr("+a", d);
        }
        Deno.writeTextFileSync(`${p.upper}/tmp/lock`, "x");
        chattr("+i", `${p.upper}/tmp/lock`);
        chattr("+i", p.lastBoot);
      };
      await boot(true);
      plant();
      const before = Deno.statSync(p.lastBoot).mtime!.getTime();
      await new Promise((r) => setTimeout(r, 20));
      await boot(true);
      assert.equal(lstatOrNull(`${p.upper}/tmp`), null, "/tmp emptied");
      assert.ok(
        Deno.lstatSync(`${p.upper}/etc/resolv.conf`).isFile,
        "persistent: the rest of diff/ kept",
      );
      assert.ok(Deno.statSync(p.lastBoot).mtime!.getTime() > before, "last-boot written");
      await boot(false);
      assert.deepEqual(
        [...Deno.readDirSync(p.upper)],
        [],
        "volatile: the boot starts from the image alone",
      );
      plant();
      const evicted = makeRoom(hybridDir, sha("another image"), { bytes: 1, inodes: 1 }, () => ({
        freeBytes: 0,
        freeInodes: 0,
      }));
      assert.deepEqual(evicted, [img.id]);
      assert.deepEqual([...Deno.readDirSync(hybridDir)], [], "the copy is gone");
    } finally {
      new Deno.Command("chattr", { args: ["-R", "-ia", tmp], stderr: "null" }).outputSync();
    }
  });
});

Deno.test("hybrid (hostile): a re-deploy in place over a copy whose files and directories were made immutable on the partition (chattr +i) clears them and copies on", async () => {
  await withTmp(async (tmp, hybridDir) => {
    try {
      makeTree(`${tmp}/a`, 3, 7);
      makeTree(`${tmp}/b`, 3, 7); // the next version: two files changed, the same sizes
      Deno.writeTextFileSync(`${tmp}/b/etc/release`, "v8\n");
      Deno.writeFileSync(`${tmp}/b/data/f1`, new Uint8Array(16 << 10).fill(1));
      const a = await manifestOf(`${tmp}/a`), b = await manifestOf(`${tmp}/b`);
      const boot = (img: { id: string; text: string }, source: string) =>
        bootFrom(hybridDir, source, img);
      await boot(a, `${tmp}/a`);
      const pa = copyPaths(hybridDir, a.id);
      chattr("+i", `${pa.image}/etc/release`, `${pa.image}/data/f1`);
      chattr("+a", `${pa.image}/data`);
      const r = await boot(b, `${tmp}/b`);
      assert.ok(isComplete(hybridDir, b.id));
      const pb = copyPaths(hybridDir, b.id);
      assert.equal(Deno.readTextFileSync(`${pb.image}/etc/release`), "v8\n");
      assert.deepEqual(
        (await manifestOf(pb.image)).id,
        b.id,
        "the copy is the image, every file as the manifest says",
      );
      assert.ok(
        r.report.bytesWritten < r.report.bytesTotal,
        "the unchanged files not copied again",
      );
    } finally {
      new Deno.Command("chattr", { args: ["-R", "-ia", tmp], stderr: "null" }).outputSync();
    }
  });
});

Deno.test("hybrid (hostile): the copy's own directories made immutable or append-only on the partition (the base's image/ and its directory, walt-hybrid/, a copy's directory without work/, the next version's made ahead) are cleared, not a failure at every boot", async () => {
  // Each: what root on the node did to the partition after the boot of image a; then image b
  // (a's next version: a re-deploy in place over a's copy) or a again boots, twice.
  const cases: [
    string,
    (pa: ReturnType<typeof copyPaths>, hybridDir: string, pb: ReturnType<typeof copyPaths>) => void,
    "a" | "b",
  ][] = [
    ["+i on the base's image/", (pa) => chattr("+i", pa.image), "b"],
    ["+a on the base's directory", (pa) => chattr("+a", pa.base), "b"],
    ["+i on walt-hybrid/", (_, hybridDir) => chattr("+i", hybridDir), "b"],
    ["work/ removed, +i on the copy's directory", (pa) => {
      Deno.removeSync(pa.work);
      chattr("+i", pa.base);
    }, "a"],
    ["+i on the next version's own directory, made ahead", (_, __, pb) => {
      Deno.mkdirSync(pb.base);
      chattr("+i", pb.base);
    }, "b"],
  ];
  for (const [what, plant, next] of cases) {
    await withTmp(async (tmp, hybridDir) => {
      try {
        makeTree(`${tmp}/a`, 3, 7);
        makeTree(`${tmp}/b`, 3, 7);
        Deno.writeTextFileSync(`${tmp}/b/etc/release`, "v8\n");
        const a = await manifestOf(`${tmp}/a`), b = await manifestOf(`${tmp}/b`);
        await bootFrom(hybridDir, `${tmp}/a`, a, true);
        plant(copyPaths(hybridDir, a.id), hybridDir, copyPaths(hybridDir, b.id));
        const img = next === "a" ? a : b;
        for (let boot = 1; boot <= 2; boot++) {
          const err = await bootFrom(hybridDir, `${tmp}/${next}`, img, true).then(
            () => undefined,
            (e) => e,
          );
          assert.equal(err, undefined, `${what}, boot ${boot}: ${err}`);
          assert.ok(isComplete(hybridDir, img.id), what);
        }
      } finally {
        new Deno.Command("chattr", { args: ["-R", "-ia", tmp], stderr: "null" }).outputSync();
      }
    });
  }
});

Deno.test("hybrid (hostile): a file of another copy that the new copy links, made immutable, append-only or given the most links on the partition, is linked or copied, not a failure at every boot", async () => {
  // Each: what root on the node did to the copy of image a on the partition; image b (mostly
  // other files: a fresh copy) has one file a's copy holds, linked from there.
  const cases: [string, (file: string) => void][] = [
    ["+i", (file) => chattr("+i", file)],
    ["+a", (file) => chattr("+a", file)],
    ["65,000 links", (file) => {
      const dir = `${file}.links`;
      Deno.mkdirSync(dir);
      try {
        for (let i = 0;; i++) Deno.linkSync(file, `${dir}/${i}`);
      } catch (e) {
        assert.match((e as Error).message, /Too many links/);
      }
    }],
  ];
  for (const [what, plant] of cases) {
    await withTmp(async (tmp, hybridDir) => {
      try {
        makeTree(`${tmp}/a`, 2, 7);
        makeTree(`${tmp}/b`, 6, 9);
        const shared = Deno.statSync(`${tmp}/a/data/f0`).mtime!;
        Deno.copyFileSync(`${tmp}/a/data/f0`, `${tmp}/b/data/f0`);
        Deno.utimeSync(`${tmp}/b/data/f0`, shared, shared);
        const a = await manifestOf(`${tmp}/a`), b = await manifestOf(`${tmp}/b`);
        await bootFrom(hybridDir, `${tmp}/a`, a);
        plant(`${copyPaths(hybridDir, a.id).image}/data/f0`);
        const err = await bootFrom(hybridDir, `${tmp}/b`, b).then(() => undefined, (e) => e);
        assert.equal(err, undefined, `${what}: ${err}`);
        const pb = copyPaths(hybridDir, b.id);
        assert.equal((await manifestOf(pb.image)).id, b.id, `${what}: the copy is the image`);
        assert.ok(isComplete(hybridDir, a.id), `${what}: a's copy is still there`);
      } finally {
        new Deno.Command("chattr", { args: ["-R", "-ia", tmp], stderr: "null" }).outputSync();
      }
    });
  }
});

const hostileSources = [
  ["zero", "a link to the node's /dev/zero", /the source is not a regular file/],
  ["fifo", "a FIFO", /the source is not a regular file/],
  [
    "huge",
    "a file of 64 GiB where the manifest says 3 bytes",
    /source does not match the manifest/,
  ],
] as const;
for (const [kind, what, says] of hostileSources) {
  Deno.test(`hybrid (hostile): a source file that is ${what} (the export served by whoever answers at the server's address) fails the copy at once`, async () => {
    const tmp = await Deno.makeTempDir({ prefix: "nr-hybrid-source-" });
    try {
      // The copy runs in a child: the old one read /dev/zero into the partition without end
      // (2 GB in 8 s, until the partition was full), read all 64 GiB of the file, and blocked
      // for ever in the FIFO's open, PID 1 silent all along.
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          ...["run", "-A", "--no-check"],
          new URL("./hybrid_source_child.ts", import.meta.url).pathname,
          tmp,
          kind,
        ],
        stdin: "null",
        signal: AbortSignal.timeout(20_000),
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      const err = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, `the copy did not end in 20 s: ${text}${err}`);
      const r = JSON.parse(text.trim().split("\n").at(-1)!);
      assert.equal(r.ok, false);
      assert.equal(r.reason, "corrupt", r.message);
      assert.match(r.message, /^\/etc\/release: /);
      assert.match(r.message, says);
      const part = copyPaths(`${tmp}/part/walt-hybrid`, r.imageId).part;
      assert.throws(() => Deno.lstatSync(`${part}/etc/release`), Deno.errors.NotFound);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  });
}

Deno.test("hybrid (hostile): a file gone from another complete copy, or a link there in its place, is copied, not linked: the copy completes with the file", async () => {
  await withTmp(async (tmp, hybridDir) => {
    // Two images sharing one file (same content and metadata), too different for a re-deploy in
    // place: the second's copy links that file from the first's.
    const image = async (name: string, seed: number) => {
      makeTree(`${tmp}/${name}`, 4, seed);
      Deno.writeTextFileSync(`${tmp}/${name}/etc/shared`, "the same in both\n");
      Deno.utimeSync(`${tmp}/${name}/etc/shared`, 1600000000, 1600000000);
      return await manifestOf(`${tmp}/${name}`);
    };
    const a = await image("a", 1), b = await image("b", 2);
    const c = await image("c", 3);
    await bootFrom(hybridDir, `${tmp}/a`, a);
    const shared = `${copyPaths(hybridDir, a.id).image}/etc/shared`;
    // Gone (removed there by root, or put in lost+found by a fsck): the link failed (ENOENT), so
    // did the copy of every image sharing it, at every boot while that copy was on the disk.
    Deno.removeSync(shared);
    await bootFrom(hybridDir, `${tmp}/b`, b);
    const bShared = `${copyPaths(hybridDir, b.id).image}/etc/shared`;
    assert.ok(Deno.lstatSync(bShared).isFile);
    assert.equal(Deno.readTextFileSync(bShared), "the same in both\n");
    // A symlink in its place: the link was made to the symlink, which the copy then held where
    // its manifest has a file.
    Deno.removeSync(bShared);
    Deno.symlinkSync("/etc/hostname", bShared);
    Deno.removeSync(copyPaths(hybridDir, a.id).base, { recursive: true });
    await bootFrom(hybridDir, `${tmp}/c`, c);
    const cShared = `${copyPaths(hybridDir, c.id).image}/etc/shared`;
    assert.ok(Deno.lstatSync(cShared).isFile, "a file, not the planted link");
    assert.equal(Deno.readTextFileSync(cShared), "the same in both\n");
  });
});

Deno.test("hybrid (hostile): what a user of the last boot left in diff/ is emptied with a line on the console, not in silence", async () => {
  await withTmp(async (tmp, hybridDir) => {
    makeTree(`${tmp}/img`, 2, 1);
    const img = await manifestOf(`${tmp}/img`);
    const boot = async (persistent: boolean) => {
      const lines: string[] = [];
      await prepareHybridRoot({
        hybridDir,
        persistent,
        imageId: img.id,
        manifestText: img.text,
        source: `${tmp}/img`,
        log: (m) => lines.push(m),
      });
      return lines;
    };
    assert.deepEqual((await boot(false)).filter((l) => /emptying/.test(l)), []);
    // Any user of that boot, through /tmp: as many files as the partition has inodes (a disk's
    // worth takes minutes to remove), here a few thousand.
    const upper = copyPaths(hybridDir, img.id).upper;
    for (const persistent of [false, true]) {
      Deno.mkdirSync(`${upper}/tmp/junk`, { recursive: true });
      for (let i = 0; i < 5000; i++) Deno.writeTextFileSync(`${upper}/tmp/junk/${i}`, "");
      const lines = await boot(persistent);
      const said = persistent ? "emptying diff/tmp/" : "emptying diff/ ";
      assert.ok(lines.some((l) => l.startsWith(said)), lines.join("\n"));
      assert.deepEqual([...Deno.readDirSync(upper)].filter((e) => e.name === "tmp"), []);
    }
  });
});

Deno.test("hybrid (hostile): emptying what a user of the last boot left in diff/tmp/ takes no memory for each name there", async () => {
  await withTmp(async (tmp, hybridDir) => {
    makeTree(`${tmp}/img`, 2, 1);
    const img = await manifestOf(`${tmp}/img`);
    await bootFrom(hybridDir, `${tmp}/img`, img, true);
    Deno.writeTextFileSync(`${tmp}/manifest`, img.text);
    // `files`: the child's open-file limit (a low one makes the recursive remove fail on a deep
    // tree, so that removeTree takes it apart flat)
    const boot = async (files?: number) => {
      const out = await new Deno.Command("sh", {
        args: [
          "-c",
          `${files ? `ulimit -n ${files} && ` : ""}exec "$@"`,
          "sh",
          Deno.execPath(),
          ...["run", "-A", "--no-check"],
          new URL("./hybrid_empty_child.ts", import.meta.url).pathname,
          ...[hybridDir, `${tmp}/img`, `${tmp}/manifest`],
        ],
        stdin: "null",
      }).output();
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
      return JSON.parse(new TextDecoder().decode(out.stdout)) as { hwm: number; lines: string[] };
    };
    const upper = copyPaths(hybridDir, img.id).upper;
    Deno.mkdirSync(`${upper}/tmp`, { recursive: true });
    const empty = await boot();
    // Any user of that boot, in /tmp: names (here 100,000 of 200 characters) that PID 1 listed
    // all at once only to see whether there was any (~1 KiB of its memory each: at a few
    // million, an OOM kill of PID 1, a kernel panic, at every boot).
    Deno.mkdirSync(`${upper}/tmp`, { recursive: true });
    for (let i = 0; i < 100_000; i++) {
      Deno.writeFileSync(`${upper}/tmp/${String(i).padStart(200, "x")}`, new Uint8Array());
    }
    const many = await boot();
    assert.ok(many.lines.some((l) => l.startsWith("emptying diff/tmp/")), many.lines.join("\n"));
    assert.deepEqual([...Deno.readDirSync(upper)].filter((e) => e.name === "tmp"), []);
    const grown = (many.hwm - empty.hwm) / 1024;
    assert.ok(grown < 40, `PID 1 took ${Math.round(grown)} MiB more`);
    // The same names at the bottom of a tree deeper than the open files PID 1 may hold: the
    // recursive remove fails on the way down, and the flat removal listed each directory whole.
    let deep = `${upper}/tmp/d`;
    for (let i = 0; i < 300; i++) deep += "/d";
    Deno.mkdirSync(deep, { recursive: true });
    for (let i = 0; i < 100_000; i++) {
      Deno.writeFileSync(`${deep}/${String(i).padStart(200, "x")}`, new Uint8Array());
    }
    const flat = await boot(128);
    assert.deepEqual([...Deno.readDirSync(upper)].filter((e) => e.name === "tmp"), []);
    const flatGrown = (flat.hwm - empty.hwm) / 1024;
    assert.ok(flatGrown < 40, `PID 1 took ${Math.round(flatGrown)} MiB more, taking it apart`);
  });
});
