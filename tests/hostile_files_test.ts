// File modes of the data dir: the database (and its WAL), the API token, each node's /persist and a
// virtual node's files are the server's alone — checked as another local user (nobody) would try
// them, on a fresh data dir and on one an older version left world-readable.
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { recordEvent } from "../src/events.ts";
import { closeContext, openContext } from "../src/server.ts";

const isRoot = Deno.uid() === 0;
const mode = (p: string) => (Deno.statSync(p).mode ?? 0) & 0o7777;

/** What user nobody can read of `paths` (files: read, directories: list). */
async function readableByNobody(paths: string[]): Promise<string[]> {
  const script = 'for p; do if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && echo "$p"; ' +
    'else head -c1 "$p" >/dev/null 2>&1 && echo "$p"; fi; done';
  const out = await new Deno.Command("setpriv", {
    args: ["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script, "sh", ...paths],
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean);
}

Deno.test({
  name: "data dir: db, WAL, token, persist and vm dirs are root's only (fresh and upgraded)",
  ignore: !isRoot,
  async fn() {
    const parent = await Deno.makeTempDir({ prefix: "nr-modes-" });
    chmodSync(parent, 0o755); // so that only the data dir's own modes stand in nobody's way
    assert.deepEqual(await readableByNobody(["/etc/passwd", "/"]), ["/etc/passwd", "/"]); // the probe works
    try {
      for (const upgraded of [false, true]) {
        const data = join(parent, upgraded ? "old" : "fresh");
        const mac = "52:54:00:00:0f:01";
        if (upgraded) {
          // What an older version left: everything at the umask's 0755/0644.
          for (const d of ["", "nodes", `nodes/${mac}/persist`, `nodes/${mac}/vm`]) {
            mkdirSync(join(data, d), { recursive: true, mode: 0o755 });
            chmodSync(join(data, d), 0o755);
          }
          writeFileSync(join(data, "netroot.db"), new Uint8Array(), { mode: 0o644 });
          chmodSync(join(data, "netroot.db"), 0o644);
          writeFileSync(join(data, `nodes/${mac}/vm/console.log`), "netroot.token=abc\n");
        }
        const ctx = await openContext({ ...defaultConfig(), dataDir: data });
        try {
          if (!ctx.nodes.find(mac)) ctx.nodes.add(mac, { virtual: true });
          recordEvent(ctx.db, mac, "node.config"); // the WAL and its index exist once written
          const secrets = [
            ctx.data.db,
            `${ctx.data.db}-wal`,
            `${ctx.data.db}-shm`,
            ctx.data.token,
            ctx.data.persist(mac),
            ctx.data.root,
            ctx.data.nodes,
            ctx.data.run,
            ctx.data.tmp,
          ];
          const which = upgraded ? "upgraded" : "fresh";
          assert.deepEqual(await readableByNobody(secrets), [], which);
          // A virtual node's directory as the vnode manager makes it before starting qemu.
          ctx.data.makeVm(mac);
          writeFileSync(join(ctx.data.vm(mac), "console.log"), "netroot.token=abc\n", {
            flag: "a",
          });
          const vm = [ctx.data.vm(mac), join(ctx.data.vm(mac), "console.log")];
          assert.deepEqual(await readableByNobody(vm), [], which);
          // And whatever else is there (the server's ssh key too): no file of the data dir
          // outside the image trees is readable by another user.
          ctx.ssh.key.publicKey();
          const files: string[] = [];
          const walk = (d: string) => {
            for (const e of Deno.readDirSync(d)) {
              const p = join(d, e.name);
              if (e.isDirectory && p !== ctx.data.images) walk(p);
              else if (e.isFile && !p.endsWith(".pub")) files.push(p);
            }
          };
          walk(ctx.data.root);
          assert.ok(files.includes(ctx.data.token) && files.length >= 6, files.join(" "));
          assert.deepEqual(await readableByNobody(files), [], which);
          for (
            const f of [ctx.data.db, `${ctx.data.db}-wal`, `${ctx.data.db}-shm`, ctx.data.token]
          ) {
            assert.equal(mode(f) & 0o077, 0, `${f} is ${mode(f).toString(8)}`);
          }
          for (const d of [ctx.data.persist(mac), ctx.data.vm(mac), ctx.data.run, ctx.data.tmp]) {
            assert.equal(mode(d), 0o700, `${d} is ${mode(d).toString(8)}`);
          }
          // Passable, not listable: NFSv4 clients walk (root-squashed) through to the exports;
          // nodes/ only by its group, a squashed client's (datadir_test).
          for (const d of [ctx.data.root, ctx.data.images]) {
            assert.equal(mode(d), 0o711, `${d} is ${mode(d).toString(8)}`);
          }
          assert.equal(mode(ctx.data.nodes), 0o710, which);
          assert.equal(Deno.statSync(ctx.data.nodes).gid, 65534, which);
        } finally {
          await closeContext(ctx);
        }
      }
    } finally {
      await Deno.remove(parent, { recursive: true });
    }
  },
});
