// What an aarch64 node needs on this x86-64 test host, cached in the checkout's .work/ (gitignored):
//   kernel-arm64/<kv>/     Debian's arm64 kernel (src/lab/kernel.ts, linux-image-arm64:arm64)
//   busybox-arm64/         busybox-static:arm64, glibc-arm64/ libc6 + libgcc-s1 (src/lab/tinyimage.ts)
//   ipxe-arm64/            ipxe-arm64.efi from Debian's ipxe package (src/release/ipxe.ts)
//   deno-runtime/          the arm64 Deno runtime from npm (src/initramfs/runtime.ts; shared with
//                          tests/initramfs_aarch64_test.ts)
// The arm64 packages need `dpkg --add-architecture arm64` and `apt-get update` (test.sh does both).
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { type DebianKernel, debianKernel as cachedKernel } from "../../src/lab/kernel.ts";
import { ARM64_IPXE, packArm64Ipxe, SYSTEM_IPXE_DIR } from "../../src/release/ipxe.ts";
import { oncePerKey } from "../../src/once.ts";
import { EM_AARCH64 } from "../../src/initramfs/elf.ts";
import { nodeRuntime, runtimePath } from "../../src/initramfs/runtime.ts";
import { workCacheDir } from "./kernel.ts";

/** Debian's arm64 kernel, downloaded and extracted on first use. */
export function arm64Kernel(): Promise<DebianKernel> {
  return cachedKernel(workCacheDir, "arm64");
}

const ipxeIn = oncePerKey(async (dir: string) => {
  if (!existsSync(join(dir, ARM64_IPXE))) await packArm64Ipxe(dir);
  return join(dir, ARM64_IPXE);
});

/** The aarch64 iPXE (Debian's ipxe-arm64.efi), fetched once. */
export function arm64Ipxe(): Promise<string> {
  return ipxeIn(join(workCacheDir, "ipxe-arm64"));
}

/** A loader directory for `netroot serve --ipxe-dir`: the system's iPXE builds (Debian's `ipxe`)
 *  and the aarch64 one, as links in `dir` (created). */
export async function loaderDirWithArm64(dir: string): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  for await (const e of Deno.readDir(SYSTEM_IPXE_DIR)) {
    await Deno.symlink(join(SYSTEM_IPXE_DIR, e.name), join(dir, e.name));
  }
  if (!existsSync(join(dir, ARM64_IPXE))) {
    await Deno.symlink(await arm64Ipxe(), join(dir, ARM64_IPXE));
  }
  return dir;
}

/** Puts the arm64 Deno runtime (fetched once into .work/ from npm) where a server with data dir
 *  `data` looks for it, as an air-gapped server gets it by hand: a lab server runs in a network
 *  namespace that reaches no registry. */
export async function seedArm64Runtime(data: string): Promise<void> {
  const deno = await nodeRuntime(EM_AARCH64, join(workCacheDir, "deno-runtime"));
  const target = runtimePath(join(data, "initramfs", "program", "runtime"), EM_AARCH64);
  await Deno.mkdir(dirname(target), { recursive: true });
  await Deno.copyFile(deno, target);
  await Deno.chmod(target, 0o755);
}
