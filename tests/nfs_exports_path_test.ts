// Export paths exportfs would drop without a word: checked against the real exportfs (Debian's,
// tests/support/knfsd.ts) in a private mount namespace whose /etc and /var/lib/nfs are this
// test's, and refused by netroot before it writes them.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { kernelExportPathMax, renderKernelExports } from "../src/nfs.ts";
import { exportfsInNamespace, knfsdTools } from "./support/knfsd.ts";

const mac = "52:54:00:aa:00:02";

/** A /persist path of exactly `bytes` bytes below `base` (components under NAME_MAX). */
function persistPathOf(base: string, bytes: number): string {
  const tail = `/nodes/${mac}/persist`;
  let fill = bytes - base.length - tail.length;
  let path = base;
  while (fill > 0) {
    const n = Math.min(200, fill - 1);
    path += "/" + "d".repeat(n);
    fill -= n + 1;
  }
  const out = path + tail;
  assert.equal(out.length, bytes);
  return out;
}

const setFor = (path: string) => ({
  subnet: "10.79.0.0/24",
  images: [],
  persists: [{ mac, ip: "10.79.0.21", path, pseudo: "" }],
});

Deno.test({
  name: "exportfs drops an export path past 1,024 bytes silently: netroot refuses to write one",
  ignore: Deno.uid() !== 0,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "nr-export-path-" });
    try {
      const { programs } = await knfsdTools();
      const wrap = exportfsInNamespace(tmp, dirname(programs[0]));
      const exported = async (path: string) => {
        mkdirSync(path, { recursive: true });
        const text = renderKernelExports(setFor(path));
        writeFileSync(join(tmp, "exports.d/netroot.exports"), text);
        const o = await new Deno.Command(wrap[0], {
          args: [...wrap.slice(1), "exportfs", "-ra"],
          stderr: "piped",
        }).output();
        assert.ok(o.success, "exportfs says nothing is wrong");
        return readFileSync(join(tmp, "varlib/etab"), "utf8").includes(`${path}\t`);
      };
      const longest = persistPathOf(join(tmp, "data"), kernelExportPathMax);
      assert.ok(await exported(longest), "1,024 bytes: exported");
      // One byte more: exportfs exited 0 and exported nothing; netroot wrote it and logged its
      // exports applied, and every node's mount failed.
      const tooLong = persistPathOf(join(tmp, "data"), kernelExportPathMax + 1);
      mkdirSync(tooLong, { recursive: true });
      writeFileSync(
        join(tmp, "exports.d/netroot.exports"),
        `"${tooLong}" 10.79.0.21(rw,sync,no_root_squash,subtree_check)\n`,
      );
      const o = await new Deno.Command(wrap[0], {
        args: [...wrap.slice(1), "exportfs", "-ra"],
        stderr: "piped",
      }).output();
      assert.ok(o.success);
      assert.ok(!readFileSync(join(tmp, "varlib/etab"), "utf8").includes(tooLong), "dropped");
      assert.throws(
        () => renderKernelExports(setFor(tooLong)),
        /ignores paths longer than 1024 bytes; use a shorter data dir/,
      );
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
