// `image build` with the real tools (root): RUN in systemd-nspawn, COPY/ADD from a context with
// GNU tar tarballs, the log streamed through the CLI, a failing step named by its Buildfile line
// and nothing committed; hostile contexts, tarballs and image symlinks stay inside.
import assert from "node:assert/strict";
import { build } from "../src/images/build.ts";
import type { ImageStore } from "../src/images/store.ts";
import { parseManifest } from "../contract/manifest.ts";
import { dirEntries, fixTimes, serveImages, sh, tempStore } from "./images_helpers.ts";

const busybox = new URL("../.work/busybox/busybox", import.meta.url).pathname;

async function setup() {
  const t = await tempStore();
  const outside = `${t.dir}/outside`;
  Deno.mkdirSync(outside);
  Deno.writeTextFileSync(`${outside}/host-secret`, "host\n");
  const root = `${t.dir}/src`;
  for (const d of ["bin", "usr", "etc", "opt"]) Deno.mkdirSync(`${root}/${d}`, { recursive: true });
  Deno.copyFileSync(busybox, `${root}/bin/busybox`);
  Deno.chmodSync(`${root}/bin/busybox`, 0o755);
  Deno.symlinkSync("busybox", `${root}/bin/sh`);
  Deno.writeTextFileSync(`${root}/etc/os-release`, "ID=netroot-test\n");
  Deno.symlinkSync(outside, `${root}/opt/evil-dir`); // hostile: a link to the host's directory
  Deno.mkdirSync(`${root}${outside}`, { recursive: true }); // …which the image has too
  fixTimes(root);
  await t.store.import(root, "bb");

  const ctxDir = `${t.dir}/ctx`;
  Deno.mkdirSync(`${ctxDir}/conf`, { recursive: true });
  Deno.writeTextFileSync(`${ctxDir}/conf/a.conf`, "a=1\n");
  Deno.writeTextFileSync(`${ctxDir}/secret.txt`, "s3cret\n");
  Deno.mkdirSync(`${t.dir}/tarsrc/data`, { recursive: true });
  Deno.writeTextFileSync(`${t.dir}/tarsrc/data/from-tar`, "tar\n");
  Deno.chownSync(`${t.dir}/tarsrc/data/from-tar`, 7, 8);
  sh("tar", "--numeric-owner", "-C", `${t.dir}/tarsrc`, "-czf", `${ctxDir}/files.tar.gz`, ".");
  Deno.symlinkSync("/etc", `${ctxDir}/etc-link`); // hostile: a context link to the host's /etc
  const untouched = () =>
    assert.deepEqual(
      [...Deno.readDirSync(outside)].map((e) => e.name),
      ["host-secret"],
      "nothing written on the host",
    );
  return { t, ctxDir, outside, untouched };
}

/** `text` as the Buildfile of the context `ctx`, built into `name` without a log. */
function buildText(store: ImageStore, ctx: string, name: string, text: string) {
  Deno.writeTextFileSync(`${ctx}/Buildfile`, text);
  return build(store, {
    name,
    buildfile: `${ctx}/Buildfile`,
    context: ctx,
    command: null,
    log: () => {},
  });
}

const manifestOf = (t: Awaited<ReturnType<typeof tempStore>>, id: string) =>
  new Map(parseManifest(Deno.readTextFileSync(t.data.manifest(id))).map((e) => [e.path, e]));

Deno.test("image build: ARG/ENV/WORKDIR/COPY/ADD/RUN in nspawn make one version", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs, systemd-nspawn)");
  const { t, ctxDir, outside } = await setup();
  try {
    Deno.writeTextFileSync(
      `${ctxDir}/Buildfile`,
      `# a comment
FROM bb
ARG GREETING=hello
ENV APP=/opt/app
WORKDIR $APP
COPY conf/ ./conf/
COPY --chown=1000:1000 --chmod=0600 secret.txt /etc/secret
ADD files.tar.gz /srv/
ADD --chown=3:4 files.tar.gz /chowned/
ADD files.tar.gz /opt/evil-dir/
RUN echo "$GREETING from $APP in $(/bin/busybox pwd)" > out.txt && \\
    /bin/busybox cat conf/a.conf >> out.txt
CMD ["/bin/sh"]
`,
    );
    const lines: string[] = [];
    const v = await build(t.store, {
      name: "bb",
      buildfile: `${ctxDir}/Buildfile`,
      context: ctxDir,
      command: "test",
      log: (l) => lines.push(l),
    });
    assert.equal(v.madeBy, "build");
    const root = t.data.rootfs(v.id);
    assert.equal(
      Deno.readTextFileSync(`${root}/opt/app/out.txt`),
      "hello from /opt/app in /opt/app\na=1\n",
    );
    const m = manifestOf(t, v.id);
    const secret = m.get("/etc/secret")!;
    assert.deepEqual([secret.uid, secret.gid, secret.mode], [1000, 1000, 0o600]);
    assert.deepEqual([m.get("/opt/app/conf/a.conf")!.uid], [0], "COPY makes root the owner");
    const fromTar = m.get("/srv/data/from-tar")!;
    assert.deepEqual([fromTar.uid, fromTar.gid], [7, 8], "ADD keeps the tarball's owners");
    const chowned = m.get("/chowned/data/from-tar")!;
    assert.deepEqual([chowned.uid, chowned.gid], [3, 4], "unless --chown says otherwise");
    assert.ok(m.has(`${outside}/data/from-tar`), "ADD through an image link: inside the image");
    assert.deepEqual(await dirEntries(outside), ["host-secret"], "nothing written on the host");
    assert.ok(lines.some((l) => /^step 9\/10 \(line 11\): RUN echo/.test(l)), lines.join("\n"));
    assert.ok(lines.some((l) => /CMD means nothing/.test(l)));
  } finally {
    await t.close();
  }
});

Deno.test("image build: a failing step names its line; hostile sources refused; nothing committed", async () => {
  const { t, ctxDir, untouched } = await setup();
  try {
    const before = t.store.history("bb").map((v) => v.id);
    const attempt = (text: string) => buildText(t.store, ctxDir, "bb", text);
    await assert.rejects(
      attempt("FROM bb\nRUN echo ok > /etc/ok\nRUN exit 7\nRUN echo never\n"),
      /^UserError: Buildfile line 3 failed: RUN exit 7: exit code 7; nothing committed$/,
    );
    await assert.rejects(
      attempt("FROM bb\nCOPY ../../etc/passwd /etc/passwd\n"),
      /line 2: \.\.\/\.\.\/etc\/passwd is outside the build context/,
    );
    // a context symlink to the host's /etc resolves inside the context: no such file there
    await assert.rejects(
      attempt("FROM bb\nCOPY etc-link/passwd /x\n"),
      /line 2 failed.*no such file/,
    );
    // a tarball with a member climbing out is refused by the import's rules
    Deno.mkdirSync(`${t.dir}/evil`, { recursive: true });
    Deno.writeTextFileSync(`${t.dir}/evil/x`, "x");
    sh(
      "tar",
      "-C",
      `${t.dir}/evil`,
      "-cf",
      `${ctxDir}/evil.tar`,
      "--transform",
      "s,^,../../,",
      "x",
    );
    await assert.rejects(attempt("FROM bb\nADD evil.tar /\n"), /line 2 failed.*'\.\.'/);
    await assert.rejects(attempt("FROM nope\nRUN true\n"), /image nope not found/);
    assert.deepEqual(t.store.history("bb").map((v) => v.id), before);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
    untouched();
  } finally {
    await t.close();
  }
});

Deno.test("image build: ADD of a tarball's huge sparse member writes no zeros", async () => {
  const { t, ctxDir } = await setup();
  try {
    // a 1 GiB member that is all hole: a tarball of a few KiB, unpacked sparse by GNU tar
    Deno.mkdirSync(`${t.dir}/sparse`);
    const f = Deno.openSync(`${t.dir}/sparse/big`, { create: true, write: true });
    f.truncateSync(1 << 30);
    f.close();
    sh("tar", "-S", "-C", `${t.dir}/sparse`, "-cf", `${ctxDir}/sparse.tar`, "big");
    const v = await buildText(t.store, ctxDir, "bb", "FROM bb\nADD sparse.tar /srv/\n");
    const st = Deno.lstatSync(`${t.data.rootfs(v.id)}/srv/big`);
    assert.equal(st.size, 1 << 30);
    assert.ok(st.blocks! * 512 < 1 << 20, `${st.blocks! * 512} bytes written for nothing`);
  } finally {
    await t.close();
  }
});

// A file's names (hard links) were copied one by one: a tarball of 1 KiB holding 1 MiB of zeros
// and 100 names of it wrote 101 MiB into the session (ext4 takes 65,000 names per file: a 1 MiB
// tarball of 1 GiB stood for 65 TB, the server's disk filled), and the image lost the links.
Deno.test("image build: ADD of a tarball's file with 100 names writes it once and keeps them as hard links (COPY too)", async () => {
  const { t, ctxDir } = await setup();
  try {
    const names = (dir: string) => {
      Deno.mkdirSync(dir, { recursive: true });
      Deno.writeFileSync(`${dir}/f0`, new Uint8Array(1 << 20));
      for (let i = 1; i <= 100; i++) Deno.linkSync(`${dir}/f0`, `${dir}/f${i}`);
    };
    names(`${t.dir}/links`);
    sh("tar", "-C", `${t.dir}/links`, "-czf", `${ctxDir}/links.tar.gz`, ".");
    assert.ok(Deno.statSync(`${ctxDir}/links.tar.gz`).size < 8192);
    names(`${ctxDir}/links`);
    let used = -1; // KiB in the session's directory once ADD and COPY are done
    Deno.writeTextFileSync(
      `${ctxDir}/Buildfile`,
      "FROM bb\nADD links.tar.gz /srv/\nCOPY links /opt/links/\nENV done=1\n",
    );
    const v = await build(t.store, {
      name: "bb",
      buildfile: `${ctxDir}/Buildfile`,
      context: ctxDir,
      command: null,
      log: (l) => {
        if (l.startsWith("step 3/3")) used = Number(sh("du", "-sk", t.data.tmp).split("\t")[0]);
      },
    });
    // the base's busybox (its tree written ahead) and the file twice: not 2 × 101 MiB
    assert.ok(used > 0 && used < 8 << 10, `${used} KiB written`);
    const m = manifestOf(t, v.id);
    for (const dir of ["/srv", "/opt/links"]) {
      const first = m.get(`${dir}/f0`)!.type === "file" ? `${dir}/f0` : m.get(`${dir}/f0`)!.target;
      for (let i = 0; i <= 100; i++) {
        const e = m.get(`${dir}/f${i}`)!;
        assert.ok(e.path === first || (e.type === "hardlink" && e.target === first), e.path);
      }
    }
  } finally {
    await t.close();
  }
});

// The context is its owner's, who may change it while the build copies it: a directory of it
// swapped for a link to a host directory during a COPY led the copy there, path by path (a
// process racing the swap got the host's files into 27 of 40 images). Here the swap comes at a
// set point: the `cp` that copies a sparse file of the context makes it, then runs the real cp.
Deno.test("image build: a context directory swapped for a link to a host directory during its COPY copies nothing of the host", async () => {
  const { t, ctxDir, outside } = await setup();
  const path = Deno.env.get("PATH")!;
  try {
    Deno.mkdirSync(`${ctxDir}/d`);
    const f = Deno.openSync(`${ctxDir}/d/host-secret`, { create: true, write: true });
    f.truncateSync(1 << 20); // sparse: copied by GNU cp
    f.close();
    Deno.mkdirSync(`${t.dir}/racer`);
    Deno.writeTextFileSync(
      `${t.dir}/racer/cp`,
      `#!/bin/sh\nmv ${ctxDir}/d ${ctxDir}/d.was && ln -s ${outside} ${ctxDir}/d\n` +
        `exec ${sh("sh", "-c", "command -v cp").trim()} "$@"\n`,
    );
    Deno.chmodSync(`${t.dir}/racer/cp`, 0o755);
    Deno.env.set("PATH", `${t.dir}/racer:${path}`);
    const v = await buildText(t.store, ctxDir, "bb", "FROM bb\nCOPY d /x/\n");
    Deno.env.set("PATH", path);
    assert.ok(Deno.lstatSync(`${ctxDir}/d`).isSymlink, "the swap was made");
    const copied = `${t.data.rootfs(v.id)}/x/host-secret`;
    assert.notEqual(Deno.readTextFileSync(copied), "host\n", "the host's file was copied");
    assert.equal(Deno.lstatSync(copied).size, 1 << 20);
  } finally {
    Deno.env.set("PATH", path);
    await t.close();
  }
});

// An ADD's tarball was opened by its path after it was looked at: swapped for a link to a host
// tarball at that moment (here when the decompressor starts), the host's tarball was extracted
// into the image (a backup of the data dir would give its token and ssh key).
Deno.test("image build: an ADD tarball swapped for a link to a host tarball as it is opened extracts nothing of the host", async () => {
  const { t, ctxDir, outside } = await setup();
  const path = Deno.env.get("PATH")!;
  try {
    sh("tar", "-C", outside, "-czf", `${t.dir}/backup.tar.gz`, ".");
    Deno.mkdirSync(`${t.dir}/racer`);
    const tarball = `${ctxDir}/files.tar.gz`;
    Deno.writeTextFileSync(
      `${t.dir}/racer/gzip`,
      `#!/bin/sh\n[ -L ${tarball} ] || { mv ${tarball} ${tarball}.was && ` +
        `ln -s ${t.dir}/backup.tar.gz ${tarball}; }\n` +
        `exec ${sh("sh", "-c", "command -v gzip").trim()} "$@"\n`,
    );
    Deno.chmodSync(`${t.dir}/racer/gzip`, 0o755);
    Deno.env.set("PATH", `${t.dir}/racer:${path}`);
    const v = await buildText(t.store, ctxDir, "bb", "FROM bb\nADD files.tar.gz /srv/\n");
    Deno.env.set("PATH", path);
    assert.ok(Deno.lstatSync(tarball).isSymlink, "the swap was made");
    const m = manifestOf(t, v.id);
    assert.ok(!m.has("/srv/host-secret"), "the host's tarball was extracted");
    assert.ok(m.has("/srv/data/from-tar"));
  } finally {
    Deno.env.set("PATH", path);
    await t.close();
  }
});

// The server reads the Buildfile wherever its path leads, and the context's owner made it a link
// to a file of /proc: its size says 0 and its content may have no end. Read to its end,
// /proc/self/pagemap (256 GiB: the server's address space) grew the server by 200 MB a second
// until it was killed (2 GiB in 11 s). A bounded one first (/proc/kpagecount, 8 bytes a page of
// the machine's memory), measured by the bytes this process reads; only then the endless one.
Deno.test("image build: a Buildfile linked to an endless file of /proc is refused after 1 MiB, not read to its end", async () => {
  const t = await tempStore();
  try {
    const ctx = `${t.dir}/ctx`;
    Deno.mkdirSync(ctx);
    const rchar = () => Number(/^rchar: (\d+)$/m.exec(Deno.readTextFileSync("/proc/self/io"))![1]);
    for (const file of ["/proc/kpagecount", "/proc/self/pagemap"]) {
      Deno.removeSync(ctx, { recursive: true });
      Deno.mkdirSync(ctx);
      Deno.symlinkSync(file, `${ctx}/Buildfile`);
      const before = rchar();
      await assert.rejects(
        build(t.store, {
          name: "x",
          buildfile: `${ctx}/Buildfile`,
          context: ctx,
          command: null,
          log: () => {},
        }),
        /Buildfile: larger than 1 MiB/,
      );
      const read = rchar() - before;
      assert.ok(read < 2 << 20, `${read} bytes of ${file} read`);
    }
  } finally {
    await t.close();
  }
});

Deno.test("image build: ADD of a tarball listing only files keeps the image's parent directories (/root 0700, /tmp 1777)", async () => {
  const t = await tempStore();
  try {
    const root = `${t.dir}/src`;
    for (const [d, mode] of [["root/.ssh", 0o700], ["root", 0o700], ["tmp", 0o1777]] as const) {
      Deno.mkdirSync(`${root}/${d}`, { recursive: true });
      Deno.chmodSync(`${root}/${d}`, mode);
    }
    fixTimes(root);
    const base = await t.store.import(root, "img");
    // members only, no directory entries: tar makes root/, root/.ssh/ and tmp/ as parents
    const tarsrc = `${t.dir}/tarsrc`;
    Deno.mkdirSync(`${tarsrc}/root/.ssh`, { recursive: true });
    Deno.mkdirSync(`${tarsrc}/tmp`);
    Deno.writeTextFileSync(`${tarsrc}/root/.ssh/authorized_keys`, "ssh-ed25519 AAAA\n");
    Deno.writeTextFileSync(`${tarsrc}/tmp/x`, "x\n");
    Deno.mkdirSync(`${t.dir}/ctx/`);
    sh("tar", "-C", tarsrc, "-cf", `${t.dir}/ctx/keys.tar`, "root/.ssh/authorized_keys", "tmp/x");
    const v = await buildText(t.store, `${t.dir}/ctx`, "img", "FROM img\nADD keys.tar /\n");
    const before = manifestOf(t, base.id), after = manifestOf(t, v.id);
    assert.ok(after.has("/root/.ssh/authorized_keys") && after.has("/tmp/x"));
    for (const d of ["/root", "/root/.ssh", "/tmp"]) {
      const [b, a] = [before.get(d)!, after.get(d)!];
      // before: 0755 root:root, mtime 0 (the extraction's own parents)
      assert.deepEqual([a.mode, a.uid, a.gid, a.mtime], [b.mode, b.uid, b.gid, b.mtime], d);
    }
  } finally {
    await t.close();
  }
});

Deno.test("image build: ADD and COPY of a bin/ onto a usrmerged image keep /bin -> usr/bin; a link out of the image is still replaced", async () => {
  const t = await tempStore();
  try {
    const root = `${t.dir}/src`;
    Deno.mkdirSync(`${root}/usr/bin`, { recursive: true });
    Deno.writeTextFileSync(`${root}/usr/bin/ls`, "ls\n");
    Deno.symlinkSync("usr/bin", `${root}/bin`); // Debian since bookworm
    Deno.symlinkSync("/usr/bin", `${root}/sbin`); // absolute: resolved inside the image
    Deno.symlinkSync("../../../../../../..", `${root}/up`); // leads to the image's root only
    fixTimes(root);
    const base = await t.store.import(root, "img");
    const ctx = `${t.dir}/ctx`;
    for (const d of ["tarsrc/bin", "tarsrc/sbin", "ctx/dir/bin", "ctx/dir/up/etc"]) {
      Deno.mkdirSync(`${t.dir}/${d}`, { recursive: true });
    }
    Deno.writeTextFileSync(`${t.dir}/tarsrc/bin/from-tar`, "t\n");
    Deno.writeTextFileSync(`${t.dir}/tarsrc/sbin/from-tar-s`, "s\n");
    Deno.writeTextFileSync(`${ctx}/dir/bin/from-copy`, "c\n");
    Deno.writeTextFileSync(`${ctx}/dir/up/etc/through-up`, "u\n");
    sh("tar", "-C", `${t.dir}/tarsrc`, "-cf", `${ctx}/bin.tar`, "bin", "sbin");
    const v = await buildText(t.store, ctx, "img", "FROM img\nADD bin.tar /\nCOPY dir/ /\n");
    const m = manifestOf(t, v.id);
    // before: /bin became a directory holding only the new files, /usr/bin/ls out of its reach
    assert.deepEqual([m.get("/bin")!.type, m.get("/bin")!.target], ["symlink", "usr/bin"]);
    assert.deepEqual([m.get("/sbin")!.type, m.get("/sbin")!.target], ["symlink", "/usr/bin"]);
    for (const f of ["ls", "from-tar", "from-tar-s", "from-copy"]) {
      assert.equal(m.get(`/usr/bin/${f}`)?.type, "file", f);
    }
    assert.equal(m.get("/usr/bin")!.mode, manifestOf(t, base.id).get("/usr/bin")!.mode);
    assert.equal(m.get("/up")!.type, "symlink");
    assert.equal(m.get("/etc/through-up")?.type, "file", "`up` leads to the image's root");
  } finally {
    await t.close();
  }
});

Deno.test("image build: a RUN that fills the disk, then exits 0: the failed commit gives the space back (root: tmpfs)", async () => {
  const mnt = await Deno.makeTempDir({ prefix: "netroot-full-" });
  sh("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt);
  const t = await tempStore(`${mnt}/data`);
  const used = () => Number(sh("df", "-k", "--output=used", mnt).split("\n")[1]);
  try {
    const root = `${t.dir}/src`;
    for (const d of ["bin", "etc", "usr"]) Deno.mkdirSync(`${root}/${d}`, { recursive: true });
    Deno.copyFileSync(busybox, `${root}/bin/busybox`);
    Deno.chmodSync(`${root}/bin/busybox`, 0o755);
    Deno.symlinkSync("busybox", `${root}/bin/sh`);
    fixTimes(root);
    await t.store.import(root, "bb");
    const before = used();
    Deno.mkdirSync(`${t.dir}/ctx`);
    const attempt = (run: string) =>
      buildText(t.store, `${t.dir}/ctx`, "bb", `FROM bb\nRUN ${run}\n`);
    // refused before the commit starts (no room for its manifest), the session discarded
    await assert.rejects(
      attempt("dd if=/dev/zero of=/big bs=1M count=100; true"),
      /no room to commit: .*; nothing committed/,
    );
    assert.deepEqual(await dirEntries(t.data.tmp), []);
    // before: the new file stayed in objects/ (nothing else linked to it) until `image gc`
    assert.ok(used() - before < 1024, `${used() - before} KiB still taken`);
    const v = await attempt("echo ok > /ok");
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(v.id)}/ok`), "ok\n");
  } finally {
    await t.close();
    sh("umount", mnt);
    await Deno.remove(mnt, { recursive: true });
  }
});

Deno.test("image build: a step's symlinks to host paths (RUN, ADD) lead no later COPY or ADD out of the image", async () => {
  const { t, ctxDir, outside, untouched } = await setup();
  try {
    // a tarball planting a link to the host's directory, then steps writing through the links
    Deno.mkdirSync(`${t.dir}/plant`);
    Deno.symlinkSync(outside, `${t.dir}/plant/planted-by-add`);
    sh("tar", "-C", `${t.dir}/plant`, "-cf", `${ctxDir}/plant.tar`, "planted-by-add");
    const v = await buildText(
      t.store,
      ctxDir,
      "bb",
      `FROM bb
RUN ln -s ${outside} /planted && ln -s ${outside}/host-secret /planted-file
ADD plant.tar /
COPY secret.txt /planted/pwned
COPY secret.txt /planted-by-add/pwned2
ADD files.tar.gz /planted/
COPY secret.txt /planted-file
`,
    );
    untouched();
    assert.equal(Deno.readTextFileSync(`${outside}/host-secret`), "host\n");
    const m = manifestOf(t, v.id);
    for (const p of ["pwned", "pwned2", "data/from-tar"]) {
      assert.ok(m.has(`${outside}/${p}`), `${p}: inside the image`);
    }
    // the link to a file the image lacks: replaced, as `image cp` does
    assert.equal(m.get("/planted-file")?.type, "file");
  } finally {
    await t.close();
  }
});

/** Processes whose command line is exactly `argv` (a RUN's, seen from the host). */
function processesRunning(argv: string[]): number[] {
  const want = argv.join("\0") + "\0";
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      if (Deno.readTextFileSync(`/proc/${e.name}/cmdline`) === want) pids.push(Number(e.name));
    } catch { /* exited meanwhile */ }
  }
  return pids;
}

Deno.test("image build: cancelled during a RUN, the container stops, the build ends, nothing committed", async () => {
  const { t, ctxDir } = await setup();
  const sleep = ["sleep", String(700_000 + Math.floor(Math.random() * 100_000))];
  const ac = new AbortController();
  try {
    const before = t.store.history("bb").map((v) => v.id);
    Deno.writeTextFileSync(`${ctxDir}/Buildfile`, `FROM bb\nRUN exec ${sleep.join(" ")}\n`);
    const job = build(t.store, {
      name: "bb",
      buildfile: `${ctxDir}/Buildfile`,
      context: ctxDir,
      command: null,
      log: () => {},
      signal: ac.signal,
    });
    for (let i = 0; i < 200 && !processesRunning(sleep).length; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(processesRunning(sleep).length, 1, "the RUN is running");
    ac.abort();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const ended = await Promise.race([
      job.then(() => "committed", (e) => (e as Error).message),
      new Promise((r) => timer = setTimeout(() => r("still running after 20 s"), 20_000)),
    ]);
    clearTimeout(timer);
    assert.equal(ended, "build cancelled: nothing committed");
    assert.deepEqual(processesRunning(sleep), [], "no process of the container is left");
    assert.deepEqual(t.store.history("bb").map((v) => v.id), before);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    ac.abort();
    // a container that outlived its build would keep the test (and its overlay) alive
    for (const pid of processesRunning(sleep)) Deno.kill(pid, "SIGKILL");
    await t.close();
  }
});

Deno.test("image build over HTTP: a RUN printing without end waits for its reader, not in memory; a reader gone cancels it", async () => {
  const { t, ctxDir } = await setup();
  const ac = new AbortController();
  const yes = ["/bin/busybox", "yes", `flood-${Math.floor(Math.random() * 1e9)}`];
  try {
    const server = serveImages(t, ac.signal);
    Deno.writeTextFileSync(`${ctxDir}/Buildfile`, `FROM bb\nRUN ${yes.join(" ")}\n`);
    const res = await fetch(`http://127.0.0.1:${server.addr.port}/api/v1/images/-/build`, {
      method: "POST",
      body: JSON.stringify({ name: "bb2", buildfile: `${ctxDir}/Buildfile`, context: ctxDir }),
    });
    const reader = res.body!.getReader();
    const text = new TextDecoder();
    let head = "";
    while (!head.includes(yes[2] + '"}')) head += text.decode((await reader.read()).value);
    // the client reads nothing for 3 s (before: the server queued ~250 MiB of log a second)
    const rss = Deno.memoryUsage().rss;
    await new Promise((r) => setTimeout(r, 3000));
    const grown = (Deno.memoryUsage().rss - rss) / 2 ** 20;
    assert.ok(grown < 200, `the server took ${Math.round(grown)} MiB more`);
    await reader.cancel();
    for (let i = 0; i < 100 && (await dirEntries(t.data.tmp)).length; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(await dirEntries(t.data.tmp), [], "the build is discarded");
    assert.deepEqual(processesRunning(yes), [], "its container is gone");
    assert.throws(() => t.store.get("bb2"), /not found/);
  } finally {
    for (const pid of processesRunning(yes)) Deno.kill(pid, "SIGKILL");
    ac.abort();
    await t.close();
  }
});

Deno.test("netroot image build streams its log and says which line failed", async () => {
  const { t, ctxDir } = await setup();
  const ac = new AbortController();
  try {
    const server = serveImages(t, ac.signal);
    const main = new URL("../main.ts", import.meta.url).pathname;
    const cli = async (...args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", main, "image", ...args],
        cwd: ctxDir,
        env: { NETROOT_SERVER: `http://127.0.0.1:${server.addr.port}`, NETROOT_TOKEN: "t" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const d = new TextDecoder();
      return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
    };
    // the second RUN prints what a hostile binary of the image could: an escape sequence that
    // retitles the admin's terminal, a carriage return that hides what came before it
    Deno.writeTextFileSync(
      `${ctxDir}/good`,
      "FROM x\nRUN echo built-in-nspawn\nRUN printf 'a\\033]0;pwned\\007\\rb\\n'\n",
    );
    const ok = await cli("build", "bb2", "--from", "bb", "-f", "good");
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(
      ok.stderr,
      /^step 1\/2 \(line 2\): RUN echo built-in-nspawn\n {2}built-in-nspawn$/m,
    );
    assert.ok(ok.stderr.includes("  a\\x1b]0;pwned\\x07\\x0db\n"), ok.stderr);
    for (const c of ["\x1b", "\x07", "\r"]) assert.ok(!ok.stderr.includes(c), "shown, not sent");
    assert.match(ok.stdout, /^committed bb2@[0-9a-f]{12} \(new image\)/);
    assert.equal(t.store.get("bb2").parent, t.store.get("bb").id);
    // --build-arg NAME=VALUE, and NAME alone for the CLI's environment's value, as docker build
    Deno.writeTextFileSync(
      `${ctxDir}/args`,
      'FROM bb\nARG WHO=default\nARG FROMENV\nRUN echo "$WHO $FROMENV" > /who\n',
    );
    Deno.env.set("FROMENV", "from-env");
    const args = await cli(
      "build",
      "bb3",
      "-f",
      "args",
      "--build-arg",
      "WHO=cli",
      "--build-arg",
      "FROMENV",
    ).finally(() => Deno.env.delete("FROMENV"));
    assert.equal(args.code, 0, args.stderr);
    const who = `${t.data.rootfs(t.store.get("bb3").id)}/who`;
    assert.equal(Deno.readTextFileSync(who), "cli from-env\n");
    Deno.writeTextFileSync(`${ctxDir}/bad`, "FROM bb\n\nRUN echo before\nRUN false\n");
    const bad = await cli("build", "bb2", "-f", "bad");
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /Buildfile line 4 failed: RUN false: exit code 1; nothing committed/);
    assert.equal(t.store.history("bb2").length, 1);
  } finally {
    ac.abort();
    await t.close();
  }
});

Deno.test("image build: ADD of a tarball holding a saved image (manifest.json, layers) or a manifest.json that is not JSON puts its files at dest, as Docker does", async () => {
  const { t, ctxDir } = await setup();
  try {
    // A docker save archive's files, to be shipped in the image (loaded on the node later)
    const saved = `${t.dir}/saved`;
    Deno.mkdirSync(`${saved}/l`, { recursive: true });
    Deno.mkdirSync(`${t.dir}/layer`);
    Deno.writeTextFileSync(`${t.dir}/layer/from-layer`, "layer\n");
    sh("tar", "-C", `${t.dir}/layer`, "-cf", `${saved}/l/layer.tar`, "from-layer");
    Deno.writeTextFileSync(`${saved}/c.json`, "{}");
    Deno.writeTextFileSync(
      `${saved}/manifest.json`,
      JSON.stringify([{ Config: "c.json", Layers: ["l/layer.tar"] }]),
    );
    sh("tar", "-C", saved, "-cf", `${ctxDir}/saved.tar`, ".");
    // A web app whose manifest.json has a comment (JSON5)
    const app = `${t.dir}/app`;
    Deno.mkdirSync(app);
    Deno.writeTextFileSync(`${app}/manifest.json`, '// the app\n{ "name": "x" }\n');
    sh("tar", "-C", app, "-czf", `${ctxDir}/app.tar.gz`, ".");
    const v = await buildText(
      t.store,
      ctxDir,
      "bb",
      "FROM bb\nADD saved.tar /var/lib/images/x/\nADD app.tar.gz /srv/app/\n",
    );
    const m = manifestOf(t, v.id);
    for (const p of ["/var/lib/images/x/manifest.json", "/var/lib/images/x/l/layer.tar"]) {
      assert.equal(m.get(p)?.type, "file", p);
    }
    assert.equal(m.has("/var/lib/images/x/from-layer"), false, "the layer is not applied");
    assert.equal(m.get("/srv/app/manifest.json")?.type, "file");
  } finally {
    await t.close();
  }
});

// The context is held from the build's start: its owner swapping the context directory itself
// for a link to a host directory between two steps (here when the RUN's container starts) led
// every later COPY into the host directory (its files copied into the image).
Deno.test("image build: the context directory swapped for a link to a host directory between steps copies nothing of the host", async () => {
  const { t, ctxDir, outside } = await setup();
  const path = Deno.env.get("PATH")!;
  try {
    Deno.writeTextFileSync(`${ctxDir}/host-secret`, "context\n");
    Deno.mkdirSync(`${t.dir}/racer`);
    Deno.writeTextFileSync(
      `${t.dir}/racer/systemd-nspawn`,
      `#!/bin/sh\nmv ${ctxDir} ${ctxDir}.was && ln -s ${outside} ${ctxDir}\n` +
        `exec ${sh("sh", "-c", "command -v systemd-nspawn").trim()} "$@"\n`,
    );
    Deno.chmodSync(`${t.dir}/racer/systemd-nspawn`, 0o755);
    Deno.env.set("PATH", `${t.dir}/racer:${path}`);
    const v = await buildText(t.store, ctxDir, "bb", "FROM bb\nRUN true\nCOPY host-secret /x\n");
    Deno.env.set("PATH", path);
    assert.ok(Deno.lstatSync(ctxDir).isSymlink, "the swap was made");
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(v.id)}/x`), "context\n");
  } finally {
    Deno.env.set("PATH", path);
    await t.close();
  }
});

// A COPY ran on the server's only thread from its first file to its last: a context of 50,000
// files (a node_modules) held it 16 s, a file of 2 GiB 5 s, and no DHCP, TFTP or HTTP request
// was answered meanwhile. The loop's longest wait for a turn during the COPY steps is measured.
Deno.test("image build: a COPY of 10,000 files and of a 512 MiB file leaves the server's thread free", async () => {
  const { t, ctxDir } = await setup();
  try {
    Deno.mkdirSync(`${ctxDir}/many`);
    for (let i = 0; i < 10_000; i++) Deno.writeFileSync(`${ctxDir}/many/f${i}`, new Uint8Array(1));
    const f = Deno.openSync(`${ctxDir}/big`, { create: true, write: true });
    const chunk = new Uint8Array(1 << 24).fill(7);
    for (let i = 0; i < 32; i++) f.writeSync(chunk); // written out: no holes, no GNU cp
    f.close();
    const ticks: number[] = [];
    const timer = setInterval(() => ticks.push(performance.now()), 5);
    let start = Infinity, end = Infinity;
    Deno.writeTextFileSync(
      `${ctxDir}/Buildfile`,
      "FROM bb\nCOPY many /many/\nCOPY big /big\nENV done=1\n",
    );
    const v = await build(t.store, {
      name: "bb",
      buildfile: `${ctxDir}/Buildfile`,
      context: ctxDir,
      command: null,
      log: (l) => {
        if (l.startsWith("step 1/3")) start = performance.now();
        if (!l.startsWith("step 3/3")) return;
        end = performance.now();
        // a tick right after the copies, before the commit's own work
        return new Promise((r) => setTimeout(r, 30));
      },
    }).finally(() => clearInterval(timer));
    let worst = 0;
    for (let i = 1; i < ticks.length; i++) {
      if (ticks[i] > start && ticks[i - 1] < end) worst = Math.max(worst, ticks[i] - ticks[i - 1]);
    }
    assert.equal(Deno.statSync(`${t.data.rootfs(v.id)}/big`).size, 1 << 29);
    assert.equal([...Deno.readDirSync(`${t.data.rootfs(v.id)}/many`)].length, 10_000);
    assert.ok(worst < 500, `the server's thread was held ${Math.round(worst)} ms`);
  } finally {
    await t.close();
  }
});

// A Dockerfile's here-documents run as Docker runs them (before: their lines were taken for
// instructions), and its variables reach RUN as Docker scopes them: the ARG before FROM through
// its ARG after it, an ENV over the ARG of its name.
Deno.test("image build: RUN here-documents, and ARG/ENV scopes in RUN's environment, as Docker has them", async () => {
  const { t, ctxDir } = await setup();
  try {
    const v = await buildText(
      t.store,
      ctxDir,
      "bb",
      `ARG GREETING=hi
FROM bb
ARG GREETING
ENV WHO=world
ARG WHO=nobody
RUN <<EOF
echo "$GREETING $WHO" > /out
EOF
RUN cat <<'X' >> /out
$literal
X
`,
    );
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(v.id)}/out`), "hi world\n$literal\n");
  } finally {
    await t.close();
  }
});

// Docker's ADD extracts a local file when its content is a tar archive (plain, gzip, bzip2, xz,
// zstd), whatever its name, and copies any other file as it is. Before, the name decided: an
// empty `placeholder.tar.gz` failed the step, a gzipped tar named `bundle.gz` was copied.
Deno.test("image build: ADD extracts by content, not by name: every compression, and any other file copied as it is", async () => {
  const { t, ctxDir } = await setup();
  try {
    const tarsrc = `${t.dir}/tarsrc`; // data/from-tar
    sh("tar", "-C", tarsrc, "-cf", `${t.dir}/plain.tar`, ".");
    const packed: [string, string[]][] = [
      ["bundle.gz", ["gzip", "-c"]],
      ["bundle.bz2", ["bzip2", "-c"]],
      ["bundle.xz", ["xz", "-c"]],
      ["bundle.zst", ["zstd", "-q", "-c"]],
      ["bundle", ["cat"]],
    ];
    const output = (cmd: string, ...args: string[]) =>
      new Deno.Command(cmd, { args, stdout: "piped" }).outputSync().stdout;
    for (const [name, [cmd, ...args]] of packed) {
      Deno.writeFileSync(`${ctxDir}/${name}`, output(cmd, ...args, `${t.dir}/plain.tar`));
    }
    Deno.writeFileSync(`${ctxDir}/placeholder.tar.gz`, new Uint8Array(0));
    Deno.writeTextFileSync(`${t.dir}/notes.txt`, "notes\n");
    Deno.writeFileSync(`${ctxDir}/notes.txt.gz`, output("gzip", "-c", `${t.dir}/notes.txt`));
    const v = await buildText(
      t.store,
      ctxDir,
      "bb",
      "FROM bb\n" + packed.map(([n]) => `ADD ${n} /x/${n}/\n`).join("") +
        "ADD placeholder.tar.gz notes.txt.gz /y/\n",
    );
    const m = manifestOf(t, v.id);
    for (const [name] of packed) {
      assert.equal(m.get(`/x/${name}/data/from-tar`)?.type, "file", name);
    }
    assert.equal(m.get("/y/placeholder.tar.gz")?.type, "file");
    assert.equal(m.get("/y/placeholder.tar.gz")?.size, 0);
    assert.equal(m.get("/y/notes.txt.gz")?.type, "file", "a compressed file that holds no tar");
  } finally {
    await t.close();
  }
});

// COPY as Dockerfiles write it: wildcards in sources (before: "no such file"), --chown by the
// image's names (before: refused), --link (before: refused), flags before the JSON form.
Deno.test("image build: COPY with wildcards, --chown by name, --link, and flags before a JSON array", async () => {
  const { t, ctxDir } = await setup();
  try {
    Deno.writeTextFileSync(`${ctxDir}/conf/b.conf`, "b\n");
    Deno.writeTextFileSync(`${ctxDir}/conf/c.txt`, "c\n");
    Deno.mkdirSync(`${ctxDir}/pkgs/one`, { recursive: true });
    Deno.mkdirSync(`${ctxDir}/pkgs/two`);
    Deno.writeTextFileSync(`${ctxDir}/pkgs/one/Makefile`, "one\n");
    // a name that made a regular expression of the pattern below take exponential time
    Deno.writeTextFileSync(`${ctxDir}/${"a".repeat(60)}b`, "x\n");
    const v = await buildText(
      t.store,
      ctxDir,
      "bb",
      `FROM bb
RUN echo 'app:x:1234:1234::/:/bin/sh' >> /etc/passwd && echo 'staff:x:50:' >> /etc/group
COPY --chown=app:staff conf/*.conf /etc/app/
COPY --link --chown=app conf/[a-b].conf /link/
COPY pkgs/*/Makefile /mk/
COPY --chown=7:8 ["conf/c.txt", "/json/"]
COPY ${"*a".repeat(60)}c* /none-but-fast/
`,
    ).catch((e) => e as Error);
    // the last line matches nothing: refused as Docker refuses it, quickly
    assert.match(String(v), /line 7 failed: .*no file of the context matches; nothing committed/);
    const w = await buildText(
      t.store,
      ctxDir,
      "bb",
      (await Deno.readTextFile(`${ctxDir}/Buildfile`)).replace(/COPY \*a.*\n/, ""),
    );
    const m = manifestOf(t, w.id);
    const owner = (p: string) => [m.get(p)?.uid, m.get(p)?.gid];
    assert.deepEqual(owner("/etc/app/a.conf"), [1234, 50]);
    assert.deepEqual(owner("/etc/app/b.conf"), [1234, 50]);
    assert.equal(m.has("/etc/app/c.txt"), false);
    assert.deepEqual(owner("/link/b.conf"), [1234, 1234], "a user alone: its id as the group's");
    assert.equal(m.get("/mk/Makefile")?.type, "file");
    assert.deepEqual(owner("/json/c.txt"), [7, 8]);
    await assert.rejects(
      buildText(t.store, ctxDir, "bb", "FROM bb\nCOPY --chown=ghost conf/a.conf /x\n"),
      /line 2 failed: .*--chown: no ghost in the image's \/etc\/passwd/,
    );
  } finally {
    await t.close();
  }
});

// Docker follows a source that is a link of the context (inside the context): `COPY current
// /app/` with current -> releases/2 copies that directory. Before, the link itself was copied
// (the image got a link to a path it does not have).
Deno.test("image build: a COPY source that is a link of the context is followed inside the context, never out", async () => {
  const { t, ctxDir, outside } = await setup();
  try {
    Deno.mkdirSync(`${ctxDir}/releases/2`, { recursive: true });
    Deno.writeTextFileSync(`${ctxDir}/releases/2/app.js`, "v2\n");
    Deno.symlinkSync("releases/2", `${ctxDir}/current`);
    Deno.symlinkSync("conf/a.conf", `${ctxDir}/cfg`);
    Deno.symlinkSync("/conf/a.conf", `${ctxDir}/abs`); // the context's own /conf
    Deno.symlinkSync(`${outside}/host-secret`, `${ctxDir}/out`);
    const v = await buildText(
      t.store,
      ctxDir,
      "bb",
      "FROM bb\nCOPY current /app/\nCOPY cfg /etc/cfg\nCOPY abs /abs/\n",
    );
    const root = t.data.rootfs(v.id);
    assert.equal(Deno.readTextFileSync(`${root}/app/app.js`), "v2\n");
    assert.equal(Deno.lstatSync(`${root}/etc/cfg`).isFile, true);
    assert.equal(Deno.readTextFileSync(`${root}/etc/cfg`), "a=1\n");
    assert.equal(Deno.readTextFileSync(`${root}/abs/abs`), "a=1\n");
    await assert.rejects(
      buildText(t.store, ctxDir, "bb", "FROM bb\nCOPY out /x\n"),
      /line 2 failed: COPY out \/x: \/out: no such file in the build context/,
    );
  } finally {
    await t.close();
  }
});

// Docker leaves out of the context what .dockerignore names; before, `COPY . /app` took the
// .git, node_modules and the .env of secrets into the image (which any host of the boot network
// reads), and `COPY .env /x` copied it.
Deno.test("image build: .dockerignore leaves its files out of COPY, exceptions taken back", async () => {
  const { t, ctxDir } = await setup();
  try {
    for (const d of [".git", "node_modules/x", "src", "keep"]) {
      Deno.mkdirSync(`${ctxDir}/${d}`, { recursive: true });
    }
    const files = [".git/config", "node_modules/x/index.js", "src/app.js", ".env", "src/.env"];
    for (const f of [...files, "keep/.env"]) Deno.writeTextFileSync(`${ctxDir}/${f}`, f);
    Deno.writeTextFileSync(`${ctxDir}/.dockerignore`, ".git\nnode_modules\n**/.env\n!keep/.env\n");
    const v = await buildText(t.store, ctxDir, "bb", "FROM bb\nCOPY . /app/\nCOPY src/* /s/\n");
    const m = manifestOf(t, v.id);
    for (const p of ["/app/src/app.js", "/app/keep/.env", "/s/app.js", "/app/conf/a.conf"]) {
      assert.equal(m.get(p)?.type, "file", p);
    }
    for (const p of ["/app/.git", "/app/node_modules", "/app/.env", "/app/src/.env", "/s/.env"]) {
      assert.equal(m.has(p), false, p);
    }
    await assert.rejects(
      buildText(t.store, ctxDir, "bb", "FROM bb\nCOPY .env /x\n"),
      /line 2 failed: .*\.dockerignore leaves it out/,
    );
  } finally {
    await t.close();
  }
});

// A build cancelled (its client gone) during a COPY went on copying, and when the COPY was the
// last step, committed: the client was told nothing, and the name moved.
Deno.test("image build: cancelled during its last step, a COPY, the copy stops and nothing is committed", async () => {
  const { t, ctxDir } = await setup();
  const ac = new AbortController();
  try {
    const before = t.store.history("bb").map((v) => v.id);
    Deno.mkdirSync(`${ctxDir}/many`);
    for (let i = 0; i < 5000; i++) Deno.writeFileSync(`${ctxDir}/many/f${i}`, new Uint8Array(1));
    Deno.writeTextFileSync(`${ctxDir}/Buildfile`, "FROM bb\nCOPY many /many/\n");
    const ended = await build(t.store, {
      name: "bb",
      buildfile: `${ctxDir}/Buildfile`,
      context: ctxDir,
      command: null,
      // the client goes away once the COPY has begun
      log: (l) => void (l.startsWith("step 1/1") && setTimeout(() => ac.abort(), 10)),
      signal: ac.signal,
    }).then(() => "committed", (e) => (e as Error).message);
    assert.equal(ended, "build cancelled: nothing committed");
    assert.deepEqual(t.store.history("bb").map((v) => v.id), before);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    await t.close();
  }
});

// The commit unmounts the session's overlay, and overlayfs flushes its upper's whole file system
// as it goes: on the server's thread, after a RUN that wrote 1 GiB, that held it 0.8 s (more on a
// slower disk, and whatever else the data dir's file system had to write). Now on another thread.
Deno.test("image build: the commit after a RUN that wrote 1 GiB leaves the server's thread free", async () => {
  const { t, ctxDir } = await setup();
  try {
    const ticks: number[] = [];
    const timer = setInterval(() => ticks.push(performance.now()), 5);
    let start = Infinity;
    Deno.writeTextFileSync(
      `${ctxDir}/Buildfile`,
      "FROM bb\nRUN /bin/busybox dd if=/dev/zero of=/big bs=1048576 count=1024\nENV done=1\n",
    );
    const v = await build(t.store, {
      name: "bb",
      buildfile: `${ctxDir}/Buildfile`,
      context: ctxDir,
      command: null,
      log: (l) => {
        if (l.startsWith("step 2/2")) start = performance.now();
      },
    });
    await new Promise((r) => setTimeout(r, 20)); // a tick after the commit
    clearInterval(timer);
    let worst = 0;
    for (let i = 1; i < ticks.length; i++) {
      if (ticks[i] > start) worst = Math.max(worst, ticks[i] - ticks[i - 1]);
    }
    assert.equal(Deno.statSync(`${t.data.rootfs(v.id)}/big`).size, 1 << 30);
    assert.ok(worst < 400, `the server's thread was held ${Math.round(worst)} ms`);
  } finally {
    await t.close();
  }
});

// The Buildfile was looked at (a regular file?) by its path, then opened by it again: its owner
// flipping a link between a file and a FIFO got the FIFO opened, and the build waited for a
// writer for ever, past its client's going away (a thread of the server's pool held too).
Deno.test("image build: a Buildfile flipped between a file and a FIFO never holds the build", async () => {
  const t = await tempStore();
  const ctx = `${t.dir}/ctx`;
  Deno.mkdirSync(ctx);
  Deno.writeTextFileSync(`${ctx}/file`, "FROM nope\n");
  sh("mkfifo", `${ctx}/fifo`);
  const flipper = new Deno.Command("sh", {
    args: ["-c", 'cd "$1" && while :; do ln -sfn fifo B; ln -sfn file B; done', "sh", ctx],
  }).spawn();
  try {
    for (let i = 0; i < 100; i++) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const ended = await Promise.race([
        build(t.store, { name: "x", buildfile: `${ctx}/B`, context: ctx, command: null, log() {} })
          .then(() => "built", (e) => (e as Error).message),
        new Promise((r) => timer = setTimeout(() => r("still reading after 3 s"), 3000)),
      ]);
      clearTimeout(timer);
      assert.match(String(ended), /image nope not found|no such Buildfile/, `attempt ${i}`);
    }
  } finally {
    flipper.kill("SIGKILL");
    await flipper.status;
    // a reader left waiting (before the fix) is let go
    await new Deno.Command("sh", { args: ["-c", ': <>"$1"', "sh", `${ctx}/fifo`] }).output();
    await t.close();
  }
});
