// `netroot serve`: foreground server until SIGINT/SIGTERM.
import { parseArgs } from "node:util";
import { configPath, loadServeConfig, serveOptions } from "../config.ts";
import { UserError } from "../errors.ts";
import { sdNotify, watchdogIntervalMs } from "../linux/sdnotify.ts";
import { logger, setLogFormat } from "../log.ts";
import { serve } from "../server.ts";
import { lockDataDir } from "../service/lock.ts";
import { statvfs } from "../linux/fsops.ts";
import { dirname } from "node:path";

const log = logger("serve");

export const serveHelp =
  `usage: netroot serve [--data DIR] [--http [HOST:]PORT] [--config FILE] [--check-config]
                     [--api-auth writes|all]
                     [--interface IF | --bridge NAME --address A.B.C.D/NN]
                     [--dhcp-mode full|proxy|off] [--dhcp-range START-END] [--lease-time SECONDS]
                     [--dhcp-router A.B.C.D]
                     [--proxy-strategy option43|port4011] [--offer-time SECONDS]
                     [--register-unknown true|false] [--register-rate PER-MINUTE]
                     [--register-max N] [--register-ttl SECONDS]
                     [--tftp-port N] [--netconsole-port N] [--ipxe-dir DIR]
                     [--nfs kernel|ganesha|off] [--nfs-version 3|4] [--nfs-reserve SIZE]
                     [--ra true|false] [--accel auto|kvm|tcg] [--log-format text|json]

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
Nodes' /persist is exported read-only while less than --nfs-reserve is free on the data dir's
file system (default 5 % of it, at most 1G; 0: never): a node's root writes there past quotas
and reserved blocks, and the database and imports need room. Writable again with 1/8 more free.
With a boot interface the server receives the kernel netconsole of nodes with
console.netconsole=true on UDP --netconsole-port (default 6666) of the boot address.
Log lines go to stderr: key=value text, or one JSON object per line with --log-format json (or
NETROOT_LOG_FORMAT=json); under systemd they carry journal priorities and no timestamps.
One server per data dir (it holds <data>/run/serve.lock). Under systemd (Type=notify) it reports
READY once every service listens, STOPPING when it begins to stop, and pings the watchdog.
SIGINT/SIGTERM stop it cleanly (virtual nodes, ganesha, sockets); a second signal exits at once.
--config FILE: JSON with a key for every flag (docs/service.md); without --config,
/etc/netroot/config.json is read when it exists. Flags override the file. --check-config parses and
validates, prints the effective config as JSON and exits (1 with the bad key named).
SIGHUP re-reads the file: DHCP settings, --api-auth, event retention, the log format and
--nfs-reserve change at once; the log and a server.reload event name the changed keys that need
a restart.
GET /metrics: Prometheus metrics (no token needed).`;

/** sd_notify that never takes the server down: a service manager that misses it says so itself. */
function notify(state: string): void {
  try {
    sdNotify(state);
  } catch (e) {
    log.warn("sd_notify failed", { state, error: (e as Error).message });
  }
}

export async function run(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(serveHelp);
    return 0;
  }
  const { values } = parseArgs({ args, options: serveOptions });
  const format = values["log-format"];
  if (format !== undefined && format !== "text" && format !== "json") {
    throw new UserError(`--log-format must be text or json, got ${format}`);
  }
  const config = await loadServeConfig(args);
  if (values["check-config"]) {
    console.log(JSON.stringify(config, null, 2));
    console.error(`config ok (${configPath(args) ?? "no config file: defaults and flags"})`);
    return 0;
  }
  if (config.logFormat) setLogFormat(config.logFormat);
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
    notify("STOPPING=1");
    stop.resolve();
  };
  const signals = ["SIGINT", "SIGTERM"] as const;
  for (const sig of signals) Deno.addSignalListener(sig, onSignal);
  // SIGHUP: re-read the config file, one reload at a time (a bad file keeps the running config).
  let server: Awaited<ReturnType<typeof serve>> | undefined;
  let reloading = Promise.resolve();
  let hupWhileStarting = false;
  const onHup = () => {
    if (!server) {
      hupWhileStarting = true; // taken once every service is up
      return;
    }
    reloading = reloading.then(async () => {
      if (!server || stopping) return;
      try {
        await server.reload(await loadServeConfig(args));
      } catch (e) {
        server.reloadFailed((e as Error).message);
      }
    });
  };
  Deno.addSignalListener("SIGHUP", onHup);
  let watchdog: ReturnType<typeof setInterval> | undefined;
  try {
    using _lock = await lockDataDir(config.dataDir, "netroot serve");
    log.info("starting", { data: config.dataDir });
    server = await serve(config);
    if (hupWhileStarting) onHup();
    notify(`READY=1\nSTATUS=serving on ${server.http.host}:${server.http.port}`);
    // The ping runs on the event loop: a loop stuck in a synchronous call stops it, and systemd
    // restarts the server after WatchdogSec.
    const every = watchdogIntervalMs();
    if (every) watchdog = setInterval(() => notify("WATCHDOG=1"), every);
    await stop.promise;
    await reloading;
    log.info("stopping");
    await server.close();
    log.info("stopped");
    return 0;
  } catch (e) {
    throw server ? e : startRefused(e, config.dataDir);
  } finally {
    clearInterval(watchdog);
    for (const sig of signals) Deno.removeSignalListener(sig, onSignal);
    Deno.removeSignalListener("SIGHUP", onHup);
  }
}

/** Why the data dir's file system has no room to start in, or undefined. A server machine that
 *  came back up with its disk full stopped on SQLite's "disk I/O error" (the database's shared
 *  memory file could not be made) and a stack trace, restarted every 2 s, and nothing said where
 *  to make room. */
function noRoom(dataDir: string, sure: boolean): string | undefined {
  for (let dir = dataDir;; dir = dirname(dir)) {
    try {
      const fs = statvfs(dir);
      // (ext4 keeps up to 16 MiB from root too: "free" for root, yet ENOSPC.)
      if (!sure && fs.freeBytesForRoot >= 32 << 20 && fs.freeInodes > 0) return undefined;
      return `no space left on the file system of ${dataDir} (${fs.freeBytesForRoot} bytes, ` +
        `${fs.freeInodes} inodes free): make room there (the database is written from the start)`;
    } catch {
      if (dir === dirname(dir)) return undefined;
    }
  }
}

/** A start refused for want of privilege (an admin's first try without sudo) or for a port another
 *  program holds (the lab machine's dnsmasq, isc-dhcp-server or tftpd-hpa) is one line saying
 *  what to do, not the stack of whichever socket, tool or directory met it first. */
function startRefused(e: unknown, dataDir: string): unknown {
  const message = e instanceof Error ? e.message : String(e);
  if (e instanceof UserError) return e;
  const what = message.split("\n")[0];
  // ENOSPC says it; SQLite's "disk I/O error" may be the disk full too (its shared memory file).
  const noSpace = /database or disk is full|No space left on device|os error 28/.test(message);
  const full = (noSpace || /disk I\/O error/.test(message)) && noRoom(dataDir, noSpace);
  if (full) return new UserError(`${what}: ${full}`);
  if (/Address already in use/.test(message)) {
    return new UserError(
      `${what}: another program holds that port (\`ss -lntup\` names it: a second netroot ` +
        "serve, dnsmasq, isc-dhcp-server, tftpd-hpa?): stop it",
    );
  }
  if (!/Permission denied|Operation not permitted/.test(message)) return e;
  return new UserError(
    Deno.uid() === 0
      ? `${what}: this root lacks a capability netroot serve needs (it creates the bridge, ` +
        "binds the DHCP and TFTP ports, mounts, chowns its data dir: a container without them?)"
      : `${what}: run netroot serve as root (it creates the bridge, binds the DHCP and TFTP ` +
        "ports, exports images over NFS and owns its data dir)",
  );
}
