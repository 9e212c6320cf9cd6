// The boot protocols (netboot/) reach neither the database nor the registries: each of their files'
// import graphs (Deno's own, `import type` included) stays clear of the stores and the Context;
// what they need comes through the Booter (netboot/booter.ts). No root needed.
import assert from "node:assert/strict";
import { importGraph } from "./support/importgraph.ts";

const root = new URL("../", import.meta.url);
const forbidden = [
  "src/db.ts",
  "node:sqlite",
  "src/nodes.ts",
  "src/images/",
  "src/nfs.ts",
  "src/boots.ts",
  "src/context.ts",
  "src/events.ts",
  "src/config.ts",
  "src/boot/",
];

// Everything else it may reach, besides node: modules: the log, the event kind list, the libc
// bindings and the worker helper (all free of server state), and Hono for the /boot routes. A new
// server module in netboot/'s graph fails here until it is named, even one not listed above.
const allowed = [
  "netboot/",
  "contract/",
  "src/log.ts",
  "src/eventkinds.ts",
  "src/linux/",
  "src/worker.ts",
  "npm:hono@",
  "npm:/hono@",
];

async function netbootFiles(dir = "netboot"): Promise<string[]> {
  const files: string[] = [];
  for await (const e of Deno.readDir(new URL(dir, root))) {
    if (e.isDirectory) files.push(...await netbootFiles(`${dir}/${e.name}`));
    else if (e.name.endsWith(".ts")) files.push(`${dir}/${e.name}`);
  }
  return files.sort();
}

Deno.test("netboot/: no file's import graph reaches the database, the registries or the Context", async () => {
  const files = await netbootFiles();
  assert.ok(files.includes("netboot/http.ts") && files.includes("netboot/dhcp4/server.ts"));
  const bad: string[] = [];
  for (const file of files) {
    // Every module and every edge (a node: module is an edge's specifier, not a module).
    const reached = (await importGraph(file)).flatMap((m) => [m.file, ...m.imports]);
    for (const r of new Set(reached)) {
      if (forbidden.some((f) => r === f || r.startsWith(f))) bad.push(`${file} → ${r}`);
    }
  }
  assert.deepEqual(bad, [], `netboot/ reaches server state:\n${bad.join("\n")}`);
});

Deno.test("netboot/: its import graphs stay in netboot/, contract/ and the stateless helpers", async () => {
  const outside = new Set<string>();
  for (const file of await netbootFiles()) {
    for (const m of await importGraph(file)) {
      for (const r of [m.file, ...m.imports]) {
        if (!r.startsWith("node:") && !allowed.some((a) => r.startsWith(a))) {
          outside.add(`${m.file} → ${r}`);
        }
      }
    }
  }
  assert.deepEqual([...outside], [], `netboot/ reaches outside its allowed modules`);
});
