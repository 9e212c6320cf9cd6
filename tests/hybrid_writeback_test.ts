// hybrid/writeback.ts: the copy runs with background writeback from 16 MiB of dirty data, and the
// kernel's setting (ratio or bytes, whichever was in force) is back after it, also after a failure.
// Against a stand-in /proc/sys/vm, then the real one (root, as the node's init runs it).
import assert from "node:assert/strict";
import { EARLY_WRITEBACK_BYTES, withEarlyWriteback } from "../hybrid/writeback.ts";

async function fakeVm(bytes: string, ratio: string) {
  const vm = await Deno.makeTempDir({ prefix: "nr-vm-" });
  Deno.writeTextFileSync(`${vm}/dirty_background_bytes`, `${bytes}\n`);
  Deno.writeTextFileSync(`${vm}/dirty_background_ratio`, `${ratio}\n`);
  const read = (name: string) => Deno.readTextFileSync(`${vm}/dirty_background_${name}`).trim();
  return { vm, read };
}

Deno.test("early writeback: set for the copy, the ratio in force put back, also after a failure", async () => {
  const { vm, read } = await fakeVm("0", "10");
  try {
    const said: string[] = [];
    const r = await withEarlyWriteback(() => {
      assert.equal(read("bytes"), String(EARLY_WRITEBACK_BYTES));
      Deno.writeTextFileSync(`${vm}/dirty_background_ratio`, "0\n"); // as the kernel does
      return Promise.resolve(42);
    }, { vm, log: (l) => said.push(l) });
    assert.equal(r, 42);
    assert.deepEqual(said, ["background writeback from 16 MiB of dirty data (was 10 % of memory)"]);
    assert.equal(read("ratio"), "10");
    Deno.writeTextFileSync(`${vm}/dirty_background_bytes`, "0\n"); // as the kernel does
    await assert.rejects(
      withEarlyWriteback(() => {
        Deno.writeTextFileSync(`${vm}/dirty_background_ratio`, "0\n");
        return Promise.reject(new Error("disk full"));
      }, { vm }),
      /disk full/,
    );
    assert.equal(read("ratio"), "10", "put back after a failed copy");
  } finally {
    await Deno.remove(vm, { recursive: true });
  }
});

Deno.test("early writeback: a byte setting in force is the one put back", async () => {
  const { vm, read } = await fakeVm("33554432", "0");
  try {
    await withEarlyWriteback(() => Promise.resolve(), { vm });
    assert.equal(read("bytes"), "33554432");
  } finally {
    await Deno.remove(vm, { recursive: true });
  }
});

Deno.test("early writeback: without the setting (no /proc, not root) the copy runs as it is", async () => {
  assert.equal(
    await withEarlyWriteback(() => Promise.resolve("ran"), { vm: "/nonexistent/vm" }),
    "ran",
  );
});

Deno.test("early writeback: the real kernel setting (root), changed during the copy, back after", async () => {
  const vm = "/proc/sys/vm";
  const before = [
    Deno.readTextFileSync(`${vm}/dirty_background_bytes`),
    Deno.readTextFileSync(`${vm}/dirty_background_ratio`),
  ];
  await withEarlyWriteback(() => {
    assert.equal(
      Deno.readTextFileSync(`${vm}/dirty_background_bytes`).trim(),
      String(EARLY_WRITEBACK_BYTES),
      "this test needs root to change vm.dirty_background_bytes",
    );
    return Promise.resolve();
  });
  assert.deepEqual([
    Deno.readTextFileSync(`${vm}/dirty_background_bytes`),
    Deno.readTextFileSync(`${vm}/dirty_background_ratio`),
  ], before);
});
