// The Debian kernel the lab boots and builds initramfs images against, extracted once into
// `<cache>/kernel/<kv>/` (cache.ts; reused across runs):
//   boot/vmlinuz-<kv>      the kernel
//   lib/modules/<kv>/      its modules, with modules.dep from `depmod -b`
// Never installed on the host (e2e-recipe.md §2). Parallel processes may race: each extracts
// into its own temp dir and renames it into place; the first rename wins and the directory only
// ever appears complete.
import { oncePerKey } from "../once.ts";
import { join } from "node:path";
import { runText } from "./run.ts";

export interface DebianKernel {
  kv: string;
  /** Tree holding boot/ and lib/modules/ (an image-like root for the initramfs builder). */
  root: string;
  vmlinuz: string;
}

const kernelIn = oncePerKey(fetchKernel);

/** Debian architectures the lab has kernels for: the server's (amd64), and arm64 for aarch64
 *  nodes (`kernel-arm64/`; `dpkg --add-architecture arm64` and `apt-get update` first). */
export type KernelArch = "amd64" | "arm64";

/** The kernel cached under `cacheDir`, downloaded and extracted on first use. */
export function debianKernel(cacheDir: string, arch: KernelArch = "amd64"): Promise<DebianKernel> {
  return kernelIn(join(cacheDir, arch === "amd64" ? "kernel" : `kernel-${arch}`));
}

function complete(kernelDir: string, kv: string): DebianKernel | undefined {
  const root = join(kernelDir, kv);
  const vmlinuz = join(root, "boot", `vmlinuz-${kv}`);
  try {
    Deno.statSync(vmlinuz);
    Deno.statSync(join(root, "lib", "modules", kv, "modules.dep"));
    return { kv, root, vmlinuz };
  } catch {
    return undefined;
  }
}

async function fetchKernel(kernelDir: string): Promise<DebianKernel> {
  const arch: KernelArch = kernelDir.endsWith("-arm64") ? "arm64" : "amd64";
  await Deno.mkdir(kernelDir, { recursive: true });
  // A kernel already here is used as is (offline runs work once it has been fetched).
  const present = [...Deno.readDirSync(kernelDir)]
    .filter((e) => e.isDirectory && /^\d/.test(e.name))
    .map((e) => e.name)
    .sort();
  for (const kv of present.reverse()) {
    const k = complete(kernelDir, kv);
    if (k) return k;
  }
  const meta = `linux-image-${arch}:${arch}`;
  const deps = await runText("apt-cache", ["depends", meta]);
  const pkg = /Depends: (linux-image-\d[^\s:]*)/.exec(deps)?.[1];
  if (!pkg) throw new Error(`no linux-image-<version> in apt-cache depends ${meta}`);
  const kv = pkg.slice("linux-image-".length);
  const work = await Deno.makeTempDir({ dir: kernelDir, prefix: ".tmp-" });
  try {
    await runText("apt-get", ["download", `${pkg}:${arch}`], work);
    const deb = [...Deno.readDirSync(work)].find((e) => e.name.endsWith(".deb"));
    if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb`);
    const root = join(work, "root");
    await runText("dpkg-deb", ["-x", join(work, deb.name), root]);
    // Bookworm ships /lib/modules; a merged-/usr package would ship usr/lib/modules.
    try {
      Deno.statSync(join(root, "lib", "modules", kv));
    } catch {
      await Deno.mkdir(join(root, "lib"), { recursive: true });
      await Deno.rename(join(root, "usr", "lib", "modules"), join(root, "lib", "modules"));
    }
    await runText("depmod", ["-b", root, kv]);
    try {
      await Deno.rename(root, join(kernelDir, kv));
    } catch (e) {
      // Another process won the race; its copy is complete by construction.
      if (!complete(kernelDir, kv)) throw e;
    }
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  const k = complete(kernelDir, kv);
  if (!k) throw new Error(`kernel ${kv} extracted but incomplete in ${kernelDir}`);
  return k;
}
