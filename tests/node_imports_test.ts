// The node program (bundled from overlay/node_main.ts into the initramfs) reaches no server code:
// Deno's own module graph of the entry may only hold the node folders and the shared contract.
// No root needed.
import assert from "node:assert/strict";
import { importGraph } from "./support/importgraph.ts";

// src/worker.ts: the one worker-from-source helper, dependency-free, shared with the server;
// src/timer.ts: the node program's timers (not setTimeout), dependency-free.
const allowed = ["contract/", "overlay/", "hybrid/", "src/linux/", "src/worker.ts", "src/timer.ts"];

Deno.test("node entry: its import graph stays in contract/, overlay/, hybrid/, src/linux/", async () => {
  const files = (await importGraph("overlay/node_main.ts")).map((m) => m.file);
  assert.ok(files.includes("overlay/init.ts") && files.includes("hybrid/mod.ts"), files.join("\n"));
  const outside = files.filter((f) => !allowed.some((dir) => f.startsWith(dir)));
  assert.deepEqual(
    outside,
    [],
    `server or external modules in the node program:\n${files.join("\n")}`,
  );
});

Deno.test("root modes: hybrid/ imports nothing of overlay/, network mode nothing of hybrid/", async () => {
  for (const { file: from, imports } of await importGraph("overlay/node_main.ts")) {
    for (const to of imports) {
      if (from.startsWith("hybrid/")) assert.ok(!to.startsWith("overlay/"), `${from} → ${to}`);
      if (from.startsWith("contract/")) assert.ok(to.startsWith("contract/"), `${from} → ${to}`);
      // Only the init, which composes the modes, knows hybrid mode.
      if (from.startsWith("overlay/") && from !== "overlay/init.ts") {
        assert.ok(!to.startsWith("hybrid/"), `${from} → ${to}`);
      }
    }
  }
});

Deno.test("node program: no setTimeout or setInterval (src/timer.ts instead)", async () => {
  // Deno 2.9's first setTimeout of a process loads Node's timers polyfill: ≈ 0.25 s of the init
  // under qemu TCG (src/timer.ts; tests/timer_test.ts checks that premise).
  const calls: string[] = [];
  for (const { file } of await importGraph("overlay/node_main.ts")) {
    if (file === "src/timer.ts") continue;
    const code = (await Deno.readTextFile(file)).replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, "");
    for (const m of code.matchAll(/\b(setTimeout|setInterval)\s*\(/g)) {
      calls.push(`${file}: ${m[1]}`);
    }
  }
  assert.deepEqual(calls, []);
});
