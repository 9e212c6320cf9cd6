// PLACEHOLDER — replaced by its owner; signature is the contract.
import type { DataDir } from "./datadir.ts";
import type { Db } from "./db.ts";
import type { ImageStore } from "./images/store.ts";
import type { Rebooter } from "./reboot.ts";
export class NodeRegistry {
  constructor(
    readonly data: DataDir,
    readonly db: Db,
    readonly images: ImageStore,
    readonly rebooter: Rebooter,
    readonly changes: EventTarget,
  ) {}
  /** Fixes missing/stale fs symlinks; returns how many things were fixed. */
  reconcile(): Promise<number> {
    return Promise.resolve(0);
  }
}
