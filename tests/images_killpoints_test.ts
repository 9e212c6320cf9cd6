// kill -9 of the process running the real store code at many points of each operation that
// changes the image store or a node's version (an import, a session commit, a rollback onto a
// thin version, `image rm`, `image gc`, a thin version's rebuild, a deploy): after the next
// start (reconcile) every invariant of the store holds and nothing committed is lost.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readlinkSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { manifestLines, manifestText } from "../contract/manifest.ts";
import { DataDir } from "../src/datadir.ts";
import { openDatabase } from "../src/db.ts";
import { objectKey } from "../src/images/objects.ts";
import { ImageStore } from "../src/images/store.ts";
import { scanTree } from "../src/images/walk.ts";
import { linkTarget, NodeRegistry } from "../src/nodes.ts";
import { Rebooter } from "../src/reboot.ts";
import { dirEntries, sh, tempStore } from "./images_helpers.ts";

const child = fileURLToPath(new URL("./support/crashops.ts", import.meta.url));

/** Runs crashops.ts; with `killAfter`, kill -9 that many ms after it said "go". */
async function run(
  dataRoot: string,
  args: string[],
  killAfter?: number,
): Promise<{ done: boolean; ms?: number }> {
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", child, dataRoot, ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "", killed: Promise<void> | undefined;
  const errText = new Response(p.stderr).text();
  for await (const c of p.stdout.pipeThrough(new TextDecoderStream())) {
    out += c;
    if (killAfter !== undefined && !killed && out.includes("go\n")) {
      killed = new Promise((r) =>
        setTimeout(() => {
          try {
            Deno.kill(p.pid, "SIGKILL");
          } catch { /* exited */ }
          r();
        }, killAfter)
      );
    }
  }
  await killed;
  const st = await p.status;
  const m = /done (\d+)/.exec(out);
  if (killAfter === undefined && !m) {
    throw new Error(`crashops ${args.join(" ")} failed (${st.code}): ${await errText}`);
  }
  return { done: !!m, ms: m ? Number(m[1]) : undefined };
}

/** A tree of `n` small files of distinct content under `root`. */
function writeTree(root: string, n: number, salt: string): void {
  for (let d = 0; d < n / 100; d++) {
    Deno.mkdirSync(`${root}/usr/share/d${d}`, { recursive: true });
    for (let f = 0; f < 100; f++) {
      Deno.writeTextFileSync(`${root}/usr/share/d${d}/f${f}`, `${salt} ${d} ${f}\n`.repeat(f + 1));
    }
  }
  Deno.mkdirSync(`${root}/boot`, { recursive: true });
  Deno.writeTextFileSync(`${root}/boot/vmlinuz-6.1.0-k`, "k");
  Deno.mkdirSync(`${root}/lib/modules/6.1.0-k`, { recursive: true });
}

/**
 * The next start on `dataRoot` (reconcile), then every invariant: tmp/ empty; every row its
 * directory and manifest (named by its sha256) and no directory without a row; a tree, where
 * kept, equal to its manifest; every object a manifest names present (where no tree holds the
 * file) with the content and size the manifest says; one current version per name, among
 * `currents`; every thin version rebuildable; each node's link at its row's version, a tree.
 */
async function assertInvariants(
  dataRoot: string,
  expect: { currents: string[]; kept: string[] },
  label: string,
): Promise<void> {
  const data = new DataDir(dataRoot);
  const db = openDatabase(data.db);
  const images = new ImageStore(data, db);
  images.autoPrune = false;
  const nodes = new NodeRegistry(data, db, images, new Rebooter(db), new EventTarget());
  try {
    await images.reconcile();
    await nodes.reconcile();
    assert.deepEqual(await dirEntries(data.tmp), [], `${label}: tmp/ wiped`);
    const rows = images.list();
    assert.deepEqual(
      await dirEntries(data.images),
      rows.map((r) => r.id).sort(),
      `${label}: every version's directory has a row and every row its directory`,
    );
    for (const id of expect.kept) {
      assert.ok(rows.some((r) => r.id === id), `${label}: version ${id.slice(0, 8)} kept`);
    }
    const current = rows.filter((r) => r.current).map((r) => r.id);
    assert.equal(current.length, 1, `${label}: one current version`);
    assert.ok(expect.currents.includes(current[0]) || !expect.currents.length, `${label}: current`);
    for (const r of rows) {
      const text = Deno.readTextFileSync(data.manifest(r.id));
      assert.equal(createHash("sha256").update(text).digest("hex"), r.id, `${label}: manifest`);
      assert.equal(r.bootable, true, `${label}: ${r.reason}`);
      if (images.hasTree(r.id)) {
        const { entries } = await scanTree(data.rootfs(r.id));
        assert.equal(manifestText(entries), text, `${label}: tree of ${r.id.slice(0, 8)}`);
      }
      for (const e of manifestLines(text)) {
        if (e.type !== "file") continue;
        const obj = images.objects.path(objectKey(e));
        let content: Uint8Array;
        try {
          content = Deno.readFileSync(obj);
        } catch {
          assert.ok(images.hasTree(r.id), `${label}: object of ${e.path} missing (thin version)`);
          continue;
        }
        assert.equal(content.length, e.size, `${label}: size of the object of ${e.path}`);
        assert.equal(
          createHash("sha256").update(content).digest("hex"),
          e.sha256,
          `${label}: content of the object of ${e.path}`,
        );
      }
    }
    for (const r of rows) {
      if (images.isThin(r.id)) await images.ensureTree(r.id);
    }
    for (const n of nodes.list()) {
      const link = data.nodeFs(n.mac);
      assert.equal(readlinkSync(link), linkTarget(n.imageId!), `${label}: ${n.name}'s link`);
      assert.ok(Deno.statSync(realpathSync(link)).isDirectory, `${label}: ${n.name}'s tree`);
    }
  } finally {
    await images.idle();
    db.close();
  }
}

Deno.test("kill -9 at many points of each store operation and deploy: after the next start every invariant holds, nothing committed is lost (root)", async () => {
  const t = await tempStore();
  const points = Number(Deno.env.get("NETROOT_KILL_POINTS") ?? 2);
  try {
    const importMeta = { madeBy: "import" as const, command: null, parent: null };
    const tree = (salt: string) => {
      const work = t.store.scratch("import");
      writeTree(`${work}/rootfs`, 600, salt);
      return work;
    };
    const v1 = (await t.store.commit(tree("one"), "a", importMeta)).id;
    const v2 = (await t.store.commit(tree("two"), "a", { ...importMeta, parent: v1 })).id;
    const nodes = new NodeRegistry(t.data, t.db, t.store, new Rebooter(t.db), new EventTarget());
    nodes.add("52:54:00:00:00:01", { name: "n1", image: "a" });
    await t.store.pruneTrees();
    await t.store.idle();
    assert.ok(t.store.isThin(v1), "the old version is thin");
    const src = `${t.dir}/src`;
    writeTree(src, 600, "three");
    sh("tar", "-C", src, "-cf", `${t.dir}/three.tar`, ".");
    const upper = `${t.dir}/upper`;
    writeTree(upper, 300, "upper");
    t.db.close();
    const base = t.data.root;

    const ops: { args: string[]; currents: string[]; kept: string[] }[] = [
      { args: ["import", `${t.dir}/three.tar`], currents: [v2], kept: [v1, v2] },
      { args: ["commit", "upper"], currents: [v2], kept: [v1, v2] },
      { args: ["rollback"], currents: [v1, v2], kept: [v1, v2] },
      { args: ["rm", `a@${v1}`], currents: [v2], kept: [v2] },
      { args: ["gc"], currents: [v2], kept: [v2] },
      { args: ["rebuild", v1], currents: [v2], kept: [v1, v2] },
      { args: ["deploy", `a@${v1}`], currents: [v2], kept: [v1, v2] },
    ];
    for (const op of ops) {
      const copy = (i: number) => {
        const d = `${t.dir}/run-${op.args[0]}-${i}`;
        sh("cp", "-a", base, d);
        // A commit consumes its upper (its files are moved into the new tree): one per run.
        sh("cp", "-a", upper, `${d}/upper`);
        return d;
      };
      const args = (d: string) => op.args.map((a) => a === "upper" ? `${d}/upper` : a);
      const d0 = copy(0);
      const whole = await run(d0, args(d0));
      // A new version made by the op may be current too.
      const after = (d: string) => {
        const db = openDatabase(new DataDir(d).db);
        try {
          return (db.prepare("SELECT id FROM images WHERE current = 1").get() as { id: string })
            .id;
        } finally {
          db.close();
        }
      };
      const made = after(`${t.dir}/run-${op.args[0]}-0`);
      const currents = [...new Set([...op.currents, made])];
      await assertInvariants(`${t.dir}/run-${op.args[0]}-0`, { currents, kept: op.kept }, "whole");
      for (let i = 1; i <= points; i++) {
        const d = copy(i);
        const at = Math.round((whole.ms! * (i - 0.5)) / points);
        const r = await run(d, args(d), at);
        await assertInvariants(d, { currents, kept: op.kept }, `${op.args[0]} killed at ${at} ms`);
        if (!r.done) console.log(`${op.args[0]}: killed at ${at} of ${whole.ms} ms`);
        await Deno.remove(d, { recursive: true });
      }
    }
  } finally {
    await Deno.remove(t.dir, { recursive: true }).catch(() => {});
  }
});
