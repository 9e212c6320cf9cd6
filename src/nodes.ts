// The node registry: nodes keyed by normalised MAC, unique names, per-node settings, and deploy
// (database update + atomic flip of each node's `nodes/<mac>/fs` symlink).
//
// The database is the truth. A deploy changes the rows and flips the links inside one
// BEGIN IMMEDIATE transaction: if a flip fails the rows roll back and the flipped links are put
// back; if the process dies before COMMIT the rows roll back on their own and `reconcile()` (run
// at every start) puts the links back to what the database says. So after a kill -9 at any
// point, the next start leaves database and tree in agreement, and a deploy is all-or-nothing.
//
// `forget` removes the row (settings and vnode row cascade) and the fs symlink but keeps
// `nodes/<mac>/persist` and `vm/`: user data is never deleted implicitly; re-adding the MAC gets
// it back, `rm -r <data>/nodes/<mac>` removes it for good.
//
// A node's address (`nodes.ip`: what its /persist export, TFTP and DHCP reservation follow) comes
// only from evidence bound to its MAC: the admin's `ip` setting, which wins; else a lease netroot
// ACKed; else the boot interface's neighbour table showing that MAC behind the address of its
// boot-script request (`observeAddress`). Nodes the DHCP service registers on its own
// (`register`) are `auto_registered`; those that never boot their image are aged out (`ageOut`).
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmdirSync,
  rmSync,
  symlinkSync,
} from "node:fs";
import { join } from "node:path";
import type { DataDir } from "./datadir.ts";
import { type Db, durableTx, tx } from "./db.ts";
import { conflict, notFound, UserError } from "./errors.ts";
import { eventsAppended, recordDhcpAllowed, recordEvent } from "./events.ts";
import type { ImageStore } from "./images/store.ts";
import { normalizeMac } from "./mac.ts";
import { revokeLease } from "./boot/leases.ts";
import { BOOT_MODES, checkExtra, RULES } from "../contract/cmdline.ts";
import { ipv4Octets } from "../contract/ipv4.ts";
import { parseBytes } from "./config.ts";
import { logger } from "./log.ts";
import type { Rebooter, RebootResult } from "./reboot.ts";
import { type NodeState, stateSettings } from "./nodestate.ts";

const log = logger("nodes");

export interface NodeInfo {
  mac: string;
  name: string;
  model: string;
  imageId: string | null;
  imageName: string | null;
  /** Deployed on one version (an id or NAME@ID): it does not follow the name's new versions. */
  imagePinned: boolean;
  ip: string | null;
  virtual: boolean;
  /** The DHCP service registered it on its own (first contact of an unknown MAC) and no admin
   *  has adopted it since (renamed, configured, deployed): its name is a guess from a MAC that
   *  anyone on the boot network can claim. */
  autoRegistered: boolean;
  createdAt: string;
  lastSeen: string | null;
  /** Where the node is in its life (src/nodestate.ts), since when, and why. */
  state: NodeState;
  stateSince: string | null;
  stateReason: string | null;
  settings: Record<string, string>;
}

/** Checks one setting value and returns it normalised, or throws a UserError saying why. */
export type SettingValidator = (key: string, value: string) => string;

/** A node setting: the key itself, or, for a key ending in ".", every key below it.
 *  A `secret` setting is stored as given but shown as `***` everywhere (NodeInfo, events); the
 *  code that uses it reads it with NodeRegistry.secretSettings(). */
export interface Setting {
  key: string;
  check: SettingValidator;
  secret?: boolean;
  /** The setting says where the node's secrets are sent (power.host): a change of it must give
   *  them again or remove them, else one PATCH sent a secret the API shows as `***` (a switch's
   *  read-write community) to any host the token holder named. */
  sendsSecrets?: boolean;
}

/** What the API, CLI, dashboard and events show instead of a secret setting's value. */
export const secretShown = "***";

/** The settings a registry accepts (built-in, virtual nodes', power drivers', an embedder's):
 *  the first that matches a key checks it; a later one with the same key replaces an earlier. */
export class SettingRules {
  #checks = new Map<string, SettingValidator>();
  #secrets = new Set<string>();
  #sendsSecrets = new Set<string>();

  constructor(settings: Setting[]) {
    for (const { key, check, secret, sendsSecrets } of settings) {
      this.#checks.set(key, check);
      if (secret) this.#secrets.add(key);
      else this.#secrets.delete(key);
      if (sendsSecrets) this.#sendsSecrets.add(key);
      else this.#sendsSecrets.delete(key);
    }
  }

  /** Refuses a change of a setting that says where secrets go (`sendsSecrets`) when the node
   *  holds secrets the same change neither gives again nor removes. */
  checkSecretsFollow(
    current: Record<string, string>,
    change: Record<string, string | null>,
  ): void {
    for (const [key, value] of Object.entries(change)) {
      const k = this.#keyOf(key);
      if (k === undefined || !this.#sendsSecrets.has(k) || value === null) continue;
      if (value === current[key]) continue;
      const kept = Object.keys(current).filter((s) => {
        const sk = this.#keyOf(s);
        return sk !== undefined && this.#secrets.has(sk) && !(s in change);
      });
      if (kept.length) {
        throw new UserError(
          `${key} says where ${kept.join(", ")} ${kept.length > 1 ? "are" : "is"} sent: ` +
            `give ${kept.length > 1 ? "them" : "it"} again in the same change, or remove ` +
            `${kept.length > 1 ? "them" : "it"} (null)`,
        );
      }
    }
  }

  #keyOf(key: string): string | undefined {
    if (this.#checks.has(key)) return key;
    // Only a prefix matches below itself: `kernel.cmdline.x` or `ip.x` is unknown (it was
    // stored, checked as its parent, and used by nothing: a typo that looked accepted).
    for (const prefix of this.#checks.keys()) {
      if (prefix.endsWith(".") && key.startsWith(prefix)) return prefix;
    }
    return undefined;
  }

  validatorFor(key: string): SettingValidator | undefined {
    const k = this.#keyOf(key);
    return k === undefined ? undefined : this.#checks.get(k);
  }

  /** `settings` with every secret value replaced by `***` (a removal, null, stays null). */
  redact<T extends string | null>(settings: Record<string, T>): Record<string, T | string> {
    return Object.fromEntries(
      Object.entries(settings).map(([k, v]) => {
        const key = this.#keyOf(k);
        return [k, v !== null && key !== undefined && this.#secrets.has(key) ? secretShown : v];
      }),
    );
  }

  /** Setting keys known, for error messages and help. */
  known(): string[] {
    return [...this.#checks.keys()].sort();
  }
}

function oneOf(allowed: string[]): SettingValidator {
  return (key, value) => {
    const v = value.trim().toLowerCase();
    if (!allowed.includes(v)) {
      throw new UserError(`${key} must be one of ${allowed.join(", ")}, got "${value}"`);
    }
    return v;
  };
}

/** The settings every node has (virtual nodes and power drivers add theirs: src/server.ts). */
export const nodeSettings: Setting[] = [
  {
    key: "kernel.cmdline",
    check: (key, value) => {
      // Appended to the kernel command line as is: a line break would end it early, and the
      // iPXE script's kernel line must not end or run another command (checkExtra).
      if (/[\r\n\0]/.test(value)) throw new UserError(`${key} must be a single line`);
      if (value.length > 1024) throw new UserError(`${key} is longer than 1024 characters`);
      try {
        return checkExtra(value).trim();
      } catch (e) {
        throw new UserError((e as Error).message);
      }
    },
  },
  // The values that go on the kernel command line follow its contract's rules
  // (contract/cmdline.ts), so a setting is accepted exactly when the node accepts it.
  { key: "boot.mode", check: oneOf([...BOOT_MODES]) },
  {
    key: "nfs.timeout",
    check: (key, value) => {
      const v = value.trim();
      if (!RULES.timeout.test(v)) {
        throw new UserError(`${key} must be ${RULES.timeout.expected}, got "${value}"`);
      }
      return String(Number(v));
    },
  },
  {
    key: "tmpfs.size",
    check: (key, value) => {
      const v = value.trim();
      if (!RULES.tmpfs.test(v)) {
        throw new UserError(`${key} must be ${RULES.tmpfs.expected}, got "${value}"`);
      }
      return v.toLowerCase();
    },
  },
  { key: "initramfs", check: oneOf(["netroot", "image"]) },
  {
    key: "ip",
    check: (key, value) => {
      // The node's address, fixed by the admin: a unicast IPv4 address (its /persist is exported
      // read-write to it, and the kernel command line configures it).
      const o = ipv4Octets(value.trim());
      if (!o || o[0] === 0 || o[0] === 127 || o[0] >= 224) {
        throw new UserError(
          `${key} must be a unicast IPv4 address like 192.168.50.21, got "${value}"`,
        );
      }
      return o.join(".");
    },
  },
  { key: "persist", check: oneOf(["true", "false"]) },
  {
    // The most the node's /persist may take (src/nfs.ts PersistRoom): read-only while over it.
    key: "persist.max",
    check: (key, value) => {
      try {
        parseBytes(key, value);
      } catch {
        throw new UserError(`${key} must be a size (bytes, or with unit K, M, G or T: 10G)`);
      }
      return value.trim();
    },
  },
  // The kernel's netconsole to the server's receiver (src/netconsole.ts), from the next boot.
  { key: "console.netconsole", check: oneOf(["true", "false"]) },
  ...stateSettings,
];

/** The normalised MAC if `ref` reads as one (any spelling normalizeMac accepts), else undefined. */
export function asMac(ref: string): string | undefined {
  try {
    return normalizeMac(ref);
  } catch {
    return undefined;
  }
}

/** Node names double as hostnames (kernel `ip=` field, DHCP): RFC 1123 labels, and never
 *  something that reads as a MAC (refs accept both). */
export function validateName(name: string): string {
  if (!/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/.test(name)) {
    throw new UserError(
      `invalid node name "${name}": use letters, digits and inner dashes (at most 63)`,
    );
  }
  if (asMac(name)) throw new UserError(`invalid node name "${name}": it reads as a MAC address`);
  return name;
}

/** The deploy symlink target, relative so the data dir can move and NFS can follow it. */
export const linkTarget = (imageId: string) => `../../images/${imageId}/rootfs`;
const targetPattern = /^\.\.\/\.\.\/images\/([^/]+)\/rootfs$/;

function readLink(path: string): string | null {
  try {
    return readlinkSync(path);
  } catch {
    return null;
  }
}

/** Removes the directory when it is empty (or gone): rmdir refuses one that holds anything, and
 *  needs no listing of it. A node's root fills its /persist: listing a million names there took
 *  the server's thread 11 s and 640 MB. */
function removeIfEmpty(dir: string): void {
  try {
    rmdirSync(dir);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code !== "ENOTEMPTY" && code !== "EEXIST" && code !== "ENOENT") throw e;
  }
}

/** Points `link` at `target` atomically: a new link under a temporary name, renamed over the old
 *  one (rename(2) replaces atomically: a reader sees the old or the new link, never none).
 *  `target` null removes the link. */
export function flipSymlink(link: string, target: string | null): void {
  if (target === null) {
    rmSync(link, { force: true });
    return;
  }
  const tmp = `${link}.tmp-${Deno.pid}`;
  try {
    symlinkSync(target, tmp);
  } catch (e) {
    // A leftover of an interrupted flip by a process with our PID: replace it.
    if ((e as { code?: string }).code !== "EEXIST") throw e;
    rmSync(tmp, { force: true });
    symlinkSync(target, tmp);
  }
  renameSync(tmp, link);
}

function entriesOf(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return []; // absent, or a stray file where a node dir should be
  }
}

/** A node's name when none is given: `node-` and the MAC's last three bytes. */
function defaultNameOf(mac: string): string {
  return `node-${mac.split(":").slice(3).join("")}`;
}

interface NodeRow {
  mac: string;
  name: string;
  model: string;
  image_id: string | null;
  image_name: string | null;
  image_pinned: number;
  ip: string | null;
  virtual: number;
  auto_registered: number;
  created_at: string;
  last_seen: string | null;
  state: NodeState;
  state_since: string | null;
  state_reason: string | null;
}

const selectNodes = `SELECT n.mac, n.name, n.model, n.image_id, i.name AS image_name,
  n.image_pinned, n.ip,
  n.virtual, n.auto_registered, n.created_at, n.last_seen, n.state, n.state_since, n.state_reason
  FROM nodes n LEFT JOIN images i ON i.id = n.image_id`;

/** The "state" event on ctx.changes: which node moved to which state (node wait follows it), or
 *  is in still once its clean reboots ended (src/server.ts softEnded: no longer on its way out). */
export class StateChange extends Event {
  constructor(readonly mac: string, readonly state: NodeState) {
    super("state");
  }
}

/** What the node monitor (src/nodestate.ts) needs of every node, in one query. */
export interface MonitoredNode {
  mac: string;
  name: string;
  virtual: boolean;
  /** The image it is deployed on. */
  imageId: string | null;
  /** The address it is probed at (the `ip` setting, else its bound lease, else the registry's). */
  ip: string | null;
  state: NodeState;
  stateSince: number;
  stateReason: string | null;
  watchdogReboots: number;
  settings: Record<string, string>;
  /** The latest boot's last reported stage, and when. */
  stage: string | null;
  reportedAt: number | null;
}

export interface ExportTarget {
  mac: string;
  ip: string;
  persist: boolean;
  /** Its `persist.max` in bytes, when set. */
  persistMax?: number;
  images: string[];
}

export class NodeRegistry {
  constructor(
    readonly data: DataDir,
    readonly db: Db,
    readonly images: ImageStore,
    readonly rebooter: Rebooter,
    readonly changes: EventTarget,
    readonly rules: SettingRules = new SettingRules(nodeSettings),
  ) {}

  #addressEpoch = 0;
  /** Counts the changes that may free a node's address (its address set or cleared, its row
   *  deleted): DHCP's exhausted pool holds until it moves (src/boot/leases.ts). */
  get addressEpoch(): number {
    return this.#addressEpoch;
  }

  #info(row: NodeRow, settings: Record<string, string>): NodeInfo {
    return {
      mac: row.mac,
      name: row.name,
      model: row.model,
      imageId: row.image_id,
      imageName: row.image_name,
      imagePinned: row.image_pinned === 1,
      ip: row.ip,
      virtual: row.virtual === 1,
      autoRegistered: row.auto_registered === 1,
      createdAt: row.created_at,
      lastSeen: row.last_seen,
      state: row.state,
      stateSince: row.state_since,
      stateReason: row.state_reason,
      settings: this.rules.redact(settings),
    };
  }

  #settings(mac: string): Record<string, string> {
    const rows = this.db.prepare("SELECT key, value FROM node_settings WHERE mac = ? ORDER BY key")
      .all(mac) as { key: string; value: string }[];
    return Object.fromEntries(rows.map((r) => [r.key, r.value]));
  }

  /** The node's settings with secrets in clear, for the code that uses them (power drivers);
   *  never for display. */
  secretSettings(mac: string): Record<string, string> {
    return this.#settings(normalizeMac(mac));
  }

  #changed(): void {
    this.changes.dispatchEvent(new Event("nodes"));
  }

  /** How many nodes are registered (the API's health answer). */
  count(): number {
    return (this.db.prepare("SELECT count(*) AS n FROM nodes").get() as { n: number }).n;
  }

  list(): NodeInfo[] {
    const rows = this.db.prepare(`${selectNodes} ORDER BY n.name`).all() as unknown as NodeRow[];
    const settings = new Map<string, Record<string, string>>();
    for (
      const s of this.db.prepare("SELECT mac, key, value FROM node_settings ORDER BY key")
        .all() as { mac: string; key: string; value: string }[]
    ) {
      if (!settings.has(s.mac)) settings.set(s.mac, {});
      settings.get(s.mac)![s.key] = s.value;
    }
    return rows.map((r) => this.#info(r, settings.get(r.mac) ?? {}));
  }

  /** A node by MAC (any common spelling) or name, or undefined. */
  find(ref: string): NodeInfo | undefined {
    const r = ref.trim();
    const mac = asMac(r);
    const row =
      (mac
        ? this.db.prepare(`${selectNodes} WHERE n.mac = ?`).get(mac)
        : this.db.prepare(`${selectNodes} WHERE n.name = ?`).get(r)) as NodeRow | undefined;
    return row && this.#info(row, this.#settings(row.mac));
  }

  get(ref: string): NodeInfo {
    const n = this.find(ref);
    if (!n) throw notFound(`node ${ref}`);
    return n;
  }

  /** A node's name by MAC, one indexed lookup (every log line that names a MAC asks). */
  nameOf(mac: string): string | undefined {
    const m = asMac(mac);
    if (!m) return undefined;
    return (this.db.prepare("SELECT name FROM nodes WHERE mac = ?").get(m) as
      | { name: string }
      | undefined)?.name;
  }

  /** What the NFS exports follow, for every node with an address: the address (the admin's `ip`
   *  setting, else its bound lease, else the evidence recorded in nodes.ip), whether it has a
   *  /persist, and the images it may mount as root (its current one and those it may run: the
   *  view booted_images). */
  exportTargets(): ExportTarget[] {
    const rows = this.db.prepare(
      `SELECT n.mac AS mac, COALESCE(a.value, l.ip, n.ip) AS ip, s.value AS persist,
         m.value AS persistMax, n.image_id AS current,
         (SELECT group_concat(b.image_id, ' ') FROM booted_images b WHERE b.mac = n.mac) AS booted
       FROM nodes n
       LEFT JOIN leases l ON l.mac = n.mac AND l.state = 'bound'
       LEFT JOIN node_settings a ON a.mac = n.mac AND a.key = 'ip'
       LEFT JOIN node_settings s ON s.mac = n.mac AND s.key = 'persist'
       LEFT JOIN node_settings m ON m.mac = n.mac AND m.key = 'persist.max'
       ORDER BY n.mac`,
    ).all() as {
      mac: string;
      ip: string | null;
      persist: string | null;
      persistMax: string | null;
      current: string | null;
      booted: string | null;
    }[];
    return rows.filter((r) => r.ip).map((r) => ({
      mac: r.mac,
      ip: r.ip!,
      persist: r.persist !== "false",
      ...(r.persistMax ? { persistMax: parseBytes("persist.max", r.persistMax) } : {}),
      images: [...new Set([r.current, ...r.booted?.split(" ") ?? []])]
        .filter((x): x is string => !!x),
    }));
  }

  /** The addresses bound to a node's MAC firmly enough to pin at the link layer (boot/pins.ts):
   *  the admin's `ip` setting and, with `full` (full DHCP mode: netroot hands the addresses out
   *  and reserves one per node), the address its exports follow (exportTargets). In proxy mode
   *  only the setting: another DHCP server may give a node's last address to another machine
   *  tomorrow, which a pin would cut off from the server. */
  pinnedAddresses(full: boolean): { mac: string; ip: string }[] {
    return (this.db.prepare(
      `SELECT mac, ip FROM (
         SELECT n.mac AS mac, CASE WHEN ? THEN COALESCE(a.value, l.ip, n.ip) ELSE a.value END AS ip
         FROM nodes n
         LEFT JOIN leases l ON l.mac = n.mac AND l.state = 'bound'
         LEFT JOIN node_settings a ON a.mac = n.mac AND a.key = 'ip')
       WHERE ip IS NOT NULL ORDER BY mac`,
    ).all(full ? 1 : 0) as { mac: string; ip: string }[]).map((r) => ({ mac: r.mac, ip: r.ip }));
  }

  /** Where the node is reached (probes, ssh): its `ip` setting, else its bound lease, else the
   *  registry's address; as monitored() reads it. */
  addressOf(mac: string): string | null {
    const r = this.db.prepare(
      `SELECT COALESCE(a.value, l.ip, n.ip) AS ip FROM nodes n
       LEFT JOIN leases l ON l.mac = n.mac AND l.state = 'bound'
       LEFT JOIN node_settings a ON a.mac = n.mac AND a.key = 'ip'
       WHERE n.mac = ?`,
    ).get(normalizeMac(mac)) as { ip: string | null } | undefined;
    return r?.ip ?? null;
  }

  /** The nodes with `console.netconsole=true`, by address (the admin's `ip` setting, else the
   *  bound lease, else nodes.ip: evidence bound to the MAC, as exportTargets): address → MAC. */
  netconsoleSources(): Map<string, string> {
    const rows = this.db.prepare(
      `SELECT n.mac AS mac, COALESCE(a.value, l.ip, n.ip) AS ip
       FROM nodes n
       JOIN node_settings c ON c.mac = n.mac AND c.key = 'console.netconsole' AND c.value = 'true'
       LEFT JOIN leases l ON l.mac = n.mac AND l.state = 'bound'
       LEFT JOIN node_settings a ON a.mac = n.mac AND a.key = 'ip'`,
    ).all() as { mac: string; ip: string | null }[];
    return new Map(rows.filter((r) => r.ip).map((r) => [r.ip!, r.mac]));
  }

  byIp(ip: string): NodeInfo | undefined {
    const row = this.db.prepare(`${selectNodes} WHERE n.ip = ?`).get(ip) as NodeRow | undefined;
    return row && this.#info(row, this.#settings(row.mac));
  }

  /** Records the node's address; an address belongs to one node only. */
  setIp(mac: string, ip: string | null): void {
    const m = normalizeMac(mac);
    this.#addressEpoch++;
    tx(this.db, () => {
      if (ip !== null) {
        this.db.prepare("UPDATE nodes SET ip = NULL WHERE ip = ? AND mac <> ?").run(ip, m);
      }
      this.db.prepare("UPDATE nodes SET ip = ? WHERE mac = ?").run(ip, m);
    });
  }

  /** Evidence bound to the MAC (`lease`: an address netroot ACKed to it; `neighbour`: the boot
   *  interface's neighbour table maps the address of its request to its MAC) that the node is
   *  at `ip`. Recorded unless an admin fixed the node's address (`ip` setting), or fixed `ip` as
   *  another node's. Returns whether the address changed; a change re-exports its /persist. */
  observeAddress(mac: string, ip: string, evidence: "lease" | "neighbour"): boolean {
    const m = normalizeMac(mac);
    const changed = tx(this.db, () => {
      const row = this.db.prepare(
        `SELECT n.ip, s.value AS fixed FROM nodes n
         LEFT JOIN node_settings s ON s.mac = n.mac AND s.key = 'ip' WHERE n.mac = ?`,
      ).get(m) as { ip: string | null; fixed: string | null } | undefined;
      if (!row || row.fixed !== null || row.ip === ip) return false;
      const owner = this.db.prepare(
        "SELECT mac FROM node_settings WHERE key = 'ip' AND value = ? AND mac <> ?",
      ).get(ip, m) as { mac: string } | undefined;
      if (owner) {
        log.warn("address is fixed for another node: not taken", { mac: m, ip, owner: owner.mac });
        return false;
      }
      this.setIp(m, ip);
      // Within the MAC's budget, as DHCP's own events: a MAC that declines each address it is
      // leased moves at every lease, and 3,000 moves in 4 s were 3,000 rows of its timeline.
      const detail = { ip, previous: row.ip, evidence };
      if (recordDhcpAllowed(this.db, m, "node.address", detail)) {
        recordEvent(this.db, m, "node.address", detail);
      }
      return true;
    });
    if (changed) this.#changed();
    return changed;
  }

  /** The node did something beyond DHCP (fetched its boot script, reported a boot stage): it
   *  is seen now (ageOut counts idleness from here). */
  touch(mac: string): void {
    const now = new Date().toISOString();
    this.db.prepare("UPDATE nodes SET last_seen = ? WHERE mac = ?").run(now, normalizeMac(mac));
  }

  /** Nodes the DHCP service registered that no admin has adopted (the cap counts them). */
  countAutoRegistered(): number {
    return (this.db.prepare("SELECT count(*) AS n FROM nodes WHERE auto_registered = 1").get() as {
      n: number;
    }).n;
  }

  /** Forgets the auto-registered nodes that never booted their image (no boot of theirs reached
   *  handover) and have been idle (no packet, script or report either) for `ttlSeconds`: rows,
   *  fs links, and their directories when empty (a /persist holding files is kept, as `forget`
   *  keeps it). A script fetch alone no longer keeps one: a host that changes its MAC and fetches
   *  each one's script filled `registerMax` for good, and no new machine registered after it.
   *  Admin-added or adopted nodes are never aged out. Returns the MACs forgotten. */
  ageOut(ttlSeconds: number, now = Date.now()): string[] {
    if (ttlSeconds <= 0) return [];
    const cutoff = new Date(now - ttlSeconds * 1000).toISOString();
    const macs = tx(this.db, () => {
      const rows = this.db.prepare(
        `SELECT mac FROM nodes WHERE auto_registered = 1 AND COALESCE(last_seen, created_at) < ?
         AND NOT EXISTS (SELECT 1 FROM boots WHERE boots.mac = nodes.mac
           AND boots.stage = 'handover')`,
      ).all(cutoff) as { mac: string }[];
      for (const r of rows) {
        this.#deleteRow(r.mac);
        recordEvent(this.db, r.mac, "node.aged-out", { ttl: ttlSeconds });
      }
      return rows.map((r) => r.mac);
    });
    for (const mac of macs) {
      try {
        flipSymlink(this.data.nodeFs(mac), null);
        for (const dir of [this.data.persist(mac), this.data.node(mac)]) removeIfEmpty(dir);
      } catch (e) {
        log.warn("cannot tidy an aged-out node's directory", {
          mac,
          dir: this.data.node(mac),
          error: (e as Error).message,
        });
      }
    }
    if (macs.length) {
      log.info("aged out auto-registered nodes that never booted", {
        count: macs.length,
        ttl: ttlSeconds,
      });
      this.#changed();
    }
    return macs;
  }

  /** The node's row and its boots. Kept, a forgotten node's boots grew the table by 51 rows
   *  each, for ever; its last one kept the version it ran on disk as a whole tree that neither
   *  pruning nor `image gc --keep` freed (booted_images); and they counted as netroot's boots
   *  for the next node given its MAC. Its events stay: the timeline is history. */
  #deleteRow(mac: string): void {
    this.#addressEpoch++;
    this.db.prepare("DELETE FROM nodes WHERE mac = ?").run(mac);
    this.db.prepare("DELETE FROM boots WHERE mac = ?").run(mac);
  }

  /** `node-<last 3 MAC bytes>`, with `-2`, `-3`… when taken. */
  #defaultName(mac: string): string {
    const base = defaultNameOf(mac);
    const taken = (n: string) => this.db.prepare("SELECT 1 FROM nodes WHERE name = ?").get(n);
    let name = base;
    for (let i = 2; taken(name); i++) name = `${base}-${i}`;
    return name;
  }

  add(
    mac: string,
    opts: {
      name?: string;
      model?: string;
      virtual?: boolean;
      image?: string;
      /** Registered by the DHCP service, not by an admin (capped, aged out until it boots). */
      auto?: boolean;
    } = {},
  ): NodeInfo {
    const m = normalizeMac(mac);
    if (this.find(m)) throw conflict(`node ${m} already exists`);
    const model = opts.model?.trim() || "pc-x86-64";
    if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/.test(model)) {
      throw new UserError(`invalid model "${opts.model}"`);
    }
    let imageId: string | null = null;
    if (opts.image !== undefined) {
      const img = this.images.get(opts.image);
      if (!img.bootable) {
        throw new UserError(`image ${img.name} is not bootable: ${img.reason ?? "unknown reason"}`);
      }
      imageId = img.id;
    } else {
      // A lab's usual setup: every new node boots the image named "default".
      const def = this.images.find("default");
      if (def?.bootable) imageId = def.id;
    }
    tx(this.db, () => {
      let name: string;
      if (opts.name !== undefined) {
        name = validateName(opts.name);
        if (this.find(name)) throw conflict(`node name ${name} is already taken`);
      } else name = this.#defaultName(m);
      this.db.prepare(
        `INSERT INTO nodes (mac, name, model, image_id, virtual, created_at, auto_registered)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        m,
        name,
        model,
        imageId,
        opts.virtual ? 1 : 0,
        new Date().toISOString(),
        opts.auto ? 1 : 0,
      );
      recordEvent(this.db, m, "node.added", { name, model, image: imageId });
      this.data.makePersist(m);
      flipSymlink(this.data.nodeFs(m), imageId && linkTarget(imageId));
    });
    this.#changed();
    return this.get(m);
  }

  /** First contact (DHCP of an unknown MAC): registers it, or returns it if it already exists
   *  (two DISCOVERs can race). */
  register(mac: string, source: Record<string, unknown>): NodeInfo {
    const m = normalizeMac(mac);
    const existing = this.find(m);
    if (existing) return existing;
    const node = this.add(m, { auto: true });
    // Its default name was taken: by another machine sharing its last three MAC bytes, maybe a
    // neighbour that registered a made-up MAC first to take the name an admin will look for.
    const holder = node.name === defaultNameOf(m) ? undefined : this.find(defaultNameOf(m));
    const nameTaken = holder && { name: holder.name, by: holder.mac };
    if (nameTaken) {
      log.warn("registered node's default name was taken", { mac: m, name: node.name, nameTaken });
    }
    recordEvent(this.db, m, "node.registered", { ...source, ...(nameTaken && { nameTaken }) });
    return node;
  }

  rename(ref: string, newName: string): NodeInfo {
    const node = this.get(ref);
    validateName(newName);
    if (newName === node.name) return node;
    const other = this.find(newName);
    if (other) throw conflict(`node name ${newName} is already taken by ${other.mac}`);
    durableTx(this.db, () => {
      this.db.prepare("UPDATE nodes SET name = ?, auto_registered = 0 WHERE mac = ?")
        .run(newName, node.mac);
      recordEvent(this.db, node.mac, "node.renamed", { from: node.name, to: newName });
    });
    this.#changed();
    return this.get(node.mac);
  }

  forget(ref: string): void {
    const node = this.get(ref);
    durableTx(this.db, () => {
      this.#deleteRow(node.mac);
      recordEvent(this.db, node.mac, "node.forgotten", { name: node.name });
      flipSymlink(this.data.nodeFs(node.mac), null);
    });
    this.#changed();
  }

  /** Sets (string) or deletes (null) settings; all validated before any is written. */
  configure(ref: string, settings: Record<string, string | null>): NodeInfo {
    const node = this.get(ref);
    const normalized: [string, string | null][] = [];
    for (const [key, value] of Object.entries(settings)) {
      const validate = this.rules.validatorFor(key);
      if (!validate) {
        throw new UserError(`unknown setting ${key} (known: ${this.rules.known().join(", ")})`);
      }
      if (value !== null && typeof value !== "string") {
        throw new UserError(`setting ${key} needs a string value (or null to remove it)`);
      }
      normalized.push([key, value === null ? null : validate(key, value)]);
    }
    this.rules.checkSecretsFollow(this.#settings(node.mac), Object.fromEntries(normalized));
    durableTx(this.db, () => {
      this.db.prepare("UPDATE nodes SET auto_registered = 0 WHERE mac = ?").run(node.mac);
      for (const [key, value] of normalized) {
        if (key === "ip") this.#fixAddress(node.mac, value);
        if (value === null) {
          this.db.prepare("DELETE FROM node_settings WHERE mac = ? AND key = ?").run(node.mac, key);
        } else {
          this.db.prepare(
            `INSERT INTO node_settings (mac, key, value) VALUES (?, ?, ?)
             ON CONFLICT (mac, key) DO UPDATE SET value = excluded.value`,
          ).run(node.mac, key, value);
        }
      }
      recordEvent(
        this.db,
        node.mac,
        "node.config",
        this.rules.redact(Object.fromEntries(normalized)),
      );
    });
    this.#changed();
    return this.get(node.mac);
  }

  /** The admin's `ip` setting is the node's address (null: no longer fixed; evidence will
   *  find it again). One node per fixed address; another client's lease of it ends (else two
   *  machines would hold it: the other's /persist exported to it, its requests taken as theirs). */
  #fixAddress(mac: string, ip: string | null): void {
    if (ip !== null) {
      const other = this.db.prepare(
        "SELECT mac FROM node_settings WHERE key = 'ip' AND value = ? AND mac <> ?",
      ).get(ip, mac) as { mac: string } | undefined;
      if (other) throw conflict(`address ${ip} is already fixed for node ${other.mac}`);
      const holder = revokeLease(this.db, ip, mac, Math.floor(Date.now() / 1000));
      if (holder) {
        log.warn("lease revoked: its address is fixed for another node", {
          mac: holder,
          ip,
          node: mac,
        });
        recordEvent(this.db, holder, "dhcp.revoked", { ip, fixedFor: mac });
      }
    }
    this.setIp(mac, ip);
  }

  /** find() for a few refs; for many, one listing indexed by MAC and name (a query per ref
   *  costs more than listing everything past a few dozen nodes). */
  #lookup(count: number): (ref: string) => NodeInfo | undefined {
    if (count <= 32) return (ref) => this.find(ref);
    const byRef = new Map<string, NodeInfo>();
    for (const n of this.list()) byRef.set(n.mac, n).set(n.name, n);
    return (ref) => byRef.get(asMac(ref) ?? ref.trim());
  }

  /** Boots `imageRef` on the nodes: rows, links and events in one transaction, then reboots. */
  async deploy(
    refs: string[],
    imageRef: string,
    opts: { reboot?: boolean; force?: boolean; hard?: boolean } = {},
  ): Promise<{ nodes: NodeInfo[]; reboots: RebootResult[] }> {
    if (refs.length === 0) throw new UserError("deploy needs at least one node");
    const lookup = this.#lookup(refs.length);
    const missing: string[] = [];
    const targets = new Map<string, NodeInfo>();
    for (const ref of refs) {
      const n = lookup(ref);
      if (n) targets.set(n.mac, n);
      else missing.push(ref);
    }
    if (missing.length) {
      throw notFound(`node${missing.length > 1 ? "s" : ""} ${missing.join(", ")}`);
    }
    const image = this.images.get(imageRef);
    if (!image.bootable && !opts.force) {
      throw new UserError(
        `image ${image.name} is not bootable: ${
          image.reason ?? "unknown reason"
        } (force to deploy anyway)`,
      );
    }
    const nodes = [...targets.values()];
    // A name: the nodes follow its new versions; an id or NAME@ID: they stay on that version.
    const pinned = !this.images.isName(imageRef);
    // A thin version's tree is written again before the links flip to it (NFS, boots).
    const release = this.images.hold(image.id);
    try {
      await this.images.ensureTree(image.id);
      this.#point(nodes.map((n) => ({ mac: n.mac, from: n.imageId })), image, pinned, true);
    } finally {
      release();
    }
    this.images.schedulePrune();
    const reboots = opts.reboot === false ? [] : await Promise.all(
      nodes.map((n) => this.rebooter.reboot(n, "image change", { hard: opts.hard })),
    );
    const after = this.#lookup(nodes.length);
    return { nodes: nodes.map((n) => after(n.mac)!), reboots };
  }

  /**
   * Rows, links and events of a deploy in one transaction: if a flip fails the rows roll back and
   * the links already flipped are put back.
   */
  #point(
    nodes: { mac: string; from: string | null }[],
    image: { id: string; name: string },
    pinned: boolean | null,
    adopt: boolean,
  ): void {
    const flipped: { mac: string; from: string | null }[] = [];
    try {
      durableTx(this.db, () => {
        const update = this.db.prepare(
          `UPDATE nodes SET image_id = ?, image_pinned = coalesce(?, image_pinned)${
            adopt ? ", auto_registered = 0" : ""
          } WHERE mac = ?`,
        );
        const event = this.db.prepare(
          "INSERT INTO events (mac, ts, kind, detail) VALUES (?, ?, 'deploy', ?)",
        );
        const ts = new Date().toISOString();
        const target = linkTarget(image.id);
        for (const n of nodes) {
          update.run(image.id, pinned === null ? null : pinned ? 1 : 0, n.mac);
          event.run(
            n.mac,
            ts,
            JSON.stringify({ image: image.id, imageName: image.name, previous: n.from }),
          );
          flipSymlink(this.data.nodeFs(n.mac), target);
          flipped.push(n);
        }
      });
    } catch (e) {
      // The rows rolled back: put the links we already flipped back where the rows say.
      for (const n of flipped) {
        try {
          flipSymlink(this.data.nodeFs(n.mac), n.from && linkTarget(n.from));
        } catch { /* reconcile() at the next start repairs it */ }
      }
      throw e;
    }
    eventsAppended(this.db);
    this.#changed();
  }

  /**
   * Moves every node that follows an image name (deployed on the name, not pinned) and sits on an
   * older version to the name's current version (after a commit or a rollback). Their next boot
   * serves it; the running system keeps its own version's export until then. Returns them. A
   * current version that is not bootable (no kernel: an import of the wrong tarball, a shell that
   * removed it) is not followed from a bootable one, as `deploy` refuses it without force: every
   * follower would boot into a refusal script; they stay, and follow the next bootable version
   * (`staying` names them).
   */
  follow(name?: string): { mac: string; name: string; from: string; to: string }[] {
    const moved = this.db.prepare(
      `SELECT n.mac, n.name, n.image_id AS "from", c.id AS "to", c.name AS image
       FROM nodes n JOIN images v ON v.id = n.image_id
       JOIN images c ON c.name = v.name AND c.current = 1 AND (c.bootable = 1 OR v.bootable = 0)
       WHERE n.image_pinned = 0 AND v.current = 0 AND (? IS NULL OR v.name = ?)
       ORDER BY n.name`,
    ).all(name ?? null, name ?? null) as {
      mac: string;
      name: string;
      from: string;
      to: string;
      image: string;
    }[];
    const stuck = new Set<string>();
    for (const to of new Set(moved.map((m) => m.to))) {
      const group = moved.filter((m) => m.to === to);
      try {
        this.#point(group, { id: to, name: group[0].image }, null, false);
      } catch {
        // One node's broken directory must not keep the others on the old version, fail the
        // commit that was made, or (reconcile follows) keep the server from starting: each on
        // its own, one that cannot move stays, said in the log, tried again at the next start.
        for (const m of group) {
          try {
            this.#point([m], { id: to, name: m.image }, null, false);
          } catch (e) {
            stuck.add(m.mac);
            log.error("cannot move the node to its image's new version", {
              node: m.name,
              image: m.image,
              dir: this.data.node(m.mac),
              error: (e as Error).message,
            });
          }
        }
      }
    }
    return moved.filter((m) => !stuck.has(m.mac))
      .map(({ mac, name, from, to }) => ({ mac, name, from, to }));
  }

  /** The nodes that follow image name `name` on a bootable version other than its current one
   *  (which is not bootable: follow leaves them there). */
  staying(name: string): { mac: string; name: string; imageId: string }[] {
    return this.db.prepare(
      `SELECT n.mac, n.name, n.image_id AS imageId FROM nodes n JOIN images v ON v.id = n.image_id
       WHERE n.image_pinned = 0 AND v.current = 0 AND v.bootable = 1 AND v.name = ?
       ORDER BY n.name`,
    ).all(name) as { mac: string; name: string; imageId: string }[];
  }

  /** Reboots nodes through the reboot seam (one cause for all). */
  rebootAll(macs: string[], cause: string): Promise<RebootResult[]> {
    return Promise.all(macs.map((m) => this.rebooter.reboot(this.get(m), cause)));
  }

  reboot(ref: string, cause: string, opts: { hard?: boolean } = {}): Promise<RebootResult> {
    return this.rebooter.reboot(this.get(ref), cause, opts);
  }

  /**
   * Moves the node to `to` (when it is in one of `from`, if given): state, since, reason, and a
   * `node.state` event; reaching `booted` ends the boot attempt (the watchdog's count starts
   * over). Entering `booting` again restarts its clock without an event (a new attempt of the
   * same boot). Fires a StateChange on ctx.changes. Returns whether anything changed.
   */
  setState(
    mac: string,
    to: NodeState,
    reason: string,
    opts: { from?: NodeState[]; at?: number } = {},
  ): boolean {
    const m = normalizeMac(mac);
    const at = new Date(opts.at ?? Date.now()).toISOString();
    const changed = tx(this.db, () => {
      const row = this.db.prepare("SELECT state FROM nodes WHERE mac = ?").get(m) as
        | { state: NodeState }
        | undefined;
      if (!row || (opts.from && !opts.from.includes(row.state))) return false;
      if (row.state === to && to !== "booting") return false;
      this.db.prepare(
        `UPDATE nodes SET state = ?, state_since = ?, state_reason = ?,
           watchdog_reboots = CASE WHEN ? = 'booted' THEN 0 ELSE watchdog_reboots END
         WHERE mac = ?`,
      ).run(to, at, reason, to, m);
      if (row.state !== to) recordEvent(this.db, m, "node.state", { from: row.state, to, reason });
      return true;
    });
    if (changed) this.changes.dispatchEvent(new StateChange(m, to));
    return changed;
  }

  /** Replaces the reason of node `mac`'s state while it is still `state` for reason `was` (the
   *  watchdog's reboot failed: the reason it wrote said a reboot was under way). No event: the
   *  state did not change; "state" is fired so that waits and the dashboard read it again. */
  amendReason(mac: string, state: NodeState, was: string, reason: string): void {
    const m = normalizeMac(mac);
    const r = this.db.prepare(
      "UPDATE nodes SET state_reason = ? WHERE mac = ? AND state = ? AND state_reason = ?",
    ).run(reason, m, state, was);
    if (r.changes) this.changes.dispatchEvent(new StateChange(m, state));
  }

  /** netroot powered the node on or reset it (vnode start or reset, power on or cycle): a boot
   *  begins now, so the watchdog also covers the firmware's part of it (a PC whose network boot
   *  fell through to its firmware shell fetches no script and would otherwise sit `off` for
   *  ever). A node already booting keeps its reason (the watchdog's cause) with its clock
   *  restarted; otherwise it enters `booting`. */
  poweredOn(mac: string, reason: string, at = Date.now()): void {
    const m = normalizeMac(mac);
    const row = this.db.prepare("SELECT state FROM nodes WHERE mac = ?").get(m) as
      | { state: NodeState }
      | undefined;
    if (row?.state === "booting") {
      // max(): the watchdog's own count of this retry may already stand, at its clock.
      this.db.prepare("UPDATE nodes SET state_since = max(state_since, ?) WHERE mac = ?").run(
        new Date(at).toISOString(),
        m,
      );
    } else if (row) this.setState(m, "booting", reason, { at });
  }

  /** The watchdog rebooted the node (or the node gave up and reboots itself): one more attempt
   *  of this boot, its clock restarted. */
  countRetry(mac: string, reason: string, at = Date.now()): void {
    this.db.prepare(
      `UPDATE nodes SET watchdog_reboots = watchdog_reboots + 1, state_since = ?, state_reason = ?
       WHERE mac = ?`,
    ).run(new Date(at).toISOString(), reason, normalizeMac(mac));
  }

  /** The attempts of the current boot so far (watchdog reboots and fatal reports). */
  retriesUsed(mac: string): number {
    const r = this.db.prepare("SELECT watchdog_reboots AS n FROM nodes WHERE mac = ?").get(
      normalizeMac(mac),
    ) as { n: number } | undefined;
    return r?.n ?? 0;
  }

  /** Every node as the monitor sees it: one query for the nodes, one for their boot.* settings,
   *  and, while any node is booting, one scan of `boots` for the latest boot of each. */
  monitored(): MonitoredNode[] {
    const rows = this.db.prepare(
      `SELECT n.mac, n.name, n.virtual, n.image_id, COALESCE(a.value, l.ip, n.ip) AS ip, n.state,
         COALESCE(n.state_since, n.created_at) AS since, n.state_reason, n.watchdog_reboots
       FROM nodes n
       LEFT JOIN leases l ON l.mac = n.mac AND l.state = 'bound'
       LEFT JOIN node_settings a ON a.mac = n.mac AND a.key = 'ip'
       ORDER BY n.mac`,
    ).all() as {
      mac: string;
      name: string;
      virtual: number;
      image_id: string | null;
      ip: string | null;
      state: NodeState;
      since: string;
      state_reason: string | null;
      watchdog_reboots: number;
    }[];
    const latest = new Map<string, { stage: string | null; reported_at: string | null }>();
    if (rows.some((r) => r.state === "booting")) {
      for (
        const b of this.db.prepare(
          // SQLite takes bare columns from the max() row: each node's newest boot, one scan.
          `SELECT mac, stage, reported_at, max(rowid) FROM boots GROUP BY mac`,
        ).all() as { mac: string; stage: string | null; reported_at: string | null }[]
      ) latest.set(b.mac, b);
    }
    const settings = new Map<string, Record<string, string>>();
    for (
      const s of this.db.prepare(
        "SELECT mac, key, value FROM node_settings WHERE key LIKE 'boot.%' OR key = 'node.down.action'",
      ).all() as { mac: string; key: string; value: string }[]
    ) {
      if (!settings.has(s.mac)) settings.set(s.mac, {});
      settings.get(s.mac)![s.key] = s.value;
    }
    return rows.map((r) => ({
      mac: r.mac,
      name: r.name,
      virtual: r.virtual === 1,
      imageId: r.image_id,
      ip: r.ip,
      state: r.state,
      stateSince: Date.parse(r.since),
      stateReason: r.state_reason,
      watchdogReboots: r.watchdog_reboots,
      settings: settings.get(r.mac) ?? {},
      stage: latest.get(r.mac)?.stage ?? null,
      reportedAt: latest.get(r.mac)?.reported_at
        ? Date.parse(latest.get(r.mac)!.reported_at!)
        : null,
    }));
  }

  /** The image the node's fs symlink points at (what NFS serves), else the database's. */
  currentImageId(mac: string): string | null {
    const m = normalizeMac(mac);
    const link = readLink(this.data.nodeFs(m));
    const id = link && targetPattern.exec(link)?.[1];
    if (id) return id;
    const row = this.db.prepare("SELECT image_id FROM nodes WHERE mac = ?").get(m) as
      | { image_id: string | null }
      | undefined;
    return row?.image_id ?? null;
  }

  /** Makes the tree say what the database says: every node's fs link points at its image (or is
   *  absent), links of forgotten nodes and temporary links of interrupted flips are removed,
   *  persist dirs exist. Returns how many things were fixed. */
  reconcile(): Promise<number> {
    // A commit or rollback that died before its nodes followed the name: they follow now.
    let fixed = this.follow().length;
    const rows = this.db.prepare("SELECT mac, image_id FROM nodes").all() as {
      mac: string;
      image_id: string | null;
    }[];
    const known = new Set(rows.map((r) => r.mac));
    for (const r of rows) {
      // One node's broken directory must not keep the server from starting: say so, go on.
      try {
        const want = r.image_id && linkTarget(r.image_id);
        if (readLink(this.data.nodeFs(r.mac)) !== want) {
          mkdirSync(this.data.node(r.mac), { recursive: true });
          flipSymlink(this.data.nodeFs(r.mac), want);
          fixed++;
        }
        if (!existsSync(this.data.persist(r.mac))) {
          this.data.makePersist(r.mac);
          fixed++;
        }
      } catch (e) {
        log.error("cannot repair the node's directory", {
          mac: r.mac,
          dir: this.data.node(r.mac),
          error: (e as Error).message,
        });
      }
    }
    for (const mac of entriesOf(this.data.nodes)) {
      for (const entry of entriesOf(this.data.node(mac))) {
        const stale = entry.startsWith("fs.tmp-") || (entry === "fs" && !known.has(mac));
        if (stale) {
          rmSync(join(this.data.node(mac), entry), { force: true });
          fixed++;
        }
      }
    }
    return Promise.resolve(fixed);
  }

  /** DHCP's hot path (every packet of every known node): the node's MAC, name and address, its
   *  last-seen time moved to `at` (ms since the epoch); undefined when not registered. Prepared
   *  statements and no settings or image joins: through find/touch a lease exchange cost 3×. */
  seenByDhcp(
    mac: string,
    at: number,
  ): { mac: string; name: string; ip: string | null } | undefined {
    const row = this.db.prepare("SELECT mac, name, ip FROM nodes WHERE mac = ?").get(mac) as
      | { mac: string; name: string; ip: string | null }
      | undefined;
    if (row) {
      this.db.prepare("UPDATE nodes SET last_seen = ? WHERE mac = ?").run(
        new Date(at).toISOString(),
        mac,
      );
    }
    return row;
  }
}
