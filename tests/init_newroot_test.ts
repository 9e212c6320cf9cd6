import assert from "node:assert/strict";
import { resolveInRoot } from "../contract/rootpath.ts";
import { isExecutableIn } from "../contract/rootpath.ts";

Deno.test("resolveInRoot: absolute and relative symlinks resolve inside the new root, never outside", async () => {
  const r = await Deno.makeTempDir({ prefix: "nr-newroot-" });
  try {
    await Deno.mkdir(`${r}/lib/systemd`, { recursive: true });
    await Deno.mkdir(`${r}/sbin`);
    await Deno.mkdir(`${r}/usr/bin`, { recursive: true });
    await Deno.writeTextFile(`${r}/lib/systemd/systemd`, "#!/bin/sh\n", { mode: 0o755 });
    await Deno.writeTextFile(`${r}/usr/bin/data`, "x", { mode: 0o644 });
    await Deno.symlink("/lib/systemd/systemd", `${r}/sbin/init`); // Debian's form
    await Deno.symlink("../lib/systemd/systemd", `${r}/sbin/rel`);
    await Deno.symlink("/etc/passwd", `${r}/sbin/escape`); // exists on the host, not in the root
    await Deno.symlink("loop2", `${r}/sbin/loop1`);
    await Deno.symlink("loop1", `${r}/sbin/loop2`);
    await Deno.symlink("../../../../../../lib/systemd/systemd", `${r}/sbin/dotdot`);

    assert.deepEqual(resolveInRoot(r, "/sbin/init"), {
      host: `${r}/lib/systemd/systemd`,
      escaped: false,
    });
    assert.equal(resolveInRoot(r, "/sbin/rel").host, `${r}/lib/systemd/systemd`);
    const dotdot = resolveInRoot(r, "/sbin/dotdot"); // .. stops at /
    assert.deepEqual(dotdot, { host: `${r}/lib/systemd/systemd`, escaped: true });
    assert.equal(resolveInRoot(r, "/sbin/escape").missing, "/etc"); // not the host's /etc/passwd
    assert.throws(() => resolveInRoot(r, "/sbin/loop1"), /too many symbolic links/);
    assert.ok(isExecutableIn(r, "/sbin/init"));
    assert.ok(!isExecutableIn(r, "/sbin/escape"));
    assert.ok(!isExecutableIn(r, "/sbin/loop1"));
    assert.ok(!isExecutableIn(r, "/usr/bin/data")); // not executable
    assert.ok(!isExecutableIn(r, "/usr/bin")); // a directory
    assert.ok(!isExecutableIn(r, "/sbin/missing"));
  } finally {
    await Deno.remove(r, { recursive: true });
  }
});
