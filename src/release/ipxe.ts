// The boot loaders netroot serves (iPXE for PC BIOS and x86-64 UEFI) travel with the release
// bundle: `deno task bundle` copies them from Debian's `ipxe` package into dist/ipxe/ beside
// dist/netroot.js, with the package's licence text and a pointer to its source (packIpxe). A server
// whose system has no iPXE (no Debian package, another distribution's paths, an air-gapped lab)
// serves those when --ipxe-dir is not given (defaultIpxeDir).
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { REQUIRED_IPXE_FILES } from "../../netboot/dhcp4/classify.ts";
import { checkoutRoot } from "../datadir.ts";

/** Where Debian's package `ipxe` puts the builds. */
export const SYSTEM_IPXE_DIR = "/usr/lib/ipxe";

/** The files a bundle carries: BIOS (undionly.kpxe) and x86-64 UEFI (ipxe.efi with its own
 *  drivers, snponly.efi through the firmware's network driver). */
export const BUNDLED_IPXE_FILES = ["undionly.kpxe", "ipxe.efi", "snponly.efi"];

/** The bundle's loader directory: `ipxe/` beside the program file (dist/netroot.js, or the
 *  compiled dist/netroot); from a checkout, dist/ipxe once `deno task bundle` has run. */
export function bundledIpxeDir(moduleUrl = import.meta.url): string | undefined {
  if (moduleUrl.includes("/deno-compile-")) return join(dirname(Deno.execPath()), "ipxe");
  if (moduleUrl.startsWith("file:") && moduleUrl.endsWith(".js")) {
    return join(dirname(fileURLToPath(moduleUrl)), "ipxe");
  }
  const root = checkoutRoot();
  return root ? join(root, "dist", "ipxe") : undefined;
}

const hasLoaders = (dir: string) => REQUIRED_IPXE_FILES.every((f) => existsSync(join(dir, f)));

/** The iPXE directory when --ipxe-dir (config `ipxeDir`) is not given: the system's when it has
 *  the loaders, else the bundle's when that has them, else the system's (start-up then warns). */
export function defaultIpxeDir(
  system = SYSTEM_IPXE_DIR,
  bundled: string | undefined = bundledIpxeDir(),
): string {
  if (hasLoaders(system) || !bundled || !hasLoaders(bundled)) return system;
  return bundled;
}

async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return text;
}

/** Where the package's files are: the installed package (`dpkg -s ipxe`), else the .deb
 *  `apt-get download ipxe` fetches, unpacked into `work`. Returns the tree root and version. */
async function debianIpxe(work: string): Promise<{ root: string; version: string }> {
  try {
    const status = await run("dpkg-query", ["-W", "-f=${Status} ${Version}", "ipxe"]);
    const m = /^install ok installed (\S+)$/.exec(status.trim());
    if (m) return { root: "/", version: m[1] };
  } catch { /* not installed, or no dpkg: download it */ }
  await run("apt-get", ["download", "ipxe"], work);
  const deb = [...Deno.readDirSync(work)].find((e) => e.name.endsWith(".deb"));
  if (!deb) throw new Error("apt-get download ipxe left no .deb");
  const path = join(work, deb.name);
  const version = (await run("dpkg-deb", ["-f", path, "Version"])).trim();
  await run("dpkg-deb", ["-x", path, join(work, "root")]);
  return { root: join(work, "root"), version };
}

/** A path of the package tree, its symlinks followed inside the tree (Debian links
 *  /usr/lib/ipxe/ipxe.efi to /boot/ipxe.efi). */
function inTree(root: string, path: string): string {
  let p = path;
  for (let i = 0; i < 8; i++) {
    const host = join(root, p);
    let target: string;
    try {
      target = Deno.readLinkSync(host);
    } catch {
      return host;
    }
    p = target.startsWith("/") ? target : join(dirname(p), target);
  }
  throw new Error(`${path}: too many symlinks`);
}

/** Copies the iPXE builds of Debian's `ipxe` package into `outDir` with its copyright file
 *  (COPYING) and SOURCE.txt saying which package version they are and where its source is. */
export async function packIpxe(outDir: string): Promise<{ version: string; files: string[] }> {
  const work = await Deno.makeTempDir({ prefix: "netroot-ipxe-" });
  try {
    const { root, version } = await debianIpxe(work);
    await Deno.mkdir(outDir, { recursive: true });
    for (const f of BUNDLED_IPXE_FILES) {
      await Deno.copyFile(inTree(root, `${SYSTEM_IPXE_DIR}/${f}`), join(outDir, f));
    }
    await Deno.copyFile(inTree(root, "/usr/share/doc/ipxe/copyright"), join(outDir, "COPYING"));
    await Deno.writeTextFile(
      join(outDir, "SOURCE.txt"),
      [
        `These boot loaders are the Debian package ipxe ${version}, unchanged:`,
        ...BUNDLED_IPXE_FILES.map((f) => `  ${f}  (${SYSTEM_IPXE_DIR}/${f})`),
        "Licence: GPL-2.0 with the UBDL exception (COPYING: Debian's copyright file).",
        `Source: the Debian source package ipxe ${version},`,
        `  apt-get source ipxe=${version}`,
        `  https://sources.debian.org/src/ipxe/${version}/`,
        "  https://snapshot.debian.org/package/ipxe/",
        "Upstream: https://ipxe.org, https://github.com/ipxe/ipxe",
        "",
      ].join("\n"),
    );
    return { version, files: BUNDLED_IPXE_FILES };
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}
