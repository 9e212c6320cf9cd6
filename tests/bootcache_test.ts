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

Deno.test("boot file cache: a file of several read chunks lands whole in one SharedArrayBuffer; a file changed since its stat is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/initramfs`;
    const data = new Uint8Array(20 << 20 | 12345); // past two 8 MiB reads, not a multiple of one
    for (let i = 0; i < data.length; i += 4096) data[i] = (i >> 12) & 0xff;
    await Deno.writeFile(path, data);
    const cache = new BootFileCache();
    const bytes = await cache.get(path, await Deno.stat(path))!;
    assert.ok(bytes.buffer instanceof SharedArrayBuffer, "shared with the TFTP workers");
    assert.equal(bytes.byteLength, bytes.buffer.byteLength, "no spare room: read straight in");
    assert.deepEqual(new Uint8Array(bytes), data);
    // Stat'ed at one size, holding another when read: refused (and not kept).
    const old = await Deno.stat(path);
    await Deno.writeFile(path, data.subarray(0, 1000));
    await assert.rejects(() => new BootFileCache().get(path, old)!, /changed while being read/);
    await Deno.writeFile(path, new Uint8Array(old.size + 1));
    await assert.rejects(() => new BootFileCache().get(path, old)!, /changed while being read/);
    assert.deepEqual(await new BootFileCache().read(path), new Uint8Array(old.size + 1));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
