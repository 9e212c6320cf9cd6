// A hostile image's module index (modules.alias, modules.softdep, modules.dep) of ordinary size,
// written so that reading it or planning the load order takes time quadratic in its length: the
// build parses and plans on the server's only thread, which answers DHCP, TFTP and HTTP.
import assert from "node:assert/strict";
import { parseModuleIndex, planModules, renderModulesPlan } from "../src/initramfs/modules.ts";

/** `fn`'s duration; it must stay well under a second (each case took 4 to 7 s before). */
function quick(what: string, fn: () => void) {
  const t0 = performance.now();
  fn();
  const ms = performance.now() - t0;
  assert.ok(ms < 1000, `${what}: ${Math.round(ms)} ms`);
}

Deno.test("the same alias or softdep line 20,000 times (280 and 420 KB) is read in linear time", () => {
  quick("modules.alias", () => {
    const idx = parseModuleIndex({ dep: "", alias: "alias x e1000\n".repeat(20_000) });
    assert.equal(idx.aliases.get("x")!.length, 20_000);
  });
  quick("modules.softdep", () => {
    const idx = parseModuleIndex({ dep: "", softdep: "softdep e1000 pre: a\n".repeat(20_000) });
    assert.equal(idx.softPre.get("e1000")!.length, 20_000);
  });
  // One line, pre: then 40,000 spaces: a lazy match retried at each of them (1.3 s).
  quick("a long softdep line", () => {
    const idx = parseModuleIndex({ dep: "", softdep: `softdep x pre: a${" ".repeat(40_000)}b\n` });
    assert.deepEqual(idx.softPre.get("x"), ["a", "b"]);
  });
});

Deno.test("softdep pre: and post: sections as kmod reads them (words)", () => {
  const idx = parseModuleIndex({
    dep: "",
    softdep: [
      "softdep a pre: b c post: d",
      "softdep e post: f pre: g",
      "softdep h pre: i post: j pre: k",
      "softdep l post: m",
      "softdep n pre:\to  p",
    ].join("\n"),
  });
  assert.deepEqual([...idx.softPre], [["a", ["b", "c"]], ["e", ["g"]], ["h", ["i", "k"]], [
    "n",
    ["o", "p"],
  ]]);
});

Deno.test("one module name under 10,000 paths, each with the same 10,000 soft dependencies: planned in linear time", () => {
  // Every path named x is a dependency of e1000; x's soft pre-dependencies (or an alias's
  // modules) were walked again for each of them (7 s for this 290 KB index).
  const n = 10_000;
  const paths = Array.from({ length: n }, (_, i) => `k${i}/x.ko`);
  const pre = Array.from({ length: n }, (_, i) => `p${i}`);
  const dep = [
    `kernel/e1000.ko: ${paths.join(" ")}`,
    ...paths.map((p) => `${p}:`),
    ...pre.map((p) => `kernel/${p}.ko:`),
  ].join("\n");
  for (
    const [what, softdep, alias] of [
      ["soft dependencies", `softdep x pre: ${pre.join(" ")}`, ""],
      ["an alias's modules", "softdep x pre: y", pre.map((p) => `alias y ${p}`).join("\n")],
    ]
  ) {
    const idx = parseModuleIndex({ dep, softdep, alias });
    let order: string[] = [];
    quick(what, () => order = planModules(idx, ["e1000"]).order);
    // Each soft dependency before the first x (the last listed: modules.dep lists the first
    // needed last), e1000 last.
    assert.equal(order.length, 2 * n + 1);
    assert.deepEqual(order.slice(0, 3), ["kernel/p0.ko", "kernel/p1.ko", "kernel/p2.ko"]);
    assert.equal(order[n], `k${n - 1}/x.ko`);
    assert.equal(order.at(-1), "kernel/e1000.ko");
    quick(`${what}, plan`, () => renderModulesPlan(idx, ["e1000"]));
  }
});

Deno.test("a soft dependency that needs another path of the module's name: that path still comes after all of them", () => {
  // a/x.ko's soft pre-dependency p depends on b/x.ko, whose own walk of x's list takes q and r
  // first: the walk is shared, not skipped.
  const idx = parseModuleIndex({
    dep:
      "kernel/e1000.ko: a/x.ko\na/x.ko:\nb/x.ko:\nkernel/p.ko: b/x.ko\nkernel/q.ko:\nkernel/r.ko:\n",
    softdep: "softdep x pre: p q r\n",
  });
  assert.deepEqual(planModules(idx, ["e1000"]).order, [
    "kernel/q.ko",
    "kernel/r.ko",
    "b/x.ko",
    "kernel/p.ko",
    "a/x.ko",
    "kernel/e1000.ko",
  ]);
});
