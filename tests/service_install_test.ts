// install-service / uninstall-service into a staging tree (--root: no systemctl), from this
// checkout (which bundles the program first), and the unit file the repository ships.
// (The real thing, booted under systemd, is tests/service_nspawn_test.ts.)
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DatabaseSync } from "node:sqlite";
import { schemaVersion } from "../src/db.ts";
import { paths, renderUnit } from "../src/service/install.ts";
import { withLoopExt4 } from "./support/ext4disk.ts";

const mainTs = fileURLToPath(new URL("../main.ts", import.meta.url));
const shipped = fileURLToPath(new URL("../src/service/netroot.service", import.meta.url));
const bundleCommand = [
  "/usr/local/lib/netroot/deno",
  "run",
  "-A",
  "--no-config",
  "/usr/local/lib/netroot/netroot.js",
];

async function netroot(...args: string[]) {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", mainTs, ...args],
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

Deno.test("the shipped unit is the one installed by default; --data and the program path go in", async () => {
  const text = await Deno.readTextFile(shipped);
  assert.equal(renderUnit(bundleCommand, "/var/lib/netroot"), text);
  assert.match(text, /^Type=notify$/m);
  assert.match(text, /^WatchdogSec=\d+$/m);
  const other = renderUnit(["/usr/local/lib/netroot/netroot"], "/srv/netroot");
  assert.match(other, /^Environment=NETROOT_DATA=\/srv\/netroot$/m);
  assert.match(
    other,
    /^ExecStart=\/usr\/local\/lib\/netroot\/netroot serve --config \/etc\/netroot\/config\.json$/m,
  );
});

Deno.test("install-service --root from a checkout, then uninstall-service keeps settings and data", async () => {
  const root = await Deno.makeTempDir({ prefix: "nr-install-" });
  try {
    const r = await netroot("install-service", "--root", root, "--data", "/srv/netroot");
    assert.equal(r.code, 0, r.err);
    const at = (p: string) => join(root, p);
    for (const f of ["deno", "netroot.js", "netroot-init.js"]) {
      assert.ok(existsSync(join(at(paths.lib), f)), f);
    }
    assert.equal((await Deno.stat(join(at(paths.lib), "deno"))).mode! & 0o111, 0o111);
    const unit = await Deno.readTextFile(at(paths.unit));
    assert.match(unit, /^Environment=NETROOT_DATA=\/srv\/netroot$/m);
    const wrapper = await Deno.readTextFile(at(paths.bin));
    assert.match(wrapper, /NETROOT_DATA:=\/srv\/netroot/);
    assert.match(wrapper, /exec '\/usr\/local\/lib\/netroot\/deno' 'run' .* "\$@"$/m);
    assert.equal(await Deno.readTextFile(at(paths.config)), "{}\n");
    assert.ok(existsSync(at("/srv/netroot")));
    assert.match(
      await Deno.readTextFile(at(paths.bashCompletion)),
      /complete -o default -F _netroot/,
    );
    assert.match(await Deno.readTextFile(at(paths.zshCompletion)), /^#compdef netroot/);
    // The installed node program is a bundle that runs (`init --help` needs no PID 1).
    const init = await new Deno.Command(join(at(paths.lib), "deno"), {
      args: ["run", "-A", "--no-config", join(at(paths.lib), "netroot-init.js"), "--help"],
      env: { NO_COLOR: "1" },
    }).output();
    assert.match(new TextDecoder().decode(init.stdout), /netroot init/);
    // A re-install (an upgrade) keeps the admin's settings file and the data dir.
    await Deno.writeTextFile(at(paths.config), '{"http":{"port":80}}\n');
    assert.equal((await netroot("install-service", "--root", root)).code, 0);
    assert.equal(await Deno.readTextFile(at(paths.config)), '{"http":{"port":80}}\n');
    assert.match(
      await Deno.readTextFile(at(paths.unit)),
      /^Environment=NETROOT_DATA=\/srv\/netroot$/m,
    );

    const u = await netroot("uninstall-service", "--root", root);
    assert.equal(u.code, 0, u.err);
    assert.match(
      u.out,
      /kept the settings \(\/etc\/netroot\) and the data \(\/srv\/netroot\)/,
    );
    for (const p of [paths.unit, paths.lib, paths.bin, paths.bashCompletion, paths.zshCompletion]) {
      assert.ok(!existsSync(at(p)), `${p} removed`);
    }
    assert.ok(existsSync(at(paths.config)) && existsSync(at("/srv/netroot")));
    const again = await netroot("uninstall-service", "--root", root);
    assert.equal(again.code, 1);
    assert.match(again.err, /not installed as a service/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("install-service refuses a data dir the wrapper script's shell would run a command from", async () => {
  const root = await Deno.makeTempDir({ prefix: "nr-install-bad-" });
  try {
    // Inside the wrapper's "${NETROOT_DATA:=…}", backquotes ran `id` at every `netroot` command.
    for (const data of ["/srv/`id>/tmp/x`", "/srv/$(id)", "/srv/net root", "/srv/%h", "srv"]) {
      const r = await netroot("install-service", "--root", root, "--data", data);
      assert.equal(r.code, 1, `${data}: ${r.out}`);
      assert.match(r.err, /--data must be an absolute path without spaces/, data);
      assert.deepEqual([...Deno.readDirSync(root)], [], data);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("install-service and uninstall-service refuse to replace or remove what is not theirs", async () => {
  const root = await Deno.makeTempDir({ prefix: "nr-install-other-" });
  const at = (p: string) => join(root, p);
  try {
    // A netroot checkout cloned to /usr/local/lib/netroot and run from there: install moved it
    // aside and removed it whole (local changes, .git and all). A hand-written unit of the same
    // name, or another `netroot` command, was replaced, and uninstall removed the unit.
    const others: [string, Record<string, string>][] = [
      [paths.lib, { "README.md": "my checkout\n", ".git/HEAD": "ref: refs/heads/mine\n" }],
      [dirname(paths.unit), { "netroot.service": "[Service]\nExecStart=/opt/mine/netroot\n" }],
      [dirname(paths.bin), { "netroot": '#!/bin/sh\nexec /opt/mine/netroot "$@"\n' }],
    ];
    for (const [dir, files] of others) {
      for (const [name, text] of Object.entries(files)) {
        await Deno.mkdir(dirname(join(at(dir), name)), { recursive: true });
        await Deno.writeTextFile(join(at(dir), name), text);
      }
      const what = Object.keys(files)[0];
      const installing = await netroot("install-service", "--root", root);
      assert.equal(installing.code, 1, `${what}: ${installing.out}`);
      const path = dir === paths.lib ? paths.lib : join(dir, what);
      assert.match(installing.err, new RegExp(`${path} is not netroot's.*nothing was changed`));
      if (path !== paths.bin) { // (uninstall: with no unit, "not installed")
        const removing = await netroot("uninstall-service", "--root", root);
        assert.equal(removing.code, 1, `${what}: ${removing.out}`);
        assert.match(removing.err, new RegExp(`${path} is not netroot's`));
      }
      for (const [name, text] of Object.entries(files)) {
        assert.equal(await Deno.readTextFile(join(at(dir), name)), text, name);
      }
      assert.ok(!existsSync(at(paths.config)), `${what}: nothing installed`);
      await Deno.remove(at(dir.split("/").slice(0, 2).join("/")), { recursive: true });
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("install-service over a settings file the new program refuses changes nothing", async () => {
  // An upgrade: the kept config.json has a key this version refuses. Before, everything was
  // replaced and the service restarted into "config key … is unknown" at every start.
  const root = await Deno.makeTempDir({ prefix: "nr-install-cfg-" });
  const at = (p: string) => join(root, p);
  try {
    await Deno.mkdir(at(paths.etc), { recursive: true });
    await Deno.writeTextFile(at(paths.config), '{"dhcp":{"rnage":"10.0.0.1-10.0.0.9"}}\n');
    const r = await netroot("install-service", "--root", root);
    assert.equal(r.code, 1, r.out);
    assert.match(
      r.err,
      /would not start with \/etc\/netroot\/config\.json.*dhcp\.rnage is unknown/,
    );
    assert.ok(!existsSync(at(paths.lib)) && !existsSync(at(paths.unit)), "nothing installed");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("install-service of an older netroot over a data dir a newer one migrated changes nothing", async () => {
  // A rollback after an upgrade: the data dir's database has a schema this program does not know.
  // Before, the program was replaced and the service refused the database at every start.
  const root = await Deno.makeTempDir({ prefix: "nr-install-downgrade-" });
  const at = (p: string) => join(root, p);
  try {
    await Deno.mkdir(at(paths.data), { recursive: true });
    const db = new DatabaseSync(at(join(paths.data, "netroot.db")));
    db.exec(`PRAGMA journal_mode=WAL; PRAGMA user_version = ${schemaVersion + 1}`);
    db.close();
    const r = await netroot("install-service", "--root", root);
    assert.equal(r.code, 1, r.out);
    assert.match(
      r.err,
      new RegExp(
        `/var/lib/netroot/netroot\\.db was upgraded by a newer netroot \\(schema ${
          schemaVersion + 1
        }; this one knows ${schemaVersion}\\).*nothing was changed`,
      ),
    );
    assert.ok(!existsSync(at(paths.lib)) && !existsSync(at(paths.unit)), "nothing installed");
    // The schema this program knows installs.
    const ok = new DatabaseSync(at(join(paths.data, "netroot.db")));
    ok.exec(`PRAGMA user_version = ${schemaVersion}`);
    ok.close();
    const again = await netroot("install-service", "--root", root);
    assert.equal(again.code, 0, again.err);
    assert.ok(existsSync(at(paths.unit)));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("install-service (root, loop ext4): a power cut after it returns leaves the program and the unit whole", async () => {
  await withLoopExt4(512, async (disk) => {
    const root = await disk.freshDir("root");
    const r = await netroot("install-service", "--root", root, "--data", "/srv/netroot");
    assert.equal(r.code, 0, r.err);
    const at = (p: string) => join(root, p);
    const want = new Map<string, number>();
    for (const f of ["deno", "netroot.js", "netroot-init.js"]) {
      want.set(join(at(paths.lib), f), (await Deno.stat(join(at(paths.lib), f))).size);
    }
    for (const p of [paths.unit, paths.bin, paths.config]) {
      want.set(at(p), (await Deno.stat(at(p))).size);
    }
    // Any journal commit afterwards (ext4's 5 s timer, systemd starting the service), the cut.
    disk.cutAfterCommit();
    const got = new Map([...want.keys()].map((p) => [p, Deno.statSync(p).size]));
    assert.deepEqual(got, want);
  });
});
