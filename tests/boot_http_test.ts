// HTTP boot: iPXE script rendering (pure), Range parsing, symlink resolution inside an image, and the
// /boot routes served for real on loopback against a real data dir and database.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Hono } from "hono";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { listEvents } from "../src/events.ts";
import { openBoot } from "../src/boots.ts";
import { closeContext, openContext } from "../src/server.ts";
import { bootRoutes, parseMacParam, parseRange } from "../netboot/http.ts";
import { BootFileCache } from "../netboot/bootcache.ts";
import { contextBooter, resolveInImage as resolveInRoot } from "../src/boot/booter.ts";
import { parseCmdline, renderCmdline } from "../contract/cmdline.ts";
import { bootFileUrl } from "../contract/bootfiles.ts";
import { renderBootScript, renderRefusalScript } from "../netboot/ipxe.ts";
import { NodeMonitor } from "../src/nodestate.ts";

Deno.test("parseMacParam accepts colon, hyphen (iPXE hexhyp) and bare hex; rejects junk", () => {
  for (
    const s of [
      "52:54:00:AB:cd:01",
      "52-54-00-ab-cd-01",
      "525400abcd01",
      "52%3A54%3A00%3Aab%3Acd%3A01",
    ]
  ) {
    assert.equal(parseMacParam(s), "52:54:00:ab:cd:01");
  }
  for (const s of ["52:54:00:ab:cd", "zz-54-00-ab-cd-01", "", "kernel"]) {
    assert.equal(parseMacParam(s), undefined);
  }
});

Deno.test("parseRange: single ranges, suffixes, open ends, unsatisfiable and ignored forms", () => {
  assert.deepEqual(parseRange("bytes=0-9", 100), { start: 0, end: 9 });
  assert.deepEqual(parseRange("bytes=90-", 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange("bytes=-10", 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange("bytes=-1000", 100), { start: 0, end: 99 });
  assert.deepEqual(parseRange("bytes=50-5000", 100), { start: 50, end: 99 });
  assert.equal(parseRange("bytes=100-", 100), "unsatisfiable");
  assert.equal(parseRange("bytes=9-3", 100), "unsatisfiable");
  assert.equal(parseRange("bytes=-0", 100), "unsatisfiable");
  assert.equal(parseRange("bytes=a-b", 100), "unsatisfiable");
  assert.equal(parseRange(undefined, 100), undefined);
  assert.equal(parseRange("items=0-1", 100), undefined);
  assert.equal(parseRange("bytes=0-1,5-6", 100), undefined);
});

Deno.test("resolveInRoot follows relative and absolute links inside the image, never out of it", async () => {
  const root = await Deno.makeTempDir({ prefix: "nr-resolve-" });
  try {
    mkdirSync(join(root, "boot"));
    writeFileSync(join(root, "boot/vmlinuz-6.1"), "K");
    mkdirSync(join(root, "etc"));
    writeFileSync(join(root, "etc/hostname"), "image");
    symlinkSync("boot/vmlinuz-6.1", join(root, "vmlinuz"));
    symlinkSync("/boot/vmlinuz-6.1", join(root, "vmlinuz.abs"));
    symlinkSync("../../../../etc/hostname", join(root, "boot/escape"));
    symlinkSync("loop2", join(root, "loop1"));
    symlinkSync("loop1", join(root, "loop2"));
    assert.equal(await resolveInRoot(root, "/vmlinuz"), join(root, "boot/vmlinuz-6.1"));
    assert.equal(await resolveInRoot(root, "/vmlinuz.abs"), join(root, "boot/vmlinuz-6.1"));
    // `..` stops at the image root, as it would at `/` on the node.
    assert.equal(await resolveInRoot(root, "/boot/escape"), join(root, "etc/hostname"));
    await assert.rejects(resolveInRoot(root, "/loop1"), /too many symbolic links/);
    await assert.rejects(
      resolveInRoot(root, "/vmlinuz.abs/x"),
      /\/boot\/vmlinuz-6.1\/x does not exist in the image/,
    );
    await assert.rejects(
      resolveInRoot(root, "/boot/missing"),
      /\/boot\/missing does not exist in the image/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

const cmdBase = {
  mac: "52:54:00:00:00:01",
  hostname: "node-1",
  nodeIp: "10.77.0.23",
  serverIp: "10.77.0.1",
  netmask: "255.255.255.0",
  url: "http://10.77.0.1:8080",
  root: "10.77.0.1:/netroot/images/abc",
  persist: "10.77.0.1:/netroot/persist/525400000001",
  nfs: "4.2" as const,
  imageId: "abc",
  token: "t0k",
  mode: "auto",
  timeout: "180",
  tmpfs: "50%",
  consoles: ["tty0", "ttyS0,115200"],
};

Deno.test("renderCmdline carries the architecture contract, persist optional, extra last", () => {
  const c = renderCmdline({ ...cmdBase, extra: "  quiet   loglevel=3 " });
  assert.equal(
    c,
    "console=tty0 console=ttyS0,115200 ip=10.77.0.23:10.77.0.1::255.255.255.0:node-1::off " +
      "netroot.mac=52:54:00:00:00:01 netroot.server=10.77.0.1 netroot.url=http://10.77.0.1:8080 " +
      "netroot.root=10.77.0.1:/netroot/images/abc netroot.persist=10.77.0.1:/netroot/persist/525400000001 " +
      "netroot.nfs=4.2 netroot.image=abc netroot.token=t0k netroot.mode=auto netroot.timeout=180 " +
      "netroot.tmpfs=50% init=/sbin/init quiet loglevel=3",
  );
  const noPersist = renderCmdline({ ...cmdBase, persist: undefined, nodeIp: undefined });
  assert.ok(!noPersist.includes("netroot.persist"));
  assert.ok(noPersist.includes(" ip=dhcp "));
  assert.throws(() => renderCmdline({ ...cmdBase, extra: "a\nchain http://evil" }), /control/);
  assert.throws(() => renderCmdline({ ...cmdBase, extra: "x=${net0/ip}" }), /\$\{/);
  assert.throws(() => renderCmdline({ ...cmdBase, root: "10.77.0.1:/a path" }), /root/);
  assert.throws(() => renderCmdline({ ...cmdBase, extra: "x".repeat(1800) }), /Linux keeps 2047/);
});

Deno.test("boot script: kernel with initrd=, named initrd, retries with imgfree, then reboot", () => {
  const s = renderBootScript({
    mac: "52:54:00:00:00:01",
    node: "node-1",
    imageName: "debian ${evil}",
    imageId: "0123456789abcdef0123",
    kernelUrl: "http://s/boot/52-54-00-00-00-01/kernel",
    initramfsUrl: "http://s/boot/52-54-00-00-00-01/initramfs",
    cmdline: "console=ttyS0",
    tries: 3,
  });
  const lines = s.split("\n");
  assert.equal(lines[0], "#!ipxe");
  assert.ok(
    lines.includes(
      "kernel http://s/boot/52-54-00-00-00-01/kernel initrd=initramfs console=ttyS0 || goto failed",
    ),
  );
  assert.ok(
    lines.includes(
      "initrd --name initramfs http://s/boot/52-54-00-00-00-01/initramfs || goto failed",
    ),
  );
  assert.ok(lines.includes("boot || goto failed"));
  assert.ok(lines.includes("iseq ${netroot-try} 3 && goto giveup ||"));
  assert.ok(lines.indexOf("imgfree ||") > lines.indexOf(":failed"));
  assert.equal(lines.at(-2), "reboot");
  // Names are echoed but never expanded by iPXE.
  assert.ok(s.includes("echo netroot: image debian S{evil} (0123456789ab)"));
  const r = renderRefusalScript("node x has no image deployed", 7);
  assert.equal(
    r,
    "#!ipxe\necho netroot: node x has no image deployed\necho netroot: rebooting in 7 s\nsleep 7\nreboot\n",
  );
});

// ---- the routes, for real ----

interface Fixture {
  ctx: Context;
  url: string;
  dir: string;
  kernel: Uint8Array;
  initrd: Uint8Array;
  imageId: string;
  close(): Promise<void>;
}

/** An image tree the way the image store lays it out, with the row inserted directly. */
function addImage(ctx: Context, name: string, files: Record<string, Uint8Array | string>): string {
  const manifest = `netroot-test ${name} ${Object.keys(files).sort().join(" ")}\n`;
  const id = createHash("sha256").update(manifest).digest("hex");
  const root = ctx.data.rootfs(id);
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(root, path, ".."), { recursive: true });
    if (typeof content === "string" && content.startsWith("->")) {
      symlinkSync(content.slice(2), join(root, path));
    } else writeFileSync(join(root, path), content);
  }
  writeFileSync(ctx.data.manifest(id), manifest);
  ctx.db.prepare(
    `INSERT INTO images (id, name, created_at, size, files, kernel, initrd, kernel_version, bootable)
     VALUES (?, ?, ?, 0, 0, '/vmlinuz', '/initrd.img', '6.1.0-test', 1)`,
  ).run(id, name, new Date().toISOString());
  return id;
}

function addNode(
  ctx: Context,
  mac: string,
  name: string,
  imageId: string | null,
  settings: Record<string, string> = {},
) {
  ctx.db.prepare("INSERT INTO nodes (mac, name, image_id, created_at) VALUES (?, ?, ?, ?)")
    .run(mac, name, imageId, new Date().toISOString());
  mkdirSync(ctx.data.node(mac), { recursive: true });
  if (imageId) symlinkSync(`../../images/${imageId}/rootfs`, ctx.data.nodeFs(mac));
  for (const [k, v] of Object.entries(settings)) {
    ctx.db.prepare("INSERT INTO node_settings (mac, key, value) VALUES (?, ?, ?)").run(mac, k, v);
  }
}

async function fixture(cache?: BootFileCache): Promise<Fixture> {
  const dir = await Deno.makeTempDir({ prefix: "nr-boothttp-" });
  const config = { ...defaultConfig(), dataDir: dir };
  const ctx = await openContext(config);
  const kernel = new Uint8Array(randomBytes(3 * 1024 * 1024 + 17));
  const initrd = new Uint8Array(randomBytes(700 * 1024));
  const imageId = addImage(ctx, "testimg", {
    "boot/vmlinuz-6.1.0-test": kernel,
    "boot/initrd.img-6.1.0-test": initrd,
    "vmlinuz": "->/boot/vmlinuz-6.1.0-test",
    "initrd.img": "->boot/initrd.img-6.1.0-test",
  });
  const app = new Hono().route("/boot", bootRoutes(contextBooter(ctx), cache));
  const ac = new AbortController();
  const ready = Promise.withResolvers<number>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen: (a) => ready.resolve(a.port) },
    app.fetch,
  );
  const url = `http://127.0.0.1:${await ready.promise}`;
  return {
    ctx,
    url,
    dir,
    kernel,
    initrd,
    imageId,
    async close() {
      ac.abort();
      await server.finished;
      await closeContext(ctx);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Waits for an event a streamed download records when its body has gone out. */
async function waitEvent(ctx: Context, mac: string, kind: string, after = 0, ms = 2000) {
  for (let i = 0; i < ms / 20; i++) {
    const e = listEvents(ctx.db, { mac, sinceId: after }).find((x) => x.kind === kind);
    if (e) return e;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no ${kind} event for ${mac}`);
}

const lastId = (ctx: Context) =>
  (ctx.db.prepare("SELECT COALESCE(MAX(id), 0) AS id FROM events").get() as { id: number }).id;

Deno.test("boot routes: script, kernel, initramfs, manifest, Range, HEAD, reports (loopback)", async (t) => {
  const f = await fixture();
  const mac = "52:54:00:12:34:56";
  try {
    addNode(f.ctx, mac, "pc1", f.imageId, {
      initramfs: "image",
      "kernel.cmdline": "quiet loglevel=3",
    });
    f.ctx.db.prepare("INSERT INTO leases (mac, ip, expires_at, state) VALUES (?, ?, ?, 'bound')")
      .run(mac, "10.77.0.42", 2 ** 31);

    let token = "";
    await t.step("iPXE script for every MAC spelling", async () => {
      for (const spelling of ["52-54-00-12-34-56", "525400123456", "52:54:00:12:34:56"]) {
        const r = await fetch(`${f.url}/boot/${spelling}.ipxe`);
        assert.equal(r.status, 200);
        const s = await r.text();
        assert.ok(s.startsWith("#!ipxe\n"));
        assert.ok(
          s.includes(
            `kernel ${f.url}/boot/52-54-00-12-34-56/kernel?image=${f.imageId} initrd=initramfs `,
          ),
        );
        assert.ok(
          s.includes(
            `initrd --name initramfs ${f.url}/boot/52-54-00-12-34-56/initramfs?image=${f.imageId}`,
          ),
        );
        assert.ok(s.includes("echo netroot: node pc1 (52:54:00:12:34:56)"));
        const cmdline = /^kernel \S+ initrd=initramfs (.*) \|\| goto failed$/m.exec(s)![1];
        assert.ok(
          cmdline.startsWith("console=tty0 console=ttyS0,115200 ip=10.77.0.42:127.0.0.1::"),
        );
        assert.ok(
          cmdline.includes(":pc1::off netroot.mac=52:54:00:12:34:56 netroot.server=127.0.0.1 "),
        );
        assert.ok(cmdline.includes(`netroot.url=${f.url} `));
        assert.ok(cmdline.includes(`netroot.root=127.0.0.1:${f.ctx.data.rootfs(f.imageId)} `)); // nfs off: real path
        assert.ok(cmdline.includes(`netroot.persist=127.0.0.1:${f.ctx.data.persist(mac)} `));
        assert.ok(cmdline.includes(" netroot.nfs=4.2 netroot.image=" + f.imageId));
        assert.ok(cmdline.includes(" netroot.mode=auto netroot.timeout=180 netroot.tmpfs=50% "));
        assert.ok(cmdline.endsWith(" quiet loglevel=3"));
        token = /netroot\.token=([0-9a-f]+)/.exec(cmdline)![1];
      }
      const boots = f.ctx.db.prepare("SELECT token, image_id FROM boots WHERE mac = ?").all(
        mac,
      ) as {
        token: string;
        image_id: string;
      }[];
      // The fetches fall within one boot (nothing heard from it yet): one boot, one token.
      assert.equal(boots.length, 1, "one boot for fetches before the node reported");
      assert.equal(boots[0].token, token);
      assert.ok(boots.every((b) => b.image_id === f.imageId));
      const ev = listEvents(f.ctx.db, { mac }).filter((e) => e.kind === "http.script");
      assert.equal(ev.length, 3);
      // The token is a secret of the boot: the openly readable timeline must not show it.
      assert.ok(!JSON.stringify(listEvents(f.ctx.db)).includes(token), "token in the events");
      assert.equal(ev[2].detail.image, f.imageId);
    });

    await t.step("kernel streams whole with Content-Length, recorded on completion", async () => {
      const before = lastId(f.ctx);
      const r = await fetch(`${f.url}/boot/52-54-00-12-34-56/kernel`);
      assert.equal(r.status, 200);
      assert.equal(r.headers.get("content-length"), String(f.kernel.length));
      assert.equal(r.headers.get("accept-ranges"), "bytes");
      assert.deepEqual(new Uint8Array(await r.arrayBuffer()), f.kernel);
      const e = await waitEvent(f.ctx, mac, "http.kernel", before);
      assert.equal(e.detail.bytes, f.kernel.length);
      assert.equal(typeof e.detail.ms, "number");
      assert.equal(e.detail.incomplete, undefined);
    });

    await t.step("Range → 206 + Content-Range; suffix; unsatisfiable → 416", async () => {
      let r = await fetch(`${f.url}/boot/${mac}/kernel`, {
        headers: { range: "bytes=1048570-1048589" },
      });
      assert.equal(r.status, 206);
      assert.equal(r.headers.get("content-range"), `bytes 1048570-1048589/${f.kernel.length}`);
      assert.equal(r.headers.get("content-length"), "20");
      assert.deepEqual(new Uint8Array(await r.arrayBuffer()), f.kernel.subarray(1048570, 1048590));
      r = await fetch(`${f.url}/boot/${mac}/kernel`, { headers: { range: "bytes=-7" } });
      assert.equal(r.status, 206);
      assert.deepEqual(
        new Uint8Array(await r.arrayBuffer()),
        f.kernel.subarray(f.kernel.length - 7),
      );
      r = await fetch(`${f.url}/boot/${mac}/kernel`, {
        headers: { range: `bytes=${f.kernel.length}-` },
      });
      assert.equal(r.status, 416);
      assert.equal(r.headers.get("content-range"), `bytes */${f.kernel.length}`);
      await r.body?.cancel();
    });

    await t.step("HEAD gives the headers, no body, no download event", async () => {
      const before = lastId(f.ctx);
      const r = await fetch(`${f.url}/boot/${mac}/kernel`, { method: "HEAD" });
      assert.equal(r.status, 200);
      assert.equal(r.headers.get("content-length"), String(f.kernel.length));
      assert.equal((await r.arrayBuffer()).byteLength, 0);
      const boots = () => f.ctx.db.prepare("SELECT COUNT(*) AS n FROM boots").get()!.n;
      const nBoots = boots();
      const s = await fetch(`${f.url}/boot/${mac}.ipxe`, { method: "HEAD" });
      assert.equal(s.status, 200);
      await s.body?.cancel();
      assert.equal(boots(), nBoots, "HEAD of the script opens no boot");
      await new Promise((res) => setTimeout(res, 50));
      assert.equal(listEvents(f.ctx.db, { mac, sinceId: before }).length, 0);
    });

    await t.step(
      "a download cut short is recorded as incomplete (image pinned by ?image=)",
      async () => {
        // 256 MiB (sparse): more than loopback socket buffers hold, so the server sees the reset.
        const big = addImage(f.ctx, "big", {
          "boot/vmlinuz-6.1.0-test": "",
          "vmlinuz": "->boot/vmlinuz-6.1.0-test",
        });
        await Deno.truncate(join(f.ctx.data.rootfs(big), "boot/vmlinuz-6.1.0-test"), 256 << 20);
        openBoot(f.ctx.db, mac, big); // a version the node was given: a pin takes no other
        const before = lastId(f.ctx);
        const conn = await Deno.connect({
          hostname: "127.0.0.1",
          port: Number(new URL(f.url).port),
        });
        await conn.write(new TextEncoder().encode(
          `GET /boot/${mac}/kernel?image=${big} HTTP/1.1\r\nHost: x\r\n\r\n`,
        ));
        const head = new Uint8Array(4096);
        const n = await conn.read(head);
        assert.match(
          new TextDecoder().decode(head.subarray(0, n!)),
          /^HTTP\/1\.1 200[^]*content-length: 268435456/i,
        );
        conn.close();
        const e = await waitEvent(f.ctx, mac, "http.kernel", before);
        assert.equal(e.detail.image, big);
        assert.equal(e.detail.incomplete, true);
        assert.ok((e.detail.bytes as number) < 256 << 20);
      },
    );

    await t.step(
      "initramfs=image serves the image's own initrd; manifest is the image's",
      async () => {
        const before = lastId(f.ctx);
        let r = await fetch(`${f.url}/boot/${mac}/initramfs`);
        assert.equal(r.status, 200);
        assert.deepEqual(new Uint8Array(await r.arrayBuffer()), f.initrd);
        const e = await waitEvent(f.ctx, mac, "http.initramfs", before);
        assert.equal(e.detail.bytes, f.initrd.length);
        r = await fetch(`${f.url}/boot/${mac}/manifest`);
        assert.equal(r.status, 200);
        assert.equal(await r.text(), await Deno.readTextFile(f.ctx.data.manifest(f.imageId)));
      },
    );

    await t.step(
      "reports: accepted with the boot's token, 403 for another MAC or token",
      async () => {
        const post = (body: unknown) =>
          fetch(`${f.url}/boot/report`, {
            method: "POST",
            body: typeof body === "string" ? body : JSON.stringify(body),
          });
        let r = await post({
          token,
          mac: "52-54-00-12-34-56",
          stage: "nfs-root",
          ms: 412,
          ok: true,
        });
        assert.equal(r.status, 200);
        assert.deepEqual(await r.json(), { ok: true });
        const e = await waitEvent(f.ctx, mac, "init.nfs-root");
        assert.deepEqual(e.detail, { image: f.imageId, ms: 412, ok: true });
        const b = f.ctx.db.prepare("SELECT stage, reported_at FROM boots WHERE token = ?").get(
          token,
        ) as {
          stage: string;
          reported_at: string;
        };
        assert.equal(b.stage, "nfs-root");
        assert.ok(b.reported_at);
        r = await post({
          token,
          mac,
          stage: "hybrid-copy",
          detail: "copying",
          done: 10,
          total: 20,
          rate: 5.5,
        });
        assert.equal(r.status, 200);
        await r.body?.cancel();
        assert.deepEqual((await waitEvent(f.ctx, mac, "init.hybrid-copy")).detail, {
          image: f.imageId,
          detail: "copying",
          done: 10,
          total: 20,
          rate: 5.5,
        });
        const before = lastId(f.ctx);
        r = await post({ token, mac: "52:54:00:99:99:99", stage: "start" });
        assert.equal(r.status, 403);
        await r.body?.cancel();
        r = await post({ token: "00".repeat(16), mac, stage: "start" });
        assert.equal(r.status, 403);
        await r.body?.cancel();
        assert.ok(
          !listEvents(f.ctx.db, { sinceId: before }).some((x) => x.kind.startsWith("init.")),
        );
        for (const bad of ["{not json", "[]", JSON.stringify({ token, mac, stage: "Bad Stage" })]) {
          r = await post(bad);
          assert.equal(r.status, 400, bad);
          await r.body?.cancel();
        }
      },
    );
  } finally {
    await f.close();
  }
});

Deno.test("hybrid: the node asks for the manifest of its command line's version; a deploy after its script changes nothing", async () => {
  // The hybrid copy's source is the NFS root the command line names (a version's own export):
  // its manifest must be that version's. Unpinned, a deploy landing between the script and the
  // manifest fetch gave the new version's manifest, which the old tree then failed (network mode).
  const f = await fixture();
  const mac = "52:54:00:12:34:5b";
  try {
    addNode(f.ctx, mac, "pc12", f.imageId);
    f.ctx.db.prepare("INSERT INTO leases (mac, ip, expires_at, state) VALUES (?, ?, ?, 'bound')")
      .run(mac, "10.77.0.43", 2 ** 31);
    const script = await (await fetch(`${f.url}/boot/${mac}.ipxe`)).text();
    const p = parseCmdline(/^kernel \S+ initrd=initramfs (.*) \|\| goto failed$/m.exec(script)![1]);
    assert.equal(p.image, f.imageId);
    const other = addImage(f.ctx, "deployed-later", { "vmlinuz": "k", "etc/os-release": "x" });
    f.ctx.db.prepare("UPDATE nodes SET image_id = ? WHERE mac = ?").run(other, mac);
    Deno.removeSync(f.ctx.data.nodeFs(mac)); // the deploy's flip of the node's link
    symlinkSync(`../../images/${other}/rootfs`, f.ctx.data.nodeFs(mac));
    const url = bootFileUrl(p.url!, p.mac!, "manifest", p.image!);
    let r = await fetch(url);
    assert.equal(r.status, 200);
    assert.equal(await r.text(), await Deno.readTextFile(f.ctx.data.manifest(f.imageId)));
    // What the unpinned request gets now: the new version's.
    r = await fetch(url.replace(/\?.*/, ""));
    assert.equal(await r.text(), await Deno.readTextFile(f.ctx.data.manifest(other)));
  } finally {
    await f.close();
  }
});

Deno.test("boot files too large for the cache stream from the disk: whole, Range, HEAD, replaced, gone", async () => {
  // A cache that takes nothing over 1 KiB: every boot file here goes through the streamed path.
  const f = await fixture(new BootFileCache(4096, 1024));
  const mac = "52:54:00:12:34:57";
  try {
    addNode(f.ctx, mac, "pc2", f.imageId);
    const kernelUrl = `${f.url}/boot/${mac}/kernel`;
    let r = await fetch(kernelUrl);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("content-length"), String(f.kernel.length));
    assert.deepEqual(new Uint8Array(await r.arrayBuffer()), f.kernel);
    r = await fetch(kernelUrl, { headers: { range: "bytes=2097150-2097159" } });
    assert.equal(r.status, 206);
    assert.deepEqual(new Uint8Array(await r.arrayBuffer()), f.kernel.subarray(2097150, 2097160));
    r = await fetch(kernelUrl, { method: "HEAD" });
    assert.equal(r.headers.get("content-length"), String(f.kernel.length));
    assert.equal((await r.arrayBuffer()).byteLength, 0);
    // Replaced by a shorter file (a new kernel renamed over it): the new one, with its length.
    const path = join(f.ctx.data.rootfs(f.imageId), "boot/vmlinuz-6.1.0-test");
    const fresh = new Uint8Array(randomBytes(5000));
    writeFileSync(`${path}.new`, fresh);
    Deno.renameSync(`${path}.new`, path);
    r = await fetch(kernelUrl);
    assert.equal(r.headers.get("content-length"), "5000");
    assert.deepEqual(new Uint8Array(await r.arrayBuffer()), fresh);
    // Gone, then a directory in its place: 404 both, naming the file.
    Deno.removeSync(path);
    r = await fetch(kernelUrl);
    assert.equal(r.status, 404);
    assert.match(await r.text(), /vmlinuz-6\.1\.0-test does not exist/);
    mkdirSync(path);
    r = await fetch(kernelUrl);
    assert.equal(r.status, 404);
    assert.match(await r.text(), /vmlinuz-6\.1\.0-test is not a regular file/);
  } finally {
    await f.close();
  }
});

Deno.test("a hostile image's kernel is a FIFO or a device: 404 at once, nothing opened", async () => {
  // Opening a FIFO for reading waits for a writer: an image must not be able to hold the server's
  // threads that way (nor make it read a device). Both the cached and the streamed path.
  for (const cache of [undefined, new BootFileCache(4096, 1024)]) {
    const f = await fixture(cache);
    const mac = "52:54:00:12:34:58";
    try {
      addNode(f.ctx, mac, "pc3", f.imageId);
      const path = join(f.ctx.data.rootfs(f.imageId), "boot/vmlinuz-6.1.0-test");
      Deno.removeSync(path);
      new Deno.Command("mkfifo", { args: [path] }).outputSync();
      assert.ok(Deno.statSync(path).isFifo);
      for (const method of ["GET", "HEAD", "GET"]) {
        const r = await fetch(`${f.url}/boot/${mac}/kernel`, {
          method,
          signal: AbortSignal.timeout(5000),
        });
        assert.equal(r.status, 404, method);
        if (method === "GET") assert.match(await r.text(), /is not a regular file/);
        else await r.body?.cancel();
      }
      Deno.removeSync(path);
      new Deno.Command("mknod", { args: [path, "c", "1", "5"] }).outputSync(); // /dev/zero's
      const r = await fetch(`${f.url}/boot/${mac}/kernel`, { signal: AbortSignal.timeout(5000) });
      assert.equal(r.status, 404);
      assert.match(await r.text(), /is not a regular file/);
    } finally {
      await f.close();
    }
  }
});

Deno.test("boot routes: unknown MAC, no image, unbootable image, persist off", async () => {
  const f = await fixture();
  try {
    // iPXE binaries for UEFI HTTP boot, from config.ipxeDir; nothing else from there.
    const ipxeDir = join(f.dir, "ipxe");
    mkdirSync(ipxeDir);
    writeFileSync(join(ipxeDir, "ipxe.efi"), "MZ-fake-efi");
    writeFileSync(join(ipxeDir, "secret.txt"), "no");
    f.ctx.config.ipxeDir = ipxeDir;
    let r0 = await fetch(`${f.url}/boot/ipxe/ipxe.efi`);
    assert.equal(r0.status, 200);
    assert.equal(await r0.text(), "MZ-fake-efi");
    for (const bad of ["secret.txt", "..%2Fnetroot.db", "snponly.efi"]) {
      r0 = await fetch(`${f.url}/boot/ipxe/${bad}`);
      assert.equal(r0.status, 404, bad);
      await r0.body?.cancel();
    }

    let r = await fetch(`${f.url}/boot/02-00-00-00-00-09.ipxe`);
    assert.equal(r.status, 200);
    let s = await r.text();
    assert.ok(s.startsWith("#!ipxe\n"));
    assert.ok(s.includes("echo netroot: this machine (02:00:00:00:00:09) is not registered"));
    assert.ok(s.includes("\nsleep 30\nreboot\n"));
    // A retrying (or flooding) unknown machine lands on the timeline once a minute, not per request.
    for (let i = 0; i < 5; i++) await (await fetch(`${f.url}/boot/02-00-00-00-00-09.ipxe`)).text();
    assert.equal(
      listEvents(f.ctx.db, { mac: "02:00:00:00:00:09" }).filter((e) => e.kind === "http.unknown")
        .length,
      1,
    );

    r = await fetch(`${f.url}/boot/not-a-mac.ipxe`);
    assert.equal(r.status, 400);
    await r.body?.cancel();

    addNode(f.ctx, "02:00:00:00:00:01", "bare", null);
    s = await (await fetch(`${f.url}/boot/02-00-00-00-00-01.ipxe`)).text();
    assert.ok(s.includes("echo netroot: node bare has no image deployed"));
    assert.ok(s.includes("\nreboot\n"));
    r = await fetch(`${f.url}/boot/02-00-00-00-00-01/kernel`);
    assert.equal(r.status, 404);
    await r.body?.cancel();

    const broken = addImage(f.ctx, "broken", { "etc/os-release": "x" });
    f.ctx.db.prepare("UPDATE images SET bootable = 0, reason = 'no kernel in /boot' WHERE id = ?")
      .run(broken);
    addNode(f.ctx, "02:00:00:00:00:02", "nokernel", broken);
    s = await (await fetch(`${f.url}/boot/02-00-00-00-00-02.ipxe`)).text();
    assert.ok(s.includes("echo netroot: image broken is not bootable: no kernel in /boot"), s);
    assert.equal(f.ctx.db.prepare("SELECT COUNT(*) AS n FROM boots").get()!.n, 0, "no boot opened");

    addNode(f.ctx, "02:00:00:00:00:03", "nopersist", f.imageId, {
      persist: "false",
      initramfs: "image",
    });
    s = await (await fetch(`${f.url}/boot/02-00-00-00-00-03.ipxe`)).text();
    assert.ok(s.includes("netroot.root="));
    assert.ok(!s.includes("netroot.persist="));
    // Loopback: the node's address is unknown here, so the node configures itself.
    assert.ok(s.includes(" ip=dhcp "));

    // A command line iPXE would expand: refused with the reason, and no token left behind.
    const nBoots = f.ctx.db.prepare("SELECT COUNT(*) AS n FROM boots").get()!.n;
    addNode(f.ctx, "02:00:00:00:00:06", "badcmd", f.imageId, { "kernel.cmdline": "x=${ip}" });
    s = await (await fetch(`${f.url}/boot/02-00-00-00-00-06.ipxe`)).text();
    assert.match(
      s,
      /^echo netroot: kernel.cmdline "x=S\{ip\}" contains control characters or S\{$/m,
    );
    assert.ok(s.endsWith("\nreboot\n"));
    assert.equal(f.ctx.db.prepare("SELECT COUNT(*) AS n FROM boots").get()!.n, nBoots);

    // Default initramfs=netroot: this fake image has no modules for its kernel, so the build
    // fails and the node gets a 404 saying why (and the timeline records it).
    addNode(f.ctx, "02:00:00:00:00:04", "netrootinit", f.imageId);
    r = await fetch(`${f.url}/boot/02-00-00-00-00-04/initramfs`);
    assert.equal(r.status, 500);
    assert.match(await r.text(), /^initramfs of image [0-9a-f]{64} unavailable: .+/);
    assert.ok(
      listEvents(f.ctx.db, { mac: "02:00:00:00:00:04" }).some((e) =>
        e.kind === "http.initramfs.error"
      ),
    );

    // A kernel link pointing nowhere, and a manifest gone missing: 404s that say what is missing.
    const dangling = addImage(f.ctx, "dangling", { "vmlinuz": "->boot/vmlinuz-gone" });
    addNode(f.ctx, "02:00:00:00:00:05", "dangling", dangling);
    await Deno.remove(f.ctx.data.manifest(dangling));
    r = await fetch(`${f.url}/boot/02-00-00-00-00-05/kernel`);
    assert.equal(r.status, 404);
    assert.match(
      await r.text(),
      /^kernel of image [0-9a-f]{64} unavailable: \/vmlinuz: \/boot does not exist in the image$/m,
    );
    r = await fetch(`${f.url}/boot/02-00-00-00-00-05/manifest`);
    assert.equal(r.status, 404);
    assert.match(
      await r.text(),
      /^manifest of image [0-9a-f]{64} unavailable: manifest is missing$/m,
    );
  } finally {
    await f.close();
  }
});

// ---- real iPXE (qemu, TCG): the script as the firmware runs it ----

Deno.test({
  name: "real iPXE (qemu): chains the script by ${net0/mac:hexhyp}, retries a failed kernel, boots",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  async fn() {
    const { debianKernel } = await import("./support/kernel.ts");
    const k = await debianKernel();
    const f = await fixture();
    const mac = "52:54:00:b0:07:05";
    let qemu: Deno.ChildProcess | undefined;
    try {
      // An image whose own initrd only prints the command line it was given, then powers off.
      const stage = join(f.dir, "stage");
      mkdirSync(join(stage, "bin"), { recursive: true });
      mkdirSync(join(stage, "dev"));
      mkdirSync(join(stage, "proc"));
      await Deno.copyFile("/usr/bin/busybox", join(stage, "bin/busybox"));
      writeFileSync(
        join(stage, "init"),
        // The kernel's own console lines off first: one of them (the TSC's late calibration)
        // once landed inside the echoed line.
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n" +
          "echo 1 > /proc/sys/kernel/printk\n" +
          'echo "H5-CMDLINE $(/bin/busybox cat /proc/cmdline)"\n/bin/busybox poweroff -f\n',
        { mode: 0o755 },
      );
      const initrd = join(f.dir, "initrd.gz");
      const sh = await new Deno.Command("sh", {
        args: [
          "-c",
          `mknod -m 600 dev/console c 5 1 && find . | cpio -o -H newc --quiet | gzip -1 > ${initrd}`,
        ],
        cwd: stage,
      }).output();
      assert.ok(sh.success, "initrd built");
      // The kernel link dangles at first: iPXE's first `kernel` fails, the script must retry.
      const id = addImage(f.ctx, "vmtest", {
        "boot/initrd.img-test": await Deno.readFile(initrd),
        "vmlinuz": "->/boot/vmlinuz-test",
        "initrd.img": "->/boot/initrd.img-test",
      });
      addNode(f.ctx, mac, "vm1", id, { initramfs: "image", "kernel.cmdline": "panic=-1" });

      const port = new URL(f.url).port;
      const chain = join(f.dir, "chain.ipxe");
      // qemu user networking: the guest reaches this host's loopback as 10.0.2.2.
      writeFileSync(
        chain,
        `#!ipxe\ndhcp\nchain http://10.0.2.2:${port}/boot/\${net0/mac:hexhyp}.ipxe\n`,
      );
      const serial = join(f.dir, "serial.log");
      qemu = new Deno.Command("qemu-system-x86_64", {
        args: [
          ...["-accel", "tcg", "-m", "256", "-display", "none", "-monitor", "none"],
          ...["-serial", `file:${serial}`, "-no-reboot"],
          ...["-kernel", "/usr/lib/ipxe/ipxe.lkrn", "-initrd", chain], // lkrn runs its initrd as a script
          ...["-netdev", "user,id=n0", "-device", `virtio-net-pci,netdev=n0,mac=${mac},romfile=`],
        ],
        stdin: "null",
        stdout: "null",
        stderr: "piped",
      }).spawn();

      await waitEvent(f.ctx, mac, "http.kernel.error", 0, 60_000);
      await Deno.copyFile(k.vmlinuz, join(f.ctx.data.rootfs(id), "boot/vmlinuz-test"));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const done = await Promise.race([
        qemu.output(),
        new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), 120_000)),
      ]);
      clearTimeout(timer);
      assert.ok(done, "qemu powered off within 120 s");
      qemu = undefined;
      const log = await Deno.readTextFile(serial);
      const line = /^H5-CMDLINE (.*)$/m.exec(log)?.[1];
      assert.ok(line, `the image's initrd ran; serial log ends:\n${log.slice(-1500)}`);
      const tokens = (f.ctx.db.prepare("SELECT token FROM boots WHERE mac = ? ORDER BY rowid")
        .all(mac) as { token: string }[]).map((b) => b.token);
      assert.equal(tokens.length, 1, "one script fetch, retries stay within it");
      assert.ok(line.includes(` netroot.token=${tokens[0]} `), line);
      assert.ok(line.includes(` netroot.mac=${mac} netroot.server=10.0.2.2 `), line);
      assert.ok(line.includes(`netroot.image=${id}`), line);
      assert.ok(line.endsWith(" panic=-1"), line);
      const kinds = listEvents(f.ctx.db, { mac }).map((e) => e.kind);
      assert.deepEqual(
        kinds.filter((x) => x.startsWith("http.")),
        ["http.script", "http.kernel.error", "http.kernel", "http.initramfs"],
      );
      const kernelEv = listEvents(f.ctx.db, { mac }).find((e) => e.kind === "http.kernel")!;
      assert.equal(kernelEv.detail.bytes, (await Deno.stat(k.vmlinuz)).size);
    } finally {
      if (qemu) {
        qemu.kill("SIGKILL");
        await qemu.status;
      }
      await f.close();
    }
  },
});

// Anyone can fetch the script of a node with no address yet: the request's source address alone
// never becomes the node's address (what its /persist export follows), on the boot network or off
// it. The neighbour-table evidence that does is proven in tests/node_address_test.ts
// (namespaces). Once the admin fixed an address, the command line carries it and only that
// address gets the script.
Deno.test("boot script: the asker's source address alone is never taken as the node's", async () => {
  const f = await fixture();
  const mac = "52:54:00:12:34:77";
  try {
    f.ctx.config.serverIp = "198.51.100.1"; // no such interface here: the boot network is its /24
    addNode(f.ctx, mac, "pc7", f.imageId);
    const app = new Hono().route("/boot", bootRoutes(contextBooter(f.ctx)));
    const from = (hostname: string) =>
      app.request(`/boot/${mac}.ipxe`, {}, {
        remoteAddr: { hostname, port: 40000, transport: "tcp" },
      });
    // The script answers the asker as before; the registry (and NFS) ignore where it came from.
    let r = await from("192.0.2.9");
    assert.equal(r.status, 200);
    assert.match(await r.text(), /ip=192\.0\.2\.9:/);
    assert.equal(f.ctx.nodes.get(mac).ip, null);
    r = await from("198.51.100.77");
    assert.match(await r.text(), /ip=198\.51\.100\.77:198\.51\.100\.1:/);
    assert.equal(f.ctx.nodes.get(mac).ip, null, "a boot-network address proves nothing either");
    f.ctx.nodes.configure(mac, { ip: "198.51.100.50" });
    r = await from("198.51.100.77");
    const refused = await r.text();
    assert.match(refused, /request from 198\.51\.100\.77: the node's address is 198\.51\.100\.50/);
    assert.doesNotMatch(refused, /netroot\.token=/, "no boot opened for the asker");
    r = await from("198.51.100.50");
    assert.match(await r.text(), /ip=198\.51\.100\.50:198\.51\.100\.1:/);
    assert.equal(f.ctx.nodes.get(mac).ip, "198.51.100.50");
  } finally {
    await f.close();
  }
});

Deno.test("/boot: an unexpected failure is the routes' one error style (a script for iPXE, else a line)", async () => {
  const f = await fixture();
  const mac = "52:54:00:12:34:79";
  try {
    addNode(f.ctx, mac, "pc10", f.imageId);
    const fail = () => {
      throw new Error("database is locked");
    };
    const booter = { ...contextBooter(f.ctx), script: fail, acceptReport: fail };
    const app = new Hono().route("/boot", bootRoutes(booter));
    const script = await app.request(`/boot/${mac}.ipxe`);
    assert.equal(script.status, 200); // iPXE shows a script's text; an error status only its code
    assert.match(
      await script.text(),
      /^#!ipxe\necho netroot: internal error: database is locked\n/,
    );
    const report = await app.request("/boot/report", {
      method: "POST",
      body: JSON.stringify({ token: "t", mac, stage: "start" }),
    });
    assert.equal(report.status, 500);
    assert.match(report.headers.get("content-type") ?? "", /^text\/plain/);
    assert.equal(await report.text(), "internal error: database is locked\n");
  } finally {
    await f.close();
  }
});

Deno.test("report: the node's nfsReadBytes lands in the timeline event", async () => {
  const f = await fixture();
  const mac = "52:54:00:12:34:78";
  try {
    addNode(f.ctx, mac, "pc8", f.imageId);
    const token = openBoot(f.ctx.db, mac, f.imageId);
    const app = new Hono().route("/boot", bootRoutes(contextBooter(f.ctx)));
    const r = await app.request("/boot/report", {
      method: "POST",
      body: JSON.stringify({ token, mac, stage: "handover", ok: true, nfsReadBytes: 123456 }),
    });
    assert.equal(r.status, 200);
    const e = listEvents(f.ctx.db, { mac }).find((x) => x.kind === "init.handover");
    assert.equal(e?.detail.nfsReadBytes, 123456);
  } finally {
    await f.close();
  }
});

Deno.test("report: a retry of a report already recorded (same seq) is recorded once; a bad seq is 400", async () => {
  const f = await fixture();
  const mac = "52:54:00:12:34:7a";
  try {
    addNode(f.ctx, mac, "pc9", f.imageId);
    const token = openBoot(f.ctx.db, mac, f.imageId);
    const app = new Hono().route("/boot", bootRoutes(contextBooter(f.ctx)));
    const post = (body: Record<string, unknown>) =>
      app.request("/boot/report", {
        method: "POST",
        body: JSON.stringify({ token, mac, ...body }),
      });
    const count = (kind: string) =>
      listEvents(f.ctx.db, { mac }).filter((x) => x.kind === kind).length;
    assert.equal((await post({ stage: "modules", ok: true, seq: 1 })).status, 200);
    // The node gave up waiting for the answer and sent it again: the same number.
    const again = await post({ stage: "modules", ok: true, seq: 1 });
    assert.equal(again.status, 200);
    assert.equal((await again.json()).duplicate, true);
    assert.equal(count("init.modules"), 1);
    assert.equal((await post({ stage: "network", ok: true, seq: 2 })).status, 200);
    assert.equal((await post({ stage: "modules", ok: true, seq: 1 })).status, 200); // late retry
    assert.equal(count("init.modules"), 1);
    assert.equal(count("init.network"), 1);
    // The number stays out of the timeline; reports without one are always recorded.
    const e = listEvents(f.ctx.db, { mac }).find((x) => x.kind === "init.network");
    assert.equal(e?.detail.seq, undefined);
    await post({ stage: "persist", ok: true });
    await post({ stage: "persist", ok: true });
    assert.equal(count("init.persist"), 2);
    for (const seq of [-1, 1.5, "3", 2 ** 60]) {
      const r = await post({ stage: "overlay", seq });
      assert.equal(r.status, 400, String(seq));
      assert.match(await r.text(), /seq must be a whole number/);
    }
    assert.equal(count("init.overlay"), 0);
  } finally {
    await f.close();
  }
});

Deno.test("report: a batch records each numbered report once, all or none; retries and bad batches", async () => {
  const f = await fixture();
  const mac = "52:54:00:12:34:7b";
  try {
    addNode(f.ctx, mac, "pc10", f.imageId);
    const token = openBoot(f.ctx.db, mac, f.imageId);
    const app = new Hono().route("/boot", bootRoutes(contextBooter(f.ctx)));
    const post = (body: unknown) =>
      app.request("/boot/report", { method: "POST", body: JSON.stringify(body) });
    const batch = (reports: unknown) => post({ token, mac, reports });
    const kinds = () =>
      listEvents(f.ctx.db, { mac }).map((x) => x.kind).filter((k) => k.startsWith("init."));
    let r = await batch([
      { seq: 1, stage: "start", ok: true, ms: 3 },
      { seq: 2, stage: "modules", ok: true, detail: "8 loaded" },
      { seq: 3, stage: "network", ok: true },
    ]);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { ok: true });
    assert.deepEqual(kinds().sort(), ["init.modules", "init.network", "init.start"]);
    const ev = listEvents(f.ctx.db, { mac }).find((x) => x.kind === "init.modules");
    assert.equal(ev?.detail.detail, "8 loaded");
    assert.equal(ev?.detail.seq, undefined);
    // The node gave up waiting and sent the batch again with one more: only the new one counts.
    r = await batch([
      { seq: 2, stage: "modules", ok: true },
      { seq: 3, stage: "network", ok: true },
      { seq: 4, stage: "nfs-root", ok: true },
    ]);
    assert.deepEqual(await r.json(), { ok: true, recorded: 1, duplicates: 2 });
    r = await batch([{ seq: 4, stage: "nfs-root", ok: true }]);
    assert.deepEqual(await r.json(), { ok: true, duplicate: true });
    // A single report (the older form) shares the numbering.
    assert.equal((await post({ token, mac, stage: "overlay", seq: 4 })).status, 200);
    assert.equal(kinds().length, 4);
    // All or nothing: one bad report refuses the batch, nothing of it is recorded.
    const bad: [unknown, RegExp][] = [
      [[{ seq: 5, stage: "persist" }, { seq: 6, stage: "Handover!" }], /needs stage/],
      [[{ seq: 5, stage: "persist" }, { stage: "handover" }], /needs its seq/],
      [[{ seq: 6, stage: "persist" }, { seq: 5, stage: "handover" }], /increasing seq/],
      [[{ seq: 5, stage: "persist" }, { seq: 5, stage: "handover" }], /increasing seq/],
      [[{ seq: -1, stage: "persist" }], /seq must be a whole number/],
      [[{ seq: 5, stage: "persist" }, "handover"], /array of 1 to 64/],
      [[], /array of 1 to 64/],
      ["persist", /array of 1 to 64/],
      [{ seq: 5, stage: "persist" }, /array of 1 to 64/],
      [Array.from({ length: 65 }, (_, i) => ({ seq: 5 + i, stage: "x" })), /array of 1 to 64/],
    ];
    for (const [reports, why] of bad) {
      r = await batch(reports);
      assert.equal(r.status, 400, JSON.stringify(reports).slice(0, 80));
      assert.match(await r.text(), why);
    }
    assert.equal((await post([{ token, mac, seq: 5, stage: "persist" }])).status, 400);
    assert.equal((await post({ mac, reports: [{ seq: 5, stage: "persist" }] })).status, 400);
    assert.equal(kinds().length, 4);
    // A batch with another boot's token is refused whole and noted once.
    r = await post({
      token: "0".repeat(32),
      mac,
      reports: [{ seq: 5, stage: "persist" }, { seq: 6, stage: "handover" }],
    });
    assert.equal(r.status, 403);
    const rejected = listEvents(f.ctx.db, { mac }).filter((x) => x.kind === "http.report.rejected");
    assert.equal(rejected.length, 1);
    assert.equal(rejected[0].detail.stage, "2 reports");
    // An identity inside a report is ignored: the batch's is the one checked and recorded.
    const other = "52:54:00:12:34:7c";
    r = await batch([{ seq: 5, stage: "persist", ok: true, token: "x", mac: other }]);
    assert.equal(r.status, 200);
    assert.equal(listEvents(f.ctx.db, { mac: other }).length, 0);
    assert.equal(kinds().length, 5);
    assert.equal(kinds().length, 5);
  } finally {
    await f.close();
  }
});

Deno.test("report: a body past 64 KiB is 413, declared or streamed without a length", async () => {
  const f = await fixture();
  try {
    const big = JSON.stringify({ token: "t", mac: "52:54:00:12:34:79", detail: "x".repeat(70000) });
    let r = await fetch(`${f.url}/boot/report`, { method: "POST", body: big });
    assert.equal(r.status, 413);
    await r.body?.cancel();
    // Chunked: no content-length to judge by, the reading itself stops.
    const bytes = new TextEncoder().encode(big);
    const stream = new ReadableStream<Uint8Array>({
      start(ctl) {
        for (let i = 0; i < bytes.length; i += 8192) ctl.enqueue(bytes.subarray(i, i + 8192));
        ctl.close();
      },
    });
    r = await fetch(`${f.url}/boot/report`, { method: "POST", body: stream });
    assert.equal(r.status, 413);
    await r.body?.cancel();
    r = await fetch(`${f.url}/boot/report`, { method: "POST", body: "{}" });
    assert.equal(r.status, 400);
    await r.body?.cancel();
  } finally {
    await f.close();
  }
});

Deno.test("boot script: a neighbour fetching a booted node's script gets no watchdog reboot of it (attacker)", async () => {
  const f = await fixture();
  const mac = "52:54:00:12:34:7a";
  try {
    addNode(f.ctx, mac, "pc9", f.imageId, { initramfs: "image" });
    f.ctx.nodes.setIp(mac, "10.77.0.9");
    let t = Date.now();
    const monitor = new NodeMonitor(f.ctx, { now: () => t, probe: () => Promise.resolve(true) });
    f.ctx.monitor = monitor;
    const reboots: string[] = [];
    f.ctx.rebooter.reboot = (target, cause) => {
      reboots.push(`${target.name}: ${cause}`);
      return Promise.resolve({ ok: true } as never);
    };
    // The node boots: its script, its init's handover, its sshd answers.
    const script = await (await fetch(`${f.url}/boot/${mac}.ipxe`)).text();
    const token = /netroot\.token=(\S+)/.exec(script)![1];
    const r = await fetch(`${f.url}/boot/report`, {
      method: "POST",
      body: JSON.stringify({ token, mac, stage: "handover", ok: true }),
    });
    assert.equal(r.status, 200);
    await r.body?.cancel();
    t += 1000;
    await monitor.tick();
    assert.equal(f.ctx.nodes.get("pc9").state, "booted");
    // Another fetch of the node's script opens a boot (one from off the link before the node
    // had an address, a spoofer of its address and MAC, or the server machine's: loopback, as
    // here, is not checked).
    await (await fetch(`${f.url}/boot/${mac}.ipxe`)).text();
    for (let i = 0; i < 4; i++) {
      t += 200_000; // past boot.timeout (180 s), each time
      await monitor.tick();
    }
    assert.deepEqual(reboots, [], "a running node was rebooted by the watchdog");
    assert.notEqual(f.ctx.nodes.get("pc9").state, "failed");
  } finally {
    await f.close();
  }
});
