// TFTP codec, option negotiation and filename cleaning: the pure parts, on known bytes.
import assert from "node:assert/strict";
import { decode, encode, negotiate, TftpDecodeError } from "../netboot/tftp/packet.ts";
import { cleanFilename } from "../netboot/tftp/resolve.ts";
import { blksizeForInterface, createTftpServer, printableName } from "../netboot/tftp/server.ts";
import { tftpGetDetailed } from "../netboot/tftp/client.ts";

const bytes = (...parts: (string | number[])[]) =>
  new Uint8Array(
    parts.flatMap((p) => typeof p === "string" ? [...p].map((c) => c.charCodeAt(0)) : p),
  );

Deno.test("tftp codec: an iPXE RRQ, an OACK, DATA, ACK and ERROR on the wire", () => {
  const rrq = bytes([0, 1], "undionly.kpxe\0octet\0BLKSIZE\x001432\0tsize\x000\0");
  assert.deepEqual(decode(rrq), {
    op: "RRQ",
    filename: "undionly.kpxe",
    mode: "octet",
    options: { blksize: "1432", tsize: "0" }, // option names are case-insensitive
  });
  assert.deepEqual(
    encode({ op: "OACK", options: { blksize: "1432", tsize: "74213" } }),
    bytes([0, 6], "blksize\x001432\0tsize\x0074213\0"),
  );
  assert.deepEqual(encode({ op: "ACK", block: 258 }), bytes([0, 4, 1, 2]));
  assert.deepEqual(
    decode(bytes([0, 3, 0xff, 0xff, 9, 8])),
    { op: "DATA", block: 65535, data: new Uint8Array([9, 8]) },
  );
  assert.deepEqual(decode(bytes([0, 5, 0, 8], "no\0")), { op: "ERROR", code: 8, message: "no" });
  assert.deepEqual(decode(bytes([0, 5, 0, 1], "unterminated")), {
    op: "ERROR",
    code: 1,
    message: "unterminated",
  });
  // Bytes above 0x7f survive as themselves (latin1), for the policy to judge.
  assert.equal(
    (decode(bytes([0, 1], [0x80, 0xe9, 0], "octet\0")) as { filename: string }).filename,
    "\x80\xe9",
  );
});

Deno.test("tftp codec: malformed packets are TftpDecodeError with a reason", () => {
  const bad: [Uint8Array, RegExp][] = [
    [bytes([0]), /1 bytes/],
    [bytes([0, 9]), /unknown opcode 9/],
    [bytes([0, 1], "file\0octet"), /not NUL-terminated/],
    [bytes([0, 1], "file\0"), /missing filename or mode/],
    [bytes([0, 1], "f\0octet\0blksize\0"), /option blksize has no value/],
    [bytes([0, 1], "f\0octet\0tsize\x000\0TSIZE\x000\0"), /option tsize twice/],
    [bytes([0, 4, 0]), /4 bytes|3 bytes/],
    [bytes([0, 4, 0, 1, 0]), /ACK of 5 bytes/],
    [bytes([0, 5, 0, 1], "a\0b\0"), /bytes after the message/],
  ];
  for (const [b, why] of bad) {
    assert.throws(() => decode(b), (e) => e instanceof TftpDecodeError && why.test(e.message));
  }
});

Deno.test("tftp negotiation: clamps, ignores what it cannot honour, OACK only when needed", () => {
  const limits = { maxBlksize: 65464, maxWindowsize: 64, defaultTimeoutMs: 1000 };
  assert.deepEqual(negotiate({}, 100, limits), {
    blksize: 512,
    windowsize: 1,
    timeoutMs: 1000,
    oack: undefined,
  });
  assert.deepEqual(negotiate({ blksize: "1468", tsize: "0" }, 1234, limits), {
    blksize: 1468,
    windowsize: 1,
    timeoutMs: 1000,
    oack: { blksize: "1468", tsize: "1234" },
  });
  const n = negotiate(
    { blksize: "70000", windowsize: "500", timeout: "3", multicast: "" },
    5,
    limits,
  );
  assert.deepEqual(n, {
    blksize: 65464,
    windowsize: 64,
    timeoutMs: 3000,
    oack: { blksize: "65464", timeout: "3", windowsize: "64" },
  });
  // Out of range or not a number: the option is left out of the OACK (RFC 2347).
  const ignored = negotiate(
    { blksize: "4", timeout: "0", windowsize: "x", tsize: "-1" },
    5,
    limits,
  );
  assert.deepEqual(ignored.oack, undefined);
  assert.equal(ignored.blksize, 512);
  // A long timeout is not taken (attacker: it held a transfer slot 6 × 255 s per forged request).
  for (const timeout of ["11", "255"]) {
    const long = negotiate({ timeout, tsize: "0" }, 5, limits);
    assert.deepEqual([long.timeoutMs, long.oack], [1000, { tsize: "5" }], timeout);
  }
  assert.equal(negotiate({ timeout: "10" }, 5, limits).timeoutMs, 10_000);
});

Deno.test("tftp filenames: printable ASCII, no '..', leading slashes dropped", () => {
  assert.deepEqual(cleanFilename("/boot//./vmlinuz"), { parts: ["boot", "vmlinuz"] });
  for (
    const bad of ["", "a/../b", "..", "x\\y", "a\x7f", "a\x00b", "caf\xe9", "/", "x".repeat(1025)]
  ) {
    assert.ok("refused" in cleanFilename(bad), JSON.stringify(bad));
  }
});

Deno.test("tftp: block numbers wrap past 65535 (blksize 8, 70,000 blocks)", async () => {
  const data = new Uint8Array(8 * 70_000 + 3).map((_, i) => i * 7);
  const server = await createTftpServer({
    port: 0,
    host: "127.0.0.1",
    workers: 1,
    resolve: () => Promise.resolve({ data }),
  });
  try {
    const got = await tftpGetDetailed("127.0.0.1", server.port, "big", {
      blksize: 8,
      windowsize: 64,
    });
    assert.deepEqual(got.options, { blksize: "8", windowsize: "64" });
    assert.deepEqual(got.data, data);
  } finally {
    await server.close();
  }
});

Deno.test("tftp: requested names are escaped before they reach logs and events", () => {
  assert.equal(printableName("boot/\x01\n\xe9x"), "boot/\\x01\\x0a\\xe9x");
  assert.equal(printableName("a".repeat(300)).length, 257);
});

Deno.test("tftp: blksize is capped to the boot interface's MTU (no IP fragments)", () => {
  assert.equal(blksizeForInterface("lo"), 65464); // lo: MTU 65536
  assert.equal(blksizeForInterface(undefined), 65464);
  assert.equal(blksizeForInterface("nr-no-such-if"), 1468);
});
