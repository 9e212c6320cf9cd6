// Boot files (kernels, initramfs, iPXE binaries) held in memory, one cache for HTTP and TFTP: the
// server's Booter holds one (booter.files) and hands it to both, so one budget covers both.
// A boot storm sends the same few files to hundreds of nodes; streaming them from memory runs about
// twice as fast as reading the file again for every download (bench/http_bench.ts), and one read
// serves every concurrent first request. The bytes live in SharedArrayBuffers, so TFTP's transfer
// workers share one copy (no copy per transfer) and HTTP streams views of it.
// Entries are keyed by device, inode, size and mtime, so a rebuilt initramfs is read afresh; least
// recently used entries go first when the budget is exceeded. What every copy alive holds, kept or
// held by a transfer, is bounded too (maxHeld): TFTP sends from memory, whatever the file's size.

/** A copy of a file that may still be in use: being read, then held weakly (a transfer or a
 *  download holds it strongly while it sends). */
interface Copy {
  key: string;
  size: number;
  reading?: Promise<Uint8Array>;
  read?: WeakRef<Uint8Array>;
}

const fileKey = (st: Deno.FileInfo) => `${st.dev}:${st.ino}:${st.size}:${st.mtime?.getTime()}`;

export class BootFileCache {
  #entries = new Map<string, { key: string; bytes: Promise<Uint8Array>; size: number }>();
  #total = 0;
  /** The copy of each file that something may still hold, kept or not: one asked for again while
   *  it is alive is handed out again. The budget bounds what the cache keeps, not what transfers
   *  hold: without this, requests cycling through more boot files than the budget (nodes of
   *  several images; forged TFTP sources) or asking for a file over maxFile read a new copy for
   *  every transfer (10 forged RRQs for a 150 MiB initrd held 1.3 GB; the pool takes 1,000). */
  #copies = new Map<string, Copy>();
  #collected = new FinalizationRegistry<{ path: string; copy: Copy }>(({ path, copy }) => {
    this.#held -= copy.size;
    if (this.#copies.get(path) === copy) this.#copies.delete(path);
  });
  /** Bytes of the copies alive (being read, kept, or held by a transfer until collected). TFTP
   *  reads a file whole: without a bound, a hostile image's /boot of sparse files of GiBs each,
   *  asked for by any host at its node's address, was read into memory until none was left. */
  #held = 0;

  constructor(
    readonly budget = 512 << 20,
    readonly maxFile = 128 << 20,
    /** What the copies alive may hold in all: past it, TFTP refuses a file and HTTP streams it. */
    readonly maxHeld = 1 << 30,
  ) {}

  /** The file's bytes when it fits the cache (read once), else undefined: stream it instead. */
  get(path: string, st: Deno.FileInfo): Promise<Uint8Array> | undefined {
    if (st.size > this.maxFile || st.size > this.budget) return undefined;
    const key = fileKey(st);
    const hit = this.#entries.get(path);
    if (hit?.key === key) {
      this.#entries.delete(path); // re-insert: Map order is the LRU order
      this.#entries.set(path, hit);
      return hit.bytes;
    }
    if (hit) this.#drop(path);
    const bytes = this.#copy(path, st, key);
    if (!bytes) return undefined; // over maxHeld: stream it
    bytes.catch(() => this.#entries.get(path)?.bytes === bytes && this.#drop(path));
    this.#entries.set(path, { key, bytes, size: st.size });
    this.#total += st.size;
    for (const old of this.#entries.keys()) {
      if (this.#total <= this.budget || old === path) break;
      this.#drop(old);
    }
    return bytes;
  }

  /** A whole regular file (TFTP sends from memory): from the cache when it fits, else read now;
   *  refused when its copy would pass maxHeld. */
  async read(path: string): Promise<Uint8Array> {
    const st = await Deno.stat(path);
    if (!st.isFile) throw new Error("not a regular file");
    const bytes = this.get(path, st) ?? this.#copy(path, st, fileKey(st));
    if (!bytes) {
      throw new Error(
        `${st.size} bytes more would pass the ${this.maxHeld >> 20} MiB held for boot files`,
      );
    }
    return await bytes;
  }

  /** The file's bytes: the copy something still holds, else a new read; undefined when a new
   *  one would pass maxHeld. */
  #copy(path: string, st: Deno.FileInfo, key: string): Promise<Uint8Array> | undefined {
    const held = this.#copies.get(path);
    if (held?.key === key) {
      if (held.reading) return held.reading;
      const bytes = held.read?.deref();
      if (bytes) return Promise.resolve(bytes);
    }
    if (this.#held + st.size > this.maxHeld) return undefined;
    this.#held += st.size;
    const copy: Copy = { key, size: st.size };
    copy.reading = readShared(path).then((b) => {
      if (b.length !== st.size) throw new Error(`${path} changed while being read`);
      return b;
    });
    this.#copies.set(path, copy);
    copy.reading.then((b) => {
      copy.reading = undefined; // from now on held only by its users (and a cache entry)
      copy.read = new WeakRef(b);
      this.#collected.register(b, { path, copy });
    }, () => {
      this.#held -= copy.size;
      if (this.#copies.get(path) === copy) this.#copies.delete(path);
    });
    return copy.reading;
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
