// Deno's own module graph of a file (`deno info --json`), for the tests that keep import directions
// (node side, netboot/, node.ts). Paths come back relative to the checkout ("src/db.ts"); other
// specifiers (npm:, node:) as they are.
import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).href;

export interface GraphModule {
  /** The module, relative to the checkout. */
  file: string;
  /** What it imports, `import type` included (a type import today is a value import tomorrow). */
  imports: string[];
}

const rel = (s: string) => s.startsWith(root) ? s.slice(root.length) : s;

export async function importGraph(file: string): Promise<GraphModule[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL(file, root).pathname],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const g = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    modules: {
      specifier: string;
      dependencies?: {
        specifier: string;
        code?: { specifier?: string };
        type?: { specifier?: string };
      }[];
    }[];
  };
  return g.modules.map((m) => ({
    file: rel(m.specifier),
    imports: (m.dependencies ?? []).flatMap((d) => {
      const resolved = [d.code?.specifier, d.type?.specifier].filter((s) => s !== undefined);
      return (resolved.length ? resolved : [d.specifier]).map(rel);
    }),
  }));
}
