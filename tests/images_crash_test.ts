// kill -9 of a process importing an image, at many points of the import: after the next start
// (reconcile) the database and the data dir agree, and the import can simply be run again.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { DataDir } from "../src/datadir.ts";
import { openDatabase } from "../src/db.ts";
import { commitUpper } from "../src/images/session.ts";
import { ImageStore } from "../src/images/store.ts";
import { syncfsLater } from "../src/linux/fsops.ts";
import { type LoopExt4, loopExt4 } from "./support/ext4disk.ts";
import { dirEntries, sh, type TempStore, tempStore } from "./images_helpers.ts";

const storeUrl = new URL("../src/images/store.ts", import.meta.url).href;
const dbUrl = new URL("../src/db.ts", import.meta.url).href;
const dataUrl = new URL("../src/datadir.ts", import.meta.url).href;

function importer(dataRoot: string, tarball: string): Deno.ChildProcess {
  const code = `
    import { ImageStore } from ${JSON.stringify(storeUrl)};
    import { openDatabase } from ${JSON.stringify(dbUrl)};
    import { DataDir } from ${JSON.stringify(dataUrl)};
    const data = new DataDir(${JSON.stringify(dataRoot)});
    await data.ensure();
    const store = new ImageStore(data, openDatabase(data.db));
    await store.reconcile();
    console.log("start");
    await store.import(${JSON.stringify(tarball)}, "crashy");
    console.log("done");`;
  return new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", code],
    stdout: "piped",
    stderr: "null",
    env: { NETROOT_LOG: "error" },
  }).spawn();
}

async function assertConsistent(dataRoot: string): Promise<string | undefined> {
  const data = new DataDir(dataRoot);
  // As the next start does: a kill before the importer made its data dir leaves none (seen when
  // a loaded machine starts the importer slower than the first kill point).
  await data.ensure();
  const db = openDatabase(data.db);
  try {
    const store = new ImageStore(data, db);
    await store.reconcile();
    assert.deepEqual(await dirEntries(data.tmp), [], "tmp/ wiped");
    const rows = store.list();
    assert.deepEqual(
      await dirEntries(data.images),
      rows.map((r) => r.id).sort(),
      "every image dir has a row and every row its dir",
    );
    for (const r of rows) {
      const m = await Deno.readFile(data.manifest(r.id));
      assert.equal(createHash("sha256").update(m).digest("hex"), r.id, "manifest matches id");
      assert.ok(Deno.statSync(data.rootfs(r.id)).isDirectory);
      assert.equal(r.bootable, true);
    }
    return rows[0]?.id;
  } finally {
    db.close();
  }
}

Deno.test("kill -9 during imports at many points leaves db and tree consistent (root)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netroot-images-crash-" });
  try {
    const src = `${dir}/src`;
    const chunk = new Uint8Array(64 * 1024);
    for (let d = 0; d < 20; d++) {
      Deno.mkdirSync(`${src}/usr/share/d${d}`, { recursive: true });
      for (let f = 0; f < 60; f++) {
        crypto.getRandomValues(chunk);
        Deno.writeFileSync(`${src}/usr/share/d${d}/f${f}`, chunk.subarray(0, (f * 997) % 65536));
      }
    }
    Deno.mkdirSync(`${src}/boot`);
    Deno.writeTextFileSync(`${src}/boot/vmlinuz-6.1.0-k`, "k");
    Deno.mkdirSync(`${src}/lib/modules/6.1.0-k`, { recursive: true });
    const tarball = `${dir}/img.tar`;
    sh("tar", "-C", src, "-cf", tarball, ".");

    const dataRoot = `${dir}/data`;
    let completed = 0;
    let ids = new Set<string>();
    // Kill points spread from start-up through extraction, hashing, rename and insert.
    for (const delay of [30, 80, 140, 200, 260, 320, 400, 500, 650, 800, 1000, 1300]) {
      const child = importer(dataRoot, tarball);
      const out = (async () => {
        let text = "";
        for await (const c of child.stdout.pipeThrough(new TextDecoderStream())) text += c;
        return text;
      })();
      // time from the child's "start" line would be nicer, but a wall-clock delay also covers
      // start-up and reconcile
      await new Promise((r) => setTimeout(r, delay + 150));
      try {
        child.kill("SIGKILL");
      } catch { /* already exited */ }
      await child.status;
      if ((await out).includes("done")) completed++;
      const id = await assertConsistent(dataRoot);
      if (id) ids.add(id);
      if (id) {
        // Start over so that later kills hit an import again.
        const data = new DataDir(dataRoot);
        const db = openDatabase(data.db);
        new ImageStore(data, db).remove(id);
        db.close();
        await assertConsistent(dataRoot);
      }
    }
    // A last, uninterrupted import works and gives the same id as any completed one.
    const child = importer(dataRoot, tarball);
    await child.stdout.cancel();
    assert.equal((await child.status).code, 0);
    const id = await assertConsistent(dataRoot);
    assert.ok(id);
    ids.add(id!);
    ids = new Set(ids);
    assert.equal(ids.size, 1, "every completed import has the same id");
    console.log(
      `kill points: ${12 - completed} interrupted, ${completed} completed before the kill`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A store on a fresh loop ext4. `afterCut()` is the next start after a power cut `fn` made: the
 * store's database closed, its work settled, the power back, a new store over the same data dir,
 * reconciled; it returns that store.
 */
async function storeOnDisk(
  fn: (disk: LoopExt4, t: TempStore, afterCut: () => Promise<TempStore>) => Promise<void>,
): Promise<void> {
  const disk = await loopExt4(64);
  let t: TempStore | undefined;
  try {
    t = await tempStore(`${disk.mnt}/data`);
    const afterCut = async () => {
      t!.db.close();
      await t!.store.idle().catch(() => {});
      disk.powerOn();
      await Deno.remove(t!.dir, { recursive: true });
      t = await tempStore(`${disk.mnt}/data`);
      await t.store.reconcile();
      return t;
    };
    await fn(disk, t, afterCut);
  } finally {
    await t?.close().catch(() => {}); // (its database is closed already after a throw)
    await disk.close();
  }
}

const importMeta = { madeBy: "import" as const, command: null, parent: null };

/** A scratch tree with one file, /etc/hostname. */
function scratchTree(t: TempStore, hostname: string): string {
  const work = t.store.scratch("import");
  Deno.mkdirSync(`${work}/rootfs/etc`, { recursive: true });
  Deno.writeTextFileSync(`${work}/rootfs/etc/hostname`, `${hostname}\n`);
  return work;
}

Deno.test("commit (root, loop ext4): a power cut while the tree is being flushed leaves no empty object for the next commit of that content to trust", () =>
  storeOnDisk(async (disk, t, afterCut) => {
    sh("sync");
    const work = scratchTree(t, "cut");
    // The flush of the tree under way (a slow disk): the commit goes on while it runs.
    let flushed!: () => void;
    const flushing = new Promise<void>((r) => flushed = r);
    const commit = t.store.commit(work, "cut", importMeta, { flushing }).catch((e) => e);
    await new Promise((r) => setTimeout(r, 100));
    // Any journal commit meanwhile (ext4's 5 s timer, the database's fsync), then the cut.
    disk.journalCommit();
    disk.powerCut();
    flushed();
    await commit;
    // The next start, and the same content committed again (an import run again).
    t = await afterCut();
    const c = await t.store.commit(scratchTree(t, "cut"), "cut", importMeta);
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(c.id)}/etc/hostname`), "cut\n");
  }));

Deno.test("derived commit (node save) (root, loop ext4): a power cut after the upper's files became objects leaves none empty for the save run again to trust", () =>
  storeOnDisk(async (disk, t, afterCut) => {
    const base = await t.store.commit(scratchTree(t, "base"), "node", importMeta);
    // The node's upper as `node save` unpacks it into scratch (no overlay, no flush of its own).
    const upper = (dir: string) => {
      Deno.mkdirSync(`${dir}/etc`, { recursive: true });
      Deno.writeTextFileSync(`${dir}/etc/motd`, "saved\n");
      sh("touch", "-h", "-d", "@1600000000", `${dir}/etc/motd`, `${dir}/etc`);
      return dir;
    };
    const save = { madeBy: "save" as const, command: null };
    sh("sync");
    // Cut right after the commit has put the upper's files into the object store (any journal
    // commit then: ext4's 5 s timer, the database's fsync).
    const commitManifest = t.store.commitManifest.bind(t.store);
    t.store.commitManifest = (work, name, meta, m) =>
      commitManifest(work, name, meta, {
        ...m,
        materialize: async () => {
          await m.materialize();
          disk.journalCommit();
          disk.powerCut();
        },
      });
    await commitUpper(t.store, upper(t.store.scratch("save")), base.id, "node", save)
      .catch(() => {});
    // The next start, and the admin runs the save again.
    t = await afterCut();
    const c = await commitUpper(t.store, upper(t.store.scratch("save")), base.id, "node", save);
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(c.id)}/etc/motd`), "saved\n");
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(c.id)}/etc/hostname`), "base\n");
  }));

Deno.test("commit (root, loop ext4): versions committed and a rollback that returned survive a power cut right after", () =>
  storeOnDisk(async (disk, t, afterCut) => {
    sh("sync");
    // The command has said "committed" (a second version, then a rollback to the first): the
    // power goes then (ext4's 5 s timer committed the journal meanwhile).
    const c = await t.store.commit(scratchTree(t, "kept"), "kept", importMeta);
    const c2 = await t.store.commit(scratchTree(t, "second"), "kept", {
      ...importMeta,
      parent: c.id,
    });
    await t.store.rollback("kept", c.id);
    disk.journalCommit();
    disk.powerCut();
    // The next start: both versions there, the rollback held, the tree whole.
    t = await afterCut();
    assert.deepEqual(t.store.list().map((v) => v.id).sort(), [c.id, c2.id].sort());
    assert.equal(t.store.get("kept").id, c.id, "the rollback holds");
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(c.id)}/etc/hostname`), "kept\n");
  }));

Deno.test("a flush that fails under a commit (EIO: data that never reached the disk) fails the commit and keeps nothing", async () => {
  // The kernel reports a writeback error once (a second `sync -f` after an EIO returns 0,
  // measured on a loop device over a full tmpfs): a flush started early must keep its failure
  // for whoever awaits it, and must not be an unhandled rejection when nobody does.
  const unawaited = syncfsLater("/nonexistent/netroot-flush");
  await assert.rejects(syncfsLater("/nonexistent/netroot-flush"), /No such file|ENOENT|not found/i);
  void unawaited;
  const t = await tempStore();
  try {
    const failing = Promise.reject(new Error("syncfs: Input/output error (os error 5)"));
    failing.catch(() => {});
    await assert.rejects(
      t.store.commit(scratchTree(t, "lost"), "lost", importMeta, { flushing: failing }),
      /could not be written to the disk \(syncfs: Input\/output error.*nothing committed/,
    );
    assert.deepEqual(t.store.list(), []);
    assert.deepEqual(await dirEntries(t.data.images), []);
  } finally {
    await t.close();
  }
});

Deno.test("a commit whose row cannot be written (the database's disk full) keeps nothing: no tree, none of its new objects", async () => {
  const t = await tempStore();
  try {
    const kept = await t.store.commit(scratchTree(t, "kept"), "full", importMeta);
    const objects = () => sh("find", t.data.objects, "-type", "f").split("\n").sort();
    const before = objects();
    // The disk full under the database: no page more (a build's long command needs several).
    const { page_count } = t.db.prepare("PRAGMA page_count").get() as { page_count: number };
    t.db.exec(`PRAGMA max_page_count = ${page_count}`);
    const work = scratchTree(t, "new");
    for (let i = 0; i < 50; i++) Deno.writeTextFileSync(`${work}/rootfs/etc/f${i}`, `new ${i}\n`);
    await assert.rejects(
      t.store.commit(work, "full", {
        madeBy: "build",
        command: "netroot image build " + "x".repeat(64 * 1024),
        parent: kept.id,
      }),
      /full/,
    );
    t.db.exec("PRAGMA max_page_count = 1073741823");
    await t.store.idle();
    assert.equal(t.store.get("full").id, kept.id, "the previous version stays current");
    assert.deepEqual(await dirEntries(t.data.images), [kept.id], "no tree without its row");
    assert.deepEqual(objects(), before, "no object of the failed commit left to fill the disk");
    assert.deepEqual(await dirEntries(t.data.tmp), [], "nothing left in tmp/");
  } finally {
    await t.close();
  }
});

/** The database's disk full: no page more, the last one of the events filled. */
function fillDatabase(t: TempStore): void {
  const { page_count } = t.db.prepare("PRAGMA page_count").get() as { page_count: number };
  t.db.exec(`PRAGMA max_page_count = ${page_count}`);
  const insert = t.db.prepare("INSERT INTO events (mac, ts, kind, detail) VALUES (NULL, ?, ?, ?)");
  for (const size of [200, 20, 0]) {
    try {
      for (;;) insert.run("2026-01-01T00:00:00Z", "fill", "x".repeat(size));
    } catch { /* full */ }
  }
}

Deno.test("image rm and rollback on a full database: done with their events, or refused with nothing changed (never rows gone and the error said)", async () => {
  const t = await tempStore();
  try {
    const v1 = await t.store.commit(scratchTree(t, "one"), "full", importMeta);
    const v2 = await t.store.commit(scratchTree(t, "two"), "full", {
      ...importMeta,
      parent: v1.id,
    });
    fillDatabase(t);
    await assert.rejects(t.store.rollback("full"), /database or disk is full/);
    assert.equal(t.store.get("full").id, v2.id, "no rollback half made: the name where it was");
    assert.throws(() => t.store.remove("full"), /database or disk is full/);
    assert.deepEqual(t.store.list().map((v) => v.id).sort(), [v1.id, v2.id].sort(), "kept");
    assert.deepEqual(await dirEntries(t.data.images), [v1.id, v2.id].sort(), "trees kept");
    t.db.exec("PRAGMA max_page_count = 1073741823");
    // Room again: the same commands work.
    await t.store.rollback("full");
    t.store.remove("full");
    assert.deepEqual(t.store.list(), []);
    assert.equal(
      (t.db.prepare("SELECT count(*) AS n FROM events WHERE kind = 'image.rm'").get() as {
        n: number;
      }).n,
      2,
    );
  } finally {
    await t.close();
  }
});
