// Disk and time cost of image versions against their peer, full copies: a ≈ 700 MB Debian tree
// (debootstrap, cached under .work/minbase/bookworm-minbase-700m) is imported, then 10 versions
// are committed, each rewriting about 1 % of the image's bytes (whole files, as a package upgrade
// does) through a session (overlay; commit = the base's manifest with the upper applied, the
// tree written as hard links to the base's files, derive.ts). Rounds alternate the full import
// and the commits on a fresh data dir each. Targets (issue 12): disk growth per version ≤ 2 % of
// the image; commit time ≤ 0.1× the full import of the same image.
// While a session is open the next version's tree is written ahead (session.ts, prepareTree: a
// copy of the base as hard links, in slices); the bench waits until that copy is complete before
// it asks for the commit, as a session that lasts longer than the copy (an interactive shell, a
// build) does, and prints how long the copy took. The commit time runs from the commit request
// to the version being current. --cold: ask right after the writes (the commit finishes the copy
// first: what a session shorter than the copy gets).
// Nothing pins an old version here (no node deployed or pinned on it, no session on it), so each
// superseded version becomes thin after the commit (store.ts, pruneTrees: its tree removed, its
// manifest and objects kept); the bench waits for that before the next session and prints how
// long it took (not in the commit time). --keep-trees: every version keeps its tree (what a
// version costs while a node uses it).
//   deno run -A bench/image_versions_bench.ts [--tree DIR] [--versions N] [--percent P] [--rounds R]
//     [--cold] [--keep-trees]
// RATIO lines (higher is better, floor 1): images.commit-vs-0.1-import = (0.1 × import) / commit
// (median round), images.version-disk-vs-2pct = 2 % / growth per version.
import { parseArgs } from "node:util";
import { DataDir } from "../src/datadir.ts";
import { openDatabase } from "../src/db.ts";
import { ImageStore } from "../src/images/store.ts";
import { setLogSink } from "../src/log.ts";
import { minbaseLargeTree } from "../tests/support/minbase.ts";
import { quick, ratio } from "./ratio.ts";

setLogSink(() => {});
const { values } = parseArgs({
  args: Deno.args,
  options: {
    tree: { type: "string" },
    versions: { type: "string", default: "10" },
    percent: { type: "string", default: "1" },
    rounds: { type: "string", default: quick ? "1" : "3" },
    quick: { type: "boolean" },
    cold: { type: "boolean" },
    "keep-trees": { type: "boolean" },
  },
});
const versions = Number(values.versions), percent = Number(values.percent);
const rounds = Number(values.rounds);
const tree = values.tree ? Deno.realPathSync(values.tree) : await minbaseLargeTree();

const duKiB = (path: string) => {
  const out = new Deno.Command("du", { args: ["-sk", path], stdout: "piped" }).outputSync();
  return Number(new TextDecoder().decode(out.stdout).split("\t")[0]);
};
const sync = () => new Deno.Command("sync").outputSync();

interface Round {
  importMs: number;
  commitMs: number[];
  /** Writing the tree ahead (session open → copy complete), per version. */
  aheadMs: number[];
  /** Removing the previous version's tree after each commit (in the background, waited for
   *  before the next session: not in the commit time). */
  pruneMs: number[];
  imageKiB: number;
  growthKiB: number;
  size: number;
  entries: number;
  dirs: number;
  manifestKiB: number;
}

async function round(r: number): Promise<Round> {
  const work = await Deno.makeTempDir({ prefix: "netroot-versions-bench-" });
  try {
    const data = new DataDir(`${work}/data`);
    await data.ensure();
    const db = openDatabase(data.db);
    const store = new ImageStore(data, db);
    // Default: nothing pins an old version (no node, no session on it), so each superseded
    // version's tree goes after the commit (thin versions). --keep-trees: every tree stays.
    store.autoPrune = !values["keep-trees"];
    sync();
    let t0 = performance.now();
    const v0 = await store.import(tree, "deb");
    const importMs = performance.now() - t0;
    const imageKiB = duKiB(data.rootfs(v0.id));
    const afterImport = duKiB(data.root);

    // the regular files of the image (a deterministic walk), picked 7919 apart
    const files: { path: string; size: number }[] = [];
    let dirs = 0;
    const walk = (dir: string) => {
      for (const e of Deno.readDirSync(dir)) {
        const p = `${dir}/${e.name}`;
        if (e.isDirectory) {
          dirs++;
          walk(p);
        } else if (e.isFile) {
          files.push({ path: p.slice(data.rootfs(v0.id).length), size: Deno.lstatSync(p).size });
        }
      }
    };
    walk(data.rootfs(v0.id));
    files.sort((a, b) => (a.path < b.path ? -1 : 1));
    const target = v0.size * percent / 100;

    const commitMs: number[] = [], aheadMs: number[] = [], pruneMs: number[] = [];
    let next = r * 104729;
    for (let v = 1; v <= versions; v++) {
      const s = await store.sessions.open("deb");
      let changed = 0, n = 0;
      while (changed < target * 0.98) {
        const f = files[(next += 7919) % files.length];
        if (changed + f.size > target * 1.02) continue; // keep each version at about `percent`
        const bytes = new Uint8Array(f.size);
        for (let i = 0; i < bytes.length; i += 65536) {
          crypto.getRandomValues(bytes.subarray(i, Math.min(bytes.length, i + 65536)));
        }
        Deno.writeFileSync(s.merged + f.path, bytes);
        changed += f.size;
        n++;
      }
      if (!values.cold) {
        const p = await store.sessions.prepared(s.id);
        if (!p.ready) throw new Error("the tree was not written ahead");
        aheadMs.push(p.ms);
      }
      t0 = performance.now();
      const c = await store.sessions.commit(s.id, { madeBy: "shell", command: "bench" });
      commitMs.push(performance.now() - t0);
      if (c.existed) throw new Error("no change committed");
      const t1 = performance.now();
      await store.idle();
      pruneMs.push(performance.now() - t1);
      console.log(
        `round ${r + 1} version ${v}: ${n} files, ${(changed / 1e6).toFixed(1)} MB rewritten, ` +
          `commit ${commitMs.at(-1)!.toFixed(0)} ms` +
          (values.cold ? "" : ` (tree written ahead in ${aheadMs.at(-1)!.toFixed(0)} ms)`) +
          (values["keep-trees"]
            ? ""
            : `, previous tree removed in ${pruneMs.at(-1)!.toFixed(0)} ms after it`),
      );
    }
    const out: Round = {
      importMs,
      commitMs,
      aheadMs,
      pruneMs,
      imageKiB,
      growthKiB: duKiB(data.root) - afterImport,
      size: v0.size,
      entries: v0.files,
      dirs: dirs + 1,
      manifestKiB: duKiB(data.manifest(v0.id)),
    };
    db.close();
    return out;
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

const results: Round[] = [];
for (let r = 0; r < rounds; r++) {
  const x = await round(r);
  results.push(x);
  const avg = x.commitMs.reduce((a, b) => a + b, 0) / x.commitMs.length;
  console.log(
    `round ${r + 1}: import ${x.importMs.toFixed(0)} ms, commit ${avg.toFixed(0)} ms on average ` +
      `(${Math.min(...x.commitMs).toFixed(0)}–${Math.max(...x.commitMs).toFixed(0)}) = ${
        (avg / x.importMs).toFixed(3)
      }× the import; growth ${
        (x.growthKiB / versions / x.imageKiB * 100).toFixed(2)
      } % per version`,
  );
}
const x0 = results[0];
console.log(
  `image: ${(x0.size / 1e6).toFixed(1)} MB of files in ${x0.entries} entries, ${x0.dirs} ` +
    `directories (du ${x0.imageKiB} KiB); its manifest ${x0.manifestKiB} KiB`,
);
const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { min: s[0], median: s[Math.floor(s.length / 2)], max: s.at(-1)! };
};
const fmt = (o: { min: number; median: number; max: number }, d = 3) =>
  `min ${o.min.toFixed(d)} median ${o.median.toFixed(d)} max ${o.max.toFixed(d)}`;
const commitRatios = results.map((x) =>
  x.commitMs.reduce((a, b) => a + b, 0) / x.commitMs.length / x.importMs
);
const growth = results.map((x) => x.growthKiB / versions / x.imageKiB * 100);
console.log(`full import (ms): ${fmt(stats(results.map((x) => x.importMs)), 0)}`);
console.log(
  `commit (ms, average of ${versions} per round): ${
    fmt(stats(results.map((x) => x.commitMs.reduce((a, b) => a + b, 0) / x.commitMs.length)), 0)
  }`,
);
if (!values.cold) {
  const all = results.flatMap((x) => x.aheadMs);
  console.log(
    `tree written ahead while each session was open (ms, not in the commit time): ${
      fmt(stats(all), 0)
    }`,
  );
}
if (!values["keep-trees"]) {
  console.log(
    `previous version's tree removed after each commit (ms, background, not in the commit ` +
      `time): ${fmt(stats(results.flatMap((x) => x.pruneMs)), 0)}`,
  );
}
console.log(`commit / import over ${rounds} rounds: ${fmt(stats(commitRatios))} (target ≤ 0.1×)`);
console.log(
  `disk growth per version (% of the image, ${
    values["keep-trees"] ? "every version's tree kept" : "old versions thin"
  }): ${fmt(stats(growth), 2)} (target ≤ 2 %); ` +
    `${versions} full copies would take ${versions * x0.imageKiB} KiB, ${versions} versions took ` +
    `${x0.growthKiB} KiB`,
);
const med = (xs: number[]) => stats(xs).median;
ratio("images.commit-vs-0.1-import", 0.1 / med(commitRatios), 1);
ratio("images.version-disk-vs-2pct", 2 / med(growth), 1);
