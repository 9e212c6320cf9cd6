// `netroot initramfs build` as a user runs it (child process of the bundled program) against a data dir holding a small imported image: the Debian kernel, its config and one
// NIC module. Needs root (the image import keeps ownership).
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DataDir } from "../src/datadir.ts";
import { openDatabase } from "../src/db.ts";
import { ImageStore } from "../src/images/store.ts";
import { debianKernel } from "./support/kernel.ts";

const main = fileURLToPath(new URL("../main.ts", import.meta.url));
let bundled: Promise<string> | undefined;

/** The program as shipped (a `deno bundle` of main.ts): then the bundle itself goes into the
 *  initramfs, so its hash (and the cache key) is fixed for the whole test. */
function bundle(): Promise<string> {
  bundled ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-cli-bundle-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const out = join(dir, "netroot.js");
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["bundle", "--quiet", "--platform", "deno", "-o", out, main],
      stderr: "piped",
    }).output();
    assert.ok(r.success, new TextDecoder().decode(r.stderr));
    return out;
  })();
  return bundled;
}

async function cli(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-config", await bundle(), "initramfs", ...args],
    env: { NO_COLOR: "1", NETROOT_DATA: "/nonexistent-netroot-data" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("netroot initramfs build IMAGE --out FILE: builds once, then answers from the cache (root)", async () => {
  const k = await debianKernel();
  const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-cli-" });
  try {
    // A minimal bootable image tree.
    const src = join(dir, "src");
    const mods = join(src, "lib/modules", k.kv);
    const e1000 = "kernel/drivers/net/ethernet/intel/e1000/e1000.ko";
    await Deno.mkdir(join(mods, e1000, ".."), { recursive: true });
    await Deno.mkdir(join(src, "boot"));
    await Deno.copyFile(k.vmlinuz, join(src, "boot", `vmlinuz-${k.kv}`));
    await Deno.copyFile(
      join(k.root, "boot", `config-${k.kv}`),
      join(src, "boot", `config-${k.kv}`),
    );
    await Deno.copyFile(join(k.root, "lib/modules", k.kv, e1000), join(mods, e1000));
    await Deno.writeTextFile(join(mods, "modules.dep"), `${e1000}:\n`);
    const data = new DataDir(join(dir, "data"));
    await data.ensure();
    const db = openDatabase(data.db);
    try {
      const img = await new ImageStore(data, db).import(src, "tiny");
      assert.ok(img.bootable, img.reason ?? "");
    } finally {
      db.close();
    }

    const out = join(dir, "copy.cpio.zst");
    const first = await cli(["build", "tiny", "--data", data.root, "--out", out, "--json"]);
    assert.equal(first.code, 0, first.stderr);
    const r = JSON.parse(first.stdout);
    assert.match(
      r.file,
      new RegExp(`^${data.initramfs}/${r.id}-${k.kv}-[0-9a-f]{16}\\.cpio\\.zst$`),
    );
    assert.ok(r.bytes > 30e6 && r.bytes < 45e6, `${r.bytes}`);
    assert.equal((await Deno.stat(out)).size, r.bytes);
    assert.match(first.stderr, /INFO initramfs built .*modules=1 /);
    console.log(`built ${r.bytes} B in ${r.seconds} s`);
    // Bundle mode: the running bundle is the program, no rebundling.
    assert.deepEqual([...Deno.readDirSync(data.initramfs)].map((e) => e.name).sort(), [
      r.file.slice(data.initramfs.length + 1),
    ]);

    const again = await cli(["build", r.id.slice(0, 12), "--data", data.root]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /\(cached\)/);
    assert.doesNotMatch(again.stderr, /built/);

    const missing = await cli(["build", "nope", "--data", data.root]);
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr.trim(), "netroot initramfs: image nope not found");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("netroot initramfs: usage errors and a missing data dir are clear", async () => {
  const bad = await cli(["frobnicate"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^usage: netroot initramfs build IMAGE/);
  const noData = await cli(["build", "x"]);
  assert.equal(noData.code, 1);
  assert.equal(
    noData.stderr.trim(),
    "netroot initramfs: no netroot data dir at /nonexistent-netroot-data (give --data DIR or NETROOT_DATA)",
  );
});
