// Bad input and store rules: every failure is one clear error and leaves nothing behind.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { manifestLines } from "../contract/manifest.ts";
import { openDatabase } from "../src/db.ts";
import { objectKey } from "../src/images/objects.ts";
import { UserError } from "../src/errors.ts";
import { ImageStore } from "../src/images/store.ts";
import {
  assertStoreEmpty,
  buildSampleTree,
  dirEntries,
  rowCount,
  sh,
  tarOf,
  tempStore,
} from "./images_helpers.ts";

/** A tree with enough data that a cut lands inside file content. */
function bulkyTree(root: string) {
  Deno.mkdirSync(`${root}/data`, { recursive: true });
  const bytes = new Uint8Array(256 * 1024);
  for (let i = 0; i < 8; i++) {
    for (let o = 0; o < bytes.length; o += 65536) {
      crypto.getRandomValues(bytes.subarray(o, o + 65536));
    }
    Deno.writeFileSync(`${root}/data/f${i}`, bytes);
  }
}

async function rejectsCleanly(
  t: Awaited<ReturnType<typeof tempStore>>,
  path: string,
  re: RegExp,
  status = 400,
) {
  await assert.rejects(t.store.import(path, "bad"), (e: unknown) => {
    assert.ok(e instanceof UserError, `UserError, got ${(e as Error).stack}`);
    assert.match(e.message, re);
    if (Deno.env.get("SHOW")) console.log(e.message);
    assert.ok(!e.message.includes("\n"), "one line");
    assert.equal(e.status, status);
    return true;
  });
  await assertStoreEmpty(t);
}

Deno.test("truncated and corrupt tarballs, unknown formats: clear error, nothing left", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    bulkyTree(src);
    const tar = tarOf(src, `${t.dir}/x.tar`);
    const full = Deno.readFileSync(tar);
    const cut = (name: string, n: number, data = full) => {
      Deno.writeFileSync(`${t.dir}/${name}`, data.subarray(0, n));
      return `${t.dir}/${name}`;
    };
    // cut inside file data
    await rejectsCleanly(t, cut("mid.tar", 700_000), /^truncated archive: .*mid\.tar/);
    // cut exactly at a header boundary (GNU tar alone would accept it)
    await rejectsCleanly(
      t,
      cut("boundary.tar", 1024 + 512 + 256 * 1024),
      /^truncated archive: .*boundary\.tar \(no end-of-archive marker\)$/,
    );
    const gz = Deno.readFileSync(tarOf(src, `${t.dir}/x.tar.gz`, "gzip"));
    await rejectsCleanly(
      t,
      cut("cut.tar.gz", gz.length >> 1, gz),
      /^(truncated|corrupt) archive: .*cut\.tar\.gz/,
    );
    const flipped = gz.slice();
    for (let i = 2000; i < 2100; i++) flipped[i] ^= 0x55;
    Deno.writeFileSync(`${t.dir}/flip.tar.gz`, flipped);
    await rejectsCleanly(
      t,
      `${t.dir}/flip.tar.gz`,
      /^(corrupt|truncated) archive: .*flip\.tar\.gz/,
    );
    // Only the gzip trailer's CRC is wrong: every member reads well, the decompressor fails last.
    const crc = gz.slice();
    crc[crc.length - 8] ^= 0xff;
    Deno.writeFileSync(`${t.dir}/crc.tar.gz`, crc);
    await rejectsCleanly(
      t,
      `${t.dir}/crc.tar.gz`,
      /^corrupt archive: .*crc\.tar\.gz \(.*crc error/,
    );
    const zst = Deno.readFileSync(tarOf(src, `${t.dir}/x.tar.zst`, "zstd"));
    await rejectsCleanly(
      t,
      cut("cut.tar.zst", zst.length - 100, zst),
      /^(truncated|corrupt) archive/,
    );

    Deno.writeTextFileSync(`${t.dir}/notes.txt`, "just some text\n".repeat(100));
    await rejectsCleanly(
      t,
      `${t.dir}/notes.txt`,
      /^unknown format: .*notes\.txt is a text file; expected/,
    );
    Deno.writeFileSync(`${t.dir}/random.bin`, crypto.getRandomValues(new Uint8Array(4096)));
    await rejectsCleanly(t, `${t.dir}/random.bin`, /^unknown format: .* unrecognised binary data/);
    Deno.writeFileSync(`${t.dir}/empty`, new Uint8Array());
    await rejectsCleanly(t, `${t.dir}/empty`, /^unknown format: .* an empty file/);
    sh("gzip", "-k", `${t.dir}/notes.txt`);
    await rejectsCleanly(
      t,
      `${t.dir}/notes.txt.gz`,
      /^unknown format: .* is gzip-compressed but holds no tar archive/,
    );
    await rejectsCleanly(t, `${t.dir}/nope.tar`, /nope\.tar: no such file or directory/);
    await rejectsCleanly(t, "/dev/null", /^unknown format: \/dev\/null is not a regular file/);
    await assert.rejects(t.store.import("relative.tar", "x"), /must be absolute/);
  } finally {
    await t.close();
  }
});

Deno.test("a rootfs tarball writing through its own symlink is refused (GNU tar), nothing outside", async () => {
  const t = await tempStore();
  const outside = await Deno.makeTempDir({ prefix: "netroot-outside-" });
  try {
    Deno.mkdirSync(`${t.dir}/a`);
    Deno.mkdirSync(`${t.dir}/b/evil`, { recursive: true });
    Deno.symlinkSync(outside, `${t.dir}/a/evil`);
    Deno.writeTextFileSync(`${t.dir}/b/evil/pwned`, "pwned");
    sh("tar", "-C", `${t.dir}/a`, "-cf", `${t.dir}/e.tar`, "./evil");
    sh("tar", "-C", `${t.dir}/b`, "-rf", `${t.dir}/e.tar`, "./evil/pwned");
    await rejectsCleanly(
      t,
      `${t.dir}/e.tar`,
      /^cannot extract .*e\.tar: \.\/evil\/pwned: Cannot open/,
    );
    assert.deepEqual(await dirEntries(outside), []);
  } finally {
    await t.close();
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("full disk: clear error, nothing left in the store (root: tmpfs mount)", async () => {
  const mnt = await Deno.makeTempDir({ prefix: "netroot-full-" });
  sh("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", mnt);
  const t = await tempStore(`${mnt}/data`);
  try {
    const src = `${t.dir}/src`;
    Deno.mkdirSync(src);
    for (let i = 0; i < 6; i++) {
      Deno.writeFileSync(
        `${src}/f${i}`,
        crypto.getRandomValues(new Uint8Array(65536)).map((x) => x),
      );
      sh("dd", "if=/dev/urandom", `of=${src}/big${i}`, "bs=1M", "count=1", "status=none");
    }
    const tar = tarOf(src, `${t.dir}/big.tar`);
    await rejectsCleanly(t, tar, /no space left on device/, 500);
    await rejectsCleanly(t, src, /no space left on device/, 500); // directory copy too
  } finally {
    await t.close();
    sh("umount", mnt);
    await Deno.remove(mnt, { recursive: true });
  }
});

Deno.test("names: rename; refs by name, id, prefix, NAME@ID; bad names", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const tar = tarOf(src, `${t.dir}/x.tar`);
    const img = await t.store.import(tar, "lab/debian:12");
    Deno.writeTextFileSync(`${src}/etc/other`, "different content");
    assert.equal(t.store.get(`lab/debian:12@${img.id.slice(0, 8)}`).id, img.id);
    assert.equal(t.store.find(`other@${img.id.slice(0, 8)}`), undefined, "a version of its name");
    for (const bad of ["", "-x", "a b", "x".repeat(200), "a".repeat(64)]) {
      await assert.rejects(t.store.import(tar, bad), /invalid image name/);
    }
    assert.equal(t.store.get("lab/debian:12").id, img.id);
    assert.equal(t.store.get(img.id).name, "lab/debian:12");
    assert.equal(t.store.get(img.id.slice(0, 6)).name, "lab/debian:12");
    assert.equal(
      t.store.find(img.id.slice(0, 5)),
      undefined,
      "prefixes shorter than 6 are not ids",
    );
    assert.throws(
      () => t.store.get("nope"),
      (e: UserError) => e.status === 404 && /image nope not found/.test(e.message),
    );

    const other = await t.store.import(tarOf(src, `${t.dir}/y.tar`), "other");
    assert.notEqual(other.id, img.id);
    assert.throws(
      () => t.store.rename("other", "lab/debian:12"),
      (e: UserError) => e.status === 409,
    );
    const renamed = t.store.rename("other", "lab/other:1");
    assert.equal(renamed.name, "lab/other:1");
    assert.equal(t.store.get(other.id).name, "lab/other:1");
    assert.deepEqual(t.store.list().map((i) => i.name), ["lab/debian:12", "lab/other:1"]);
  } finally {
    await t.close();
  }
});

Deno.test("image rm is refused with the node names while nodes boot it; then removes tree and row", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const img = await t.store.import(tarOf(src, `${t.dir}/x.tar`), "deb");
    let events = 0;
    t.store.changes = new EventTarget();
    t.store.changes.addEventListener("images", () => events++);
    const now = new Date().toISOString();
    for (const [mac, name] of [["52:54:00:00:00:01", "rpi-a"], ["52:54:00:00:00:02", "pc-b"]]) {
      t.db.prepare("INSERT INTO nodes (mac, name, image_id, created_at) VALUES (?, ?, ?, ?)")
        .run(mac, name, img.id, now);
    }
    assert.throws(
      () => t.store.remove("deb"),
      (e: UserError) => e.status === 409 && /booted by nodes pc-b, rpi-a/.test(e.message),
    );
    assert.ok(Deno.statSync(t.data.rootfs(img.id)).isDirectory);
    t.db.prepare("UPDATE nodes SET image_id = NULL").run();
    t.store.remove(img.id.slice(0, 8));
    assert.equal(rowCount(t.db), 0);
    assert.throws(() => Deno.statSync(t.data.image(img.id)), Deno.errors.NotFound);
    assert.equal(events, 1);
    // the tree was moved into tmp/ and is being deleted; reconcile finishes the job
    await t.store.reconcile();
    await assertStoreEmpty(t);
  } finally {
    await t.close();
  }
});

Deno.test("reconcile: wipes tmp/, drops directories without a row, flags rows without a tree", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const kept = await t.store.import(tarOf(src, `${t.dir}/x.tar`), "kept");
    Deno.writeTextFileSync(`${src}/etc/more`, "more");
    const broken = await t.store.import(tarOf(src, `${t.dir}/y.tar`), "broken");
    // an interrupted import, an orphan image dir (killed between rename and insert: the commit's
    // marker is in it), a lost tree
    Deno.mkdirSync(`${t.data.tmp}/import-x/rootfs/etc`, { recursive: true });
    const orphan = "f".repeat(64);
    Deno.mkdirSync(`${t.data.image(orphan)}/rootfs`, { recursive: true });
    Deno.writeFileSync(`${t.data.image(orphan)}/disposable`, new Uint8Array());
    Deno.removeSync(t.data.image(broken.id), { recursive: true });

    assert.equal(await t.store.reconcile(), 3);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
    assert.deepEqual(await dirEntries(t.data.images), [kept.id]);
    const b = t.store.get("broken");
    assert.equal(b.bootable, false);
    assert.match(b.reason!, /image tree missing/);
    assert.equal(t.store.get("kept").bootable, true);
    assert.equal(await t.store.reconcile(), 0, "idempotent");
  } finally {
    await t.close();
  }
});

const rmIfThere = (path: string) => Deno.remove(path).catch(() => {});

Deno.test("reconcile on a lost or older database keeps the image trees it has no row for", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const first = await t.store.import(tarOf(src, `${t.dir}/x.tar`), "first");
    // Last week's backup of the database, then a version made since.
    t.db.exec(`VACUUM INTO '${t.dir}/older.db'`);
    Deno.writeTextFileSync(`${src}/etc/more`, "more");
    const since = await t.store.import(tarOf(src, `${t.dir}/y.tar`), "since");
    assert.deepEqual(await dirEntries(t.data.images), [first.id, since.id].sort());
    t.db.close();

    // The older database restored: the version made since has no row.
    Deno.renameSync(`${t.dir}/older.db`, t.data.db);
    for (const f of ["-wal", "-shm"]) await rmIfThere(t.data.db + f);
    const older = openDatabase(t.data.db);
    try {
      await new ImageStore(t.data, older).reconcile();
    } finally {
      older.close();
    }
    // Before, the start removed it: every version made since the backup, gone from the disk.
    assert.ok(Deno.statSync(t.data.manifest(since.id)).isFile);
    assert.ok(Deno.statSync(t.data.rootfs(since.id)).isDirectory);

    // The database lost (deleted, a new empty one at the next start): before, every tree went.
    Deno.removeSync(t.data.db);
    for (const f of ["-wal", "-shm"]) await rmIfThere(t.data.db + f);
    const empty = openDatabase(t.data.db);
    try {
      const store = new ImageStore(t.data, empty);
      await store.reconcile();
      assert.deepEqual(await dirEntries(t.data.images), [first.id, since.id].sort());
      assert.ok(Deno.statSync(t.data.rootfs(first.id)).isDirectory);
      // The same content imported again takes its kept directory back.
      const back = await store.import(tarOf(src, `${t.dir}/z.tar`), "back");
      assert.equal(back.id, since.id);
      assert.equal(store.get("back").bootable, since.bootable);
      assert.deepEqual(await dirEntries(t.data.images), [first.id, since.id].sort());
      await store.idle();
    } finally {
      empty.close();
    }
  } finally {
    await t.close().catch(() => {}); // (its database closed above: the directory still goes)
  }
});

Deno.test("image gc on an older database keeps the objects of the thin versions it has no row for", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const first = await t.store.import(tarOf(src, `${t.dir}/x.tar`), "a");
    // Last week's backup of the database; then two versions, the older one thin (only its
    // manifest and its objects: what every version no node uses becomes).
    t.db.exec(`VACUUM INTO '${t.dir}/older.db'`);
    Deno.writeTextFileSync(`${src}/etc/two`, "only in the second version\n");
    const second = await t.store.import(tarOf(src, `${t.dir}/y.tar`), "a");
    Deno.removeSync(`${src}/etc/two`);
    Deno.writeTextFileSync(`${src}/etc/three`, "only in the third\n");
    await t.store.import(tarOf(src, `${t.dir}/z.tar`), "a");
    await t.store.pruneTrees();
    assert.ok(t.store.isThin(second.id), "the second version is thin");
    await t.store.idle();
    t.db.close();

    Deno.renameSync(`${t.dir}/older.db`, t.data.db);
    for (const f of ["-wal", "-shm"]) await rmIfThere(t.data.db + f);
    const older = openDatabase(t.data.db);
    try {
      const store = new ImageStore(t.data, older);
      store.autoPrune = false;
      await store.reconcile();
      assert.deepEqual(store.list().map((v) => v.id), [first.id]);
      const files = [...manifestLines(Deno.readTextFileSync(t.data.manifest(second.id)))]
        .filter((e) => e.type === "file");
      assert.ok(files.some((e) => e.path === "/etc/two"));
      // Before, gc removed the objects only the kept manifest names (/etc/two's): the version
      // made since the backup, kept by the start, was lost all the same.
      await store.gc();
      for (const e of files) {
        assert.ok(
          existsSync(store.objects.path(objectKey(e))),
          `the object of ${e.path}, which the kept version names`,
        );
      }
      await store.idle();
    } finally {
      older.close();
    }
  } finally {
    await t.close().catch(() => {});
  }
});

Deno.test("image rm and gc on a file system out of inodes free what they remove (root: tmpfs mount)", async () => {
  const mnt = await Deno.makeTempDir({ prefix: "netroot-inodes-" });
  sh("mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=4000", "tmpfs", mnt);
  const t = await tempStore(`${mnt}/data`);
  try {
    const src = `${mnt}/src`;
    buildSampleTree(src);
    await t.store.import(src, "kept");
    for (let i = 0; i < 3; i++) {
      Deno.writeTextFileSync(`${src}/etc/n`, `${i}\n`);
      await t.store.import(src, "old");
    }
    await t.store.idle();
    // every inode taken (a store of many small files, hard links aside, runs out of them first)
    Deno.mkdirSync(`${mnt}/fill`);
    try {
      for (let i = 0;; i++) Deno.writeFileSync(`${mnt}/fill/${i}`, new Uint8Array());
    } catch (e) {
      assert.match((e as Error).message, /No space left on device|os error 28/);
    }
    // Before, each refused with ENOSPC: the mark written first needs an inode, and the way to
    // make room was shut.
    const gone = await t.store.gc(1);
    assert.equal(gone.versions.length, 2);
    assert.equal(t.store.remove("old").length, 1);
    assert.deepEqual(t.store.list().map((v) => v.name), ["kept"]);
    await t.store.idle();
  } finally {
    await t.close();
    sh("umount", mnt);
    await Deno.remove(mnt, { recursive: true });
  }
});
