// The import's streamed sha256 (src/images/sha256.ts): off the caller's thread through libcrypto,
// or node:crypto on it, the same digests as node:crypto in one piece.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { sha256Stream } from "../src/images/sha256.ts";

Deno.test("streamed sha256, offloaded or not, equals node:crypto's, chunks updated back to back", async () => {
  const data = new Uint8Array(9_000_001).map((_, i) => (i * 2654435761) >>> 24);
  const want = createHash("sha256").update(data).digest("hex");
  const cuts = [0, 1, 64, 65, 300_000, 4 << 20, 8_999_999, 9_000_001];
  for (const offload of [true, false]) {
    const h = sha256Stream(offload);
    const pending: Promise<void>[] = [];
    for (let i = 1; i < cuts.length; i++) {
      const p = h.update(data.subarray(cuts[i - 1], cuts[i]));
      if (p) pending.push(p);
    }
    // Offloaded: each update is a call on another thread (libcrypto is there: systemd needs it).
    assert.equal(pending.length, offload ? cuts.length - 1 : 0);
    assert.equal(await h.digest(), want, `offload ${offload}`);
    await Promise.all(pending);
    // Empty content.
    assert.equal(
      await sha256Stream(offload).digest(),
      createHash("sha256").update(new Uint8Array(0)).digest("hex"),
    );
  }
  // Many files at once, each with its own context, their updates interleaved.
  const streams = Array.from({ length: 8 }, () => sha256Stream());
  for (let off = 0; off < data.length; off += 1 << 20) {
    for (const [k, h] of streams.entries()) {
      h.update(data.subarray(off + k, Math.min(data.length, off + (1 << 20))));
    }
  }
  const got = await Promise.all(streams.map((h) => h.digest()));
  for (const [k, d] of got.entries()) {
    const h = createHash("sha256");
    for (let off = 0; off < data.length; off += 1 << 20) {
      h.update(data.subarray(off + k, Math.min(data.length, off + (1 << 20))));
    }
    assert.equal(d, h.digest("hex"), `stream ${k}`);
  }
});
