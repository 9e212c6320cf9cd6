// kill -9 of `netroot serve` during big deploys: after every restart database and tree agree,
// and each deploy is all-or-nothing (every node on the same image, deploy events in whole sets).
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DataDir } from "../src/datadir.ts";
import { openDatabase, tx } from "../src/db.ts";
import { linkTarget } from "../src/nodes.ts";

const mainTs = fileURLToPath(new URL("../main.ts", import.meta.url));
const N = 1000;
const rounds = 8;

/** kill -9 of the server (and its process group), then wait for it. */
async function kill9(child: Deno.ChildProcess): Promise<void> {
  try {
    Deno.kill(-child.pid, "SIGKILL");
  } catch {
    child.kill("SIGKILL");
  }
  await child.status;
}

interface Server {
  child: Deno.ChildProcess;
  base: string;
  log: string[];
}

/** Starts `netroot serve` on a loopback port chosen by the kernel; resolves once it listens. */
async function start(dataDir: string): Promise<Server> {
  // In its own process group (setsid execs in place: same PID), so that the kill can take the
  // server's child processes (tar, cp of an import) with it, as a service manager does
  // (systemd kills the unit's whole cgroup). A killed server's orphaned `cp` would otherwise keep
  // writing into tmp/ while the restarted server cleans it.
  const child = new Deno.Command("setsid", {
    args: [
      Deno.execPath(),
      "run",
      "-A",
      mainTs,
      "serve",
      "--data",
      dataDir,
      "--http",
      "127.0.0.1:0",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log: string[] = [];
  const port = Promise.withResolvers<number>();
  // Keep draining stderr for the whole life of the child: a full pipe would block its logging.
  (async () => {
    let buf = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      const lines = buf.split("\n");
      buf = lines.pop()!;
      for (const line of lines) {
        log.push(line);
        const m = /http listening .*port=(\d+)/.exec(line);
        if (m) port.resolve(Number(m[1]));
      }
    }
    port.reject(new Error(`server exited before listening:\n${log.join("\n")}`));
  })();
  const timer = setTimeout(() => port.reject(new Error("server did not listen in 30 s")), 30_000);
  try {
    return { child, base: `http://127.0.0.1:${await port.promise}/api/v1`, log };
  } catch (e) {
    await kill9(child);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

interface State {
  /** image id per node, from the database */
  images: Set<string | null>;
  /** nodes whose fs link does not say what their row says */
  disagree: number;
  tmpLinks: number;
  deployEvents: number;
}

function inspect(data: DataDir): State {
  const db = openDatabase(data.db);
  try {
    const rows = db.prepare("SELECT mac, image_id FROM nodes").all() as {
      mac: string;
      image_id: string | null;
    }[];
    let disagree = 0;
    for (const r of rows) {
      let link: string | null = null;
      try {
        link = readlinkSync(data.nodeFs(r.mac));
      } catch { /* absent */ }
      if (link !== (r.image_id && linkTarget(r.image_id))) disagree++;
    }
    let tmpLinks = 0;
    for (const mac of readdirSync(data.nodes)) {
      tmpLinks += readdirSync(data.node(mac)).filter((e) => e.includes(".tmp-")).length;
    }
    const deployEvents = (db.prepare("SELECT count(*) AS n FROM events WHERE kind = 'deploy'")
      .get() as { n: number }).n;
    return { images: new Set(rows.map((r) => r.image_id)), disagree, tmpLinks, deployEvents };
  } finally {
    db.close();
  }
}

function assertConsistent(s: State, when: string): void {
  assert.equal(s.disagree, 0, `${when}: ${s.disagree} fs links disagree with the database`);
  assert.equal(s.tmpLinks, 0, `${when}: temporary links left behind`);
  assert.equal(s.images.size, 1, `${when}: nodes on ${s.images.size} different images`);
  assert.equal(s.deployEvents % N, 0, `${when}: ${s.deployEvents} deploy events (torn deploy)`);
}

Deno.test({
  name: `crash: kill -9 at random points of ${N}-node deploys; restart leaves db and tree agreeing`,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nr-crash-" });
    const data = new DataDir(dir);
    await data.ensure();
    // The state an import and N registrations leave: two bootable images, N nodes on the first.
    const ids = ["1a", "2b"].map((x) => x.repeat(32));
    const db = openDatabase(data.db);
    tx(db, () => {
      ids.forEach((id, i) => {
        db.prepare(
          `INSERT INTO images (id, name, created_at, size, files, bootable)
           VALUES (?, ?, ?, 0, 0, 1)`,
        ).run(id, `img${i}`, new Date().toISOString());
        mkdirSync(data.rootfs(id), { recursive: true });
        Deno.writeTextFileSync(data.manifest(id), ""); // a tree without one reads as damaged
      });
      const add = db.prepare(
        "INSERT INTO nodes (mac, name, image_id, created_at) VALUES (?, ?, ?, ?)",
      );
      for (let i = 0; i < N; i++) {
        const mac = `52:54:00:c0:${(i >> 8).toString(16).padStart(2, "0")}:${
          (i & 255).toString(16).padStart(2, "0")
        }`;
        add.run(mac, `n${i}`, ids[0], new Date().toISOString());
      }
    });
    db.close();
    const firstMac = "52:54:00:c0:00:00";
    const names = Array.from({ length: N }, (_, i) => `n${i}`);

    let server: Server | undefined;
    let torn = 0;
    let completed = 0;
    try {
      let deployMs = 0;
      for (let round = 0; round <= rounds; round++) {
        server = await start(dir);
        // The start's reconcile must have repaired whatever the previous kill left.
        assertConsistent(inspect(data), `after restart ${round}`);
        if (round === rounds) break;
        const token = Deno.readTextFileSync(data.token).trim();
        const t0 = performance.now();
        const request = fetch(`${server.base}/deploy`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ nodes: names, image: `img${(round + 1) % 2}` }),
        }).then(async (r) => {
          assert.equal(r.status, 200, await r.text());
          return true;
        }, () => false);
        if (round === 0) {
          // A whole deploy first, to learn how long one takes on this machine.
          assert.ok(await request);
          deployMs = performance.now() - t0;
        } else if (round % 2) {
          // Right after the first link flips: inside the transaction, mid-flip.
          const link = data.nodeFs(firstMac);
          const from = readlinkSync(link);
          while (readlinkSync(link) === from && performance.now() - t0 < 30_000) {
            await new Promise((r) => setTimeout(r, 1));
          }
        } else {
          // Anywhere from before the request is read to after the answer.
          await new Promise((r) => setTimeout(r, deployMs * 1.2 * Math.random()));
        }
        await kill9(server.child);
        if (round > 0 && await request) completed++;
        const before = inspect(data);
        if (before.disagree > 0 || before.tmpLinks > 0) torn++;
        server = undefined;
      }
      // The mid-flip kills must have caught at least one deploy half done, or this test proved
      // nothing about recovery.
      assert.ok(torn > 0, "no kill landed inside a deploy");
      console.log(
        `deploy of ${N} nodes ≈ ${deployMs.toFixed(0)} ms over HTTP; ${rounds - 1} kills: ` +
          `${completed} after the answer, ${torn} left a torn tree that the restart repaired`,
      );
    } finally {
      if (server) {
        await kill9(server.child);
      }
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Image rows and image trees agree: every row has its manifest and rootfs, every tree a row,
 *  and no half-imported scratch tree is left in tmp/. */
function inspectImages(data: DataDir): { names: string[]; problems: string[] } {
  const db = openDatabase(data.db);
  try {
    const rows = db.prepare("SELECT id, name FROM images").all() as { id: string; name: string }[];
    const ids = rows.map((r) => r.id);
    const problems: string[] = [];
    for (const id of ids) {
      for (const p of [data.manifest(id), data.rootfs(id)]) {
        try {
          Deno.lstatSync(p);
        } catch {
          problems.push(`row ${id.slice(0, 12)} without ${p}`);
        }
      }
    }
    for (const d of readdirSync(data.images)) {
      if (!ids.includes(d)) problems.push(`tree ${d.slice(0, 12)} without a row`);
    }
    for (const d of readdirSync(data.tmp)) problems.push(`leftover tmp/${d}`);
    return { names: rows.map((r) => r.name), problems };
  } finally {
    db.close();
  }
}

Deno.test({
  name: "crash: kill -9 at random points of image imports; restart leaves rows and trees agreeing",
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nr-crash-" });
    const data = new DataDir(join(dir, "data"));
    const src = join(dir, "src");
    // A directory tree of a few thousand small files: long enough to be killed inside.
    for (let d = 0; d < 40; d++) {
      mkdirSync(join(src, "usr", `d${d}`), { recursive: true });
      for (let f = 0; f < 50; f++) {
        Deno.writeTextFileSync(join(src, "usr", `d${d}`, `f${f}`), `${d}/${f}\n`.repeat(f + 1));
      }
    }
    let server: Server | undefined;
    const answered: string[] = [];
    let names: string[] = [];
    let torn = 0;
    try {
      let importMs = 0;
      for (let round = 0; round <= rounds; round++) {
        server = await start(data.root);
        const state = inspectImages(data);
        assert.deepEqual(state.problems, [], `after restart ${round}`);
        // An import that was answered is durable.
        for (const name of answered) assert.ok(state.names.includes(name), `${name} lost`);
        names = state.names;
        if (round === rounds) break;
        // New content every round, so each import makes a new image.
        Deno.writeTextFileSync(join(src, "round"), `${round}\n`);
        const token = Deno.readTextFileSync(data.token).trim();
        const t0 = performance.now();
        const request = fetch(`${server.base}/images`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ path: src, name: `img-${round}` }),
        }).then(async (r) => {
          assert.equal(r.status, 201, await r.text());
          return true;
        }, () => false);
        if (round === 0) {
          assert.ok(await request);
          importMs = performance.now() - t0;
        } else if (round === 1) {
          // One kill surely inside an import: as soon as its scratch tree exists in tmp/.
          for (let t = 0; t < 1000 && readdirSync(data.tmp).length === 0; t++) {
            await new Promise((r) => setTimeout(r, 5));
          }
        } else {
          await new Promise((r) => setTimeout(r, importMs * 1.2 * Math.random()));
        }
        await kill9(server.child);
        if (await request) answered.push(`img-${round}`);
        if (inspectImages(data).problems.length) torn++;
        server = undefined;
      }
      assert.ok(torn > 0, "no kill landed inside an import");
      console.log(
        `import of 2,000 files ≈ ${importMs.toFixed(0)} ms over HTTP; ${rounds - 1} kills: ` +
          `${answered.length - 1} after the answer, ${torn} left a half import that the restart ` +
          `cleaned, ${names.length - 1} imports complete`,
      );
    } finally {
      if (server) {
        await kill9(server.child);
      }
      await Deno.remove(dir, { recursive: true });
    }
  },
});
