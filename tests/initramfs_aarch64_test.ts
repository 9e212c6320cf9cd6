// The initramfs of an aarch64 node, built on this x86-64 server: the aarch64 launcher, the arm64
// Deno runtime, its libraries taken from the arm64 image (resolved inside it, never the host's
// x86-64 ones) and the image's arm64 modules. The image and the runtime are stand-ins written here
// (real ELF headers: machine, PT_INTERP, DT_NEEDED — what the builder reads); the last test fetches
// the real runtime from npm (@deno/linux-arm64-glibc at the running Deno's version), cached in the
// checkout's .work/.
import assert from "node:assert/strict";
import { join } from "node:path";
import { DataDir } from "../src/datadir.ts";
import { UserError } from "../src/errors.ts";
import { buildInitramfs, ensureInitramfs, imageMachine } from "../src/initramfs/build.ts";
import { NODE_DENO, nodeLauncher } from "../src/initramfs/bundle.ts";
import { EM_AARCH64, EM_X86_64, readElfFile } from "../src/initramfs/elf.ts";
import { LIBRARY_DIRS_AARCH64, MAX_LIBRARIES, sharedLibraries } from "../src/initramfs/libs.ts";
import { nodeRuntime, runtimePath } from "../src/initramfs/runtime.ts";
import { elf } from "./support/elf.ts";
import { loopExt4 } from "./support/ext4disk.ts";
import { workCacheDir } from "./support/kernel.ts";

const dec = new TextDecoder();

const LOADER = "/lib/ld-linux-aarch64.so.1";
const KV = "6.1.0-99-arm64";

/** A Debian-arm64-like image tree: merged /usr (/lib -> usr/lib), the loader behind an absolute
 *  symlink, libc in the multiarch dir, an x86-64 libm decoy where ld.so looks first and the real
 *  arm64 one further down the path, an arm64 /bin/sh and two arm64 modules. */
async function arm64Image(dir: string): Promise<string> {
  const root = join(dir, "rootfs");
  const multi = join(root, "usr/lib/aarch64-linux-gnu");
  const mods = join(root, "usr/lib/modules", KV);
  for (const d of [multi, join(root, "usr/lib64"), join(root, "usr/bin"), join(mods, "kernel")]) {
    await Deno.mkdir(d, { recursive: true });
  }
  await Deno.symlink("usr/lib", join(root, "lib"));
  await Deno.symlink("usr/bin", join(root, "bin"));
  await Deno.writeFile(join(multi, "ld-linux-aarch64.so.1"), elf(EM_AARCH64));
  // Absolute, as Debian's: resolved on the host it would not exist (or be another machine's).
  await Deno.symlink(
    "/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
    join(root, "usr/lib/ld-linux-aarch64.so.1"),
  );
  await Deno.writeFile(join(multi, "libc.so.6"), elf(EM_AARCH64, { needed: [] }));
  await Deno.writeFile(join(multi, "libm.so.6"), elf(EM_X86_64, { needed: ["libc.so.6"] }));
  await Deno.writeFile(
    join(root, "usr/lib64/libm.so.6"),
    elf(EM_AARCH64, { needed: ["libc.so.6"] }),
  );
  await Deno.writeFile(join(root, "usr/bin/sh"), elf(EM_AARCH64, { type: 2 }), { mode: 0o755 });
  await Deno.writeTextFile(
    join(mods, "modules.dep"),
    "kernel/net_failover.ko:\nkernel/virtio_net.ko: kernel/net_failover.ko\n",
  );
  await Deno.writeFile(join(mods, "kernel/net_failover.ko"), elf(EM_AARCH64, { type: 1 }));
  await Deno.writeFile(join(mods, "kernel/virtio_net.ko"), elf(EM_AARCH64, { type: 1 }));
  return root;
}

/** A stand-in for the arm64 deno: its loader and DT_NEEDED as the real one has them. */
const armDeno = () => elf(EM_AARCH64, { interp: LOADER, needed: ["libm.so.6", "libc.so.6"] });

async function cpioList(path: string, dir: string): Promise<{ names: string[]; tree: string }> {
  const tree = join(dir, "tree");
  await Deno.mkdir(tree);
  const raw = await new Response(
    (await Deno.open(path)).readable.pipeThrough(new DecompressionStream("gzip")),
  ).bytes();
  const cpio = join(dir, "x.cpio");
  await Deno.writeFile(cpio, raw);
  const run = async (args: string[]) => {
    const p = new Deno.Command("sh", { args: ["-c", ...args], cwd: tree, stdout: "piped" });
    return dec.decode((await p.output()).stdout);
  };
  const names = (await run([`cpio -t --quiet < ${cpio}`])).trim().split("\n");
  await run([`cpio -id --quiet --no-absolute-filenames < ${cpio}`]);
  return { names, tree };
}

Deno.test("aarch64 image: libraries resolve inside the image for the runtime's machine", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-a64-" });
  try {
    const root = await arm64Image(dir);
    const deno = join(dir, "deno");
    await Deno.writeFile(deno, armDeno());
    assert.equal(imageMachine(root), EM_AARCH64);
    const libs = sharedLibraries(deno, LIBRARY_DIRS_AARCH64, root);
    assert.deepEqual(libs.map((l) => [l.path, l.real]), [
      [LOADER, "/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"],
      ["/usr/lib64/libm.so.6", "/usr/lib64/libm.so.6"], // the x86-64 decoy is skipped, like ld.so
      ["/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/aarch64-linux-gnu/libc.so.6"],
    ]);
    for (const l of libs) assert.ok(l.host.startsWith(root + "/"), l.host);
    // A missing library names itself and the image.
    await Deno.remove(join(root, "usr/lib/aarch64-linux-gnu/libc.so.6"));
    assert.throws(
      () => sharedLibraries(deno, LIBRARY_DIRS_AARCH64, root),
      new RegExp(`shared library libc\\.so\\.6 \\(needed by .*\\) not found in .* in ${root}`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("aarch64 image: libraries that each name 64 others (4,096 links to one file) are refused past 64, not walked", async () => {
  // sharedLibraries runs synchronously on the server's only thread, at each build an arm64 image's
  // boot asks for (and again a minute after each failure). 256 x 256 links took 28.5 s there; the
  // image's members (2,000,000) allow a level more.
  const dir = await Deno.makeTempDir({ prefix: "nr-a64-" });
  try {
    const root = await arm64Image(dir);
    const multi = join(root, "usr/lib/aarch64-linux-gnu");
    await Deno.writeFile(join(multi, "leaf.so"), elf(EM_AARCH64));
    const wide = Array.from({ length: 64 }, (_, i) => `wide${i}.so`);
    await Deno.writeFile(join(multi, "libc.so.6"), elf(EM_AARCH64, { needed: wide }));
    for (const [i, name] of wide.entries()) {
      const leaves = Array.from({ length: 64 }, (_, j) => `leaf${i}-${j}.so`);
      await Deno.writeFile(join(multi, name), elf(EM_AARCH64, { needed: leaves }));
      for (const leaf of leaves) await Deno.symlink("leaf.so", join(multi, leaf));
    }
    const deno = join(dir, "deno");
    await Deno.writeFile(deno, armDeno());
    assert.throws(
      () => sharedLibraries(deno, LIBRARY_DIRS_AARCH64, root),
      new RegExp(`needs more than ${MAX_LIBRARIES} shared libraries in ${root}`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("aarch64 image: the initramfs has the aarch64 launcher, the runtime, the image's libraries and modules", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-a64-" });
  try {
    const root = await arm64Image(dir);
    const deno = join(dir, "deno");
    await Deno.writeFile(deno, armDeno());
    const script = join(dir, "netroot.js");
    await Deno.writeTextFile(script, "// node program\n");
    const program = {
      kind: "bundle" as const,
      deno,
      script,
      hash: "a".repeat(64),
      machine: EM_AARCH64,
    };
    const out = join(dir, "i.cpio.gz");
    const r = await buildInitramfs({
      rootfs: root,
      kernelVersion: KV,
      out,
      program,
      wantedModules: ["virtio_net"],
    });
    assert.deepEqual(r.modules, ["kernel/net_failover.ko", "kernel/virtio_net.ko"]);
    const { names, tree } = await cpioList(out, dir);
    for (
      const want of [
        "init",
        NODE_DENO.slice(1),
        "netroot/netroot.js",
        "lib/ld-linux-aarch64.so.1",
        "usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
        "usr/lib64/libm.so.6",
        "usr/lib/aarch64-linux-gnu/libc.so.6",
        `lib/modules/${KV}/kernel/virtio_net.ko`,
      ]
    ) assert.ok(names.includes(want), `${want} not in ${names.join(" ")}`);
    assert.ok(!names.some((n) => n.includes("x86_64")), names.join(" "));
    assert.deepEqual(await Deno.readFile(join(tree, "init")), nodeLauncher(EM_AARCH64));
    assert.equal(readElfFile(join(tree, "init")).machine, EM_AARCH64);
    assert.equal(
      await Deno.readLink(join(tree, "lib/ld-linux-aarch64.so.1")),
      "/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
    );
    // An x86-64 runtime for this arm64 kernel is refused, naming both machines.
    await assert.rejects(
      buildInitramfs({
        rootfs: root,
        kernelVersion: KV,
        out,
        program: { ...program, deno: Deno.execPath(), machine: undefined },
      }),
      (e) =>
        e instanceof UserError &&
        e.message === "the image kernel is aarch64 but the node program is x86-64",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("aarch64 image: a libc of 300 MiB of holes is refused before the archive is written", async () => {
  // The image's libraries go into the archive whole, whatever their size: a sparse one costs the
  // image nothing, and an arm64 libc of 2 GiB took 11 s to compress (4 GiB - 1 is what cpio
  // takes), at each build any neighbour asks for. Debian's libraries for the runtime are 3 MB.
  const dir = await Deno.makeTempDir({ prefix: "nr-a64-" });
  try {
    const root = await arm64Image(dir);
    await Deno.truncate(join(root, "usr/lib/aarch64-linux-gnu/libc.so.6"), 300 << 20);
    const deno = join(dir, "deno");
    await Deno.writeFile(deno, armDeno());
    const script = join(dir, "netroot.js");
    await Deno.writeTextFile(script, "// node program\n");
    const out = join(dir, "i.cpio.gz");
    await assert.rejects(
      buildInitramfs({
        rootfs: root,
        kernelVersion: KV,
        out,
        program: { kind: "bundle", deno, script, hash: "a".repeat(64), machine: EM_AARCH64 },
        wantedModules: ["virtio_net"],
      }),
      (e) =>
        e instanceof UserError &&
        /files taken from the image \(modules, libraries\) hold more than 256 MiB/.test(e.message),
    );
    await assert.rejects(Deno.lstat(out), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ensureInitramfs picks the aarch64 runtime for an arm64 image (runtime already cached)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-a64-" });
  try {
    const data = new DataDir(join(dir, "data"));
    await data.ensure();
    const id = "e".repeat(64);
    await Deno.mkdir(data.image(id), { recursive: true });
    await Deno.rename(await arm64Image(dir), data.rootfs(id));
    // Where the builder caches the npm runtime; put there by hand, as an air-gapped lab would.
    const cached = runtimePath(join(data.initramfs, "program", "runtime"), EM_AARCH64);
    await Deno.mkdir(join(cached, ".."), { recursive: true });
    await Deno.writeFile(cached, armDeno(), { mode: 0o755 });
    const image = { id, name: "arm", bootable: true, kernelVersion: KV };
    const path = await ensureInitramfs({ data, images: { get: () => image } }, id);
    const { names, tree } = await cpioList(path, dir);
    assert.equal(readElfFile(join(tree, "init")).machine, EM_AARCH64);
    assert.deepEqual(await Deno.readFile(join(tree, NODE_DENO.slice(1))), armDeno());
    assert.ok(names.includes("usr/lib/aarch64-linux-gnu/libc.so.6"));
    // The node program is the same bundle as x86-64 nodes get.
    assert.match(await Deno.readTextFile(join(tree, "netroot/netroot.js")), /init/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the arm64 Deno runtime comes from npm at the running Deno's version, cached", async () => {
  const cache = join(workCacheDir, "deno-runtime");
  const t0 = performance.now();
  const path = await nodeRuntime(EM_AARCH64, cache);
  console.log(
    `arm64 deno ${Deno.version.deno}: ${path} in ${(performance.now() - t0).toFixed(0)} ms`,
  );
  assert.equal(path, runtimePath(cache, EM_AARCH64));
  const info = readElfFile(path);
  assert.equal(info.machine, EM_AARCH64);
  assert.equal(info.interp, LOADER);
  assert.ok(info.needed.includes("libc.so.6"), info.needed.join(" "));
  assert.equal((await Deno.stat(path)).mode! & 0o111, 0o111);
  // Cached: the second call fetches nothing (a missing npm would fail it otherwise).
  assert.equal(await nodeRuntime(EM_AARCH64, cache, { npm: "/nonexistent/npm" }), path);
  // A version npm does not have fails with one line saying where to put the file instead.
  await assert.rejects(
    nodeRuntime(EM_AARCH64, join(cache, "..", "deno-runtime-missing"), {
      version: "0.0.0-none",
      npm: "/nonexistent/npm",
    }),
    (e) =>
      e instanceof UserError && /could not be fetched: .*npm not found/.test(e.message) &&
      e.message.includes("deno-0.0.0-none-aarch64/deno"),
  );
  await Deno.remove(join(cache, "..", "deno-runtime-missing"), { recursive: true }).catch(() => {});
});

Deno.test("the arm64 runtime (root, loop ext4): after a power cut the cached file is whole or fetched again, never a torn one trusted", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-runtime-cut-" });
  const disk = await loopExt4(160);
  try {
    // A stand-in package: the arm64 headers, then 80 MB (npm's real one is ~85 MB).
    const deno = new Uint8Array(80 << 20).fill(0x5a);
    deno.set(armDeno());
    await Deno.mkdir(join(dir, "package"));
    await Deno.writeFile(join(dir, "package/deno"), deno);
    const tgz = join(dir, "pkg.tgz");
    const tar = await new Deno.Command("tar", { args: ["-C", dir, "-czf", tgz, "package"] })
      .output();
    assert.ok(tar.success);
    const npm = join(dir, "npm");
    await Deno.writeTextFile(npm, `#!/bin/sh\ncp ${tgz} "$5/"\n`, { mode: 0o755 });
    const cache = join(disk.mnt, "initramfs/runtime");
    await Deno.mkdir(cache, { recursive: true });
    const path = await nodeRuntime(EM_AARCH64, cache, { version: "9.9.9", npm });
    // Any journal commit afterwards (ext4's 5 s timer, the database's fsync), then the cut.
    disk.cutAfterCommit();
    // No npm now: the file kept under the cached name (flushed before it was named, its name
    // committed since) is used as it is, and it is whole.
    const again = await nodeRuntime(EM_AARCH64, cache, {
      version: "9.9.9",
      npm: "/nonexistent/npm",
    });
    assert.equal(again, path);
    const got = await Deno.readFile(path);
    assert.equal(got.length, deno.length, `the cached runtime after the cut: ${got.length} bytes`);
  } finally {
    await disk.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the arm64 runtime cache keeps the runtimes of two Deno versions and no killed fetch's leftovers", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-runtime-upgrades-" });
  try {
    await Deno.mkdir(join(dir, "package"));
    await Deno.writeFile(join(dir, "package/deno"), armDeno());
    const tgz = join(dir, "pkg.tgz");
    assert.ok(
      (await new Deno.Command("tar", { args: ["-C", dir, "-czf", tgz, "package"] })
        .output()).success,
    );
    const npm = join(dir, "npm");
    await Deno.writeTextFile(npm, `#!/bin/sh\ncp ${tgz} "$5/"\n`, { mode: 0o755 });
    const cache = join(dir, "runtime");
    // A fetch killed with its server (a restart mid-download): its package, unpacked.
    const dead = join(cache, `.runtime-x1y2z3.${2 ** 22 + 1}.tmp`);
    await Deno.mkdir(join(dead, "package"), { recursive: true });
    await Deno.writeFile(join(dead, "package/deno"), new Uint8Array(1 << 20));
    // A netroot upgraded five times, each on a newer Deno.
    for (const v of ["2.1.0", "2.2.0", "2.3.0", "2.4.0", "2.5.0"]) {
      await nodeRuntime(EM_AARCH64, cache, { version: v, npm });
    }
    // (before: every version's runtime stayed, ~100 MB each, and every killed fetch's package)
    assert.deepEqual([...Deno.readDirSync(cache)].map((e) => e.name).sort(), [
      "deno-2.4.0-aarch64",
      "deno-2.5.0-aarch64",
    ]);
    // The previous version's stays usable (a rollback to it finds its runtime without npm).
    assert.equal(
      await nodeRuntime(EM_AARCH64, cache, { version: "2.4.0", npm: "/nonexistent/npm" }),
      runtimePath(cache, EM_AARCH64, "2.4.0"),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
