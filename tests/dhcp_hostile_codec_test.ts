// Datagrams at the size limits from a sender on the boot network: a UDP datagram may be 64 KiB (IP
// fragments, reassembled by the kernel; the DHCP socket reads up to 65,536 bytes), every option
// of it repeated (RFC 3396 joins the pieces). Each is decoded and classified on the server's only
// thread before anything else is checked, so it must cost time linear in its size: one such
// datagram took seconds.
import assert from "node:assert/strict";
import { decode, MAGIC_COOKIE } from "../netboot/dhcp4/packet.ts";
import { MessageType, Opt, readText } from "../netboot/dhcp4/options.ts";
import { setLogLevel } from "../src/log.ts";
import { withResponder } from "./support/dhcp_responder.ts";

setLogLevel("error");

const from = { address: "0.0.0.0", port: 68 };

/** A DISCOVER from 02:00:00:00:00:01 whose option `code` holds `value`, cut into pieces of
 *  `piece` bytes, each an option of its own. */
function discoverWith(code: number, value: Uint8Array, piece: number): Uint8Array {
  const pieces = Math.ceil(value.length / piece);
  const b = new Uint8Array(240 + 3 + value.length + 2 * pieces + 1);
  b.set([1, 1, 6]); // BOOTREQUEST, Ethernet, 6-byte MAC
  b.set([2, 0, 0, 0, 0, 1], 28);
  new DataView(b.buffer).setUint32(236, MAGIC_COOKIE);
  let i = 240;
  b.set([Opt.messageType, 1, MessageType.Discover], i);
  i += 3;
  for (let o = 0; o < value.length; o += piece) {
    const p = value.subarray(o, o + piece);
    b.set([code, p.length], i);
    b.set(p, i + 2);
    i += 2 + p.length;
  }
  b[i] = 255;
  return b;
}

/** Milliseconds the responder takes to answer `datagram` (the best of three: a busy machine
 *  only adds). */
function answerTime(datagram: Uint8Array, handle: (d: Uint8Array) => unknown): number {
  let best = Infinity;
  for (let k = 0; k < 3; k++) {
    const t0 = performance.now();
    handle(datagram);
    best = Math.min(best, performance.now() - t0);
  }
  return best;
}

Deno.test("a vendor class of 64,000 NULs then a letter is classified in milliseconds", async () => {
  await withResponder({}, (r) => {
    const value = new Uint8Array(64_000);
    value[value.length - 1] = 0x41;
    const datagram = discoverWith(Opt.vendorClass, value, 255);
    const ms = answerTime(datagram, (d) => r.handle(d, { port: 67, from }));
    // Trimming the trailing NULs by regex tried every NUL from the first: 1.7 s a datagram.
    assert.ok(ms < 100, `${Math.round(ms)} ms for one datagram`);
    assert.equal(r.stats.errors, 0);
  });
});

Deno.test("a datagram of 21,000 one-byte pieces of one option is decoded in milliseconds", async () => {
  await withResponder({}, (r) => {
    const datagram = discoverWith(Opt.userClass, new Uint8Array(21_000).fill(0x41), 1);
    const ms = answerTime(datagram, (d) => r.handle(d, { port: 67, from }));
    // Joined piece by piece, the pieces copied 220 MB: 330 ms a datagram.
    assert.ok(ms < 50, `${Math.round(ms)} ms for one datagram`);
    assert.equal(r.stats.errors, 0);
  });
});

Deno.test("repeated options are still joined in order, overload areas after the options area", () => {
  const b = discoverWith(Opt.vendorClass, new TextEncoder().encode("PXEClient:Arch:00000"), 4);
  const file = new Uint8Array([Opt.vendorClass, 3, 0x3a, 0x55, 0x4e, 255]); // ":UN"
  b.set(file, 108);
  const withOverload = new Uint8Array(b.length + 3);
  withOverload.set(b.subarray(0, b.length - 1));
  withOverload.set([Opt.overload, 1, 1, 255], b.length - 1);
  const p = decode(withOverload);
  assert.equal(readText(p.options.get(Opt.vendorClass)), "PXEClient:Arch:00000:UN");
  assert.equal(p.file, "");
});
