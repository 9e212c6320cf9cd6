// sha256 of a large file's content, computed off the caller's thread while it goes on: OpenSSL's
// libcrypto (every Debian server has it: systemd needs it) through nonblocking FFI calls, which
// run on a thread of Deno's blocking pool, one update after the other for one file. Where
// libcrypto cannot be loaded, node:crypto on the caller's thread. Only worth it for large
// chunks: a nonblocking call costs the caller ~30 µs, about what hashing 40 KB costs.
import { createHash, type Hash } from "node:crypto";

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

function hex(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i++) s += HEX[b[i]];
  return s;
}

type Lib = Deno.DynamicLibrary<{
  EVP_MD_CTX_new: { parameters: []; result: "pointer" };
  EVP_MD_CTX_free: { parameters: ["pointer"]; result: "void" };
  EVP_sha256: { parameters: []; result: "pointer" };
  EVP_DigestInit_ex: { parameters: ["pointer", "pointer", "pointer"]; result: "i32" };
  EVP_DigestUpdate: {
    parameters: ["pointer", "buffer", "usize"];
    result: "i32";
    nonblocking: true;
  };
  EVP_DigestFinal_ex: { parameters: ["pointer", "buffer", "pointer"]; result: "i32" };
}>;

let lib: Lib | null | undefined;
let md: Deno.PointerValue = null;

function openLib(): Lib | null {
  if (lib !== undefined) return lib;
  try {
    lib = Deno.dlopen(
      "libcrypto.so.3",
      {
        EVP_MD_CTX_new: { parameters: [], result: "pointer" },
        EVP_MD_CTX_free: { parameters: ["pointer"], result: "void" },
        EVP_sha256: { parameters: [], result: "pointer" },
        EVP_DigestInit_ex: { parameters: ["pointer", "pointer", "pointer"], result: "i32" },
        EVP_DigestUpdate: {
          parameters: ["pointer", "buffer", "usize"],
          result: "i32",
          nonblocking: true,
        },
        EVP_DigestFinal_ex: { parameters: ["pointer", "buffer", "pointer"], result: "i32" },
      } as const,
    );
    md = lib.symbols.EVP_sha256();
    if (!md) throw new Error("no sha256 in libcrypto");
  } catch {
    lib?.close();
    lib = null;
  }
  return lib;
}

/** A streamed sha256. `update` may read `chunk` after it returns: until the promise it returns
 *  (if any) settles, the caller must leave those bytes as they are. */
export interface Sha256Stream {
  update(chunk: Uint8Array<ArrayBuffer>): Promise<void> | undefined;
  /** The hex digest, once every update is done (the stream is finished either way). */
  digest(): Promise<string>;
}

class Offloaded implements Sha256Stream {
  #ctx: Deno.PointerValue;
  #chain: Promise<void> = Promise.resolve();
  #failed = false;
  #issued = 0;
  #done = 0;
  constructor(private readonly l: Lib) {
    this.#ctx = l.symbols.EVP_MD_CTX_new();
    if (!this.#ctx || l.symbols.EVP_DigestInit_ex(this.#ctx, md, null) !== 1) {
      if (this.#ctx) l.symbols.EVP_MD_CTX_free(this.#ctx);
      throw new Error("EVP_DigestInit_ex failed");
    }
  }
  update(chunk: Uint8Array<ArrayBuffer>): Promise<void> {
    const n = ++this.#issued;
    const call = async () => {
      if (this.#failed) return;
      const rc = await this.l.symbols.EVP_DigestUpdate(this.#ctx, chunk, BigInt(chunk.length));
      if (rc !== 1) this.#failed = true;
      this.#done = n;
    };
    // Issued at once when the previous updates are done, else after them (one context: one
    // update at a time, in order).
    this.#chain = this.#done === n - 1 ? call() : this.#chain.then(call);
    return this.#chain;
  }
  async digest(): Promise<string> {
    await this.#chain.catch(() => this.#failed = true);
    const out = new Uint8Array(32);
    const ok = !this.#failed && this.l.symbols.EVP_DigestFinal_ex(this.#ctx, out, null) === 1;
    this.l.symbols.EVP_MD_CTX_free(this.#ctx);
    if (!ok) throw new Error("sha256 (libcrypto) failed");
    return hex(out);
  }
}

class Local implements Sha256Stream {
  #h: Hash;
  constructor(algorithm: string) {
    this.#h = createHash(algorithm);
  }
  update(chunk: Uint8Array): undefined {
    this.#h.update(chunk);
  }
  digest(): Promise<string> {
    return Promise.resolve(this.#h.digest("hex"));
  }
}

/** A sha256 whose updates run on another thread when libcrypto is there (`offload` false: on
 *  this thread, node:crypto). */
export function sha256Stream(offload = true): Sha256Stream {
  const l = offload ? openLib() : null;
  return l ? new Offloaded(l) : new Local("sha256");
}

/**
 * The hex digest (sha256, or sha512 on this thread a chunk at a time) of a file's content, read
 * asynchronously: never the caller's thread held for the whole file. An image archive's blobs
 * were hashed synchronously on the server's only thread, and their size is the author's: a config
 * or layer of 8 GiB of holes (a 581-byte gzipped archive) held it 32 s.
 */
export async function hashFile(path: string, algorithm = "sha256"): Promise<string> {
  using f = await Deno.open(path);
  const h = algorithm === "sha256" ? sha256Stream() : new Local(algorithm);
  // Two buffers: one is read into while the other is hashed.
  const bufs = [new Uint8Array(4 << 20), new Uint8Array(4 << 20)];
  let hashing: Promise<void> | undefined;
  try {
    for (let i = 0;; i ^= 1) {
      const n = await f.read(bufs[i]); // bufs[i]'s own update was awaited a round ago
      if (n === null) break;
      await hashing;
      hashing = h.update(bufs[i].subarray(0, n));
    }
    await hashing;
  } catch (e) {
    await h.digest().catch(() => {}); // frees libcrypto's context
    throw e;
  }
  return await h.digest();
}
