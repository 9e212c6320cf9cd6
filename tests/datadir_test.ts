import assert from "node:assert/strict";
import { DataDir } from "../src/datadir.ts";

Deno.test("a node's /persist: made owner-only (parents too), again without harm; a stray file in its place is an error and stays as it was", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = new DataDir(dir);
    await data.ensure();
    const mac = "02:00:00:00:00:01";
    data.makePersist(mac);
    assert.equal(Deno.statSync(data.persist(mac)).mode! & 0o777, 0o700);
    Deno.chmodSync(data.persist(mac), 0o755); // an older, wider one is narrowed
    data.makePersist(mac);
    assert.equal(Deno.statSync(data.persist(mac)).mode! & 0o777, 0o700);

    const other = "02:00:00:00:00:02";
    Deno.mkdirSync(data.persist(other).replace(/\/persist$/, ""), { recursive: true });
    Deno.writeTextFileSync(data.persist(other), "not a dir", { mode: 0o644 });
    assert.throws(() => data.makePersist(other), /exists and is not a directory/);
    assert.equal(Deno.statSync(data.persist(other)).mode! & 0o777, 0o644);
    assert.equal(Deno.readTextFileSync(data.persist(other)), "not a dir");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ensure: the object store's 256 fan-out directories, owner-only; tmp/ the top of unrelated trees (chattr +T) where the file system has the flag", async () => {
  const root = await Deno.makeTempDir({ prefix: "netroot-datadir-test-" });
  try {
    const d = new DataDir(`${root}/data`);
    await d.ensure();
    await d.ensure(); // again on an existing store
    const fanout = [...Deno.readDirSync(d.objects)].map((e) => e.name).sort();
    assert.equal(fanout.length, 256);
    assert.deepEqual([fanout[0], fanout[255]], ["00", "ff"]);
    assert.equal(Deno.statSync(`${d.objects}/a7`).mode! & 0o777, 0o700);
    // an image version imported by an older netroot (its directory 0755) is narrowed at start
    Deno.mkdirSync(d.image("0123abcd"), { mode: 0o755 });
    Deno.chmodSync(d.image("0123abcd"), 0o755);
    await d.ensure();
    assert.equal(Deno.statSync(d.image("0123abcd")).mode! & 0o777, 0o700);
    const fsType = new Deno.Command("stat", { args: ["-f", "-c", "%T", d.tmp] }).outputSync();
    if (new TextDecoder().decode(fsType.stdout).trim() === "ext2/ext3") { // ext2, 3 and 4
      const lsattr = new Deno.Command("lsattr", { args: ["-d", d.tmp] }).outputSync();
      assert.match(new TextDecoder().decode(lsattr.stdout).split(" ")[0], /T/);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a node's root that makes its /persist 0755 with a set-uid root program in it: no local user of the server reaches it (attacker; root)", async () => {
  if (Deno.uid() !== 0) throw new Error("this test needs root (chown, setpriv)");
  const dir = await Deno.makeTempDir();
  try {
    Deno.chmodSync(dir, 0o755);
    const data = new DataDir(`${dir}/data`);
    await data.ensure();
    const mac = "02:00:00:00:00:01";
    data.makePersist(mac);
    // What the node's root does over NFS (root kept on its own /persist).
    Deno.chmodSync(data.persist(mac), 0o755);
    Deno.chmodSync(data.persist(mac).replace(/\/persist$/, ""), 0o755);
    const rootId = `${data.persist(mac)}/rootid`;
    Deno.copyFileSync("/usr/bin/id", rootId);
    Deno.chmodSync(rootId, 0o4755);
    const asUser = (uid: number, gid: number) =>
      new Deno.Command("setpriv", {
        // Through a shell: setpriv's own exec looks the path up with root's capabilities still
        // held (they go at the exec), a user's process would not.
        args: [`--reuid=${uid}`, `--regid=${gid}`, "--clear-groups", "sh", "-c", '"$0" -u', rootId],
        stdout: "piped",
        stderr: "piped",
      }).outputSync();
    const user = asUser(1000, 1000);
    assert.equal(
      user.success,
      false,
      `a local user ran it: ${new TextDecoder().decode(user.stdout)}`,
    );
    assert.match(new TextDecoder().decode(user.stderr), /Permission denied/);
    // A client the NFS server squashed (nobody:nogroup) still passes through nodes/ to an export.
    const squashed = asUser(65534, 65534);
    assert.equal(new TextDecoder().decode(squashed.stdout).trim(), "0", "the walk to an export");
    assert.equal(Deno.statSync(data.nodes).mode! & 0o777, 0o710);
    assert.equal(Deno.statSync(data.nodes).gid, 65534);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
