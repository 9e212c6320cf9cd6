// Shares of a pool that one address may hold (HTTP connections, requests and bodies; TFTP
// transfers): a neighbour on the boot network stands for one machine, and one machine must not take
// what every node needs to boot.

/** A client on the server machine itself (the CLI, a local reverse proxy): no share per address
 *  applies to it. Only the loopback addresses themselves: the rest of 127/8 is as any other
 *  source (and lets tests stand for many hosts). */
export function isLocalClient(address: string): boolean {
  return address === "127.0.0.1" || address === "::1" || address === "::ffff:127.0.0.1";
}

/** What addresses hold against a share each (HTTP connections, requests, body readers; TFTP
 *  transfers): counted per address, none for the server machine's own (isLocalClient). */
export class Shares {
  #held = new Map<string, number>();
  /** Takes one for `address`; false (nothing taken) when it already holds `share`. */
  take(address: string, share: number): boolean {
    if (isLocalClient(address)) return true;
    const n = this.#held.get(address) ?? 0;
    if (n >= share) return false;
    this.#held.set(address, n + 1);
    return true;
  }
  give(address: string): void {
    const n = (this.#held.get(address) ?? 0) - 1;
    if (n > 0) this.#held.set(address, n);
    else this.#held.delete(address);
  }
}
