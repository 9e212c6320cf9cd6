// A real Debian image (the cached debootstrap minbase tree of tests/support/minbase.ts, made on
// first use)
// gets a package installed: a .deb built here with dpkg-deb is copied in with `image cp`, then
// `image shell -- dpkg -i` installs it inside systemd-nspawn; the new version has it (dpkg's
// database included), the old one does not. No network: the package is made locally.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { copyIn } from "../src/images/cp.ts";
import { nspawnArgs } from "../src/images/session.ts";
import { parseManifest } from "../contract/manifest.ts";
import { sh, tempStore } from "./images_helpers.ts";
import { minbaseTree } from "./support/minbase.ts";

Deno.test({
  name: "Debian image: image cp a .deb in, dpkg -i in image shell (nspawn), a new version has it",
  fn: async () => {
    assert.equal(Deno.uid(), 0, "needs root (overlayfs, systemd-nspawn)");
    const tree = await minbaseTree();
    const t = await tempStore();
    t.store.autoPrune = false; // the versions' trees are compared (shared inodes) after the commits
    try {
      const base = await t.store.import(tree, "debian");
      const pkg = `${t.dir}/pkg`;
      Deno.mkdirSync(`${pkg}/DEBIAN`, { recursive: true });
      Deno.mkdirSync(`${pkg}/usr/bin`, { recursive: true });
      Deno.writeTextFileSync(
        `${pkg}/DEBIAN/control`,
        "Package: netroot-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n" +
          "Description: test package\n",
      );
      Deno.writeTextFileSync(`${pkg}/usr/bin/netroot-hello`, "#!/bin/sh\necho hello\n");
      Deno.chmodSync(`${pkg}/usr/bin/netroot-hello`, 0o755);
      sh("dpkg-deb", "--root-owner-group", "--build", pkg, `${t.dir}/hello.deb`);

      const withDeb = await copyIn(t.store, [`${t.dir}/hello.deb`], "debian", "/root/", {
        command: "cp",
      });
      const s = await t.store.sessions.open("debian");
      const out = await new Deno.Command("systemd-nspawn", {
        args: nspawnArgs(s.merged, [
          "/bin/sh",
          "-c",
          "dpkg -i /root/hello.deb && rm /root/hello.deb && netroot-hello",
        ], false),
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.ok(out.success, text);
      assert.match(text, /hello\n/);
      const v = await t.store.sessions.commit(s.id, { madeBy: "shell", command: "dpkg -i" });
      assert.equal(v.parent, withDeb.id);
      const m = new Map(
        parseManifest(Deno.readTextFileSync(t.data.manifest(v.id))).map((e) => [e.path, e]),
      );
      assert.equal(m.get("/usr/bin/netroot-hello")?.mode, 0o755);
      assert.ok(m.has("/var/lib/dpkg/info/netroot-hello.list"), "dpkg's database has it");
      assert.equal(m.has("/root/hello.deb"), false, "the deletion is in the version");
      const status = Deno.readTextFileSync(`${t.data.rootfs(v.id)}/var/lib/dpkg/status`);
      assert.match(status, /Package: netroot-hello\nStatus: install ok installed/);
      assert.equal(existsSync(`${t.data.rootfs(base.id)}/usr/bin/netroot-hello`), false);
      // the unchanged files of the 250 MB image are shared with the base, not copied
      const ino = (id: string, p: string) => Deno.lstatSync(t.data.rootfs(id) + p).ino;
      assert.equal(ino(v.id, "/usr/bin/dpkg"), ino(base.id, "/usr/bin/dpkg"));
      assert.deepEqual(t.store.history("debian").map((x) => x.madeBy), ["import", "cp", "shell"]);
    } finally {
      await t.close();
    }
  },
});
