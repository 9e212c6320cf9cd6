// The newc writer against the reference reader: GNU cpio lists (-t) and extracts (-idv) what we
// wrote, with contents, modes, device numbers and symlink targets intact. Extraction of device
// nodes needs root (mknod).
import assert from "node:assert/strict";
import { join } from "node:path";
import { cpioHeader, CpioWriter } from "../src/initramfs/cpio.ts";

async function archive(build: (w: CpioWriter) => Promise<void>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const w = new CpioWriter((c) => {
    chunks.push(c.slice());
    return Promise.resolve();
  });
  await build(w);
  await w.finish();
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  assert.equal(out.length, w.bytes);
  return out;
}

async function cpio(args: string[], input: Uint8Array, cwd?: string) {
  const p = new Deno.Command("cpio", {
    args,
    cwd,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  })
    .spawn();
  const writer = p.stdin.getWriter();
  await writer.write(input);
  await writer.close();
  const out = await p.output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  assert.ok(out.success, `cpio ${args.join(" ")}: ${text(out.stderr)}`);
  return { stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("newc header: 110 ASCII bytes, name NUL-terminated and padded to 4", () => {
  const h = cpioHeader({ ino: 7, mode: 0o100644, nlink: 1, size: 5, name: "ab" });
  const s = new TextDecoder().decode(h.subarray(0, 110));
  assert.equal(s.slice(0, 6), "070701");
  assert.equal(s.slice(6, 14), "00000007");
  assert.equal(s.slice(14, 22), "000081a4");
  assert.equal(s.slice(54, 62), "00000005"); // filesize
  assert.equal(s.slice(94, 102), "00000003"); // namesize includes the NUL
  assert.equal(h.length, 116); // 110 + "ab\0" = 113 → padded to 116
  assert.deepEqual([...h.subarray(110)], [0x61, 0x62, 0, 0, 0, 0]);
});

Deno.test("writer rejects bad and duplicate paths, and a file that changed size", async () => {
  const w = new CpioWriter(() => Promise.resolve());
  for (const bad of ["", "/", "a/../b", "./a", "a//b"]) {
    await assert.rejects(w.add({ type: "dir", path: bad, mode: 0o755 }), /bad archive path/);
  }
  await w.add({ type: "dir", path: "/x", mode: 0o755 });
  await assert.rejects(w.add({ type: "dir", path: "x", mode: 0o755 }), /duplicate archive path x/);
  const tmp = await Deno.makeTempFile({ prefix: "nr-cpio-" });
  try {
    await Deno.writeTextFile(tmp, "12345");
    await assert.rejects(
      w.add({ type: "hostfile", path: "f", mode: 0o644, source: tmp, size: 3 }),
      /changed size while archiving \(3 → [45] bytes\)/,
    );
    await assert.rejects(
      w.add({ type: "hostfile", path: "g", mode: 0o644, source: tmp, size: 9 }),
      /changed size while archiving \(9 → 5 bytes\)/,
    );
  } finally {
    await Deno.remove(tmp);
  }
});

Deno.test("GNU cpio lists and extracts files, modes, symlinks and device nodes (root)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-cpio-" });
  try {
    // A host file larger than one 1 MiB read chunk and not a multiple of 4.
    const big = new Uint8Array((1 << 20) + 4099).map((_, i) => (i * 31) & 0xff);
    const bigPath = join(dir, "big.bin");
    await Deno.writeFile(bigPath, big);
    const bytes = await archive(async (w) => {
      await w.add({ type: "dir", path: "etc", mode: 0o755 });
      await w.add({ type: "dir", path: "secret", mode: 0o700 });
      await w.add({
        type: "file",
        path: "etc/a",
        mode: 0o640,
        data: new TextEncoder().encode("a"),
      });
      await w.add({ type: "file", path: "etc/empty", mode: 0o600, data: new Uint8Array() });
      await w.add({ type: "file", path: "run.sh", mode: 0o4755, data: new Uint8Array([1, 2, 3]) });
      await w.add({
        type: "hostfile",
        path: "big",
        mode: 0o644,
        source: bigPath,
        size: big.length,
      });
      await w.add({ type: "symlink", path: "etc/link", target: "../big" });
      await w.add({ type: "symlink", path: "abs", target: "/usr/lib/x86_64-linux-gnu/libc.so.6" });
      await w.add({ type: "dir", path: "dev", mode: 0o755 });
      await w.add({ type: "char", path: "dev/console", mode: 0o600, major: 5, minor: 1 });
      await w.add({ type: "char", path: "dev/null", mode: 0o666, major: 1, minor: 3 });
      await w.add({ type: "block", path: "dev/vda", mode: 0o660, major: 253, minor: 0 });
    });
    assert.equal(bytes.length % 4, 0);

    const listed = (await cpio(["-t", "--quiet"], bytes)).stdout.trim().split("\n");
    assert.deepEqual(listed, [
      "etc",
      "secret",
      "etc/a",
      "etc/empty",
      "run.sh",
      "big",
      "etc/link",
      "abs",
      "dev",
      "dev/console",
      "dev/null",
      "dev/vda",
    ]);

    const out = join(dir, "x");
    await Deno.mkdir(out);
    const { stderr } = await cpio(["-idv", "--no-absolute-filenames"], bytes, out);
    assert.match(stderr, /dev\/vda/);
    const st = (p: string) => Deno.lstatSync(join(out, p));
    assert.equal(st("etc").mode! & 0o7777, 0o755);
    assert.ok(st("secret").isDirectory);
    assert.equal(st("secret").mode! & 0o7777, 0o700);
    assert.equal(Deno.readTextFileSync(join(out, "etc/a")), "a");
    assert.equal(st("etc/a").mode! & 0o7777, 0o640);
    assert.equal(st("etc/empty").size, 0);
    assert.equal(st("run.sh").mode! & 0o7777, 0o4755);
    assert.deepEqual(Deno.readFileSync(join(out, "run.sh")), new Uint8Array([1, 2, 3]));
    assert.deepEqual(Deno.readFileSync(join(out, "big")), big);
    assert.ok(st("etc/link").isSymlink);
    assert.equal(Deno.readLinkSync(join(out, "etc/link")), "../big");
    assert.equal(Deno.readLinkSync(join(out, "abs")), "/usr/lib/x86_64-linux-gnu/libc.so.6");
    const dev = (p: string) => {
      const s = st(p);
      return { char: s.isCharDevice, block: s.isBlockDevice, perm: s.mode! & 0o7777, rdev: s.rdev };
    };
    // st_rdev for major < 4096 and minor < 256 is (major << 8) | minor.
    assert.deepEqual(dev("dev/console"), { char: true, block: false, perm: 0o600, rdev: 0x501 });
    assert.deepEqual(dev("dev/null"), { char: true, block: false, perm: 0o666, rdev: 0x103 });
    assert.deepEqual(dev("dev/vda"), { char: false, block: true, perm: 0o660, rdev: 0xfd00 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
