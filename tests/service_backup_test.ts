// `netroot backup` / `netroot restore` with the real CLI, the real server and GNU tar: a backup
// taken while the server runs and another process writes is consistent; restore puts everything
// back and keeps what it replaced; it refuses a running server's data dir and hostile or damaged
// files before touching anything; a backup of an older schema is migrated.
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { openDatabase, schemaVersion, versionOf } from "../src/db.ts";
import { backupTo, restoreFrom } from "../src/service/backup.ts";
import { statvfs } from "../src/linux/fsops.ts";
import { ServerKey } from "../src/nodessh.ts";
import { loopExt4 } from "./support/ext4disk.ts";

const mainTs = fileURLToPath(new URL("../main.ts", import.meta.url));
const fixtures = fileURLToPath(new URL("./fixtures/schema/", import.meta.url));
const dec = new TextDecoder();

async function netroot(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", mainTs, ...args],
    stdin: "null",
    env: { NO_COLOR: "1", NETROOT_DATA: "/nonexistent" },
  }).output();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

async function tar(...args: string[]): Promise<void> {
  const o = await new Deno.Command("tar", { args, stderr: "piped" }).output();
  assert.ok(o.success, dec.decode(o.stderr));
}

/** A running `netroot serve` on `data` (HTTP on a free loopback port). */
async function startServer(data: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", mainTs, "serve", "--data", data, "--http", "127.0.0.1:0"],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let log = "";
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  while (!/http listening .*port=(\d+)/.test(log)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`serve exited:\n${log}`);
    log += value;
  }
  const port = /http listening .*port=(\d+)/.exec(log)![1];
  const drain = (async () => {
    while (!(await reader.read()).done) { /* keep the pipe flowing */ }
  })();
  return {
    base: `http://127.0.0.1:${port}`,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
      await drain;
    },
  };
}

async function addNode(base: string, data: string, mac: string, name: string) {
  const token = (await Deno.readTextFile(join(data, "token"))).trim();
  const r = await fetch(`${base}/api/v1/nodes`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ mac, name }),
  });
  assert.equal(r.status, 201, await r.text());
}

const nodeNames = (dbFile: string) => {
  const db = new DatabaseSync(dbFile, { readOnly: true });
  try {
    return (db.prepare("SELECT name FROM nodes ORDER BY name").all() as { name: string }[])
      .map((r) => r.name);
  } finally {
    db.close();
  }
};

Deno.test("backup while serving and writing is consistent; restore puts it all back", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-backup-" });
  const data = join(dir, "data");
  const server = await startServer(data);
  try {
    await addNode(server.base, data, "52:54:00:00:00:01", "kept-n1");
    // Owner-only, as an admin keeps scripts with a PDU's password in them.
    await Deno.mkdir(join(data, "power"), { mode: 0o700 });
    await Deno.writeTextFile(join(data, "power", "pdu.sh"), "#!/bin/sh\necho on\n", {
      mode: 0o755,
    });
    await Deno.symlink("/usr/bin/true", join(data, "power", "noop"));
    const config = join(dir, "config.json");
    await Deno.writeTextFile(config, '{"http":{"port":8081}}\n');

    // Another process commits pairs of rows as fast as it can while backups are taken.
    const writer = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `import { DatabaseSync } from "node:sqlite";
         const db = new DatabaseSync(${
          JSON.stringify(join(data, "netroot.db"))
        }, { timeout: 5000 });
         const ins = db.prepare("INSERT INTO events (mac, ts, kind, detail) VALUES (NULL, '', ?, ?)");
         const pad = "x".repeat(2000);
         const end = Date.now() + 4000;
         while (Date.now() < end) {
           db.exec("BEGIN IMMEDIATE"); ins.run("pair.a", pad); ins.run("pair.b", pad); db.exec("COMMIT");
         }`,
      ],
      stdout: "null",
    }).spawn();
    const backups: string[] = [];
    for (let i = 0; i < 4; i++) {
      const file = join(dir, `b${i}.tar${i % 2 ? ".zst" : ""}`);
      const r = await netroot("backup", file, "--data", data, "--config", config);
      assert.equal(r.code, 0, r.err);
      assert.match(
        r.out,
        /written to .*: database, token, 2 power program\(s\), settings config\.json/,
      );
      backups.push(file);
    }
    assert.ok((await writer.status).success);
    const pairs: number[] = [];
    for (const file of backups) {
      assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600, "holds the token");
      const x = join(dir, `x-${file.split("/").pop()}`);
      await Deno.mkdir(x);
      await tar("-xf", file, "-C", x);
      const db = new DatabaseSync(join(x, "netroot.db"), { readOnly: true });
      const ok = db.prepare("PRAGMA integrity_check").get() as { integrity_check: string };
      const count = (k: string) =>
        (db.prepare("SELECT count(*) AS n FROM events WHERE kind = ?").get(k) as { n: number }).n;
      assert.equal(ok.integrity_check, "ok");
      assert.equal(count("pair.a"), count("pair.b"), `${file}: a half-committed transaction`);
      pairs.push(count("pair.a"));
      db.close();
    }
    // The writer was at work during the backups: each saw a later state.
    assert.ok(pairs.every((n, i) => i === 0 || n > pairs[i - 1]), `pairs: ${pairs}`);

    // While the server runs, restore refuses and changes nothing.
    const refused = await netroot("restore", backups[0], "--data", data);
    assert.equal(refused.code, 1);
    assert.match(refused.err, /is in use by netroot serve \(pid \d+\): stop it first/);
    assert.equal(refused.err.trim().split("\n").length, 1, refused.err);

    // Changes after the backup: a node, the token, a power program, the settings.
    await addNode(server.base, data, "52:54:00:00:00:02", "added-later");
    await server.stop();
    const token = await Deno.readTextFile(join(data, "token"));
    await Deno.writeTextFile(join(data, "token"), "f".repeat(64) + "\n");
    await Deno.remove(join(data, "power", "pdu.sh"));
    await Deno.writeTextFile(config, '{"http":{"port":9999}}\n');

    const r = await netroot("restore", backups[0], "--data", data, "--config", config);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(nodeNames(join(data, "netroot.db")), ["kept-n1"]);
    assert.equal(await Deno.readTextFile(join(data, "token")), token);
    assert.equal((await Deno.stat(join(data, "token"))).mode! & 0o777, 0o600);
    assert.equal(await Deno.readTextFile(join(data, "power", "pdu.sh")), "#!/bin/sh\necho on\n");
    assert.equal(await Deno.readLink(join(data, "power", "noop")), "/usr/bin/true");
    assert.equal((await Deno.stat(join(data, "power"))).mode! & 0o777, 0o700, "power/ mode");
    assert.equal(await Deno.readTextFile(config), '{"http":{"port":8081}}\n');
    // Nothing lost: what restore replaced is kept.
    const replaced = /the files it replaced: (\S+)/.exec(r.out)?.[1];
    assert.ok(replaced, r.out);
    assert.deepEqual(nodeNames(join(replaced, "netroot.db")), ["added-later", "kept-n1"]);
    assert.equal(await Deno.readTextFile(join(replaced, "token")), "f".repeat(64) + "\n");
    const aside = [...Deno.readDirSync(dir)].find((e) =>
      e.name.startsWith("config.json.replaced-")
    );
    assert.equal(await Deno.readTextFile(join(dir, aside!.name)), '{"http":{"port":9999}}\n');

    // The server starts on the restored state.
    const again = await startServer(data);
    const nodes = await (await fetch(`${again.base}/api/v1/nodes`)).json();
    assert.deepEqual(nodes.map((n: { name: string }) => n.name), ["kept-n1"]);
    await again.stop();
  } finally {
    await server.stop().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

/** A backup of `data` re-packed with `edit` applied to its extracted tree and `tarArgs` added. */
async function forged(
  dir: string,
  good: string,
  edit: (tree: string) => Promise<void>,
  tarArgs: string[] = [],
): Promise<string> {
  const tree = await Deno.makeTempDir({ dir, prefix: "forge-" });
  await tar("-xf", good, "-C", tree);
  await edit(tree);
  const out = `${tree}.tar`;
  const members = [...Deno.readDirSync(tree)].map((e) => e.name);
  await tar("-cf", out, "-C", tree, ...tarArgs, ...members);
  return out;
}

Deno.test("restore refuses hostile and damaged backups before touching the data dir", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-restore-bad-" });
  try {
    const data = join(dir, "data");
    const server = await startServer(data);
    await addNode(server.base, data, "52:54:00:00:00:01", "n1");
    await server.stop();
    const good = join(dir, "good.tar");
    await backupTo(good, { dataDir: data, config: "/nonexistent-config-dir/none.json" }).then(
      () => assert.fail("a missing --config file must fail the backup"),
      (e) => assert.match(e.message, /cannot read the settings file/),
    );
    await backupTo(good, { dataDir: data });
    const token = await Deno.readTextFile(join(data, "token"));
    const cases: [string, Promise<string>, RegExp][] = [
      [
        "a member outside the backup",
        forged(dir, good, async (t) => {
          await Deno.writeTextFile(join(t, "evil"), "x");
        }, ["-P", "--transform=s,^evil$,../evil,"]),
        /unexpected member \.\.\/evil/,
      ],
      [
        "the token as a symlink",
        forged(dir, good, async (t) => {
          await Deno.remove(join(t, "token"));
          await Deno.symlink("/etc/shadow", join(t, "token"));
        }),
        /unexpected member token/,
      ],
      [
        "a device node in power/",
        forged(dir, good, async (t) => {
          await new Deno.Command("mknod", { args: [join(t, "power", "null"), "c", "1", "3"] })
            .output();
        }),
        /unexpected member power\/null/,
      ],
      [
        "the ssh key as a symlink",
        forged(dir, good, async (t) => {
          await Deno.mkdir(join(t, "ssh"));
          await Deno.writeTextFile(join(t, "ssh", "id_ed25519.pub"), "ssh-ed25519 AAAA x\n");
          await Deno.symlink("/etc/shadow", join(t, "ssh", "id_ed25519"));
        }),
        /unexpected member ssh\/id_ed25519$/m,
      ],
      [
        "another file in ssh/",
        forged(dir, good, async (t) => {
          await Deno.mkdir(join(t, "ssh"));
          await Deno.writeTextFile(join(t, "ssh", "known_hosts"), "x\n");
        }),
        /unexpected member ssh\/known_hosts/,
      ],
      [
        "half an ssh key pair",
        forged(dir, good, async (t) => {
          await Deno.mkdir(join(t, "ssh"));
          await Deno.writeTextFile(join(t, "ssh", "id_ed25519"), "x\n");
        }),
        /malformed ssh key pair/,
      ],
      [
        "a damaged database",
        forged(dir, good, async (t) => {
          await Deno.writeTextFile(join(t, "netroot.db"), "SQLite format 3\0 but not really");
        }),
        /the database is damaged/,
      ],
      [
        "a newer schema",
        forged(dir, good, (t) => {
          const db = new DatabaseSync(join(t, "netroot.db"));
          db.exec(`PRAGMA user_version = ${schemaVersion + 1}`);
          db.close();
          return Promise.resolve();
        }),
        new RegExp(`newer netroot \\(schema ${schemaVersion + 1}.*upgrade netroot first`),
      ],
      [
        // Restore joined these names to config/ and /etc/netroot: a file outside the backup was
        // copied over the settings file (or one outside /etc/netroot moved aside).
        "a settings name that climbs out",
        forged(dir, good, async (t) => {
          const m = JSON.parse(await Deno.readTextFile(join(t, "netroot-backup.json")));
          m.config = ["../".repeat(30) + join(dir, "secret").slice(1)];
          await Deno.writeTextFile(join(t, "netroot-backup.json"), JSON.stringify(m));
        }),
        /netroot-backup\.json names files that are not in a netroot backup/,
      ],
      [
        // It passed the checks, replaced the data dir's database, then failed: "no such table".
        "a database that is not netroot's",
        forged(dir, good, async (t) => {
          await Deno.remove(join(t, "netroot.db"));
          const db = new DatabaseSync(join(t, "netroot.db"));
          db.exec(`CREATE TABLE other (x TEXT); PRAGMA user_version = ${schemaVersion}`);
          db.close();
        }),
        /not a netroot database \(no column /,
      ],
      [
        // netroot's table names at the current user_version, not its columns: restored, and the
        // next start failed on "no such column".
        "a database with netroot's tables but not their columns",
        forged(dir, good, async (t) => {
          await Deno.remove(join(t, "netroot.db"));
          const db = new DatabaseSync(join(t, "netroot.db"));
          for (const table of ["nodes", "node_settings", "leases", "boots", "vnodes"]) {
            db.exec(`CREATE TABLE ${table} (x TEXT)`);
          }
          db.exec(`CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT);
            CREATE TABLE images (id TEXT PRIMARY KEY, name TEXT, current INTEGER, created_at TEXT,
              size INTEGER, files INTEGER, kernel TEXT, initrd TEXT, kernel_version TEXT,
              bootable INTEGER, reason TEXT, made_by TEXT, command TEXT, parent TEXT);
            PRAGMA user_version = ${schemaVersion}`);
          db.close();
        }),
        /not a netroot database \(no column nodes\.mac, /,
      ],
      [
        // A 110 KiB file: restore read the token whole (2.5 minutes, 6.3 GB of memory, then a
        // TypeError's stack trace).
        "a sparse 6 GiB token",
        forged(dir, good, (t) => Deno.truncate(join(t, "token"), 6 * 2 ** 30), ["--sparse"]),
        /token holds 6442450944 bytes \(at most 1024\)/,
      ],
      [
        // Extracted into the data dir's tmp/ until the file system was full.
        "a database larger than the data dir's free space",
        forged(dir, good, async (t) => {
          const free = statvfs(dir).freeBytes;
          await Deno.truncate(join(t, "netroot.db"), free + (1 << 30));
        }, ["--sparse"]),
        /extracts to \d+ bytes, more than the \d+ free for /,
      ],
      [
        "no database",
        forged(dir, good, (t) => Deno.remove(join(t, "netroot.db"))),
        /not a netroot backup: no netroot\.db/,
      ],
      [
        "not a tar",
        Deno.writeTextFile(join(dir, "junk"), "junk".repeat(300)).then(() => join(dir, "junk")),
        /tar: /,
      ],
    ];
    await Deno.writeTextFile(join(dir, "secret"), "not the backup's\n", { mode: 0o600 });
    const config = join(dir, "config.json");
    await Deno.writeTextFile(config, "{}\n");
    for (const [what, file, error] of cases) {
      const r = await netroot("restore", await file, "--data", data, "--config", config);
      assert.equal(r.code, 1, `${what}: ${r.out}`);
      assert.match(r.err, error, `${what}: ${r.err}`);
      assert.equal(r.err.trim().split("\n").length, 1, `${what}: one line\n${r.err}`);
      assert.ok(!existsSync(join(dir, "evil")), what);
      assert.equal(await Deno.readTextFile(config), "{}\n", what);
      assert.deepEqual(nodeNames(join(data, "netroot.db")), ["n1"], what);
      assert.equal(await Deno.readTextFile(join(data, "token")), token, what);
      assert.ok(![...Deno.readDirSync(data)].some((e) => e.name.startsWith("replaced-")), what);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore onto a new machine gives back the server's ssh key, the one the nodes accept", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-backup-ssh-" });
  try {
    const data = join(dir, "data");
    const server = await startServer(data);
    await addNode(server.base, data, "52:54:00:00:00:01", "n1");
    await server.stop();
    // The key every node that booted holds in its authorized_keys (made at the first boot script).
    const pub = new ServerKey(join(data, "ssh")).publicKey();
    const file = join(dir, "b.tar");
    const b = await netroot("backup", file, "--data", data);
    assert.equal(b.code, 0, b.err);
    assert.match(b.out, /: database, token, ssh key$/m);

    // A new machine (a fresh data dir): without the key, the server made a new one, which no
    // running node accepted (node run and clean reboots failed until each was power-cycled).
    const fresh = join(dir, "fresh");
    const r = await netroot("restore", file, "--data", fresh);
    assert.equal(r.code, 0, r.err);
    assert.equal(new ServerKey(join(fresh, "ssh")).publicKey(), pub);
    assert.deepEqual(
      await Deno.readFile(join(fresh, "ssh", "id_ed25519")),
      await Deno.readFile(join(data, "ssh", "id_ed25519")),
    );
    assert.equal((await Deno.stat(join(fresh, "ssh", "id_ed25519"))).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(join(fresh, "ssh"))).mode! & 0o777, 0o700);

    // Over a data dir with a key of its own: that one is kept aside with the rest, owner-only.
    const other = join(dir, "other");
    const otherPub = new ServerKey(join(other, "ssh")).publicKey();
    assert.notEqual(otherPub, pub);
    const again = await netroot("restore", file, "--data", other);
    assert.equal(again.code, 0, again.err);
    assert.equal(new ServerKey(join(other, "ssh")).publicKey(), pub);
    const replaced = /the files it replaced: (\S+)/.exec(again.out)?.[1];
    assert.ok(replaced, again.out);
    assert.equal(
      (await Deno.readTextFile(join(replaced, "ssh", "id_ed25519.pub"))).trim(),
      otherPub,
    );
    assert.equal((await Deno.stat(replaced)).mode! & 0o777, 0o700);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a backup interrupted (SIGINT, SIGTERM, SIGHUP) leaves no copy of the database or the token behind", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-backup-int-" });
  try {
    const data = join(dir, "data");
    const server = await startServer(data);
    await server.stop();
    // 150 MB of events that do not compress: the backup takes seconds in xz.
    const db = new DatabaseSync(join(data, "netroot.db"));
    db.exec(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 150000)
      INSERT INTO events (mac, ts, kind, detail)
      SELECT NULL, '2026-01-01', 'filler', hex(randomblob(500)) FROM c`);
    db.close();
    const systemTmp = join(dir, "systmp");
    const out = join(dir, "out");
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      await Deno.mkdir(systemTmp);
      await Deno.mkdir(out);
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", mainTs, "backup", join(out, "b.tar.xz"), "--data", data],
        stdin: "null",
        stdout: "null",
        stderr: "null",
        env: { NO_COLOR: "1", TMPDIR: systemTmp },
      }).spawn();
      // Once the database is copied and tar writes the file (its partial name beside it).
      while (![...Deno.readDirSync(out)].some((e) => e.name.endsWith(".partial"))) {
        await new Promise((r) => setTimeout(r, 20));
      }
      child.kill(sig);
      const status = await child.status;
      assert.ok(!status.success, sig);
      const left = [systemTmp, out, join(data, "tmp")].flatMap((d) =>
        [...Deno.readDirSync(d)].map((e) => join(d, e.name))
      );
      // Before: the system's /tmp kept the database's copy (and the token), for good.
      assert.deepEqual(left, [], `${sig}: left behind`);
      await Deno.remove(systemTmp);
      await Deno.remove(out);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** `dir`/old: a data dir whose database is the schema-v1 fixture, with an API token. */
async function schemaV1DataDir(dir: string): Promise<string> {
  const old = join(dir, "old");
  await Deno.mkdir(old);
  const db = new DatabaseSync(join(old, "netroot.db"));
  db.exec(await Deno.readTextFile(join(fixtures, "v1.sql")));
  db.close();
  await Deno.writeTextFile(join(old, "token"), "c".repeat(64) + "\n", { mode: 0o600 });
  return old;
}

Deno.test("restore of a backup from an older schema migrates it and names the missing images", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-restore-old-" });
  try {
    const old = await schemaV1DataDir(dir);
    const file = join(dir, "old.tar.gz");
    const made = await backupTo(file, { dataDir: old });
    assert.equal(made.manifest.schemaVersion, 1);
    const fresh = join(dir, "fresh");
    const r = await restoreFrom(file, { dataDir: fresh });
    assert.equal(r.replaced, undefined, "nothing to replace in a new data dir");
    assert.deepEqual(r.missingImages, ["debian12"]);
    const after = new DatabaseSync(join(fresh, "netroot.db"), { readOnly: true });
    assert.equal(versionOf(after), schemaVersion);
    after.close();
    assert.deepEqual(nodeNames(join(fresh, "netroot.db")), ["rack1-n1", "vm1"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore (root, loop ext4): a power cut after it returns leaves the restored database and token, not empty files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-restore-cut-" });
  const disk = await loopExt4(64);
  try {
    const old = await schemaV1DataDir(dir);
    openDatabase(join(old, "netroot.db")).close(); // the current schema: restore has nothing to migrate
    const data = await disk.freshDir("data");
    const file = join(disk.mnt, "old.tar");
    await backupTo(file, { dataDir: old });
    await restoreFrom(file, { dataDir: data });
    // Any journal commit afterwards (ext4's 5 s timer, the server started on it), then the cut.
    disk.cutAfterCommit();
    assert.equal(Deno.readTextFileSync(join(data, "token")), "c".repeat(64) + "\n");
    // An empty netroot.db would open as a new, empty database: the next start would then remove
    // every image tree as having no row.
    assert.ok(Deno.statSync(join(data, "netroot.db")).size > 0, "netroot.db is empty");
    assert.deepEqual(nodeNames(join(data, "netroot.db")), ["rack1-n1", "vm1"]);
  } finally {
    await disk.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("backup (root, mount namespace): /etc/netroot/config.json as a symlink is saved, then restored", async () => {
  // Configuration management links /etc/netroot/config.json to the file it manages. The backup
  // took regular files only: the settings were not in it, and nothing said so.
  const dir = await Deno.makeTempDir({ prefix: "nr-backup-cfglink-" });
  try {
    const old = await schemaV1DataDir(dir);
    const managed = join(dir, "managed.json");
    await Deno.writeTextFile(managed, '{"http":{"port":81}}\n');
    for (const d of ["upper", "work"]) await Deno.mkdir(join(dir, d));
    const file = join(dir, "b.tar");
    // /etc of this namespace only: an overlay whose writes go to dir/upper, gone with it.
    const o = await new Deno.Command("unshare", {
      args: [
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-ec",
        `mount -t overlay overlay -o lowerdir=/etc,upperdir=${dir}/upper,workdir=${dir}/work /etc
         mkdir /etc/netroot && ln -s "${managed}" /etc/netroot/config.json
         exec "$0" run -A "${mainTs}" backup "${file}" --data "${old}"`,
        Deno.execPath(),
      ],
      stdin: "null",
      env: { NO_COLOR: "1" },
    }).output();
    assert.ok(o.success, dec.decode(o.stderr));
    assert.match(dec.decode(o.stdout), /config\.json|settings/, dec.decode(o.stdout));
    const members = dec.decode(
      (await new Deno.Command("tar", { args: ["-tf", file] }).output()).stdout,
    );
    assert.match(members, /^config\/config\.json$/m);
    const restored = join(dir, "restored.json");
    const r = await netroot("restore", file, "--data", join(dir, "new"), "--config", restored);
    assert.equal(r.code, 0, r.err);
    assert.equal(await Deno.readTextFile(restored), '{"http":{"port":81}}\n');
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
