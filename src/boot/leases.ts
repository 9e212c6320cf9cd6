// Address allocation for full-mode DHCP, persisted in the `leases` table. An OFFER holds its
// address for offerSeconds (unless the pool runs out: then the oldest offer gives way); at ACK
// it becomes a lease and, for a registered node, its reservation in nodes.ip (never lapses while
// the node exists).
// A declined address is parked under the pseudo-MAC "declined:<ip>" until the hold time passes
// (or the pool runs out: after the pending offers, it gives way too).
// DHCP (netboot/dhcp4/server.ts) sees it through the Leases interface of netboot/booter.ts.
import { intToIp, ipToInt } from "../../contract/ipv4.ts";
import type { Lease, LeaseOptions, Leases } from "../../netboot/booter.ts";
import type { Db } from "../db.ts";

export type { Lease, LeaseOptions };

/** The address bound to `mac` by a live DHCP lease, if any (the node's address on its command
 *  line when no admin fixed one). */
export function boundLeaseIp(db: Db, mac: string): string | undefined {
  const r = db.prepare("SELECT ip FROM leases WHERE mac = ? AND state = 'bound'").get(mac) as
    | { ip: string }
    | undefined;
  return r?.ip;
}

/** Ends another client's live lease of `ip` (an admin fixed that address for node `mac`): the
 *  holder's address is no longer its evidence (exports, the boot routes' address check), and its
 *  next DHCP renewal gets a NAK (the address is reserved for `mac`), then another address.
 *  Returns the holder's MAC, if there was one. */
export function revokeLease(db: Db, ip: string, mac: string, now: number): string | undefined {
  const holder = db.prepare(
    `SELECT mac FROM leases WHERE ip = ? AND mac <> ? AND state IN ('offered', 'bound')
     AND expires_at > ?`,
  ).get(ip, mac, now) as { mac: string } | undefined;
  if (!holder) return undefined;
  db.prepare("UPDATE leases SET state = 'released', expires_at = ? WHERE mac = ?")
    .run(now, holder.mac);
  return holder.mac;
}

export class LeaseStore implements Leases {
  private readonly start: number;
  private readonly end: number;
  private readonly exclude: Set<string>;
  readonly offerSeconds: number;
  readonly declineSeconds: number;
  private cursor: number;
  /** The range had no free address at the last scan: it stays so until `until` (the next expiry
   *  of a lease, offer or parked address) unless a release or the registry's addresses (`epoch`:
   *  a node forgotten or its address changed) or a client's row that moves (put) free one
   *  first. A new store (a config reload) starts without it. With a parked pool each DISCOVER
   *  scanned the whole range (4,085 addresses: 4,085 lookups, 15 ms; a /16 is 16 times that). */
  private exhausted?: { until: number; epoch: number };

  constructor(
    private readonly db: Db,
    o: LeaseOptions,
    private readonly nodes: { readonly addressEpoch: number },
  ) {
    this.start = ipToInt(o.range.start);
    this.end = ipToInt(o.range.end);
    if (this.end < this.start) {
      throw new Error(`DHCP range ${o.range.start}-${o.range.end} is empty (end before start)`);
    }
    this.exclude = new Set(o.exclude ?? []);
    this.offerSeconds = o.offerSeconds ?? 60;
    this.declineSeconds = o.declineSeconds ?? 600;
    this.cursor = this.start;
  }

  private readonly statements = new Map<string, ReturnType<Db["prepare"]>>();
  /** Prepared once, reused: preparing dominates the cost of these small queries. */
  private sql(query: string) {
    let st = this.statements.get(query);
    if (!st) this.statements.set(query, st = this.db.prepare(query));
    return st;
  }

  inRange(ip: string): boolean {
    const n = ipToInt(ip);
    return n >= this.start && n <= this.end;
  }

  get(mac: string): Lease | undefined {
    const r = this.sql("SELECT mac, ip, expires_at, state FROM leases WHERE mac = ?")
      .get(mac) as
        | { mac: string; ip: string; expires_at: number; state: Lease["state"] }
        | undefined;
    return r && { mac: r.mac, ip: r.ip, expiresAt: r.expires_at, state: r.state };
  }

  /** Is `ip` free for `mac`: not ours, not another client's live lease or a node reservation. */
  isFree(mac: string, ip: string, now: number, ownReservation = false): boolean {
    if (this.exclude.has(ip)) return false;
    const holder = this.sql(
      "SELECT mac, expires_at, state FROM leases WHERE ip = ?",
    ).get(ip) as { mac: string; expires_at: number; state: string } | undefined;
    if (holder && holder.mac !== mac && holder.expires_at > now && holder.state !== "released") {
      return false;
    }
    // A node's own reservation is no other node's (setIp keeps addresses unique): skip the
    // lookup, which scans nodes (no index on ip).
    if (ownReservation) return true;
    const node = this.sql("SELECT mac FROM nodes WHERE ip = ? AND mac <> ?").get(ip, mac);
    return node === undefined;
  }

  /** The address to offer: the reservation, else the client's current lease, else the requested
   *  one, else the next free one in the range. undefined when the pool is exhausted. */
  pick(mac: string, now: number, reserved?: string, requested?: string): string | undefined {
    if (reserved && this.isFree(mac, reserved, now, true)) return reserved;
    const current = this.get(mac);
    if (current && this.inRange(current.ip) && this.isFree(mac, current.ip, now)) return current.ip;
    if (requested && this.inRange(requested) && this.isFree(mac, requested, now)) return requested;
    return this.scan(mac, now) ?? this.giveWay(mac);
  }

  /** The next free address of the range, scanned from where the last allocation stopped (O(1)
   *  in the usual case instead of reading every lease), wrapping around once; none, at once,
   *  while the range is known to have none (`exhausted`). */
  private scan(mac: string, now: number): string | undefined {
    const known = this.exhausted;
    if (known && now < known.until && known.epoch === this.nodes.addressEpoch) return undefined;
    const epoch = this.nodes.addressEpoch;
    const size = this.end - this.start + 1;
    for (let k = 0; k < size; k++) {
      const n = this.start + ((this.cursor - this.start + k) % size);
      const ip = intToIp(n);
      if (this.isFree(mac, ip, now)) {
        this.cursor = n;
        this.exhausted = undefined;
        return ip;
      }
    }
    const next = this.sql(
      "SELECT min(expires_at) AS t FROM leases WHERE expires_at > ? AND state <> 'released'",
    ).get(now) as { t: number | null };
    this.exhausted = { until: next.t ?? Infinity, epoch };
    return undefined;
  }

  /** Exhausted: the oldest pending offer of another client gives way, else the address declined
   *  longest ago. An OFFER is a hint, a lease a promise: that client, if it REQUESTs after all,
   *  gets a NAK and starts over, and DISCOVERs from made-up MACs can never hold the whole pool.
   *  A decline's hold is a hint too: one client may decline every address it is given (two
   *  packets each), which parked the whole pool for every new client. Never a lease, a node's
   *  reservation or an excluded address. */
  private giveWay(mac: string): string | undefined {
    // In expiry order through the index (leases_expiry), the first that fits: an exhausted
    // pool is every row, at each DISCOVER (sorted whole, a parked /16 took 35 ms).
    const first = (rows: Iterable<{ ip: string }>) => {
      for (const r of rows) if (this.inRange(r.ip) && !this.exclude.has(r.ip)) return r.ip;
    };
    const unreserved = "NOT EXISTS (SELECT 1 FROM nodes WHERE nodes.ip = leases.ip)";
    return first(
      this.sql(
        `SELECT ip FROM leases WHERE state = 'offered' AND mac <> ? AND ${unreserved}
         ORDER BY expires_at`,
      ).iterate(mac) as Iterable<{ ip: string }>,
    ) ?? first(
      this.sql(
        `SELECT ip FROM leases WHERE state = 'declined' AND ${unreserved} ORDER BY expires_at`,
      )
        .iterate() as Iterable<{ ip: string }>,
    );
  }

  private put(mac: string, ip: string, expiresAt: number, state: Lease["state"]): void {
    // A client's row that moves frees the address it held: a node whose fixed address the
    // admin moved takes the new one at its next DISCOVER (a node reboots, it does not RELEASE),
    // and its old lease's address stayed unoffered until the pool's next expiry (an hour).
    const held = this.exhausted && this.get(mac)?.ip;
    if (held && held !== ip) this.exhausted = undefined;
    // The address may still sit in an expired row of another client (ip is UNIQUE).
    this.sql("DELETE FROM leases WHERE ip = ? AND mac <> ?").run(ip, mac);
    this.sql(
      `INSERT INTO leases (mac, ip, expires_at, state) VALUES (?, ?, ?, ?)
       ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, expires_at = excluded.expires_at,
       state = excluded.state`,
    ).run(mac, ip, expiresAt, state);
  }

  offer(mac: string, ip: string, now: number): void {
    const cur = this.get(mac);
    // Re-offering a bound address must not shorten the lease the client already holds.
    if (cur && cur.ip === ip && cur.state === "bound" && cur.expiresAt > now) return;
    this.put(mac, ip, now + this.offerSeconds, "offered");
  }

  bind(mac: string, ip: string, seconds: number, now: number): void {
    this.put(mac, ip, now + seconds, "bound");
  }

  release(mac: string, ip: string, now: number): boolean {
    const r = this.sql(
      "UPDATE leases SET state = 'released', expires_at = ? WHERE mac = ? AND ip = ?",
    ).run(now, mac, ip);
    if (Number(r.changes) === 0) return false;
    this.exhausted = undefined;
    return true;
  }

  /** Whether `ip` is offered or leased to `mac`, which alone may decline it. */
  declinable(mac: string, ip: string): boolean {
    const own = this.get(mac);
    return !!own && own.ip === ip && (own.state === "offered" || own.state === "bound");
  }

  /** The client found `ip` in use by someone else: keep it out of the pool for a while. Only
   *  the client `ip` was offered or leased to can decline it (Kea checks the lease's owner the
   *  same way): false, and nothing changed, for anyone else. */
  decline(mac: string, ip: string, now: number): boolean {
    if (!this.declinable(mac, ip)) return false;
    this.sql("DELETE FROM leases WHERE mac = ? AND ip = ?").run(mac, ip);
    this.put(`declined:${ip}`, ip, now + this.declineSeconds, "declined");
    return true;
  }
}
