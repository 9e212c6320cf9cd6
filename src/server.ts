// `netroot serve`: opens the state, reconciles the tree, then starts HTTP (API + boot + dashboard)
// and, with a boot interface, DHCP, TFTP, router advertisements, NFS exports and virtual nodes.
import { Hono } from "hono";
import type { ServerConfig } from "./config.ts";
import type { Context, Service } from "./context.ts";
import { DataDir } from "./datadir.ts";
import { openDatabase } from "./db.ts";
import { UserError } from "./errors.ts";
import { recordEvent, startEventRetention } from "./events.ts";
import { ImageStore } from "./images/store.ts";
import { type HttpListener, listenBounded } from "./httpbounds.ts";
import { logger, setLogFormat, setNodeNamer } from "./log.ts";
import { NodeRegistry, nodeSettings, type Setting, SettingRules, StateChange } from "./nodes.ts";
import { type MonitorOptions, NodeMonitor } from "./nodestate.ts";
import { Rebooter, rebootSettings } from "./reboot.ts";
import { NodeSsh, sshSoftReboot } from "./nodessh.ts";
import { runRoutes } from "./noderun.ts";
import {
  type ApiRoute,
  bearerAuth,
  deployRoutes,
  eventRoutes,
  healthRoutes,
  knownHostOrToken,
  loadOrCreateToken,
  nodeRoutes,
  waitRoutes,
} from "./api.ts";
import { apiErrorResponse, noSuchRoute } from "./apierror.ts";
import { dashboardRoutes } from "./dashboard.ts";
import { sessionRoutes, Sessions } from "./session.ts";
import { imageRoutes } from "./images/api.ts";
import { bootRoutes } from "../netboot/http.ts";
import type { Booter } from "../netboot/booter.ts";
import { startRouterAdvertisements } from "../netboot/ra.ts";
import { contextBooter } from "./boot/booter.ts";
import { startDhcpService, startTftpService } from "./boot/services.ts";
import { startNfs } from "./nfs.ts";
import { startAddressPins } from "./boot/pins.ts";
import { startNetconsole } from "./netconsole.ts";
import { ensureBridge } from "./vnode/bridge.ts";
import { vnodeRoutes } from "./vnode/api.ts";
import { consoleRoutes } from "./consolelog.ts";
import { startVnodes, vnodeSettings } from "./vnode/manager.ts";
import { powerRoutes } from "./power/api.ts";
import { type PowerDriver, PowerDrivers } from "./power/driver.ts";
import { builtinPowerDrivers, registerPowerReboots } from "./power/power.ts";
import { powerSettings } from "./power/settings.ts";
import { initramfsBuildsSettled, prebuildAll, pruneInitramfsCache } from "./initramfs/build.ts";
import { metricsFor, metricsRoutes } from "./metrics.ts";

const log = logger("serve");

/** What an embedding program adds to the built-in server (mod.ts): given to serve, or to
 *  openContext (settings, drivers) and buildApp (routes). */
export interface Plugins {
  /** Routers under /api/v1, after the built-in ones (the API's token rules apply to them). */
  apiRoutes?: ApiRoute[];
  /** Node settings, after the built-in ones (same key: the plugin's check wins). */
  settings?: Setting[];
  /** Power drivers, selectable with `power.driver=<name>` (same name: the plugin's wins). */
  powerDrivers?: PowerDriver[];
}

export interface RunningServer {
  ctx: Context;
  /** The bound HTTP address (port resolved when 0 was asked): the first of `listening`. */
  http: { host: string; port: number };
  /** Every address HTTP listens on. */
  listening: { host: string; port: number }[];
  services: Service[];
  /** Takes what can change without a restart from `next` (SIGHUP); says which keys need one. */
  reload(next: ServerConfig): Promise<{ applied: string[]; restart: string[] }>;
  /** A reload whose config did not load: logged and recorded, the running config kept. */
  reloadFailed(error: string): void;
  close(): Promise<void>;
}

/** Config keys a running server takes on reload; any other changed key needs a restart. */
const RELOADABLE = [/^dhcp\./, /^api\.auth$/, /^events\./, /^logFormat$/, /^nfs\.reserve$/];

function flatKeys(o: unknown, prefix: string, out: Map<string, string>): Map<string, string> {
  if (o && typeof o === "object" && !Array.isArray(o)) {
    for (const [k, v] of Object.entries(o)) flatKeys(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (o !== undefined) out.set(prefix, JSON.stringify(o));
  return out;
}

/** The dotted keys (dhcp.range.start, http.port, …) whose values differ between two configs. */
export function configChanges(a: ServerConfig, b: ServerConfig): string[] {
  const fa = flatKeys(a, "", new Map()), fb = flatKeys(b, "", new Map());
  return [...new Set([...fa.keys(), ...fb.keys()])].filter((k) => fa.get(k) !== fb.get(k)).sort();
}

/** IPv4 address of an interface, or a clear error. */
export function interfaceAddress(name: string): string {
  const a = Deno.networkInterfaces().find((i) => i.name === name && i.family === "IPv4");
  if (!a) throw new UserError(`interface ${name} has no IPv4 address (or does not exist)`);
  return a.address;
}

/**
 * Where HTTP listens: the configured host, else — with a boot interface — its address and loopback
 * (nodes and local tools; the API and dashboard are not offered to every network the server is
 * on), else everything (no boot interface: a server for local use or behind another front).
 */
export function httpHosts(config: ServerConfig): string[] {
  if (config.http.host) return [config.http.host];
  if (!config.serverIp) return ["0.0.0.0"];
  return config.serverIp.startsWith("127.") ? [config.serverIp] : [config.serverIp, "127.0.0.1"];
}

/** The netconsole receiver on the boot interface, or a warning (nodes then get no netconsole=). */
function startNetconsoleOrWarn(ctx: Context, host: string, device: string) {
  try {
    return startNetconsole(ctx, { host, port: ctx.config.netconsole.port, device });
  } catch (e) {
    log.warn("no netconsole receiver", { error: (e as Error).message });
    return undefined;
  }
}

/** Listens on each host on one port (the first listener picks it when 0 was asked), with the
 *  connection bounds of src/httpbounds.ts. */
function listenHttp(
  hosts: string[],
  port: number,
  handler: Deno.ServeHandler,
): {
  addrs: { host: string; port: number }[];
  connections(): { open: number; refused: number };
  close(): Promise<void>;
} {
  const listeners: HttpListener[] = [];
  const close = async () => {
    await Promise.all(listeners.map((l) => l.shutdown()));
  };
  try {
    for (const host of hosts) {
      listeners.push(
        listenBounded({ hostname: host, port: listeners[0]?.addr.port ?? port, handler }),
      );
    }
  } catch (e) {
    void close(); // the listeners made so far stop accepting at once; their end is not awaited
    const inUse = e instanceof Deno.errors.AddrInUse
      ? " (another program listens there, a second netroot serve?): stop it, or choose another " +
        "port with --http PORT"
      : "";
    throw new UserError(`HTTP cannot listen on ${hosts.join(", ")} port ${port}: ${e}${inUse}`);
  }
  return {
    addrs: listeners.map((l) => ({ host: l.addr.hostname, port: l.addr.port })),
    connections: () => ({
      open: listeners.reduce((n, l) => n + l.open(), 0),
      refused: listeners.reduce((n, l) => n + l.refused(), 0),
    }),
    close,
  };
}

/** Closes what openContext opened, once the work a boot or a commit started in the background
 *  (tree prunes and rebuilds, initramfs builds) has settled: that work writes into the data dir
 *  and the database. Used by serve's shutdown and by tests before they remove the data dir. */
export async function closeContext(ctx: Context): Promise<void> {
  await ctx.images.idle();
  await initramfsBuildsSettled();
  ctx.db.close();
}

/** Builds the context: state opened, migrations run, tree reconciled. Used by serve and tests. */
export async function openContext(config: ServerConfig, plugins: Plugins = {}): Promise<Context> {
  const data = new DataDir(config.dataDir);
  await data.ensure();
  const db = openDatabase(data.db);
  metricsFor(db); // counting from the first event on
  const rebooter = new Rebooter(db);
  const images = new ImageStore(data, db);
  const changes = new EventTarget();
  const power = new PowerDrivers([...builtinPowerDrivers, ...plugins.powerDrivers ?? []]);
  const rules = new SettingRules([
    ...nodeSettings,
    ...vnodeSettings,
    ...powerSettings(() => power.names()),
    ...rebootSettings,
    ...plugins.settings ?? [],
  ]);
  const nodes = new NodeRegistry(data, db, images, rebooter, changes, rules);
  images.changes = changes;
  const token = await loadOrCreateToken(data.token);
  const fixed = await images.reconcile();
  const fixedNodes = await nodes.reconcile();
  if (fixed + fixedNodes > 0) {
    log.info("reconciled data dir with database", { fixed: fixed + fixedNodes });
  }
  const sessions = new Sessions();
  const ssh = new NodeSsh({ data, db, nodes });
  const ctx: Context = {
    config,
    data,
    db,
    images,
    nodes,
    rebooter,
    ssh,
    power,
    token,
    sessions,
    changes,
  };
  rebooter.soft = sshSoftReboot(ctx); // soft first: ssh `reboot`, then the hard mechanism
  // Down after a clean reboot, the node's next boot is watched as a hard reboot's is: a shutdown
  // that hangs, or firmware that never fetches its script, sat `down` for good (the watchdog
  // watches `booting` nodes). A node the soft step found booting already, or turned off, stays.
  rebooter.wentDown = (mac, mechanism) =>
    void nodes.setState(mac, "booting", `clean reboot (${mechanism}): down, no boot script yet`, {
      from: ["booted", "down"],
    });
  // A clean reboot given up with the node still booted (no hard mechanism, or it failed) changes
  // no state, and `node wait` counted the node as on its way out: its wait held to its timeout.
  rebooter.softEnded = (mac) => {
    const node = nodes.find(mac);
    if (node) changes.dispatchEvent(new StateChange(mac, node.state));
  };
  registerPowerReboots(ctx); // before vnodes' QMP reset: an explicit power.driver wins
  return ctx;
}

/** The HTTP app: every route of the server, in one table. */
export function buildApp(
  ctx: Context,
  plugins: Plugins = {},
  booter: Booter = contextBooter(ctx),
): Hono {
  const api = new Hono();
  api.onError(apiErrorResponse);
  // Answers are live, and some secret (a console shows the kernel command line, its boot token;
  // with --api-auth all, everything): no browser or proxy keeps them. The dashboard's browser
  // served them from its cache after a logout, to whoever used it next.
  api.use("*", async (c, next) => {
    await next();
    c.header("cache-control", "no-store");
  });
  // Chosen per request: api.auth changes on reload (SIGHUP).
  const tokenForWrites = bearerAuth(ctx, { reads: false });
  const tokenForAll = bearerAuth(ctx, { reads: true });
  api.use(
    "*",
    (c, next) => (ctx.config.api.auth === "all" ? tokenForAll : tokenForWrites)(c, next),
  );
  api.route("/health", healthRoutes(ctx)); //      GET
  api.route("/nodes", nodeRoutes(ctx)); //         list, add, show, rename, rm, config, reboot, events
  api.route("/nodes", powerRoutes(ctx)); //        POST /nodes/:ref/power
  api.route("/nodes", runRoutes(ctx)); //          POST /nodes/run (ssh), GET /nodes/:ref/ssh
  api.route("/nodes", consoleRoutes(ctx)); //      GET /nodes/:ref/console (token even for reads)
  api.route("/deploy", deployRoutes(ctx)); //      POST
  api.route("/wait", waitRoutes(ctx)); //          GET: until nodes reach a state (node wait)
  api.route("/events", eventRoutes(ctx)); //       GET
  api.route("/images", imageRoutes(ctx)); //       list, show, import, rename, rm
  api.route("/vnodes", vnodeRoutes(ctx)); //       list, create, rm
  for (const r of plugins.apiRoutes ?? []) api.route(r.path, r.routes(ctx));
  api.all("*", noSuchRoute);

  const app = new Hono();
  // Before the routes a page of another site could read through a browser (DNS rebinding).
  app.use("/api/v1/*", knownHostOrToken(ctx));
  app.use("/boot/*", knownHostOrToken(ctx, { boot: true }));
  app.route("/api/v1", api);
  app.route("/boot", bootRoutes(booter, booter.files)); //          iPXE scripts, kernels, initramfs, node reports
  app.route("/metrics", metricsRoutes(ctx)); //    Prometheus, no token (counts only)
  app.route("/", sessionRoutes(ctx)); //           POST /login, POST /logout, GET /session
  app.route("/", dashboardRoutes(ctx)); //         GET / and its script and style
  return app;
}

/**
 * Keeps the initramfs cache in step with the images (boot servers only): built for every bootable
 * version something boots (ImageStore.neededTrees) at start (a program upgrade rebuilds before
 * nodes ask) and after imports, removed once nothing does. One pass at a time; a change during a
 * pass queues one more.
 */
function followImagesWithInitramfs(ctx: Context): Service {
  let running: Promise<void> | undefined;
  let again = false;
  const pass = async () => {
    await pruneInitramfsCache(ctx);
    await prebuildAll(ctx);
  };
  const kick = () => {
    if (running) {
      again = true;
      return;
    }
    running = pass().catch((e) =>
      log.warn("initramfs sync failed", { error: (e as Error).message })
    )
      .finally(() => {
        running = undefined;
        if (again) {
          again = false;
          kick();
        }
      });
  };
  ctx.changes.addEventListener("images", kick);
  kick();
  return {
    name: "initramfs",
    async close() {
      ctx.changes.removeEventListener("images", kick);
      again = false;
      await running;
    },
  };
}

/** The HTTP server of `app` on the configured addresses; the URL nodes use (ctx.nodeUrl) is the
 *  boot network's address with the port it got. */
function startHttp(ctx: Context, app: Hono) {
  const { config } = ctx;
  const http = listenHttp(httpHosts(config), config.http.port, app.fetch);
  ctx.httpConnections = http.connections;
  const addr = http.addrs[0];
  if (config.serverIp) ctx.nodeUrl = `http://${config.serverIp}:${addr.port}`;
  if (config.interface && /^(127\.|localhost$|::1$)/.test(config.http.host ?? "")) {
    log.warn("HTTP listens on loopback only: nodes cannot fetch their boot script", {
      http: `${config.http.host}:${addr.port}`,
      nodeUrl: ctx.nodeUrl,
    });
  }
  log.info("http listening", {
    host: http.addrs.map((a) => a.host).join(" "),
    port: addr.port,
    api: config.api.auth === "all" ? "token for reads and writes" : "token for writes",
    data: config.dataDir,
  });
  return http;
}

/** The boot network's services (DHCP, TFTP, netconsole, router advertisements) on `device`. */
async function startBootNetwork(
  ctx: Context,
  device: string,
  booter: Booter,
  services: Service[],
): Promise<void> {
  const { config } = ctx;
  if (config.dhcp.mode !== "off") services.push(await startDhcpService(ctx, booter));
  services.push(await startTftpService(ctx, booter));
  services.push(await startAddressPins(ctx, device));
  // A diagnostic: without it nodes still boot (their plans then carry no netconsole=).
  const nc = config.serverIp ? startNetconsoleOrWarn(ctx, config.serverIp, device) : undefined;
  if (nc) services.push(nc);
  ctx.netconsolePort = nc?.port;
  if (config.ra) services.push(await startRouterAdvertisements(device));
}

/** SIGHUP's reload: the keys that can change live (DHCP, API auth, event retention, log format)
 *  are applied to the running services; the others are named as needing a restart. */
function reloader(ctx: Context, booter: Booter, services: Service[]) {
  const { config } = ctx;
  /** Closes the service named `name` and puts `start()`'s in its place (or at the end). */
  const replaceService = async (name: string, start?: () => Promise<Service>) => {
    let at = services.findIndex((s) => s.name === name);
    if (at >= 0) await services.splice(at, 1)[0].close();
    else at = services.length;
    if (start) services.splice(at, 0, await start());
  };
  /** Puts `live` (the reloadable keys) into the running config and restarts the services whose
   *  keys changed. */
  const apply = async (
    live: Pick<ServerConfig, "dhcp" | "api" | "events" | "nfs">,
    has: (p: string) => boolean,
  ) => {
    config.dhcp = live.dhcp;
    config.api = live.api;
    config.events = live.events;
    config.nfs.reserve = live.nfs.reserve; // PersistRoom's next check (within a second) takes it
    if (has("events.")) {
      await replaceService(
        "events",
        () => Promise.resolve(startEventRetention(ctx.db, config.events)),
      );
    }
    if (has("dhcp.") && config.interface) {
      await replaceService(
        "dhcp",
        config.dhcp.mode === "off" ? undefined : () => startDhcpService(ctx, booter),
      );
    }
  };
  const reload = async (next: ServerConfig) => {
    next.serverIp ??= config.serverIp; // derived from the interface at start
    const changed = configChanges(config, next);
    const restart = changed.filter((k) => !RELOADABLE.some((r) => r.test(k)));
    const applied = changed.filter((k) => !restart.includes(k));
    const has = (p: string) => applied.some((k) => k.startsWith(p));
    const running = {
      dhcp: config.dhcp,
      api: config.api,
      events: config.events,
      nfs: { ...config.nfs },
    };
    try {
      await apply(next, has);
    } catch (e) {
      // The new DHCP service did not start (an empty range, port 4011 taken for proxy mode):
      // the old one is closed by then, and the boot network had no DHCP at all while the log
      // said the running config stays. The running config goes back whole, services included.
      await apply(running, has).catch((again) => {
        throw new Error(
          `${(e as Error).message}; the running config's services did not start ` +
            `again either: ${(again as Error).message}`,
        );
      });
      throw e;
    }
    if (next.logFormat && has("logFormat")) setLogFormat(next.logFormat);
    recordEvent(ctx.db, null, "server.reload", { applied, restart });
    metricsFor(ctx.db).configReloads.inc({ result: "ok" });
    log.info("config reloaded", { applied: applied.join(" ") || "nothing" });
    if (restart.length) {
      log.warn("config changes need a restart to take effect", { keys: restart.join(" ") });
    }
    return { applied, restart };
  };
  return reload;
}

export async function serve(
  config: ServerConfig,
  opts: Plugins & { monitor?: MonitorOptions } = {},
): Promise<RunningServer> {
  const ctx = await openContext(config, opts);
  const unnameNodes = setNodeNamer((mac) => ctx.nodes.nameOf(mac));
  const services: Service[] = [];
  try {
    if (config.bridge) services.push(await ensureBridge(config.bridge));
    if (config.interface) {
      config.serverIp ??= interfaceAddress(config.interface);
    }
    // One Booter for HTTP, DHCP and TFTP (they also share its boot file cache, booter.files).
    const booter = contextBooter(ctx);
    const http = startHttp(ctx, buildApp(ctx, opts, booter));
    services.push({ name: "http", close: http.close });
    const addr = http.addrs[0];
    services.push(startEventRetention(ctx.db, config.events));
    ctx.monitor = new NodeMonitor(ctx, opts.monitor);
    services.push(ctx.monitor.start());

    if (!config.interface) {
      log.info("no --interface: HTTP only (no DHCP, TFTP, NFS exports or router advertisements)");
    } else {
      await startBootNetwork(ctx, config.interface, booter, services);
    }
    services.push(await startNfs(ctx)); // off: drops what a kernel run left (dropKernelExports)
    if (config.interface) services.push(followImagesWithInitramfs(ctx));
    services.push(await startVnodes(ctx));
    // Then every ssh under way ends (a node may hold one open): not before the reboots stop
    // following, or a soft reboot's ended ssh would escalate to the hard mechanism.
    services.push({ name: "ssh", close: () => Promise.resolve(ctx.ssh.close()) });
    // Closed first: a soft reboot being followed must not escalate while the rest stops.
    services.push({ name: "reboots", close: () => ctx.rebooter.close() });
    recordEvent(ctx.db, null, "server.start", {
      interface: config.interface,
      http: http.addrs.map((a) => `${a.host}:${a.port}`).join(" "),
      dhcp: config.interface ? config.dhcp.mode : "off",
      nfs: config.nfs.mode,
    });
    const reload = reloader(ctx, booter, services);
    let closed = false;
    return {
      ctx,
      http: addr,
      listening: http.addrs,
      services,
      reload,
      reloadFailed(error: string) {
        log.error("config reload failed; the running config stays", { error });
        recordEvent(ctx.db, null, "server.reload-failed", { error });
        metricsFor(ctx.db).configReloads.inc({ result: "error" });
      },
      async close() {
        if (closed) return;
        closed = true;
        ctx.changes.dispatchEvent(new Event("closing")); // long-lived responses end first
        for (const s of [...services].reverse()) {
          try {
            await s.close();
          } catch (e) {
            log.warn("service close failed", { service: s.name, error: (e as Error).message });
          }
        }
        unnameNodes();
        await closeContext(ctx);
      },
    };
  } catch (e) {
    for (const s of services.reverse()) await s.close().catch(() => {});
    unnameNodes();
    ctx.db.close();
    throw e;
  }
}
