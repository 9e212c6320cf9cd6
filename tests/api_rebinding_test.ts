// DNS rebinding (attacker): a page of another site, open in a browser on the server machine or in
// the lab, makes its own name resolve to the server's address. Its requests then go to netroot,
// same-origin to the page, with `Host: <the attacker's name>` and without the admin's session
// (the cookie belongs to the server's own name). Without the token or a session, nothing the page
// could read is answered under such a name: not the open API reads, and not a node's boot script,
// which hands a per-boot token to loopback (unchecked, for the admin looking at it by hand).
import assert from "node:assert/strict";
import { defaultConfig, type ServerConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { buildApp, closeContext, openContext } from "../src/server.ts";
import { addImage } from "./support/images.ts";
import { Browser, haveChromium } from "./support/cdp.ts";
import { lastBootByMac } from "../src/boots.ts";

const mac = "52:54:00:eb:1d:01";
const script = `/boot/${mac.replaceAll(":", "-")}.ipxe`;
const loopback = {
  remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 40000 },
  completed: Promise.resolve(),
};

async function withApp(
  config: Partial<ServerConfig>,
  fn: (
    ctx: Context,
    get: (host: string, path: string, headers?: Record<string, string>) => Promise<Response>,
    app: ReturnType<typeof buildApp>,
  ) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nr-api-rebind-" });
  const ctx = await openContext({ ...defaultConfig(), ...config, dataDir: dir });
  const image = addImage(ctx, "img");
  ctx.db.prepare("UPDATE images SET kernel = '/vmlinuz', initrd = '/initrd.img' WHERE id = ?")
    .run(image);
  ctx.nodes.add(mac, { name: "pc1", image: "img" });
  ctx.nodes.configure("pc1", { initramfs: "image" }); // no initramfs build here
  const app = buildApp(ctx);
  try {
    await fn(ctx, async (host, path, headers = {}) =>
      await app.fetch(
        new Request(`http://127.0.0.1:8080${path}`, { headers: { host, ...headers } }),
        loopback,
      ), app);
  } finally {
    ctx.changes.dispatchEvent(new Event("closing"));
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("DNS rebinding: under another site's name, no open read and no boot script without the token (attacker)", async () => {
  await withApp({}, async (ctx, get, app) => {
    const evil = "rebind.attacker.example:8080";
    for (const path of ["/api/v1/nodes", "/api/v1/nodes/pc1", "/api/v1/events", "/api/v1"]) {
      const r = await get(evil, path);
      assert.equal(r.status, 403, `${path} answered ${r.status} under ${evil}`);
      assert.match((await r.json()).error, /rebind.attacker.example.*DNS rebinding/);
    }
    const stream = await get(evil, "/api/v1/events", { accept: "text/event-stream" });
    assert.equal(stream.status, 403, "a live stream under the attacker's name");
    await stream.body?.cancel();
    const s = await get(evil, script);
    const text = await s.text();
    assert.equal(s.status, 403, "the boot script (and its token) under the attacker's name");
    assert.doesNotMatch(text, /netroot\.token=/);
    assert.match(text, /DNS rebinding/);

    // What names this server is still answered: its addresses, localhost, its own name.
    for (
      const host of ["127.0.0.1:8080", "10.77.0.1", "[::1]:8080", "localhost:8080", Deno.hostname()]
    ) {
      const r = await get(host, "/api/v1/nodes");
      assert.equal(r.status, 200, `${host}: ${r.status}`);
      assert.equal((await r.json())[0].name, "pc1");
    }
    const ok = await get("127.0.0.1:8080", script);
    assert.match(await ok.text(), /netroot\.token=[0-9a-f]+/, "the admin's own look at a script");
    // Whoever has the token (the CLI, a script through a TLS proxy's name) is answered anywhere.
    const cli = await get(evil, "/api/v1/nodes", { authorization: `Bearer ${ctx.token}` });
    assert.equal(cli.status, 200);
    await cli.body?.cancel();
    // A Host that is not a plain name or address is no known name.
    for (
      const host of ["127.0.0.1@rebind.attacker.example", "evil.example/x", "127.0.0.1.nip.io"]
    ) {
      const r = await get(host, "/api/v1/nodes");
      assert.equal(r.status, 403, host);
      await r.body?.cancel();
    }
    // From elsewhere, /boot is its own judge (a script only at the node's MAC and address), under
    // any name: a node's firmware may well be told one.
    ctx.nodes.setIp(mac, "10.77.0.42");
    const neighbour = await app.fetch(
      new Request(`http://10.77.0.1:8080${script}`, { headers: { host: evil } }),
      { ...loopback, remoteAddr: { ...loopback.remoteAddr, hostname: "10.77.0.66" } },
    );
    const refusal = await neighbour.text();
    assert.equal(neighbour.status, 200, refusal);
    assert.match(refusal, /^#!ipxe\n/);
    assert.doesNotMatch(refusal, /DNS rebinding|netroot\.token=/);
    // Counts only, the page and the login stay open under any name (a scraper's, the admin's).
    for (const path of ["/metrics", "/", "/session"]) {
      const r = await get(evil, path);
      assert.equal(r.status, 200, path);
      await r.body?.cancel();
    }
  });
});

Deno.test("DNS rebinding: an admin who reaches the server by a name logs in, then reads and acts with the session", async () => {
  await withApp({}, async (_ctx, get, app) => {
    const name = "netroot.lab.example:8080";
    const login = await app.fetch(
      new Request("http://127.0.0.1:8080/login", {
        method: "POST",
        headers: {
          host: name,
          origin: `http://${name}`,
          "content-type": "application/x-www-form-urlencoded",
        },
        body: new URLSearchParams({ token: _ctx.token }),
      }),
      loopback,
    );
    assert.equal(login.status, 200);
    await login.body?.cancel();
    const cookie = (login.headers.get("set-cookie") ?? "").split(";")[0];
    const r = await get(name, "/api/v1/nodes", { cookie });
    assert.equal(r.status, 200, "the session stands for the token under the server's name");
    await r.body?.cancel();
  });
});

Deno.test("DNS rebinding: the Host a real client sends is the one checked", async () => {
  await withApp({}, async (_ctx, _get, app) => {
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
    try {
      const ask = async (host: string) => {
        const c = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
        await c.write(
          new TextEncoder().encode(
            `GET /api/v1/nodes HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
          ),
        );
        const answer = await new Response(c.readable).text();
        return Number(/^HTTP\/1\.1 (\d+)/.exec(answer)![1]);
      };
      assert.equal(await ask(`rebind.attacker.example:${server.addr.port}`), 403);
      assert.equal(await ask(`127.0.0.1:${server.addr.port}`), 200);
    } finally {
      await server.shutdown();
    }
  });
});

// Another site's page open in a browser on the server machine asks for a node's boot script at
// 127.0.0.1 (an <img>: no rebinding, the server's own address). It cannot read the answer, but
// the fetch is made: from loopback, which the MAC and address check skips, it opened a boot and
// marked the node booting (the watchdog then reboots a node that does not answer its probe), for
// any node, one with its address fixed included. The browser names whose page asked
// (Sec-Fetch-Site); the admin typing the URL ("none") and curl (no such header) are answered.
Deno.test({
  name:
    "boot script: another site's page in a browser on the server machine opens no boot (attacker, chromium)",
  ignore: !haveChromium,
  async fn() {
    await withApp({}, async (ctx, _get, app) => {
      ctx.nodes.setIp(mac, "10.77.0.42");
      ctx.nodes.setState(mac, "booted", "port 22 answered");
      const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
      const url = `http://127.0.0.1:${server.addr.port}${script}`;
      // The other site: its own origin on another loopback address.
      const page = `<!doctype html><img src="${url}"><script>
        fetch(${JSON.stringify(url)}, { mode: "no-cors" }).finally(() => document.title = "done");
        </script>`;
      const site = Deno.serve(
        { hostname: "127.0.0.2", port: 0, onListen: () => {} },
        () => new Response(page, { headers: { "content-type": "text/html" } }),
      );
      const browser = await Browser.launch();
      try {
        const tab = await browser.page();
        await tab.goto(`http://127.0.0.2:${site.addr.port}/`);
        await tab.waitFor("document.title === 'done'", "the page's requests");
        assert.equal(ctx.nodes.get(mac).state, "booted", "the node was marked booting");
        assert.equal(lastBootByMac(ctx.db).get(mac), undefined, "a boot (and its token) opened");
        // The admin's own look, typed in the address bar, is answered.
        await tab.goto(url);
        assert.match(await tab.eval<string>("document.body.textContent"), /netroot\.token=/);
      } finally {
        await browser.close();
        await site.shutdown();
        await server.shutdown();
      }
      // And curl's (no Sec-Fetch-Site).
      const curl = await app.fetch(new Request(`http://127.0.0.1:8080${script}`), loopback);
      assert.match(await curl.text(), /netroot\.token=/);
    });
  },
});
