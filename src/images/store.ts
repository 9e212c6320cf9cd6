// PLACEHOLDER — replaced by its owner; signature is the contract.
import type { DataDir } from "../datadir.ts";
import type { Db } from "../db.ts";
export class ImageStore {
  changes?: EventTarget;
  constructor(readonly data: DataDir, readonly db: Db) {}
  /** Removes half-imported trees; returns how many things were fixed. */
  reconcile(): Promise<number> {
    return Promise.resolve(0);
  }
}
