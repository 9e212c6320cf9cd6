// netroot as a library, node side: what a program embedding the node's boot imports (e.g. its own
// initramfs /init). It reaches no server code, so a bundle of it stays node-only (as
// overlay/node_main.ts, the entry `deno task bundle` builds for the initramfs).

// The init: `runInit(args)` is `netroot init` (refuses unless PID 1); `boot(deps)` is the whole
// sequence with its seams injected (`productionDeps()` are the real ones).
export { boot, productionDeps, run as runInit } from "./overlay/init.ts";
export { InitFailure } from "./overlay/stage.ts";
export type { InitDeps } from "./overlay/init.ts";

// The two ways of making a root (one interface, contract/rootmode.ts): network mode (NFS + RAM
// overlay) and hybrid mode (verified local copy on ext4 `walt-hybrid/`).
export { networkMode } from "./overlay/nfsroot.ts";
export { hybridMode, tryHybridBoot } from "./hybrid/mod.ts";
export type { HybridBoot, HybridBootOptions } from "./hybrid/mod.ts";
export type { RootEnv, RootMode } from "./contract/rootmode.ts";

// The server↔node wire contract: kernel command line and stage reports.
export { parseCmdline, renderCmdline } from "./contract/cmdline.ts";
export { MAX_BATCH, parseReport, parseReports } from "./contract/report.ts";
