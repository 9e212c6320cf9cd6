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
