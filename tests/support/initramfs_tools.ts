// Debian's own initrd for an image (initramfs-tools, as the image's kernel package would build it):
// the peer of netroot's initramfs in bench/boottime_bench.ts. Cached in the checkout's .work/.
import { join } from "node:path";
import { type DebianKernel, workCacheDir } from "./kernel.ts";

const dec = new TextDecoder();
/** Runs a command; its stdout, or an error with the tail of its output (unless `quiet`). */
export async function run(
  cmd: string,
  args: string[],
  opts: { quiet?: boolean } = {},
): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success && !opts.quiet) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (rc ${out.code}): ${
        (dec.decode(out.stderr) + dec.decode(out.stdout)).trim().split("\n").slice(-15).join("\n")
      }`,
    );
  }
  return dec.decode(out.stdout);
}
const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

/** Debian's initrd for `kernel`, made in the image: an overlay over the image tree (the cached tree
 *  is never written), initramfs-tools installed there by apt (as on an installed system, with its
 *  recommends), then `mkinitramfs` for the kernel version with initramfs-tools' defaults. */
export async function initramfsToolsInitrd(kernel: DebianKernel, image: string): Promise<string> {
  const dir = join(workCacheDir, "boottime");
  const out = join(dir, `initrd.img-${kernel.kv}-initramfs-tools`);
  if (await exists(out)) return out;
  await Deno.mkdir(dir, { recursive: true });
  const work = await Deno.makeTempDir({ dir, prefix: ".tmp-itools-" });
  const merged = join(work, "root");
  const mounted: string[] = [];
  try {
    for (const d of ["upper", "work", "root"]) await Deno.mkdir(join(work, d));
    await run("mount", [
      "-t",
      "overlay",
      "overlay",
      "-o",
      `lowerdir=${image},upperdir=${work}/upper,workdir=${work}/work`,
      merged,
    ]);
    mounted.push(merged);
    for (const [fs, at] of [["proc", "proc"], ["sysfs", "sys"]]) {
      await run("mount", ["-t", fs, fs, join(merged, at)]);
      mounted.push(join(merged, at));
    }
    await run("mount", ["--rbind", "/dev", join(merged, "dev")]);
    mounted.push(join(merged, "dev"));
    // An installed kernel package has its config in /boot (mkinitramfs checks the compressors).
    await Deno.copyFile(
      join(kernel.root, "boot", `config-${kernel.kv}`),
      join(merged, "boot", `config-${kernel.kv}`),
    );
    await Deno.copyFile("/etc/resolv.conf", join(merged, "etc/resolv.conf")).catch(() => {});
    const env = ["env", "DEBIAN_FRONTEND=noninteractive", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"];
    await run("chroot", [merged, ...env, "apt-get", "update", "-q"]);
    await run("chroot", [merged, ...env, "apt-get", "install", "-y", "-q", "initramfs-tools"]);
    await run("chroot", [merged, ...env, "mkinitramfs", "-o", "/tmp/initrd.img", kernel.kv]);
    await Deno.copyFile(join(merged, "tmp/initrd.img"), `${out}.tmp`);
    await Deno.rename(`${out}.tmp`, out);
  } finally {
    for (const m of mounted.reverse()) await run("umount", ["-l", m], { quiet: true });
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  return out;
}
