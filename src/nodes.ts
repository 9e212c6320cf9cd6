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
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
} from "node:fs";
import { join } from "node:path";
import type { DataDir } from "./datadir.ts";
import { type Db, tx } from "./db.ts";
import { conflict, notFound, UserError } from "./errors.ts";
import { recordEvent } from "./events.ts";
import type { ImageStore } from "./images/store.ts";
import { normalizeMac } from "./mac.ts";
import { logger } from "./log.ts";
import type { Rebooter, RebootResult } from "./reboot.ts";

const log = logger("nodes");

export interface NodeInfo {
  mac: string;
  name: string;
  model: string;
  imageId: string | null;
  imageName: string | null;
  ip: string | null;
  virtual: boolean;
  createdAt: string;
  lastSeen: string | null;
  settings: Record<string, string>;
}

/** Checks one setting value and returns it normalised, or throws a UserError saying why. */
export type SettingValidator = (key: string, value: string) => string;

const validators = new Map<string, SettingValidator>();

/** Adds the settings under `prefix` (the key itself, or `prefix.*`; a prefix ending in "." only
 *  matches below it). Later components (virtual nodes) call this at module load time. */
export function registerSettingValidator(prefix: string, fn: SettingValidator): void {
  validators.set(prefix, fn);
}

function validatorFor(key: string): SettingValidator | undefined {
  const exact = validators.get(key);
  if (exact) return exact;
  for (const [prefix, fn] of validators) {
    if (key.startsWith(prefix.endsWith(".") ? prefix : prefix + ".")) return fn;
  }
  return undefined;
}

/** Setting keys known right now (built-in and registered), for error messages and help. */
export function knownSettings(): string[] {
  return [...validators.keys()].sort();
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

registerSettingValidator("kernel.cmdline", (key, value) => {
  // Appended to the kernel command line as is: a line break would end it early.
  if (/[\r\n\0]/.test(value)) throw new UserError(`${key} must be a single line`);
  if (value.length > 1024) throw new UserError(`${key} is longer than 1024 characters`);
  return value.trim();
});
registerSettingValidator("boot.mode", oneOf(["auto", "network"]));
registerSettingValidator("boot.timeout", (key, value) => {
  const n = Number(value.trim());
  if (!/^\d+$/.test(value.trim()) || n < 10 || n > 3600) {
    throw new UserError(
      `${key} must be a whole number of seconds between 10 and 3600, got "${value}"`,
    );
  }
  return String(n);
});
registerSettingValidator("tmpfs.size", (key, value) => {
  // Passed to mount(2) as tmpfs size=: a percentage of RAM or a size with k/m/g suffix.
  const v = value.trim();
  const pct = /^(\d{1,3})%$/.exec(v);
  if (pct && Number(pct[1]) >= 1 && Number(pct[1]) <= 100) return v;
  if (!pct && /^\d+[kmgKMG]?$/.test(v) && !/^0+[kmgKMG]?$/.test(v)) return v.toLowerCase();
  throw new UserError(
    `${key} must be a percentage of RAM (1%-100%) or a size like 512m, got "${value}"`,
  );
});
registerSettingValidator("initramfs", oneOf(["netroot", "image"]));
registerSettingValidator("persist", oneOf(["true", "false"]));

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

interface NodeRow {
  mac: string;
  name: string;
  model: string;
  image_id: string | null;
  image_name: string | null;
  ip: string | null;
  virtual: number;
  created_at: string;
  last_seen: string | null;
}

const selectNodes = `SELECT n.mac, n.name, n.model, n.image_id, i.name AS image_name, n.ip,
  n.virtual, n.created_at, n.last_seen FROM nodes n LEFT JOIN images i ON i.id = n.image_id`;

export class NodeRegistry {
  constructor(
    readonly data: DataDir,
    readonly db: Db,
    readonly images: ImageStore,
    readonly rebooter: Rebooter,
    readonly changes: EventTarget,
  ) {}

  #info(row: NodeRow, settings: Record<string, string>): NodeInfo {
    return {
      mac: row.mac,
      name: row.name,
      model: row.model,
      imageId: row.image_id,
      imageName: row.image_name,
      ip: row.ip,
      virtual: row.virtual === 1,
      createdAt: row.created_at,
      lastSeen: row.last_seen,
      settings,
    };
  }

  #settings(mac: string): Record<string, string> {
    const rows = this.db.prepare("SELECT key, value FROM node_settings WHERE mac = ? ORDER BY key")
      .all(mac) as { key: string; value: string }[];
    return Object.fromEntries(rows.map((r) => [r.key, r.value]));
  }

  #changed(): void {
    this.changes.dispatchEvent(new Event("nodes"));
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

  byIp(ip: string): NodeInfo | undefined {
    const row = this.db.prepare(`${selectNodes} WHERE n.ip = ?`).get(ip) as NodeRow | undefined;
    return row && this.#info(row, this.#settings(row.mac));
  }

  /** Records the node's address; an address belongs to one node only. */
  setIp(mac: string, ip: string | null): void {
    const m = normalizeMac(mac);
    tx(this.db, () => {
      if (ip !== null) {
        this.db.prepare("UPDATE nodes SET ip = NULL WHERE ip = ? AND mac <> ?").run(ip, m);
      }
      this.db.prepare("UPDATE nodes SET ip = ? WHERE mac = ?").run(ip, m);
    });
  }

  touch(mac: string): void {
    this.db.prepare("UPDATE nodes SET last_seen = ? WHERE mac = ?")
      .run(new Date().toISOString(), normalizeMac(mac));
  }

  #defaultName(mac: string): string {
    const base = `node-${mac.split(":").slice(3).join("")}`;
    const taken = (n: string) => this.db.prepare("SELECT 1 FROM nodes WHERE name = ?").get(n);
    let name = base;
    for (let i = 2; taken(name); i++) name = `${base}-${i}`;
    return name;
  }

  add(
    mac: string,
    opts: { name?: string; model?: string; virtual?: boolean; image?: string } = {},
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
        `INSERT INTO nodes (mac, name, model, image_id, virtual, created_at)
         VALUES (?, ?, ?, ?, ?, ?)`,
      ).run(m, name, model, imageId, opts.virtual ? 1 : 0, new Date().toISOString());
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
    const node = this.add(m);
    recordEvent(this.db, m, "node.registered", source);
    return node;
  }

  rename(ref: string, newName: string): NodeInfo {
    const node = this.get(ref);
    validateName(newName);
    if (newName === node.name) return node;
    const other = this.find(newName);
    if (other) throw conflict(`node name ${newName} is already taken by ${other.mac}`);
    tx(this.db, () => {
      this.db.prepare("UPDATE nodes SET name = ? WHERE mac = ?").run(newName, node.mac);
      recordEvent(this.db, node.mac, "node.renamed", { from: node.name, to: newName });
    });
    this.#changed();
    return this.get(node.mac);
  }

  forget(ref: string): void {
    const node = this.get(ref);
    tx(this.db, () => {
      this.db.prepare("DELETE FROM nodes WHERE mac = ?").run(node.mac);
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
      const validate = validatorFor(key);
      if (!validate) {
        throw new UserError(`unknown setting ${key} (known: ${knownSettings().join(", ")})`);
      }
      if (value !== null && typeof value !== "string") {
        throw new UserError(`setting ${key} needs a string value (or null to remove it)`);
      }
      normalized.push([key, value === null ? null : validate(key, value)]);
    }
    tx(this.db, () => {
      for (const [key, value] of normalized) {
        if (value === null) {
          this.db.prepare("DELETE FROM node_settings WHERE mac = ? AND key = ?").run(node.mac, key);
        } else {
          this.db.prepare(
            `INSERT INTO node_settings (mac, key, value) VALUES (?, ?, ?)
             ON CONFLICT (mac, key) DO UPDATE SET value = excluded.value`,
          ).run(node.mac, key, value);
        }
      }
      recordEvent(this.db, node.mac, "node.config", Object.fromEntries(normalized));
    });
    this.#changed();
    return this.get(node.mac);
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
    opts: { reboot?: boolean; force?: boolean } = {},
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
    const flipped: NodeInfo[] = [];
    try {
      tx(this.db, () => {
        const update = this.db.prepare("UPDATE nodes SET image_id = ? WHERE mac = ?");
        const event = this.db.prepare(
          "INSERT INTO events (mac, ts, kind, detail) VALUES (?, ?, 'deploy', ?)",
        );
        const ts = new Date().toISOString();
        const target = linkTarget(image.id);
        for (const n of nodes) {
          update.run(image.id, n.mac);
          event.run(
            n.mac,
            ts,
            JSON.stringify({ image: image.id, imageName: image.name, previous: n.imageId }),
          );
          flipSymlink(this.data.nodeFs(n.mac), target);
          flipped.push(n);
        }
      });
    } catch (e) {
      // The rows rolled back: put the links we already flipped back where the rows say.
      for (const n of flipped) {
        try {
          flipSymlink(this.data.nodeFs(n.mac), n.imageId && linkTarget(n.imageId));
        } catch { /* reconcile() at the next start repairs it */ }
      }
      throw e;
    }
    this.#changed();
    const reboots = opts.reboot === false
      ? []
      : await Promise.all(nodes.map((n) => this.rebooter.reboot(n, "image change")));
    const after = this.#lookup(nodes.length);
    return { nodes: nodes.map((n) => after(n.mac)!), reboots };
  }

  reboot(ref: string, cause: string): Promise<RebootResult> {
    return this.rebooter.reboot(this.get(ref), cause);
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
    let fixed = 0;
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
}
