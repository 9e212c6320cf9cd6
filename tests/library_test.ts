// The library entries as another TypeScript program uses them: mod.ts embeds the server (temp
// data dir, loopback, port 0) and drives its registry; node.ts gives the init and reaches no
// server code (a bundle of it stays node-only).
import assert from "node:assert/strict";
import { importGraph } from "./support/importgraph.ts";
import { join } from "node:path";
import * as netroot from "../mod.ts";
import * as node from "../node.ts";

Deno.test("mod.ts: serve on a temp data dir on loopback, register a node, see it, stop", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-lib-" });
  try {
    const config: netroot.ServerConfig = {
      ...netroot.defaultConfig(),
      dataDir: join(dir, "data"),
      http: { host: "127.0.0.1", port: 0 },
    };
    const server = await netroot.serve(config);
    const base = `http://127.0.0.1:${server.http.port}/api/v1`;
    let closed = false;
    try {
      assert.equal((await (await fetch(`${base}/health`)).json()).ok, true);
      const info = server.ctx.nodes.add(netroot.normalizeMac("52-54-00-AA-BB-01"), { name: "n1" });
      assert.equal(info.mac, "52:54:00:aa:bb:01");
      const nodes = await (await fetch(`${base}/nodes`)).json() as { name: string }[];
      assert.deepEqual(nodes.map((n) => n.name), ["n1"]);
      assert.ok(netroot.listEvents(server.ctx.db).some((e) => e.kind === "server.start"));
      await server.close();
      closed = true;
      await assert.rejects(fetch(`${base}/health`), "the port is closed after close()");
    } finally {
      if (!closed) await server.close();
    }
    // The state outlives the server: a second embedding opens it with the node in it.
    const ctx = await netroot.openContext(config);
    try {
      assert.equal(ctx.nodes.get("n1").mac, "52:54:00:aa:bb:01");
      const res = await netroot.buildApp(ctx).request("/api/v1/nodes/n1");
      assert.equal(res.status, 200);
    } finally {
      await netroot.closeContext(ctx);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mod.ts: plugins add an API route, a node setting and a power driver to one server", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-lib-" });
  const switched: string[] = [];
  const act = (what: string) => (t: netroot.PowerTarget) => {
    switched.push(`${what} ${t.settings["relay.channel"]}`);
    return Promise.resolve();
  };
  const relay: netroot.PowerDriver = {
    name: "relay",
    on: act("on"),
    off: act("off"),
    cycle: act("cycle"),
    status: () => Promise.resolve("on"),
  };
  const plugins: netroot.Plugins = {
    apiRoutes: [{
      path: "/relays",
      routes: (ctx) =>
        netroot.apiRouter().get("/", (c) => c.json({ nodes: ctx.nodes.list().length })),
    }],
    settings: [{
      key: "relay.channel",
      check: (key, value) => {
        if (!/^\d+$/.test(value)) throw new Error(`${key} must be a number`);
        return value;
      },
    }],
    powerDrivers: [relay],
  };
  const server = await netroot.serve({
    ...netroot.defaultConfig(),
    dataDir: join(dir, "data"),
    http: { host: "127.0.0.1", port: 0 },
  }, plugins);
  try {
    const base = `http://127.0.0.1:${server.http.port}/api/v1`;
    const auth = { authorization: `Bearer ${server.ctx.token}` };
    server.ctx.nodes.add("52:54:00:aa:bb:02", { name: "n2" });
    assert.deepEqual(await (await fetch(`${base}/relays`)).json(), { nodes: 1 });
    const set = await fetch(`${base}/nodes/n2/config`, {
      method: "PATCH",
      headers: auth,
      body: JSON.stringify({ "power.driver": "relay", "relay.channel": "3" }),
    });
    assert.equal(set.status, 200, await set.clone().text());
    const power = await fetch(`${base}/nodes/n2/power`, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({ action: "cycle" }),
    });
    assert.equal(power.status, 200, await power.clone().text());
    assert.equal((await power.json()).driver, "relay");
    assert.deepEqual(switched, ["cycle 3"]);
    // Writes under a plugin's path need the token like any other.
    assert.equal((await fetch(`${base}/relays`, { method: "POST" })).status, 401);
  } finally {
    await server.close();
  }
  // Another server without the plugins knows none of it.
  const other = await netroot.openContext({ ...netroot.defaultConfig(), dataDir: dir });
  try {
    other.nodes.add("52:54:00:aa:bb:03", { name: "n3" });
    assert.throws(() => other.nodes.configure("n3", { "relay.channel": "3" }), /unknown setting/);
    assert.throws(() => other.nodes.configure("n3", { "power.driver": "relay" }), /power.driver/);
  } finally {
    await netroot.closeContext(other);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("node.ts: the init refuses to run outside PID 1", async () => {
  assert.equal(typeof node.boot, "function");
  assert.equal(typeof node.tryHybridBoot, "function");
  const err = console.error;
  const said: string[] = [];
  console.error = (...a: unknown[]) => said.push(a.join(" "));
  try {
    assert.equal(await node.runInit([]), 2);
  } finally {
    console.error = err;
  }
  assert.match(said.join("\n"), /not PID 1/);
});

Deno.test("node.ts reaches no server module (database, HTTP framework, server, API)", async () => {
  const mods = (await importGraph("node.ts")).map((m) => `/${m.file}`);
  assert.ok(mods.some((m) => m.endsWith("/overlay/init.ts")));
  const server = mods.filter((m) =>
    /hono|node:sqlite|\/src\/(server|db|api|nodes|nfs|dashboard|events)\.ts$|\/netboot\//.test(m)
  );
  assert.deepEqual(server, []);
});
