// The vnode manager's checks and bookkeeping, without booting anything: bad input is refused with
// a clear message before anything is registered; node settings override the stored spec; the
// API routes and the console reader.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { buildApp, closeContext, openContext } from "../src/server.ts";
import { readConsole } from "../src/consolelog.ts";
import {
  ensureUefiVars,
  killStale,
  parseDiskList,
  qmpAddress,
  startVnodes,
  VnodeManager,
  vnodeManager,
} from "../src/vnode/manager.ts";
import { missingTool } from "../src/vnode/exec.ts";
import { qemuArgs, uefiFirmware } from "../src/vnode/qemu.ts";
import { withLoopExt4 } from "./support/ext4disk.ts";

async function withCtx(fn: (ctx: Context, dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nr-vnode-mgr-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: join(dir, "data") });
  try {
    await fn(ctx, dir);
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("vnode create refuses bad input and registers nothing", async () => {
  await withCtx(async (ctx) => {
    const m = new VnodeManager(ctx, "nrnone0");
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ name: "vm1", disks: ["8G[template=zfs]"] }, /unknown disk template zfs/],
      [{ name: "vm1", disks: ["8Q"] }, /bad disk size 8Q/],
      [{ name: "vm1", disks: ["10M[template=ext4]"] }, /needs at least 64M/],
      [{ name: "vm1", disks: [null] }, /a disk is SIZE\[template=T\] or \{size, template\}/],
      [{ name: "vm1", disks: [7] }, /a disk is SIZE/],
      [{ name: "vm1", disks: "8G" }, /disks must be a list/],
      [{ name: "vm1", ram: "12" }, /bad RAM size 12/],
      [{ name: "vm1", cpus: 0 }, /bad CPU count 0/],
      [{ name: "" }, /needs a name/],
    ];
    for (const [req, re] of cases) {
      await assert.rejects(m.create(req as never), re, JSON.stringify(req));
    }
    ctx.nodes.add("52:54:00:00:00:01", { name: "taken" });
    await assert.rejects(m.create({ name: "taken" }), /already taken/);
    assert.deepEqual(ctx.nodes.list().map((n) => n.name), ["taken"]);
    assert.equal((ctx.db.prepare("SELECT count(*) AS n FROM vnodes").get() as { n: number }).n, 0);
    await m.close();
  });
});

Deno.test("without a boot bridge, vnode create says how to start the server", async () => {
  await withCtx(async (ctx) => {
    const m = new VnodeManager(ctx, undefined);
    await assert.rejects(m.create({ name: "vm1" }), /need a boot bridge.*--bridge/);
    assert.equal(ctx.nodes.list().length, 0);
    await m.close();
  });
});

Deno.test("a missing qemu names the package to install", async () => {
  assert.match(missingTool("qemu-system-x86_64").message, /apt-get install qemu-system-x86/);
  // The manager's check, in a process whose PATH has no qemu.
  const code = `
    import { defaultConfig } from "${new URL("../src/config.ts", import.meta.url)}";
    import { openContext } from "${new URL("../src/server.ts", import.meta.url)}";
    import { VnodeManager } from "${new URL("../src/vnode/manager.ts", import.meta.url)}";
    const dir = await Deno.makeTempDir();
    const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
    try { await new VnodeManager(ctx, "br0").create({ name: "vm1" }); }
    catch (e) { console.log(e.message, ctx.nodes.list().length); }
    finally { ctx.db.close(); await Deno.remove(dir, { recursive: true }); }`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env: { PATH: "/nonexistent" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.match(
    text,
    /qemu-system-x86_64 not found: install the Debian package qemu-system-x86.* 0/,
  );
});

Deno.test("node settings ram/cpus/disks/firmware are validated and override the vnode's stored spec", async () => {
  await withCtx(async (ctx) => {
    const m = new VnodeManager(ctx, "br0");
    const mac = "52:54:00:00:00:02";
    ctx.nodes.add(mac, { name: "vm2", virtual: true });
    ctx.db.prepare("INSERT INTO vnodes (mac, ram, cpus, disks) VALUES (?, '512M', 1, ?)")
      .run(mac, JSON.stringify([{ size: 64e6, template: "ext4" }]));
    assert.deepEqual(m.spec(ctx.nodes.get(mac)), {
      ram: "512M",
      cpus: 1,
      disks: [{ size: 64e6, template: "ext4" }],
      firmware: "bios",
      arch: "x86_64",
    });
    assert.throws(() => ctx.nodes.configure(mac, { ram: "lots" }), /bad RAM size/);
    assert.throws(() => ctx.nodes.configure(mac, { firmware: "coreboot" }), /bad firmware/);
    assert.throws(() => ctx.nodes.configure(mac, { arch: "riscv64" }), /bad arch/);
    assert.throws(
      () => ctx.nodes.configure(mac, { disks: "8G[template=nope]" }),
      /unknown disk template/,
    );
    const n = ctx.nodes.configure(mac, {
      ram: "1g",
      cpus: "2",
      disks: "8G[template=hybrid-boot-p],64M",
      firmware: "UEFI-HTTP",
    });
    assert.equal(n.settings.ram, "1G");
    assert.equal(n.settings.disks, "8G[template=hybrid-boot-p],64M");
    assert.deepEqual(m.spec(n), {
      ram: "1G",
      cpus: 2,
      disks: [{ size: 8e9, template: "hybrid-boot-p" }, { size: 64e6, template: "none" }],
      firmware: "uefi-http",
      arch: "x86_64",
    });
    // An aarch64 node: its firmware is UEFI unless set (it has no BIOS).
    const arm = ctx.nodes.configure(mac, { firmware: null, arch: "arm64" });
    assert.equal(arm.settings.arch, "aarch64");
    assert.equal(m.spec(arm).firmware, "uefi");
    assert.equal(m.spec(arm).arch, "aarch64");
    ctx.nodes.configure(mac, { firmware: "uefi-http", arch: null });
    assert.deepEqual(m.list().map((v) => [v.name, v.running, v.ram]), [["vm2", false, "1G"]]);
    assert.deepEqual(parseDiskList("none"), []);
    // A physical node is not a vnode.
    ctx.nodes.add("aa:bb:cc:dd:ee:ff", { name: "pc1" });
    assert.throws(() => m.node("pc1"), /not a virtual node/);
    await m.close();
  });
});

Deno.test("a vnode's disks are at most qemu's free PCI slots: more are refused before any is made", async () => {
  await withCtx(async (ctx) => {
    const m = new VnodeManager(ctx, "nrnone0");
    // 100 formatted disks: 31 s of mkfs and 418 MB written before qemu refused the 30th.
    const many = Array(100).fill("64M[template=ext4]");
    await assert.rejects(m.create({ name: "vm1", disks: many }), /100 disks: .* at most 29/);
    assert.equal(ctx.nodes.list().length, 0);
    const mac = "52:54:00:00:00:03";
    ctx.nodes.add(mac, { name: "vm3", virtual: true });
    ctx.db.prepare("INSERT INTO vnodes (mac, ram, cpus, disks) VALUES (?, '512M', 1, '[]')").run(
      mac,
    );
    assert.throws(() => ctx.nodes.configure(mac, { disks: many.join(",") }), /at most 29/);
    assert.equal(ctx.nodes.get(mac).settings.disks, undefined);
    assert.equal(
      ctx.nodes.configure(mac, { disks: Array(29).fill("1M").join(",") }).settings.disks.split(",")
        .length,
      29,
    );
    // A list an older netroot stored: listed, but its start is refused before any disk is made.
    ctx.db.prepare("UPDATE node_settings SET value = ? WHERE mac = ? AND key = 'disks'")
      .run(many.join(","), mac);
    assert.equal(m.list()[0].disks.length, 100);
    await assert.rejects(m.powerOn(mac), /100 disks: .* at most 29/);
    assert.ok(!existsSync(ctx.data.vm(mac)), "nothing made on disk");
    await m.close();
  });
});

Deno.test("vnode API routes: list, create errors as JSON, console offsets", async () => {
  await withCtx(async (ctx) => {
    const svc = await startVnodes(ctx); // no bridge configured: vnodes cannot start
    const app = buildApp(ctx);
    const auth = { authorization: `Bearer ${ctx.token}` };
    try {
      assert.ok(vnodeManager(ctx));
      let res = await app.request("/api/v1/vnodes");
      assert.deepEqual(await res.json(), []);
      res = await app.request("/api/v1/vnodes", {
        method: "POST",
        headers: auth,
        body: JSON.stringify({ name: "vm1", disks: ["1G[template=zfs]"] }),
      });
      assert.equal(res.status, 400);
      assert.match((await res.json()).error, /unknown disk template/);
      res = await app.request("/api/v1/vnodes", {
        method: "POST",
        headers: auth,
        body: '{"name":"vm1"}',
      });
      assert.equal(res.status, 409);
      assert.match((await res.json()).error, /--bridge/);
      res = await app.request("/api/v1/vnodes", { method: "POST", body: '{"name":"vm1"}' });
      assert.equal(res.status, 401);

      const mac = "52:54:00:00:00:03";
      ctx.nodes.add(mac, { name: "vm3", virtual: true });
      ctx.db.prepare("INSERT INTO vnodes (mac) VALUES (?)").run(mac);
      // The console shows the kernel command line (the boot token): never without the API token.
      res = await app.request("/api/v1/nodes/vm3/console");
      assert.equal(res.status, 401);
      await res.body?.cancel();
      res = await app.request("/api/v1/nodes/vm3/console", { headers: auth });
      assert.deepEqual(await res.json(), { text: "", offset: 0, size: 0, source: "serial" }); // not started
      await Deno.mkdir(ctx.data.vm(mac), { recursive: true });
      await Deno.writeTextFile(join(ctx.data.vm(mac), "console.log"), "hello\nworld\n");
      res = await app.request("/api/v1/nodes/vm3/console?offset=6", { headers: auth });
      assert.deepEqual(await res.json(), {
        text: "world\n",
        offset: 12,
        size: 12,
        source: "serial",
      });
      res = await app.request("/api/v1/nodes/vm3/console?offset=x", { headers: auth });
      assert.equal(res.status, 400);
      res = await app.request(`/api/v1/vnodes/${mac}`, { method: "DELETE", headers: auth });
      assert.equal(res.status, 200);
      assert.equal(ctx.nodes.find(mac), undefined);
      ctx.nodes.add("aa:bb:cc:dd:ee:01", { name: "pc1" });
      res = await app.request("/api/v1/nodes/pc1/console", { headers: auth });
      assert.equal(res.status, 404);
    } finally {
      await svc.close();
    }
  });
});

Deno.test("a stale qemu is found whatever its data dir's path holds (a comma, doubled in qemu's options)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-vnode-stale-" });
  const vm = join(dir, "lab,1", "nodes", "52:54:00:00:00:04", "vm");
  await Deno.mkdir(vm, { recursive: true });
  // What the dead server's qemu ran with (the program a stand-in that sleeps): its pid file names
  // it; the next start must end it, or the new qemu finds the tap and the disks' locks taken.
  const argv = qemuArgs({
    name: "vm4",
    mac: "52:54:00:00:00:04",
    ram: "128M",
    cpus: 1,
    accel: "tcg",
    tap: "nr525400000004",
    disks: [join(vm, "disk0.img")],
    consoleLog: join(dir, "lab,1", "console.log"),
    qmpSocket: "qmp.sock",
    pidFile: join(vm, "qemu.pid"),
  });
  const stale = new Deno.Command(Deno.execPath(), {
    args: ["eval", "await new Promise((r) => setTimeout(r, 30_000))", ...argv],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    await Deno.writeTextFile(join(vm, "qemu.pid"), `${stale.pid}\n`);
    await killStale(vm);
    // Ended by a signal (a stand-in left running would exit 0 after its 30 s): its /proc entry
    // may stay a moment, a zombie until this process reaps it, so that is not the test.
    assert.ok((await stale.status).signal, "the stale qemu was stopped");
  } finally {
    try {
      stale.kill("SIGKILL");
    } catch { /* ended */ }
    await stale.status;
    await Deno.remove(dir, { recursive: true });
  }
});

// qemu writes the console as the guest does: a read could end inside a UTF-8 character (or at the
// 1 MiB chunk's end), and each side became U+FFFD. The character's bytes wait for the next read.
Deno.test("console reader: a read ends at a whole UTF-8 character", async () => {
  const f = await Deno.makeTempFile();
  try {
    await Deno.writeFile(f, new Uint8Array([0x61, 0x62, 0xe2, 0x82])); // "ab" and 2 of "€"'s 3
    assert.deepEqual(await readConsole(f, 0), { text: "ab", offset: 2, size: 4 });
    await Deno.writeFile(f, new Uint8Array([0xac, 0xc3]), { append: true }); // "€" whole, 1 of "é"
    assert.deepEqual(await readConsole(f, 2), { text: "€", offset: 5, size: 6 });
    await Deno.writeFile(f, new Uint8Array([0xa9, 0x0a]), { append: true });
    assert.deepEqual(await readConsole(f, 5), { text: "é\n", offset: 8, size: 8 });
  } finally {
    await Deno.remove(f);
  }
});

Deno.test("console reader: a log shorter than the offset (rotated) restarts at 0", async () => {
  const f = await Deno.makeTempFile();
  try {
    await Deno.writeTextFile(f, "abc");
    assert.deepEqual(await readConsole(f, 0), { text: "abc", offset: 3, size: 3 });
    assert.deepEqual(await readConsole(f, 3), { text: "", offset: 3, size: 3 });
    assert.deepEqual(await readConsole(f, 99), { text: "abc", offset: 3, size: 3 });
    assert.deepEqual(await readConsole(`${f}.none`, 5), { text: "", offset: 0, size: 0 });
  } finally {
    await Deno.remove(f);
  }
});

Deno.test("a VM's QMP socket is reached by a path within the unix limit, however deep its data dir", () => {
  assert.equal(qmpAddress(4194304), "/proc/4194304/cwd/qmp.sock"); // the largest pid_max
});

Deno.test("a UEFI vnode's variable store (root, loop ext4): a power cut after its first start leaves it whole", async () => {
  await withLoopExt4(32, async (disk) => {
    const vm = await disk.freshDir("vm");
    const vars = await ensureUefiVars(vm, "x86_64");
    const want = (await Deno.stat(uefiFirmware("x86_64").vars)).size;
    // Any journal commit afterwards (ext4's 5 s timer, the database's fsync), then the cut.
    disk.cutAfterCommit();
    // The next start keeps the file it finds (as a PC keeps its NVRAM): it must be whole.
    assert.equal(await ensureUefiVars(vm, "x86_64"), vars);
    assert.equal((await Deno.stat(vars)).size, want);
  });
});

Deno.test("a UEFI vnode whose arch changes gets its new machine's variable store, not one qemu refuses", async () => {
  const vm = await Deno.makeTempDir({ prefix: "nr-vnode-vars-" });
  try {
    const x86 = await ensureUefiVars(vm, "x86_64");
    const nvram = await Deno.readFile(x86);
    nvram[nvram.length - 1] ^= 1; // what OVMF wrote there (boot entries)
    await Deno.writeFile(x86, nvram);
    assert.deepEqual(await Deno.readFile(await ensureUefiVars(vm, "x86_64")), nvram, "kept");
    // `node config NAME arch=aarch64`, applied at the next start: OVMF's 528 KiB store in AAVMF's
    // 64 MiB flash made qemu refuse every start ("device requires 67108864 bytes").
    const arm = await ensureUefiVars(vm, "aarch64");
    assert.equal((await Deno.stat(arm)).size, (await Deno.stat(uefiFirmware("aarch64").vars)).size);
    const back = await ensureUefiVars(vm, "x86_64");
    assert.equal((await Deno.stat(back)).size, (await Deno.stat(uefiFirmware("x86_64").vars)).size);
  } finally {
    await Deno.remove(vm, { recursive: true });
  }
});
