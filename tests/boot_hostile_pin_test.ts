// `?image=` on a boot file pins the kernel and initramfs to the version the node's script named
// (a deploy may land between the two downloads). Anyone on the boot network may claim a node's
// MAC and fetch its files; before, the pin was any version id or image name, so a neighbour read
// every image's manifest (every file's name, owner, mode, sha256 and xattrs), kernel and initrd,
// images deployed to no node, or to another user's nodes, included. Now a pin is taken only for a
// version netroot gave that node: its current one, or one a boot was opened for.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Hono } from "hono";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { bootRoutes } from "../netboot/http.ts";
import { contextBooter } from "../src/boot/booter.ts";
import { setLogSink } from "../src/log.ts";
import { buildSampleTree } from "./images_helpers.ts";

setLogSink(() => {});

Deno.test("boot files: ?image= pins only a version the node was given, never another image (attacker)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-boot-pin-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: join(dir, "data") });
  try {
    const app = new Hono().route("/boot", bootRoutes(contextBooter(ctx)));
    const env = { remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 } };
    const image = async (name: string) => {
      const tree = join(dir, name);
      buildSampleTree(tree);
      Deno.writeTextFileSync(join(tree, "etc/hostname"), `${name}\n`);
      return (await ctx.images.import(tree, name)).id;
    };
    const mine = await image("mine");
    const secret = await image("secret"); // deployed to no node
    const mac = "52:54:00:f1:02:01";
    ctx.nodes.add(mac, { image: "mine" });
    ctx.nodes.configure(mac, { initramfs: "image" }); // the image's own: no initramfs build
    const get = (q: string) => app.request(`/boot/${mac}/manifest${q}`, {}, env);

    // The node's own version, pinned or not: its manifest.
    for (const q of ["", `?image=${mine}`]) {
      const r = await get(q);
      assert.equal(r.status, 200, q);
      assert.match(await r.text(), /^netroot-manifest 1\n/);
    }
    // Another image, by version or by name: refused, nothing of it sent.
    for (const q of [`?image=${secret}`, "?image=secret", `?image=${"e".repeat(64)}`]) {
      const r = await get(q);
      assert.equal(r.status, 404, q);
      const body = await r.text();
      assert.doesNotMatch(body, /netroot-manifest/, q);
      assert.match(body, /not a version node node-f10201 was given/, q);
    }
    for (const kind of ["kernel", "initramfs"]) {
      const r = await app.request(`/boot/${mac}/${kind}?image=${secret}`, {}, env);
      assert.equal(r.status, 404, kind);
      assert.doesNotMatch(await r.text(), /kernel image|initrd/, kind);
      const own = await app.request(`/boot/${mac}/${kind}?image=${mine}`, {}, env);
      assert.equal(own.status, 200, kind);
      await own.body?.cancel();
    }

    // A deploy lands between the script and the downloads: the boot's version stays fetchable.
    const script = await (await app.request(`/boot/${mac}.ipxe`, {}, env)).text();
    assert.ok(script.includes(`?image=${mine}`), script);
    await ctx.nodes.deploy([mac], "secret", { reboot: false });
    assert.equal((await get(`?image=${mine}`)).status, 200);
    assert.equal((await get(`?image=${secret}`)).status, 200); // its current one now
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});
