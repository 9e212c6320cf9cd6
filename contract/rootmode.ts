// How the node init gets its new root: one small interface, two implementations — network mode
// (overlay/nfsroot.ts: the image over NFS read-only under a RAM overlay) and hybrid mode
// (hybrid/mod.ts: a verified copy of the image on a local ext4 partition). The init
// (overlay/init.ts) tries them in order; neither mode imports the other or the init.
import type { BootParams } from "./cmdline.ts";
import type { StageReport } from "./report.ts";

/** Where things are mounted on the node, before the switch (the tests use other paths). */
export interface Layout {
  /** The initramfs root: freed before the switch. */
  root: string;
  /** Where the new root (the future "/") is mounted. */
  newRoot: string;
  /** The read-only image (NFS); under /run so it moves along and stays visible after the switch. */
  lower: string;
  /** The tmpfs holding the overlay's upper and work dirs (network mode). */
  rw: string;
  /** The overlay's upper dir, read-only, whatever the mode: where `node save` reads the node's
   *  changes after the switch (under /run, so it moves along). */
  upper: string;
}

export const defaultLayout: Layout = {
  root: "/",
  newRoot: "/newroot",
  lower: "/run/netroot/lower",
  rw: "/run/netroot/rw",
  upper: "/run/netroot/upper",
};

/**
 * Runs one boot stage. With `describe`, prints `<stage>: <describe(result)> (<ms>)` and reports it
 * to the server; without, the stage is silent. Any error becomes the fatal failure of `stage`,
 * telling a human to check `hint`.
 */
export type RunStage = <T>(
  stage: string,
  hint: string,
  fn: () => T | Promise<T>,
  describe?: (result: T) => string,
) => Promise<T>;

/** What the init hands to a root mode. */
export interface RootEnv {
  params: BootParams;
  layout: Layout;
  /** One console line. */
  log(line: string): void;
  report(r: StageReport): void;
  stage: RunStage;
  /** A text from the server, by the init's HTTP client (overlay/http.ts): an answer other than 2xx
   *  fails with `HTTP <status>`, any other failure names the step that failed. */
  getText(url: string, signal: AbortSignal, maxBytes: number): Promise<string>;
  /** Mounts the image read-only at `target`, retrying within netroot.timeout (NFS in production). */
  mountImage(target: string): Promise<{ describe: string; attempts: number }>;
}

export interface RootMode {
  /** As netroot.mode names it: `netroot.mode=network` leaves out every other mode. */
  name: string;
  /**
   * Mounts the complete new root at `env.layout.newRoot` and returns true, or returns false when
   * this mode does not apply to this node (the init goes on with the next mode). Throws only for a
   * failure the boot cannot go on from.
   */
  mountRoot(env: RootEnv): Promise<boolean>;
}
