// The TFTP decoder fed random and mutated packets: only TftpDecodeError may come out, anything it
// accepts re-encodes to the same value, and the run ends (no hang). bench/tftp_bench.ts runs more.
import assert from "node:assert/strict";
import { decode, encode, type Packet, TftpDecodeError } from "../netboot/tftp/packet.ts";
import { createTftpServer } from "../netboot/tftp/server.ts";
import { tftpGet } from "../netboot/tftp/client.ts";
import dgram from "node:dgram";

/** mulberry32: a seeded PRNG so a failure can be replayed. */
function prng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const seeds: Packet[] = [
  {
    op: "RRQ",
    filename: "ipxe.efi",
    mode: "octet",
    options: { blksize: "1468", tsize: "0", windowsize: "16" },
  },
  { op: "WRQ", filename: "boot/vmlinuz", mode: "netascii", options: {} },
  { op: "DATA", block: 7, data: new Uint8Array([1, 2, 3, 0, 0, 4]) },
  { op: "ACK", block: 65535 },
  { op: "ERROR", code: 8, message: "option negotiation refused" },
  { op: "OACK", options: { blksize: "1432", tsize: "1048576" } },
];
const encodedSeeds = seeds.map(encode);

/** One fuzz input: random bytes, or a seed packet with a few mutations. */
function input(rand: () => number): Uint8Array {
  const int = (n: number) => Math.floor(rand() * n);
  if (rand() < 0.3) {
    const b = new Uint8Array(int(rand() < 0.8 ? 40 : 700));
    for (let i = 0; i < b.length; i++) b[i] = int(4) === 0 ? int(7) : int(256); // small bytes often
    return b;
  }
  let b = Array.from(encodedSeeds[int(encodedSeeds.length)]);
  for (let m = 1 + int(4); m > 0; m--) {
    const at = int(b.length + 1);
    switch (int(6)) {
      case 0:
        b[at] = int(256);
        break;
      case 1:
        b = b.slice(0, at);
        break;
      case 2:
        b.splice(at, 0, 0);
        break;
      case 3:
        b.splice(at, 1);
        break;
      case 4:
        b.splice(at, 0, ...Array.from({ length: int(20) }, () => int(256)));
        break;
      case 5:
        b[1] = int(8); // another opcode over the same body
        break;
    }
  }
  return new Uint8Array(b.map((x) => x ?? 0));
}

export function fuzzDecode(n: number, seed: number): { decoded: number; rejected: number } {
  const rand = prng(seed);
  let decoded = 0, rejected = 0;
  for (let i = 0; i < n; i++) {
    const b = input(rand);
    let p: Packet;
    try {
      p = decode(b);
    } catch (e) {
      if (!(e instanceof TftpDecodeError)) {
        throw new Error(`input #${i} (seed ${seed}) ${Array.from(b)}: ${e}`);
      }
      rejected++;
      continue;
    }
    decoded++;
    if (p.op === "ERROR" && p.message.length > 500) continue; // encode truncates, by design
    assert.deepEqual(decode(encode(p)), p, `input #${i} (seed ${seed}) does not round-trip`);
  }
  return { decoded, rejected };
}

Deno.test("tftp decoder: 120,000 random and mutated packets, only TftpDecodeError escapes", () => {
  const t0 = performance.now();
  const r = fuzzDecode(120_000, 20261126);
  assert.ok(r.decoded > 10_000 && r.rejected > 10_000, `poor coverage: ${JSON.stringify(r)}`);
  assert.ok(performance.now() - t0 < 30_000, "decoder too slow (a hang?)");
});

Deno.test("tftp server: 2,000 garbage datagrams on its port leave it serving", async () => {
  const content = new Uint8Array(300_000).map((_, i) => (i * 2654435761) >>> 24);
  const server = await createTftpServer({
    port: 0,
    host: "127.0.0.1",
    workers: 1,
    resolve: () => Promise.resolve({ data: content }),
  });
  const sock = dgram.createSocket("udp4");
  try {
    await new Promise<void>((r) => sock.bind(0, "127.0.0.1", r));
    const rand = prng(7);
    for (let i = 0; i < 2000; i++) {
      const b = input(rand);
      if (b.length >= 2 && b[0] === 0 && b[1] === 1) continue; // valid-looking RRQs start transfers
      sock.send(b, server.port, "127.0.0.1");
    }
    const got = await tftpGet("127.0.0.1", server.port, "x", { blksize: 1400, timeoutMs: 500 });
    assert.deepEqual(got, content);
  } finally {
    sock.close();
    await server.close();
  }
});
