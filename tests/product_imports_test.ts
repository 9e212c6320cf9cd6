// The product never imports its tests: no module of the program (src/, netboot/, overlay/,
// hybrid/, contract/, main.ts, mod.ts, node.ts) reaches anything under tests/ or bench/ — not by a
// static import, a dynamic import("…") nor a `new URL("…", import.meta.url)` (worker scripts,
// subprocess entries). An installed bundle has no tests/ beside it. The import graph is walked
// statically from every product file, following relative specifiers wherever they lead.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../", import.meta.url));
const productDirs = ["src", "netboot", "overlay", "hybrid", "contract"];
const productFiles = ["main.ts", "mod.ts", "node.ts"];
const forbidden = ["tests", "bench"];

const patterns = [
  // import … from "x" / export … from "x" (multi-line lists included)
  /\b(?:import|export)\s[^'"`;]*?\bfrom\s*["']([^"']+)["']/g,
  // import "x" (side effects only)
  /\bimport\s*["']([^"']+)["']/g,
  // import("x"), import.meta.resolve("x")
  /\bimport(?:\.meta\.resolve)?\s*\(\s*["'`]([^"'`$]+)["'`]\s*\)/g,
  // new URL("x", import.meta.url)
  /\bnew\s+URL\(\s*["'`]([^"'`$]+)["'`]\s*,\s*import\.meta\.url/g,
];

/** Module specifiers a source text refers to (full-line comments ignored). */
export function specifiers(text: string): string[] {
  const code = text.split("\n").filter((l) => !/^\s*(\/\/|\*|\/\*)/.test(l)).join("\n");
  return patterns.flatMap((re) => [...code.matchAll(re)].map((m) => m[1]));
}

function sourceFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .map((f) => join(dir, f))
    .filter((f) => /\.(ts|js|mjs)$/.test(f) && statSync(f).isFile());
}

/** Every file reachable from `roots` through relative specifiers, with who imports it. */
function walk(roots: string[]): Map<string, string> {
  const seen = new Map<string, string>(roots.map((r) => [r, "(product file)"]));
  const queue = [...roots];
  while (queue.length) {
    const file = queue.pop()!;
    for (const spec of specifiers(readFileSync(file, "utf8"))) {
      if (!spec.startsWith(".") && !spec.startsWith("/") && !spec.startsWith("file:")) continue;
      const target = spec.startsWith("file:")
        ? fileURLToPath(spec)
        : resolve(dirname(file), spec.split(/[?#]/)[0]);
      if (seen.has(target)) continue;
      seen.set(target, relative(root, file));
      if (existsSync(target) && statSync(target).isFile()) queue.push(target);
    }
  }
  return seen;
}

Deno.test("the scanner sees static, multi-line, dynamic and URL references", () => {
  const text = `import { a } from "./a.ts";
import {
  b,
  c,
} from "../b.ts";
export { d } from "./d.ts";
import "./side.ts";
// import { x } from "../tests/commented.ts";
const h = await import("../../tests/e2e/harness.ts");
const w = new URL("./worker.ts", import.meta.url);
const s = "from here"; const t = "not an import";`;
  assert.deepEqual(specifiers(text).sort(), [
    "../../tests/e2e/harness.ts",
    "../b.ts",
    "./a.ts",
    "./d.ts",
    "./side.ts",
    "./worker.ts",
  ]);
});

Deno.test("no product module imports anything under tests/ or bench/", () => {
  const roots = [
    ...productDirs.flatMap((d) => sourceFiles(join(root, d))),
    ...productFiles.map((f) => join(root, f)).filter((f) => existsSync(f)),
  ];
  assert.ok(roots.length > 50, `product files found: ${roots.length}`);
  const reached = walk(roots);
  const bad = [...reached].filter(([f]) =>
    forbidden.some((d) => relative(root, f).split("/")[0] === d)
  ).map(([f, by]) => `${by} → ${relative(root, f)}`);
  assert.deepEqual(bad, [], "the product reaches test or bench code");
});

Deno.test("the walk misses no module deno itself resolves for main.ts, mod.ts and node.ts", async () => {
  const reached = walk(productFiles.map((f) => join(root, f)).filter((f) => existsSync(f)));
  for (const entry of productFiles.filter((f) => existsSync(join(root, f)))) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entry],
      cwd: root,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
      modules: { specifier: string }[];
    };
    const local = info.modules.map((m) => m.specifier).filter((s) => s.startsWith("file:"))
      .map((s) => fileURLToPath(s));
    assert.ok(local.length > 1, entry);
    const missed = local.filter((f) => !reached.has(f)).map((f) => relative(root, f));
    assert.deepEqual(missed, [], `modules of ${entry} the static walk did not find`);
  }
});
