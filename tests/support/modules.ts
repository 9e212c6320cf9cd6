// Kernel module closures for the qemu guests the tests build their own initramfs for.
import { readFileSync } from "node:fs";
import { join } from "node:path";

/** Module files for `wanted` and their dependencies, in load order (modules.dep lists each
 *  module's full dependency closure, deepest last). */
export function moduleClosure(modDir: string, wanted: string[]): string[] {
  const deps = new Map<string, string[]>();
  for (const line of readFileSync(join(modDir, "modules.dep"), "utf8").split("\n")) {
    const [mod, rest] = line.split(":");
    if (mod) deps.set(mod, rest.trim().split(/\s+/).filter(Boolean));
  }
  const order: string[] = [];
  const add = (m: string) => {
    if (order.includes(m)) return;
    for (const d of [...(deps.get(m) ?? [])].reverse()) add(d);
    order.push(m);
  };
  for (const w of wanted) {
    const m = [...deps.keys()].find((k) => k.endsWith(`/${w}.ko`));
    if (!m) throw new Error(`module ${w} not in modules.dep`);
    add(m);
  }
  return order;
}
