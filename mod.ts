// netroot as a library: what another TypeScript program imports.

// Server: state, registries, the HTTP app and the whole service set.
export { buildApp, openContext, serve } from "./src/server.ts";
export type { RunningServer } from "./src/server.ts";
export { defaultConfig, loadServeConfig } from "./src/config.ts";
export type { ServerConfig } from "./src/config.ts";
export type { Context, Service } from "./src/context.ts";
export { openDatabase, tx } from "./src/db.ts";
export { listEvents, recordEvent } from "./src/events.ts";
export type { Event } from "./src/events.ts";
export { DataDir } from "./src/datadir.ts";
export { normalizeMac } from "./src/mac.ts";
export { ImageStore } from "./src/images/store.ts";
export type { ImageInfo } from "./src/images/store.ts";
export { NodeRegistry, registerSettingValidator } from "./src/nodes.ts";
export type { NodeInfo } from "./src/nodes.ts";
export { registerApiExtension } from "./src/api.ts";
export { Rebooter } from "./src/reboot.ts";
export type { RebootMechanism } from "./src/reboot.ts";
export { ensureInitramfs } from "./src/initramfs/build.ts";

// Content manifests (image ids) — a pure codec.
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

// Node side.
export { boot as bootNode } from "./overlay/init.ts";
export { tryHybridBoot } from "./hybrid/mod.ts";
