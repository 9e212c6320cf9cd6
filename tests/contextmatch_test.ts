// The build context's wildcards and .dockerignore (src/images/contextmatch.ts), with the
// examples of Docker's own reference.
import assert from "node:assert/strict";
import {
  globMatch,
  globPattern,
  ignored,
  parseIgnore,
  skipped,
} from "../src/images/contextmatch.ts";

const out = (rules: string, path: string) => ignored(parseIgnore(rules), path.split("/"));

Deno.test("contextmatch: Go's filepath.Match per component, in time linear in the name", () => {
  const m = (p: string, n: string) => globMatch(globPattern(p, p), n);
  assert.ok(m("*.conf", "a.conf") && m("?.conf", "a.conf") && m("[a-c].conf", "b.conf"));
  assert.ok(m("[^a].conf", "b.conf") && !m("[^a].conf", "a.conf") && m("\\*", "*"));
  assert.ok(!m("*.conf", "a.confx") && !m("?", "ab") && m("*", ".hidden"));
  assert.throws(() => globPattern("[ab", "x"), /a \[ without \]/);
  const t0 = performance.now();
  assert.equal(m("*a".repeat(200) + "c", "a".repeat(255)), false);
  assert.ok(performance.now() - t0 < 500, `${performance.now() - t0} ms`);
});

Deno.test("contextmatch: .dockerignore as Docker's reference has it", () => {
  const rules = "# comment\n*/temp*\n*/*/temp*\ntemp?\n";
  assert.ok(out(rules, "somedir/temporary.txt"));
  assert.ok(out(rules, "somedir/temp"));
  assert.ok(out(rules, "somedir/subdir/temporary.txt"));
  assert.ok(out(rules, "tempa") && out(rules, "tempb"));
  assert.ok(!out(rules, "temporary.txt") && !out(rules, "a/b/c/temp"));
  assert.ok(out("**/*.go", "a/b/c.go") && out("**/*.go", "c.go"));
  // the last rule matching decides; a directory's rule covers what it holds
  const md = "*.md\n!README*.md\nREADME-secret.md\n";
  assert.ok(out(md, "CHANGES.md") && !out(md, "README.md") && out(md, "README-secret.md"));
  assert.ok(out("/.git\n", ".git/config") && out("node_modules", "node_modules/x/y.js"));
  assert.ok(!out("./build/../dist\n", "build/x") && out("./build/../dist\n", "dist/x"));
  // an excluded directory is walked only where an exception may take back what it holds
  const keep = parseIgnore(".git\n**/.env\n!keep/.env\n");
  assert.ok(skipped(keep, [".git"], true) && !skipped(keep, ["keep"], false));
  assert.ok(skipped(keep, ["a", ".env"], false) && !skipped(keep, ["keep", ".env"], false));
  assert.throws(() => parseIgnore("x\n".repeat(201)), /more than 200 patterns/);
});

Deno.test("contextmatch: a .dockerignore's patterns cost at most a few ms a path, however deep", () => {
  // 200 patterns of `**/` repeated: each `**` was tried from every place it could start (n² a
  // `**`, for every one): 5 s of the server's thread for each file 200 directories deep
  const rules = parseIgnore(`${"**/".repeat(1360)}x\n`.repeat(200));
  const deep = Array.from({ length: 200 }, (_, i) => `d${i}`);
  const t0 = performance.now();
  assert.equal(skipped(rules, deep, true), false);
  assert.equal(skipped(rules, [...deep, "x"], false), true);
  assert.ok(performance.now() - t0 < 500, `${performance.now() - t0} ms`);
  // the same patterns, their `**` and `*` runs one each
  assert.ok(out("a/**/**/b\n", "a/b") && out("a/**/**/b\n", "a/x/y/b") && !out("a/**/b", "b"));
  assert.ok(out("**/**\n", "x") && out("a**b\n", "ab") && out("a***b\n", "axxb"));
  // a pattern is a path: PATH_MAX at most
  assert.throws(() => parseIgnore(`${"a".repeat(4097)}\n`), /more than 4096 characters \(aaa/);
});
