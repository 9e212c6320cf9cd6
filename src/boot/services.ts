// The boot protocols' services started from the server's configuration and Booter: what each
// netboot/ server needs, taken out of the Context here so that netboot/ never sees it.
import type { Context, Service } from "../context.ts";
import type { Booter } from "../../netboot/booter.ts";
import { startDhcp } from "../../netboot/dhcp4/server.ts";
import { startTftp } from "../../netboot/tftp/server.ts";
import { bootNetwork } from "../nfs.ts";
import { contextBooter } from "./booter.ts";

/** DHCP on the boot interface (full or proxy mode; nothing with mode off). */
export function startDhcpService(
  ctx: Context,
  booter: Booter = contextBooter(ctx),
): Promise<Service & { stats?: unknown }> {
  const { config } = ctx;
  const device = config.interface;
  if (!device || !config.serverIp) {
    return Promise.reject(new Error("DHCP needs --interface (and its IPv4 address)"));
  }
  if (config.dhcp.mode === "off") {
    return Promise.resolve({ name: "dhcp", close: () => Promise.resolve() });
  }
  return startDhcp({
    device,
    ipxeDir: config.ipxeDir,
    registerTtlSeconds: config.dhcp.registerTtlSeconds,
    responder: {
      mode: config.dhcp.mode,
      serverIp: config.serverIp,
      netmask: bootNetwork(ctx)?.netmask ?? "255.255.255.0",
      range: config.dhcp.range,
      leaseSeconds: config.dhcp.leaseSeconds,
      proxyStrategy: config.dhcp.proxyStrategy,
      registerUnknown: config.dhcp.registerUnknown,
      offerSeconds: config.dhcp.offerSeconds,
      registerRate: config.dhcp.registerRate,
      registerMax: config.dhcp.registerMax,
      router: config.dhcp.router,
      dns: config.dhcp.dns,
      nodeUrl: ctx.nodeUrl,
    },
  }, booter);
}

/** TFTP: iPXE binaries for anyone, a known node's image /boot. */
export function startTftpService(
  ctx: Context,
  booter: Booter = contextBooter(ctx),
): Promise<Service & { port: number }> {
  return startTftp({
    port: ctx.config.tftp.port,
    interface: ctx.config.interface,
    serverIp: ctx.config.serverIp,
    ipxeDir: ctx.config.ipxeDir,
    ipxeFallbackDir: ctx.config.ipxeFallbackDir,
    cache: booter.files, // HTTP's too (buildApp)
  }, booter);
}
