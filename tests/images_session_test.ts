// Changing images with the real tools (root): overlayfs sessions, systemd-nspawn for
// `image shell`, `image cp` in and out, committed as versions. Written also as an attacker would:
// the image holds symlinks pointing at the host's files and directories; a copy into or out of
// it must stay inside the copy.
import assert from "node:assert/strict";
import { copyIn, copyOut } from "../src/images/cp.ts";
import { processStart } from "../src/images/session.ts";
import { UserError } from "../src/errors.ts";
import { NodeRegistry } from "../src/nodes.ts";
import { Rebooter } from "../src/reboot.ts";
import { parseManifest } from "../contract/manifest.ts";
import { dirEntries, fixTimes, serveImages, sh, tempStore } from "./images_helpers.ts";

const busybox = new URL("../.work/busybox/busybox", import.meta.url).pathname;

/** A tiny OS tree: static busybox as /bin/sh, plus hostile symlinks to host paths. */
function busyboxTree(root: string, outside: string): void {
  for (const d of ["bin", "usr/bin", "etc", "opt", "data/keep", "var/cache/x"]) {
    Deno.mkdirSync(`${root}/${d}`, { recursive: true });
  }
  Deno.copyFileSync(busybox, `${root}/bin/busybox`);
  Deno.chmodSync(`${root}/bin/busybox`, 0o755);
  Deno.symlinkSync("busybox", `${root}/bin/sh`);
  Deno.writeTextFileSync(`${root}/etc/os-release`, "ID=netroot-test\n");
  Deno.writeTextFileSync(`${root}/etc/hostname`, "bb\n");
  Deno.writeTextFileSync(`${root}/var/cache/x/old`, "old cache\n");
  Deno.writeTextFileSync(`${root}/data/keep/file`, "keep\n");
  // hostile: absolute links to the host's files, as the host would read them
  Deno.symlinkSync(`${outside}/victim-file`, `${root}/etc/evil-file`);
  Deno.symlinkSync(`${outside}/victim-dir`, `${root}/opt/evil-dir`);
  Deno.symlinkSync(`${outside}/victim-dir`, `${root}/data/sub`);
  Deno.symlinkSync("/", `${root}/opt/root-link`);
  // the directory the links name exists inside the image too (so a copy may resolve into it)
  Deno.mkdirSync(`${root}${outside}/victim-dir`, { recursive: true });
  fixTimes(root);
}

async function setup() {
  const t = await tempStore();
  // The base's tree is looked at after commits: keep superseded trees (thin versions are
  // images_versions_test's).
  t.store.autoPrune = false;
  const outside = `${t.dir}/outside`;
  Deno.mkdirSync(`${outside}/victim-dir`, { recursive: true });
  Deno.writeTextFileSync(`${outside}/victim-file`, "host secret\n");
  busyboxTree(`${t.dir}/src`, outside);
  const base = await t.store.import(`${t.dir}/src`, "bb");
  const nodes = new NodeRegistry(t.data, t.db, t.store, new Rebooter(t.db), new EventTarget());
  const victims = () => ({
    file: Deno.readTextFileSync(`${outside}/victim-file`),
    dir: [...Deno.readDirSync(`${outside}/victim-dir`)].map((e) => e.name),
  });
  const before = victims();
  const untouched = () => assert.deepEqual(victims(), before, "nothing written outside");
  return { t, nodes, base, outside, untouched };
}

/** `netroot image ARGS…` without a terminal, against the server at `port`. */
async function imageCli(main: string, port: number, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, "image", ...args],
    env: { NETROOT_SERVER: `http://127.0.0.1:${port}`, NETROOT_TOKEN: "t" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

/** `netroot image shell bb` at a terminal (script(1)), against the server at `port`: what it
 *  prints is waited for, what is typed goes to it; `end()` waits for its exit 0, gives its text. */
function interactiveShell(main: string, port: number) {
  const tty = new Deno.Command("script", {
    args: ["-qfec", `${Deno.execPath()} run -A ${main} image shell bb`, "/dev/null"],
    env: { NETROOT_SERVER: `http://127.0.0.1:${port}`, NETROOT_TOKEN: "t" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = tty.stdin.getWriter();
  const seen: string[] = [];
  const reader = (async () => {
    for await (const c of tty.stdout.pipeThrough(new TextDecoderStream())) seen.push(c);
  })();
  return {
    async waitFor(re: RegExp) {
      const until = Date.now() + 60_000;
      while (!re.test(seen.join(""))) {
        assert.ok(Date.now() < until, `no ${re} in ${JSON.stringify(seen.join(""))}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    type: (text: string) => w.write(new TextEncoder().encode(text)),
    async end(): Promise<string> {
      await w.close();
      assert.equal((await tty.status).code, 0, seen.join(""));
      await reader;
      return seen.join("");
    },
  };
}

const manifestOf = (t: Awaited<ReturnType<typeof tempStore>>, id: string) =>
  new Map(parseManifest(Deno.readTextFileSync(t.data.manifest(id))).map((e) => [e.path, e]));

Deno.test("session: a real overlay upper (whiteouts, opaque dir, new files) becomes a version", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs)");
  const { t, base } = await setup();
  try {
    const s = await t.store.sessions.open("bb");
    Deno.removeSync(`${s.merged}/etc/hostname`); // whiteout
    Deno.removeSync(`${s.merged}/var/cache/x`, { recursive: true });
    Deno.mkdirSync(`${s.merged}/var/cache/x`); // opaque directory
    Deno.writeTextFileSync(`${s.merged}/var/cache/x/new`, "new\n");
    Deno.writeTextFileSync(`${s.merged}/etc/motd`, "hello\n");
    Deno.chmodSync(`${s.merged}/etc/motd`, 0o600);
    Deno.chownSync(`${s.merged}/etc/motd`, 1234, 5678);
    const v = await t.store.sessions.commit(s.id, { madeBy: "shell", command: "test" });
    assert.equal(v.existed, false);
    assert.equal(v.parent, base.id);
    const m = manifestOf(t, v.id);
    assert.equal(m.has("/etc/hostname"), false);
    assert.equal(m.has("/var/cache/x/old"), false, "opaque: the lower's contents are gone");
    assert.equal(m.get("/var/cache/x/new")?.type, "file");
    const motd = m.get("/etc/motd")!;
    assert.deepEqual([motd.mode, motd.uid, motd.gid], [0o600, 1234, 5678]);
    for (const e of m.values()) {
      assert.ok(!Object.keys(e.xattrs ?? {}).some((k) => k.includes("overlay")), e.path);
      assert.notEqual(e.type === "char" && e.rdev?.major === 0 && e.rdev.minor === 0, true);
    }
    // the base is unchanged and shares the untouched files
    const b = manifestOf(t, base.id);
    assert.ok(b.has("/etc/hostname") && b.has("/var/cache/x/old"));
    const ino = (id: string, p: string) => Deno.lstatSync(t.data.rootfs(id) + p).ino;
    assert.equal(ino(v.id, "/bin/busybox"), ino(base.id, "/bin/busybox"));
    assert.deepEqual(await dirEntries(t.data.tmp), [], "session and scratch dirs are gone");
    assert.equal(t.store.get("bb").id, v.id);
  } finally {
    await t.close();
  }
});

Deno.test("two sessions on one version: both commit, the second says what it did not see", async () => {
  const { t, base } = await setup();
  try {
    const a = await t.store.sessions.open("bb");
    const b = await t.store.sessions.open("bb");
    Deno.writeTextFileSync(`${a.merged}/etc/a`, "a\n");
    Deno.writeTextFileSync(`${b.merged}/etc/b`, "b\n");
    const va = await t.store.sessions.commit(a.id, { madeBy: "shell", command: null });
    const vb = await t.store.sessions.commit(b.id, { madeBy: "shell", command: null });
    assert.equal(va.outdated, null);
    assert.equal(vb.outdated, va.id);
    assert.equal(vb.previous, va.id);
    assert.deepEqual(t.store.history("bb").map((v) => v.id), [base.id, va.id, vb.id]);
    assert.equal(manifestOf(t, vb.id).has("/etc/a"), false, "no silent merge either");
    // a discarded session leaves nothing, the image unchanged
    const c = await t.store.sessions.open("bb");
    Deno.writeTextFileSync(`${c.merged}/etc/c`, "c\n");
    await t.store.sessions.discard(c.id);
    assert.equal(t.store.get("bb").id, vb.id);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    await t.close();
  }
});

Deno.test("a server that died with a session open: the next start detaches its overlay and wipes it", async () => {
  const { t, base } = await setup();
  try {
    const s = await t.store.sessions.open("bb");
    Deno.writeTextFileSync(`${s.merged}/etc/half`, "half\n");
    // its next version's tree written ahead too (a dead server writes nothing more: wait for it)
    assert.equal((await t.store.sessions.prepared(s.id)).ready, true);
    assert.ok(Deno.statSync(`${s.dir}/next/etc`).isDirectory);
    const mounted = () => Deno.readTextFileSync("/proc/self/mountinfo").includes(s.merged);
    assert.ok(mounted());
    // the next start: a new store on the same data dir (the old one's memory is gone)
    const { ImageStore } = await import("../src/images/store.ts");
    const again = new ImageStore(t.data, t.db);
    assert.ok((await again.reconcile()) >= 1);
    assert.equal(mounted(), false, "the overlay is detached");
    assert.deepEqual(await dirEntries(t.data.tmp), []);
    assert.equal(again.get("bb").id, base.id, "the image is as it was");
    assert.ok(!manifestOf(t, base.id).has("/etc/half"));
  } finally {
    await t.close();
  }
});

Deno.test("image cp in: hostile symlinks in the image resolve inside it; nothing written on the host", async () => {
  const { t, untouched } = await setup();
  try {
    const host = `${t.dir}/host`;
    Deno.mkdirSync(`${host}/sub`, { recursive: true });
    Deno.writeTextFileSync(`${host}/payload`, "payload\n");
    Deno.chmodSync(`${host}/payload`, 0o640);
    Deno.chownSync(`${host}/payload`, 42, 43);
    Deno.writeTextFileSync(`${host}/sub/inner`, "inner\n");
    const cp = (src: string[], path: string) =>
      copyIn(t.store, src, "bb", path, { command: "test" });

    // onto a symlink to a host file (missing inside the image): the link is replaced
    let v = await cp([`${host}/payload`], "/etc/evil-file");
    untouched();
    let m = manifestOf(t, v.id);
    const victim = m.get("/etc/evil-file")!;
    assert.equal(victim.type, "file");
    assert.deepEqual([victim.mode, victim.uid, victim.gid], [0o640, 42, 43], "owner, mode kept");
    untouched();
    // into a symlinked directory (absolute, to the host), and through "/" links and ".."
    v = await cp([`${host}/payload`], "/opt/evil-dir/");
    assert.equal(manifestOf(t, v.id).has(`${t.dir}/outside/victim-dir/payload`), true);
    v = await cp([`${host}/payload`], "/opt/root-link/../../../../etc/p2");
    m = manifestOf(t, v.id);
    assert.ok(m.has("/etc/p2"));
    untouched();
    // a tree whose path meets an image symlink to a directory below the destination: the link
    // is kept and followed inside the image (as usrmerge's /bin -> usr/bin must be), its absolute
    // target taken in the image, never the host's directory it names
    Deno.mkdirSync(`${host}/data/sub`, { recursive: true });
    Deno.writeTextFileSync(`${host}/data/sub/x`, "x\n");
    v = await cp([`${host}/data`], "/");
    m = manifestOf(t, v.id);
    assert.equal(m.get("/data/sub")?.type, "symlink");
    assert.equal(m.get(`${t.dir}/outside/victim-dir/x`)?.type, "file");
    assert.equal(m.get("/data/keep/file")?.type, "file", "directories merge");
    untouched();
    // a missing parent is an error, and nothing is committed
    const n = t.store.history("bb").length;
    await assert.rejects(cp([`${host}/payload`], "/nope/x"), /no such directory in the image/);
    assert.equal(t.store.history("bb").length, n);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    await t.close();
  }
});

Deno.test("image cp out: an image's symlink is copied as a symlink, never the host file it names; a symlink loop is the caller's error", async () => {
  const { t } = await setup();
  try {
    const out = `${t.dir}/out`;
    Deno.mkdirSync(out);
    await copyOut(t.store, "bb", "/etc/evil-file", `${out}/f`);
    assert.ok(Deno.lstatSync(`${out}/f`).isSymlink);
    // a path through an absolute symlink of the image resolves inside the image
    const r = await copyOut(t.store, "bb", "/opt/root-link/etc", out);
    assert.equal(r.dest, `${out}/etc`);
    assert.equal(Deno.readTextFileSync(`${out}/etc/hostname`), "bb\n");
    assert.ok(Deno.lstatSync(`${out}/etc/evil-file`).isSymlink);
    await assert.rejects(copyOut(t.store, "bb", "/../../etc/shadow", out), /no such file/);
    // a symlink loop of the image (/etc -> /etc): the caller's error, not the server's (500)
    const loop = `${t.dir}/loop`;
    Deno.mkdirSync(`${loop}/usr`, { recursive: true });
    Deno.symlinkSync("/etc", `${loop}/etc`);
    await t.store.import(loop, "loop");
    Deno.writeTextFileSync(`${t.dir}/f`, "f\n");
    const refused = (e: Error) =>
      e instanceof UserError && /too many symbolic links/.test(e.message);
    await assert.rejects(copyOut(t.store, "loop", "/etc/shadow", out), refused);
    await assert.rejects(
      copyIn(t.store, [`${t.dir}/f`], "loop", "/etc/x", { command: null }),
      refused,
    );
    await assert.rejects(
      copyIn(t.store, [`${t.dir}/f`, `${t.dir}/f`], "loop", "/etc/", { command: null }),
      refused,
    );
  } finally {
    await t.close();
  }
});

Deno.test("image cp out: a huge sparse file of the image stays sparse on the host", async () => {
  const t = await tempStore();
  try {
    // an image file of 1 GiB that takes no block: written out in full, it would fill the disk
    Deno.mkdirSync(`${t.dir}/src`);
    const f = Deno.openSync(`${t.dir}/src/sparse`, { create: true, write: true });
    f.truncateSync(1 << 30);
    f.close();
    fixTimes(`${t.dir}/src`);
    await t.store.import(`${t.dir}/src`, "sparse");
    Deno.mkdirSync(`${t.dir}/out`);
    await copyOut(t.store, "sparse", "/sparse", `${t.dir}/out`);
    const st = Deno.lstatSync(`${t.dir}/out/sparse`);
    assert.equal(st.size, 1 << 30);
    assert.ok(st.blocks! * 512 < 1 << 20, `${st.blocks! * 512} bytes written for nothing`);
  } finally {
    await t.close();
  }
});

// An image's file with many names (hard links, one object in the store) was written out once
// per name: 100 names of 1 MiB made 101 MiB on the host (65,000 names of a 1 GiB file, imported
// from a tarball of 1 MiB, would fill the server's disk with 65 TB).
Deno.test("image cp out: a file of the image with 100 names is written once, its names hard links", async () => {
  const t = await tempStore();
  try {
    Deno.mkdirSync(`${t.dir}/src/names`, { recursive: true });
    Deno.writeFileSync(`${t.dir}/src/big`, new Uint8Array(1 << 20));
    for (let i = 1; i <= 100; i++) Deno.linkSync(`${t.dir}/src/big`, `${t.dir}/src/names/n${i}`);
    fixTimes(`${t.dir}/src`);
    await t.store.import(`${t.dir}/src`, "names");
    await copyOut(t.store, "names", "/", `${t.dir}/out`);
    const used = Number(sh("du", "-sk", `${t.dir}/out`).split("\t")[0]);
    assert.ok(used < 2 << 10, `${used} KiB written`);
    const ino = Deno.lstatSync(`${t.dir}/out/big`).ino;
    for (let i = 1; i <= 100; i++) {
      assert.equal(Deno.lstatSync(`${t.dir}/out/names/n${i}`).ino, ino);
    }
  } finally {
    await t.close();
  }
});

Deno.test("netroot image shell (-- CMD and interactive, systemd-nspawn) and cp commit; a failing or killed shell commits nothing", async () => {
  const { t, nodes, base } = await setup();
  const ac = new AbortController();
  try {
    const server = serveImages(t, ac.signal, nodes);
    nodes.add("52:54:00:00:00:07", { name: "n7" });
    await nodes.deploy(["n7"], "bb", { reboot: false, force: true });
    const main = new URL("../main.ts", import.meta.url).pathname;
    const cli = (...args: string[]) => imageCli(main, server.addr.port, args);
    const ok = await cli(
      "shell",
      "bb",
      "--",
      "/bin/sh",
      "-c",
      "echo from-nspawn > /etc/motd && rm /etc/hostname && /bin/busybox hostname >/dev/null",
    );
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^committed bb@[0-9a-f]{12} \(was [0-9a-f]{12}\)/);
    // n7 is off (never booted): not "still running the old version"
    assert.match(
      ok.stdout,
      /the new version of bb boots at the next boot of: n7 \(was [0-9a-f]{12}\) \(--reboot-nodes reboots them now\)/,
    );
    const v = t.store.get("bb");
    assert.equal(v.madeBy, "shell");
    assert.match(v.command!, /echo from-nspawn/);
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(v.id)}/etc/motd`), "from-nspawn\n");
    assert.equal(manifestOf(t, v.id).has("/etc/hostname"), false);
    assert.ok(Deno.lstatSync(`${t.data.rootfs(base.id)}/etc/hostname`).isFile, "base intact");
    assert.equal(nodes.get("n7").imageId, v.id, "the node follows the name");

    const bad = await cli("shell", "bb", "--", "/bin/sh", "-c", "echo x > /etc/x; exit 3");
    assert.equal(bad.code, 3);
    assert.match(bad.stderr, /the command exited with 3: nothing committed/);
    assert.equal(t.store.get("bb").id, v.id);
    assert.deepEqual(await dirEntries(t.data.tmp), [], "the session is gone");

    // a shell killed mid-way: the container stops, the session goes, nothing is committed
    const killed = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        main,
        "image",
        "shell",
        "bb",
        "--",
        "/bin/sh",
        "-c",
        "echo half > /etc/half; /bin/busybox sleep 60",
      ],
      env: { NETROOT_SERVER: `http://127.0.0.1:${server.addr.port}`, NETROOT_TOKEN: "t" },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const deadline = Date.now() + 60_000;
    const half = async () => {
      for (const d of await dirEntries(t.data.tmp)) {
        if (Deno.lstatSync(`${t.data.tmp}/${d}/upper/etc/half`).isFile) return true;
      }
      return false;
    };
    while (!(await half().catch(() => false))) {
      assert.ok(Date.now() < deadline, "the shell never wrote /etc/half");
      await new Promise((r) => setTimeout(r, 100));
    }
    killed.kill("SIGTERM");
    assert.equal((await killed.status).code, 130);
    assert.equal(t.store.get("bb").id, v.id, "nothing committed");
    assert.deepEqual(await dirEntries(t.data.tmp), [], "the session is gone");
    assert.equal(t.store.sessions.list().length, 0);

    // interactive (a terminal, through script(1)): the shell, then the question on exit
    const tty = interactiveShell(main, server.addr.port);
    await tty.waitFor(/\/\S* # /); // busybox ash, in /root
    await tty.type("echo typed > /etc/typed; exit\r");
    await tty.waitFor(/commit the changes as a new version of bb\? \[y\/N\]/);
    await tty.type("y\r");
    assert.match(await tty.end(), /committed bb@[0-9a-f]{12}/);
    assert.equal(
      Deno.readTextFileSync(`${t.data.rootfs(t.store.get("bb").id)}/etc/typed`),
      "typed\n",
    );
    assert.match(t.store.get("bb").command!, /interactive shell/);

    // image cp through the CLI: in (a new version, the node told), and out
    Deno.writeTextFileSync(`${t.dir}/motd`, "via cp\n");
    const cpIn = await cli("cp", `${t.dir}/motd`, "bb:/etc/");
    assert.equal(cpIn.code, 0, cpIn.stderr);
    assert.match(cpIn.stdout, /^committed bb@[0-9a-f]{12}/);
    assert.equal(t.store.get("bb").madeBy, "cp");
    const cpOut = await cli("cp", "bb:/etc/motd", `${t.dir}/motd.out`);
    assert.equal(cpOut.code, 0, cpOut.stderr);
    assert.equal(Deno.readTextFileSync(`${t.dir}/motd.out`), "via cp\n");

    const hist = await cli("history", "bb");
    assert.match(hist.stdout, /\*\s+[0-9a-f]{12}\s+\S+ \S+\s+cp /);
    assert.match(hist.stdout, /\s+[0-9a-f]{12}\s+\S+ \S+\s+shell /);
    // ls --all: every version's unique size, as history shows it (it was "-" for every one)
    const all = JSON.parse((await cli("ls", "--all", "--json")).stdout) as {
      id: string;
      uniqueSize?: number;
    }[];
    assert.ok(all.length >= 3, JSON.stringify(all));
    const unique = new Map(
      (JSON.parse((await cli("history", "bb", "--json")).stdout) as typeof all)
        .map((v) => [v.id, v.uniqueSize]),
    );
    for (const v of all) {
      assert.equal(typeof v.uniqueSize, "number", `${v.id}: no unique size`);
      assert.equal(v.uniqueSize, unique.get(v.id));
    }
  } finally {
    ac.abort();
    await t.close();
  }
});

Deno.test("a session whose `image shell` was killed (kill -9: it could not discard it) goes at the next session's open", async () => {
  const { t, base } = await setup();
  try {
    const holder = (pid: number) => ({ pid, start: processStart(pid)! });
    const cli = new Deno.Command("sleep", { args: ["60"] }).spawn(); // the CLI that opens it
    const orphan = await t.store.sessions.open(base.id, undefined, holder(cli.pid));
    Deno.writeTextFileSync(`${orphan.merged}/etc/big`, "x".repeat(1 << 20)); // what it wrote
    const live = new Deno.Command("sleep", { args: ["60"] }).spawn();
    const kept = await t.store.sessions.open(base.id, undefined, holder(live.pid));
    // A CLI in another pid namespace (a container on the host's network): its pid names another
    // process here, whose end must not discard the session (before: it was discarded, its work
    // lost, once that unrelated process exited).
    const unrelated = new Deno.Command("sleep", { args: ["60"] }).spawn();
    const foreign = await t.store.sessions.open(base.id, undefined, {
      pid: unrelated.pid,
      start: String(Number(processStart(unrelated.pid)) + 12345), // the container's process's
    });
    unrelated.kill("SIGKILL");
    await unrelated.status;
    cli.kill("SIGKILL");
    await cli.status;
    const next = await t.store.sessions.open(base.id);
    // (before: the orphan stayed until the server restarted: its overlay mounted, its upper and
    // its copy of the base's tree in tmp/, the base kept from image rm, one more per killed shell)
    assert.deepEqual(
      t.store.sessions.list().map((s) => s.id).sort(),
      [kept.id, foreign.id, next.id].sort(),
    );
    assert.deepEqual(
      (await dirEntries(t.data.tmp)).sort(),
      [
        `session-${kept.id}`,
        `session-${foreign.id}`,
        `session-${next.id}`,
      ].sort(),
    );
    await t.store.sessions.discard(foreign.id);
    assert.equal(
      Deno.readTextFileSync("/proc/self/mountinfo").includes(orphan.merged),
      false,
      "its overlay is unmounted",
    );
    live.kill("SIGKILL");
    await live.status;
    const last = await t.store.sessions.open(base.id);
    assert.deepEqual(t.store.sessions.list().map((s) => s.id).sort(), [next.id, last.id].sort());
    for (const s of [next, last]) await t.store.sessions.discard(s.id);
  } finally {
    await t.close();
  }
});

Deno.test("a commit on a full disk is refused before it starts (507): the session and its work stay, and commit once room is made; an interactive image shell asks again, image cp and a non-interactive shell leave no session", async () => {
  assert.equal(Deno.uid(), 0, "needs root (tmpfs, overlayfs)");
  const mnt = await Deno.makeTempDir({ prefix: "netroot-full-session-" });
  sh("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt);
  const t = await tempStore(`${mnt}/data`);
  const ac = new AbortController();
  try {
    const nodes = new NodeRegistry(t.data, t.db, t.store, new Rebooter(t.db), new EventTarget());
    const main = new URL("../main.ts", import.meta.url).pathname;
    busyboxTree(`${t.dir}/src`, `${t.dir}/outside`);
    await t.store.import(`${t.dir}/src`, "bb");
    const s = await t.store.sessions.open("bb");
    // an hour of work in `image shell`
    Deno.writeFileSync(`${s.merged}/etc/work`, new Uint8Array(256 << 10).fill(7));
    // then the disk fills (another image's import, a log)
    const spare = `${mnt}/spare`, filler = `${mnt}/filler`;
    Deno.writeFileSync(spare, new Uint8Array(512 << 10).fill(1));
    try {
      sh("dd", "if=/dev/zero", `of=${filler}`, "bs=64k", "status=none");
    } catch { /* ENOSPC: full */ }
    await assert.rejects(
      t.store.sessions.commit(s.id, { madeBy: "shell", command: "test" }),
      (e) =>
        e instanceof UserError && e.status === 507 &&
        /^no room to commit: .*MB free.*make room/.test(e.message),
    );
    assert.equal(t.store.sessions.list().length, 1, "the session is still open");
    assert.equal(Deno.statSync(`${s.merged}/etc/work`).size, 256 << 10, "its work is there");
    assert.equal(t.store.list().length, 1, "nothing committed");
    // image cp (no one there to make room and ask again), with room for its file but not for
    // a commit: refused, its session gone
    Deno.removeSync(spare);
    Deno.writeTextFileSync(`${t.dir}/note`, "x");
    await assert.rejects(
      copyIn(t.store, [`${t.dir}/note`], "bb", "/etc", { command: null }),
      /no room to commit: .*; nothing committed/,
    );
    assert.deepEqual(t.store.sessions.list().map((x) => x.id), [s.id], "cp's session discarded");
    // `image shell --commit -- CMD` (no terminal to ask at): told, and its session discarded
    const server = serveImages(t, ac.signal, nodes);
    const out = await imageCli(main, server.addr.port, [
      "shell",
      "bb",
      "--commit",
      "--",
      "/bin/sh",
      "-c",
      "echo y > /etc/y",
    ]);
    assert.equal(out.code, 1, out.stderr);
    assert.match(out.stderr, /no room to commit: .*MB free.*; nothing committed/);
    assert.deepEqual(
      t.store.sessions.list().map((x) => x.id),
      [s.id],
      "the CLI's session discarded",
    );
    // interactive (a terminal, through script(1)): told, asked again; room made meanwhile
    const tty = interactiveShell(main, server.addr.port);
    await tty.waitFor(/\/\S* # /);
    await tty.type("echo typed > /etc/typed; exit\r");
    await tty.waitFor(/commit the changes as a new version of bb\? \[y\/N\]/);
    await tty.type("y\r");
    await tty.waitFor(/no room to commit: .*the changes are kept meanwhile[^]*commit again\?/);
    Deno.removeSync(filler); // the admin makes room
    await tty.type("y\r");
    assert.match(await tty.end(), /committed bb@[0-9a-f]{12}/);
    const typed = t.store.get("bb").id;
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(typed)}/etc/typed`), "typed\n");
    // the first session, its room made too, commits its work
    const v = await t.store.sessions.commit(s.id, { madeBy: "shell", command: "test" });
    assert.equal(Deno.statSync(`${t.data.rootfs(v.id)}/etc/work`).size, 256 << 10);
    assert.equal(t.store.get("bb").id, v.id);
  } finally {
    ac.abort();
    for (const x of t.store.sessions.list()) await t.store.sessions.discard(x.id);
    await t.close();
    sh("umount", mnt);
    await Deno.remove(mnt, { recursive: true });
  }
});

Deno.test("a commit whose upper adds thousands of files, on a disk with room for the base's share alone, is refused (507) and keeps them: the room counts the upper's lines too (attacker: a full disk)", async () => {
  assert.equal(Deno.uid(), 0, "needs root (tmpfs, overlayfs)");
  const mnt = await Deno.makeTempDir({ prefix: "netroot-full-session-" });
  sh("mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", mnt);
  const t = await tempStore(`${mnt}/data`);
  try {
    Deno.mkdirSync(`${t.dir}/src/etc`, { recursive: true });
    Deno.writeTextFileSync(`${t.dir}/src/etc/hostname`, "bb\n");
    const base = await t.store.import(`${t.dir}/src`, "bb");
    const s = await t.store.sessions.open("bb");
    // the session's work: 20,000 files (a package's documentation, a build's objects)
    Deno.mkdirSync(`${s.merged}/many`);
    for (let i = 0; i < 20_000; i++) Deno.writeTextFileSync(`${s.merged}/many/file-${i}`, "");
    // the disk then fills, up to what the base's share of a commit needs and 256 KiB more
    const baseShare = 4 * Deno.statSync(t.data.manifest(base.id)).size + (1 << 20);
    const filler = `${mnt}/filler`;
    Deno.writeFileSync(filler, new Uint8Array(t.store.freeRoom() - baseShare - (256 << 10)));
    // (before: the check passed, the new manifest met ENOSPC and the session went, its work with
    // it)
    await assert.rejects(
      t.store.sessions.commit(s.id, { madeBy: "shell", command: "test" }),
      (e) => e instanceof UserError && e.status === 507 && /^no room to commit/.test(e.message),
    );
    assert.deepEqual(t.store.sessions.list().map((x) => x.id), [s.id], "the session is open");
    assert.equal([...Deno.readDirSync(`${s.merged}/many`)].length, 20_000, "its work is there");
    Deno.removeSync(filler); // the admin makes room
    const v = await t.store.sessions.commit(s.id, { madeBy: "shell", command: "test" });
    assert.equal([...Deno.readDirSync(`${t.data.rootfs(v.id)}/many`)].length, 20_000);
  } finally {
    for (const x of t.store.sessions.list()) await t.store.sessions.discard(x.id);
    await t.close();
    sh("umount", mnt);
    await Deno.remove(mnt, { recursive: true });
  }
});

Deno.test("an image shell in a pid namespace of its own that sees the server's /proc names itself, not the server's process of its pid: that one's exit leaves its session (attacker: pid namespaces)", async () => {
  assert.equal(Deno.uid(), 0, "needs root (unshare, overlayfs)");
  const { t } = await setup();
  const ac = new AbortController();
  const fakeDir = await Deno.makeTempDir({ prefix: "netroot-fake-nspawn-" });
  // The container the shell runs: a second or so of work, nothing changed.
  Deno.writeTextFileSync(`${fakeDir}/systemd-nspawn`, "#!/bin/sh\nsleep 1.5\n", { mode: 0o755 });
  const unrelated = new Deno.Command("sleep", { args: ["60"] }).spawn(); // the server's side
  try {
    const server = serveImages(t, ac.signal);
    const main = new URL("../main.ts", import.meta.url).pathname;
    // `unshare --pid --fork` without --mount-proc: the shell's own pid namespace, the server's
    // /proc. Its pid there is made the unrelated process's pid here.
    const cli = new Deno.Command("unshare", {
      args: [
        "--pid",
        "--fork",
        "python3",
        "-c",
        `import os, sys
open("/proc/sys/kernel/ns_last_pid", "w").write(str(${unrelated.pid} - 1))
pid = os.fork()
if pid == 0: os.execv(sys.argv[1], sys.argv[1:])
assert pid == ${unrelated.pid}, pid
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))`,
        Deno.execPath(),
        ...["run", "-A", main, "image", "shell", "bb", "--commit", "--", "true"],
      ],
      env: {
        NETROOT_SERVER: `http://127.0.0.1:${server.addr.port}`,
        NETROOT_TOKEN: "t",
        PATH: `${fakeDir}:${Deno.env.get("PATH")}`,
      },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    for (let i = 0; i < 200 && !t.store.sessions.list().length; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(t.store.sessions.list().length, 1, "the shell's session is open");
    unrelated.kill("SIGKILL");
    await unrelated.status;
    // a next session's open sweeps the sessions whose holder is gone
    const next = await t.store.sessions.open("bb");
    await t.store.sessions.discard(next.id);
    const out = await cli.output();
    const stderr = new TextDecoder().decode(out.stderr);
    // (before: its holder was the unrelated process; its session was discarded under it, and its
    // commit found no session)
    assert.equal(out.code, 0, stderr);
    assert.match(new TextDecoder().decode(out.stdout) + stderr, /bb/);
  } finally {
    try {
      unrelated.kill("SIGKILL");
    } catch { /* ended */ }
    await unrelated.status;
    ac.abort();
    for (const x of t.store.sessions.list()) await t.store.sessions.discard(x.id);
    await Deno.remove(fakeDir, { recursive: true });
    await t.close();
  }
});

Deno.test("a commit whose upper holds a file of 256 MiB of holes (a RUN's, a shell's) does not read it on the server's thread", async () => {
  // The upper's files were hashed with synchronous reads on the server's only thread at the
  // commit, and their size is whatever the image's shell or a Buildfile's RUN made (`truncate -s
  // 8G`: the hash that held the thread 32 s for 8 GiB of holes at an import).
  const { t } = await setup();
  const readSync = Deno.FsFile.prototype.readSync;
  let readOnThread = 0;
  try {
    const s = await t.store.sessions.open("bb");
    sh("truncate", "-s", "256M", `${s.merged}/opt/big`);
    Deno.FsFile.prototype.readSync = function (this: Deno.FsFile, p: Uint8Array) {
      const n = readSync.call(this, p);
      readOnThread += n ?? 0;
      return n;
    };
    const v = await t.store.sessions.commit(s.id, { madeBy: "shell", command: "test" });
    Deno.FsFile.prototype.readSync = readSync;
    assert.equal(manifestOf(t, v.id).get("/opt/big")?.size, 256 << 20);
    assert.ok(readOnThread < 1 << 20, `${readOnThread} bytes read on the server's thread`);
  } finally {
    Deno.FsFile.prototype.readSync = readSync;
    await t.close();
  }
});

// The README's --bridge server run in a network namespace with `ip netns exec`, which also makes
// a mount namespace: the session's overlay was mounted there, the CLI's nspawn got an empty
// directory ("doesn't look like it has an OS tree … Refusing."), and the CLI said "the command
// exited with 1: nothing committed".
Deno.test("image shell against a server in another mount namespace: one line saying so, the session discarded (root)", async () => {
  if (Deno.uid() !== 0) throw new Error("this test needs root (unshare -m, overlay mounts)");
  const dir = await Deno.makeTempDir({ prefix: "nr-mntns-" });
  const main = new URL("../main.ts", import.meta.url).pathname;
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  const server = new Deno.Command("unshare", {
    args: ["--mount", "--propagation", "private", "--", Deno.execPath(), "run", "-A", main]
      .concat(["serve", "--data", `${dir}/data`, "--http", `127.0.0.1:${port}`]),
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const cli = (...args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", main, "image", ...args],
      env: { NETROOT_SERVER: `http://127.0.0.1:${port}`, NETROOT_DATA: `${dir}/data` },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output().then((o) => ({
      code: o.code,
      out: new TextDecoder().decode(o.stdout),
      err: new TextDecoder().decode(o.stderr),
    }));
  try {
    const up = Date.now() + 30_000;
    while (
      !(await fetch(`http://127.0.0.1:${port}/api/v1/health`).then((r) => r.ok, () => false))
    ) {
      if (Date.now() > up) throw new Error("the server did not come up");
      await new Promise((r) => setTimeout(r, 100));
    }
    busyboxTree(`${dir}/src`, `${dir}/outside`);
    const imported = await cli("import", `${dir}/src`, "--name", "bb");
    assert.equal(imported.code, 0, imported.err);
    const r = await cli("shell", "bb", "--", "true");
    assert.equal(r.code, 1, r.err);
    assert.match(
      r.err,
      /^netroot image: the session's tree \S+ is not mounted in this mount namespace: the server runs in another one/,
    );
    assert.doesNotMatch(r.err, /OS tree|exited with/);
    const sessions = await Array.fromAsync(Deno.readDir(`${dir}/data/tmp`));
    assert.deepEqual(sessions.filter((e) => e.name.startsWith("session-")), [], "discarded");
  } finally {
    server.kill("SIGTERM");
    await server.status;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("image cp in and out: a socket stays a socket, a FIFO a FIFO (a socket became a FIFO)", async () => {
  const t = await tempStore();
  try {
    Deno.mkdirSync(`${t.dir}/src/etc`, { recursive: true });
    Deno.writeTextFileSync(`${t.dir}/src/etc/hostname`, "n\n");
    fixTimes(`${t.dir}/src`);
    await t.store.import(`${t.dir}/src`, "special");
    // a project directory with a running program's socket in it, and a FIFO
    const host = `${t.dir}/host/run`;
    Deno.mkdirSync(host, { recursive: true });
    // (listening while it is copied: Deno removes the socket's file as it closes it)
    const listener = Deno.listen({ transport: "unix", path: `${host}/app.sock` });
    sh("mkfifo", `${host}/queue`);
    const v = await copyIn(t.store, [host], "special", "/", { command: "test" })
      .finally(() => listener.close());
    const m = manifestOf(t, v.id);
    assert.equal(m.get("/run/app.sock")?.type, "socket");
    assert.equal(m.get("/run/queue")?.type, "fifo");
    await copyOut(t.store, "special", "/run", `${t.dir}/out`);
    assert.ok(Deno.lstatSync(`${t.dir}/out/app.sock`).isSocket, "a socket copied out");
    assert.ok(Deno.lstatSync(`${t.dir}/out/queue`).isFifo);
  } finally {
    await t.close();
  }
});

Deno.test("image cp over HTTP: its client gone during the copy, the copy stops and nothing is committed", async () => {
  const t = await tempStore();
  const ac = new AbortController();
  try {
    Deno.mkdirSync(`${t.dir}/src/etc`, { recursive: true });
    Deno.writeTextFileSync(`${t.dir}/src/etc/hostname`, "n\n");
    fixTimes(`${t.dir}/src`);
    const base = await t.store.import(`${t.dir}/src`, "gone");
    const host = `${t.dir}/many`;
    Deno.mkdirSync(host);
    for (let i = 0; i < 10000; i++) Deno.writeFileSync(`${host}/f${i}`, new Uint8Array(1));
    const server = serveImages(t, ac.signal);
    const client = new AbortController();
    const asked = fetch(`http://127.0.0.1:${server.addr.port}/api/v1/images/-/cp`, {
      method: "POST",
      headers: { accept: "application/x-ndjson" },
      body: JSON.stringify({ sources: [host], image: "gone", path: "/" }),
      signal: client.signal,
    }).then((r) => r.text()).catch(() => "gone");
    // the client goes away (Ctrl-C) once the copy's session is open
    for (let i = 0; i < 6000 && !t.store.sessions.list().length; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    client.abort();
    assert.equal(await asked, "gone");
    // the copy's end: its session gone and its scratch (a commit's too) gone from tmp/
    for (let i = 0; i < 600; i++) {
      if (!t.store.sessions.list().length && !(await dirEntries(t.data.tmp)).length) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await t.store.idle();
    // before, the copy went on and committed, for no one
    assert.deepEqual(t.store.history("gone").map((v) => v.id), [base.id]);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    ac.abort();
    await t.close();
  }
});
