// Boot files (kernels, initramfs, iPXE binaries) held in memory, one cache for HTTP and TFTP: the
// server's Booter holds one (booter.files) and hands it to both, so one budget covers both.
// A boot storm sends the same few files to hundreds of nodes; streaming them from memory runs about
// twice as fast as reading the file again for every download (bench/http_bench.ts), and one read
// serves every concurrent first request. The bytes live in SharedArrayBuffers, so TFTP's transfer
// workers share one copy (no copy per transfer) and HTTP streams views of it.
// Entries are keyed by device, inode, size and mtime, so a rebuilt initramfs is read afresh; least
// recently used entries go first when the budget is exceeded.

export class BootFileCache {
  #entries = new Map<string, { key: string; bytes: Promise<Uint8Array>; size: number }>();
  #total = 0;

  constructor(readonly budget = 512 << 20, readonly maxFile = 128 << 20) {}

  /** The file's bytes when it fits the cache (read once), else undefined: stream it instead. */
  get(path: string, st: Deno.FileInfo): Promise<Uint8Array> | undefined {
    if (st.size > this.maxFile || st.size > this.budget) return undefined;
    const key = `${st.dev}:${st.ino}:${st.size}:${st.mtime?.getTime()}`;
    const hit = this.#entries.get(path);
    if (hit?.key === key) {
      this.#entries.delete(path); // re-insert: Map order is the LRU order
      this.#entries.set(path, hit);
      return hit.bytes;
    }
    if (hit) this.#drop(path);
    const bytes = readShared(path).then((b) => {
      if (b.length !== st.size) throw new Error(`${path} changed while being read`);
      return b;
    });
    bytes.catch(() => this.#entries.get(path)?.bytes === bytes && this.#drop(path));
    this.#entries.set(path, { key, bytes, size: st.size });
    this.#total += st.size;
    for (const old of this.#entries.keys()) {
      if (this.#total <= this.budget || old === path) break;
      this.#drop(old);
    }
    return bytes;
  }

  /** A whole regular file (TFTP sends from memory): from the cache when it fits, else read now. */
  async read(path: string): Promise<Uint8Array> {
    const st = await Deno.stat(path);
    if (!st.isFile) throw new Error("not a regular file");
    return await (this.get(path, st) ?? readShared(path));
  }

  #drop(path: string): void {
    const e = this.#entries.get(path);
    if (!e) return;
    this.#entries.delete(path);
    this.#total -= e.size;
  }
}

/** The file's bytes in a SharedArrayBuffer (workers take it without a copy), read straight into
 *  it: reading into an ordinary buffer first and copying held the file twice until the copy was
 *  collected (50 MB more for a kernel and its initramfs, at the start of a boot storm). */
async function readShared(path: string): Promise<Uint8Array> {
  using file = await Deno.open(path);
  const size = (await file.stat()).size;
  const data = new Uint8Array(new SharedArrayBuffer(size));
  let at = 0;
  while (at < size) {
    const n = await file.read(data.subarray(at, Math.min(size, at + readChunk)));
    if (n === null) break;
    at += n;
  }
  // Shorter than it was: get() refuses it (the length); longer: refused here.
  if (at === size && (await file.read(new Uint8Array(1))) !== null) {
    throw new Error(`${path} changed while being read`);
  }
  return at === size ? data : data.subarray(0, at);
}

const readChunk = 8 << 20;
