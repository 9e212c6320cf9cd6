import assert from "node:assert/strict";
import type { InitConsole } from "../overlay/console.ts";
import {
  backoffMs,
  type MountSource,
  mountWithRetry,
  nfsMountArgs,
} from "../overlay/rootsource.ts";

const t = { host: "10.77.0.1", path: "/netroot/images/abc" };

Deno.test("nfs mount(2) arguments: kernel text options with explicit addr; an image's tree cached as immutable, a /persist not", () => {
  assert.deepEqual(nfsMountArgs(t, "4.2", false), {
    source: "10.77.0.1:/netroot/images/abc",
    fstype: "nfs4",
    data: "vers=4.2,addr=10.77.0.1",
  });
  assert.deepEqual(nfsMountArgs(t, "3", false), {
    source: "10.77.0.1:/netroot/images/abc",
    fstype: "nfs",
    data: "vers=3,proto=tcp,nolock,addr=10.77.0.1",
  });
  assert.equal(nfsMountArgs(t, "4.2", true).data, "vers=4.2,addr=10.77.0.1,nocto,actimeo=3600");
  assert.equal(
    nfsMountArgs(t, "3", true).data,
    "vers=3,proto=tcp,nolock,addr=10.77.0.1,nocto,actimeo=3600",
  );
});

function recorder(): InitConsole & { lines: string[] } {
  const lines: string[] = [];
  return { lines, line: (m) => lines.push(m), loud: (t, l) => lines.push(t, ...l) };
}

Deno.test("mount retry: backs off, prints each attempt, succeeds when the server comes up", async () => {
  let n = 0;
  const src: MountSource = {
    describe: "nfs4 10.77.0.1:/img",
    mount: (target, ro) => {
      assert.equal(target, "/run/netroot/lower");
      assert.equal(ro, true);
      if (++n < 4) throw new Error("mount: Connection refused (errno 111)");
    },
  };
  const out = recorder();
  const slept: number[] = [];
  const r = await mountWithRetry(src, "/run/netroot/lower", true, 60_000, out, (ms) => {
    slept.push(ms);
    return Promise.resolve();
  });
  assert.equal(r.attempts, 4);
  assert.deepEqual(slept, [500, 1000, 2000]);
  assert.equal(out.lines.length, 3);
  assert.match(
    out.lines[0],
    /^mount attempt 1 failed: .*Connection refused.*; retrying in 500 ms/,
  );
});

Deno.test("mount retry: gives up when the budget is spent, with the last error", async () => {
  const src: MountSource = {
    describe: "x",
    mount: () => {
      throw new Error("mount: No route to host (errno 113)");
    },
  };
  const t0 = performance.now();
  await assert.rejects(
    mountWithRetry(src, "/x", true, 300, recorder()),
    /No route to host \(errno 113\) — gave up after \d attempts in \d+ ms/,
  );
  const took = performance.now() - t0;
  assert.ok(took >= 290 && took < 1000, `took ${took} ms`);
  assert.deepEqual([1, 2, 3, 4, 5, 6].map(backoffMs), [500, 1000, 2000, 4000, 5000, 5000]);
});
