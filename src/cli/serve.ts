// `netroot serve`: foreground server until SIGINT/SIGTERM.
import { loadServeConfig } from "../config.ts";
import { serve } from "../server.ts";

export const serveHelp = `usage: netroot serve [--data DIR] [--http HOST:PORT] [--config FILE]
                     [--interface IF | --bridge NAME --address A.B.C.D/NN]
                     [--dhcp-mode full|proxy|off] [--dhcp-range START-END] [--lease-time SECONDS]
                     [--dhcp-router A.B.C.D]
                     [--proxy-strategy option43|port4011] [--register-unknown true|false]
                     [--tftp-port N] [--ipxe-dir DIR] [--nfs kernel|ganesha|off] [--nfs-version 3|4]
                     [--ra true|false] [--accel auto|kvm|tcg]

Runs on embedded defaults: data in ./netroot-data (checkout) or /var/lib/netroot, HTTP on
0.0.0.0:8080. Without --interface only HTTP runs. --dhcp-mode defaults to full when --dhcp-range
is given, proxy otherwise (a lab DHCP server keeps handing out addresses).`;

export async function run(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(serveHelp);
    return 0;
  }
  const config = await loadServeConfig(args);
  const server = await serve(config);
  const stop = Promise.withResolvers<void>();
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => stop.resolve());
  }
  await stop.promise;
  await server.close();
  return 0;
}
