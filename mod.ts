// netroot as a library: what another TypeScript program imports.
export { buildApp, openContext, serve } from "./src/server.ts";
export type { RunningServer } from "./src/server.ts";
export { defaultConfig, loadServeConfig } from "./src/config.ts";
export type { ServerConfig } from "./src/config.ts";
export type { Context, Service } from "./src/context.ts";
export { openDatabase, tx } from "./src/db.ts";
export { listEvents, recordEvent } from "./src/events.ts";
export { DataDir } from "./src/datadir.ts";
export { normalizeMac } from "./src/mac.ts";
export { ImageStore } from "./src/images/store.ts";
export { NodeRegistry } from "./src/nodes.ts";
export { Rebooter } from "./src/reboot.ts";
export type { RebootMechanism } from "./src/reboot.ts";
