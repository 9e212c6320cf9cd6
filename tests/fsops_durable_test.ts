// writeFileDurable and its synchronous twin (src/linux/fsops.ts) on a real ext4 cut off by a power
// cut right after the call: the file is the new text whole, with the mode asked for whatever the
// umask; a failed write leaves no temporary file behind.
import assert from "node:assert/strict";
import { writeFileDurable, writeFileDurableSync } from "../src/linux/fsops.ts";
import { withLoopExt4 } from "./support/ext4disk.ts";

const writers = {
  writeFileDurable,
  writeFileDurableSync: (p: string, t: string, m: number) =>
    new Promise<void>((ok) => ok(writeFileDurableSync(p, t, m))), // a throw rejects
};

for (const [name, write] of Object.entries(writers)) {
  Deno.test(`${name} (root, loop ext4): a power cut right after keeps the new text whole, with its mode`, () =>
    withLoopExt4(64, async (disk) => {
      const dir = await disk.freshDir("etc");
      const path = `${dir}/exports`;
      const v1 = "/a 10.0.0.0/24(ro)\n".repeat(5000), v2 = "/b 10.0.0.0/24(rw)\n".repeat(6000);
      await write(path, v1, 0o666); // 0o666: more than the umask (022) lets a create give
      disk.cutAfterCommit();
      assert.equal(Deno.readTextFileSync(path), v1);
      assert.equal(Deno.statSync(path).mode! & 0o777, 0o666);
      await write(path, v2, 0o600);
      disk.cutAfterCommit();
      assert.equal(Deno.readTextFileSync(path), v2);
      assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["exports"]);
      // A rename that fails (a directory in the way) leaves the directory and no temporary file.
      Deno.mkdirSync(`${dir}/taken/inside`, { recursive: true });
      await assert.rejects(write(`${dir}/taken`, v1, 0o644));
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["exports", "taken"]);
      assert.ok(Deno.statSync(`${dir}/taken`).isDirectory);
    }));
}
