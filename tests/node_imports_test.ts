// The node program (bundled from overlay/node_main.ts into the initramfs) reaches no server code:
// Deno's own module graph of the entry may only hold the node folders and the shared contract.
// No root needed.
import assert from "node:assert/strict";

const root = new URL("../", import.meta.url).href;
// src/worker.ts: the one worker-from-source helper, dependency-free, shared with the server.
const allowed = ["contract/", "overlay/", "hybrid/", "src/linux/", "src/worker.ts"];

interface Graph {
  modules: {
    specifier: string;
    kind?: string;
    /** `code` for imports of values, `type` for `import type` (both count: a type import today is
     *  a value import tomorrow). */
    dependencies?: {
      specifier: string;
      code?: { specifier?: string };
      type?: { specifier?: string };
    }[];
  }[];
}

async function graphOf(entry: string): Promise<Graph> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL(entry, root).pathname],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

const rel = (specifier: string) =>
  specifier.startsWith(root) ? specifier.slice(root.length) : specifier;

Deno.test("node entry: its import graph stays in contract/, overlay/, hybrid/, src/linux/", async () => {
  const g = await graphOf("overlay/node_main.ts");
  const files = g.modules.map((m) => rel(m.specifier));
  assert.ok(files.includes("overlay/init.ts") && files.includes("hybrid/mod.ts"), files.join("\n"));
  const outside = files.filter((f) => !allowed.some((dir) => f.startsWith(dir)));
  assert.deepEqual(
    outside,
    [],
    `server or external modules in the node program:\n${files.join("\n")}`,
  );
});

Deno.test("root modes: hybrid/ imports nothing of overlay/, network mode nothing of hybrid/", async () => {
  const g = await graphOf("overlay/node_main.ts");
  const deps = (m: Graph["modules"][number]) =>
    (m.dependencies ?? []).flatMap((d) =>
      [d.code?.specifier, d.type?.specifier].filter((s) => s !== undefined).map(rel)
    );
  for (const m of g.modules) {
    const from = rel(m.specifier);
    for (const to of deps(m)) {
      if (from.startsWith("hybrid/")) assert.ok(!to.startsWith("overlay/"), `${from} → ${to}`);
      if (from.startsWith("contract/")) assert.ok(to.startsWith("contract/"), `${from} → ${to}`);
      // Only the init, which composes the modes, knows hybrid mode.
      if (from.startsWith("overlay/") && from !== "overlay/init.ts") {
        assert.ok(!to.startsWith("hybrid/"), `${from} → ${to}`);
      }
    }
  }
});
