// netroot as a library, node side: what a program embedding the node's boot imports (e.g. its own
// initramfs /init). It reaches no server code, so a bundle of it stays node-only (as
// overlay/node_main.ts, the entry `deno task bundle` builds for the initramfs).

// The init: `runInit(args)` is `netroot init` (refuses unless PID 1); `boot(deps)` is the whole
// sequence with its seams injected (`productionDeps()` are the real ones).
export { boot, InitFailure, productionDeps, run as runInit } from "./overlay/init.ts";
export type { HybridEnv, HybridProbe, HybridRoot, InitDeps } from "./overlay/init.ts";

// Hybrid mode (verified local copy on ext4 `walt-hybrid/`): the probe the init uses, and the
// copy-and-verify step on its own.
export { hybridProbe, tryHybridBoot } from "./hybrid/mod.ts";
export type { HybridBoot, HybridBootOptions } from "./hybrid/mod.ts";
