// The `vnodes` table: what a virtual node runs with (ram, cpus, disks as created). The node itself
// is in the node registry; forgetting it there cascades to its row here.
import type { Db } from "../db.ts";
import type { DiskSpec } from "./disks.ts";

export interface VnodeRow {
  mac: string;
  ram: string;
  cpus: number;
  /** JSON list of DiskSpec. */
  disks: string;
}

export class VnodeStore {
  constructor(readonly db: Db) {}

  get(mac: string): VnodeRow | undefined {
    return this.db.prepare("SELECT mac, ram, cpus, disks FROM vnodes WHERE mac = ?").get(mac) as
      | VnodeRow
      | undefined;
  }

  macs(): Set<string> {
    return new Set(
      (this.db.prepare("SELECT mac FROM vnodes").all() as { mac: string }[]).map((r) => r.mac),
    );
  }

  /** Adds the row of a node just registered (in the caller's transaction). */
  add(mac: string, spec: { ram: string; cpus: number; disks: DiskSpec[] }): void {
    this.db.prepare("INSERT INTO vnodes (mac, ram, cpus, disks) VALUES (?, ?, ?, ?)")
      .run(mac, spec.ram, spec.cpus, JSON.stringify(spec.disks));
  }
}
