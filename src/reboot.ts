// The seam between "deploy" and "make the node boot again". Mechanisms (virtual node reset, a
// node's soft-reboot service, PoE) register themselves; the first that handles a node wins.
import type { Db } from "./db.ts";
import { recordEvent } from "./events.ts";

export interface RebootTarget {
  mac: string;
  name: string;
  virtual: boolean;
  ip?: string | null;
}

export interface RebootMechanism {
  name: string;
  handles(node: RebootTarget): boolean;
  reboot(node: RebootTarget, cause: string): Promise<void>;
}

export interface RebootResult {
  mac: string;
  mechanism?: string;
  ok: boolean;
  message: string;
}

export class Rebooter {
  #mechanisms: RebootMechanism[] = [];
  constructor(private db: Db) {}

  register(m: RebootMechanism): void {
    this.#mechanisms.push(m);
  }

  async reboot(node: RebootTarget, cause: string): Promise<RebootResult> {
    const m = this.#mechanisms.find((x) => x.handles(node));
    if (!m) {
      const message = "no reboot mechanism for this node: power-cycle it by hand";
      recordEvent(this.db, node.mac, "reboot.none", { cause, message });
      return { mac: node.mac, ok: false, message };
    }
    try {
      await m.reboot(node, cause);
      recordEvent(this.db, node.mac, "reboot", { cause, mechanism: m.name });
      return { mac: node.mac, mechanism: m.name, ok: true, message: `rebooted by ${m.name}` };
    } catch (e) {
      const message = `${m.name} reboot failed: ${(e as Error).message}`;
      recordEvent(this.db, node.mac, "reboot.failed", { cause, mechanism: m.name, message });
      return { mac: node.mac, mechanism: m.name, ok: false, message };
    }
  }
}
