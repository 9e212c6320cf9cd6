// The boot protocols (netboot/) reach neither the database nor the registries: each of their files'
// import graphs (Deno's own, `import type` included) stays clear of the stores and the Context;
// what they need comes through the Booter (netboot/booter.ts). No root needed.
import assert from "node:assert/strict";

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

interface Graph {
  modules: {
    specifier: string;
    dependencies?: {
      specifier: string;
      code?: { specifier?: string };
      type?: { specifier?: string };
    }[];
  }[];
}

async function graphOf(file: string): Promise<Graph> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL(file, root).pathname],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

async function netbootFiles(dir = "netboot"): Promise<string[]> {
  const files: string[] = [];
  for await (const e of Deno.readDir(new URL(dir, root))) {
    if (e.isDirectory) files.push(...await netbootFiles(`${dir}/${e.name}`));
    else if (e.name.endsWith(".ts")) files.push(`${dir}/${e.name}`);
  }
  return files.sort();
}

const rel = (s: string) => s.startsWith(root.href) ? s.slice(root.href.length) : s;

Deno.test("netboot/: no file's import graph reaches the database, the registries or the Context", async () => {
  const files = await netbootFiles();
  assert.ok(files.includes("netboot/http.ts") && files.includes("netboot/dhcp4/server.ts"));
  const bad: string[] = [];
  for (const file of files) {
    const g = await graphOf(file);
    // Every module and every edge (a node: module is an edge's specifier, not a module).
    const reached = g.modules.flatMap((m) => [
      rel(m.specifier),
      ...(m.dependencies ?? []).flatMap((d) =>
        [d.specifier, d.code?.specifier, d.type?.specifier].filter((s) => s !== undefined).map(rel)
      ),
    ]);
    for (const r of new Set(reached)) {
      if (forbidden.some((f) => r === f || r.startsWith(f))) bad.push(`${file} → ${r}`);
    }
  }
  assert.deepEqual(bad, [], `netboot/ reaches server state:\n${bad.join("\n")}`);
});
