// Imports of rootfs tarballs and directories built with GNU tar, checked on disk and in the
// manifest. Needs root (mknod, chown, setcap, security.* xattrs).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { manifestText, parseManifest } from "../contract/manifest.ts";
import { UserError } from "../src/errors.ts";
import { extractArchive, sniff } from "../src/images/tar.ts";
import { extractFast } from "../src/images/tarfast.ts";
import { scanTree } from "../src/images/walk.ts";
import { unpack } from "../src/images/unpack.ts";
import { listXattrs, setXattr } from "../src/linux/xattr.ts";
import {
  buildSampleTree,
  dirEntries,
  fixTimes,
  rowCount,
  sh,
  T0,
  tarOf,
  tempStore,
} from "./images_helpers.ts";

const capValue = (path: string) => listXattrs(path)?.get("security.capability");

Deno.test("tarball import keeps hardlinks, symlinks, devices, fifo, suid, xattrs, owners, mtimes (root)", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const tarball = tarOf(src, `${t.dir}/img.tar`);
    const img = await t.store.import(tarball, "sample");
    assert.equal(img.existed, false);
    assert.match(img.id, /^[0-9a-f]{64}$/);

    // The id is the sha256 of the manifest file.
    const manifestBytes = await Deno.readFile(t.data.manifest(img.id));
    assert.equal(createHash("sha256").update(manifestBytes).digest("hex"), img.id);
    const entries = parseManifest(new TextDecoder().decode(manifestBytes));
    const by = new Map(entries.map((e) => [e.path, e]));
    assert.equal(img.files, entries.length);

    const root = t.data.rootfs(img.id);
    // hardlink: same inode on disk; manifest names the first path
    const a = Deno.lstatSync(`${root}/usr/bin/tool`),
      b = Deno.lstatSync(`${root}/usr/bin/tool-alias`);
    assert.equal(a.ino, b.ino);
    assert.equal(a.nlink, 3, "two paths and the object store's link");
    assert.equal(by.get("/usr/bin/tool")!.type, "file");
    assert.deepEqual(
      { type: by.get("/usr/bin/tool-alias")!.type, target: by.get("/usr/bin/tool-alias")!.target },
      { type: "hardlink", target: "/usr/bin/tool" },
    );
    // symlinks
    assert.equal(Deno.readLinkSync(`${root}/bin`), "usr/bin");
    assert.equal(Deno.readLinkSync(`${root}/etc/passwd.abs`), "/etc/passwd");
    assert.equal(by.get("/bin")!.type, "symlink");
    assert.equal(by.get("/bin")!.target, "usr/bin");
    // device nodes and fifo
    const dn = Deno.lstatSync(`${root}/dev/null`);
    assert.ok(dn.isCharDevice);
    assert.deepEqual(by.get("/dev/null")!.rdev, { major: 1, minor: 3 });
    assert.equal(by.get("/dev/null")!.mode, 0o666);
    assert.ok(Deno.lstatSync(`${root}/dev/sda`).isBlockDevice);
    assert.deepEqual(by.get("/dev/sda"), {
      path: "/dev/sda",
      type: "block",
      mode: 0o660,
      uid: 0,
      gid: 0,
      size: 0,
      mtime: T0,
      rdev: { major: 8, minor: 0 },
    });
    assert.ok(Deno.lstatSync(`${root}/run-fifo`).isFifo);
    assert.equal(by.get("/run-fifo")!.type, "fifo");
    // suid bit and owners
    assert.equal(Deno.lstatSync(`${root}/usr/bin/su`).mode! & 0o7777, 0o4755);
    assert.equal(by.get("/usr/bin/su")!.mode, 0o4755);
    // ...out of reach of the server's other users: the version's directory is owner-only
    assert.equal(Deno.statSync(t.data.image(img.id)).mode! & 0o777, 0o700);
    assert.equal(Deno.lstatSync(`${root}/home/user/space name.txt`).uid, 1000);
    assert.equal(by.get("/home/user")!.gid, 1000);
    // xattrs: the file capability survives, on disk and in the manifest
    const cap = capValue(`${root}/usr/bin/ping`);
    assert.ok(cap, "security.capability kept on disk");
    assert.deepEqual(cap, capValue(`${src}/usr/bin/ping`));
    assert.match(sh("getcap", `${root}/usr/bin/ping`), /cap_net_raw=ep/);
    assert.equal(
      by.get("/usr/bin/ping")!.xattrs?.["security.capability"],
      btoa(String.fromCharCode(...cap!)),
    );
    assert.equal(atob(by.get("/etc/hostname")!.xattrs!["user.netroot.test"]), "hello");
    // content digests and mtimes
    assert.equal(
      by.get("/etc/passwd")!.sha256,
      createHash("sha256").update("root:x:0:0:root:/root:/bin/sh\n").digest("hex"),
    );
    assert.ok(entries.every((e) => e.mtime === T0), "every mtime kept");
    assert.ok(by.has("/home/user/tab\tname") && by.has("/home/user/ünïcödé"));
    // size counts hardlinked content once
    const fileBytes = entries.filter((e) => e.type === "file").reduce((s, e) => s + e.size, 0);
    assert.equal(img.size, fileBytes);
    // kernel detection
    assert.equal(img.kernel, "/boot/vmlinuz-6.1.0-test");
    assert.equal(img.initrd, "/boot/initrd.img-6.1.0-test");
    assert.equal(img.kernelVersion, "6.1.0-test");
    assert.equal(img.bootable, true);
    assert.equal(img.reason, null);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    await t.close();
  }
});

Deno.test("same content → same id and no second copy, from .tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2 and a directory (root)", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const first = await t.store.import(tarOf(src, `${t.dir}/i.tar`), "one");
    for (const c of ["gzip", "xz", "zstd", "bzip2"] as const) {
      const again = await t.store.import(tarOf(src, `${t.dir}/i.${c}.tar`, c), `again-${c}`);
      assert.equal(again.id, first.id, c);
      assert.equal(again.existed, true);
      assert.equal(again.name, "one", "keeps its first name");
    }
    const fromDir = await t.store.import(src, "from-dir");
    assert.equal(fromDir.id, first.id);
    assert.equal(fromDir.existed, true);
    assert.deepEqual(await dirEntries(t.data.images), [first.id]);
    assert.equal(rowCount(t.db), 1);
    assert.deepEqual(await dirEntries(t.data.tmp), []);
  } finally {
    await t.close();
  }
});

Deno.test("directories the archive does not carry get fixed metadata: two imports a second apart match", async () => {
  const ids: string[] = [];
  for (let i = 0; i < 2; i++) {
    const t = await tempStore();
    try {
      Deno.mkdirSync(`${t.dir}/src/usr/bin`, { recursive: true });
      Deno.writeTextFileSync(`${t.dir}/src/usr/bin/x`, "x");
      sh("touch", "-d", `@${T0}`, `${t.dir}/src/usr/bin/x`);
      // Member list without any directory (no ./, no usr/, no usr/bin/).
      sh("tar", "-C", `${t.dir}/src`, "-cf", `${t.dir}/x.tar`, "usr/bin/x");
      const img = await t.store.import(`${t.dir}/x.tar`, "x");
      ids.push(img.id);
      const m = parseManifest(await Deno.readTextFile(t.data.manifest(img.id)));
      assert.deepEqual(m.map((e) => [e.path, e.type, e.mode, e.mtime]), [
        ["/", "dir", 0o755, 0],
        ["/usr", "dir", 0o755, 0],
        ["/usr/bin", "dir", 0o755, 0],
        ["/usr/bin/x", "file", 0o644, T0],
      ]);
      assert.equal(img.bootable, false);
      assert.match(img.reason!, /no kernel found/);
    } finally {
      await t.close();
    }
    if (i === 0) await new Promise((r) => setTimeout(r, 1100));
  }
  assert.equal(ids[0], ids[1]);
});

Deno.test("a member overwritten later in the archive is hashed as its final content", async () => {
  const t = await tempStore();
  try {
    const a = `${t.dir}/a`, b = `${t.dir}/b`;
    for (const [d, s] of [[a, "old content"], [b, "new content, longer"]]) {
      Deno.mkdirSync(`${d}/etc`, { recursive: true });
      Deno.writeTextFileSync(`${d}/etc/conf`, s);
      for (let i = 0; i < 200; i++) Deno.writeTextFileSync(`${d}/etc/pad${i}`, `${i}`);
    }
    sh("tar", "-C", a, "-cf", `${t.dir}/x.tar`, ".");
    sh("tar", "-C", b, "-rf", `${t.dir}/x.tar`, "./etc/conf"); // appended: same path again
    const img = await t.store.import(`${t.dir}/x.tar`, "x");
    const e = parseManifest(await Deno.readTextFile(t.data.manifest(img.id)))
      .find((e) => e.path === "/etc/conf")!;
    assert.equal(e.sha256, createHash("sha256").update("new content, longer").digest("hex"));
    assert.equal(
      await Deno.readTextFile(`${t.data.rootfs(img.id)}/etc/conf`),
      "new content, longer",
    );
  } finally {
    await t.close();
  }
});

Deno.test("two concurrent imports of the same content: one copy, one row, the other reports it", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const [a, b] = await Promise.all([
      t.store.import(tarOf(src, `${t.dir}/a.tar`), "a"),
      t.store.import(tarOf(src, `${t.dir}/b.tar.gz`, "gzip"), "b"),
    ]);
    assert.equal(a.id, b.id);
    assert.deepEqual([a.existed, b.existed].sort(), [false, true]);
    assert.equal(a.name, b.name);
    assert.deepEqual(await dirEntries(t.data.images), [a.id]);
    assert.equal(rowCount(t.db), 1);
    // Into one name at once: the same content lands once, the other reports it.
    const twice = await Promise.all([t.store.import(src, "same"), t.store.import(src, "same")]);
    assert.equal(twice[0].id, twice[1].id);
  } finally {
    await t.close();
  }
});

Deno.test("our tar reader and GNU tar extract the same tree, with the same digests, from every compression (root)", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    // Also: a long name (GNU 'L' / PAX path), a large file crossing reads, a member listed again.
    const deep = `${src}/usr/share/${"long-directory-name-".repeat(6)}`;
    Deno.mkdirSync(deep, { recursive: true });
    Deno.writeTextFileSync(`${deep}/${"f".repeat(120)}`, "deep\n");
    // POSIX ACLs (systemd puts them on /var/log/journal): the raw value debootstrap's tree holds.
    const acl = Uint8Array.from(
      "0200000001000700ffffffff04000500ffffffff080005000400000010000500ffffffff20000500ffffffff"
        .match(/../g)!.map((x) => parseInt(x, 16)),
    );
    Deno.mkdirSync(`${src}/var/log/journal`, { recursive: true });
    setXattr(`${src}/var/log/journal`, "system.posix_acl_access", acl);
    setXattr(`${src}/var/log/journal`, "system.posix_acl_default", acl);
    const big = new Uint8Array(6 << 20).map((_, i) => (i * 2654435761) >>> 24);
    Deno.writeFileSync(`${src}/usr/big.bin`, big);
    fixTimes(src);
    const cases: [string, string[]][] = [["gnu.tar", []], ["pax.tar", ["--format=pax"]]];
    for (const c of ["gzip", "xz", "zstd", "bzip2"]) cases.push([`x.tar.${c}`, [`--${c}`]]);
    for (const [name, flags] of cases) {
      const file = `${t.dir}/${name}`;
      sh(
        "tar",
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        ...flags,
        "-C",
        src,
        "-cf",
        file,
        ".",
      );
      const compression = sniff(Deno.readFileSync(file).subarray(0, 512))!;
      const trees: string[] = [];
      for (const extractor of ["fast", "tar"] as const) {
        const dest = `${t.dir}/out-${extractor}`;
        Deno.mkdirSync(dest);
        if (extractor === "fast") {
          // The fast path itself, not a fallback to GNU tar.
          const r = await extractFast(file, compression, dest, {
            what: file,
            hash: true,
            total: 1,
            offsetOf: () => undefined,
            imageArchive: /^$/,
          });
          // Every digest taken while writing is one the scan takes (same inode, size, mtime).
          for (const [rel, c] of r.cache) {
            const st = Deno.lstatSync(dest + rel);
            assert.deepEqual(
              [c.ino, c.size, c.mtimeMs],
              [st.ino, st.size, st.mtime!.getTime()],
              `${name}: ${rel}`,
            );
          }
          assert.ok(r.cache.size >= 10, `${name}: ${r.cache.size} digests taken while writing`);
          const { entries } = await scanTree(dest, { cache: r.cache });
          const hashed = (await scanTree(dest)).entries;
          assert.deepEqual(entries, hashed, `${name}: digests taken while writing are right`);
          trees.push(manifestText(entries));
        } else {
          await extractArchive(file, compression, dest, { extractor });
          trees.push(manifestText((await scanTree(dest)).entries));
        }
        Deno.removeSync(dest, { recursive: true });
      }
      assert.equal(trees[0], trees[1], `${name}: same manifest from both extractors`);
      assert.match(trees[0], /security\.capability/);
      assert.match(trees[0], /system\.posix_acl_default/);
    }
    // Appending the same path again: the reader replaces it (GNU tar does the same).
    sh("tar", "-C", src, "-rf", `${t.dir}/gnu.tar`, "./etc/hostname");
    const dest = `${t.dir}/again`;
    Deno.mkdirSync(dest);
    await extractFast(`${t.dir}/gnu.tar`, "none", dest, {
      what: "x",
      hash: true,
      total: 1,
      offsetOf: () => undefined,
      imageArchive: /^$/,
    });
    assert.equal(Deno.readTextFileSync(`${dest}/etc/hostname`), "sample\n");
  } finally {
    await t.close();
  }
});

Deno.test("the manifest of what our tar reader wrote is the one a scan of the tree gives (root)", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const acl = Uint8Array.from(
      "0200000001000700ffffffff04000500ffffffff080005000400000010000500ffffffff20000500ffffffff"
        .match(/../g)!.map((x) => parseInt(x, 16)),
    );
    Deno.mkdirSync(`${src}/var/log/journal`, { recursive: true });
    setXattr(`${src}/var/log/journal`, "system.posix_acl_access", acl);
    setXattr(`${src}/var/log/journal`, "system.posix_acl_default", acl);
    Deno.writeTextFileSync(`${src}/etc/acl-file`, "acl\n");
    setXattr(`${src}/etc/acl-file`, "system.posix_acl_access", acl);
    Deno.writeTextFileSync(`${src}/etc/late`, "after 2038\n");
    Deno.linkSync(`${src}/etc/passwd`, `${src}/etc/passwd-link`);
    Deno.writeTextFileSync(`${src}/\uFEFFbom`, "a name that begins with U+FEFF\n");
    fixTimes(src);
    Deno.utimeSync(`${src}/etc/late`, 4_000_000_000, 4_000_000_000);
    const archives: [string, string[]][] = [
      ["gnu.tar", ["-C", src, "."]], // with ./
      ["pax.tar", ["--format=pax", "-C", src, "."]],
      // parents it does not carry; a first name that begins with a BOM, which stays in it
      ["noroot.tar", ["-C", src, "\uFEFFbom", "etc", "usr/bin", "dev"]],
    ];
    const flags = ["--xattrs", "--xattrs-include=*", "--numeric-owner"];
    for (const [name, args] of archives) {
      sh("tar", ...flags, "-cf", `${t.dir}/${name}`, ...args);
    }
    // The same path again: a new inode for it, its old hard link partner stays a file of its own.
    const h = `${t.dir}/h`;
    Deno.mkdirSync(h);
    Deno.writeTextFileSync(`${h}/a`, "a\n");
    Deno.linkSync(`${h}/a`, `${h}/b`);
    Deno.writeTextFileSync(`${h}/c`, "c\n");
    sh("tar", "-C", h, "-cf", `${t.dir}/appended.tar`, "./a", "./b", "./c");
    Deno.writeTextFileSync(`${h}/c`, "c again\n");
    sh("tar", "-C", h, "-rf", `${t.dir}/appended.tar`, "./a", "./c");
    archives.push(["appended.tar", []]);
    let n = 0;
    for (const [name] of archives) {
      const file = `${t.dir}/${name}`;
      const rootfs = `${t.dir}/out${n++}`;
      const u = await unpack(file, rootfs);
      assert.ok(u.manifest, `${name}: manifest taken from the reader`);
      const scanned = await scanTree(rootfs);
      assert.deepEqual(u.manifest.entries, scanned.entries, `${name}: same entries as a scan`);
      assert.equal(u.manifest.bytes, scanned.bytes, name);
      if (name !== "appended.tar") {
        assert.ok(u.manifest.entries.some((e) => e.path === "/\uFEFFbom"), `${name}: BOM kept`);
      }
      Deno.removeSync(rootfs, { recursive: true });
    }
    // The kernel adds what the reader did not write (an ACL inherited from above the tree):
    // no manifest from the reader, the import scans.
    const inherit = `${t.dir}/inherit`;
    Deno.mkdirSync(inherit);
    setXattr(inherit, "system.posix_acl_default", acl);
    const u = await unpack(`${t.dir}/gnu.tar`, `${inherit}/rootfs`);
    assert.equal(u.manifest, undefined);
    assert.ok(listXattrs(`${inherit}/rootfs/etc/passwd`)?.has("system.posix_acl_access"));
  } finally {
    await t.close();
  }
});

Deno.test("our tar reader: large files hashed on another thread, modes and owners set without a chmod or chown where none is needed (root)", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    Deno.mkdirSync(`${src}/big/sub`, { recursive: true });
    const data = (n: number, seed: number) =>
      new Uint8Array(n).map((_, i) => ((i + seed) * 2654435761) >>> 24);
    // Around the offload threshold (256 KiB), across the 4 MiB reads, small files in between.
    const sizes = [(256 << 10) - 1, 256 << 10, 300_000, (4 << 20) + 3, 9_000_001, 5, 70_000];
    sizes.forEach((n, i) => {
      Deno.writeFileSync(`${src}/big/f${i}`, data(n, i));
      Deno.writeTextFileSync(`${src}/big/sub/s${i}`, `small ${i}\n`);
    });
    Deno.linkSync(`${src}/big/f4`, `${src}/big/sub/f4-link`);
    // Modes the umask (022) changes, set-id bits, owners other than ours.
    const modes: [string, number, number][] = [
      ["m666", 0o666, 0],
      ["m777", 0o777, 0],
      ["m000", 0o000, 0],
      ["m644", 0o644, 1234],
      ["m4755", 0o4755, 0],
      ["m2755", 0o2755, 4321],
      ["m1777", 0o1777, 0],
    ];
    for (const [name, mode, owner] of modes) {
      Deno.writeTextFileSync(`${src}/${name}`, name);
      Deno.chownSync(`${src}/${name}`, owner, owner);
      Deno.chmodSync(`${src}/${name}`, mode);
    }
    Deno.symlinkSync("m666", `${src}/link-owned`);
    sh("chown", "-h", "77:88", `${src}/link-owned`);
    Deno.mkdirSync(`${src}/d777`);
    Deno.chmodSync(`${src}/d777`, 0o777);
    Deno.chownSync(`${src}/d777`, 55, 66);
    fixTimes(src);
    const file = tarOf(src, `${t.dir}/big.tar`);
    // The same large file again later in the archive: its final content counts.
    Deno.writeFileSync(`${src}/big/f3`, data(5 << 20, 99));
    sh("tar", "-C", src, "-rf", file, "./big/f3");
    const trees: string[] = [];
    for (const fast of [true, false]) {
      const dest = `${t.dir}/out-${fast}`;
      Deno.mkdirSync(dest);
      if (fast) {
        const r = await extractFast(file, "none", dest, {
          what: file,
          hash: true,
          total: 1,
          offsetOf: () => undefined,
          imageArchive: /^$/,
        });
        const scanned = (await scanTree(dest)).entries;
        for (const e of scanned) {
          if (e.type !== "file") continue;
          assert.equal(r.cache.get(e.path)?.sha256, e.sha256, e.path);
        }
        assert.equal(r.cache.get("/big/sub/f4-link")?.sha256, r.cache.get("/big/f4")?.sha256);
        assert.equal(
          r.cache.get("/big/f3")?.sha256,
          createHash("sha256").update(data(5 << 20, 99)).digest("hex"),
        );
        trees.push(manifestText(scanned));
      } else {
        await extractArchive(file, "none", dest, { extractor: "tar" });
        trees.push(manifestText((await scanTree(dest)).entries));
      }
      Deno.removeSync(dest, { recursive: true });
    }
    assert.equal(trees[0], trees[1], "same tree (modes, owners, digests) as GNU tar's");
    assert.match(trees[0], /^\/m666\tfile\t0666\t0\t0\t/m);
  } finally {
    await t.close();
  }
});

Deno.test("import: an archive of more members than an import keeps state for is refused, by both extractors", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-members-" });
  try {
    // The root "./" and n empty files: n + 1 members.
    const archive = (n: number) => {
      const tree = `${dir}/tree-${n}`, file = `${dir}/${n}.tar`;
      Deno.mkdirSync(tree);
      for (let i = 0; i < n; i++) Deno.writeFileSync(`${tree}/f${i}`, new Uint8Array());
      const tar = new Deno.Command("tar", { args: ["-cf", file, "-C", tree, "."] }).outputSync();
      assert.ok(tar.success);
      return file;
    };
    const over = archive(100), at = archive(99);
    for (const extractor of ["fast", "tar"] as const) {
      Deno.mkdirSync(`${dir}/over-${extractor}`);
      await assert.rejects(
        extractArchive(over, "none", `${dir}/over-${extractor}`, { extractor, maxMembers: 100 }),
        (e) => e instanceof UserError && /has more than 100 members; refusing/.test(e.message),
        extractor,
      );
      Deno.mkdirSync(`${dir}/at-${extractor}`);
      await extractArchive(at, "none", `${dir}/at-${extractor}`, { extractor, maxMembers: 100 });
      assert.equal([...Deno.readDirSync(`${dir}/at-${extractor}`)].length, 99, extractor);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("import: a blob of 512 MiB in an uncompressed image archive is written with turns of the server's thread between its chunks", async () => {
  // Our reader reads an uncompressed archive synchronously, and turned the event loop between
  // members only (or while a file's digest was computed on another thread; an image archive's
  // blobs are not hashed as files): a layer of 1 GiB held the server's thread 2.4 s (DHCP, TFTP,
  // HTTP with it), and the import could not be cancelled before its end.
  const t = await tempStore();
  try {
    const lay = `${t.dir}/oci`, blobs = `${lay}/blobs/sha256`;
    Deno.mkdirSync(blobs, { recursive: true });
    const blob = (bytes: Uint8Array) => {
      const digest = createHash("sha256").update(bytes).digest("hex");
      Deno.writeFileSync(`${blobs}/${digest}`, bytes);
      return { digest: `sha256:${digest}`, size: bytes.length };
    };
    // A layer of zeros: an empty tar, stored in full (not --sparse) in the archive.
    const layer = blob(new Uint8Array(512 << 20));
    const manifest = blob(new TextEncoder().encode(JSON.stringify({
      schemaVersion: 2,
      config: blob(new TextEncoder().encode("{}")),
      layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...layer }],
    })));
    Deno.writeTextFileSync(`${lay}/index.json`, JSON.stringify({ manifests: [manifest] }));
    Deno.writeTextFileSync(`${lay}/oci-layout`, '{"imageLayoutVersion":"1.0.0"}');
    sh("tar", "-C", lay, "-cf", `${lay}.tar`, ".");
    Deno.removeSync(lay, { recursive: true });
    // Reads of the archive (4 MiB each) between two turns of the event loop, at most.
    const readSync = Deno.FsFile.prototype.readSync;
    let reads = 0, most = 0;
    Deno.FsFile.prototype.readSync = function (this: Deno.FsFile, p: Uint8Array) {
      reads++;
      return readSync.call(this, p);
    };
    const timer = setInterval(() => {
      most = Math.max(most, reads);
      reads = 0;
    }, 0);
    try {
      await t.store.import(`${lay}.tar`, "big");
    } finally {
      clearInterval(timer);
      Deno.FsFile.prototype.readSync = readSync;
    }
    // 64 MiB between turns: 16 reads (before: the whole blob, 128 reads and more)
    assert.ok(most <= 32, `${most} reads of the archive without a turn of the event loop`);
  } finally {
    await t.close();
  }
});
