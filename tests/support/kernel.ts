// The Debian kernel the tests boot and build initramfs images against, extracted once into
// `<checkout>/.work/kernel/<kv>/` (gitignored, reused across runs):
//   boot/vmlinuz-<kv>      the kernel
//   lib/modules/<kv>/      its modules, with modules.dep from `depmod -b`
// Never installed on the host (e2e-recipe.md §2). Parallel test processes may race: each extracts
// into its own temp dir and renames it into place; the first rename wins and the directory only
// ever appears complete.
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export interface DebianKernel {
  kv: string;
  /** Tree holding boot/ and lib/modules/ (an image-like root for the initramfs builder). */
  root: string;
  vmlinuz: string;
}

export const kernelCacheDir = fileURLToPath(new URL("../../.work/kernel/", import.meta.url));

let memo: Promise<DebianKernel> | undefined;

/** The cached kernel, downloading and extracting it on first use. */
export function debianKernel(): Promise<DebianKernel> {
  memo ??= fetchKernel().catch((e) => {
    memo = undefined;
    throw e;
  });
  return memo;
}

function complete(kv: string): DebianKernel | undefined {
  const root = join(kernelCacheDir, kv);
  const vmlinuz = join(root, "boot", `vmlinuz-${kv}`);
  try {
    Deno.statSync(vmlinuz);
    Deno.statSync(join(root, "lib", "modules", kv, "modules.dep"));
    return { kv, root, vmlinuz };
  } catch {
    return undefined;
  }
}

async function sh(cmd: string, args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (rc ${out.code}): ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

async function fetchKernel(): Promise<DebianKernel> {
  await Deno.mkdir(kernelCacheDir, { recursive: true });
  // A kernel already here is used as is (offline runs work once it has been fetched).
  const present = [...Deno.readDirSync(kernelCacheDir)]
    .filter((e) => e.isDirectory && /^\d/.test(e.name))
    .map((e) => e.name)
    .sort();
  for (const kv of present.reverse()) {
    const k = complete(kv);
    if (k) return k;
  }
  const deps = await sh("apt-cache", ["depends", "linux-image-amd64"]);
  const pkg = /Depends: (linux-image-\d\S*)/.exec(deps)?.[1];
  if (!pkg) throw new Error(`no linux-image-<version> in apt-cache depends linux-image-amd64`);
  const kv = pkg.slice("linux-image-".length);
  const work = await Deno.makeTempDir({ dir: kernelCacheDir, prefix: ".tmp-" });
  try {
    await sh("apt-get", ["download", pkg], work);
    const deb = [...Deno.readDirSync(work)].find((e) => e.name.endsWith(".deb"));
    if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb`);
    const root = join(work, "root");
    await sh("dpkg-deb", ["-x", join(work, deb.name), root]);
    // Bookworm ships /lib/modules; a merged-/usr package would ship usr/lib/modules.
    try {
      Deno.statSync(join(root, "lib", "modules", kv));
    } catch {
      await Deno.mkdir(join(root, "lib"), { recursive: true });
      await Deno.rename(join(root, "usr", "lib", "modules"), join(root, "lib", "modules"));
    }
    await sh("depmod", ["-b", root, kv]);
    try {
      await Deno.rename(root, join(kernelCacheDir, kv));
    } catch (e) {
      // Another process won the race; its copy is complete by construction.
      if (!complete(kv)) throw e;
    }
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  const k = complete(kv);
  if (!k) throw new Error(`kernel ${kv} extracted but incomplete in ${kernelCacheDir}`);
  return k;
}
