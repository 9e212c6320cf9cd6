// newc ("070701") cpio writer, the format the kernel unpacks an initramfs from
// (Documentation/driver-api/early-userspace/buffer-format.rst). Written here rather than by spawning
// cpio so the server needs no external tool. Entries are streamed: file contents go through in
// chunks, nothing holds the 95 MB deno binary in memory.
//
// Record: 110-byte ASCII header (magic + 13 eight-digit hex fields), the NUL-terminated name padded
// to 4 bytes, then the data padded to 4 bytes. The archive ends with the name "TRAILER!!!".

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;

export type CpioEntry =
  | { type: "dir"; path: string; mode: number }
  | { type: "file"; path: string; mode: number; data: Uint8Array }
  /** Contents read from a host file while writing; size is checked against the bytes read. */
  | { type: "hostfile"; path: string; mode: number; source: string; size: number }
  | { type: "symlink"; path: string; target: string }
  | { type: "char" | "block"; path: string; mode: number; major: number; minor: number };

/** Takes one chunk of the archive; done with it when the promise resolves (the writer reads every
 *  host file through one buffer, which the next read overwrites). */
export type Sink = (chunk: Uint8Array) => Promise<void>;

const enc = new TextEncoder();

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    throw new RangeError(`cpio header field out of range: ${n}`);
  }
  return n.toString(16).padStart(8, "0");
}

const pad4 = (n: number) => (4 - (n % 4)) % 4;

/** Header + padded name of one record. */
export function cpioHeader(fields: {
  ino: number;
  mode: number;
  nlink: number;
  size: number;
  mtime?: number;
  rdevMajor?: number;
  rdevMinor?: number;
  name: string;
}): Uint8Array {
  const name = enc.encode(fields.name);
  const namesize = name.length + 1;
  const head = "070701" + [
    fields.ino,
    fields.mode,
    0, // uid: root
    0, // gid: root
    fields.nlink,
    fields.mtime ?? 0, // fixed: the same inputs give the same archive bytes
    fields.size,
    0, // devmajor, devminor: of the archived filesystem, meaningless here
    0,
    fields.rdevMajor ?? 0,
    fields.rdevMinor ?? 0,
    namesize,
    0, // check: only used by the "070702" crc format
  ].map(hex8).join("");
  const out = new Uint8Array(110 + namesize + pad4(110 + namesize));
  out.set(enc.encode(head));
  out.set(name, 110);
  return out;
}

function normalize(path: string): string {
  const p = path.replace(/^\/+/, "").replace(/\/+$/, "");
  if (!p || p.split("/").some((c) => c === "" || c === "." || c === "..")) {
    throw new Error(`bad archive path ${JSON.stringify(path)}`);
  }
  return p;
}

/** Streams records to `sink`; `finish()` writes the trailer. Returns counts for reporting. */
export class CpioWriter {
  #ino = 1;
  #seen = new Set<string>();
  files = 0;
  bytes = 0;
  // One read buffer for every host file: a fresh 1 MiB one per read was 95 MB of garbage for the
  // deno binary alone, freed into the heap long after the build and left resident there.
  #buf = new Uint8Array(1 << 20);

  constructor(readonly sink: Sink) {}

  async #out(chunk: Uint8Array) {
    this.bytes += chunk.length;
    await this.sink(chunk);
  }

  async add(e: CpioEntry): Promise<void> {
    const name = normalize(e.path);
    if (this.#seen.has(name)) throw new Error(`duplicate archive path ${name}`);
    this.#seen.add(name);
    const ino = this.#ino++;
    const perm = (m: number) => m & 0o7777;
    switch (e.type) {
      case "dir":
        await this.#out(cpioHeader({ ino, mode: S_IFDIR | perm(e.mode), nlink: 2, size: 0, name }));
        return;
      case "symlink": {
        const target = enc.encode(e.target);
        await this.#out(
          cpioHeader({ ino, mode: S_IFLNK | 0o777, nlink: 1, size: target.length, name }),
        );
        await this.#data(target);
        return;
      }
      case "char":
      case "block":
        await this.#out(cpioHeader({
          ino,
          mode: (e.type === "char" ? S_IFCHR : S_IFBLK) | perm(e.mode),
          nlink: 1,
          size: 0,
          rdevMajor: e.major,
          rdevMinor: e.minor,
          name,
        }));
        return;
      case "file":
        this.files++;
        await this.#out(
          cpioHeader({ ino, mode: S_IFREG | perm(e.mode), nlink: 1, size: e.data.length, name }),
        );
        await this.#data(e.data);
        return;
      case "hostfile": {
        this.files++;
        await this.#out(
          cpioHeader({ ino, mode: S_IFREG | perm(e.mode), nlink: 1, size: e.size, name }),
        );
        let n = 0;
        using f = await Deno.open(e.source);
        while (n <= e.size) {
          const got = await f.read(this.#buf);
          if (got === null) break;
          n += got;
          if (n <= e.size) await this.#out(this.#buf.subarray(0, got));
        }
        // A file that changed size under us would shift every later record: refuse it.
        if (n !== e.size) {
          throw new Error(`${e.source} changed size while archiving (${e.size} → ${n} bytes)`);
        }
        await this.#out(new Uint8Array(pad4(n)));
        return;
      }
    }
  }

  async #data(data: Uint8Array) {
    await this.#out(data);
    if (pad4(data.length)) await this.#out(new Uint8Array(pad4(data.length)));
  }

  async finish(): Promise<void> {
    await this.#out(cpioHeader({ ino: 0, mode: 0, nlink: 1, size: 0, name: "TRAILER!!!" }));
  }
}
