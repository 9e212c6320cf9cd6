// What every server component gets: configuration, state, the registries, and the per-server
// parts (power drivers, virtual nodes) that routes reach through it.
import type { ServerConfig } from "./config.ts";
import type { DataDir } from "./datadir.ts";
import type { Db } from "./db.ts";
import type { ImageStore } from "./images/store.ts";
import type { NodeRegistry } from "./nodes.ts";
import type { NodeMonitor } from "./nodestate.ts";
import type { NodeSsh } from "./nodessh.ts";
import type { PowerDrivers } from "./power/driver.ts";
import type { Rebooter } from "./reboot.ts";
import type { Sessions } from "./session.ts";
import type { VnodeManager } from "./vnode/manager.ts";

export interface Service {
  name: string;
  close(): Promise<void>;
}

export interface Context {
  config: ServerConfig;
  data: DataDir;
  db: Db;
  images: ImageStore;
  nodes: NodeRegistry;
  rebooter: Rebooter;
  /** The server's ssh key and the nodes' pinned host keys: clean reboots, `node run`. */
  ssh: NodeSsh;
  /** The power drivers nodes can select (`power.driver`), and the action running per node. */
  power: PowerDrivers;
  /** Probes nodes and runs the boot watchdog (src/nodestate.ts), while serve runs. */
  monitor?: NodeMonitor;
  /** The virtual nodes, while they run (startVnodes). */
  vnodes?: VnodeManager;
  /** API write token (also in data/token, mode 0600). */
  token: string;
  /** Dashboard logins (src/session.ts): each stands for the token until it expires. */
  sessions: Sessions;
  /** Fires `new Event("nodes")` after registrations/deploys/forgets and `new Event("images")`
   *  after imports/removals, so NFS exports, DHCP reservations and vnodes follow; a
   *  StateChange ("state", src/nodes.ts) after a node's state changed (node wait); `new Event("closing")` when the
   *  server stops (live event streams end). */
  changes: EventTarget;
  /** UDP port of the netconsole receiver (src/netconsole.ts), while it runs. */
  netconsolePort?: number;
  /** Base URL nodes use to reach the HTTP server, e.g. http://10.77.0.1:8080 (undefined without
   *  a boot interface). */
  nodeUrl?: string;
  /** The HTTP listeners' connection counts (src/httpbounds.ts), while they run: /metrics. */
  httpConnections?: () => { open: number; refused: number };
}
