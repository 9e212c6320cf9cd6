import assert from "node:assert/strict";
import { fetchManifest } from "../hybrid/mod.ts";
import { httpGetText } from "../overlay/http.ts";

Deno.test("hybrid manifest fetch: a stalled first request is retried on a fresh one; 404 is final", async () => {
  let calls = 0, missing = 0;
  const stalled: (() => void)[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (new URL(req.url).pathname === "/missing") {
      missing++;
      return new Response("no", { status: 404 });
    }
    if (++calls === 1) return new Promise<Response>((r) => stalled.push(() => r(new Response(""))));
    return new Response("netroot-manifest 1\n");
  });
  try {
    const base = `http://127.0.0.1:${server.addr.port}`;
    const logs: string[] = [];
    assert.equal(
      await fetchManifest(httpGetText, `${base}/m`, (m) => logs.push(m), 3, 300),
      "netroot-manifest 1\n",
    );
    assert.equal(calls, 2);
    assert.match(logs[0], /manifest attempt 1 failed: waiting for the answer of 127\.0\.0\.1:\d+/);
    await assert.rejects(
      fetchManifest(httpGetText, `${base}/missing`, () => {}, 3, 300),
      /^Error: manifest: HTTP 404/,
    );
    assert.equal(missing, 1, "a 404 is not retried");
  } finally {
    for (const s of stalled) s();
    await server.shutdown();
  }
});
