// The Debian kernel the tests boot and build initramfs images against: the lab's kernel
// (src/lab/kernel.ts), cached in the checkout's `.work/` (gitignored, reused across runs and by
// CI's cache) rather than in the installed program's cache dir.
import { fileURLToPath } from "node:url";
import { type DebianKernel, debianKernel as cachedKernel } from "../../src/lab/kernel.ts";

export type { DebianKernel };

/** The checkout's download cache (kernel/, busybox/, minbase/). */
export const workCacheDir = fileURLToPath(new URL("../../.work/", import.meta.url));

/** The cached kernel, downloading and extracting it on first use. */
export function debianKernel(): Promise<DebianKernel> {
  return cachedKernel(workCacheDir);
}
