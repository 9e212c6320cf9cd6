// The tiny test OS image (src/lab/tinyimage.ts: its /sbin/init's console markers are described
// there), with busybox-static from the checkout's .work/ cache.
import { buildTinyImage, type TinyImage } from "../../src/lab/tinyimage.ts";
import type { DebianKernel } from "./kernel.ts";
import { workCacheDir } from "./kernel.ts";

export { bootModules } from "../../src/lab/tinyimage.ts";
export type TestImage = TinyImage;

/** Builds the test image tree in `dir` (created; must not exist or be empty). */
export function buildTestImage(
  dir: string,
  opts: { kernel: DebianKernel; release?: string; initrd?: boolean; initrdInit?: string },
): Promise<TestImage> {
  return buildTinyImage(dir, { ...opts, cacheDir: workCacheDir });
}
