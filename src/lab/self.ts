// How to run this netroot again as a child process, in the form this one runs in: a `deno
// compile` executable runs itself; a `deno bundle` output runs through the same deno (with no
// config: the bundle needs none, and a deno.json in the working directory must not apply); from
// source, the checkout's main.ts.
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkoutRoot } from "../datadir.ts";
import { isCompiled } from "../initramfs/bundle.ts";

export function netrootCommand(): string[] {
  if (isCompiled()) return [Deno.execPath()];
  const self = fileURLToPath(import.meta.url);
  if (self.endsWith(".js")) return [Deno.execPath(), "run", "-A", "--no-config", self];
  const root = checkoutRoot();
  if (!root) throw new Error(`cannot tell how netroot runs (module ${import.meta.url})`);
  return [Deno.execPath(), "run", "-A", join(root, "main.ts")];
}
