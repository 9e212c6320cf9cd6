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

// The boot file cache's budget bounds the memory it hands out, not only what it keeps: a file asked
// for again while an earlier copy of it is still being sent (an evicted entry a TFTP transfer or a
// slow download holds; a file too large to keep that another transfer sends) gets that copy. Before,
// each such request read a new one: requests cycling through more boot files than the budget (the
// nodes of several images, forged TFTP sources, `?image=` over HTTP) or asking for one file over
// maxFile held a copy per transfer (10 forged RRQs for a 150 MiB initrd: 1.3 GB resident).
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

// TFTP sends every file from memory (read() reads it whole, whatever its size): a hostile image's
// /boot holding sparse files of GiBs each, asked for by any host at a node's address, had each
// read into its own SharedArrayBuffer (until the server's memory ran out). What the copies hold in
// all is bounded (maxHeld): past it TFTP refuses the file, HTTP streams it from disk.
Deno.test("boot file cache: copies held at once stay within maxHeld (a sparse GiB file in an image's /boot)", async () => {
  const { createTftpServer } = await import("../netboot/tftp/server.ts");
  const { tftpGet, TftpError } = await import("../netboot/tftp/client.ts");
  const dir = await Deno.makeTempDir();
  try {
    const f = (n: string) => `${dir}/${n}`;
    await Deno.writeFile(f("huge"), new Uint8Array(0));
    await Deno.truncate(f("huge"), 64 << 20); // sparse: free to the image's author
    await Deno.writeFile(f("one"), new Uint8Array(3 << 20).fill(1));
    await Deno.writeFile(f("two"), new Uint8Array(3 << 20).fill(2));
    const cache = new BootFileCache(1 << 20, 256 << 10, 4 << 20);
    await assert.rejects(cache.read(f("huge")), /held for boot files/);
    const one = await cache.read(f("one")); // held by its transfer
    await assert.rejects(cache.read(f("two")), /held for boot files/, "3 + 3 MiB held at once");
    assert.equal((await cache.read(f("one"))).buffer, one.buffer, "the copy held is still shared");
    assert.equal(cache.get(f("two"), Deno.statSync(f("two"))), undefined);
    // Through TFTP: an error, not DATA from a 64 MiB buffer.
    const server = await createTftpServer({
      port: 0,
      host: "127.0.0.1",
      cache,
      resolve: (path) => Promise.resolve({ file: f(path) }),
    });
    try {
      await assert.rejects(
        tftpGet("127.0.0.1", server.port, "huge", { timeoutMs: 500 }),
        (e) => e instanceof TftpError,
      );
    } finally {
      await server.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
