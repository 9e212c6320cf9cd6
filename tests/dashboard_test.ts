// The dashboard in a real headless Chromium (driven over the DevTools protocol) against a real
// server on loopback: log in with the API token (a wrong one refused), the cookie's attributes,
// the node list with states, a node page whose timeline updates live while the node "boots"
// (stage reports through the real /boot/report), actions through the REST API (a setting, a
// reboot, a power-off through a real power.command program) and their effects, hostile names,
// settings, event details and console text shown as text (nothing of them runs), screenshots.
// Then the same rules at the HTTP level: sessions, Origin checks, the page's policy, and the
// bounds of the event streams.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { openBoot } from "../src/boots.ts";
import { defaultConfig, type ServerConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { listEvents, recordEvent } from "../src/events.ts";
import { eventStreams } from "../src/eventstream.ts";
import { powerCommandDir } from "../src/power/command.ts";
import { buildApp, closeContext, openContext, serve } from "../src/server.ts";
import { sessionMaxAgeS, Sessions } from "../src/session.ts";
import { Browser, haveChromium, isPng, type Page } from "./support/cdp.ts";

const mac1 = "52:54:00:d4:5b:01";
const macVm = "52:54:00:d4:5b:02";
const macEvil = "52:54:00:d4:5b:03";
// Markup that would run if any of it became HTML: each sets window.pwned.
const evilName = `<img src=x onerror="window.pwned='name'"><script>window.pwned='name2'</script>`;
const evilSetting = `<script>window.pwned='setting'</script>`;
const evilDetail = `<img src=x onerror="window.pwned='detail'">`;
// A console: markup, colours, a title (OSC), a screen clear (CSI 2J, and C1 CSI), and a colour
// cut short by the end of the log (the rest comes later: the page reads the log in pieces).
const evilConsole = `login: <script>window.pwned='console'</script>\x1b[1;31mred\x1b[0m\r\n` +
  "\x1b]0;owned\x07\x1b[2J\u009b2J done\r\n[\x1b[0;3";

async function withServer(
  config: Partial<ServerConfig>,
  fn: (ctx: Context, base: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nr-dash-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir, ...config });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    buildApp(ctx).fetch,
  );
  try {
    await fn(ctx, `http://127.0.0.1:${server.addr.port}`);
  } finally {
    await server.shutdown();
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

/** A lab: an image, a physical node (booted, with a power program), a virtual node with a
 *  console, and a node whose name is hostile (written past the API's name rules, as an old or
 *  foreign database could hold it). */
async function seed(ctx: Context): Promise<{ imageId: string; powerLog: string }> {
  const imageId = "ef".repeat(32);
  ctx.db.prepare(
    `INSERT INTO images (id, name, created_at, size, files, bootable, kernel_version)
     VALUES (?, 'bookworm-lab', ?, 1048576, 1, 1, '6.1.0-lab')`,
  ).run(imageId, new Date().toISOString());
  mkdirSync(ctx.data.rootfs(imageId), { recursive: true });
  ctx.nodes.add(mac1, { name: "dash-node-1", image: "bookworm-lab" });
  ctx.nodes.add(macVm, { name: "vm-2", virtual: true });
  ctx.nodes.add(macEvil, { name: "evil-3" });
  ctx.db.prepare("UPDATE nodes SET name = ? WHERE mac = ?").run(evilName, macEvil);
  ctx.nodes.setIp(mac1, "10.77.0.42");
  await ctx.nodes.deploy(["dash-node-1"], "bookworm-lab", { reboot: false });
  ctx.nodes.setState(mac1, "booted", "port 22 answered");
  const powerLog = join(ctx.data.root, "power.log");
  const dir = powerCommandDir(ctx.data);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(
    join(dir, "fake.sh"),
    `#!/bin/sh\necho "$1 $NETROOT_NAME" >> '${powerLog}'\n[ "$1" = status ] && echo on\nexit 0\n`,
    { mode: 0o755 },
  );
  ctx.nodes.configure(mac1, {
    "power.driver": "command",
    "power.command": "fake.sh {action}",
    "kernel.cmdline": evilSetting,
  });
  recordEvent(ctx.db, mac1, "init.fatal", { detail: evilDetail });
  await Deno.mkdir(ctx.data.vm(macVm), { recursive: true });
  await Deno.writeTextFile(join(ctx.data.vm(macVm), "console.log"), evilConsole);
  return { imageId, powerLog };
}

const rows = (page: Page, selector: string) =>
  page.eval<string[]>(
    `[...document.querySelectorAll(${JSON.stringify(selector)})].map((r) => r.textContent)`,
  );

Deno.test({
  name: "dashboard: login, node list, live timeline while a node boots, actions, hostile text",
  ignore: !haveChromium,
  async fn() {
    await withServer({}, async (ctx, base) => {
      const { imageId, powerLog } = await seed(ctx);
      // Kept for a look after the run, in one place replaced at each run (not one more
      // directory in /tmp at every run).
      const shots = new URL("../.work/dashboard-shots", import.meta.url).pathname;
      await Deno.remove(shots, { recursive: true }).catch(() => {});
      await Deno.mkdir(shots, { recursive: true });
      const browser = await Browser.launch();
      try {
        const page = await browser.page();
        // Reads are open (--api-auth writes): the list shows, the actions do not.
        await page.goto(`${base}/`);
        await page.waitFor(`document.querySelector('#nodes tr[data-mac="${mac1}"]')`, "node row");
        const row = await page.eval<string>(
          `document.querySelector('#nodes tr[data-mac="${mac1}"]').textContent`,
        );
        assert.match(row, /dash-node-1/);
        assert.match(row, /booted · \d+ (s|min)/, "state with its age");
        assert.match(row, /bookworm-lab/);
        assert.match(row, /10\.77\.0\.42/);
        assert.match(row, /init\.fatal \(\d+ (s|min) ago\)/);
        const vmRow = await page.eval<string>(
          `document.querySelector('#nodes tr[data-mac="${macVm}"]').textContent`,
        );
        assert.match(vmRow, /vm-2off/);
        assert.match(
          await page.eval<string>(`document.querySelector('#images tr[data-image="bookworm-lab"]')
            .textContent`),
          /bookworm-labefefefefefef · .* · 1\.0 MiByes6\.1\.0-lab1/,
        );
        assert.equal(await page.eval("document.querySelector('.actions').hidden"), true);
        assert.equal(await page.eval("document.getElementById('login').hidden"), false);

        // A wrong token is refused, and sets no cookie.
        await page.eval(`document.getElementById('login-token').value = '${"0".repeat(64)}';
          document.getElementById('login').requestSubmit()`);
        await page.waitFor(
          "document.getElementById('login-error').textContent.includes('wrong token')",
          "the wrong-token message",
        );
        assert.equal((await page.cookies(base)).length, 0);

        // The right one logs in: an HttpOnly, SameSite=Strict session cookie on Path=/.
        await page.eval(`document.getElementById('login-token').value = '${ctx.token}';
          document.getElementById('login').requestSubmit()`);
        await page.waitFor("!document.getElementById('logout').hidden", "logged in");
        const [cookie, ...more] = await page.cookies(base);
        assert.equal(more.length, 0);
        assert.equal(cookie.name, "netroot_session");
        assert.match(cookie.value, /^[0-9a-f]{64}$/);
        assert.notEqual(cookie.value, ctx.token, "the cookie is not the token");
        assert.equal(cookie.httpOnly, true);
        assert.equal(cookie.sameSite, "Strict");
        assert.equal(cookie.path, "/");
        assert.equal(cookie.secure, false, "plain-HTTP lab");
        const left = cookie.expires - Date.now() / 1000;
        assert.ok(left > sessionMaxAgeS - 60 && left <= sessionMaxAgeS + 1, `expires in ${left}`);
        assert.equal(await page.eval("document.cookie"), "", "page scripts cannot read it");
        assert.equal(await page.eval("document.querySelector('.actions').hidden"), false);
        const listShot = await page.screenshot(join(shots, "nodes.png"));
        assert.ok(isPng(listShot), "the node list screenshot is a PNG");

        // The node page: facts, settings, timeline (live), console.
        await page.eval(`location.hash = '#/node/${mac1}'`);
        await page.waitFor(
          "document.getElementById('node-name').textContent === 'dash-node-1'",
          "node page",
        );
        await page.waitFor("document.getElementById('live').textContent === 'live'", "stream");
        const facts = (await rows(page, "#node-facts tr")).join("\n");
        assert.match(facts, /mac52:54:00:d4:5b:01/);
        assert.match(facts, /address10\.77\.0\.42/);
        assert.match(facts, /imagebookworm-lab/);
        assert.match(facts, /statebooted since .* — port 22 answered/);
        const kinds = await page.eval<string[]>(
          "[...document.querySelectorAll('#timeline tbody tr')].map((r) => r.dataset.kind)",
        );
        for (const k of ["node.added", "deploy", "node.state", "node.config", "init.fatal"]) {
          assert.ok(kinds.includes(k), `${k} in ${kinds}`);
        }

        // The node boots: its script opens a boot, its init reports stages over HTTP. Each
        // shows up without a reload, newest first; progress is one row that moves.
        const token = openBoot(ctx.db, mac1, imageId);
        const report = async (body: Record<string, unknown>) => {
          const r = await fetch(`${base}/boot/report`, {
            method: "POST",
            body: JSON.stringify({ token, mac: mac1, ...body }),
          });
          assert.equal(r.status, 200, await r.text());
        };
        const navigations = await page.eval<number>(
          "performance.getEntriesByType('navigation')" +
            ".length + history.length",
        );
        await report({ stage: "modules", ok: true, ms: 120 });
        await page.waitFor(
          "document.querySelector('#timeline tbody tr').dataset.kind === 'init.modules'",
          "the live init.modules row",
        );
        for (const done of [40e6, 100e6]) {
          await report({ stage: "hybrid-copy", done, total: 400e6, rate: 20e6 });
          await page.waitFor(
            `document.querySelector('#timeline tbody tr').textContent.includes('${done / 4e6}% (')`,
            `progress ${done}`,
          );
        }
        assert.equal(
          await page.eval(
            "document.querySelectorAll('#timeline tr[data-kind=\"init.hybrid-copy\"]')" +
              ".length",
          ),
          1,
          "progress replaces its row",
        );
        assert.equal(
          await page.eval("document.querySelector('#timeline tbody tr').className"),
          "new",
          "live rows are marked",
        );
        assert.equal(
          await page.eval<number>(
            "performance.getEntriesByType('navigation').length + " +
              "history.length",
          ),
          navigations,
          "no reload",
        );
        // The node list's last boot follows too (the boot table, through the API).
        await page.waitFor(
          "document.querySelector('#node-facts tr[data-fact=\"last boot\"]').textContent" +
            ".includes('(hybrid-copy)')",
          "last boot with its stage",
        );

        // Actions. A setting edited in the page reaches the registry (and the timeline).
        await page.eval(`document.getElementById('setting-key').value = 'boot.timeout';
          document.getElementById('setting-value').value = '300';
          document.getElementById('setting-add').requestSubmit()`);
        await page.waitFor(
          "document.querySelector('#settings tr[data-key=\"boot.timeout\"] td.value')" +
            "?.textContent === '300'",
          "the new setting",
        );
        assert.equal(ctx.nodes.get(mac1).settings["boot.timeout"], "300");
        await page.waitFor(
          "[...document.querySelectorAll('#timeline tr[data-kind=\"node.config\"]')]" +
            ".some((r) => r.textContent.includes('boot.timeout'))",
          "the node.config event, live",
        );
        // A bad value gets the API's one-line error.
        await page.eval(`document.getElementById('setting-key').value = 'boot.timeout';
          document.getElementById('setting-value').value = 'soon';
          document.getElementById('setting-add').requestSubmit()`);
        await page.waitFor(
          "document.getElementById('action-result').className.includes('error') && " +
            "document.getElementById('action-result').textContent.includes('boot.timeout must')",
          "the refusal",
        );
        // Power off through the node's power.command program: it runs, the node is off.
        await page.eval("document.querySelector('.act-power[data-action=\"off\"]').click()");
        await page.waitFor(
          "document.getElementById('action-result').textContent === 'power off: off (command)'",
          "power off result",
        );
        assert.equal((await Deno.readTextFile(powerLog)).trim(), "off dash-node-1");
        assert.equal(ctx.nodes.get(mac1).state, "off");
        await page.waitFor(
          "document.querySelector('#node-state .state').textContent.startsWith('off')",
          "the state shown as off",
        );
        // Reboot: through the power driver (a cycle), recorded with the dashboard as cause.
        await page.eval("document.getElementById('act-reboot').click()");
        await page.waitFor(
          "document.getElementById('action-result').textContent.startsWith('reboot: done')",
          "reboot result",
        );
        assert.match(await Deno.readTextFile(powerLog), /cycle dash-node-1/);
        assert.ok(
          listEvents(ctx.db, { mac: mac1 }).some((e) =>
            e.kind === "reboot" && e.detail.cause === "dashboard"
          ),
        );
        // Untrusted text stays text: the setting value, the event detail.
        const settingShown = await page.eval<string>(
          "document.querySelector('#settings tr[data-key=\"kernel.cmdline\"] td.value').textContent",
        );
        assert.equal(settingShown, evilSetting);
        const fatal = await page.eval<string>(
          "document.querySelector('#timeline tr[data-kind=\"init.fatal\"] td.detail').textContent",
        );
        assert.equal(fatal, JSON.stringify({ detail: evilDetail }));
        const nodeShot = await page.screenshot(join(shots, "node.png"));
        assert.ok(isPng(nodeShot), "the node page screenshot is a PNG");

        // A virtual node's console, read through the API: as plain text (colours removed), every
        // other control character shown as \xNN, as `node console` prints it to a file
        // (src/nodetext.ts). It removed every CSI and left an OSC's text, C1 controls raw.
        await page.eval(`location.hash = '#/node/${macVm}'`);
        await page.waitFor(
          "document.getElementById('console').textContent.includes('done')",
          "the console",
        );
        assert.equal(
          await page.eval("document.getElementById('console').textContent"),
          "login: <script>window.pwned='console'</script>red\n" +
            "\\x1b]0;owned\\x07\\x1b[2J\\x9b2J done\n[",
        );
        // The colour cut short is completed by the next read: removed whole, not shown in halves.
        await Deno.writeTextFile(join(ctx.data.vm(macVm), "console.log"), "2m  OK  \x1b[0m] up\n", {
          append: true,
        });
        await page.waitFor(
          "document.getElementById('console').textContent.includes('up')",
          "the console's next read",
        );
        assert.equal(
          await page.eval("document.getElementById('console').textContent"),
          "login: <script>window.pwned='console'</script>red\n" +
            "\\x1b]0;owned\\x07\\x1b[2J\\x9b2J done\n[  OK  ] up\n",
        );
        // A log that grew by 12 MiB of two-byte characters: each 1 MiB read is 524,288 characters,
        // and the page, which took fewer than 1,048,576 for "caught up", waited 2 s after each
        // (24 s to show the end); the server's size says how much is left to read.
        await Deno.writeTextFile(
          join(ctx.data.vm(macVm), "console.log"),
          "é".repeat(6 << 20) + "\ntail-end\n",
          { append: true },
        );
        await page.waitFor(
          "document.getElementById('console').textContent.includes('tail-end')",
          "the console's end, read without a wait between full reads",
          8000,
        );
        // The hostile name: shown as written, in the list and on its page.
        await page.eval(`location.hash = '#/node/${macEvil}'`);
        await page.waitFor(
          `document.getElementById('node-name').textContent === ${JSON.stringify(evilName)}`,
          "the hostile name as text",
        );
        await page.eval("location.hash = '#/'");
        await page.waitFor(
          `document.querySelector('#nodes tr[data-mac="${macEvil}"] a')?.textContent === ${
            JSON.stringify(evilName)
          }`,
          "the hostile name in the list",
        );
        assert.equal(await page.eval("typeof window.pwned"), "undefined", "nothing ran");
        assert.equal(await page.eval("document.querySelectorAll('img, main script').length"), 0);
        assert.deepEqual(page.errors, [], "no uncaught errors or CSP refusals in the page");

        // Logout ends the session on the server: the old cookie no longer acts.
        await page.eval("document.getElementById('logout').click()");
        await page.waitFor("!document.getElementById('login').hidden", "logged out");
        assert.equal((await page.cookies(base)).length, 0);
        const replay = await fetch(`${base}/api/v1/nodes/${mac1}/reboot`, {
          method: "POST",
          headers: { cookie: `netroot_session=${cookie.value}`, origin: base },
        });
        assert.equal(replay.status, 401);
        page.close();
        console.log(`screenshots: ${shots}`);
      } finally {
        await browser.close();
      }
    });
  },
});

Deno.test({
  name: "dashboard with --api-auth all: nothing shown before login; everything after",
  ignore: !haveChromium,
  async fn() {
    await withServer({ api: { auth: "all" } }, async (ctx, base) => {
      ctx.nodes.add("52:54:00:d4:5b:09", { name: "auth-node" });
      const browser = await Browser.launch();
      try {
        const page = await browser.page();
        await page.goto(`${base}/`);
        await page.waitFor(
          "document.getElementById('status').textContent.includes('log in')",
          "the login prompt",
        );
        assert.equal(await page.eval("document.getElementById('login').hidden"), false);
        assert.equal(await page.eval("document.getElementById('page-list').hidden"), true);
        assert.doesNotMatch(await page.eval<string>("document.body.textContent"), /auth-node/);
        await page.eval(`document.getElementById('login-token').value = '${ctx.token}';
          document.getElementById('login').requestSubmit()`);
        await page.waitFor(
          "document.querySelector('#nodes tr[data-mac=\"52:54:00:d4:5b:09\"]')",
          "the node after login",
        );
        // The live stream works with the cookie alone (EventSource sends no header).
        recordEvent(ctx.db, "52:54:00:d4:5b:09", "node.renamed", { from: "a", to: "b" });
        await page.waitFor(
          "document.querySelector('#nodes tr[data-mac=\"52:54:00:d4:5b:09\"]').textContent" +
            ".includes('node.renamed')",
          "the list refreshed by the stream",
          8000, // before the page's own 10 s refresh: the stream did it
        );
        assert.deepEqual(page.errors, []);
        page.close();
      } finally {
        await browser.close();
      }
    });
  },
});

Deno.test({
  name:
    "dashboard: a link with a malformed escape (#/node/%E0%A4%A) shows the overview, not 'loading…' for good (attacker)",
  ignore: !haveChromium,
  async fn() {
    await withServer({}, async (ctx, base) => {
      ctx.nodes.add("52:54:00:d4:5b:0a", { name: "link-node" });
      const browser = await Browser.launch();
      try {
        const page = await browser.page();
        await page.goto(`${base}/#/node/%E0%A4%A`);
        await page.waitFor(
          "document.querySelector('#nodes tr[data-mac=\"52:54:00:d4:5b:0a\"]')",
          "the overview",
        );
        assert.deepEqual(page.errors, []);
        page.close();
      } finally {
        await browser.close();
      }
    });
  },
});

Deno.test({
  name: "dashboard: after logout, the browser keeps nothing the session read (attacker)",
  ignore: !haveChromium,
  async fn() {
    await withServer({ api: { auth: "all" } }, async (ctx, base) => {
      // A virtual node's console shows its kernel command line, with its boot's token.
      ctx.nodes.add(macVm, { name: "vm-2", virtual: true });
      await Deno.mkdir(ctx.data.vm(macVm), { recursive: true });
      await Deno.writeTextFile(join(ctx.data.vm(macVm), "console.log"), "netroot.token=0123abcd\n");
      const browser = await Browser.launch();
      try {
        const page = await browser.page();
        await page.goto(`${base}/`);
        await page.eval(`document.getElementById('login-token').value = '${ctx.token}';
          document.getElementById('login').requestSubmit()`);
        await page.waitFor("!document.getElementById('logout').hidden", "logged in");
        await page.eval(`location.hash = '#/node/${macVm}'`);
        await page.waitFor(
          "document.getElementById('console').textContent.includes('netroot.token=')",
          "the console",
        );
        await page.eval("document.getElementById('logout').click()");
        await page.waitFor("!document.getElementById('login').hidden", "logged out");
        // The next user of this browser (a lab's shared machine) asks its cache for every API
        // answer the session read: the console, the node, the lists.
        const read = await page.eval<string[]>(
          "[...new Set(performance.getEntriesByType('resource').map((e) => e.name)" +
            ".filter((u) => new URL(u).pathname.startsWith('/api/v1/')))]",
        );
        assert.ok(read.some((u) => u.includes("/console")), `the console was read: ${read}`);
        for (const url of read) {
          const kept = await page.eval<string>(
            `fetch(${JSON.stringify(url)}, { cache: "only-if-cached", mode: "same-origin" })
              .then((r) => r.text(), () => "")`,
          );
          assert.equal(kept, "", `${url} is still in the browser's cache: ${kept}`);
        }
        assert.equal(
          (await fetch(`${base}/api/v1/nodes/${macVm}/console`)).status,
          401,
          "and the API itself answers no more",
        );
        page.close();
      } finally {
        await browser.close();
      }
    });
  },
});

Deno.test("dashboard sessions: login, cookie attributes, Origin checks, logout, auth modes", async () => {
  await withServer({ api: { auth: "all" } }, async (ctx, base) => {
    ctx.nodes.add(mac1, { name: "n1" });
    const login = (token: string, origin: string | null = base) =>
      fetch(`${base}/login`, {
        method: "POST",
        headers: {
          "content-type": "application/x-www-form-urlencoded",
          ...(origin ? { origin } : {}),
        },
        body: new URLSearchParams({ token }),
      });
    let r = await login("0".repeat(64));
    assert.equal(r.status, 401);
    assert.match((await r.json()).error, /wrong token/);
    assert.equal(r.headers.get("set-cookie"), null);
    r = await login(ctx.token + "x".repeat(100_000)); // read up to 4 KiB only
    assert.equal(r.status, 413);
    assert.match((await r.json()).error, /larger than 4096 bytes/);
    r = await login(ctx.token, "http://evil.example");
    assert.equal(r.status, 403, "a login posted from another site");
    await r.body?.cancel();
    // curl without Origin (an admin scripting the API): told to use the token instead
    r = await login(ctx.token, null);
    assert.equal(r.status, 403);
    assert.match((await r.json()).error, /scripts send Authorization: Bearer <token>/);
    r = await login(ctx.token);
    assert.equal(r.status, 200);
    await r.body?.cancel();
    const set = r.headers.get("set-cookie") ?? "";
    assert.match(
      set,
      /^netroot_session=[0-9a-f]{64}; Path=\/; Max-Age=43200; HttpOnly; SameSite=Strict$/,
    );
    const cookie = set.split(";")[0];

    // Reads need the token (api.auth all): the cookie stands for it; nothing else does.
    r = await fetch(`${base}/api/v1/nodes`);
    assert.equal(r.status, 401);
    await r.body?.cancel();
    r = await fetch(`${base}/api/v1/nodes`, { headers: { cookie } });
    assert.equal(r.status, 200);
    assert.equal((await r.json())[0].name, "n1");
    r = await fetch(`${base}/api/v1/nodes`, {
      headers: { cookie: "netroot_session=" + "a".repeat(64) },
    });
    assert.equal(r.status, 401, "a made-up session");
    await r.body?.cancel();
    // The console needs the token even for reads: the session carries it there too.
    r = await fetch(`${base}/api/v1/nodes/n1/console`, { headers: { cookie } });
    assert.equal(r.status, 404, "reached the route (a physical node has no console here)");
    await r.body?.cancel();

    // Writes with the cookie: only from this origin.
    const write = (headers: Record<string, string>) =>
      fetch(`${base}/api/v1/nodes/n1/config`, {
        method: "PATCH",
        headers: { cookie, "content-type": "application/json", ...headers },
        body: JSON.stringify({ "boot.retries": "5" }),
      });
    const origins: Record<string, string>[] = [{}, { origin: "http://evil.example" }, {
      origin: "null",
    }];
    for (const h of origins) {
      r = await write(h);
      assert.equal(r.status, 403, JSON.stringify(h));
      assert.match((await r.json()).error, /cross-origin/);
    }
    assert.equal(ctx.nodes.get("n1").settings["boot.retries"], undefined);
    r = await write({ origin: base });
    assert.equal(r.status, 200, await r.text());
    assert.equal(ctx.nodes.get("n1").settings["boot.retries"], "5");
    // The bearer token keeps working without any Origin (CLI, scripts).
    r = await fetch(`${base}/api/v1/nodes/n1/config`, {
      method: "PATCH",
      headers: { authorization: `Bearer ${ctx.token}` },
      body: JSON.stringify({ "boot.retries": "6" }),
    });
    assert.equal(r.status, 200);
    await r.body?.cancel();

    r = await fetch(`${base}/session`, { headers: { cookie } });
    assert.deepEqual(
      { ...await r.json(), expires: null },
      { loggedIn: true, expires: null, apiAuth: "all" },
    );
    r = await fetch(`${base}/logout`, { method: "POST", headers: { cookie, origin: base } });
    assert.match(r.headers.get("set-cookie") ?? "", /^netroot_session=; Path=\/; Max-Age=0;/);
    await r.body?.cancel();
    r = await fetch(`${base}/api/v1/nodes`, { headers: { cookie } });
    assert.equal(r.status, 401, "the session is gone on the server");
    await r.body?.cancel();

    // The page: no data in it, only its own script and style, no inline script allowed.
    r = await fetch(`${base}/`);
    const html = await r.text();
    assert.doesNotMatch(html, /n1|<script>/);
    assert.doesNotMatch(html, /(src|href)="(https?:)?\/\//, "no external assets");
    const csp = r.headers.get("content-security-policy") ?? "";
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self'(;|$)/);
    const js = await (await fetch(`${base}/dashboard.js`)).text();
    assert.doesNotMatch(js, /innerHTML|outerHTML|insertAdjacentHTML|document\.write/);
    assert.match((await fetch(`${base}/dashboard.css`)).headers.get("content-type")!, /text\/css/);
  });
});

Deno.test("sessions expire, and there are at most 256", () => {
  let now = 1_000_000;
  const s = new Sessions(() => now);
  const a = s.open();
  assert.equal(s.check(a.id), a.expires);
  now += sessionMaxAgeS * 1000 - 1;
  assert.equal(s.check(a.id), a.expires);
  now += 1;
  assert.equal(s.check(a.id), undefined, "expired");
  const ids = Array.from({ length: 300 }, () => s.open().id);
  assert.equal(s.size, 256);
  assert.equal(s.check(ids[0]), undefined, "the oldest gave way");
  assert.ok(s.check(ids[299]));
  assert.equal(s.check("not-hex"), undefined);
});

async function readUntil(reader: ReadableStreamDefaultReader<Uint8Array>, re: RegExp) {
  let text = "";
  const dec = new TextDecoder();
  const until = Date.now() + 10_000;
  while (!re.test(text)) {
    assert.ok(Date.now() < until, `timed out waiting for ${re} in ${text}`);
    const { value, done } = await reader.read();
    if (done) break;
    text += dec.decode(value);
  }
  return text;
}

Deno.test("event streams: live events from since, bounded count, released when clients go", async () => {
  await withServer({}, async (ctx, base) => {
    ctx.nodes.add(mac1, { name: "n1" });
    ctx.nodes.add(macVm, { name: "n2" });
    const first = listEvents(ctx.db, { mac: mac1 }).at(-1)!.id;
    const open = (query: string, signal?: AbortSignal) =>
      fetch(`${base}/api/v1/events?${query}`, { headers: { accept: "text/event-stream" }, signal });
    const ac = new AbortController();
    const r = await open(`mac=${mac1}&since=0`, ac.signal);
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type")!, /^text\/event-stream/);
    const reader = r.body!.getReader();
    let text = await readUntil(reader, new RegExp(`id: ${first}\n`));
    assert.match(text, /^retry: 3000\n\n/);
    assert.match(text, /"kind":"node.added"/);
    recordEvent(ctx.db, macVm, "node.renamed", { from: "x", to: "n2" }); // another node's
    recordEvent(ctx.db, mac1, "node.renamed", { from: "y", to: "n1" });
    text = await readUntil(reader, /"to":"n1"/);
    assert.doesNotMatch(text, /"to":"n2"/, "only the node asked for");
    const id = Number(/id: (\d+)\ndata: [^\n]*"to":"n1"/.exec(text)![1]);
    // Last-Event-ID (EventSource's reconnect) resumes after it.
    recordEvent(ctx.db, mac1, "node.config", { "boot.retries": "1" });
    const again = await fetch(`${base}/api/v1/events?mac=${mac1}`, {
      headers: { accept: "text/event-stream", "last-event-id": String(id) },
    });
    const againReader = again.body!.getReader();
    const resumed = await readUntil(againReader, /node\.config/);
    assert.doesNotMatch(resumed, /node\.renamed/);
    await againReader.cancel();
    ac.abort();
    await reader.cancel().catch(() => {});

    // 32 at once, 24 of them without the token; past either the next is refused; once clients
    // go, their streams are released.
    const auth = { accept: "text/event-stream", authorization: `Bearer ${ctx.token}` };
    const held = await Promise.all(
      Array.from({ length: 32 }, async (_, i) => {
        const c = new AbortController();
        const res = i < 24
          ? await open("", c.signal)
          : await fetch(`${base}/api/v1/events`, { headers: auth, signal: c.signal });
        assert.equal(res.status, 200);
        const rd = res.body!.getReader();
        await readUntil(rd, /retry/);
        return { c, rd };
      }),
    );
    for (
      const refused of [await open(""), await fetch(`${base}/api/v1/events`, { headers: auth })]
    ) {
      assert.equal(refused.status, 503);
      assert.match((await refused.json()).error, /too many event streams/);
    }
    for (const h of held) {
      h.c.abort();
      await h.rd.cancel().catch(() => {});
    }
    const until = Date.now() + 5000;
    let status = 0;
    while (Date.now() < until) {
      const res = await open("");
      status = res.status;
      await res.body?.cancel();
      if (status === 200) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 200, "streams are released when their clients go");
  });
});

Deno.test("event streams: a logout ends the live streams its session opened (attacker)", async () => {
  await withServer({ api: { auth: "all" } }, async (ctx, base) => {
    const login = await fetch(`${base}/login`, {
      method: "POST",
      headers: { origin: base },
      body: new URLSearchParams({ token: ctx.token }),
    });
    assert.equal(login.status, 200);
    await login.body?.cancel();
    const cookie = login.headers.get("set-cookie")!.split(";")[0];
    // The admin's other tab: a node page, live.
    const stream = await fetch(`${base}/api/v1/events`, {
      headers: { cookie, accept: "text/event-stream" },
    });
    assert.equal(stream.status, 200);
    const reader = stream.body!.getReader();
    await readUntil(reader, /retry/);
    const logout = await fetch(`${base}/logout`, {
      method: "POST",
      headers: { cookie, origin: base },
    });
    assert.equal(logout.status, 200);
    await logout.body?.cancel();
    // The lab goes on; the logged-out browser is told nothing of it.
    recordEvent(ctx.db, mac1, "node.config", { "kernel.cmdline": "after the logout" });
    const rest = await readUntil(reader, /after the logout/);
    assert.doesNotMatch(rest, /after the logout/, "an event after the logout reached the stream");
    // EventSource asks again, as what it is now: refused (reads need the token here).
    const again = await fetch(`${base}/api/v1/events`, {
      headers: { cookie, accept: "text/event-stream" },
    });
    assert.equal(again.status, 401);
    await again.body?.cancel();
  });
});

Deno.test("event streams end after their lifetime, and let go of a client that does not read", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-dash-sse-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  try {
    const limits = {
      maxStreams: 4,
      maxAnonymous: 4,
      anonymousPerAddress: 4,
      lifetimeMs: 300,
      heartbeatMs: 50,
      maxQueuedBytes: 64 * 1024,
    };
    const streams = eventStreams(ctx.db, limits);
    const short = streams.respond({});
    assert.equal(streams.open, 1);
    const t0 = Date.now();
    const body = await new Response(short.body).text(); // ends by itself
    assert.ok(Date.now() - t0 >= 250, "lived its lifetime");
    assert.match(body, /: keepalive\n\n/);
    assert.equal(streams.open, 0);

    const slow = streams.respond({ since: 0 }); // never read
    assert.equal(streams.open, 1);
    for (let i = 0; i < 400; i++) {
      recordEvent(ctx.db, mac1, "node.config", { pad: "x".repeat(512), i });
    }
    const until = Date.now() + 5000;
    while (streams.open && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    assert.equal(streams.open, 0, "a client that does not read is let go");
    await slow.body?.cancel().catch(() => {});
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve's close ends open event streams: an open dashboard does not hold a stop", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-dash-close-" });
  try {
    const cfg = defaultConfig();
    cfg.dataDir = dir;
    cfg.http = { host: "127.0.0.1", port: 0 };
    cfg.nfs.mode = "off";
    const server = await serve(cfg);
    const res = await fetch(
      `http://127.0.0.1:${server.http.port}/api/v1/events`,
      { headers: { accept: "text/event-stream" } },
    );
    const reader = res.body!.getReader();
    await readUntil(reader, /retry/);
    const t0 = Date.now();
    await server.close();
    assert.ok(Date.now() - t0 < 5000, `close took ${Date.now() - t0} ms`);
    const end = await reader.read().catch(() => ({ done: true }));
    assert.equal(end.done, true, "the stream ended");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("event streams: a neighbour without the token holding every stream does not lock out the admin (attacker)", async () => {
  await withServer({}, async (ctx, base) => {
    const open = (headers: Record<string, string> = {}) =>
      fetch(`${base}/api/v1/events`, { headers: { accept: "text/event-stream", ...headers } });
    // Reads are open by default: anyone on the boot network may open streams, as many as it may.
    const held: Response[] = [];
    for (let i = 0; i < 40; i++) {
      const r = await open();
      if (r.status !== 200) {
        assert.equal(r.status, 503);
        await r.body?.cancel();
        break;
      }
      held.push(r);
    }
    try {
      assert.ok(held.length < 32, `${held.length} anonymous streams: none left for the admin`);
      const r = await open({ authorization: `Bearer ${ctx.token}` });
      assert.equal(r.status, 200, "the admin's stream is refused");
      await r.body?.cancel();
    } finally {
      for (const r of held) await r.body?.cancel().catch(() => {});
    }
  });
});

Deno.test({
  name:
    "dashboard: the nodes the DHCP service registered on its own are marked (a look-alike MAC's squat shows)",
  ignore: !haveChromium,
  async fn() {
    await withServer({}, async (ctx, base) => {
      const squatter = "02:00:00:11:22:33";
      ctx.nodes.register(squatter, { via: "dhcp" });
      ctx.nodes.add("52:54:00:d4:5b:0b", { name: "by-hand" });
      const browser = await Browser.launch();
      try {
        const page = await browser.page();
        await page.goto(`${base}/`);
        const row = (mac: string) => `document.querySelector('#nodes tr[data-mac="${mac}"]')`;
        await page.waitFor(row(squatter), "the list");
        const mark = await page.eval<string | null>(
          `${row(squatter)}.querySelector('.auto-registered')?.title ?? null`,
        );
        assert.match(mark ?? "", /registered by DHCP .* check its MAC/);
        assert.equal(
          await page.eval(`${row("52:54:00:d4:5b:0b")}.querySelector('.auto-registered')`),
          null,
        );
        await page.goto(`${base}/#/node/${encodeURIComponent(squatter)}`);
        await page.waitFor(
          `document.querySelector('#node-facts tr[data-fact="added by"]')`,
          "the node page",
        );
        assert.match(
          await page.eval<string>(
            `document.querySelector('#node-facts tr[data-fact="added by"]').textContent`,
          ),
          /DHCP/,
        );
        assert.deepEqual(page.errors, []);
        page.close();
      } finally {
        await browser.close();
      }
    });
  },
});
