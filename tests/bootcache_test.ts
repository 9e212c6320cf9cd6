import assert from "node:assert/strict";
import { BootFileCache } from "../netboot/bootcache.ts";

Deno.test("boot file cache: one read for concurrent gets, fresh bytes after a rebuild, LRU within budget", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const f = (n: string) => `${dir}/${n}`;
    await Deno.writeFile(f("a"), new Uint8Array(100).fill(1));
    await Deno.writeFile(f("b"), new Uint8Array(100).fill(2));
    await Deno.writeFile(f("big"), new Uint8Array(300));
    const cache = new BootFileCache(250, 200);
    const st = (n: string) => Deno.statSync(f(n));
    const p1 = cache.get(f("a"), st("a"))!, p2 = cache.get(f("a"), st("a"))!;
    assert.equal(p1, p2, "concurrent first requests share one read");
    assert.equal((await p1)[0], 1);
    assert.equal(cache.get(f("big"), st("big")), undefined, "larger than maxFile: streamed");
    // a rebuilt file (new content, new size/mtime) is read again
    await Deno.writeFile(f("a"), new Uint8Array(120).fill(3));
    const p3 = cache.get(f("a"), st("a"))!;
    assert.notEqual(p3, p1);
    assert.equal((await p3)[0], 3);
    // budget 250: a (120) + b (100) fit; c (100) evicts the least recently used (a, unless touched)
    await cache.get(f("b"), st("b"));
    cache.get(f("a"), st("a")); // touch a: b is now the oldest
    await Deno.writeFile(f("c"), new Uint8Array(100).fill(4));
    await cache.get(f("c"), st("c"));
    assert.equal(cache.get(f("a"), st("a")), p3, "recently used entry kept");
    const b2 = cache.get(f("b"), st("b"))!;
    assert.equal((await b2)[0], 2, "evicted entry is read again");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
