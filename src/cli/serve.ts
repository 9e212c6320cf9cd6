// `netroot serve`: foreground server until SIGINT/SIGTERM.
import { loadServeConfig } from "../config.ts";
import { logger } from "../log.ts";
import { serve } from "../server.ts";

const log = logger("serve");

export const serveHelp = `usage: netroot serve [--data DIR] [--http [HOST:]PORT] [--config FILE]
                     [--api-auth writes|all]
                     [--interface IF | --bridge NAME --address A.B.C.D/NN]
                     [--dhcp-mode full|proxy|off] [--dhcp-range START-END] [--lease-time SECONDS]
                     [--dhcp-router A.B.C.D]
                     [--proxy-strategy option43|port4011] [--offer-time SECONDS]
                     [--register-unknown true|false] [--register-rate PER-MINUTE]
                     [--register-max N] [--register-ttl SECONDS]
                     [--tftp-port N] [--ipxe-dir DIR] [--nfs kernel|ganesha|off] [--nfs-version 3|4]
                     [--ra true|false] [--accel auto|kvm|tcg]

Runs on embedded defaults: data in ./netroot-data (checkout) or /var/lib/netroot, HTTP on port
8080. Without --interface only HTTP runs, on every address (0.0.0.0); with --interface or --bridge
HTTP listens on the boot address and 127.0.0.1 only: --http 0.0.0.0:8080 (any HOST) widens it.
--api-auth all: API reads need the token too (default writes: only writes do).
--dhcp-mode defaults to full when --dhcp-range is given, proxy otherwise (a lab DHCP server keeps
handing out addresses).
Unknown machines register themselves at their first DHCP request: at most --register-rate a
minute (default 60) and --register-max in all (default 1000); one that never gets past DHCP is
forgotten after --register-ttl idle seconds (default 86400, 0 = never). An OFFER holds its address
for --offer-time seconds (default 60); the address is the client's at ACK.
SIGINT/SIGTERM stop it cleanly (virtual nodes, ganesha, sockets); a second signal exits at once.`;

export async function run(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(serveHelp);
    return 0;
  }
  const config = await loadServeConfig(args);
  // Listeners go in before start-up: a signal while services start (reconcile, ganesha, qemu of
  // the virtual nodes) must close what started, not kill us with children and the bridge left.
  // A second signal is the admin insisting (a close stuck on an in-flight request): exit now.
  const stop = Promise.withResolvers<void>();
  let stopping = false;
  const onSignal = () => {
    if (stopping) {
      log.warn("second signal: exiting without finishing the clean-up");
      Deno.exit(130);
    }
    stopping = true;
    stop.resolve();
  };
  const signals = ["SIGINT", "SIGTERM"] as const;
  for (const sig of signals) Deno.addSignalListener(sig, onSignal);
  try {
    log.info("starting", { data: config.dataDir });
    const server = await serve(config);
    await stop.promise;
    log.info("stopping");
    await server.close();
    log.info("stopped");
    return 0;
  } finally {
    for (const sig of signals) Deno.removeSignalListener(sig, onSignal);
  }
}
