// The initramfs builder on the real Debian kernel tree and the real deno binary: the archive is
// read back with GNU cpio, and the extracted tree is run with chroot — /init (the generated
// launcher) must start deno from the archive's own libraries. Needs root (chroot, mknod, unshare).
import assert from "node:assert/strict";
import { realpathSync } from "node:fs";
import { join } from "node:path";
import { DataDir } from "../src/datadir.ts";
import { UserError } from "../src/errors.ts";
import {
  type BootableImage,
  BUILD_RETRY_MS,
  buildInitramfs,
  ensureInitramfs,
  initramfsBuildsSettled,
  initramfsCompression,
  type ProgramFiles,
} from "../src/initramfs/build.ts";
import {
  compiledLauncher,
  currentProgram,
  INIT_ARGV,
  INIT_ENV,
  INIT_MOUNTS,
  NODE_DENO,
  NODE_EXE,
  nodeLauncher,
} from "../src/initramfs/bundle.ts";
import { launcherElf } from "../src/initramfs/elf.ts";
import { keepNewest } from "../src/initramfs/prune.ts";
import { fsyncDir } from "../src/linux/fsops.ts";
import { loopExt4, run } from "./support/ext4disk.ts";
import { debianKernel } from "./support/kernel.ts";

const dec = new TextDecoder();
const deno = realpathSync(Deno.execPath());

async function sh(
  cmd: string,
  args: string[],
  opts: { cwd?: string; stdin?: string; env?: Record<string, string> } = {},
) {
  // A clean environment: what the chroot'ed /init sees must come from the launcher alone.
  const p = new Deno.Command(cmd, {
    args,
    cwd: opts.cwd,
    clearEnv: true,
    env: opts.env,
    stdin: opts.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin) {
    const src = await Deno.open(opts.stdin);
    await src.readable.pipeTo(p.stdin);
  }
  const out = await p.output();
  assert.ok(out.success, `${cmd} ${args.join(" ")} (rc ${out.code}): ${dec.decode(out.stderr)}`);
  return dec.decode(out.stdout);
}

/** A program whose script prints what it was started with, then whether FFI on libc works. */
async function probeProgram(dir: string): Promise<ProgramFiles> {
  const script = join(dir, "probe.js");
  await Deno.writeTextFile(
    script,
    `const libc = Deno.dlopen("libc.so.6", { getpid: { parameters: [], result: "i32" } });
const proc = (() => { try { return Deno.readLinkSync("/proc/self/exe"); } catch { return null; } })();
console.log(JSON.stringify({ args: Deno.args, env: Deno.env.toObject(), ffiPid: libc.symbols.getpid() === Deno.pid, proc }));`,
  );
  return { kind: "bundle", deno, script, hash: "0".repeat(64) };
}

Deno.test("Debian kernel tree: zstd archive with launcher, deno, libraries, modules; /init runs in chroot (root)", async () => {
  const k = await debianKernel();
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  try {
    const program = await probeProgram(dir);
    assert.equal(initramfsCompression(k.root, k.kv), "zstd"); // Debian: CONFIG_RD_ZSTD=y
    const out = join(dir, "initrd.cpio.zst");
    const r = await buildInitramfs({ rootfs: k.root, kernelVersion: k.kv, out, program });
    console.log(
      `initramfs: ${r.bytes} B ${r.compression} (cpio ${r.cpioBytes} B, ${r.files} files, ` +
        `${r.modules.length} modules) in ${r.ms} ms`,
    );
    assert.equal(r.compression, "zstd");
    assert.ok(r.bytes <= 45_000_000, `${r.bytes} B > 45 MB target`);
    assert.equal((await Deno.stat(out)).size, r.bytes);

    const cpioPath = join(dir, "initrd.cpio");
    await Deno.writeTextFile(cpioPath, ""); // zstd -o wants to create it; -f overwrites
    await sh("zstd", ["-q", "-f", "-d", out, "-o", cpioPath]);
    assert.equal((await Deno.stat(cpioPath)).size, r.cpioBytes);
    const listed = (await sh("cpio", ["-t", "--quiet"], { stdin: cpioPath })).trim().split("\n");
    for (
      const p of [
        "dev",
        "dev/console",
        "dev/null",
        "proc",
        "sys",
        "run",
        "tmp",
        "newroot",
        "init",
        "netroot/deno",
        "netroot/netroot.js",
        "netroot/modules.order",
        "netroot/modules.plan",
        "lib64/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        `lib/modules/${k.kv}/kernel/fs/nfs/nfsv4.ko`,
      ]
    ) assert.ok(listed.includes(p), p);
    // Every parent directory comes before what it holds (the kernel unpacks in one pass).
    const seen = new Set<string>();
    for (const p of listed) {
      const parent = p.slice(0, p.lastIndexOf("/"));
      assert.ok(!p.includes("/") || seen.has(parent), `${p} before ${parent}`);
      seen.add(p);
    }

    const tree = join(dir, "tree");
    await Deno.mkdir(tree);
    await sh("cpio", ["-idm", "--quiet", "--no-absolute-filenames"], {
      cwd: tree,
      stdin: cpioPath,
    });
    assert.deepEqual(await Deno.readFile(join(tree, "init")), nodeLauncher());
    // Byte for byte (host files are read through one reused buffer: a chunk the compressor still
    // held when the next read came would differ here).
    const digest = async (p: string) =>
      new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(p)));
    assert.deepEqual(await digest(join(tree, "netroot/deno")), await digest(deno));
    const order = (await Deno.readTextFile(join(tree, "netroot/modules.order"))).trim().split("\n");
    assert.deepEqual(order, r.modules);
    // The plan names a load order for every shipped module the node may want, ending with it.
    const plan = await Deno.readTextFile(join(tree, "netroot/modules.plan"));
    assert.match(plan, /^module virtio_net .*virtio_net\.ko\S*$/m);
    assert.match(plan, /^alias virtio:d00000001v\* virtio_net$/m);
    for (const m of order) {
      const a = await Deno.readFile(join(tree, "lib/modules", k.kv, m));
      const b = await Deno.readFile(join(k.root, "lib/modules", k.kv, m));
      assert.deepEqual(a, b, m);
    }
    const console_ = Deno.lstatSync(join(tree, "dev/console"));
    assert.ok(console_.isCharDevice);
    assert.equal(console_.rdev, (5 << 8) | 1);

    // The real proof: inside the archive alone, the launcher starts deno, which runs the script.
    // In a private mount namespace: the /proc the launcher mounts goes away with it.
    const ran = JSON.parse(
      await sh("unshare", ["-m", "--propagation", "private", "/usr/sbin/chroot", tree, "/init"]),
    );
    assert.deepEqual(ran.args, ["init"]);
    assert.equal(ran.ffiPid, true);
    assert.equal(ran.proc, "/netroot/deno"); // /proc mounted by the launcher
    for (const e of INIT_ENV) assert.equal(ran.env[e.split("=")[0]], e.split("=")[1]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the real netroot bundle starts from the archive: launcher-mounted /proc, own libraries (root)", async () => {
  const k = await debianKernel();
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  try {
    const program = await currentProgram(join(dir, "program"));
    const mods = join(dir, "rootfs/lib/modules", k.kv);
    await Deno.mkdir(mods, { recursive: true });
    await Deno.writeTextFile(join(mods, "modules.dep"), "");
    const out = join(dir, "initrd");
    await buildInitramfs({
      rootfs: join(dir, "rootfs"),
      kernelVersion: k.kv,
      out,
      program,
      compression: "zstd",
    });
    const tree = join(dir, "tree");
    await Deno.mkdir(tree);
    const cpioPath = join(dir, "initrd.cpio");
    await Deno.writeTextFile(cpioPath, "");
    await sh("zstd", ["-q", "-f", "-d", out, "-o", cpioPath]);
    await sh("cpio", ["-idm", "--quiet", "--no-absolute-filenames"], {
      cwd: tree,
      stdin: cpioPath,
    });
    // The node's launcher with `init --help` (plain init would reconfigure this host).
    const launcher = launcherElf({
      path: NODE_DENO,
      argv: [...INIT_ARGV, "--help"],
      envp: INIT_ENV,
      mounts: INIT_MOUNTS,
    });
    await Deno.writeFile(join(tree, "help-init"), launcher, { mode: 0o755 });
    const help = await sh("unshare", [
      "-m",
      "--propagation",
      "private",
      "/usr/sbin/chroot",
      tree,
      "/help-init",
    ]);
    assert.match(help, /^usage: netroot init/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// Compiled mode (`deno compile`): /init is the launcher, which mounts /proc and runs the executable
// as `netroot init`. A real compiled netroot needs denort (not fetchable here): the stand-in
// executable is a copy of the deno binary, an ELF of the same runtime with the same libraries.
Deno.test("compiled mode layout: /init launcher mounts /proc, then runs /netroot/netroot init (root)", async () => {
  const k = await debianKernel();
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-compiled-" });
  try {
    const exe = join(dir, "netroot");
    await Deno.copyFile(deno, exe);
    const program: ProgramFiles = { kind: "compiled", exe, hash: "1".repeat(64) };
    const mods = join(dir, "rootfs/lib/modules", k.kv);
    await Deno.mkdir(mods, { recursive: true });
    await Deno.writeTextFile(join(mods, "modules.dep"), "");
    const out = join(dir, "initrd");
    await buildInitramfs({
      rootfs: join(dir, "rootfs"),
      kernelVersion: k.kv,
      out,
      program,
      compression: "zstd",
    });
    const tree = join(dir, "tree");
    await Deno.mkdir(tree);
    const cpioPath = join(dir, "initrd.cpio");
    await Deno.writeTextFile(cpioPath, "");
    await sh("zstd", ["-q", "-f", "-d", out, "-o", cpioPath]);
    await sh("cpio", ["-idm", "--quiet", "--no-absolute-filenames"], {
      cwd: tree,
      stdin: cpioPath,
    });
    assert.deepEqual(await Deno.readFile(join(tree, "init")), compiledLauncher());
    assert.ok(!Deno.lstatSync(join(tree, "init")).isSymlink);
    assert.equal((await Deno.stat(join(tree, NODE_EXE))).size, (await Deno.stat(exe)).size);
    // /init as built: the launcher mounts /proc and execs `/netroot/netroot init`; the stand-in
    // (deno) takes `init` as its own subcommand and creates a project in /, proving it ran from
    // the archive with the archive's libraries.
    await sh("unshare", ["-m", "--propagation", "private", "/usr/sbin/chroot", tree, "/init"]);
    assert.ok(Deno.lstatSync(join(tree, "deno.json")).isFile, "the executable ran as `… init`");
    // The same launcher shape with a probe for argv: the runtime sees /proc (mounted by the
    // launcher: the tree's /proc is an empty directory) and itself at /netroot/netroot.
    const probe = launcherElf({
      path: NODE_EXE,
      argv: [NODE_EXE, "eval", "console.log(Deno.readLinkSync('/proc/self/exe'))"],
      envp: INIT_ENV,
      mounts: INIT_MOUNTS,
    });
    await Deno.writeFile(join(tree, "probe-init"), probe, { mode: 0o755 });
    const self = await sh("unshare", [
      "-m",
      "--propagation",
      "private",
      "/usr/sbin/chroot",
      tree,
      "/probe-init",
    ]);
    assert.equal(self.trim(), NODE_EXE);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** An image-like tree whose /lib is an absolute symlink (merged /usr), holding one real module. */
async function smallImage(dir: string, kv: string, module: Uint8Array): Promise<string> {
  const root = join(dir, "rootfs");
  const mods = join(root, "usr/lib/modules", kv);
  await Deno.mkdir(join(mods, "kernel"), { recursive: true });
  await Deno.symlink("/usr/lib", join(root, "lib")); // must resolve inside the image, not the host
  await Deno.writeTextFile(
    join(mods, "modules.dep"),
    "kernel/e1000.ko:\nkernel/configfs.ko:\nkernel/netconsole.ko: kernel/configfs.ko\n",
  );
  for (const m of ["e1000", "configfs", "netconsole"]) {
    await Deno.writeFile(join(mods, `kernel/${m}.ko`), module);
  }
  return root;
}

Deno.test("initramfs lz4 (the legacy frame the kernel reads) and none: one newc archive, unpacked the same", async () => {
  const k = await debianKernel();
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  try {
    const e1000 = await Deno.readFile(
      join(k.root, "lib/modules", k.kv, "kernel/drivers/net/ethernet/intel/e1000/e1000.ko"),
    );
    const root = await smallImage(dir, "9.9.9-test", e1000);
    const program = await probeProgram(dir);
    const build = (compression: "lz4" | "none") =>
      buildInitramfs({
        rootfs: root,
        kernelVersion: "9.9.9-test",
        out: join(dir, `i.${compression}`),
        program,
        compression,
        wantedModules: ["e1000"],
      });
    const none = await build("none");
    const lz4 = await build("lz4");
    assert.equal(none.compression, "none");
    assert.equal(lz4.compression, "lz4");
    const raw = await Deno.readFile(join(dir, "i.none"));
    assert.equal(raw.length, none.bytes);
    assert.equal(none.bytes, none.cpioBytes);
    assert.equal(new TextDecoder().decode(raw.subarray(0, 6)), "070701"); // newc, uncompressed
    const packed = await Deno.readFile(join(dir, "i.lz4"));
    // The legacy frame's magic (lz4 -l), the only lz4 format the kernel's unpacker takes.
    assert.deepEqual([...packed.subarray(0, 4)], [0x02, 0x21, 0x4c, 0x18]);
    assert.ok(packed.length < raw.length);
    await sh("lz4", ["-d", "-q", "-f", join(dir, "i.lz4"), join(dir, "i.unlz4")]);
    assert.deepEqual(await Deno.readFile(join(dir, "i.unlz4")), raw);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("image symlinks resolve inside the image; gzip without a kernel config; missing modules noted", async () => {
  const k = await debianKernel();
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  try {
    const e1000 = await Deno.readFile(
      join(k.root, "lib/modules", k.kv, "kernel/drivers/net/ethernet/intel/e1000/e1000.ko"),
    );
    const root = await smallImage(dir, "9.9.9-test", e1000);
    const out = join(dir, "i.cpio.gz");
    const r = await buildInitramfs({
      rootfs: root,
      kernelVersion: "9.9.9-test",
      out,
      program: await probeProgram(dir),
      wantedModules: ["e1000", "not_a_module"],
    });
    assert.equal(r.compression, "gzip");
    assert.deepEqual(r.modules, ["kernel/e1000.ko"]);
    assert.deepEqual(r.missing, ["not_a_module"]);
    const cpioPath = join(dir, "i.cpio");
    await Deno.writeFile(
      cpioPath,
      await new Response(
        (await Deno.open(out)).readable.pipeThrough(new DecompressionStream("gzip")),
      ).bytes(),
    );
    const listed = await sh("cpio", ["-t", "--quiet"], { stdin: cpioPath });
    assert.match(listed, /^lib\/modules\/9\.9\.9-test\/kernel\/e1000\.ko$/m);
    // netconsole ships beside, in its own order file: loaded only when the command line asks.
    assert.match(listed, /^lib\/modules\/9\.9\.9-test\/kernel\/netconsole\.ko$/m);
    const file = (name: string) =>
      sh("cpio", ["-i", "--quiet", "--to-stdout", name], { stdin: cpioPath });
    assert.equal(await file("netroot/modules.order"), "kernel/e1000.ko\n");
    assert.equal(
      await file("netroot/netconsole.order"),
      "kernel/configfs.ko\nkernel/netconsole.ko\n",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("clear errors: no modules.dep, bad kernel version, aarch64 kernel; nothing left behind", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  try {
    const program = await probeProgram(dir);
    const out = join(dir, "x.cpio.gz");
    await Deno.mkdir(join(dir, "empty"));
    await assert.rejects(
      buildInitramfs({ rootfs: join(dir, "empty"), kernelVersion: "6.1.0-1", out, program }),
      (e) =>
        e instanceof UserError &&
        e.message ===
          "the image has no /lib/modules/6.1.0-1/modules.dep (run `depmod 6.1.0-1` in the image)",
    );
    await assert.rejects(
      buildInitramfs({ rootfs: dir, kernelVersion: "../../etc", out, program }),
      /bad kernel version/,
    );
    // A module whose ELF header says aarch64.
    const arm = new Uint8Array(64);
    arm.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
    new DataView(arm.buffer).setUint16(18, 183, true);
    const root = await smallImage(dir, "6.1.0-arm64", arm);
    await assert.rejects(
      buildInitramfs({ rootfs: root, kernelVersion: "6.1.0-arm64", out, program }),
      { message: "the image kernel is aarch64 but the node program is x86-64" },
    );
    await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a full disk fails the build with its path, in time, leaving nothing (root: tmpfs)", async () => {
  const k = await debianKernel();
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  const full = join(dir, "full");
  await Deno.mkdir(full);
  run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", full);
  try {
    const e1000 = await Deno.readFile(
      join(k.root, "lib/modules", k.kv, "kernel/drivers/net/ethernet/intel/e1000/e1000.ko"),
    );
    const root = await smallImage(dir, "9.9.9-test", e1000);
    const program = await probeProgram(dir);
    for (const compression of ["zstd", "gzip", "none"] as const) {
      const out = join(full, `i.${compression}`);
      // The archive (the deno binary: tens of MB) cannot fit in 1 MiB. The zlib builds waited
      // for ever once the file failed: the node asking for it, and every later one, hung.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const hung = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${compression}: no answer in 60 s`)), 60_000);
      });
      try {
        await assert.rejects(
          Promise.race([
            buildInitramfs({
              rootfs: root,
              kernelVersion: "9.9.9-test",
              out,
              program,
              compression,
            }),
            hung,
          ]),
          (e) =>
            e instanceof UserError &&
            e.message === `no space left on device for the initramfs ${out}`,
        );
      } finally {
        clearTimeout(timer);
      }
      await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
    }
  } finally {
    run("umount", full);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ensureInitramfs: a failed build is remembered for a minute, not started again per request", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  try {
    const data = new DataDir(join(dir, "data"));
    await data.ensure();
    const id = "e".repeat(64);
    await Deno.mkdir(data.rootfs(id), { recursive: true }); // no /lib/modules: the build fails
    const image: BootableImage = { id, name: "nomods", bootable: true, kernelVersion: "6.1.0-1" };
    const ctx = { data, images: { get: () => image } };
    const program = await probeProgram(dir);
    const missing =
      "the image has no /lib/modules/6.1.0-1/modules.dep (run `depmod 6.1.0-1` in the image)";
    await assert.rejects(
      ensureInitramfs(ctx, id, { program }),
      (e) => e instanceof UserError && e.message === missing,
    );
    // Asked again (any neighbour can, for any image): the same failure, no build started.
    for (let i = 0; i < 20; i++) {
      await assert.rejects(
        ensureInitramfs(ctx, id, { program }),
        (e) =>
          e instanceof UserError && e.status === 400 &&
          e.message.startsWith(`${missing} (the build failed `) &&
          e.message.endsWith(`tried again ${BUILD_RETRY_MS / 1000} s after it)`),
      );
    }
    assert.deepEqual(
      [...Deno.readDirSync(data.initramfs)].filter((e) => e.name.endsWith(".tmp")),
      [],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const killedBuild = `
import { DataDir } from "${new URL("../src/datadir.ts", import.meta.url)}";
import { ensureInitramfs } from "${new URL("../src/initramfs/build.ts", import.meta.url)}";
const [root, img, program] = Deno.args;
const image = JSON.parse(img);
await ensureInitramfs({ data: new DataDir(root), images: { get: () => image } }, image.id, {
  program: JSON.parse(program),
});
`;

Deno.test("ensureInitramfs: kill -9 leaves no complete-looking file; one shared build per key; cache hit; 404/409", async () => {
  const k = await debianKernel();
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  try {
    const data = new DataDir(join(dir, "data"));
    await data.ensure();
    const id = "f".repeat(64);
    await Deno.mkdir(data.image(id), { recursive: true });
    const e1000 = await Deno.readFile(
      join(k.root, "lib/modules", k.kv, "kernel/drivers/net/ethernet/intel/e1000/e1000.ko"),
    );
    await Deno.rename(await smallImage(dir, "9.9.9-test", e1000), data.rootfs(id));
    const images = new Map<string, BootableImage>([
      [id, { id, name: "img", bootable: true, kernelVersion: "9.9.9-test" }],
      ["broken", { id: "b".repeat(64), name: "broken", bootable: false, reason: "no kernel" }],
    ]);
    const ctx = { data, images: { get: (ref: string) => images.get(ref) } };
    const program = await probeProgram(dir);
    // A build killed (SIGKILL) mid-way leaves only a temp file, which the next build sweeps.
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        killedBuild,
        data.root,
        JSON.stringify(images.get(id)),
        JSON.stringify(program),
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      const deadline = Date.now() + 30_000;
      while (![...Deno.readDirSync(data.initramfs)].some((e) => e.name.endsWith(".tmp"))) {
        assert.ok(Date.now() < deadline, "the child build never started writing");
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 300)); // well into the write
    } finally {
      child.kill("SIGKILL");
      await child.status;
    }
    const leftovers = [...Deno.readDirSync(data.initramfs)].map((e) => e.name);
    assert.equal(leftovers.length, 1);
    assert.match(leftovers[0], new RegExp(`^\\.${id}-.*\\.${child.pid}\\.tmp$`));

    const [a, b] = await Promise.all([
      ensureInitramfs(ctx, id, { program }),
      ensureInitramfs(ctx, id, { program }),
    ]);
    assert.equal(a, b);
    assert.match(a, new RegExp(`/${id}-9\\.9\\.9-test-0{16}\\.cpio\\.gz$`));
    const names = [...Deno.readDirSync(data.initramfs)].map((e) => e.name);
    assert.deepEqual(names, [a.slice(a.lastIndexOf("/") + 1)]);
    const before = (await Deno.stat(a)).mtime;
    assert.equal(await ensureInitramfs(ctx, id, { program }), a);
    assert.deepEqual((await Deno.stat(a)).mtime, before);

    await assert.rejects(
      ensureInitramfs(ctx, "nope", { program }),
      (e) => e instanceof UserError && e.status === 404,
    );
    await assert.rejects(
      ensureInitramfs(ctx, "broken", { program }),
      (e) =>
        e instanceof UserError && e.status === 409 &&
        e.message === "image broken is not bootable: no kernel",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("from source, the program is a deno bundle of the node entry (init only) that runs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  try {
    const p = await currentProgram(dir);
    assert.equal(p.kind, "bundle");
    if (p.kind !== "bundle") return;
    assert.equal(p.deno, deno);
    assert.match(p.hash, /^[0-9a-f]{64}$/);
    assert.equal(p.script, join(dir, `netroot-${p.hash.slice(0, 16)}.js`));
    const help = await sh(deno, ["run", "-A", "--no-config", p.script, "init", "--help"], {
      env: { DENO_DIR: join(dir, "deno-cache"), NO_COLOR: "1" },
    });
    assert.match(help, /usage: netroot init/);
    // node side only: no server code (hono) in the node's program
    assert.doesNotMatch(await Deno.readTextFile(p.script), /hono/i);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cache pruning keeps the newest files of one image only", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  try {
    const names = ["a-1.cpio.zst", "a-2.cpio.zst", "a-3.cpio.gz", "b-1.cpio.zst", "a-notes.txt"];
    for (const [i, n] of names.entries()) {
      await Deno.writeTextFile(join(dir, n), n);
      await Deno.utime(join(dir, n), 1000 + i, 1000 + i);
    }
    const removed = await keepNewest(dir, (n) => n.startsWith("a-") && /\.cpio\./.test(n), 2);
    assert.deepEqual(removed, [join(dir, "a-1.cpio.zst")]);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "a-2.cpio.zst",
      "a-3.cpio.gz",
      "a-notes.txt",
      "b-1.cpio.zst",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ensureInitramfs (root, loop ext4): a power cut after a build never leaves an empty or torn file under the cached name", async () => {
  const k = await debianKernel();
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-" });
  const disk = await loopExt4(64);
  try {
    const data = new DataDir(join(disk.mnt, "data"));
    await data.ensure();
    const id = "f".repeat(64);
    await Deno.mkdir(data.image(id), { recursive: true });
    const e1000 = await Deno.readFile(
      join(k.root, "lib/modules", k.kv, "kernel/drivers/net/ethernet/intel/e1000/e1000.ko"),
    );
    run("cp", "-a", await smallImage(dir, "9.9.9-test", e1000), data.rootfs(id));
    run("sync"); // the data dir and the image are durable: only the build is at stake
    const image = { id, name: "img", bootable: true, kernelVersion: "9.9.9-test" };
    const ctx = { data, images: { get: () => image } };
    const program = await probeProgram(dir);
    const path = await ensureInitramfs(ctx, id, { program });
    const built = await Deno.readFile(path);
    assert.ok(built.length > 0);
    // Anything else of the server (an SQLite commit of the database beside it, ext4's 5 s timer)
    // commits the journal now: the rename goes to the disk with whatever is there of the file.
    fsyncDir(data.root);
    disk.powerCut();
    disk.powerOn();
    // After the restart the cache is trusted by its name alone: it must be the file, whole.
    const again = await ensureInitramfs(ctx, id, { program });
    const after = await Deno.readFile(again);
    assert.equal(
      after.length,
      built.length,
      `cached initramfs after the cut: ${after.length} bytes`,
    );
    assert.ok(after.every((b, i) => b === built[i]), "same content");
  } finally {
    await initramfsBuildsSettled();
    await disk.close();
    await Deno.remove(dir, { recursive: true });
  }
});
