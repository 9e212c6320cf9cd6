// The REST API over real HTTP (Deno.serve on a loopback port 0) against a real data dir.
import { addImage } from "./support/images.ts";
import assert from "node:assert/strict";
import { readlinkSync } from "node:fs";
import { join } from "node:path";
import { Hono } from "hono";
import { type ApiRoute, loadOrCreateToken } from "../src/api.ts";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { buildApp, closeContext, openContext } from "../src/server.ts";
import { manifestText } from "../contract/manifest.ts";

// An embedder's router (plugins.apiRoutes), mounted next to the built-in /nodes routes.
const extension: ApiRoute = {
  path: "/nodes",
  routes: (ctx) =>
    new Hono().get("/:ref/test-extension", (c) => {
      const n = ctx.nodes.get(c.req.param("ref"));
      return c.json({ text: `extension sees ${n.name}` });
    }),
};

interface Api {
  ctx: Context;
  call(method: string, path: string, body?: unknown, token?: string | null): Promise<{
    status: number;
    json: Record<string, unknown> & Record<string, unknown>[];
  }>;
}

async function withApi(fn: (api: Api) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nr-api-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    buildApp(ctx, { apiRoutes: [extension] }).fetch,
  );
  const base = `http://127.0.0.1:${server.addr.port}/api/v1`;
  try {
    await fn({
      ctx,
      async call(method, path, body, token = ctx.token) {
        const res = await fetch(base + path, {
          method,
          headers: token ? { authorization: `Bearer ${token}` } : {},
          body: body === undefined
            ? undefined
            : typeof body === "string"
            ? body
            : JSON.stringify(body),
        });
        assert.match(res.headers.get("content-type") ?? "", /application\/json/);
        return { status: res.status, json: await res.json() };
      },
    });
  } finally {
    await server.shutdown();
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("token: 64 hex chars, mode 0600, stable, rewritten when malformed or too open", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-api-" });
  try {
    const path = join(dir, "token");
    const t = await loadOrCreateToken(path);
    assert.match(t, /^[0-9a-f]{64}$/);
    assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);
    assert.equal(await loadOrCreateToken(path), t);
    Deno.chmodSync(path, 0o644);
    assert.equal(await loadOrCreateToken(path), t);
    assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);
    Deno.writeTextFileSync(path, "");
    const t2 = await loadOrCreateToken(path);
    assert.match(t2, /^[0-9a-f]{64}$/);
    assert.notEqual(t2, t);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["token"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("API: health, auth, node CRUD, config, deploy, events, errors", () =>
  withApi(async ({ ctx, call }) => {
    const health = await call("GET", "/health", undefined, null);
    assert.equal(health.status, 200);
    assert.equal(health.json.ok, true);

    // Writes need the token; reads do not.
    const mac = "52:54:00:12:34:56";
    assert.equal((await call("POST", "/nodes", { mac }, null)).status, 401);
    assert.equal((await call("POST", "/nodes", { mac }, "0".repeat(64))).status, 401);
    assert.equal((await call("GET", "/nodes", undefined, null)).status, 200);

    const created = await call("POST", "/nodes", { mac: "52-54-00-12-34-56", name: "alpha" });
    assert.equal(created.status, 201);
    assert.equal(created.json.mac, mac);
    assert.equal((await call("POST", "/nodes", { mac })).status, 409);
    assert.equal((await call("POST", "/nodes", { mac: "zz" })).status, 400);
    assert.equal((await call("POST", "/nodes", { name: "x" })).status, 400);
    assert.equal((await call("POST", "/nodes", { mac: 5 })).status, 400);
    const bad = await call("POST", "/nodes", "{not json");
    assert.equal(bad.status, 400);
    assert.match(String(bad.json.error), /not valid JSON/);
    assert.equal((await call("POST", "/nodes", "[1]")).status, 400);
    assert.equal(
      (await call("POST", "/nodes", { mac: "52:54:00:00:00:02", name: "beta" })).status,
      201,
    );

    const list = await call("GET", "/nodes");
    assert.deepEqual(list.json.map((n) => n.name), ["alpha", "beta"]);
    assert.deepEqual((list.json[0].lastEvent as { kind: string }).kind, "node.added");

    assert.equal((await call("GET", "/nodes/alpha")).json.mac, mac);
    assert.equal((await call("GET", "/nodes/525400123456")).json.name, "alpha");
    const missing = await call("GET", "/nodes/ghost");
    assert.equal(missing.status, 404);
    assert.equal(missing.json.error, "node ghost not found");

    assert.equal((await call("PATCH", "/nodes/alpha", { name: "gamma" })).json.name, "gamma");
    assert.equal((await call("PATCH", "/nodes/gamma", { name: "beta" })).status, 409);
    assert.equal((await call("PATCH", "/nodes/gamma", { model: "x" })).status, 400);

    const cfg = await call("PATCH", "/nodes/gamma/config", { "nfs.timeout": "90" });
    assert.deepEqual(cfg.json.settings, { "nfs.timeout": "90" });
    assert.equal((await call("PATCH", "/nodes/gamma/config", { "boot.mode": "x" })).status, 400);
    assert.equal((await call("PATCH", "/nodes/gamma/config", { "nfs.timeout": 90 })).status, 400);
    assert.deepEqual(
      (await call("PATCH", "/nodes/gamma/config", { "nfs.timeout": null })).json.settings,
      {},
    );

    const img = addImage(ctx, "debian");
    addImage(ctx, "junk", false);
    const dep = await call("POST", "/deploy", { nodes: ["gamma", "beta"], image: "debian" });
    assert.equal(dep.status, 200);
    assert.deepEqual((dep.json.nodes as { imageId: string }[]).map((n) => n.imageId), [img, img]);
    assert.equal((dep.json.reboots as { ok: boolean }[]).length, 2);
    assert.equal(readlinkSync(ctx.data.nodeFs(mac)), `../../images/${img}/rootfs`);
    assert.equal((await call("POST", "/deploy", { nodes: ["gamma"], image: "junk" })).status, 400);
    assert.equal(
      (await call("POST", "/deploy", { nodes: ["ghost"], image: "debian" })).status,
      404,
    );
    assert.equal((await call("POST", "/deploy", { nodes: "gamma", image: "debian" })).status, 400);
    assert.equal((await call("POST", "/deploy", { nodes: ["gamma"] })).status, 400);
    assert.equal(
      (await call("POST", "/deploy", { nodes: ["gamma"], image: "x" }, null)).status,
      401,
    );

    const reboot = await call("POST", "/nodes/gamma/reboot", { cause: "test" });
    assert.equal(reboot.status, 200);
    assert.equal(reboot.json.ok, false);
    assert.match(String(reboot.json.message), /no reboot mechanism/);

    const timeline = await call("GET", "/nodes/gamma/events");
    const kinds = timeline.json.map((e) => e.kind);
    assert.deepEqual(kinds, [
      "node.added",
      "node.renamed",
      "node.config",
      "node.config",
      "deploy",
      "reboot.none",
      "reboot.none",
    ]);
    const lastId = timeline.json[4].id as number;
    const since = await call("GET", `/events?mac=${mac}&since=${lastId}`);
    assert.deepEqual(since.json.map((e) => e.kind), ["reboot.none", "reboot.none"]);
    assert.equal((await call("GET", "/events?limit=1")).json.length, 1);
    assert.equal((await call("GET", "/events?limit=abc")).status, 400);

    // The extension hook added a route.
    const ext = await call("GET", "/nodes/gamma/test-extension");
    assert.equal(ext.json.text, "extension sees gamma");

    const del = await call("DELETE", "/nodes/gamma");
    assert.deepEqual(del.json, { forgotten: mac, name: "gamma" });
    assert.equal((await call("DELETE", "/nodes/gamma")).status, 404);
    // The timeline of a forgotten node stays readable by MAC.
    assert.equal((await call("GET", `/nodes/${mac}/events`)).json.at(-1)!.kind, "node.forgotten");

    const none = await call("GET", "/nope");
    assert.equal(none.status, 404);
    assert.match(String(none.json.error), /no such API route: GET/);
    assert.equal((await call("GET", "/health")).json.nodes, 1);
  }));

// A neighbour on the boot network (reads are open by default) asks for diffs between the lab's
// images. Each read both manifests and compared them on the server's only thread — measured, two
// images of 400,000 files: 4.4 s a request, one after the other, DHCP, TFTP and every boot waiting
// — and kept its answer (16 MB) for a client that need not read it.
Deno.test("API: an image diff needs the token, even to read (attacker)", () =>
  withApi(async ({ ctx, call }) => {
    const manifest = (paths: string[]) =>
      manifestText(paths.map((path) => ({
        path,
        type: "file",
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 0,
        sha256: "0".repeat(64),
      })));
    Deno.writeTextFileSync(ctx.data.manifest(addImage(ctx, "old")), manifest(["/a", "/b"]));
    Deno.writeTextFileSync(ctx.data.manifest(addImage(ctx, "new")), manifest(["/b", "/c"]));
    const neighbour = await call("GET", "/images/-/diff?a=old&b=new", undefined, null);
    assert.equal(neighbour.status, 401);
    assert.match(String(neighbour.json.error), /missing or wrong API token/);
    // Other reads of images stay open.
    assert.equal((await call("GET", "/images/old", undefined, null)).status, 200);
    const admin = await call("GET", "/images/-/diff?a=old&b=new");
    assert.equal(admin.status, 200);
    assert.deepEqual(admin.json, { added: ["/c"], removed: ["/a"], changed: [] });
  }));

// A neighbour (a wait is an open read) names one node thousands of times in a wait's query: by
// name, and by its MAC in any of the spellings the API takes. Each wait held an entry per ref for
// up to its minute, and answered with as many: one node named 30,000 times in a 60 KB query, 64
// waits from one address held 326 MB of the server.
Deno.test("API: a wait lists each node once, however many times its query names it (attacker)", () =>
  withApi(async ({ ctx, call }) => {
    ctx.nodes.add("52:54:00:aa:00:01", { name: "a" });
    const refs = [
      ...Array(5000).fill("a"),
      ...Array(1000).fill("525400AA0001"),
      ...Array(1000).fill("52-54-00-aa-00-01"),
    ];
    const r = await call(
      "GET",
      `/wait?nodes=${refs.join(",")}&state=booted&timeout=0`,
      undefined,
      null,
    );
    assert.equal(r.status, 200);
    const answer = r.json as unknown as { reached: boolean; nodes: unknown[]; laggards: string[] };
    assert.equal(answer.reached, false);
    assert.equal(answer.nodes.length, 1);
    assert.deepEqual(answer.laggards, ["a"]);
    // Unknown refs are still all named.
    const missing = await call("GET", "/wait?nodes=a,ghost,a,phantom", undefined, null);
    assert.equal(missing.status, 404);
    assert.match(String(missing.json.error), /nodes ghost, phantom/);
  }));
