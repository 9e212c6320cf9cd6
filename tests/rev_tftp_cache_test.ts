// The boot file cache's budget bounds the memory it hands out, not only what it keeps: a file asked
// for again while an earlier copy of it is still being sent (an evicted entry a TFTP transfer or a
// slow download holds; a file too large to keep that another transfer sends) gets that copy. Before,
// each such request read a new one: requests cycling through more boot files than the budget (the
// nodes of several images, forged TFTP sources, `?image=` over HTTP) or asking for one file over
// maxFile held a copy per transfer (10 forged RRQs for a 150 MiB initrd: 1.3 GB resident).
import assert from "node:assert/strict";
import { BootFileCache } from "../netboot/bootcache.ts";

Deno.test("boot file cache: a copy still held is handed out again, evicted or too large to keep", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const f = (n: string) => `${dir}/${n}`;
    for (const [n, v] of [["a", 1], ["b", 2], ["c", 3]] as const) {
      await Deno.writeFile(f(n), new Uint8Array(100).fill(v));
    }
    await Deno.writeFile(f("big"), new Uint8Array(300).fill(9));
    const cache = new BootFileCache(250, 200);
    const st = (n: string) => Deno.statSync(f(n));
    // a is being sent while b and c push it out of the cache; asked again, it is the same copy
    const a1 = await cache.get(f("a"), st("a"))!;
    await cache.get(f("b"), st("b"));
    await cache.get(f("c"), st("c"));
    const a2 = await cache.get(f("a"), st("a"))!;
    assert.equal(a2.buffer, a1.buffer, "an evicted file still held is not read into a second copy");
    // over maxFile: never kept, but concurrent and later transfers share the copy held
    const [x, y] = await Promise.all([cache.read(f("big")), cache.read(f("big"))]);
    assert.equal(x.buffer, y.buffer, "concurrent reads of a large file share one copy");
    assert.equal((await cache.read(f("big"))).buffer, x.buffer, "so does a later one");
    assert.equal(x[299], 9);
    // a changed file is still read afresh, held copy or not
    await Deno.writeFile(f("big"), new Uint8Array(301).fill(7));
    const z = await cache.read(f("big"));
    assert.notEqual(z.buffer, x.buffer);
    assert.equal(z.length, 301);
    assert.equal(z[300], 7);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
