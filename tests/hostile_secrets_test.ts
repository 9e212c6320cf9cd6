// Secrets and reads: the per-boot token is in the node's script and nowhere a reader of the open
// API, the timeline or `node log` can see it; it stops working once its boot is over; the API can
// demand its token for reads too (--api-auth all).
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { defaultConfig, type ServerConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { DatabaseSync } from "node:sqlite";
import { migrate, openDatabase } from "../src/db.ts";
import { buildApp, closeContext, openContext } from "../src/server.ts";
import { addImage } from "./support/images.ts";

const mainTs = fileURLToPath(new URL("../main.ts", import.meta.url));
const mac = "52:54:00:5e:c0:01";

async function withServer(
  fn: (url: string, ctx: Context) => Promise<void>,
  config: Partial<ServerConfig> = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nr-secrets-" });
  const ctx = await openContext({ ...defaultConfig(), ...config, dataDir: dir });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    buildApp(ctx).fetch,
  );
  try {
    const image = addImage(ctx, "img");
    ctx.db.prepare("UPDATE images SET kernel = '/vmlinuz', initrd = '/initrd.img' WHERE id = ?")
      .run(image);
    ctx.nodes.add(mac, { name: "pc1", image: "img" });
    ctx.nodes.configure("pc1", { initramfs: "image" }); // no initramfs build in these tests
    await fn(`http://127.0.0.1:${server.addr.port}`, ctx);
  } finally {
    await server.shutdown();
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

async function bootToken(url: string): Promise<string> {
  const script = await (await fetch(`${url}/boot/${mac.replaceAll(":", "-")}.ipxe`)).text();
  return /netroot\.token=([0-9a-f]+)/.exec(script)![1];
}

const report = (url: string, token: string, stage: string) =>
  fetch(`${url}/boot/report`, {
    method: "POST",
    body: JSON.stringify({ token, mac, stage, ok: true }),
  }).then(async (r) => ({ status: r.status, text: await r.text() }));

Deno.test("boot token: not in events, the open API or `node log`/`node show` output", () =>
  withServer(async (url, ctx) => {
    const token = await bootToken(url);
    assert.equal((await report(url, token, "start")).status, 200);
    assert.equal((await report(url, token, "handover")).status, 200);
    // At the root: no table but boots holds it, in any column (events, live stream, dashboard
    // and metrics all read from these).
    const tables = ctx.db.prepare(
      "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    ).all() as { name: string }[];
    assert.ok(tables.some((t) => t.name === "events"));
    for (const { name } of tables) {
      const rows = ctx.db.prepare(`SELECT * FROM "${name}"`).all();
      const hits = rows.filter((r) => JSON.stringify(r).includes(token)).length;
      assert.equal(hits, name === "boots" ? 1 : 0, `table ${name} holds the boot token`);
    }
    for (const path of ["/events", `/nodes/${mac}/events`, "/nodes/pc1", "/nodes"]) {
      const body = await (await fetch(`${url}/api/v1${path}`)).text();
      assert.ok(body.includes("http.script") || path.startsWith("/nodes"), path);
      assert.ok(!body.includes(token), `${path} shows the boot token`);
    }
    for (
      const args of [["node", "log", "pc1"], ["node", "log", "pc1", "--json"], [
        "node",
        "show",
        "pc1",
      ]]
    ) {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", mainTs, ...args],
        env: { NETROOT_SERVER: url, NETROOT_DATA: ctx.data.root, NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      assert.match(text, /http\.script/);
      assert.ok(!text.includes(token), `${args.join(" ")} shows the boot token`);
    }
  }));

Deno.test("boot token: refused after its boot's handover (+ grace) and after a long silence", () =>
  withServer(async (url, ctx) => {
    const age = (token: string, column: "reported_at" | "started_at", minutes: number) =>
      ctx.db.prepare(`UPDATE boots SET ${column} = ? WHERE token = ?`)
        .run(new Date(Date.now() - minutes * 60_000).toISOString(), token);

    // Handover, then within the grace a repeated report and a fatal one are still taken.
    const token = await bootToken(url);
    for (const stage of ["start", "handover", "handover", "fatal"]) {
      assert.equal((await report(url, token, stage)).status, 200, stage);
    }
    age(token, "reported_at", 3); // the grace (2 minutes) is over
    const late = await report(url, token, "handover");
    assert.equal(late.status, 403);
    assert.match(late.text, /token expired: its boot ended \(fatal at /);
    const rejected = ctx.db.prepare(
      "SELECT detail FROM events WHERE kind = 'http.report.rejected' ORDER BY id DESC LIMIT 1",
    ).get() as { detail: string };
    assert.match(rejected.detail, /token expired/);

    // A boot that never reported: its token lapses after 30 min plus the NFS retry budget.
    const quiet = await bootToken(url);
    age(quiet, "started_at", 20);
    assert.equal((await report(url, quiet, "start")).status, 200);
    age(quiet, "reported_at", 32);
    assert.equal((await report(url, quiet, "network")).status, 200, "within 30 min + 180 s");
    age(quiet, "reported_at", 34);
    const idle = await report(url, quiet, "nfs-root");
    assert.equal(idle.status, 403);
    assert.match(idle.text, /token expired: its boot has not been heard from since/);
  }));

Deno.test("boot token: tokens recorded in events by older versions are scrubbed at upgrade", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-scrub-" });
  try {
    // A version-3 database (before the scrub) as the previous release left it.
    const v3 = new DatabaseSync(`${dir}/t.db`);
    migrate(v3, 3);
    const ins = v3.prepare("INSERT INTO events (mac, ts, kind, detail) VALUES (?, ?, ?, ?)");
    ins.run(mac, "2026-01-01T00:00:00Z", "http.script", '{"image":"abc","token":"deadbeef01"}');
    ins.run(mac, "2026-01-01T00:00:01Z", "init.start", '{"image":"abc","detail":"token"}');
    v3.close();
    const db = openDatabase(`${dir}/t.db`);
    const rows = db.prepare("SELECT kind, detail FROM events ORDER BY id").all();
    db.close();
    assert.deepEqual(rows.map((r) => ({ ...r })), [
      { kind: "http.script", detail: '{"image":"abc"}' },
      { kind: "init.start", detail: '{"image":"abc","detail":"token"}' },
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--api-auth all: reads need the token too; default: only writes do", async () => {
  const get = (url: string, path: string, token?: string) =>
    fetch(`${url}${path}`, token ? { headers: { authorization: `Bearer ${token}` } } : {})
      .then(async (r) => ({ status: r.status, body: await r.text() }));
  await withServer(async (url, ctx) => {
    for (const path of ["/api/v1/nodes", "/api/v1/events", "/api/v1/images", "/api/v1/health"]) {
      const r = await get(url, path);
      assert.equal(r.status, 401, path);
      assert.match(r.body, /missing or wrong API token/);
      assert.equal((await get(url, path, "0".repeat(64))).status, 401, path);
      assert.equal((await get(url, path, ctx.token)).status, 200, path);
    }
    // The dashboard page (no data in it) and the boot routes stay open.
    assert.equal((await get(url, "/")).status, 200);
    assert.equal((await get(url, `/boot/${mac}.ipxe`)).status, 200);
  }, { api: { auth: "all" } });
  await withServer(async (url) => {
    assert.equal((await get(url, "/api/v1/nodes")).status, 200);
  });
});
