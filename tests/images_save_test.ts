// `node save` on the server side (root): a real overlayfs upper made on this host over an image's
// tree, tarred with GNU tar as a node would, becomes a new version on top of the image the node
// booted, deletions (whiteouts, opaque directories) included. Hostile tarballs are refused.
import assert from "node:assert/strict";
import { existsSync, lstatSync } from "node:fs";
import { dirname } from "node:path";
import { MNT_DETACH, mount, umount } from "../src/linux/mount.ts";
import { statvfs } from "../src/linux/fsops.ts";
import { UserError } from "../src/errors.ts";
import { removeXattr, setXattr } from "../src/linux/xattr.ts";
import { type NodeInfo, NodeRegistry } from "../src/nodes.ts";
import { Rebooter } from "../src/reboot.ts";
import { fetchUpper, saveLiveNode, saveNode } from "../src/images/save.ts";
import { publish } from "../src/images/versions.ts";
import { openBoot, recordStage } from "../src/boots.ts";
import { committedText } from "../src/cli/imagework.ts";
import { setLogSink } from "../src/log.ts";
import type { Context } from "../src/context.ts";
import { type PowerServer, waitFor, withPowerServer } from "./support/power.ts";
import { type FakeNodeSshd, startSshd } from "./support/sshd.ts";
import { MANIFEST_HEADER, manifestText, parseManifest } from "../contract/manifest.ts";
import { leaveOutMachineState } from "../src/images/machinestate.ts";
import { indexBase } from "../src/images/derive.ts";
import type { ObjectStore } from "../src/images/objects.ts";
import { scanTree } from "../src/images/walk.ts";
import { installServerKey, keyMarker } from "../overlay/sshkey.ts";
import { buildSampleTree, dirEntries, fixTimes, sh, tarOf, tempStore } from "./images_helpers.ts";

async function setup(dataRoot?: string, more?: (root: string) => void) {
  const t = await tempStore(dataRoot);
  buildSampleTree(`${t.dir}/src`);
  if (more) {
    more(`${t.dir}/src`);
    fixTimes(`${t.dir}/src`);
  }
  const base = await t.store.import(`${t.dir}/src`, "deb");
  const nodes = new NodeRegistry(t.data, t.db, t.store, new Rebooter(t.db), new EventTarget());
  nodes.add("52:54:00:00:00:11", { name: "n1" });
  await nodes.deploy(["n1"], "deb", { reboot: false });
  t.db.prepare("INSERT INTO boots (token, mac, image_id, started_at) VALUES (?, ?, ?, ?)")
    .run("tok", "52:54:00:00:00:11", base.id, new Date().toISOString());
  const ctx = { db: t.db, nodes, images: t.store };
  return { t, base, nodes, ctx };
}

/** Mounts an overlay over `lower` like the node's init does, runs `change` on it, unmounts and
 *  tars the upper with GNU tar the way `node save` asks the node to. */
function upperTarball(dir: string, lower: string, change: (root: string) => void): string {
  for (const d of ["upper", "work", "merged"]) Deno.mkdirSync(`${dir}/${d}`, { recursive: true });
  mount(
    "overlay",
    `${dir}/merged`,
    "overlay",
    0, // the node's options: kernel defaults
    `lowerdir=${lower},upperdir=${dir}/upper,workdir=${dir}/work`,
  );
  try {
    change(`${dir}/merged`);
  } finally {
    umount(`${dir}/merged`, MNT_DETACH);
  }
  tarOf(`${dir}/upper`, `${dir}/upper.tar`);
  return `${dir}/upper.tar`;
}

const manifestOf = (t: Awaited<ReturnType<typeof tempStore>>, id: string) =>
  new Map(parseManifest(Deno.readTextFileSync(t.data.manifest(id))).map((e) => [e.path, e]));

Deno.test("node save: a real overlay upper (tar) with deletions becomes a version on the booted image", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs)");
  const { t, base, nodes, ctx } = await setup();
  try {
    const tar = upperTarball(`${t.dir}/node`, t.data.rootfs(base.id), (r) => {
      Deno.removeSync(`${r}/etc/hostname`);
      Deno.removeSync(`${r}/home/user`, { recursive: true });
      Deno.mkdirSync(`${r}/home/user`);
      Deno.writeTextFileSync(`${r}/home/user/only`, "only this\n");
      Deno.writeTextFileSync(`${r}/etc/passwd`, "root:x:0:0::/root:/bin/bash\n");
      Deno.writeTextFileSync(`${r}/etc/new`, "new\n");
    });
    // what overlayfs wrote: a whiteout and an opaque directory
    assert.ok(Deno.lstatSync(`${t.dir}/node/upper/etc/hostname`).isCharDevice);
    const v = await saveNode(ctx, "n1", "deb", tar, "netroot node save n1 deb");
    assert.equal(v.madeBy, "save");
    assert.equal(v.parent, base.id);
    const m = manifestOf(t, v.id);
    assert.equal(m.has("/etc/hostname"), false, "the deletion is kept (WalT loses it)");
    assert.deepEqual(
      [...m.keys()].filter((p) => p.startsWith("/home/user/")),
      ["/home/user/only"],
      "opaque: the image's old files in that directory are gone",
    );
    assert.equal(
      Deno.readTextFileSync(`${t.data.rootfs(v.id)}/etc/passwd`),
      "root:x:0:0::/root:/bin/bash\n",
    );
    assert.ok(m.has("/etc/new"));
    assert.ok(m.has("/usr/bin/su") && m.get("/usr/bin/su")!.mode === 0o4755, "the rest is kept");
    for (const e of m.values()) {
      assert.ok(!Object.keys(e.xattrs ?? {}).some((k) => k.includes("overlay")), e.path);
    }
    const d = t.store.diff(base.id, v.id);
    assert.deepEqual(d.added, ["/etc/new", "/home/user/only"]);
    assert.deepEqual(d.removed, [
      "/etc/hostname",
      "/home/user/space name.txt",
      "/home/user/tab\tname",
      "/home/user/ünïcödé",
    ]);
    assert.ok(d.changed.includes("/etc/passwd"));
    assert.ok(
      d.changed.every((p) => p === "/etc/passwd" || m.get(p)?.type === "dir"),
      d.changed.join(),
    );
    // the digests made while the upper was unpacked, taken instead of hashing it again: right
    assert.equal(
      manifestText((await scanTree(t.data.rootfs(v.id))).entries),
      Deno.readTextFileSync(t.data.manifest(v.id)),
    );
    assert.equal(nodes.follow().length, 1, "n1 follows deb to the saved version");
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    await t.close();
  }
});

/** What a Debian node writes for itself as it runs (measured on a booted node's upper), and what
 *  netroot init adds: the server's key line. */
function runMachine(r: string): void {
  const w = (p: string, text: string) => {
    Deno.mkdirSync(dirname(`${r}${p}`), { recursive: true });
    Deno.writeTextFileSync(`${r}${p}`, text);
  };
  installServerKey(r, "ssh-ed25519 AAAAserver"); // netroot init's, before the switch
  w("/etc/machine-id", "0123456789abcdef0123456789abcdef\n");
  w("/var/lib/systemd/random-seed", "seed bytes");
  w("/var/lib/systemd/credential.secret", "secret");
  w("/var/lib/systemd/timers/stamp-apt-daily.timer", "");
  w("/var/log/journal/0123456789abcdef0123456789abcdef/system.journal", "journal");
  w("/var/log/journal/0123456789abcdef0123456789abcdef/user-1000.journal", "journal");
  Deno.mkdirSync(`${r}/tmp/.X11-unix`, { recursive: true });
  w("/tmp/.X11-unix/X0.lock", "");
  w("/var/tmp/systemd-private-1/tmp/x", "");
  Deno.mkdirSync(`${r}/persist`); // netroot init's mount point
}

Deno.test("node save leaves the machine's own state out (random seed, journal, timer stamps, tmp, machine-id, /persist, the server's key line): the admin's changes stay", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs)");
  const { t, base, ctx } = await setup(undefined, (root) => {
    for (const d of ["/tmp", "/var/tmp", "/var/log/journal", "/var/lib/systemd", "/root/.ssh"]) {
      Deno.mkdirSync(`${root}${d}`, { recursive: true });
    }
    Deno.chmodSync(`${root}/tmp`, 0o1777);
    Deno.writeTextFileSync(`${root}/etc/machine-id`, "uninitialized\n");
    // the image's own key, a blank line after it (netroot init writes it back without)
    Deno.writeTextFileSync(`${root}/root/.ssh/authorized_keys`, "ssh-rsa AAAAimage admin@lab\n\n");
  });
  try {
    const machine = upperTarball(`${t.dir}/node`, t.data.rootfs(base.id), (r) => {
      runMachine(r);
      Deno.writeTextFileSync(`${r}/etc/motd`, "the admin's change\n");
    });
    const v = await saveNode(ctx, "n1", "clean", machine, "netroot node save n1 clean");
    // (before: every path above in the new version: its nodes shared one random seed, the old
    // journal, and the image held the server's key)
    const d = t.store.diff(base.id, v.id);
    assert.deepEqual(d, { added: ["/etc/motd"], removed: [], changed: ["/etc"] });
    assert.deepEqual(v.leftOut, [
      "machine-id",
      "random-seed",
      "credential.secret",
      "timer stamps (1 file)",
      "journal (2 files)",
      "/tmp (1 file)",
      "/var/tmp (1 file)",
      "the /persist mount point",
      "the server's key in /root/.ssh/authorized_keys",
    ]);
    assert.match(
      committedText({ ...v, followers: [], reboots: [] }),
      /\nleft out per-machine state: machine-id, random-seed, .*, the server's key in \/root\/\.ssh\/authorized_keys \(--keep-machine-state saves it\)/,
    );

    // Keys the admin added on the node stay; only netroot's line goes.
    const keys = upperTarball(`${t.dir}/node2`, t.data.rootfs(base.id), (r) => {
      runMachine(r);
      Deno.writeTextFileSync(`${r}/root/.ssh/authorized_keys`, "ssh-ed25519 AAAAmine me@laptop\n", {
        append: true,
      });
    });
    const k = await saveNode(ctx, "n1", "keys", keys, null);
    assert.equal(
      Deno.readTextFileSync(`${t.data.rootfs(k.id)}/root/.ssh/authorized_keys`),
      "ssh-rsa AAAAimage admin@lab\nssh-ed25519 AAAAmine me@laptop\n",
    );
    assert.equal(manifestOf(t, k.id).get("/root/.ssh/authorized_keys")?.mode, 0o600);
    assert.deepEqual(t.store.diff(base.id, k.id).changed, [
      "/root/.ssh", // (its time)
      "/root/.ssh/authorized_keys",
    ]);

    // --keep-machine-state: saved whole, as before.
    const all = await saveNode(ctx, "n1", "all", machine, null, { keepMachineState: true });
    assert.deepEqual(all.leftOut, []);
    const m = manifestOf(t, all.id);
    for (const p of ["/var/lib/systemd/random-seed", "/persist", "/tmp/.X11-unix/X0.lock"]) {
      assert.ok(m.has(p), p);
    }
    assert.match(
      Deno.readTextFileSync(`${t.data.rootfs(all.id)}/root/.ssh/authorized_keys`),
      new RegExp(`ssh-ed25519 AAAAserver ${keyMarker}`),
    );
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    await t.close();
  }
});

Deno.test("node save: whiteouts of the machine's own state are left out too (the base's stays); netroot's /root/.ssh on an image without one goes with its key", async () => {
  const { t, base, ctx } = await setup(undefined, (root) => {
    Deno.mkdirSync(`${root}/var/lib/systemd`, { recursive: true });
    Deno.writeTextFileSync(`${root}/var/lib/systemd/random-seed`, "the image's seed");
    Deno.mkdirSync(`${root}/var/log/journal/old`, { recursive: true });
    Deno.writeTextFileSync(`${root}/var/log/journal/old/system.journal`, "old");
    Deno.writeTextFileSync(`${root}/etc/machine-id`, "");
  });
  try {
    // a hand-made upper: the seed and machine-id deleted, the journal dir opaque (emptied),
    // /root/.ssh made by netroot init holding only its line
    const up = `${t.dir}/up`;
    Deno.mkdirSync(`${up}/var/log/journal`, { recursive: true });
    Deno.mkdirSync(`${up}/var/lib/systemd`, { recursive: true });
    Deno.mkdirSync(`${up}/etc`, { recursive: true });
    sh("mknod", `${up}/var/lib/systemd/random-seed`, "c", "0", "0");
    sh("mknod", `${up}/etc/machine-id`, "c", "0", "0");
    setXattr(`${up}/var/log/journal`, "trusted.overlay.opaque", new TextEncoder().encode("y"));
    Deno.writeTextFileSync(`${up}/etc/motd`, "kept\n");
    installServerKey(up, "ssh-ed25519 AAAAserver");
    tarOf(up, `${t.dir}/up.tar`);
    const v = await saveNode(ctx, "n1", "deb", `${t.dir}/up.tar`, null);
    const d = t.store.diff(base.id, v.id);
    assert.deepEqual(d, { added: ["/etc/motd"], removed: [], changed: ["/etc"] });
    assert.deepEqual(v.leftOut, [
      "machine-id",
      "random-seed",
      "journal",
      "the server's key in /root/.ssh/authorized_keys",
    ]);
    assert.equal(
      Deno.readTextFileSync(`${t.data.rootfs(v.id)}/var/log/journal/old/system.journal`),
      "old",
    );
  } finally {
    await t.close();
  }
});

/** No object store: an upper without the server's key line reads none of the base's files. */
const noObjects = {} as ObjectStore;

Deno.test("node save: a node's /tmp of 100,000 files is left out with the server's thread turning (it held it 2 s)", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "netroot-machinestate-" });
  try {
    for (const d of ["tmp/a", "var/tmp"]) Deno.mkdirSync(`${dir}/${d}`, { recursive: true });
    const empty = new Uint8Array();
    for (let i = 0; i < 100_000; i++) Deno.writeFileSync(`${dir}/tmp/a/${i}`, empty);
    Deno.writeFileSync(`${dir}/var/tmp/x`, empty);
    // The longest the event loop went without a turn while the state was left out.
    let longest = 0, last = performance.now();
    const ticks = setInterval(() => {
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
    }, 5);
    let out: string[];
    try {
      last = performance.now();
      out = await leaveOutMachineState(dir, indexBase(MANIFEST_HEADER + "\n"), noObjects);
      longest = Math.max(longest, performance.now() - last);
    } finally {
      clearInterval(ticks);
    }
    assert.deepEqual(out, ["/tmp (100000 files)", "/var/tmp (1 file)"]);
    assert.deepEqual([...Deno.readDirSync(`${dir}/tmp`)], []);
    assert.ok(longest < 1000, `the server's thread held ${Math.round(longest)} ms`);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("node save: hostile uppers are refused, nothing committed", async () => {
  const { t, base, ctx } = await setup();
  try {
    const n = () => t.store.history("deb").length;
    const before = n();
    // a member climbing out of the upper
    Deno.mkdirSync(`${t.dir}/evil`);
    Deno.writeTextFileSync(`${t.dir}/evil/x`, "x");
    sh("tar", "-C", `${t.dir}/evil`, "-cf", `${t.dir}/climb.tar`, "--transform", "s,^,../,", "x");
    await assert.rejects(saveNode(ctx, "n1", "deb", `${t.dir}/climb.tar`, null), /'\.\.'/);
    // the upper's "tarball" is a symlink (to a server file)
    Deno.symlinkSync("/etc/shadow", `${t.dir}/link.tar`);
    await assert.rejects(
      saveNode(ctx, "n1", "deb", `${t.dir}/link.tar`, null),
      /not a regular file/,
    );
    // a redirected directory (its content lives in the node's lower layer): refused, not guessed
    Deno.mkdirSync(`${t.dir}/redir/upper/moved`, { recursive: true });
    setXattr(
      `${t.dir}/redir/upper/moved`,
      "trusted.overlay.redirect",
      new TextEncoder().encode("/etc"),
    );
    tarOf(`${t.dir}/redir/upper`, `${t.dir}/redir.tar`);
    await assert.rejects(
      saveNode(ctx, "n1", "deb", `${t.dir}/redir.tar`, null),
      /\/moved is an overlay redirect entry/,
    );
    // the other overlay attributes whose content lives elsewhere, user.* (userxattr mounts) too:
    // a redirect climbing out of the image, a metacopy file (its data in the node's lower layer)
    Deno.mkdirSync(`${t.dir}/redir2/upper/etc`, { recursive: true });
    Deno.writeTextFileSync(`${t.dir}/redir2/upper/etc/shadow`, "");
    setXattr(
      `${t.dir}/redir2/upper/etc`,
      "user.overlay.redirect",
      new TextEncoder().encode("../../../../etc"),
    );
    setXattr(`${t.dir}/redir2/upper/etc/shadow`, "trusted.overlay.metacopy", new Uint8Array());
    tarOf(`${t.dir}/redir2/upper`, `${t.dir}/redir2.tar`);
    await assert.rejects(
      saveNode(ctx, "n1", "deb", `${t.dir}/redir2.tar`, null),
      /\/etc is an overlay redirect entry/,
    );
    removeXattr(`${t.dir}/redir2/upper/etc`, "user.overlay.redirect");
    tarOf(`${t.dir}/redir2/upper`, `${t.dir}/redir2.tar`);
    await assert.rejects(
      saveNode(ctx, "n1", "deb", `${t.dir}/redir2.tar`, null),
      /\/etc\/shadow is an overlay metacopy entry/,
    );
    // a name that is not UTF-8: said as such (before: "No such file or directory", naming a
    // scratch path of the server)
    Deno.mkdirSync(`${t.dir}/latin1/etc`, { recursive: true });
    sh("sh", "-c", `printf x > "${t.dir}/latin1/etc/caf$(printf '\\351')"`);
    sh("tar", "--numeric-owner", "-C", `${t.dir}/latin1`, "-cf", `${t.dir}/latin1.tar`, ".");
    await assert.rejects(
      saveNode(ctx, "n1", "deb", `${t.dir}/latin1.tar`, null),
      /file name is not valid UTF-8: "\/etc\/caf\uFFFD"/,
    );
    // a sparse member standing for more than the data dir holds, in a tarball of a few KiB
    // (before: unpacked, hashed twice and committed: 76 GiB of zeros took 3 min 39 s here, the
    // server's event loop blocked for a quarter of it; a node's tmpfs makes them up to exabytes)
    const free = statvfs(t.data.tmp).freeBytes;
    Deno.mkdirSync(`${t.dir}/sparse/var`, { recursive: true });
    sh("truncate", "-s", String(free + (1 << 30)), `${t.dir}/sparse/var/disk.img`);
    sh("tar", "--sparse", "-C", `${t.dir}/sparse`, "-cf", `${t.dir}/sparse.tar`, ".");
    assert.ok(Deno.statSync(`${t.dir}/sparse.tar`).size < 1 << 20);
    const t0 = performance.now();
    await assert.rejects(
      saveNode(ctx, "n1", "deb", `${t.dir}/sparse.tar`, null),
      /no space left on device .*its files need more than is free/,
    );
    assert.ok(performance.now() - t0 < 10_000, "refused before anything is unpacked");
    assert.equal(n(), before);
    assert.equal(t.store.get("deb").id, base.id);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    await t.close();
  }
});

Deno.test("node save --upper FILE in the node's /persist: a file swapped for a symlink after the check is not read", async () => {
  const { t, ctx, nodes } = await setup();
  // A tarball of the server's (a backup, say: the API token is in one), and the node's upper.tar
  // in its /persist, the same size; the node's root swaps upper.tar for a symlink to the server's
  // tarball and back as fast as renames go, while the admin saves it.
  Deno.mkdirSync(`${t.dir}/secret/etc`, { recursive: true });
  Deno.writeTextFileSync(`${t.dir}/secret/etc/server-secret`, "the server's\n");
  tarOf(`${t.dir}/secret`, `${t.dir}/secret.tar`);
  const persist = t.data.persist(nodes.get("n1").mac);
  Deno.mkdirSync(`${t.dir}/up/etc`, { recursive: true });
  Deno.writeTextFileSync(`${t.dir}/up/etc/motd`, "the node's\n");
  tarOf(`${t.dir}/up`, `${persist}/upper.tar`);
  assert.equal(
    Deno.statSync(`${persist}/upper.tar`).size,
    Deno.statSync(`${t.dir}/secret.tar`).size,
  );
  const flipper = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const [p, to] = [${JSON.stringify(persist)}, ${JSON.stringify(`${t.dir}/secret.tar`)}];
      Deno.symlinkSync(to, p + "/l");
      for (;;) { Deno.renameSync(p + "/upper.tar", p + "/f"); Deno.renameSync(p + "/l", p + "/upper.tar");
        Deno.renameSync(p + "/upper.tar", p + "/l"); Deno.renameSync(p + "/f", p + "/upper.tar"); }`,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    while (!existsSync(`${persist}/f`)) await new Promise((r) => setTimeout(r, 10));
    let saved = 0;
    for (const end = Date.now() + 3000; Date.now() < end;) {
      const v = await saveNode(ctx, "n1", "deb", `${persist}/upper.tar`, null).catch(() => null);
      if (!v) continue;
      saved++;
      assert.equal(manifestOf(t, v.id).has("/etc/server-secret"), false, "a server file saved");
    }
    assert.ok(saved > 0, "some saves read the node's file");
  } finally {
    flipper.kill("SIGKILL");
    await flipper.status;
    await t.close();
  }
});

Deno.test("node save --upper FILE in the node's /persist: a directory its root made a link leads the save nowhere else (attacker)", async () => {
  const { t, ctx, nodes } = await setup();
  try {
    // Every node leaves its upper at /persist/save/upper.tar (the admin's routine). Node n1's
    // root makes its save/ a link to another node's (its upper: that node's host keys) before
    // the admin saves n1; or to any server directory holding a file of that name.
    const persist = t.data.persist(nodes.get("n1").mac);
    const other = t.data.persist("52:54:00:00:00:99");
    Deno.mkdirSync(`${other}/save`, { recursive: true });
    Deno.mkdirSync(`${t.dir}/theirs/etc/ssh`, { recursive: true });
    Deno.writeTextFileSync(`${t.dir}/theirs/etc/ssh/ssh_host_ed25519_key`, "the other node's\n");
    tarOf(`${t.dir}/theirs`, `${other}/save/upper.tar`);
    for (const target of [`${other}/save`, "../../52:54:00:00:00:99/persist/save"]) {
      if (lstatSync(`${persist}/save`, { throwIfNoEntry: false })) {
        Deno.removeSync(`${persist}/save`);
      }
      Deno.symlinkSync(target, `${persist}/save`);
      await assert.rejects(
        saveNode(ctx, "n1", "deb", `${persist}/save/upper.tar`, null),
        /is a link in a node's directory, not followed/,
        target,
      );
    }
    assert.equal(t.store.list().filter((i) => i.name === "deb").length, 1, "nothing saved");

    // Links outside nodes/ are the admin's: a path to the data dir through one still saves.
    Deno.removeSync(`${persist}/save`);
    Deno.mkdirSync(`${persist}/save`);
    Deno.mkdirSync(`${t.dir}/mine/etc`, { recursive: true });
    Deno.writeTextFileSync(`${t.dir}/mine/etc/motd`, "the node's\n");
    tarOf(`${t.dir}/mine`, `${persist}/save/upper.tar`);
    Deno.symlinkSync(t.data.root, `${t.dir}/data-link`);
    const via = `${t.dir}/data-link/nodes/${nodes.get("n1").mac}/persist/save/upper.tar`;
    const v = await saveNode(ctx, "n1", "deb", via, null);
    assert.equal(manifestOf(t, v.id).has("/etc/motd"), true);
    assert.equal(manifestOf(t, v.id).has("/etc/ssh/ssh_host_ed25519_key"), false);
  } finally {
    await t.close();
  }
});

Deno.test("node save: an upper over an image symlink to a host directory changes the image only", async () => {
  const t = await tempStore();
  try {
    const outside = `${t.dir}/outside`;
    Deno.mkdirSync(outside);
    Deno.writeTextFileSync(`${outside}/victim`, "host file\n");
    buildSampleTree(`${t.dir}/src`);
    Deno.symlinkSync(outside, `${t.dir}/src/etc/evil`); // the image links to the host's dir
    const base = await t.store.import(`${t.dir}/src`, "deb");
    const nodes = new NodeRegistry(t.data, t.db, t.store, new Rebooter(t.db), new EventTarget());
    nodes.add("52:54:00:00:00:12", { name: "n2" });
    await nodes.deploy(["n2"], "deb", { reboot: false });
    // a hand-made upper (a node sends what it likes): etc/evil as a directory holding a whiteout
    // for "victim" and a new file; /etc/passwd as a whiteout
    const up = `${t.dir}/up`;
    Deno.mkdirSync(`${up}/etc/evil`, { recursive: true });
    sh("mknod", `${up}/etc/evil/victim`, "c", "0", "0");
    sh("mknod", `${up}/etc/passwd`, "c", "0", "0");
    Deno.writeTextFileSync(`${up}/etc/evil/planted`, "x\n");
    sh("tar", "--numeric-owner", "-C", up, "-cf", `${t.dir}/up.tar`, ".");
    const v = await saveNode(
      { db: t.db, nodes, images: t.store },
      "n2",
      "deb",
      `${t.dir}/up.tar`,
      null,
    );
    assert.deepEqual(
      [...Deno.readDirSync(outside)].map((e) => e.name),
      ["victim"],
      "the host's directory is untouched",
    );
    assert.equal(Deno.readTextFileSync(`${outside}/victim`), "host file\n");
    const m = manifestOf(t, v.id);
    assert.equal(m.get("/etc/evil")?.type, "dir", "the link was replaced inside the image");
    assert.ok(m.has("/etc/evil/planted"));
    assert.equal(m.has("/etc/passwd"), false);
    assert.ok(Deno.lstatSync(`${t.data.rootfs(base.id)}/etc/evil`).isSymlink, "base intact");
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    await t.close();
  }
});

Deno.test("node save: device nodes and set-uid files are kept as the node made them, out of other server users' reach", async () => {
  const { t, ctx } = await setup();
  try {
    const up = `${t.dir}/up`;
    Deno.mkdirSync(`${up}/home`, { recursive: true });
    sh("mknod", "-m", "0666", `${up}/home/disk`, "b", "8", "0"); // the server's first disk
    Deno.writeTextFileSync(`${up}/home/sh`, "#!/bin/sh\n");
    Deno.chmodSync(`${up}/home/sh`, 0o4755);
    sh("tar", "--numeric-owner", "-C", up, "-cf", `${t.dir}/up.tar`, ".");
    const v = await saveNode(ctx, "n1", "deb", `${t.dir}/up.tar`, null);
    const m = manifestOf(t, v.id);
    assert.deepEqual(
      [m.get("/home/disk")?.type, m.get("/home/disk")?.rdev, m.get("/home/disk")?.mode],
      ["block", { major: 8, minor: 0 }, 0o666],
    );
    assert.equal(m.get("/home/sh")?.mode, 0o4755);
    // on the server they are real: nothing of the version's tree is reachable by other users
    assert.equal(Deno.statSync(t.data.image(v.id)).mode! & 0o077, 0);
    assert.ok(Deno.lstatSync(`${t.data.rootfs(v.id)}/home/disk`).isBlockDevice);
  } finally {
    await t.close();
  }
});

Deno.test("node save --upper of a node whose booted version was removed since (it was off): one line", async () => {
  const { t, base, nodes, ctx } = await setup();
  try {
    Deno.writeTextFileSync(`${t.dir}/src/etc/hostname`, "v2\n");
    const v2 = await t.store.import(`${t.dir}/src`, "deb");
    await publish(ctx, v2, false); // n1 follows deb, its last boot stays on base
    t.store.remove(`deb@${base.id}`); // n1 is off: allowed
    Deno.mkdirSync(`${t.dir}/up/etc`, { recursive: true });
    Deno.writeTextFileSync(`${t.dir}/up/etc/new`, "new\n");
    sh("tar", "--numeric-owner", "-C", `${t.dir}/up`, "-cf", `${t.dir}/up.tar`, ".");
    // (before: "No such file or directory (os error 2): readfile '<data>/images/<id>/manifest'")
    await assert.rejects(
      saveNode(ctx, "n1", "deb", `${t.dir}/up.tar`, null),
      /^UserError: node n1 last booted image version [0-9a-f]{12}, which was removed/,
    );
    assert.equal(nodes.get("n1").imageId, v2.id);
    assert.deepEqual(t.store.history("deb").map((v) => v.id), [v2.id]);
    // (the removed tree may still be being deleted there)
    assert.deepEqual((await dirEntries(t.data.tmp)).filter((e) => !e.startsWith("rm-")), []);
  } finally {
    await t.close();
  }
});

Deno.test("node save --upper of an off node: image rm of its booted version during the save is refused, the save lands", async () => {
  const { t, base, nodes, ctx } = await setup();
  try {
    Deno.writeTextFileSync(`${t.dir}/src/etc/hostname`, "v2\n");
    const v2 = await t.store.import(`${t.dir}/src`, "deb");
    await publish(ctx, v2, false); // n1 follows deb, its last boot stays on base; n1 is off
    Deno.mkdirSync(`${t.dir}/up/etc`, { recursive: true });
    Deno.writeTextFileSync(`${t.dir}/up/etc/new`, "new\n");
    sh("tar", "--numeric-owner", "-C", `${t.dir}/up`, "-cf", `${t.dir}/up.tar`, ".");
    const saving = saveNode(ctx, "n1", "deb", `${t.dir}/up.tar`, null).catch((e) => e as Error);
    // The save is under way (unpacking the upper): an `image rm` request answered now.
    let removal: unknown;
    try {
      removal = t.store.remove(`deb@${base.id}`);
    } catch (e) {
      removal = e;
    }
    const saved = await saving;
    // (before: the removal went through and the save failed with "No such file or directory
    // (os error 2): readfile '<data>/images/<id>/manifest'")
    assert.ok(
      removal instanceof Error && /in use/.test(removal.message),
      `the removal is refused while a save applies onto the version (got ${removal})`,
    );
    assert.ok(!(saved instanceof Error), `the save lands (${saved})`);
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(saved.id)}/etc/new`), "new\n");
    assert.equal(saved.parent, base.id);
    assert.deepEqual(t.store.history("deb").map((v) => v.id), [base.id, v2.id, saved.id]);
    assert.equal(nodes.get("n1").imageId, v2.id, "n1 moves only when the save is published");
  } finally {
    await t.close();
  }
});

Deno.test("image rename of the name a node save commits to, while the save is under way: refused (409), the save lands on that name", async () => {
  const { t, base, nodes, ctx } = await setup();
  try {
    Deno.mkdirSync(`${t.dir}/up/etc`, { recursive: true });
    Deno.writeTextFileSync(`${t.dir}/up/etc/new`, "new\n");
    tarOf(`${t.dir}/up`, `${t.dir}/up.tar`);
    const saving = saveNode(ctx, "n1", "deb", `${t.dir}/up.tar`, null).catch((e) => e as Error);
    // (before: renamed; the save then made a new image "deb" of its own, and n1, following the
    // renamed image, never got it)
    assert.throws(
      () => t.store.rename("deb", "renamed"),
      (e: UserError) =>
        e.status === 409 && /an image session or commit on deb is under way: end it first/
          .test(e.message),
    );
    const saved = await saving;
    assert.ok(!(saved instanceof Error), String(saved));
    assert.deepEqual(t.store.history("deb").map((v) => v.id), [base.id, saved.id]);
    await publish(ctx, saved, false);
    assert.equal(nodes.get("n1").imageId, saved.id);
    t.store.rename("deb", "renamed"); // once it is done
    assert.equal(t.store.history("renamed").length, 2);
  } finally {
    await t.close();
  }
});

Deno.test("node saves at once cannot together fill the data dir: each gets half the room the others left (root)", async () => {
  assert.equal(Deno.uid(), 0, "needs root (a small tmpfs as the data dir's disk)");
  const mnt = Deno.makeTempDirSync({ prefix: "nr-save-room-" });
  mount("tmpfs", mnt, "tmpfs", 0, "size=96m");
  try {
    const { t, ctx } = await setup(`${mnt}/data`);
    try {
      // Root on two nodes sends 28 MB uppers of random bytes at once (each alone fits in half
      // the free space; before, both were taken, whatever the disk held).
      const upper = (name: string) => {
        Deno.mkdirSync(`${t.dir}/${name}`);
        using f = Deno.openSync(`${t.dir}/${name}/blob`, { write: true, create: true });
        const chunk = new Uint8Array(65536);
        for (let i = 0; i < 28e6 / 65536; i++) f.writeSync(crypto.getRandomValues(chunk));
        sh("tar", "--numeric-owner", "-C", `${t.dir}/${name}`, "-cf", `${t.dir}/${name}.tar`, ".");
        return `${t.dir}/${name}.tar`;
      };
      const [a, b] = [upper("a"), upper("b")];
      const free = statvfs(t.data.tmp).freeBytes;
      assert.ok(free > 88e6 && free < 101e6, `free ${free}`);
      const both = await Promise.allSettled([
        saveNode(ctx, "n1", "a", a, null),
        saveNode(ctx, "n1", "b", b, null),
      ]);
      assert.deepEqual(both.map((r) => r.status).sort(), ["fulfilled", "rejected"]);
      const refused = both.find((r) => r.status === "rejected") as PromiseRejectedResult;
      assert.match(String(refused.reason), /no space left on device while importing .*b?\.tar/);
      assert.ok(statvfs(t.data.tmp).freeBytes > free - 40e6, "one upper's worth taken");
      // Promises end with their save: the refused one alone now fits.
      const again = both[0].status === "rejected" ? ["a", a] : ["b", b];
      await saveNode(ctx, "n1", again[0], again[1], null);
      assert.deepEqual(t.store.names().map((i) => i.name).sort(), ["a", "b", "deb"]);
      assert.deepEqual(await dirEntries(t.data.tmp), []);
      // Saves under way holding nearly all the room: the next one is told so, up front.
      const held = [];
      while (held.length < 40 && (held.at(-1)?.bytes ?? Infinity) >= 1 << 20) {
        held.push(t.store.promiseRoom());
      }
      await assert.rejects(
        () => saveNode(ctx, "n1", "c", a, null),
        (e: UserError) =>
          e.status === 503 &&
          /^no room on the data dir for a node save: \d+ MB free, \d+ MB of it held by saves under way/
            .test(e.message),
      );
      for (const p of held) p[Symbol.dispose]();
      using back = t.store.promiseRoom();
      assert.ok(back.bytes > 10e6, "the room is back once they end");
    } finally {
      await t.close();
    }
  } finally {
    umount(mnt, MNT_DETACH);
    Deno.removeSync(mnt);
  }
});

Deno.test("node save: an upper holding a /manifest.json or /oci-layout of its own is saved as files", async () => {
  const { t, base, ctx } = await setup();
  try {
    const up = `${t.dir}/up`;
    Deno.mkdirSync(`${up}/blobs/sha256`, { recursive: true });
    Deno.writeTextFileSync(`${up}/manifest.json`, '[{"Config":"config.json","Layers":[]}]');
    Deno.writeTextFileSync(`${up}/config.json`, "{}");
    Deno.writeTextFileSync(`${up}/oci-layout`, '{"imageLayoutVersion":"1.0.0"}');
    sh("tar", "--numeric-owner", "-C", up, "-cf", `${t.dir}/up.tar`, ".");
    // (before: taken for a docker save archive, its layers applied, then "not a tarball")
    const v = await saveNode(ctx, "n1", "deb", `${t.dir}/up.tar`, null);
    assert.deepEqual(t.store.diff(base.id, v.id).added, [
      "/blobs",
      "/blobs/sha256",
      "/config.json",
      "/manifest.json",
      "/oci-layout",
    ]);
  } finally {
    await t.close();
  }
});

Deno.test("node save: two saves on the same booted version: both land, the later one says it does not hold the other's changes", async () => {
  const { t, base, ctx } = await setup();
  try {
    const tars = ["a", "b"].map((x) => {
      Deno.mkdirSync(`${t.dir}/${x}/etc`, { recursive: true });
      Deno.writeTextFileSync(`${t.dir}/${x}/etc/${x}`, `${x}\n`);
      sh("tar", "--numeric-owner", "-C", `${t.dir}/${x}`, "-cf", `${t.dir}/${x}.tar`, ".");
      return `${t.dir}/${x}.tar`;
    });
    const [a, b] = await Promise.all(tars.map((tar) => saveNode(ctx, "n1", "deb", tar, null)));
    assert.equal(a.parent, base.id);
    assert.equal(b.parent, base.id);
    const [first, second] = a.previous === base.id ? [a, b] : [b, a];
    assert.equal(first.outdated, null);
    assert.equal(second.previous, first.id);
    assert.equal(second.outdated, first.id, "made on an older version: said");
    assert.match(
      committedText({ ...second, followers: [], reboots: [] }),
      new RegExp(`warning: made on ${base.id.slice(0, 12)}, not on ${first.id.slice(0, 12)}`),
    );
    assert.equal(t.store.get("deb").id, second.id);
    assert.equal(t.store.history("deb").length, 3);
  } finally {
    await t.close();
  }
});

/** A server (API), a real sshd on loopback standing in for node n1's (its commands see `upper` at
 *  /run/netroot/upper, read-only, and run `tar`), n1 booted on image "deb" holding that sshd's
 *  host key. */
async function withLiveNode(
  upper: (lower: string) => string,
  fn: (s: PowerServer, node: FakeNodeSshd, baseId: string, cmdline: string) => Promise<void>,
  opts: { tar?: string; state?: "booted" | "off"; cmdline?: string } = {},
): Promise<void> {
  setLogSink(() => {});
  await withPowerServer(async (s) => {
    const src = `${s.dir}/src`;
    buildSampleTree(src);
    Deno.mkdirSync(`${src}/etc/ssh`);
    const key = s.ctx.ssh.key.publicKey();
    const dir = await Deno.makeTempDir({ prefix: "nr-save-node-" });
    let node: FakeNodeSshd | undefined;
    try {
      // the host key is known only once sshd made it: the image gets it after the start
      node = await startSshd(key, {
        upper: `${dir}/upper`,
        tar: opts.tar,
        addresses: ["127.0.0.21"],
        cmdline: `${dir}/cmdline`,
      });
      Deno.writeTextFileSync(`${src}/etc/ssh/ssh_host_ed25519_key.pub`, `${node.hostKey} root\n`);
      const base = await s.ctx.images.import(src, "deb");
      // What the server put on the node's kernel command line for this boot.
      Deno.writeTextFileSync(
        `${dir}/cmdline`,
        opts.cmdline ??
          `console=ttyS0 netroot.mac=52:54:00:00:00:21 netroot.image=${base.id} quiet\n`,
      );
      const up = upper(s.ctx.data.rootfs(base.id));
      Deno.renameSync(up, `${dir}/upper`);
      Deno.removeSync(dirname(up), { recursive: true }); // changedUpper's scratch (tarball, work)
      s.ctx.nodes.add("52:54:00:00:00:21", { name: "n1" });
      s.ctx.nodes.configure("n1", { "boot.probe-port": String(node.port) });
      s.ctx.nodes.setIp("52:54:00:00:00:21", "127.0.0.21");
      await s.ctx.nodes.deploy(["n1"], "deb", { reboot: false });
      s.ctx.nodes.setState("52:54:00:00:00:21", opts.state ?? "booted", "port answered");
      await fn(s, node, base.id, `${dir}/cmdline`);
      await s.ctx.rebooter.close();
    } finally {
      await node?.stop();
      await Deno.remove(dir, { recursive: true });
    }
  });
}

/** A real overlayfs upper over `lower` (mounted, changed, unmounted), left in a new directory
 *  (withLiveNode takes the upper and removes that directory). */
function changedUpper(lower: string, change: (root: string) => void): string {
  const dir = Deno.makeTempDirSync({ prefix: "nr-upper-" });
  upperTarball(dir, lower, change);
  return `${dir}/upper`;
}

Deno.test("node save NODE NAME: the upper fetched from the running node over ssh (GNU tar), deletions included", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs, mount namespaces)");
  await withLiveNode(
    (lower) =>
      changedUpper(lower, (r) => {
        Deno.removeSync(`${r}/etc/hostname`);
        Deno.removeSync(`${r}/home/user`, { recursive: true });
        Deno.mkdirSync(`${r}/home/user`);
        Deno.writeTextFileSync(`${r}/home/user/only`, "only this\n");
        Deno.writeTextFileSync(`${r}/etc/new`, "new\n");
        // left out, as from an --upper FILE
        installServerKey(r, "ssh-ed25519 AAAAserver");
        Deno.mkdirSync(`${r}/var/lib/systemd`, { recursive: true });
        Deno.writeTextFileSync(`${r}/var/lib/systemd/random-seed`, "seed");
        Deno.mkdirSync(`${r}/persist`);
      }),
    async ({ ctx, call, cli }, _node, baseId) => {
      const r = await cli("node", "save", "n1", "saved");
      assert.equal(r.code, 0, r.err);
      assert.match(
        r.out,
        /\nleft out per-machine state: random-seed, the \/persist mount point, the server's key in \/root\/\.ssh\/authorized_keys \(/,
      );
      const v = ctx.images.get("saved");
      assert.equal(v.madeBy, "save");
      assert.equal(v.parent, baseId);
      assert.equal(v.command, "netroot node save n1 saved");
      const d = ctx.images.diff(baseId, v.id);
      assert.deepEqual(d.added, ["/etc/new", "/home/user/only"]);
      assert.deepEqual(d.removed, [
        "/etc/hostname",
        "/home/user/space name.txt",
        "/home/user/tab\tname",
        "/home/user/ünïcödé",
      ]);
      assert.equal(Deno.readTextFileSync(`${ctx.data.rootfs(v.id)}/etc/new`), "new\n");
      // the API alone, as a script would: the same upper, the same content (id) again
      const again = await call("POST", "/images/-/save", { node: "n1", name: "saved" });
      assert.equal(again.status, 200, JSON.stringify(again.json));
      assert.equal(again.json.id, v.id);
      const whole = await cli("node", "save", "n1", "whole", "--keep-machine-state");
      assert.equal(whole.code, 0, whole.err);
      assert.doesNotMatch(whole.out, /left out/);
      const all = ctx.images.diff(baseId, ctx.images.get("whole").id).added;
      assert.ok(all.includes("/var/lib/systemd/random-seed"), all.join(" "));
      assert.deepEqual(await dirEntries(ctx.data.tmp), []);
    },
  );
});

Deno.test("node save NODE NAME: the base is the version the node says it booted (its kernel command line), not the boots table's", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs, mount namespaces)");
  const upper = (lower: string) =>
    changedUpper(lower, (r) => Deno.writeTextFileSync(`${r}/etc/new`, "new\n"));
  await withLiveNode(upper, async (s, _node, baseId) => {
    const { ctx, cli } = s;
    // The boots table says n1 runs another version (its report of this boot lost on the way,
    // the table still at an earlier boot's handover).
    const other = `${s.dir}/other`;
    buildSampleTree(other);
    Deno.writeTextFileSync(`${other}/etc/hostname`, "other\n");
    const elsewhere = await ctx.images.import(other, "other");
    recordStage(ctx.db, openBoot(ctx.db, "52:54:00:00:00:21", elsewhere.id), "handover");
    const r = await cli("node", "save", "n1", "saved");
    assert.equal(r.code, 0, r.err);
    const v = ctx.images.get("saved");
    assert.equal(v.parent, baseId, "applied on the version the node runs");
    const d = ctx.images.diff(baseId, v.id);
    assert.deepEqual([d.added, d.removed], [["/etc/new"], []]);
    // (/etc's mtime moves with the new file unless both fall in the second the base was made)
    assert.ok(d.changed.every((p) => p === "/etc"), d.changed.join(" "));
  });
  // A node that was not booted by netroot (no netroot.image= on its command line): refused.
  await withLiveNode(upper, async ({ ctx, cli }) => {
    const r = await cli("node", "save", "n1", "saved");
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /cannot fetch the upper of n1: its kernel command line names no netroot image: it was not booted by netroot/,
    );
    assert.throws(() => ctx.images.get("saved"), /saved/);
  }, { cmdline: "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n" });
});

Deno.test("node save NODE NAME: a node naming a version it was never given (another image's) is refused: that image's root-only files would be its", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs, mount namespaces)");
  const upper = (lower: string) =>
    changedUpper(lower, (r) => Deno.writeTextFileSync(`${r}/etc/new`, "new\n"));
  await withLiveNode(upper, async (s, _node, baseId, cmdline) => {
    const { ctx, cli } = s;
    // Another user's image: its host key is root's alone, and its export squashes root for n1.
    const other = `${s.dir}/other`;
    buildSampleTree(other);
    Deno.mkdirSync(`${other}/etc/ssh`, { recursive: true });
    Deno.writeTextFileSync(`${other}/etc/ssh/ssh_host_ed25519_key`, "PRIVATE\n", { mode: 0o600 });
    const secret = await ctx.images.import(other, "secret");
    // Root on n1 names it on the command line the server reads (a bind mount over /proc/cmdline).
    Deno.writeTextFileSync(
      cmdline,
      `console=ttyS0 netroot.mac=52:54:00:00:00:21 netroot.image=${secret.id} quiet\n`,
    );
    const r = await cli("node", "save", "n1", "deb");
    assert.equal(r.code, 1, r.out);
    assert.match(
      r.err,
      new RegExp(
        `cannot fetch the upper of n1: it names image version ${
          secret.id.slice(0, 12)
        }, which netroot never gave it to boot`,
      ),
    );
    assert.deepEqual(ctx.images.history("deb").map((v) => v.id), [baseId], "nothing committed");
    assert.deepEqual(await dirEntries(ctx.data.tmp), []);
    // A version the server did give it (a boot it opened for n1, its report lost) is taken.
    openBoot(ctx.db, "52:54:00:00:00:21", secret.id);
    const ok = await cli("node", "save", "n1", "deb");
    assert.equal(ok.code, 0, ok.err);
    assert.equal(ctx.images.get("deb").parent, secret.id);
  });
});

Deno.test("node save NODE NAME: busybox tar, a node not booted, over the size, idle or total bound: one line, nothing committed", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs, mount namespaces)");
  const big = (lower: string) =>
    changedUpper(lower, (r) => Deno.writeTextFileSync(`${r}/big`, "x".repeat(1 << 20)));
  await withLiveNode(big, async ({ ctx, cli }) => {
    const r = await cli("node", "save", "n1", "saved");
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot fetch the upper of n1: the image has no GNU tar \(busybox tar/);
    assert.throws(() => ctx.images.get("saved"), /saved/);
  }, { tar: "/bin/busybox" });
  await withLiveNode(big, async ({ ctx, cli }) => {
    const r = await cli("node", "save", "n1", "saved");
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /cannot fetch the upper of n1: it is off, not booted \(or use --upper FILE\)/,
    );
    assert.throws(() => ctx.images.get("saved"), /saved/);
  }, { state: "off" });
  await withLiveNode(big, async ({ ctx }) => {
    await assert.rejects(
      saveLiveNode(ctx, "n1", "saved", null, { limitBytes: 100_000 }),
      /cannot fetch the upper of n1: it is larger than 0 MB/,
    );
    assert.throws(() => ctx.images.get("saved"), /saved/);
    assert.deepEqual(await dirEntries(ctx.data.tmp), []);
  });
  // a node that says it is GNU tar, then sends nothing: the idle bound ends it
  const stall = Deno.makeTempDirSync({ prefix: "nr-stall-" });
  Deno.writeTextFileSync(
    `${stall}/tar`,
    '#!/bin/sh\n[ "$1" = --version ] && { echo "tar (GNU tar) 1.34"; exit 0; }\nexec sleep 10\n',
    { mode: 0o755 },
  );
  try {
    await withLiveNode(big, async ({ ctx }) => {
      const t0 = performance.now();
      await assert.rejects(
        saveLiveNode(ctx, "n1", "saved", null, { idleMs: 1000 }),
        /cannot fetch the upper of n1: no data for 1 s/,
      );
      assert.ok(performance.now() - t0 < 8000, "not the 10 s of the node's sleep");
      assert.throws(() => ctx.images.get("saved"), /saved/);
      assert.deepEqual(await dirEntries(ctx.data.tmp), []);
    }, { tar: `${stall}/tar` });
    // attacker: a byte now and then, never idle for long (10 s here): the total bound (4.5 s) ends
    // it; the idle bound (3 s) is fifteen times the gap, so that a loaded machine's stall is not
    // taken for idle (2 s, ten times, was once, under helpers' load)
    Deno.writeTextFileSync(
      `${stall}/tar`,
      '#!/bin/sh\n[ "$1" = --version ] && { echo "tar (GNU tar) 1.34"; exit 0; }\n' +
        "for i in $(seq 50); do printf x; sleep 0.2; done\n",
      { mode: 0o755 },
    );
    await withLiveNode(big, async ({ ctx }) => {
      const t0 = performance.now();
      await assert.rejects(
        saveLiveNode(ctx, "n1", "saved", null, { idleMs: 3000, totalMs: 4500 }),
        /cannot fetch the upper of n1: it took over 0.075 min/,
      );
      assert.ok(performance.now() - t0 < 8000);
      assert.throws(() => ctx.images.get("saved"), /saved/);
      assert.deepEqual(await dirEntries(ctx.data.tmp), []);
    }, { tar: `${stall}/tar` });
  } finally {
    Deno.removeSync(stall, { recursive: true });
  }
});

Deno.test("node save NODE NAME: a node that trickles its upper does not hold the server's stop: the save's ssh ends with the others", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs, mount namespaces)");
  const stall = Deno.makeTempDirSync({ prefix: "nr-trickle-" });
  // attacker: a byte every 0.2 s, never idle, for the whole save's hour (here 10 s)
  Deno.writeTextFileSync(
    `${stall}/tar`,
    '#!/bin/sh\n[ "$1" = --version ] && { echo "tar (GNU tar) 1.34"; exit 0; }\n' +
      `: > ${stall}/started\nfor i in $(seq 50); do printf x; sleep 0.2; done\n`,
    { mode: 0o755 },
  );
  const big = (lower: string) =>
    changedUpper(lower, (r) => Deno.writeTextFileSync(`${r}/big`, "x"));
  try {
    await withLiveNode(big, async ({ ctx }) => {
      const saving = saveLiveNode(ctx, "n1", "saved", null);
      await waitFor("the node's stream under way", () => existsSync(`${stall}/started`));
      const t0 = performance.now();
      ctx.ssh.close(); // as the server's stop does
      await assert.rejects(saving, /cannot fetch the upper of n1: the server stops/);
      assert.ok(performance.now() - t0 < 3000, `${Math.round(performance.now() - t0)} ms`);
      assert.throws(() => ctx.images.get("saved"), /saved/);
      assert.deepEqual(await dirEntries(ctx.data.tmp), []);
    }, { tar: `${stall}/tar` });
  } finally {
    Deno.removeSync(stall, { recursive: true });
  }
});

Deno.test("node save: the server's stop while the stream is being set up still ends the node's ssh", async () => {
  // The stop lands while the tarball's file is opened, the ssh not yet spawned: its listener,
  // added after the stop, never heard it, and the node held the stop for the save's hour.
  const dir = Deno.makeTempDirSync({ prefix: "nr-fetchstop-" });
  const stopping = new AbortController();
  const ssh = {
    stopping: stopping.signal,
    key: { publicKey: () => "" },
    target: () => ({ ip: "10.0.0.2", port: 22 }),
    // attacker: the node sends its stream late (here 3 s; within the save's hour)
    argv: () => ["sh", "-c", `: > ${dir}/started; sleep 3; printf x`],
  };
  const node = { name: "n1", state: "booted", stateReason: "port 22 answered" } as NodeInfo;
  try {
    const t0 = performance.now();
    const fetching = fetchUpper({ ssh } as unknown as Pick<Context, "ssh">, node, `${dir}/t`, {
      limitBytes: 1 << 20,
      idleMs: 60_000,
      totalMs: 60_000,
      dir: "/",
      cmdline: "/proc/cmdline",
    });
    stopping.abort("ssh ended: the server stops"); // as NodeSsh.close does
    await assert.rejects(fetching, /cannot fetch the upper of n1: the server stops/);
    assert.ok(performance.now() - t0 < 2000, `${Math.round(performance.now() - t0)} ms`);
    assert.ok(!existsSync(`${dir}/started`), "no ssh started after the stop");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("node save NODE NAME: a stream cut short or not a tarball, though the node's tar exits 0: one line, nothing committed", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs, mount namespaces)");
  const dir = Deno.makeTempDirSync({ prefix: "nr-cut-" });
  const node = (body: string) => {
    Deno.writeTextFileSync(
      `${dir}/tar`,
      '#!/bin/sh\n[ "$1" = --version ] && { echo "tar (GNU tar) 1.34"; exit 0; }\n' + body,
      { mode: 0o755 },
    );
    return `${dir}/tar`;
  };
  const upper = (lower: string) =>
    changedUpper(lower, (r) => Deno.writeTextFileSync(`${r}/big`, "x".repeat(1 << 20)));
  try {
    for (
      const [body, said] of [
        // the real stream, cut in the middle of a file (at a block boundary, and not)
        ['/usr/bin/tar "$@" | head -c 10240; exit 0\n', /truncated archive: the upper of n1/],
        ['/usr/bin/tar "$@" | head -c 5000; exit 0\n', /truncated archive: the upper of n1/],
        ["head -c 20000 /dev/urandom; exit 0\n", /the upper of n1 is not a tar archive|unknown/],
      ] as const
    ) {
      await withLiveNode(upper, async ({ ctx, cli }, _node, baseId) => {
        const r = await cli("node", "save", "n1", "deb");
        assert.equal(r.code, 1, body);
        assert.match(r.err, said);
        assert.equal(r.err.trim().split("\n").length, 1, r.err);
        assert.equal(ctx.images.get("deb").id, baseId, "the previous version stays current");
        assert.equal(ctx.images.history("deb").length, 1);
        assert.deepEqual(await dirEntries(ctx.data.tmp), []);
      }, { tar: node(body) });
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
