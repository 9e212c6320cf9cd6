// The timeline's answers as an attacker on the boot network reads them (reads are open by
// default), and what they must still give everyone: a stream's backlog comes whole, in order.
import assert from "node:assert/strict";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { listEvents, recordEvent } from "../src/events.ts";
import { eventStreams } from "../src/eventstream.ts";
import { buildApp, closeContext, openContext } from "../src/server.ts";

const info = {
  remoteAddr: { transport: "tcp", hostname: "10.77.0.66", port: 40000 },
  completed: Promise.resolve(),
};

async function withApp(
  fn: (ctx: Context, get: (path: string, init?: RequestInit) => Promise<Response>) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "nr-rev-events-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  const app = buildApp(ctx);
  try {
    await fn(
      ctx,
      async (path, init) =>
        await app.fetch(new Request(`http://127.0.0.1:8080${path}`, init), info),
    );
  } finally {
    ctx.changes.dispatchEvent(new Event("closing")); // what serve's close does: streams end
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("event streams: a backlog longer than one batch comes whole and in order", async () => {
  await withApp(async (ctx) => {
    ctx.db.exec("BEGIN");
    for (let i = 0; i < 1234; i++) recordEvent(ctx.db, null, "node.config", { i });
    ctx.db.exec("COMMIT");
    const want = listEvents(ctx.db, { limit: 10000 }).map((e) => e.id);
    const streams = eventStreams(ctx.db);
    try {
      const reader = streams.respond({ since: 0 }).body!.getReader();
      let text = "";
      const dec = new TextDecoder();
      const until = Date.now() + 10_000;
      while (!text.includes(`id: ${want.at(-1)}\n`)) {
        assert.ok(Date.now() < until, "the newest event never came");
        const { value, done } = await reader.read();
        if (done) break;
        text += dec.decode(value);
      }
      const got = [...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
      assert.deepEqual(got, want, `${got.length} of ${want.length} events, from ${got[0]}`);
      await reader.cancel();
    } finally {
      streams.closeAll();
    }
  });
});
