// followRegistry: what the system holds for the registry (NFS exports, pinned addresses) applied
// again after changes and on a timer, one application at a time.
import assert from "node:assert/strict";
import { followRegistry } from "../src/follow.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("an application that hangs queues one more, not one per tick or change", async () => {
  const changes = new EventTarget();
  let applied = 0, release = () => {};
  const stuck = new Promise<void>((r) => release = r);
  const f = followRegistry({ changes }, async () => {
    applied++;
    if (applied === 1) await stuck; // an export reload that hangs (a wedged ganesha, exportfs)
  }, { recheckMs: 5, failed: () => {} });
  try {
    await sleep(50);
    for (let i = 0; i < 100; i++) changes.dispatchEvent(new Event("nodes"));
    await sleep(300); // about 60 ticks and a change's debounce while the first one hangs
    assert.equal(applied, 1);
    release();
    await sleep(0);
    // (before: each tick had queued an application of its own: ~60 ran back to back, the whole
    // export table rendered and reloaded each time, and a hang of hours queued ~360 an hour)
    assert.ok(applied <= 3, `applications after the hang: ${applied}`);
    // Nothing lost: a change during an application is applied after it.
    const before = applied;
    changes.dispatchEvent(new Event("images"));
    await sleep(300);
    assert.ok(applied > before);
  } finally {
    release();
    await f.stop();
  }
});
