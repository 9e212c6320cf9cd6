// ELF reading on real binaries of this host, and the generated /init launcher executed for real:
// it must hand exactly the given argv and environment to the program, and fail loudly (message on
// fd 2, exit 127) when the program is missing.
import assert from "node:assert/strict";
import { realpathSync } from "node:fs";
import { join } from "node:path";
import { EM_AARCH64, EM_X86_64, launcherElf, parseElf, readElfFile } from "../src/initramfs/elf.ts";
import { sharedLibraries } from "../src/initramfs/libs.ts";
import { INIT_ARGV, INIT_ENV, nodeLauncher } from "../src/initramfs/bundle.ts";

const dec = new TextDecoder();
const deno = realpathSync(Deno.execPath());

Deno.test("reads PT_INTERP and DT_NEEDED of the deno binary like ldd", async () => {
  const info = readElfFile(deno);
  assert.equal(info.machine, EM_X86_64);
  assert.equal(info.interp, "/lib64/ld-linux-x86-64.so.2");
  // ldd prints "soname => path" for every NEEDED library (and the vdso, which has no file).
  const ldd = dec.decode((await new Deno.Command("ldd", { args: [deno] }).output()).stdout);
  const fromLdd = [...ldd.matchAll(/^\s*(\S+) => /gm)].map((m) => m[1]).sort();
  assert.deepEqual([...info.needed].sort().filter((n) => n !== "ld-linux-x86-64.so.2"), fromLdd);
});

Deno.test("shared libraries: every ldd path, interpreter first, files of the right machine", async () => {
  const libs = sharedLibraries(deno);
  assert.equal(libs[0].path, "/lib64/ld-linux-x86-64.so.2");
  const ldd = dec.decode((await new Deno.Command("ldd", { args: [deno] }).output()).stdout);
  const real = new Set(libs.map((l) => l.real));
  for (const m of ldd.matchAll(/=> (\/\S+)/g)) assert.ok(real.has(realpathSync(m[1])), m[1]);
  for (const l of libs) assert.equal(readElfFile(l.real).machine, EM_X86_64);
  assert.throws(() => sharedLibraries(deno, ["/nonexistent"]), /libdl\.so\.2 .*not found/);
});

Deno.test("rejects what is not a 64-bit little-endian ELF", () => {
  const at = (b: Uint8Array) => (o: number, n: number) => b.subarray(o, o + n);
  assert.throws(() => parseElf(at(new TextEncoder().encode("#!/bin/sh\n".padEnd(80))), "x"), {
    message: "x is not an ELF file",
  });
  const elf32 = new Uint8Array(64);
  elf32.set([0x7f, 0x45, 0x4c, 0x46, 1, 1, 1]);
  assert.throws(() => parseElf(at(elf32), "y"), { message: "y is not a 64-bit little-endian ELF" });
});

Deno.test("launcher is a static x86-64 executable with no interpreter", () => {
  const bin = nodeLauncher();
  assert.ok(bin.length < 1024, `${bin.length} bytes`);
  const info = parseElf((o, n) => bin.subarray(o, o + n));
  assert.deepEqual(info, { machine: EM_X86_64, type: 2, needed: [] });
  assert.equal(
    INIT_ARGV.join(" "),
    "/netroot/deno run -A --no-config --no-code-cache --v8-flags=--no-opt,--no-maglev,--single-threaded /netroot/netroot.js init",
  );
});

async function runLauncher(bin: Uint8Array, dir: string) {
  const path = join(dir, `launcher-${crypto.randomUUID()}`);
  await Deno.writeFile(path, bin, { mode: 0o755 });
  // clearEnv: only the launcher's envp may reach the program.
  const out = await new Deno.Command(path, { clearEnv: true, stdout: "piped", stderr: "piped" })
    .output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("launcher execs /bin/sh with exactly its argv and envp", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-elf-" });
  try {
    const bin = launcherElf({
      path: "/bin/sh",
      argv: ["sh", "-c", 'echo "$0|$1|$2|$HOME|$TERM"; env | sort; exit 7', "zero", "a b", ""],
      envp: ["HOME=/", "TERM=linux"],
    });
    const r = await runLauncher(bin, dir);
    assert.equal(r.code, 7, r.stderr);
    const [first, ...env] = r.stdout.trim().split("\n");
    assert.equal(first, "zero|a b||/|linux");
    // sh adds PWD (and may add SHLVL, _); nothing from our own environment leaks in.
    assert.deepEqual(env.filter((l) => !/^(PWD|SHLVL|_|OLDPWD)=/.test(l)), [
      "HOME=/",
      "TERM=linux",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("launcher runs the real deno with the node argv shape and environment", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-elf-" });
  try {
    const script = join(dir, "probe.js");
    await Deno.writeTextFile(
      script,
      `console.log(JSON.stringify({ args: Deno.args, env: Deno.env.toObject() }));`,
    );
    // Same argv/env as the node's /init, only the paths point at this host's deno and script.
    const cache = join(dir, "deno-cache");
    const bin = launcherElf({
      path: deno,
      argv: INIT_ARGV.map((a) =>
        a === "/netroot/deno" ? deno : a === "/netroot/netroot.js" ? script : a
      ),
      envp: INIT_ENV.map((e) => e.startsWith("DENO_DIR=") ? `DENO_DIR=${cache}` : e),
    });
    const r = await runLauncher(bin, dir);
    assert.equal(r.code, 0, r.stderr);
    const seen = JSON.parse(r.stdout);
    assert.deepEqual(seen.args, ["init"]);
    const expected = Object.fromEntries(INIT_ENV.map((e) => e.split("=", 2)));
    expected.DENO_DIR = cache;
    // deno itself adds DENO_NODE_SHIM_ACTIVE and a PATH to its node shims under DENO_DIR.
    const { DENO_NODE_SHIM_ACTIVE: _, PATH: path, ...env } = seen.env;
    assert.deepEqual(env, expected);
    assert.ok(path === undefined || path.startsWith(cache), path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("launcher reports a failed execve on stderr and exits 127", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-elf-" });
  try {
    const r = await runLauncher(
      launcherElf({ path: "/nonexistent/deno", argv: ["x"], envp: [] }),
      dir,
    );
    assert.equal(r.code, 127);
    assert.equal(r.stderr, "netroot /init: execve /nonexistent/deno failed\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("launcher mounts before execve; a failed mount does not stop it (root, private mount ns)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-elf-" });
  try {
    const target = join(dir, "mnt");
    await Deno.mkdir(target);
    const bin = launcherElf({
      path: "/bin/sh",
      argv: ["sh", "-c", `grep " ${target} " /proc/self/mounts`],
      envp: [],
      mounts: [
        { source: "none", target: join(dir, "missing"), fstype: "tmpfs", flags: 0 },
        { source: "nr-elf-test", target, fstype: "tmpfs", flags: 2 | 4 | 8 },
      ],
    });
    const path = join(dir, "launcher");
    await Deno.writeFile(path, bin, { mode: 0o755 });
    // unshare execs the launcher in a new mount namespace: the mount dies with it.
    const out = await new Deno.Command("unshare", {
      args: ["-m", "--propagation", "private", path],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, dec.decode(out.stderr));
    assert.match(
      dec.decode(out.stdout),
      new RegExp(`^nr-elf-test ${target} tmpfs rw,nosuid,nodev,noexec`),
    );
    assert.ok(!Deno.readTextFileSync("/proc/self/mounts").includes(target));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// The aarch64 launcher runs under qemu-user (Debian qemu-user): its mount and write/exit calls are
// emulated, its execve goes to the host kernel, which runs the host's (x86-64) /bin/sh.
Deno.test("aarch64 launcher: mounts, then execs with exactly its argv and envp; fails loudly (root, qemu-user)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-elf-" });
  try {
    const target = join(dir, "mnt");
    await Deno.mkdir(target);
    const bin = launcherElf({
      machine: EM_AARCH64,
      path: "/bin/sh",
      argv: ["sh", "-c", `echo "$0|$1|$HOME"; grep " ${target} " /proc/self/mounts`, "zero", "a b"],
      envp: ["HOME=/h"],
      mounts: [
        { source: "none", target: join(dir, "missing"), fstype: "tmpfs", flags: 0 },
        { source: "nr-elf-a64", target, fstype: "tmpfs", flags: 2 | 4 | 8 },
      ],
    });
    assert.deepEqual(parseElf((o, n) => bin.subarray(o, o + n)), {
      machine: EM_AARCH64,
      type: 2,
      needed: [],
    });
    const path = join(dir, "launcher-a64");
    await Deno.writeFile(path, bin, { mode: 0o755 });
    const out = await new Deno.Command("unshare", {
      args: ["-m", "--propagation", "private", "qemu-aarch64", path],
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, dec.decode(out.stderr));
    const [first, mount] = dec.decode(out.stdout).trim().split("\n");
    assert.equal(first, "zero|a b|/h");
    assert.match(mount, new RegExp(`^nr-elf-a64 ${target} tmpfs rw,nosuid,nodev,noexec`));

    const failed = join(dir, "launcher-a64-missing");
    await Deno.writeFile(
      failed,
      launcherElf({ machine: EM_AARCH64, path: "/nonexistent/deno", argv: ["x"], envp: [] }),
      { mode: 0o755 },
    );
    const r = await new Deno.Command("qemu-aarch64", { args: [failed], stderr: "piped" }).output();
    assert.equal(r.code, 127);
    assert.equal(dec.decode(r.stderr), "netroot /init: execve /nonexistent/deno failed\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
