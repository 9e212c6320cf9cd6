// Turns of the event loop for long synchronous work on the server's only thread (a tree walked,
// hashed or removed, its size an image author's or a node's): DHCP, TFTP, HTTP and the API go on
// between them.

/** Gives the event loop a turn once `everyMs` have passed since the last one. */
export class Turns {
  #last = performance.now();
  constructor(private readonly everyMs = 50) {}

  /** Whether a turn is due (a caller reports progress before taking it). */
  get due(): boolean {
    return performance.now() - this.#last > this.everyMs;
  }

  /** A turn of the event loop, if one is due. */
  async take(): Promise<void> {
    if (!this.due) return;
    await new Promise((r) => setTimeout(r, 0));
    this.#last = performance.now();
  }
}
