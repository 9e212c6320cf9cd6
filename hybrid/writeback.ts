// The hybrid copy's writeback: the kernel starts writing dirty pages in the background only past
// vm.dirty_background_ratio (10 % of memory), so on a node with a few GiB a 200 MB copy sits in
// the page cache until the copy's final syncfs, which then waits for all of it: the copy's reads
// and hashes, then the disk's work, one after the other. Started at 16 MiB instead, the disk
// writes while the copy goes on (bench/hybrid_bench.ts, docs/benchmarks.md "Hybrid copy").
// The init owns the node until it hands over; the image's own system then starts with the
// kernel's setting as it was.

/** Dirty data past which background writeback starts during the copy. */
export const EARLY_WRITEBACK_BYTES = 16 << 20;

/** Runs `fn` with early background writeback, then puts the setting back (also when `fn` throws).
 *  Without the right to change it (not root, no /proc) `fn` runs with the kernel's setting. A
 *  process killed inside `fn` leaves the setting changed: only the node's init, which owns its
 *  machine, calls this (hybrid/mod.ts), and the bench, which measures that. */
export async function withEarlyWriteback<T>(
  fn: () => Promise<T>,
  opts: { vm?: string; log?: (line: string) => void } = {},
): Promise<T> {
  const vm = opts.vm ?? "/proc/sys/vm";
  const bytesFile = `${vm}/dirty_background_bytes`, ratioFile = `${vm}/dirty_background_ratio`;
  let restore: (() => void) | undefined;
  try {
    const bytes = Deno.readTextFileSync(bytesFile).trim();
    const ratio = Deno.readTextFileSync(ratioFile).trim();
    // The kernel keeps one of the two: writing one zeroes the other, so the one in force goes back.
    Deno.writeTextFileSync(bytesFile, `${EARLY_WRITEBACK_BYTES}\n`);
    restore = bytes !== "0"
      ? () => Deno.writeTextFileSync(bytesFile, `${bytes}\n`)
      : () => Deno.writeTextFileSync(ratioFile, `${ratio}\n`);
    const was = bytes !== "0" ? `${bytes} bytes` : `${ratio} % of memory`;
    opts.log?.(
      `background writeback from ${EARLY_WRITEBACK_BYTES >> 20} MiB of dirty data (was ${was})`,
    );
  } catch { /* the kernel's own setting */ }
  try {
    return await fn();
  } finally {
    try {
      restore?.();
    } catch (e) {
      opts.log?.(`could not put the kernel's writeback setting back: ${(e as Error).message}`);
    }
  }
}
