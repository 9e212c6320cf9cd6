// Disk and time cost of image versions against their peer, full copies: an OS tree is imported,
// then 10 versions are committed, each rewriting about 1 % of the image's bytes (whole files, as
// a package upgrade does) through a session (overlay, commit = hard-link copy + upper, files in
// the object store). Targets (issue 12): disk growth per version ≤ 2 % of the image; commit time
// ≤ 0.1× the full import of the same image.
//   deno run -A bench/image_versions_bench.ts [--tree DIR] [--versions N] [--percent P]
import { parseArgs } from "node:util";
import { DataDir } from "../src/datadir.ts";
import { openDatabase } from "../src/db.ts";
import { ImageStore } from "../src/images/store.ts";
import { setLogSink } from "../src/log.ts";

setLogSink(() => {});
const cached = new URL("../.work/minbase/bookworm-minbase-systemd-udev", import.meta.url).pathname;
const { values } = parseArgs({
  args: Deno.args,
  options: {
    tree: { type: "string", default: cached },
    versions: { type: "string", default: "10" },
    percent: { type: "string", default: "1" },
  },
});
const versions = Number(values.versions), percent = Number(values.percent);

const duKiB = (path: string) => {
  const out = new Deno.Command("du", { args: ["-sk", path], stdout: "piped" }).outputSync();
  return Number(new TextDecoder().decode(out.stdout).split("\t")[0]);
};

const work = await Deno.makeTempDir({ prefix: "netroot-versions-bench-" });
try {
  const data = new DataDir(`${work}/data`);
  await data.ensure();
  const db = openDatabase(data.db);
  const store = new ImageStore(data, db);

  let t0 = performance.now();
  const v0 = await store.import(values.tree!, "deb");
  const importMs = performance.now() - t0;
  const imageKiB = duKiB(data.rootfs(v0.id));
  const afterImport = duKiB(data.root);

  // the regular files of the image, biggest first mixed with small ones (a deterministic walk)
  const files: { path: string; size: number }[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory) walk(p);
      else if (e.isFile) {
        files.push({ path: p.slice(data.rootfs(v0.id).length), size: Deno.lstatSync(p).size });
      }
    }
  };
  walk(data.rootfs(v0.id));
  files.sort((a, b) => (a.path < b.path ? -1 : 1));
  const target = v0.size * percent / 100;

  const commitMs: number[] = [];
  let next = 0;
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
    t0 = performance.now();
    const c = await store.sessions.commit(s.id, { madeBy: "shell", command: "bench" });
    commitMs.push(performance.now() - t0);
    if (c.existed) throw new Error("no change committed");
    console.log(
      `version ${v}: ${n} files, ${(changed / 1e6).toFixed(1)} MB rewritten, commit ${
        commitMs.at(-1)!.toFixed(0)
      } ms`,
    );
  }
  const dirs = Number(
    new TextDecoder().decode(
      new Deno.Command("find", { args: [data.rootfs(v0.id), "-type", "d"], stdout: "piped" })
        .outputSync().stdout,
    ).split("\n").length - 1,
  );
  const manifestKiB = duKiB(data.manifest(v0.id));
  console.log(
    `per version, whatever changed: ${dirs} directories (own copies, ~${dirs * 4} KiB) and a ` +
      `${manifestKiB} KiB manifest`,
  );
  const total = duKiB(data.root);
  const growth = total - afterImport;
  const avgCommit = commitMs.reduce((a, b) => a + b, 0) / commitMs.length;
  console.log(
    `image: ${(v0.size / 1e6).toFixed(1)} MB in ${v0.files} entries (du ${imageKiB} KiB)`,
  );
  console.log(`full import: ${importMs.toFixed(0)} ms`);
  console.log(
    `${versions} versions, ${percent} % rewritten each: data dir grew ${growth} KiB = ${
      (growth / versions / imageKiB * 100).toFixed(2)
    } % of the image per version (target ≤ 2 %)`,
  );
  console.log(
    `${versions} full copies would take ${versions * imageKiB} KiB: versions cost ${
      (growth / (versions * imageKiB) * 100).toFixed(2)
    } % of that`,
  );
  console.log(
    `commit: ${avgCommit.toFixed(0)} ms on average = ${(avgCommit / importMs).toFixed(3)}× the ` +
      "full import (target ≤ 0.1×)",
  );
  db.close();
} finally {
  await Deno.remove(work, { recursive: true });
}
