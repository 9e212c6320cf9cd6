// The image store under interleavings and damage: removals racing rollbacks and copies, objects
// damaged on the disk, and hard-link limits.
import assert from "node:assert/strict";
import type { UserError } from "../src/errors.ts";
import { buildSampleTree, fixTimes, tempStore } from "./images_helpers.ts";

Deno.test("image rm NAME@ID while a rollback writes that thin version's tree: refused, the name keeps a current version", async () => {
  const t = await tempStore();
  try {
    const src = `${t.dir}/src`;
    buildSampleTree(src);
    const v1 = await t.store.import(src, "deb");
    Deno.writeTextFileSync(`${src}/etc/hostname`, "v2\n");
    fixTimes(src);
    const v2 = await t.store.import(src, "deb");
    await t.store.idle();
    assert.equal(t.store.hasTree(v1.id), false, "v1 is thin");
    // The rebuild's scratch goes after its tree is in place: an `image rm` request answered then.
    let removal: unknown;
    const dropScratch = t.store.dropScratch.bind(t.store);
    t.store.dropScratch = (work: string) => {
      if (work.includes("/tree-") && removal === undefined) {
        try {
          removal = t.store.remove(`deb@${v1.id}`);
        } catch (e) {
          removal = e;
        }
      }
      return dropScratch(work);
    };
    const rb = await t.store.rollback("deb").catch((e) => e as Error);
    assert.ok(
      removal instanceof Error && (removal as UserError).status === 409,
      `the removal is refused while the rollback holds the version (got ${String(removal)})`,
    );
    assert.ok(!(rb instanceof Error), `the rollback lands (${rb})`);
    assert.equal(t.store.find("deb")?.id, v1.id, "the name points at v1");
    assert.deepEqual(t.store.history("deb").map((v) => v.id), [v1.id, v2.id]);
    assert.equal(t.store.hasTree(v1.id), true);
  } finally {
    await t.close();
  }
});
