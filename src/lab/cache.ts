// Where the lab keeps what it downloads once (the Debian kernel, busybox-static):
//   <cache>/kernel/<kv>/   boot/vmlinuz-<kv> and lib/modules/<kv>/ (see kernel.ts)
//   <cache>/busybox/busybox
// An installed netroot has no checkout to write into: NETROOT_CACHE, else $XDG_CACHE_HOME/netroot,
// else /var/cache/netroot (root; the demo needs root) or ~/.cache/netroot. The tests pass the
// checkout's .work/ instead (tests/support/kernel.ts), where CI keeps its cached kernel.
import { join } from "node:path";

export function defaultCacheDir(): string {
  const env = Deno.env.get("NETROOT_CACHE");
  if (env) return env;
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "netroot");
  const home = Deno.env.get("HOME");
  return Deno.uid() === 0 || !home ? "/var/cache/netroot" : join(home, ".cache", "netroot");
}
