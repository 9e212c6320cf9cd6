// The image store under interleavings and damage: removals racing rollbacks and copies, objects
// damaged on the disk, and hard-link limits.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { manifestLines, manifestText } from "../contract/manifest.ts";
import type { UserError } from "../src/errors.ts";
import { objectKey } from "../src/images/objects.ts";
import { commitUpper } from "../src/images/session.ts";
import { scanTree } from "../src/images/walk.ts";
import { setLogSink } from "../src/log.ts";
import { buildSampleTree, fixTimes, T0, type TempStore, tempStore } from "./images_helpers.ts";
import { withLoopExt4 } from "./support/ext4disk.ts";

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Two versions of "deb", the first without a tree of its own (thin). */
async function thinFirstVersion(t: TempStore) {
  const src = `${t.dir}/src`;
  buildSampleTree(src);
  const v1 = await t.store.import(src, "deb");
  Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
  fixTimes(src);
  const v2 = await t.store.import(src, "deb");
  await t.store.idle();
  assert.equal(t.store.hasTree(v1.id), false, "v1 is thin");
  return { src, v1, v2 };
}

Deno.test("image rm NAME@ID while a rollback writes that thin version's tree: refused, the name keeps a current version", async () => {
  const t = await tempStore();
  try {
    const { v1, v2 } = await thinFirstVersion(t);
    // The rebuild's scratch goes after its tree is in place: an `image rm` request answered then.
    let removal: unknown;
    const dropScratch = t.store.dropScratch.bind(t.store);
    t.store.dropScratch = (work: string) => {
      if (work.includes("/tree-") && removal === undefined) {
        try {
          removal = t.store.remove(`deb@${v1.id}`);
        } catch (e) {
          removal = e;
        }
      }
      return dropScratch(work);
    };
    const rb = await t.store.rollback("deb").catch((e) => e as Error);
    assert.ok(
      removal instanceof Error && (removal as UserError).status === 409,
      `the removal is refused while the rollback holds the version (got ${String(removal)})`,
    );
    assert.ok(!(rb instanceof Error), `the rollback lands (${rb})`);
    assert.equal(t.store.find("deb")?.id, v1.id, "the name points at v1");
    assert.deepEqual(t.store.history("deb").map((v) => v.id), [v1.id, v2.id]);
    assert.equal(t.store.hasTree(v1.id), true);
  } finally {
    await t.close();
  }
});

Deno.test("an object truncated on the disk is not trusted by a later import or save of that content: replaced by the good file", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    fixTimes(src);
    const plain = await t.store.import(src, "plain");
    const big = crypto.getRandomValues(new Uint8Array(65536));
    Deno.writeFileSync(`${src}/big`, big);
    fixTimes(src);
    const a = await t.store.import(src, "a");
    const entry = [...manifestLines(Deno.readTextFileSync(t.data.manifest(a.id)))]
      .find((e) => e.path === "/big")!;
    const obj = t.store.objects.path(objectKey(entry));
    Deno.truncateSync(obj, 4096); // a disk error, a bad sector zeroed and cut by fsck, ...

    // the same content imported again (another image): its tree must hold the file it was given
    Deno.writeTextFileSync(`${src}/etc/other`, "b\n");
    fixTimes(src);
    const b = await t.store.import(src, "b");
    assert.equal(
      sha(Deno.readFileSync(t.data.rootfs(b.id) + "/big")),
      sha(big),
      "b's /big is the content its manifest names, not the damaged object",
    );
    assert.equal(sha(Deno.readFileSync(obj)), sha(big), "the object is whole again");

    // a save (derived commit) whose upper brings that content: same
    Deno.truncateSync(obj, 4096);
    const upper = `${t.dir}/upper`;
    Deno.mkdirSync(upper);
    Deno.writeFileSync(`${upper}/big2`, big);
    Deno.chmodSync(`${upper}/big2`, entry.mode & 0o7777);
    Deno.utimeSync(`${upper}/big2`, T0, T0);
    Deno.utimeSync(upper, T0, T0);
    const c = await commitUpper(t.store, upper, plain.id, "c", { madeBy: "save", command: null });
    assert.equal(c.existed, false);
    assert.equal(
      sha(Deno.readFileSync(t.data.rootfs(c.id) + "/big2")),
      sha(big),
      "c's /big is the upper's file, not the damaged object",
    );
    assert.equal(sha(Deno.readFileSync(obj)), sha(big), "the object is whole again");
  } finally {
    await t.close();
  }
});

Deno.test("a thin version whose object was cut short on the disk is not rebuilt with it: the rollback says which file, the name stays", async () => {
  const t = await tempStore();
  try {
    const { v1, v2 } = await thinFirstVersion(t);
    const entry = [...manifestLines(Deno.readTextFileSync(t.data.manifest(v1.id)))]
      .find((e) => e.path === "/etc/hostname")!;
    Deno.truncateSync(t.store.objects.path(objectKey(entry)), 0);
    await assert.rejects(
      () => t.store.rollback("deb"),
      /\/etc\/hostname .* is damaged: 0 bytes, 7 expected/,
    );
    assert.equal(t.store.get("deb").id, v2.id, "the name stays on v2");
    assert.equal(t.store.hasTree(v1.id), false, "no tree served with the damaged file");
  } finally {
    await t.close();
  }
});

Deno.test("ext4's 65000 links per inode (root, loop ext4): a hard link group of an image too large to share its object stays one group", () =>
  withLoopExt4(256, async (disk) => {
    const t = await tempStore(`${disk.mnt}/data`);
    t.store.autoPrune = false;
    try {
      // One content with 33,000 names (a package cache, a hard-linked backup): the second version
      // shares the first one's object, which cannot take all 33,000 more links.
      const src = `${disk.mnt}/src`;
      Deno.mkdirSync(`${src}/l`, { recursive: true });
      Deno.writeTextFileSync(`${src}/f`, "one content, many names\n");
      for (let i = 0; i < 33_000; i++) Deno.linkSync(`${src}/f`, `${src}/l/${i}`);
      Deno.writeTextFileSync(`${src}/v`, "1\n");
      fixTimes(src);
      await t.store.import(src, "many");
      Deno.writeTextFileSync(`${src}/v`, "2\n");
      fixTimes(src);
      const v2 = await t.store.import(src, "many");
      const root = t.data.rootfs(v2.id);
      const inodes = new Set([Deno.lstatSync(`${root}/f`).ino]);
      for (let i = 0; i < 33_000; i++) inodes.add(Deno.lstatSync(`${root}/l/${i}`).ino);
      assert.equal(inodes.size, 1, "the 33,001 names of v2's file are one inode, as imported");
      assert.equal(Deno.lstatSync(`${root}/f`).nlink, 33_001, "v2 keeps its own copy");

      // a save on v2: its tree (links to v2's inodes) cannot link all 33,001 names either
      const upper = `${disk.mnt}/upper`;
      Deno.mkdirSync(upper);
      Deno.writeTextFileSync(`${upper}/v`, "3\n");
      fixTimes(upper);
      const v3 = await commitUpper(t.store, upper, v2.id, "many", {
        madeBy: "save",
        command: null,
      });
      const root3 = t.data.rootfs(v3.id);
      const inodes3 = new Set([Deno.lstatSync(`${root3}/f`).ino]);
      for (let i = 0; i < 33_000; i++) inodes3.add(Deno.lstatSync(`${root3}/l/${i}`).ino);
      assert.equal(inodes3.size, 1, "the 33,001 names of v3's file are one inode");
      assert.equal(Deno.readTextFileSync(`${root3}/v`), "3\n");
      for (const v of [v2, v3]) {
        assert.equal(
          manifestText((await scanTree(t.data.rootfs(v.id))).entries),
          Deno.readTextFileSync(t.data.manifest(v.id)),
          "the tree scans to its manifest",
        );
      }
    } finally {
      await t.close();
    }
  }));

Deno.test("a rollback that lands while pruneTrees waits to remove that version's tree: the tree stays (the name's current version is never left thin)", async () => {
  const t = await tempStore();
  t.store.autoPrune = false; // v1 keeps its tree until the prune below
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const v1 = await t.store.import(src, "deb");
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    fixTimes(src);
    await t.store.import(src, "deb");
    assert.equal(t.store.hasTree(v1.id), true, "v1 still has its tree, needed by nothing");
    // The rollback request is answered at the prune's first wait on the disk under tmp/ (where a
    // removed tree goes): a real interleaving of the two, one event-loop turn apart.
    const mkdir = Deno.mkdir;
    let rolledBack: Promise<unknown> | undefined;
    Deno.mkdir = async (path, options) => {
      if (String(path) === t.data.tmp && !rolledBack) {
        rolledBack = t.store.rollback("deb").catch((e) => e);
        await rolledBack;
      }
      return await mkdir(path, options);
    };
    try {
      await t.store.pruneTrees();
    } finally {
      Deno.mkdir = mkdir;
    }
    assert.ok(rolledBack, "the rollback ran while the prune was under way");
    const rb = await rolledBack;
    assert.ok(!(rb instanceof Error), `the rollback lands (${rb})`);
    assert.equal(t.store.get("deb").id, v1.id, "the name points at v1");
    assert.equal(t.store.hasTree(v1.id), true, "the current version keeps its tree (NFS, boots)");
    assert.equal(
      manifestText((await scanTree(t.data.rootfs(v1.id))).entries),
      Deno.readTextFileSync(t.data.manifest(v1.id)),
      "the tree is whole",
    );
  } finally {
    await t.close();
  }
});

Deno.test("image rm NAME@ID while a session on that version commits (image cp's, at once): refused, the commit lands with the session's work (root)", async () => {
  const t = await tempStore();
  try {
    const { v1, v2 } = await thinFirstVersion(t);
    // image cp into deb@v1: a session on v1, the copy, the commit — no turn of the event loop
    // between them, as the cp route does it.
    const s = await t.store.sessions.open(`deb@${v1.id}`);
    Deno.writeTextFileSync(`${s.merged}/etc/added`, "the session's work\n");
    const committing = t.store.sessions.commit(s.id, { madeBy: "cp", command: "cp" })
      .catch((e) => e as Error);
    // The commit is under way (waiting on the disk): an `image rm` request answered now.
    let removal: unknown;
    try {
      removal = t.store.remove(`deb@${v1.id}`);
    } catch (e) {
      removal = e;
    }
    const c = await committing;
    assert.ok(
      removal instanceof Error && (removal as UserError).status === 409,
      `the removal is refused while a commit on the version is under way (got ${
        JSON.stringify(removal)
      })`,
    );
    assert.ok(!(c instanceof Error), `the commit lands (${c})`);
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(c.id)}/etc/added`), "the session's work\n");
    assert.equal(t.store.get("deb").id, c.id, "the name points at the new version");
    assert.deepEqual(t.store.history("deb").map((v) => v.id), [v1.id, v2.id, c.id]);
  } finally {
    await t.close();
  }
});

Deno.test("image rm of a version while pruneTrees checks its files against the object store: no warning of a file missing from the store", async () => {
  const t = await tempStore();
  t.store.autoPrune = false; // v1 keeps its tree until the prune below
  const lines: string[] = [];
  setLogSink((line) => lines.push(line));
  const readTextFile = Deno.readTextFile;
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const v1 = await t.store.import(src, "deb");
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    fixTimes(src);
    await t.store.import(src, "deb");
    // The removal is answered as the prune reads v1's manifest to check its files.
    let removed: unknown;
    Deno.readTextFile = (path, options) => {
      if (String(path) === t.data.manifest(v1.id) && removed === undefined) {
        removed = t.store.remove(`deb@${v1.id}`);
      }
      return readTextFile(path, options);
    };
    assert.deepEqual(await t.store.pruneTrees(), []);
    assert.ok(removed, "the removal ran during the prune");
    assert.equal(t.store.find(`deb@${v1.id}`), undefined);
    assert.deepEqual(
      lines.filter((l) => /not in the object store/.test(l)),
      [],
      "a removed version's tree is not said to miss objects (the store is whole)",
    );
  } finally {
    Deno.readTextFile = readTextFile;
    setLogSink((line) => console.error(line));
    await t.close();
  }
});

Deno.test("image gc --keep removing a version while an import of that same content lands: the import's version keeps its tree and manifest", async () => {
  const t = await tempStore();
  t.store.autoPrune = false;
  const [rename, remove] = [Deno.rename, Deno.remove];
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const v1 = await t.store.import(src, "deb");
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    fixTimes(src);
    await t.store.import(src, "deb");
    Deno.writeTextFileSync(`${src}/etc/hostname`, "sample\n"); // v1's content again
    fixTimes(src);
    // The import (a script restoring v1's tarball) is answered at gc's first wait on the disk
    // after it deleted v1's row.
    let imported: Promise<unknown> | undefined;
    const during = async (path: string | URL) => {
      const p = String(path);
      if (imported || !(p === t.data.image(v1.id) || p.startsWith(`${t.data.tmp}/rm-`))) return;
      imported = t.store.import(src, "deb").catch((e) => e);
      await imported;
    };
    Deno.rename = async (from, to) => {
      await during(from);
      return await rename(from, to);
    };
    Deno.remove = async (path, options) => {
      await during(path);
      return await remove(path, options);
    };
    const gc = await t.store.gc(1).finally(() => {
      Deno.rename = rename;
      Deno.remove = remove;
    });
    assert.deepEqual(gc.versions, [v1.id]);
    const back = await imported;
    assert.ok(back && !(back instanceof Error), `the import lands (${back})`);
    assert.equal((back as { id: string }).id, v1.id, "same content, same id");
    assert.equal(t.store.get("deb").id, v1.id, "the name points at it");
    assert.ok(existsSync(t.data.manifest(v1.id)), "its manifest is there");
    assert.equal(t.store.hasTree(v1.id), true, "its tree is there (its nodes boot it)");
  } finally {
    Deno.rename = rename;
    Deno.remove = remove;
    await t.close();
  }
});

Deno.test("two identical `image rollback NAME ID` at once: both answer success, the name at that version; rollbacks to two versions at once: one is told to try again", async () => {
  const t = await tempStore();
  try {
    const { src, v1, v2 } = await thinFirstVersion(t);
    // (before: the second found the name moved since it looked and answered 409 "changed during
    // the rollback: try again", though the name was where it asked)
    const both = await Promise.allSettled([
      t.store.rollback("deb", v1.id),
      t.store.rollback("deb", v1.id),
    ]);
    assert.deepEqual(
      both.map((r) => r.status === "fulfilled" ? r.value.image.id : String(r.reason)),
      [v1.id, v1.id],
    );
    assert.equal(t.store.get("deb").id, v1.id);
    // A third version; then rollbacks to v1 and to v2 at once: one lands, the other is refused
    // (the name is not where that one asked).
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v3\n");
    fixTimes(src);
    const v3 = await t.store.import(src, "deb");
    await t.store.idle();
    const two = await Promise.allSettled([
      t.store.rollback("deb", v1.id),
      t.store.rollback("deb", v2.id),
    ]);
    const landed = two.filter((r) => r.status === "fulfilled");
    const refused = two.filter((r) => r.status === "rejected");
    assert.equal(landed.length, 1, JSON.stringify(two));
    assert.match(String(refused[0].reason), /image deb changed during the rollback: try again/);
    assert.equal(t.store.get("deb").id, landed[0].value.image.id);
    assert.notEqual(t.store.get("deb").id, v3.id);
  } finally {
    await t.close();
  }
});

Deno.test("image rename while an import, a session or a session's commit on that name (or on the new name) is under way: refused (409); the commit lands on its name (root)", async () => {
  const t = await tempStore();
  try {
    const { src, v2 } = await thinFirstVersion(t);
    const refusedOn = (name: string, from = "deb", to = "renamed") => {
      assert.throws(
        () => t.store.rename(from, to),
        (e: UserError) =>
          e.status === 409 &&
          e.message === `an image session or commit on ${name} is under way: end it first`,
      );
    };
    // An import into deb under way.
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v3\n");
    const importing = t.store.import(src, "deb").catch((e) => e as Error);
    // (before: renamed; the import then landed as a separate image under the old name, and the
    // nodes following the renamed image never got it)
    refusedOn("deb");
    const v3 = await importing;
    assert.ok(!(v3 instanceof Error), String(v3));
    assert.equal(v3.parent, v2.id);
    assert.equal(t.store.get("deb").id, v3.id);
    // An import into a new name under way: deb cannot be renamed onto that name (the import
    // would land as a version of deb).
    const fresh = t.store.import(src, "fresh").catch((e) => e as Error);
    refusedOn("fresh", "deb", "fresh");
    await fresh;
    // A session open on deb, then its commit under way.
    const s = await t.store.sessions.open("deb");
    refusedOn("deb");
    Deno.writeTextFileSync(`${s.merged}/etc/added`, "the session's work\n");
    const committing = t.store.sessions.commit(s.id, { madeBy: "shell", command: null });
    refusedOn("deb");
    const c = await committing;
    assert.equal(t.store.get("deb").id, c.id, "the commit lands on deb");
    // Nothing under way: renamed, every version with it.
    assert.equal(t.store.rename("deb", "renamed").name, "renamed");
    assert.equal(t.store.history("renamed").length, 4);
    assert.equal(t.store.find("deb"), undefined);
  } finally {
    await t.close();
  }
});
