// Deploy of 1, 100 and 1,000 nodes, server time (database transaction + atomic symlink flips +
// deploy events + reboot requests), against the peer measured in the same run: WalT flips each
// node with its own `ln -sfn` process. Target: 100 nodes in under 1 s.
//   deno run -A bench/deploy_bench.ts
import { DataDir } from "../src/datadir.ts";
import { openDatabase, tx } from "../src/db.ts";
import { ImageStore } from "../src/images/store.ts";
import { flipSymlink, linkTarget, NodeRegistry } from "../src/nodes.ts";
import { Rebooter } from "../src/reboot.ts";
import { quick, ratio } from "./ratio.ts";

const sizes = quick ? [100] : [1, 100, 1000];
const runs = 3;

const dir = await Deno.makeTempDir({ prefix: "nr-deploy-bench-" });
try {
  const data = new DataDir(dir);
  await data.ensure();
  const db = openDatabase(data.db);
  const rebooter = new Rebooter(db);
  const images = new ImageStore(data, db);
  const nodes = new NodeRegistry(data, db, images, rebooter, new EventTarget());
  const ids = ["a1", "b2"].map((x) => x.repeat(32));
  const max = Math.max(...sizes);
  tx(db, () => {
    ids.forEach((id, i) => {
      db.prepare(
        `INSERT INTO images (id, name, created_at, size, files, bootable)
         VALUES (?, ?, ?, 0, 0, 1)`,
      ).run(id, `img${i}`, new Date().toISOString());
      Deno.mkdirSync(data.rootfs(id), { recursive: true });
    });
    for (let i = 0; i < max; i++) {
      const mac = `52:54:00:be:${(i >> 8).toString(16).padStart(2, "0")}:${
        (i & 255).toString(16).padStart(2, "0")
      }`;
      db.prepare("INSERT INTO nodes (mac, name, image_id, created_at) VALUES (?, ?, ?, ?)")
        .run(mac, `n${i}`, ids[0], new Date().toISOString());
    }
  });
  await nodes.reconcile(); // creates every node's dir and link
  const all = nodes.list();

  const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  let flip = 0;
  const ours = async (n: number) => {
    const refs = all.slice(0, n).map((x) => x.name);
    const t0 = performance.now();
    await nodes.deploy(refs, `img${++flip % 2}`);
    return performance.now() - t0;
  };
  const peer = async (n: number) => {
    const t0 = performance.now();
    for (const node of all.slice(0, n)) {
      const st = await new Deno.Command("ln", {
        args: ["-sfn", linkTarget(ids[++flip % 2]), data.nodeFs(node.mac)],
      }).output();
      if (!st.success) throw new Error("ln -sfn failed");
    }
    return performance.now() - t0;
  };

  /** The filesystem's own cost: the same flips without database, events or reboots. */
  const floor = (n: number) => {
    const t0 = performance.now();
    for (const node of all.slice(0, n)) {
      flipSymlink(data.nodeFs(node.mac), linkTarget(ids[++flip % 2]));
    }
    return performance.now() - t0;
  };

  await ours(10); // warm up the JIT and SQLite statement caches
  console.log(
    "deploy: netroot (one transaction + rename(2) flips) vs peer (one `ln -sfn` per node)",
  );
  console.log(
    "nodes   netroot ms   per node µs   fs floor ms   peer ms   ratio (peer/netroot)",
  );
  const results: Record<number, number> = {};
  for (const n of sizes) {
    const a: number[] = [];
    const b: number[] = [];
    const f: number[] = [];
    for (let r = 0; r < runs; r++) {
      a.push(await ours(n));
      f.push(floor(n));
      b.push(await peer(n));
    }
    const [ma, mb, mf] = [median(a), median(b), median(f)];
    results[n] = ma;
    console.log(
      `${String(n).padStart(5)}   ${ma.toFixed(1).padStart(10)}   ${
        (ma * 1000 / n).toFixed(0).padStart(11)
      }   ${mf.toFixed(1).padStart(11)}   ${mb.toFixed(1).padStart(7)}   ${
        (mb / ma).toFixed(1).padStart(6)
      }x`,
    );
  }
  console.log(
    `target 100 nodes < 1000 ms: ${results[100].toFixed(1)} ms — ${
      results[100] < 1000 ? "met" : "MISSED"
    }`,
  );
  ratio("deploy.100-nodes-vs-1s", 1000 / results[100], 1.0);
  await nodes.reconcile();
  db.close();
} finally {
  await Deno.remove(dir, { recursive: true });
}
