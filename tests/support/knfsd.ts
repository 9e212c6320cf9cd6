// The user-space half of kernel nfsd (exportfs, rpc.mountd, rpc.nfsd from Debian's
// nfs-kernel-server) for a qemu guest that serves NFS with the Debian test kernel's nfsd. Never
// installed on the host (its postinst would start services): `apt-get download` + `dpkg-deb -x`
// into `<checkout>/.work/nfs-kernel-server/<version>/` once, appearing by rename when complete.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const cacheDir = fileURLToPath(new URL("../../.work/nfs-kernel-server/", import.meta.url));

async function sh(cmd: string, args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** The three programs (absolute paths in the cache) and the shared libraries they need on this
 *  host (ldd; the ELF interpreter first). */
export async function knfsdTools(): Promise<{ programs: string[]; libs: string[] }> {
  await Deno.mkdir(cacheDir, { recursive: true });
  const have = [...Deno.readDirSync(cacheDir)].find((e) => e.isDirectory && /^\d/.test(e.name));
  let dir = have && join(cacheDir, have.name);
  if (!dir) {
    const work = await Deno.makeTempDir({ dir: cacheDir, prefix: ".tmp-" });
    try {
      await sh("apt-get", ["download", "nfs-kernel-server"], work);
      const deb = [...Deno.readDirSync(work)].find((e) => e.name.endsWith(".deb"))!.name;
      const version = /_([^_]+)_[^_]+\.deb$/.exec(deb)![1].replace(/^\d+%3a/, "");
      await sh("dpkg-deb", ["-x", join(work, deb), join(work, "root")]);
      dir = join(cacheDir, version);
      await Deno.rename(join(work, "root"), dir).catch((e) => {
        if (!Deno.statSync(dir!).isDirectory) throw e; // another process won the race
      });
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  }
  const programs = ["exportfs", "rpc.mountd", "rpc.nfsd"].map((p) => join(dir!, "usr/sbin", p));
  const libs = new Set<string>(["/lib64/ld-linux-x86-64.so.2"]);
  for (const p of programs) {
    for (const m of (await sh("ldd", [p])).matchAll(/=> (\/\S+)/g)) libs.add(m[1]);
  }
  return { programs, libs: [...libs] };
}

/** A command prefix that runs a command (exportfs from `exportfsDir`) in a private mount namespace
 *  whose /etc/exports.d and /var/lib/nfs are `dir`'s (`exports.d/`, `varlib/`), and /etc/exports
 *  empty: the host's files are never touched (root). */
export function exportfsInNamespace(dir: string, exportfsDir: string): string[] {
  for (const d of ["up", "work", "exports.d", "varlib"]) {
    mkdirSync(join(dir, d), { recursive: true });
  }
  const script = [
    `mount --bind ${dir}/varlib /var/lib/nfs`,
    `mount -t overlay ovl -o lowerdir=/etc,upperdir=${dir}/up,workdir=${dir}/work /etc`,
    "mkdir -p /etc/exports.d",
    `mount --bind ${dir}/exports.d /etc/exports.d`,
    ": > /etc/exports", // the host's own, if any, is not this test's
    `PATH=${exportfsDir}:$PATH exec "$@"`,
  ].join(" && ");
  return ["unshare", "--mount", "--propagation", "private", "sh", "-euc", script, "sh"];
}
