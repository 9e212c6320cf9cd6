// netroot as a library, server side: what another TypeScript program imports to embed the boot
// server, drive its registries, or build a node initramfs. The node side (the initramfs /init)
// is node.ts; the command line is main.ts. Modules not exported here are internal.

// Embed the server: `serve(config, plugins?)` starts what `netroot serve` starts (HTTP API and
// dashboard, and with an interface DHCP, TFTP, NFS exports, virtual nodes); `close()` stops all of
// it. `plugins` adds API routes, node settings and power drivers to the built-in ones.
export { serve } from "./src/server.ts";
export type { Plugins, RunningServer } from "./src/server.ts";
export { defaultConfig, loadServeConfig } from "./src/config.ts";
export type { DhcpMode, NfsMode, ProxyStrategy, ServerConfig } from "./src/config.ts";

// The state without the services: `openContext(config, plugins?)` opens the data dir and database
// (reconciled); `buildApp(ctx, plugins?)` is the HTTP app (API, boot routes, dashboard) to mount
// elsewhere; `closeContext(ctx)` closes it once the work its boots and commits started in the
// background has settled.
export { buildApp, closeContext, openContext } from "./src/server.ts";
export type { Context, Service } from "./src/context.ts";
export { DataDir } from "./src/datadir.ts";
export { ImageStore } from "./src/images/store.ts";
export type { ImageInfo } from "./src/images/store.ts";
export { NodeRegistry } from "./src/nodes.ts";
export type { NodeInfo } from "./src/nodes.ts";
export { listEvents, recordEvent } from "./src/events.ts";
export type { Event } from "./src/events.ts";
export { normalizeMac } from "./src/mac.ts";

// What plugins are made of (API routes, node settings, power drivers), what routes use (the API's
// router and body helper, bearer auth), reboot mechanisms (ctx.rebooter.register), and the
// database they may use.
export type { ApiRoute } from "./src/api.ts";
export { bearerAuth, jsonBody } from "./src/api.ts";
export { apiRouter } from "./src/apierror.ts";
export type { Setting, SettingValidator } from "./src/nodes.ts";
export { Rebooter } from "./src/reboot.ts";
export type { RebootMechanism } from "./src/reboot.ts";
export type { PowerDriver, PowerTarget } from "./src/power/driver.ts";
export { openDatabase, tx } from "./src/db.ts";

// Node initramfs: `ensureInitramfs(ctx, image)` returns (building once) the initramfs of an
// imported image for the running program; `buildInitramfs` builds one from any image tree.
export { buildInitramfs, ensureInitramfs } from "./src/initramfs/build.ts";
export type { BuildOptions, BuildResult, ProgramFiles } from "./src/initramfs/build.ts";
export { currentProgram } from "./src/initramfs/bundle.ts";

// Content manifests (image ids) — a pure codec shared with the node side.
export { manifestLines, manifestText, parseManifest, serializeEntry } from "./contract/manifest.ts";
export type { ManifestEntry } from "./contract/manifest.ts";

// Protocol codecs (bytes ↔ values) and stand-alone servers/clients.
export {
  decode as decodeDhcp,
  DhcpDecodeError,
  encode as encodeDhcp,
} from "./netboot/dhcp4/packet.ts";
export type { DhcpPacket } from "./netboot/dhcp4/packet.ts";
export {
  decode as decodeTftp,
  encode as encodeTftp,
  TftpDecodeError,
} from "./netboot/tftp/packet.ts";
export { createTftpServer } from "./netboot/tftp/server.ts";
export { tftpGet } from "./netboot/tftp/client.ts";
