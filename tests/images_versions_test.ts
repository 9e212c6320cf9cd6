// Image versions on a real store (real GNU tar, real hard links): every commit is a version, the
// name points at the latest, nodes deployed on the name follow it (their deploy link flips),
// nodes pinned to NAME@ID stay; rollback, rm of one version, diff; the object store shares the
// unchanged files between versions and gc frees only what no version (and no node) uses.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { manifestText } from "../contract/manifest.ts";
import { scanTree } from "../src/images/walk.ts";
import { NodeRegistry } from "../src/nodes.ts";
import { Rebooter } from "../src/reboot.ts";
import { publish, publishedText } from "../src/images/versions.ts";
import { copyOut } from "../src/images/cp.ts";
import { bootedImage } from "../src/images/save.ts";
import type { UserError } from "../src/errors.ts";
import { buildSampleTree, fixTimes, tempStore } from "./images_helpers.ts";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { contextBooter } from "../src/boot/booter.ts";
import { openBoot, recordStage } from "../src/boots.ts";
import { pruneInitramfsCache } from "../src/initramfs/build.ts";

async function lab() {
  const t = await tempStore();
  const rebooted: string[] = [];
  const rebooter = new Rebooter(t.db);
  rebooter.register({
    name: "test",
    handles: () => true,
    reboot: (n) => {
      rebooted.push(n.name);
      return Promise.resolve();
    },
  });
  const nodes = new NodeRegistry(t.data, t.db, t.store, rebooter, new EventTarget());
  const src = `${t.dir}/src`;
  buildSampleTree(src);
  return { t, nodes, rebooted, src };
}

const link = (t: Awaited<ReturnType<typeof tempStore>>, mac: string) =>
  Deno.readLinkSync(t.data.nodeFs(mac)).split("/")[3];

Deno.test("versions: names follow commits, pinned nodes stay, rollback, rm NAME@ID, diff", async () => {
  const { t, nodes, rebooted, src } = await lab();
  try {
    const v1 = await t.store.import(src, "deb");
    assert.equal(v1.previous, null);
    const follower = nodes.add("52:54:00:00:00:01", { name: "follower" });
    const pinned = nodes.add("52:54:00:00:00:02", { name: "pinned" });
    await nodes.deploy(["follower"], "deb", { reboot: false });
    await nodes.deploy(["pinned"], `deb@${v1.id.slice(0, 10)}`, { reboot: false });
    assert.equal(nodes.get("follower").imagePinned, false);
    assert.equal(nodes.get("pinned").imagePinned, true);

    Deno.writeTextFileSync(`${src}/etc/hostname`, "changed\n");
    Deno.removeSync(`${src}/home/user/tab\tname`);
    Deno.writeTextFileSync(`${src}/etc/new`, "new\n");
    fixTimes(src);
    const v2 = await t.store.import(src, "deb");
    assert.equal(v2.previous, v1.id);
    assert.equal(t.store.get("deb").id, v2.id, "the name points at the latest version");
    assert.equal(t.store.get(v1.id).current, false);
    assert.deepEqual(t.store.names().map((i) => i.id), [v2.id], "image ls: one image");
    // unique size: what only that version holds ("changed\n" + "new\n"; "sample\n" + "y")
    assert.equal(t.store.names()[0].uniqueSize, 8 + 4);
    assert.deepEqual(t.store.history("deb").map((v) => v.uniqueSize), [7 + 1, 8 + 4]);
    assert.deepEqual(t.store.list().map((i) => i.id).sort(), [v1.id, v2.id].sort());

    // nodes: the follower moves (its link flips), the pinned one stays; no reboot asked
    const p = await publish({ nodes }, v2, false);
    assert.deepEqual(p.followers.map((f) => [f.name, f.from, f.to]), [["follower", v1.id, v2.id]]);
    assert.deepEqual(p.reboots, []);
    assert.equal(link(t, follower.mac), v2.id);
    assert.equal(link(t, pinned.mac), v1.id);
    assert.equal(nodes.get("pinned").imageId, v1.id);

    // history and diff
    assert.deepEqual(t.store.history("deb").map((v) => [v.id, v.current, v.madeBy, v.parent]), [
      [v1.id, false, "import", null],
      [v2.id, true, "import", v1.id],
    ]);
    assert.deepEqual(t.store.diff(`deb@${v1.id}`, "deb"), {
      added: ["/etc/new"],
      removed: ["/home/user/tab\tname"],
      changed: ["/etc/hostname"],
    });

    // rollback (default: the version before), with --reboot-nodes: the follower goes back
    const rb = await t.store.rollback("deb");
    assert.equal(rb.image.id, v1.id);
    assert.equal(rb.previous, v2.id);
    const back = await publish({ nodes }, rb.image, true);
    assert.deepEqual(back.followers.map((f) => f.name), ["follower"]);
    assert.deepEqual(rebooted, ["follower"]);
    assert.equal(link(t, follower.mac), v1.id);
    await assert.rejects(() => t.store.rollback("deb"), /no version before/);
    const fwd = await t.store.rollback("deb", v2.id.slice(0, 8));
    assert.equal(fwd.image.id, v2.id);
    await publish({ nodes }, fwd.image, false);
    await assert.rejects(() => t.store.rollback("deb", "ffffffff"), /not found/);

    // rm: the current version only as the last one; a version a node boots never
    assert.throws(
      () => t.store.remove(`deb@${v2.id.slice(0, 8)}`),
      (e: UserError) => e.status === 409 && /current version of deb/.test(e.message),
    );
    assert.throws(() => t.store.remove(`deb@${v1.id.slice(0, 8)}`), /booted by node pinned/);
    await nodes.deploy(["pinned"], "deb", { reboot: false });
    nodes.follow();
    t.store.remove(`deb@${v1.id.slice(0, 8)}`);
    assert.deepEqual(t.store.history("deb").map((v) => v.id), [v2.id]);
  } finally {
    await t.close();
  }
});

Deno.test("a new version that is not bootable is not followed: the followers stay, are named, and follow the next bootable one", async () => {
  const { t, nodes, src } = await lab();
  try {
    const v1 = await t.store.import(src, "deb");
    const follower = nodes.add("52:54:00:00:00:11", { name: "follower" });
    await nodes.deploy(["follower"], "deb", { reboot: false });
    // the next version lost its kernel (a shell's apt-get remove, the wrong tarball)
    Deno.removeSync(`${src}/vmlinuz`);
    Deno.removeSync(`${src}/boot/vmlinuz-6.1.0-test`);
    fixTimes(src);
    const broken = await t.store.import(src, "deb");
    assert.equal(broken.bootable, false);
    const p = await publish({ nodes }, broken, false);
    // before: the follower moved onto it and booted into a refusal script at every boot
    assert.deepEqual(p.followers, []);
    assert.deepEqual(p.staying, [{ name: "follower", imageId: v1.id }]);
    assert.match(
      publishedText("deb", p),
      /^warning: this version is not bootable \(.+\): the nodes that follow deb stay on their version until a bootable one: follower \([0-9a-f]{12}\)$/,
    );
    assert.equal(link(t, follower.mac), v1.id);
    assert.equal(nodes.get("follower").imageId, v1.id);
    assert.equal(nodes.follow().length, 0, "nor at the next start (reconcile)");
    // the kernel back: the next version is followed
    Deno.writeTextFileSync(`${src}/boot/vmlinuz-6.1.0-test`, "kernel image\n");
    Deno.symlinkSync("boot/vmlinuz-6.1.0-test", `${src}/vmlinuz`);
    Deno.writeTextFileSync(`${src}/etc/hostname`, "fixed\n");
    fixTimes(src);
    const v3 = await t.store.import(src, "deb");
    const q = await publish({ nodes }, v3, false);
    assert.deepEqual(q.followers.map((f) => [f.name, f.from, f.to]), [["follower", v1.id, v3.id]]);
    assert.equal(link(t, follower.mac), v3.id);
  } finally {
    await t.close();
  }
});

Deno.test("a commit that died before its nodes followed: reconcile moves them at the next start", async () => {
  const { t, nodes, src } = await lab();
  try {
    const v1 = await t.store.import(src, "deb");
    const n = nodes.add("52:54:00:00:00:03", { name: "n3" });
    await nodes.deploy(["n3"], "deb", { reboot: false });
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    const v2 = await t.store.import(src, "deb"); // no publish(): as if killed right here
    assert.equal(link(t, n.mac), v1.id);
    assert.ok((await nodes.reconcile()) >= 1);
    assert.equal(link(t, n.mac), v2.id);
    assert.equal(nodes.get("n3").imageId, v2.id);
  } finally {
    await t.close();
  }
});

Deno.test("object store: versions share unchanged files (same inode), gc frees only unused ones", async () => {
  const { t, nodes, src } = await lab();
  t.store.autoPrune = false; // v1's tree is looked at after v2's commit
  try {
    Deno.writeFileSync(`${src}/big`, crypto.getRandomValues(new Uint8Array(65536)));
    Deno.writeTextFileSync(`${src}/dup-a`, "same content, unrelated files\n");
    Deno.writeTextFileSync(`${src}/dup-b`, "same content, unrelated files\n");
    fixTimes(src);
    const v1 = await t.store.import(src, "deb");
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    fixTimes(src);
    const v2 = await t.store.import(src, "deb");
    const ino = (id: string, p: string) => Deno.lstatSync(t.data.rootfs(id) + p).ino;
    assert.equal(ino(v1.id, "/big"), ino(v2.id, "/big"), "unchanged: one inode for both");
    assert.notEqual(ino(v1.id, "/etc/hostname"), ino(v2.id, "/etc/hostname"));
    // two unrelated identical files of one image stay two files (else its manifest would change)
    assert.notEqual(ino(v1.id, "/dup-a"), ino(v1.id, "/dup-b"));
    assert.equal(Deno.lstatSync(t.data.rootfs(v1.id) + "/big").nlink, 3, "two trees + object");

    // gc --keep 1 keeps the version a node boots; plain gc removes only unlinked objects
    nodes.add("52:54:00:00:00:04", { name: "old" });
    await nodes.deploy(["old"], v1.id, { reboot: false });
    const kept = await t.store.gc(1);
    assert.deepEqual(kept.versions, [], "v1 is booted by a node");
    assert.equal(kept.objects, 0);
    await nodes.deploy(["old"], "deb", { reboot: false });
    const freed = await t.store.gc(1);
    assert.deepEqual(freed.versions, [v1.id]);
    assert.equal(freed.objects, 1, "only v1's /etc/hostname was v1's alone");
    assert.ok(Deno.statSync(t.data.rootfs(v2.id) + "/big").isFile);
    assert.equal(Deno.lstatSync(t.data.rootfs(v2.id) + "/big").nlink, 2);
    assert.deepEqual((await t.store.gc()).objects, 0);
  } finally {
    await t.close();
  }
});

Deno.test("object store: an import sharing files with an earlier image still matches its manifest (directory times kept)", async () => {
  const { t, src } = await lab();
  try {
    const a = await t.store.import(src, "a");
    // Same files, one more: every shared file of b is replaced by a link to a's object.
    Deno.writeTextFileSync(`${src}/etc/extra`, "extra\n");
    fixTimes(src);
    const b = await t.store.import(src, "b");
    for (const img of [a, b]) {
      const { entries } = await scanTree(t.data.rootfs(img.id));
      const id = createHash("sha256").update(manifestText(entries)).digest("hex");
      assert.equal(id, img.id, `${img.name}: the stored tree matches its manifest`);
    }
  } finally {
    await t.close();
  }
});

/** The manifest of a version's tree as it is on disk now (a full walk: scan, hash). */
async function walk(t: Awaited<ReturnType<typeof tempStore>>, id: string): Promise<string> {
  return manifestText((await scanTree(t.data.rootfs(id))).entries);
}

Deno.test("thin versions: an old version keeps its manifest and objects, its tree only while needed", async () => {
  const { t, nodes, src } = await lab();
  try {
    Deno.writeFileSync(`${src}/big`, crypto.getRandomValues(new Uint8Array(65536)));
    fixTimes(src);
    const v1 = await t.store.import(src, "deb");
    const walk1 = await walk(t, v1.id);
    assert.equal(walk1, Deno.readTextFileSync(t.data.manifest(v1.id)));
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    Deno.removeSync(`${src}/home/user/tab\tname`);
    fixTimes(src);
    const v2 = await t.store.import(src, "deb");
    await t.store.idle();

    // after the commit: v1's tree is gone (nothing uses it), its manifest stays, history lists it
    assert.equal(t.store.hasTree(v1.id), false, "the superseded version's tree is removed");
    assert.ok(Deno.statSync(t.data.manifest(v1.id)).isFile, "its manifest remains");
    assert.deepEqual(t.store.history("deb").map((v) => [v.id, v.current, v.tree]), [
      [v1.id, false, false],
      [v2.id, true, true],
    ]);
    assert.deepEqual(t.store.names().map((v) => v.tree), [true]);
    // gc never removes a thin version's objects (no tree links to them: st_nlink 1)
    const v1Hostname = Deno.readTextFileSync(t.data.manifest(v1.id)).split("\n")
      .find((l) => l.includes("/etc/hostname"))!;
    assert.ok(v1Hostname, "v1's manifest names /etc/hostname");
    assert.equal((await t.store.gc()).objects, 0, "gc keeps every object of v1");
    assert.equal((await t.store.gc(5)).versions.length, 0);
    // an export follows only versions with a tree (nfs.ts filters on it): v1 is not one

    // rollback to v1 writes its tree again from manifest + objects, identical to the original
    const rb = await t.store.rollback("deb");
    assert.equal(rb.image.id, v1.id);
    assert.equal(t.store.hasTree(v1.id), true);
    assert.equal(await walk(t, v1.id), walk1, "the rebuilt tree walks as the original did");
    await t.store.idle();
    assert.equal(t.store.hasTree(v2.id), false, "v2, superseded by the rollback, is thin now");
    assert.equal(
      Deno.lstatSync(t.data.rootfs(v1.id) + "/big").nlink,
      2,
      "the rebuilt file is a link to its object (v1's tree + the object store; v2 is thin)",
    );

    // a node pinned to an old id keeps its tree: deploy rebuilds v2's before its link flips
    const pinned = nodes.add("52:54:00:00:00:05", { name: "pinned" });
    await nodes.deploy(["pinned"], `deb@${v2.id.slice(0, 10)}`, { reboot: false });
    assert.equal(t.store.hasTree(v2.id), true, "deploy of a thin id writes its tree first");
    assert.equal(link(t, pinned.mac), v2.id);
    assert.equal(await walk(t, v2.id), Deno.readTextFileSync(t.data.manifest(v2.id)));
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v3\n");
    fixTimes(src);
    const v3 = await t.store.import(src, "deb");
    await t.store.idle();
    assert.deepEqual(t.store.history("deb").map((v) => [v.id, v.current, v.tree]), [
      [v1.id, false, false],
      [v2.id, false, true],
      [v3.id, true, true],
    ], "v1 thin again; v2 kept for the pinned node");
    assert.equal(await t.store.pruneTrees().then((x) => x.length), 0);

    // gc with thin versions around, then v1 once more: every object was still there
    assert.equal((await t.store.gc()).objects, 0);
    await t.store.rollback("deb", v1.id);
    assert.equal(await walk(t, v1.id), walk1, "rebuilt again after gc: nothing of v1 was lost");

    // the node leaves v2 (deployed on the name): v2's tree goes, v2 stays in history
    await nodes.deploy(["pinned"], "deb", { reboot: false });
    await t.store.idle();
    assert.equal(t.store.hasTree(v2.id), false);
    assert.deepEqual(t.store.history("deb").map((v) => v.id), [v1.id, v2.id, v3.id]);
  } finally {
    await t.close();
  }
});

Deno.test("thin versions: a session or image cp on a thin version writes its tree first (root)", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs)");
  const { t, src } = await lab();
  try {
    const v1 = await t.store.import(src, "deb");
    const h1 = Deno.readTextFileSync(`${src}/etc/hostname`);
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    fixTimes(src);
    await t.store.import(src, "deb");
    await t.store.idle();
    assert.equal(t.store.hasTree(v1.id), false);
    const out = await copyOut(t.store, `deb@${v1.id.slice(0, 10)}`, "/etc/hostname", t.dir);
    assert.equal(
      Deno.readTextFileSync(out.dest),
      h1,
      "image cp NAME@ID:PATH out of a thin version",
    );
    await t.store.pruneTrees();
    assert.equal(t.store.hasTree(v1.id), false, "the copy's hold is gone: thin again");
    const s = await t.store.sessions.open(`deb@${v1.id.slice(0, 10)}`, "from-v1");
    assert.equal(t.store.hasTree(v1.id), true);
    assert.deepEqual(await t.store.pruneTrees(), [], "an open session's base keeps its tree");
    assert.equal(Deno.readTextFileSync(`${s.merged}/etc/hostname`), h1);
    await t.store.sessions.discard(s.id);
    assert.deepEqual(await t.store.pruneTrees(), [v1.id]);
  } finally {
    await t.close();
  }
});

Deno.test("thin versions: a node set to a thin version without a deploy gets its script, the tree written first (loopback)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-thinboot-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: `${dir}/data` });
  try {
    const src = `${dir}/src`;
    buildSampleTree(src, { kernel: true });
    fixTimes(src);
    const v1 = await ctx.images.import(src, "deb");
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    fixTimes(src);
    await ctx.images.import(src, "deb");
    await ctx.images.idle();
    assert.equal(ctx.images.isThin(v1.id), true, "v1 superseded, used by nothing: thin");
    const node = ctx.nodes.add("52:54:00:00:00:07", { name: "late", image: `deb@${v1.id}` });
    const plan = await contextBooter(ctx).script(node.mac, { base: "http://127.0.0.1:9" });
    assert.ok(!("refused" in plan), `script refused: ${"refused" in plan ? plan.refused : ""}`);
    assert.equal(ctx.images.hasTree(v1.id), true, "the tree was written before the boot opened");
    await ctx.images.idle();
    assert.equal(ctx.images.hasTree(v1.id), true, "and stays: the node's latest boot uses it");
  } finally {
    await closeContext(ctx); // after the initramfs build the script started

    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("script fetches by anyone after a deploy leave the version a node runs protected, exported and kept", async () => {
  const { t, nodes, src } = await lab();
  try {
    const v1 = await t.store.import(src, "deb");
    const n1 = nodes.add("52:54:00:00:00:08", { name: "n1", image: "deb" });
    nodes.observeAddress(n1.mac, "10.0.9.8", "lease");
    const running = openBoot(t.db, n1.mac, v1.id); // n1 boots v1 and hands over
    recordStage(t.db, running, "handover");
    nodes.setState(n1.mac, "booted", "port answered");
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    fixTimes(src);
    const v2 = await t.store.import(src, "deb");
    await publish({ nodes }, v2, false); // deployed, not rebooted: n1 still runs v1
    // Anyone on the boot network fetches n1's script, 60 times: each opens a boot of v2.
    for (let i = 0; i < 60; i++) openBoot(t.db, n1.mac, v2.id);
    const exported = nodes.exportTargets().find((e) => e.mac === n1.mac)!.images;
    // (before: [v2] only: n1's root export withdrawn under it by one GET)
    assert.deepEqual(exported.sort(), [v1.id, v2.id].sort());
    assert.ok(t.store.neededTrees().has(v1.id), "v1's tree kept: n1's root");
    // `node save n1` applies n1's upper on v1, the version it runs (before: v2, the latest boot's)
    assert.equal(bootedImage({ db: t.db, nodes, images: t.store }, "n1"), v1.id);
    assert.throws(
      () => t.store.remove(`deb@${v1.id}`),
      (e: UserError) => e.status === 409 && /still running on node n1/.test(e.message),
    );
    assert.ok(
      (t.db.prepare("SELECT count(*) AS n FROM boots WHERE mac = ?").get(n1.mac) as { n: number })
        .n <= 51,
      "still bounded: 50 boots and the running one",
    );
    // Once n1 boots v2 and hands over, v1 is no longer its.
    recordStage(t.db, openBoot(t.db, n1.mac, v2.id), "handover");
    assert.deepEqual(nodes.exportTargets().find((e) => e.mac === n1.mac)!.images, [v2.id]);
    assert.equal(bootedImage({ db: t.db, nodes, images: t.store }, "n1"), v2.id);
    assert.deepEqual(t.store.remove(`deb@${v1.id}`).map((v) => v.id), [v1.id]);
  } finally {
    await t.close();
  }
});

Deno.test("image rm and gc --keep leave a version a node still runs or a session is open on (root)", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs)");
  const { t, nodes, src } = await lab();
  try {
    const v1 = await t.store.import(src, "deb");
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    fixTimes(src);
    const v2 = await t.store.import(src, "deb");
    const n1 = nodes.add("52:54:00:00:00:07", { name: "n1" });
    await nodes.deploy(["n1"], "deb", { reboot: false });
    t.db.prepare("INSERT INTO boots (token, mac, image_id, started_at) VALUES (?, ?, ?, ?)")
      .run("tok-v2", n1.mac, v2.id, new Date().toISOString());
    nodes.setState(n1.mac, "booted", "port answered");
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v3\n");
    fixTimes(src);
    const v3 = await t.store.import(src, "deb");
    await publish({ nodes }, v3, false);
    assert.equal(nodes.get("n1").imageId, v3.id, "n1 is set to boot v3, and still runs v2");
    // (before: removed, the running node's root export deleted under it)
    assert.throws(
      () => t.store.remove(`deb@${v2.id}`),
      (e: UserError) => e.status === 409 && /still running on node n1/.test(e.message),
    );
    assert.throws(() => t.store.remove("deb"), /node n1/, "nor the whole image");
    // a session opened on v1: its overlay's lower layer is v1's tree
    const s = await t.store.sessions.open(`deb@${v1.id}`, "deb");
    try {
      assert.throws(
        () => t.store.remove(`deb@${v1.id}`),
        (e: UserError) => e.status === 409 && /open image session/.test(e.message),
      );
      // (before: gc --keep 1 removed v1 under the session: its files vanished from the shell)
      assert.deepEqual((await t.store.gc(1)).versions, []);
      assert.deepEqual(t.store.history("deb").map((v) => v.id), [v1.id, v2.id, v3.id]);
      assert.equal(Deno.readTextFileSync(`${s.merged}/etc/hostname`), "sample\n");
    } finally {
      await t.store.sessions.discard(s.id);
    }
    // not for ever: a node powered off runs nothing; a closed session holds nothing
    nodes.setState(n1.mac, "off", "powered off");
    assert.deepEqual(t.store.remove(`deb@${v2.id}`).map((v) => v.id), [v2.id]);
    assert.deepEqual((await t.store.gc(1)).versions, [v1.id]);
  } finally {
    await t.close();
  }
});

Deno.test("a forgotten node's boots go with it: the version it ran is thinned and gc --keep frees it", async () => {
  const { t, nodes, src } = await lab();
  try {
    const v1 = await t.store.import(src, "deb");
    const gone = nodes.add("52:54:00:00:00:09", { name: "gone", image: "deb" });
    recordStage(t.db, openBoot(t.db, gone.mac, v1.id), "handover"); // it ran v1
    for (let i = 0; i < 60; i++) openBoot(t.db, gone.mac, v1.id);
    nodes.forget("gone");
    const boots = (mac: string) =>
      (t.db.prepare("SELECT count(*) AS n FROM boots WHERE mac = ?").get(mac) as { n: number }).n;
    // (before: its 51 boots stayed, for ever: one node added and forgotten a day grew the table)
    assert.equal(boots(gone.mac), 0);
    for (const text of ["v2\n", "v3\n"]) {
      Deno.writeTextFileSync(`${src}/etc/hostname`, text);
      fixTimes(src);
      await t.store.import(src, "deb");
    }
    await t.store.idle();
    // (before: v1's whole tree stayed, the forgotten node's last boot naming it, and no gc freed it)
    assert.equal(t.store.isThin(v1.id), true, "v1's tree pruned: no registered node runs it");
    assert.ok((await t.store.gc(1)).versions.includes(v1.id));
    // The MAC added again is a new node: none of the old node's boots count as netroot's to it.
    const again = nodes.add(gone.mac, { name: "again" });
    assert.equal(boots(again.mac), 0);
  } finally {
    await t.close();
  }
});

Deno.test("the initramfs cache holds the versions something boots, not every version ever booted", async () => {
  const { t, nodes, src } = await lab();
  try {
    const versions = [];
    for (const text of ["v1\n", "v2\n", "v3\n"]) {
      Deno.writeTextFileSync(`${src}/etc/hostname`, text);
      fixTimes(src);
      versions.push(await t.store.import(src, "deb"));
    }
    const [v1, v2, v3] = versions;
    nodes.add("52:54:00:00:00:0a", { name: "pinned" });
    await nodes.deploy(["pinned"], `deb@${v1.id}`, { reboot: false });
    // Each version got its initramfs (≈ 40 MB each) when it was booted; a program upgrade added
    // one more of the current version.
    await Deno.mkdir(t.data.initramfs, { recursive: true });
    const cached = (id: string, program: string) => `${id}-6.1.0-1-amd64-${program}.cpio.zst`;
    const files = [cached(v1.id, "a"), cached(v2.id, "a"), cached(v3.id, "a"), cached(v3.id, "b")];
    for (const f of files) Deno.writeFileSync(`${t.data.initramfs}/${f}`, new Uint8Array(1024));
    await pruneInitramfsCache({ data: t.data, images: t.store });
    // (before: v2's stayed until v2 was removed: 100 versions built, booted and superseded kept
    // 100 initramfs, ≈ 4 GB, while their trees were pruned to save 1 % of that)
    assert.deepEqual(
      [...Deno.readDirSync(t.data.initramfs)].map((e) => e.name).sort(),
      [
        cached(v1.id, "a"), // a node is set to boot it
        cached(v3.id, "a"), // the current version, the previous program's file too (a rollback)
        cached(v3.id, "b"),
      ].sort(),
    );
    await t.store.idle();
    assert.equal(t.store.isThin(v2.id), true, "v2 is thin: booted again, both are rebuilt");
  } finally {
    await t.close();
  }
});

Deno.test("one node's broken directory keeps neither the other followers on the old version, nor the commit from being told, nor the next start", async () => {
  const t = await tempStore();
  try {
    const tree = (hostname: string) => {
      const work = t.store.scratch("import");
      buildSampleTree(`${work}/rootfs`);
      Deno.writeTextFileSync(`${work}/rootfs/etc/hostname`, `${hostname}\n`);
      return work;
    };
    const meta = { madeBy: "import" as const, command: null, parent: null };
    await t.store.commit(tree("one"), "img", meta);
    const nodes = new NodeRegistry(t.data, t.db, t.store, new Rebooter(t.db), new EventTarget());
    const good = nodes.add("52:54:00:00:00:01", { name: "good", image: "img" });
    const broken = nodes.add("52:54:00:00:00:02", { name: "broken", image: "img" });
    // The attacker (or a bad disk) makes one node's directory a file: its link cannot be made.
    Deno.removeSync(t.data.node(broken.mac), { recursive: true });
    Deno.writeTextFileSync(t.data.node(broken.mac), "");
    const c = await t.store.commit(tree("two"), "img", meta);
    const p = await publish({ nodes }, c, false);
    assert.deepEqual(p.followers.map((f) => f.name), ["good"], "the commit is told who moved");
    assert.equal(nodes.get(good.mac).imageId, c.id);
    assert.equal(Deno.readLinkSync(t.data.nodeFs(good.mac)), `../../images/${c.id}/rootfs`);
    assert.equal(nodes.get(broken.mac).imageId, good.imageId, "the broken one where it was");
    // The next start: the reconcile says what it cannot fix and goes on.
    await nodes.reconcile();
    assert.equal(nodes.get(good.mac).imageId, c.id);
  } finally {
    await t.close();
  }
});
