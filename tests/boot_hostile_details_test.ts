// What a sender on the boot network writes into the timeline through the /boot routes is its own
// text (a Range header, a URL, a loader's name, a report's fields): each stored event stays small,
// whatever the sender made those as long as (an HTTP header or path may be ~64 KiB, a report body
// 64 KiB). Before, each event kept them whole: 10,000 events a node (and 100,000 for the rest) of
// up to 128 KiB each, from a neighbour at its source address's rate.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Hono } from "hono";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { bootRoutes } from "../netboot/http.ts";
import { contextBooter } from "../src/boot/booter.ts";

Deno.test("boot routes: a sender's long Range, URL, loader name and report fields stay small on the timeline", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-boot-details-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir, ipxeDir: dir });
  try {
    const id = "cd".repeat(32);
    ctx.db.prepare(
      `INSERT INTO images (id, name, created_at, size, files, kernel, initrd, bootable)
       VALUES (?, 'img', ?, 0, 0, '/vmlinuz', '/initrd.img', 1)`,
    ).run(id, new Date().toISOString());
    Deno.mkdirSync(ctx.data.rootfs(id), { recursive: true });
    Deno.writeFileSync(join(ctx.data.rootfs(id), "vmlinuz"), new Uint8Array(4096));
    const mac = "52:54:00:f1:00:02";
    ctx.nodes.add(mac, { image: "img" });
    const app = new Hono().route("/boot", bootRoutes(contextBooter(ctx)));
    const env = { remoteAddr: { transport: "tcp", hostname: "10.66.0.9", port: 1 } };
    const long = 60_000;

    // One byte of the kernel, asked with a 60 KB Range header (a valid range: leading zeros).
    let r = await app.request(
      `/boot/${mac}/kernel`,
      { headers: { range: `bytes=0-${"0".repeat(long)}` } },
      env,
    );
    assert.equal(r.status, 206);
    await r.arrayBuffer();
    // An unknown node's script with a MAC padded by separators (parseMac drops them).
    r = await app.request(`/boot/02${"-".repeat(long)}0000000001.ipxe`, {}, env);
    assert.equal(r.status, 200);
    await r.text();
    // A loader name longer than a file name can be: not one of the iPXE dir's files (a 404 like
    // any other), not a server failure whose 500 and log line carried the name twice (~128 KB a
    // request, at no rate limit).
    for (const n of [300, long]) {
      r = await app.request(`/boot/ipxe/${"a".repeat(n)}.efi`, {}, env);
      assert.equal(r.status, 404, `a loader name of ${n} characters`);
      assert.ok((await r.text()).length < 1000);
    }
    // A report whose reason and variant are 30 KB each (its detail alone was cut to 4 KiB).
    const script = await (await app.request(`/boot/${mac}.ipxe`, {}, env)).text();
    const token = /netroot\.token=([0-9a-f]+)/.exec(script)![1];
    r = await app.request("/boot/report", {
      method: "POST",
      body: JSON.stringify({
        token,
        mac,
        stage: "hybrid-failed",
        reason: "r".repeat(long / 2),
        variant: "v".repeat(long / 2 - 100),
      }),
    }, env);
    assert.equal(r.status, 200);

    const rows = ctx.db.prepare("SELECT kind, length(detail) AS n FROM events").all() as {
      kind: string;
      n: number;
    }[];
    const kinds = new Set(rows.map((e) => e.kind));
    for (const k of ["http.kernel", "http.unknown", "init.hybrid-failed"]) {
      assert.ok(kinds.has(k), `${k} recorded (${[...kinds]})`);
    }
    const large = rows.filter((e) => e.n > 9000);
    assert.deepEqual(large, [], "events whose detail a sender made large");
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("boot routes: a Range header of 60,000 blanks is answered at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-boot-range-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir, ipxeDir: dir });
  try {
    // The iPXE binaries go to anyone on the boot network, no MAC needed.
    Deno.writeFileSync(join(dir, "ipxe.efi"), new Uint8Array(4096));
    const app = new Hono().route("/boot", bootRoutes(contextBooter(ctx)));
    const env = { remoteAddr: { transport: "tcp", hostname: "10.66.0.9", port: 1 } };
    for (const range of [`bytes=0-${" ".repeat(60_000)}x`, `bytes=${" ".repeat(60_000)}-x`]) {
      const t0 = performance.now();
      const r = await app.request("/boot/ipxe/ipxe.efi", { headers: { range } }, env);
      const ms = performance.now() - t0;
      await r.body?.cancel();
      assert.equal(r.status, 416);
      // Two `\s*` in a row in the regex tried every split of the blanks: 1.5 to 4 s of the
      // server's only thread a request.
      assert.ok(ms < 500, `${Math.round(ms)} ms for one request`);
    }
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});
