// Another export of the data dir's file system without a subtree check (an admin's own line in
// /etc/exports: exportfs's default) lets a forged file handle reach any file of that file system,
// whatever netroot's exports say (measured against Debian 12's nfsd in qemu: docs/security.md).
// Kernel mode names such exports: here found in the table the real exportfs (Debian's,
// tests/support/knfsd.ts) writes, in a private mount namespace whose /etc and /var/lib/nfs are
// this test's.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { exportsOpeningDataFs, renderKernelExports } from "../src/nfs.ts";
import { exportfsInNamespace, knfsdTools } from "./support/knfsd.ts";

Deno.test({
  name: "kernel mode names other exports of the data dir's file system that have no subtree check",
  ignore: Deno.uid() !== 0,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "nr-other-exports-" });
    const elsewhere = await Deno.makeTempDir({ dir: "/dev/shm", prefix: "nr-other-exports-" });
    try {
      assert.notEqual(Deno.statSync(tmp).dev, Deno.statSync(elsewhere).dev, "two file systems");
      const { programs } = await knfsdTools();
      const wrap = exportfsInNamespace(tmp, dirname(programs[0]));
      const data = join(tmp, "data");
      const persist = join(data, "nodes/52:54:00:aa:00:03/persist");
      const share = join(tmp, "admin share"), checked = join(tmp, "checked");
      for (const d of [persist, share, checked]) mkdirSync(d, { recursive: true });
      writeFileSync(
        join(tmp, "exports.d/netroot.exports"),
        renderKernelExports({
          subnet: "10.79.0.0/24",
          images: [],
          persists: [{ mac: "52:54:00:aa:00:03", ip: "10.79.0.21", path: persist, pseudo: "" }],
        }),
      );
      // The admin's own exports: one as exportfs makes it by default, one with a subtree check,
      // one on another file system.
      writeFileSync(
        join(tmp, "exports.d/admin.exports"),
        `"${share}" 10.79.0.0/24(ro,sync,no_subtree_check)\n` +
          `"${checked}" 10.79.0.0/24(ro,sync,subtree_check)\n` +
          `"${elsewhere}" 10.79.0.0/24(rw,sync,no_subtree_check,no_root_squash)\n`,
      );
      const o = await new Deno.Command(wrap[0], {
        args: [...wrap.slice(1), "exportfs", "-ra"],
        stderr: "piped",
      }).output();
      assert.ok(o.success, new TextDecoder().decode(o.stderr));
      const etab = readFileSync(join(tmp, "varlib/etab"), "utf8");
      assert.equal(etab.trim().split("\n").length, 4, etab);
      assert.deepEqual(
        exportsOpeningDataFs(etab, data, new Set([persist])),
        [`${share} 10.79.0.0/24`],
      );
      // netroot's own exports (subtree checked) are never named, nor anything of a data dir gone.
      assert.deepEqual(exportsOpeningDataFs(etab, join(tmp, "gone"), new Set([persist])), []);
    } finally {
      await Deno.remove(tmp, { recursive: true });
      await Deno.remove(elsewhere, { recursive: true });
    }
  },
});
