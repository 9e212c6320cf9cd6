// Workers from source text (src/worker.ts): module text and a self-contained function both run
// as module workers (node: imports included), started from inside a `deno bundle` output too —
// the form the TFTP transfer pool and the import hasher run in when installed.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { workerFromSource } from "../src/worker.ts";

function ask(w: Worker, msg: unknown): Promise<unknown> {
  return new Promise((resolve, reject) => {
    w.onmessage = (e) => resolve(e.data);
    w.onerror = (e) => {
      e.preventDefault();
      reject(new Error(e.message));
    };
    w.postMessage(msg);
  });
}

Deno.test("workerFromSource: module text and a function both run, several at once", async () => {
  const text = workerFromSource(
    `import { createHash } from "node:crypto";
     self.onmessage = (e) => self.postMessage(createHash("sha256").update(e.data).digest("hex"));`,
  );
  const fns = [1, 2, 3].map(() =>
    workerFromSource(() => {
      // Runs in the worker: only this body is shipped.
      (self as unknown as Worker).onmessage = (e: MessageEvent<number>) =>
        (self as unknown as Worker).postMessage(e.data * 2);
    })
  );
  try {
    assert.equal(
      await ask(text, "abc"),
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
    assert.deepEqual(await Promise.all(fns.map((w, i) => ask(w, i))), [0, 2, 4]);
  } finally {
    for (const w of [text, ...fns]) w.terminate();
  }
});

Deno.test("workerFromSource works from a one-file bundle (no module files beside it)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-worker-" });
  try {
    const entry = `${dir}/entry.ts`;
    await Deno.writeTextFile(
      entry,
      `import { workerFromSource } from ${
        JSON.stringify(fileURLToPath(new URL("../src/worker.ts", import.meta.url)))
      };
const w = workerFromSource(() => { self.onmessage = (e) => self.postMessage(e.data + 1); });
w.onmessage = (e) => { console.log("answer", e.data); w.terminate(); };
w.postMessage(41);`,
    );
    const js = `${dir}/out.js`;
    const b = await new Deno.Command(Deno.execPath(), {
      args: ["bundle", "--quiet", "--platform", "deno", "-o", js, entry],
      stderr: "piped",
    }).output();
    assert.ok(b.success, new TextDecoder().decode(b.stderr));
    await Deno.remove(entry);
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", js],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(new TextDecoder().decode(r.stdout).trim(), "answer 42");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
