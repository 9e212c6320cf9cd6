// A version committed from an overlay upper without scanning the base tree (derive.ts): its
// manifest is computed from the base's manifest and the upper, its tree written from it. Checked
// against what the tree really holds (a full scan) and against the way it was done before (a
// hard-link copy of the base, the upper applied, the copy scanned), on real overlayfs uppers.
import assert from "node:assert/strict";
import { manifestText, parseManifest } from "../contract/manifest.ts";
import { openDatabase } from "../src/db.ts";
import { ImageStore } from "../src/images/store.ts";
import { applyUpper } from "../src/images/upper.ts";
import { setXattr } from "../src/linux/xattr.ts";
import { scanTree } from "../src/images/walk.ts";
import { buildSampleTree, dirEntries, sh, T0, tempStore } from "./images_helpers.ts";

type T = Awaited<ReturnType<typeof tempStore>>;

/** The stored manifest of a version equals a scan of its tree. */
async function assertTreeMatches(t: T, id: string): Promise<string> {
  const stored = Deno.readTextFileSync(t.data.manifest(id));
  const { entries } = await scanTree(t.data.rootfs(id));
  assert.equal(manifestText(entries), stored, "the tree holds exactly what its manifest says");
  return stored;
}

/** The manifest the old way (cp -al of the base, the upper applied, a scan), without "/" (whose
 *  time the old way left at the commit's clock). */
async function oldWay(t: T, baseId: string, upperCopy: string): Promise<string> {
  const tree = `${t.dir}/old-${crypto.randomUUID()}`;
  sh("cp", "-a", "-l", "--no-target-directory", t.data.rootfs(baseId), tree);
  applyUpper(upperCopy, tree);
  const { entries } = await scanTree(tree);
  return manifestText(entries.filter((e) => e.path !== "/"));
}

const withoutRoot = (text: string) =>
  manifestText(parseManifest(text).filter((e) => e.path !== "/"));

/** How a commit gets its tree: written ahead and complete before the commit ("waited"), written
 *  ahead but finished by the commit ("hurried"), written by the commit ("off"). */
type Ahead = "waited" | "hurried" | "off";

/** Commits a session after `change`, checking the result both ways; returns the version. */
async function commitChecked(
  t: T,
  ref: string,
  change: (merged: string) => void,
  ahead: Ahead = "waited",
) {
  t.store.sessions.writeAhead = ahead !== "off";
  const s = await t.store.sessions.open(ref);
  change(s.merged);
  if (ahead === "waited") {
    assert.equal((await t.store.sessions.prepared(s.id)).ready, true, "tree written ahead");
    assert.ok(Deno.statSync(`${s.dir}/next`).isDirectory);
  }
  const copy = `${t.dir}/upper-${crypto.randomUUID()}`;
  sh("cp", "-a", `${s.dir}/upper`, copy); // trusted.overlay.* kept (root)
  const v = await t.store.sessions.commit(s.id, { madeBy: "shell", command: "test" });
  assert.equal(v.existed, false);
  const stored = await assertTreeMatches(t, v.id);
  assert.equal(withoutRoot(stored), await oldWay(t, v.parent!, copy), "same as the old way");
  return v;
}

for (const ahead of ["waited", "hurried", "off"] as const) {
  Deno.test(`derived commit (tree written ahead: ${ahead}): every kind of change gives the manifest a scan of the tree gives`, async () => {
    await everyKindOfChange(ahead);
  });
}

async function everyKindOfChange(ahead: Ahead) {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs)");
  const t = await tempStore();
  t.store.autoPrune = false; // the base's tree is compared after the commit
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    // more shapes: a directory to delete, one to make opaque, one to turn into a file, a file to
    // turn into a directory, a hard link pair whose first path changes, one whose first goes
    for (const d of ["/var/old/deep", "/var/opq/sub", "/var/todir", "/srv"]) {
      Deno.mkdirSync(src + d, { recursive: true });
    }
    Deno.writeTextFileSync(`${src}/var/old/deep/f`, "old\n");
    Deno.writeTextFileSync(`${src}/var/opq/sub/f`, "opq\n");
    Deno.writeTextFileSync(`${src}/var/opq/g`, "opq g\n");
    Deno.writeTextFileSync(`${src}/var/tofile`, "a file\n");
    Deno.writeTextFileSync(`${src}/var/todir/x`, "x\n");
    Deno.writeTextFileSync(`${src}/srv/a`, "pair\n");
    Deno.linkSync(`${src}/srv/a`, `${src}/srv/b`);
    Deno.linkSync(`${src}/srv/a`, `${src}/srv/c`);
    Deno.writeTextFileSync(`${src}/srv/p`, "pair 2\n");
    Deno.linkSync(`${src}/srv/p`, `${src}/srv/q`);
    Deno.writeTextFileSync(`${src}/srv/same`, "same content\n");
    // a set-group-ID directory: what is made in it inherits its group
    Deno.mkdirSync(`${src}/var/mail/sub`, { recursive: true });
    Deno.chownSync(`${src}/var/mail`, 0, 8);
    Deno.chmodSync(`${src}/var/mail`, 0o2775);
    Deno.chownSync(`${src}/var/mail/sub`, 0, 0);
    Deno.chmodSync(`${src}/var/mail/sub`, 0o700);
    Deno.symlinkSync("sub", `${src}/var/mail/link`);
    Deno.chownSync(`${src}/var/mail/link`, 0, 0);
    sh("find", src, "-exec", "touch", "-h", "-d", `@${T0}`, "{}", "+");
    const base = await t.store.import(src, "img");
    await assertTreeMatches(t, base.id);

    const v1 = await commitChecked(t, "img", (m) => {
      Deno.writeTextFileSync(`${m}/etc/passwd`, "root:x:0:0::/root:/bin/bash\n");
      Deno.removeSync(`${m}/etc/hostname`);
      Deno.removeSync(`${m}/var/old`, { recursive: true });
      Deno.removeSync(`${m}/var/opq`, { recursive: true });
      Deno.mkdirSync(`${m}/var/opq`);
      Deno.writeTextFileSync(`${m}/var/opq/new`, "new\n");
      Deno.removeSync(`${m}/var/todir`, { recursive: true });
      Deno.writeTextFileSync(`${m}/var/todir`, "now a file\n");
      Deno.removeSync(`${m}/var/tofile`);
      Deno.mkdirSync(`${m}/var/tofile/in`, { recursive: true });
      Deno.writeTextFileSync(`${m}/srv/a`, "first path rewritten\n"); // b, c stay a pair
      Deno.removeSync(`${m}/srv/p`); // q stays, now the inode's first path
      Deno.writeTextFileSync(`${m}/srv/n1`, "new pair\n");
      Deno.linkSync(`${m}/srv/n1`, `${m}/srv/n2`);
      // identical to /srv/same in content and metadata: must stay its own inode
      Deno.writeTextFileSync(`${m}/srv/same-too`, "same content\n");
      sh("touch", "-d", `@${T0}`, `${m}/srv/same-too`);
      Deno.chmodSync(`${m}/home/user`, 0o700);
      Deno.chownSync(`${m}/usr/bin/su`, 0, 1234); // copy-up of metadata only
      Deno.symlinkSync("passwd", `${m}/etc/passwd.rel`);
      Deno.removeSync(`${m}/etc/passwd.abs`);
      Deno.symlinkSync("/etc/shadow", `${m}/etc/passwd.abs`);
      sh("mkfifo", `${m}/srv/fifo`);
    }, ahead);
    const m1 = new Map(
      parseManifest(Deno.readTextFileSync(t.data.manifest(v1.id))).map((e) => [
        e.path,
        e,
      ]),
    );
    assert.equal(m1.get("/srv/b")?.type, "file", "b is the first path of the old inode now");
    assert.equal(m1.get("/srv/c")?.target, "/srv/b");
    assert.equal(m1.get("/srv/q")?.type, "file");
    assert.equal(m1.get("/srv/n2")?.target, "/srv/n1");
    assert.equal(m1.has("/var/old/deep/f"), false);
    assert.equal(m1.has("/var/opq/sub/f"), false);
    assert.equal(m1.get("/var/tofile")?.type, "dir");
    const ino = (id: string, p: string) => Deno.lstatSync(t.data.rootfs(id) + p).ino;
    assert.equal(ino(v1.id, "/usr/bin/tool"), ino(base.id, "/usr/bin/tool"), "files shared");
    assert.notEqual(ino(v1.id, "/srv/same"), ino(v1.id, "/srv/same-too"));

    // on top of a derived version: the deleted content comes back (shares its object again)
    const v2 = await commitChecked(t, "img", (m) => {
      Deno.writeTextFileSync(`${m}/etc/hostname`, "sample\n");
      sh("touch", "-d", `@${T0}`, `${m}/etc/hostname`);
      setXattr(`${m}/etc/hostname`, "user.netroot.test", new TextEncoder().encode("hello"));
      Deno.removeSync(`${m}/srv/b`);
      Deno.writeTextFileSync(`${m}/var/opq/new`, "changed again\n");
    }, ahead);
    assert.equal(ino(v2.id, "/etc/hostname"), ino(base.id, "/etc/hostname"), "object shared");
    assert.equal(ino(v2.id, "/srv/c"), ino(base.id, "/srv/b"));
    assert.deepEqual(await dirEntries(t.data.tmp), [], "no scratch left");
    // every version still matches its manifest (nothing written in place)
    for (const v of [base, v1, v2]) await assertTreeMatches(t, v.id);
  } finally {
    await t.close();
  }
}

const storeUrl = new URL("../src/images/store.ts", import.meta.url).href;
const dbUrl = new URL("../src/db.ts", import.meta.url).href;
const dataUrl = new URL("../src/datadir.ts", import.meta.url).href;

/** A process that changes 1/20 of the image in a session and commits it; prints "commit" right
 *  before the commit starts. */
function committer(dataRoot: string): Deno.ChildProcess {
  const code = `
    import { ImageStore } from ${JSON.stringify(storeUrl)};
    import { openDatabase } from ${JSON.stringify(dbUrl)};
    import { DataDir } from ${JSON.stringify(dataUrl)};
    const data = new DataDir(${JSON.stringify(dataRoot)});
    const store = new ImageStore(data, openDatabase(data.db));
    await store.reconcile();
    const s = await store.sessions.open("crashy");
    for (let f = 0; f < 60; f++) Deno.writeTextFileSync(s.merged + "/usr/d3/f" + f, crypto.randomUUID());
    Deno.removeSync(s.merged + "/usr/d4", { recursive: true });
    console.log("commit");
    await store.sessions.commit(s.id, { madeBy: "shell", command: null });
    console.log("done");`;
  return new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", code],
    stdout: "piped",
    stderr: "null",
    env: { NETROOT_LOG: "error" },
  }).spawn();
}

Deno.test("kill -9 during derived commits: the previous version stays current and intact, nothing half-committed (root)", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs)");
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    for (let d = 0; d < 20; d++) {
      Deno.mkdirSync(`${src}/usr/d${d}`, { recursive: true });
      for (let f = 0; f < 60; f++) Deno.writeTextFileSync(`${src}/usr/d${d}/f${f}`, `${d}/${f}`);
    }
    await t.store.import(src, "crashy");
    t.db.close();
    let completed = 0, interrupted = 0;
    for (const delay of [0, 5, 15, 30, 60, 100, 160, 250, 400, 700, 1500, 5000]) {
      const child = committer(t.data.root);
      let seen = "";
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      while (!seen.includes("commit")) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += value;
      }
      await new Promise((r) => setTimeout(r, delay));
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += value;
      }
      await child.status;
      if (seen.includes("done")) completed++;
      else interrupted++;
      // the next start: every version's tree matches its manifest, tmp/ is empty, the name's
      // current version is a complete one
      const db = openDatabase(t.data.db);
      const store = new ImageStore(t.data, db);
      await store.reconcile();
      assert.deepEqual(await dirEntries(t.data.tmp), [], "tmp/ wiped");
      const rows = store.list();
      assert.deepEqual(await dirEntries(t.data.images), rows.map((r) => r.id).sort());
      for (const r of rows) {
        // A version made thin (its tree removed after the commit, or by a kill mid-removal)
        // is written again from its manifest and objects: nothing of it may be lost either.
        await store.ensureTree(r.id);
        const { entries } = await scanTree(t.data.rootfs(r.id));
        assert.equal(
          manifestText(entries),
          Deno.readTextFileSync(t.data.manifest(r.id)),
          `${r.id.slice(0, 12)} intact`,
        );
      }
      assert.equal(rows.filter((r) => r.current).length, 1);
      db.close();
    }
    console.log(`kill points: ${interrupted} interrupted, ${completed} completed before the kill`);
    assert.ok(interrupted > 0, "some kills hit a commit");
  } finally {
    await t.close().catch(() => {});
  }
});

Deno.test("trees written ahead: concurrent sessions on one image each commit their own version; discard and no-change commits leave nothing", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs)");
  const t = await tempStore();
  t.store.autoPrune = false; // the base's tree is looked at after the commits
  try {
    const src = `${t.dir}/src`;
    // byte order puts "/d-x" between "/d" and "/d/sub": removing both must not trip on it
    for (const d of ["/d/sub/deep", "/d-x/in"]) Deno.mkdirSync(src + d, { recursive: true });
    for (let f = 0; f < 300; f++) Deno.writeTextFileSync(`${src}/d/sub/deep/f${f}`, `${f}`);
    Deno.writeTextFileSync(`${src}/d-x/in/g`, "g\n");
    Deno.writeTextFileSync(`${src}/top`, "top\n");
    const base = await t.store.import(src, "img");
    const a = await t.store.sessions.open("img");
    const b = await t.store.sessions.open("img");
    const c = await t.store.sessions.open("img");
    const none = await t.store.sessions.open("img");
    Deno.removeSync(`${a.merged}/d`, { recursive: true });
    Deno.removeSync(`${a.merged}/d-x`, { recursive: true });
    Deno.writeTextFileSync(`${b.merged}/top`, "b's top\n");
    Deno.writeTextFileSync(`${b.merged}/d/sub/deep/f7`, "b's f7\n");
    for (const s of [a, b, c, none]) {
      assert.equal((await t.store.sessions.prepared(s.id)).ready, true);
    }
    await t.store.sessions.discard(c.id);
    const noChange = await t.store.sessions.commit(none.id, { madeBy: "shell", command: null });
    assert.equal(noChange.existed, true);
    assert.equal(noChange.id, base.id);
    const vb = await t.store.sessions.commit(b.id, { madeBy: "shell", command: null });
    const va = await t.store.sessions.commit(a.id, { madeBy: "shell", command: null });
    assert.equal(vb.parent, base.id);
    assert.equal(va.parent, base.id);
    assert.equal(va.outdated, vb.id, "a did not see b's version");
    for (const v of [base, va, vb]) await assertTreeMatches(t, v.id);
    const names = (id: string) => parseManifest(Deno.readTextFileSync(t.data.manifest(id)));
    assert.deepEqual(names(va.id).map((e) => e.path), ["/", "/top"]);
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(vb.id)}/top`), "b's top\n");
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(base.id)}/top`), "top\n");
    assert.equal(names(vb.id).length, names(base.id).length);
    assert.deepEqual(await dirEntries(t.data.tmp), [], "no session or prepared tree left");
  } finally {
    await t.close();
  }
});
