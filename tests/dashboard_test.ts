// The dashboard rendered by a real headless Chromium against a server on loopback: the DOM it
// dumps must hold data the page's script fetched from the API (the served HTML holds none).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { defaultConfig } from "../src/config.ts";
import { recordEvent, recordProgress } from "../src/events.ts";
import { buildApp, openContext } from "../src/server.ts";

const chromium = "/usr/bin/chromium";
const haveChromium = (() => {
  try {
    return Deno.statSync(chromium).isFile;
  } catch {
    return false;
  }
})();

async function dumpDom(url: string): Promise<string> {
  const profile = await Deno.makeTempDir({ prefix: "nr-dash-chromium-" });
  try {
    const out = await new Deno.Command(chromium, {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        `--user-data-dir=${profile}`,
        // Lets the page's fetches and rendering finish (in virtual time) before the dump.
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
      ],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(60_000),
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    return new TextDecoder().decode(out.stdout);
  } finally {
    await Deno.remove(profile, { recursive: true });
  }
}

Deno.test({
  name: "dashboard: Chromium renders nodes, images and a node timeline fetched from the API",
  ignore: !haveChromium,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nr-dash-" });
    const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      buildApp(ctx).fetch,
    );
    try {
      const id = "ef".repeat(32);
      ctx.db.prepare(
        `INSERT INTO images (id, name, created_at, size, files, bootable)
         VALUES (?, 'bookworm-lab', ?, 1048576, 1, 1)`,
      ).run(id, new Date().toISOString());
      mkdirSync(ctx.data.rootfs(id), { recursive: true });
      ctx.nodes.add("52:54:00:d4:5b:01", { name: "dash-node-1", image: "bookworm-lab" });
      ctx.nodes.add("52:54:00:d4:5b:02", { name: "vm-2", virtual: true });
      ctx.nodes.setIp("52:54:00:d4:5b:01", "10.77.0.42");
      await ctx.nodes.deploy(["dash-node-1"], "bookworm-lab");
      for (const done of [40e6, 100e6]) { // the second report replaces the first
        recordProgress(ctx.db, "52:54:00:d4:5b:01", "init.hybrid-copy", {
          done,
          total: 400e6,
          rate: 20e6,
        });
      }
      ctx.nodes.setState("52:54:00:d4:5b:01", "booted", "port 22 answered");
      recordEvent(ctx.db, "52:54:00:d4:5b:01", "init.fatal", { detail: "<b>not-markup</b>" });

      const base = `http://127.0.0.1:${server.addr.port}/`;
      const page = await (await fetch(base)).text();
      assert.ok(!page.includes("dash-node-1"), "the served page must not embed data");
      assert.doesNotMatch(page, /<(script|link)[^>]+(src|href)=/, "no external assets");

      const dom = await dumpDom(base);
      const row = /<tr data-mac="52:54:00:d4:5b:01">(.*?)<\/tr>/s.exec(dom)?.[1] ?? "";
      assert.match(row, />dash-node-1</);
      assert.match(row, /10\.77\.0\.42/);
      assert.match(row, /bookworm-lab/);
      assert.match(row, /init\.fatal \(/); // last event
      assert.match(row, /<td class="state-booted" title="port 22 answered">booted \(/);
      assert.match(dom, /<td>bookworm-lab<\/td><td class="mono">efefefefefef<\/td><td>1\.0 MiB/);
      assert.match(dom, /<tr data-mac="52:54:00:d4:5b:02">.*?>vm-2<.*?<td>yes<\/td>/s);
      assert.match(dom, /2 nodes, 1 images/);

      const timeline = await dumpDom(`${base}#node=52:54:00:d4:5b:01`);
      const section = /<section id="timeline"[^>]*>(.*?)<\/section>/s.exec(timeline);
      assert.ok(section, "timeline section present");
      assert.doesNotMatch(section[0], /<section id="timeline" hidden/);
      assert.match(section[1], /<span id="timeline-node">dash-node-1 \(52:54:00:d4:5b:01\)</);
      // Event details are text, never markup.
      assert.match(section[1], /&lt;b&gt;not-markup&lt;\/b&gt;/);
      // A copy's progress: one readable row, the latest (the node log's own formatting).
      assert.match(
        section[1],
        /<td>init\.hybrid-copy<\/td><td class="mono">25% \(100\.0\/400\.0 MB, 20\.0 MB\/s, ETA 15 s\)<\/td>/,
      );
      assert.doesNotMatch(section[1], /10% \(|&quot;done&quot;|"done"/);
      for (const kind of ["node.added", "deploy", "reboot.none", "init.fatal"]) {
        assert.match(section[1], new RegExp(`<td>${kind.replace(".", "\\.")}</td>`));
      }
    } finally {
      await server.shutdown();
      ctx.db.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "dashboard with --api-auth all: asks for the token; works given ?token= once",
  ignore: !haveChromium,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nr-dash-auth-" });
    const ctx = await openContext({ ...defaultConfig(), dataDir: dir, api: { auth: "all" } });
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      buildApp(ctx).fetch,
    );
    try {
      ctx.nodes.add("52:54:00:d4:5b:03", { name: "auth-node" });
      const base = `http://127.0.0.1:${server.addr.port}/`;
      const locked = await dumpDom(base);
      assert.doesNotMatch(locked, /auth-node/);
      assert.match(locked, /<form id="login">/, "the token form is shown");
      assert.match(locked, /the API needs its token/);
      const open = await dumpDom(`${base}?token=${ctx.token}`);
      assert.match(open, /<tr data-mac="52:54:00:d4:5b:03">.*?>auth-node</s);
      assert.match(open, /<form id="login" hidden="">/);
    } finally {
      await server.shutdown();
      ctx.db.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
