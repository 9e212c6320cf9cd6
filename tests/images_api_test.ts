// /api/v1/images through Hono's app.request, on a real store; and the `netroot image` CLI against
// a real HTTP server on loopback.
import assert from "node:assert/strict";
import type { Hono } from "hono";
import {
  assertStoreEmpty,
  buildSampleTree,
  dirEntries,
  imagesApp,
  rowCount,
  tarOf,
  tempStore,
} from "./images_helpers.ts";

const post = (app: Hono, body: unknown, ndjson = false) =>
  app.request("/api/v1/images", {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(ndjson ? { accept: "application/x-ndjson" } : {}),
    },
    body: JSON.stringify(body),
  });

Deno.test("images API: import (plain and NDJSON progress), list, show, rename, remove, errors", async () => {
  const t = await tempStore();
  try {
    const app = imagesApp(t);
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const tar = tarOf(src, `${t.dir}/x.tar`);

    // NDJSON: progress lines then the image
    const res = await post(app, { path: tar, name: "lab/deb:12" }, true);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type")!, /ndjson/);
    const lines = (await res.text()).trim().split("\n").map((l) => JSON.parse(l));
    const phases = new Set(lines.filter((l) => l.phase).map((l) => l.phase));
    assert.ok(
      phases.has("extract") && phases.has("scan") && phases.has("manifest"),
      [...phases].join(),
    );
    const last = lines.at(-1);
    assert.equal(last.image.name, "lab/deb:12");
    assert.equal(last.image.existed, false);
    const id = last.image.id;

    // plain JSON: same content again → 200 existed
    const again = await post(app, { path: tar, name: "copy" });
    assert.equal(again.status, 200);
    assert.deepEqual(
      (({ id, existed, name }) => ({ id, existed, name }))(await again.json()),
      { id, existed: true, name: "lab/deb:12" },
    );

    // errors known before any work get a real status, in both modes
    const early = await post(app, { path: `${t.dir}/nothing.tar`, name: "n" }, true);
    assert.equal(early.status, 400);
    assert.match((await early.json()).error, /no such file or directory/);
    // the same content into its own name: nothing new
    const same = await post(app, { path: tar, name: "lab/deb:12" });
    assert.equal(same.status, 200);
    assert.equal((await post(app, { path: "rel.tar", name: "n" })).status, 400);
    assert.equal((await post(app, { path: tar, name: "bad name" })).status, 400);
    const notJson = await app.request("/api/v1/images", { method: "POST", body: "{" });
    assert.equal(notJson.status, 400);

    // errors found mid-import arrive as a final {error} line
    Deno.writeFileSync(
      `${t.dir}/cut.tar.gz`,
      Deno.readFileSync(tarOf(src, `${t.dir}/y.tgz`, "gzip")).subarray(0, 300),
    );
    const mid = await post(app, { path: `${t.dir}/cut.tar.gz`, name: "cut" }, true);
    const midLines = (await mid.text()).trim().split("\n").map((l) => JSON.parse(l));
    assert.match(midLines.at(-1).error, /archive: .*cut\.tar\.gz/);

    const list = await (await app.request("/api/v1/images")).json();
    assert.deepEqual(list.map((i: { name: string }) => i.name), ["lab/deb:12"]);
    const shown = await app.request(`/api/v1/images/${encodeURIComponent("lab/deb:12")}`);
    assert.equal(shown.status, 200);
    assert.equal((await shown.json()).kernelVersion, "6.1.0-test");
    assert.equal((await app.request(`/api/v1/images/${id.slice(0, 10)}`)).status, 200);
    const missing = await app.request("/api/v1/images/nope");
    assert.equal(missing.status, 404);
    assert.deepEqual(await missing.json(), { error: "image nope not found" });

    const patch = (ref: string, name: unknown) =>
      app.request(`/api/v1/images/${encodeURIComponent(ref)}`, {
        method: "PATCH",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name }),
      });
    const renamed = await patch("lab/deb:12", "deb");
    assert.equal(renamed.status, 200);
    assert.equal((await renamed.json()).name, "deb");
    assert.equal((await patch("deb", "")).status, 400);

    t.db.prepare("INSERT INTO nodes (mac, name, image_id, created_at) VALUES (?, ?, ?, ?)")
      .run("52:54:00:00:00:09", "node-9", id, new Date().toISOString());
    const refused = await app.request("/api/v1/images/deb", { method: "DELETE" });
    assert.equal(refused.status, 409);
    assert.match((await refused.json()).error, /booted by node node-9/);
    t.db.prepare("DELETE FROM nodes").run();
    const del = await app.request("/api/v1/images/deb", { method: "DELETE" });
    assert.equal(del.status, 200);
    assert.deepEqual(await del.json(), { removed: id, name: "deb", versions: [id] });
    assert.equal(rowCount(t.db), 0);
  } finally {
    await t.close();
  }
});

Deno.test("images API: what reads or writes the server's files or runs a container is refused to other hosts", async () => {
  const t = await tempStore();
  try {
    const app = imagesApp(t);
    const from = (hostname: string) => ({
      remoteAddr: { transport: "tcp", hostname, port: 40000 },
    });
    // A directory of the server only root reads (its /etc, /root): imported from another host,
    // its files became an image the token holder deployed to a node and read there as root.
    const serverDir = `${t.dir}/root-only`;
    Deno.mkdirSync(serverDir, { mode: 0o700 });
    Deno.writeTextFileSync(`${serverDir}/shadow`, "root:$6$secret:19000::::::\n", { mode: 0o600 });
    const cases: [string, unknown][] = [
      // cp in read any file of the server as root into an image; a build's RUN has the server's
      // network (the API on 127.0.0.1: local) and COPY from a context of / shows any file.
      ["/-/cp", { sources: ["/etc/shadow"], image: "x", path: "/x" }],
      // An import or a node save's upper: a path the server reads as root, into an image.
      ["", { path: serverDir, name: "loot" }],
      ["/-/save", { node: "x", name: "loot", upper: `${serverDir}/shadow` }],
      ["/-/build", { name: "x", buildfile: "/etc/shadow", context: "/" }],
      ["/-/cp-out", { image: "x", path: "/x", dest: "/etc/x" }],
      ["/-/sessions", { image: "x" }],
    ];
    for (const [path, body] of cases) {
      const req = () =>
        new Request(`http://server/api/v1/images${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
      const far = await app.fetch(req(), from("192.0.2.7"));
      assert.equal(far.status, 400, path);
      assert.match(
        (await far.json()).error,
        /works on the server machine only \(this request came from 192\.0\.2\.7\)/,
        path,
      );
    }
    // From the server machine it gets past that check (and fails on the missing image).
    const near = await app.fetch(
      new Request("http://server/api/v1/images/-/cp", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(cases[0][1]),
      }),
      from("127.0.0.1"),
    );
    assert.match((await near.json()).error, /image x not found/);
    await assertStoreEmpty(t);
  } finally {
    await t.close();
  }
});

Deno.test("netroot image CLI: import with plain progress lines, ls, show, rename, rm; one-line errors", async () => {
  const t = await tempStore();
  const ac = new AbortController();
  try {
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
      imagesApp(t).fetch,
    );
    const url = `http://127.0.0.1:${server.addr.port}`;
    const main = new URL("../main.ts", import.meta.url).pathname;
    const cli = async (...args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", main, "image", ...args],
        cwd: t.dir, // PATH arguments are relative to the CLI's working directory
        env: { NETROOT_SERVER: url, NETROOT_TOKEN: "t", NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const d = new TextDecoder();
      return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
    };
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    tarOf(src, `${t.dir}/x.tar`);

    const imp = await cli("import", "x.tar", "--name", "deb");
    assert.equal(imp.code, 0, imp.stderr);
    assert.match(
      imp.stdout,
      /^imported deb \(id [0-9a-f]{12}\): \d+ files, .*\nbootable: yes \(kernel 6.1.0-test\)/,
    );
    assert.match(imp.stderr, /^extract +0%/m, "plain progress lines when not a terminal");
    assert.doesNotMatch(imp.stderr, /\r/);

    const again = await cli("import", `${t.dir}/x.tar`, "--name", "deb2");
    assert.match(again.stdout, /^already imported as deb \(id [0-9a-f]{12}\); nothing copied/);

    const ls = await cli("ls");
    assert.equal(ls.code, 0);
    assert.match(
      ls.stdout,
      /^NAME +ID +SIZE +UNIQUE +FILES +KERNEL +BOOTABLE +TREE +CREATED\ndeb +[0-9a-f]{12} .* 6\.1\.0-test +yes +yes /,
    );
    const lsJson = JSON.parse((await cli("ls", "--json")).stdout);
    assert.equal(lsJson[0].name, "deb");
    const show = await cli("show", "deb");
    assert.match(show.stdout, /kernel +\/boot\/vmlinuz-6\.1\.0-test/);
    assert.equal((await cli("rename", "deb", "lab/deb:12")).code, 0);
    assert.match((await cli("show", "lab/deb:12", "--json")).stdout, /"name": "lab\/deb:12"/);

    const bad = await cli("show", "nope");
    assert.equal(bad.code, 1);
    assert.equal(bad.stderr, "netroot image: image nope not found\n");
    const badImport = await cli("import", `${t.dir}/missing.tar`, "--name", "m");
    assert.equal(badImport.code, 1);
    assert.equal(badImport.stderr.trim().split("\n").length, 1);
    assert.match(badImport.stderr, /missing\.tar: no such file or directory/);
    assert.equal((await cli("import", "x.tar")).code, 1); // no --name
    assert.match((await cli("rm", "--help")).stdout, /^usage: netroot image rm IMAGE/);

    const rm = await cli("rm", "lab/deb:12");
    assert.match(rm.stdout, /^removed lab\/deb:12 \(id [0-9a-f]{12}\)/);
    assert.equal(rowCount(t.db), 0);
  } finally {
    ac.abort();
    await t.close();
  }
});

Deno.test("a client that goes away cancels its import: tar killed, nothing left", async () => {
  const t = await tempStore();
  try {
    const app = imagesApp(t);
    const src = `${t.dir}/src`;
    Deno.mkdirSync(src);
    const chunk = new Uint8Array(1 << 20);
    for (let i = 0; i < 80; i++) {
      for (let o = 0; o < chunk.length; o += 65536) {
        crypto.getRandomValues(chunk.subarray(o, o + 65536));
      }
      Deno.writeFileSync(`${src}/f${i}`, chunk);
    }
    const tar = tarOf(src, `${t.dir}/big.tar`);
    const res = await post(app, { path: tar, name: "big" }, true);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    const { value } = await reader.read();
    assert.equal(JSON.parse(value!.split("\n")[0]).phase, "extract");
    await reader.cancel();
    // the cancelled import cleans up after itself
    for (let i = 0; i < 100 && (await dirEntries(t.data.tmp)).length; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    await assertStoreEmpty(t);
  } finally {
    await t.close();
  }
});
