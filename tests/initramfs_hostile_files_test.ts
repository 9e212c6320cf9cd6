// A hostile image's files where the initramfs build reads them — its module index
// (/lib/modules/<kv>/modules.{dep,alias,softdep,builtin}), the modules listed there, its kernel's
// config — written as an image author would to make the server read its own files into an archive
// anyone on the boot network downloads, or to hold the build (and the server's thread) for ever.
// Needs root (mknod).
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { UserError } from "../src/errors.ts";
import { DataDir } from "../src/datadir.ts";
import {
  buildInitramfs,
  ensureInitramfs,
  imageMachine,
  initramfsCompression,
  type ProgramFiles,
} from "../src/initramfs/build.ts";
import { EM_AARCH64, launcherElf } from "../src/initramfs/elf.ts";
import { elf } from "./support/elf.ts";

const KV = "6.1.0-hostile";
const dec = new TextDecoder();

/** A tiny static x86-64 executable as the node program: no libraries to gather. */
async function program(dir: string): Promise<ProgramFiles> {
  const exe = join(dir, "netroot");
  await Deno.writeFile(exe, launcherElf({ path: "/x", argv: ["x"], envp: [] }));
  return { kind: "compiled", exe, hash: "2".repeat(64) };
}

/** An x86-64 ELF header: all of a module the build reads (the first one's machine). */
function moduleElf(): Uint8Array {
  const b = new Uint8Array(64);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  new DataView(b.buffer).setUint16(18, 62, true);
  return b;
}

/** An image with e1000 and netconsole (after configfs) as modules; returns its root. */
async function image(dir: string): Promise<string> {
  const root = join(dir, "rootfs");
  const mods = join(root, "lib/modules", KV);
  await Deno.mkdir(join(mods, "kernel"), { recursive: true });
  await Deno.writeTextFile(
    join(mods, "modules.dep"),
    "kernel/e1000.ko:\nkernel/configfs.ko:\nkernel/netconsole.ko: kernel/configfs.ko\n",
  );
  for (const m of ["e1000", "configfs", "netconsole"]) {
    await Deno.writeFile(join(mods, `kernel/${m}.ko`), moduleElf());
  }
  return root;
}

function run(cmd: string, ...args: string[]) {
  const out = new Deno.Command(cmd, { args, stderr: "piped" }).outputSync();
  assert.ok(out.success, `${cmd} ${args.join(" ")}: ${dec.decode(out.stderr)}`);
}

/** A file of an uncompressed newc archive, read back with GNU cpio. */
async function fromArchive(archive: string, name: string): Promise<string> {
  const p = new Deno.Command("cpio", {
    args: ["-i", "--quiet", "--to-stdout", name],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  await (await Deno.open(archive)).readable.pipeTo(p.stdin);
  return dec.decode((await p.output()).stdout);
}

Deno.test("module index links resolve inside the image: modules.dep and modules.alias -> /a/host/file are the image's files, never the server's", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-hostile-" });
  try {
    const root = await image(dir);
    const mods = join(root, "lib/modules", KV);
    await Deno.mkdir(join(mods, "kernel/host"));
    await Deno.writeFile(join(mods, "kernel/host/e1000.ko"), moduleElf());
    // The same absolute paths on the server and in the image, with different contents: the
    // server's lines end up in the archive (its plan, its module list) when the link is followed
    // on the host.
    const files = {
      "modules.dep": ["kernel/host/e1000.ko:\n", "kernel/e1000.ko:\n"],
      "modules.alias": [
        "alias server-secret e1000\n",
        "alias pci:v00008086d0000100Esv*sd* e1000\n",
      ],
    };
    for (const [name, [server, inImage]] of Object.entries(files)) {
      const target = join(dir, "server", name);
      await Deno.mkdir(dirname(target), { recursive: true });
      await Deno.writeTextFile(target, server);
      await Deno.mkdir(join(root, dirname(target)), { recursive: true });
      await Deno.writeTextFile(join(root, target), inImage);
      await Deno.remove(join(mods, name)).catch(() => {});
      await Deno.symlink(target, join(mods, name));
    }
    const out = join(dir, "initrd.cpio");
    const r = await buildInitramfs({
      rootfs: root,
      kernelVersion: KV,
      out,
      program: await program(dir),
      compression: "none",
      wantedModules: ["e1000"],
    });
    assert.deepEqual(r.modules, ["kernel/e1000.ko"]);
    const plan = await fromArchive(out, "netroot/modules.plan");
    assert.match(plan, /^alias pci:v00008086d0000100Esv\*sd\* e1000$/m);
    assert.doesNotMatch(plan, /server-secret/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("modules.dep paths with `..` or absolute ones never become archive members outside /lib/modules (the kernel unpacks `..` at its root: /init)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-hostile-" });
  try {
    const root = await image(dir);
    // In the image, so that each path resolves there.
    await Deno.writeFile(join(root, "init.ko"), moduleElf());
    await Deno.writeFile(join(root, "lib/modules", KV, "init.ko"), moduleElf());
    const out = join(dir, "initrd");
    for (const path of ["../../../init.ko", "/init.ko", "kernel/./e1000.ko"]) {
      await Deno.writeTextFile(join(root, "lib/modules", KV, "modules.dep"), `${path}:\n`);
      await assert.rejects(
        buildInitramfs({
          rootfs: root,
          kernelVersion: KV,
          out,
          program: await program(dir),
          compression: "none",
          wantedModules: ["init", "e1000"],
        }),
        /bad archive path/,
        path,
      );
      await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a hostile image's module index, module or kernel config is a FIFO or a device: refused at once, nothing opened", async () => {
  // Opening a FIFO for reading waits for a writer: here one comes after 3 s (so that a build that
  // opens it ends), in an image none would. A synchronous open (the first module's ELF header, the
  // kernel config) stopped the whole server meanwhile; /dev/zero's node was read without end.
  const cases: [string, "fifo" | "null", RegExp | "gzip"][] = [
    [`lib/modules/${KV}/modules.dep`, "fifo", /modules\.dep" in the image is not a regular file/],
    [`lib/modules/${KV}/kernel/e1000.ko`, "fifo", /e1000\.ko" in the image is not a regular file/],
    [`lib/modules/${KV}/kernel/configfs.ko`, "fifo", /configfs\.ko" in the image is not a/],
    [`lib/modules/${KV}/modules.alias`, "null", /modules\.alias" in the image is not a regular/],
    [`boot/config-${KV}`, "fifo", "gzip"],
  ];
  const wrong: string[] = [];
  for (const [path, kind, expect] of cases) {
    const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-hostile-" });
    let writer: Deno.ChildProcess | undefined;
    try {
      const root = await image(dir);
      const host = join(root, path);
      await Deno.mkdir(dirname(host), { recursive: true });
      await Deno.remove(host).catch(() => {});
      if (kind === "fifo") {
        run("mkfifo", host);
        writer = new Deno.Command("sh", {
          args: ["-c", 'sleep 3; exec 3>"$0"', host],
          stdout: "null",
          stderr: "null",
        }).spawn();
      } else run("mknod", host, "c", "1", "3"); // /dev/null's: reads as an empty file
      const t0 = performance.now();
      let problem = "";
      try {
        if (expect === "gzip") {
          assert.equal(initramfsCompression(root, KV), "gzip");
        } else {
          await assert.rejects(
            buildInitramfs({
              rootfs: root,
              kernelVersion: KV,
              out: join(dir, "initrd"),
              program: await program(dir),
              compression: "none",
              wantedModules: ["e1000"],
            }),
            (e) => e instanceof UserError && expect.test(e.message),
          );
        }
      } catch (e) {
        problem = (e as Error).message.split("\n")[0];
      }
      const ms = performance.now() - t0;
      if (ms >= 2000) problem = `${Math.round(ms)} ms (opened, waiting for a writer) ${problem}`;
      if (problem) wrong.push(`${path}: ${problem}`);
    } finally {
      try {
        writer?.kill("SIGKILL");
      } catch { /* it opened the FIFO and ended: something read it */ }
      await writer?.status;
      await Deno.remove(dir, { recursive: true });
    }
  }
  assert.deepEqual(wrong, []);
});

Deno.test("a module index or kernel config over 8 MiB is refused before it is read", async () => {
  // Debian 6.1's largest index (modules.alias) is 1.3 MB; 7.9 MB of modules.dep lines took
  // 190 MB and 1.7 s of the server's thread to parse, and a sparse file costs the image nothing.
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-hostile-" });
  try {
    const root = await image(dir);
    const config = join(root, "boot", `config-${KV}`);
    await Deno.mkdir(dirname(config));
    await Deno.writeTextFile(config, "CONFIG_RD_ZSTD=y\n");
    assert.equal(initramfsCompression(root, KV), "zstd");
    await Deno.truncate(config, 64 << 20); // sparse, the line still there
    assert.equal(initramfsCompression(root, KV), "gzip");
    await Deno.truncate(join(root, "lib/modules", KV, "modules.dep"), 64 << 20);
    await assert.rejects(
      buildInitramfs({
        rootfs: root,
        kernelVersion: KV,
        out: join(dir, "initrd"),
        program: await program(dir),
        compression: "none",
      }),
      (e) =>
        e instanceof UserError &&
        /modules\.dep" in the image is larger than 8 MiB/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** An x86-64 executable's ELF header whose one program header declares `filesz` bytes of
 *  `type` at offset 4096 (the rest of the file: a sparse image file, free to the author). */
function declaringElf(type: number, filesz: number, phentsize = 56, phnum = 1): Uint8Array {
  const b = new Uint8Array(64 + 56);
  const v = new DataView(b.buffer);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setUint16(16, 3, true); // ET_DYN
  v.setUint16(18, 62, true);
  v.setBigUint64(32, 64n, true); // e_phoff
  v.setUint16(54, phentsize, true);
  v.setUint16(56, phnum, true);
  v.setUint32(64, type, true);
  v.setBigUint64(64 + 8, 4096n, true); // p_offset
  v.setBigUint64(64 + 32, BigInt(filesz), true); // p_filesz
  return b;
}

Deno.test("an image's /bin/sh or first module whose ELF headers declare GiBs (PT_INTERP, PT_DYNAMIC, the program header table) is not read whole", async () => {
  // imageMachine reads the image's /bin/sh at every initramfs request (any neighbour's GET
  // /boot/<mac>/initramfs), nodeMachine its first module at each build, both synchronously on the
  // server's only thread. A sparse file's header declaring 1 GiB read 1 GiB into one buffer there.
  const { imageMachine } = await import("../src/initramfs/build.ts");
  const { readElfFile } = await import("../src/initramfs/elf.ts");
  const GiB = 1 << 30;
  const cases: [string, Uint8Array][] = [
    ["PT_INTERP", declaringElf(3, GiB)],
    ["PT_DYNAMIC", declaringElf(2, GiB)],
    ["program headers", declaringElf(1, 0, 65535, 65535)],
  ];
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-hostile-" });
  const readSync = Deno.FsFile.prototype.readSync;
  let bytesRead = 0;
  Deno.FsFile.prototype.readSync = function (this: Deno.FsFile, p: Uint8Array) {
    const n = readSync.call(this, p);
    bytesRead += n ?? 0;
    return n;
  };
  const wrong: string[] = [];
  try {
    const root = join(dir, "rootfs");
    const sh = join(root, "bin/sh");
    await Deno.mkdir(dirname(sh), { recursive: true });
    for (const [what, header] of cases) {
      await Deno.writeFile(sh, header);
      await Deno.truncate(sh, 4096 + GiB + 8 * 65535 * 65535);
      bytesRead = 0;
      imageMachine(root);
      try {
        readElfFile(sh);
      } catch { /* refused: what matters is what it read */ }
      if (bytesRead > 1 << 20) wrong.push(`${what}: ${bytesRead} bytes read`);
    }
  } finally {
    Deno.FsFile.prototype.readSync = readSync;
    await Deno.remove(dir, { recursive: true });
  }
  assert.deepEqual(wrong, []);
});

Deno.test("an image's /bin/sh with 65,000 DT_NEEDED names (1.5 MB) is refused after a few reads, not read name by name at each initramfs request", () => {
  // imageMachine reads the image's /bin/sh at every GET /boot/<mac>/initramfs (any neighbour's),
  // synchronously on the server's only thread; each DT_NEEDED name was a read of its own: 65,000
  // of them took 1 s there per request. A real binary has a few dozen (qemu: 31).
  const dir = Deno.makeTempDirSync({ prefix: "nr-initramfs-hostile-" });
  const readSync = Deno.FsFile.prototype.readSync;
  let reads = 0;
  Deno.FsFile.prototype.readSync = function (this: Deno.FsFile, p: Uint8Array) {
    reads++;
    return readSync.call(this, p);
  };
  try {
    const sh = join(dir, "bin/sh");
    Deno.mkdirSync(dirname(sh), { recursive: true });
    const needed = Array.from({ length: 65_000 }, (_, i) => `lib${i}.so`);
    Deno.writeFileSync(sh, elf(EM_AARCH64, { needed }));
    const machine = imageMachine(dir);
    assert.ok(reads < 1000, `${reads} reads of /bin/sh`);
    // Refused as no machine: the server's own is taken, as for a /bin/sh that is a script.
    assert.equal(machine, undefined);
    reads = 0;
    Deno.writeFileSync(sh, elf(EM_AARCH64, { needed: needed.slice(0, 31) }));
    assert.equal(imageMachine(dir), EM_AARCH64);
  } finally {
    Deno.FsFile.prototype.readSync = readSync;
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a hostile image's modules.dep ships thousands of modules, or GiBs of holes, through links to one file: refused before the archive is written", async () => {
  // Every module of the plan went into the archive, whatever their number or size: one wanted
  // module depending on 100,000 links took 38 s (8 s at a stretch on the server's only thread);
  // links to a sparse file of 4 GiB cost the image nothing and the build 3 s of compression each,
  // as many as an 8 MiB modules.dep lists (its output filling the data dir's disk).
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-hostile-" });
  try {
    const root = await image(dir);
    const mods = join(root, "lib/modules", KV);
    const out = join(dir, "initrd");
    const dependingOn = async (links: number, size: number) => {
      const names = Array.from({ length: links }, (_, i) => `kernel/dep${i}.ko`);
      await Deno.writeTextFile(
        join(mods, "modules.dep"),
        `kernel/e1000.ko: ${names.join(" ")}\n${names.map((n) => `${n}:\n`).join("")}`,
      );
      await Deno.writeFile(join(mods, "kernel/hole.ko"), moduleElf());
      await Deno.truncate(join(mods, "kernel/hole.ko"), size);
      for (const n of names) {
        await Deno.remove(join(mods, n)).catch(() => {});
        await Deno.symlink("hole.ko", join(mods, n));
      }
    };
    const build = () =>
      buildInitramfs({
        rootfs: root,
        kernelVersion: KV,
        out,
        program: prog,
        compression: "gzip",
        wantedModules: ["e1000"],
      });
    const prog = await program(dir);
    for (
      const [links, size, refusal] of [
        [2000, 64, /modules\.dep makes 2001 modules to ship, more than 1024/],
        [3, 100 << 20, /files taken from the image \(modules, libraries\) hold more than 256 MiB/],
      ] as const
    ) {
      await dependingOn(links, size);
      await assert.rejects(build(), (e) => e instanceof UserError && refusal.test(e.message));
      await assert.rejects(Deno.lstat(out), Deno.errors.NotFound);
    }
    // Debian's own: 62 modules of 16 MB.
    await dependingOn(61, 256 << 10);
    assert.equal((await build()).modules.length, 62);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an image's 8 MiB kernel config is read once per tree, not at every initramfs request (a cached file's too)", async () => {
  // Any neighbour may GET /boot/<mac>/initramfs as often as it likes; each request read the
  // image's /boot/config-<kv> (and /bin/sh) synchronously to name the cached file: 9 ms of the
  // server's only thread per request where one costs 0.2 ms.
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-hostile-" });
  const readTextFileSync = Deno.readTextFileSync;
  let configReads = 0;
  Deno.readTextFileSync = (path) => {
    if (String(path).includes("/boot/config-")) configReads++;
    return readTextFileSync(path);
  };
  try {
    const data = new DataDir(join(dir, "data"));
    const id = "c".repeat(64);
    const version = { id, bootable: true, kernelVersion: KV };
    const ctx = { data, images: { get: () => version } };
    const prog = await program(dir);
    // A thin version (no tree yet): what is read then is not kept.
    await assert.rejects(ensureInitramfs(ctx, id, { program: prog }), /modules\.dep/);
    await Deno.mkdir(dirname(data.rootfs(id)), { recursive: true });
    await Deno.rename(await image(join(dir, "tree")), data.rootfs(id));
    const config = join(data.rootfs(id), "boot", `config-${KV}`);
    await Deno.mkdir(dirname(config));
    const line = "# CONFIG_X is not set\n";
    await Deno.writeTextFile(
      config,
      line.repeat((8 << 20) / line.length - 1) + "CONFIG_RD_ZSTD=y\n",
    );
    configReads = 0;
    const built = await ensureInitramfs(ctx, id, { program: prog });
    assert.match(built, /\.cpio\.zst$/); // the tree's config, not the missing tree's gzip
    for (let i = 0; i < 20; i++) {
      assert.equal(await ensureInitramfs(ctx, id, { program: prog }), built);
    }
    assert.equal(configReads, 1);
  } finally {
    Deno.readTextFileSync = readTextFileSync;
    await Deno.remove(dir, { recursive: true });
  }
});
