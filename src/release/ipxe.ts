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

/** The aarch64 UEFI loader, under Debian's name: the `ipxe` package carries it from trixie on
 *  (bookworm's has the x86 builds only). */
export const ARM64_IPXE = "ipxe-arm64.efi";
/** The Debian release the aarch64 loader is taken from when the system's package lacks it. */
export const ARM64_IPXE_SUITE = "trixie";

/** The Debian archive this system's apt reads its own release from (`apt-get indextargets`):
 *  the mirror a package of another release is fetched from, so that no host is named here. */
async function debianArchive(): Promise<string> {
  const codename = /^VERSION_CODENAME=(\S+)$/m.exec(
    await Deno.readTextFile("/etc/os-release").catch(() => ""),
  )?.[1];
  const targets = await run("apt-get", [
    "indextargets",
    "--format",
    "$(REPO_URI) $(RELEASE) $(COMPONENT)",
    "Identifier: Packages",
  ]);
  const rows = targets.split("\n").map((l) => l.trim().split(" ")).filter((r) => r.length === 3);
  const uri = rows.find((r) => r[1] === codename && r[2] === "main")?.[0] ??
    rows.find((r) => !r[1].includes("-") && r[2] === "main")?.[0];
  if (!uri) throw new Error("no Debian archive in apt's sources (apt-get indextargets)");
  return uri;
}

/** `apt-get download PKG` from Debian release `suite` with a private source list and package
 *  lists under `work` (the system's apt configuration is left alone). Returns the .deb. */
export async function downloadFromSuite(pkg: string, suite: string, work: string) {
  const archive = await debianArchive();
  const arch = (await run("dpkg", ["--print-architecture"])).trim();
  await Deno.mkdir(join(work, "lists", "partial"), { recursive: true });
  await Deno.mkdir(join(work, "cache", "archives", "partial"), { recursive: true });
  await Deno.mkdir(join(work, "parts"), { recursive: true });
  await Deno.mkdir(join(work, "debs"), { recursive: true });
  await Deno.writeTextFile(
    join(work, "sources.list"),
    `deb [arch=${arch}] ${archive} ${suite} main\n`,
  );
  const apt = [
    `-oDir::Etc::SourceList=${join(work, "sources.list")}`,
    `-oDir::Etc::SourceParts=${join(work, "parts")}`,
    `-oDir::State::Lists=${join(work, "lists")}`,
    `-oDir::Cache=${join(work, "cache")}`,
    "-q",
  ];
  await run("apt-get", [...apt, "update"]);
  await run("apt-get", [...apt, "download", pkg], join(work, "debs"));
  const deb = [...Deno.readDirSync(join(work, "debs"))].find((e) => e.name.endsWith(".deb"));
  if (!deb) throw new Error(`apt-get download ${pkg} (${suite}) left no .deb`);
  return join(work, "debs", deb.name);
}

/** The aarch64 iPXE into `outDir` (ARM64_IPXE, with COPYING-arm64 and its package version):
 *  from the system's `ipxe` when that has it, else from Debian ARM64_IPXE_SUITE's package. */
export async function packArm64Ipxe(outDir: string): Promise<{ version: string; suite?: string }> {
  const system = join(SYSTEM_IPXE_DIR, ARM64_IPXE);
  await Deno.mkdir(outDir, { recursive: true });
  if (existsSync(system)) {
    const version = (await run("dpkg-query", ["-W", "-f=${Version}", "ipxe"])).trim();
    await Deno.copyFile(await Deno.realPath(system), join(outDir, ARM64_IPXE));
    await Deno.copyFile("/usr/share/doc/ipxe/copyright", join(outDir, "COPYING-arm64"));
    return { version };
  }
  const work = await Deno.makeTempDir({ prefix: "netroot-ipxe-arm64-" });
  try {
    const deb = await downloadFromSuite("ipxe", ARM64_IPXE_SUITE, work);
    const version = (await run("dpkg-deb", ["-f", deb, "Version"])).trim();
    const root = join(work, "root");
    await run("dpkg-deb", ["-x", deb, root]);
    const tmp = join(outDir, `.${ARM64_IPXE}.tmp`);
    await Deno.copyFile(inTree(root, `${SYSTEM_IPXE_DIR}/${ARM64_IPXE}`), tmp);
    await Deno.copyFile(
      inTree(root, "/usr/share/doc/ipxe/copyright"),
      join(outDir, "COPYING-arm64"),
    );
    await Deno.rename(tmp, join(outDir, ARM64_IPXE)); // last: the loader appears complete
    return { version, suite: ARM64_IPXE_SUITE };
  } finally {
    await Deno.remove(work, { recursive: true });
  }
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
 *  (COPYING) and SOURCE.txt saying which package version they are and where its source is; and
 *  the aarch64 loader (packArm64Ipxe: from Debian trixie's package when the system's has none,
 *  with COPYING-arm64) unless `arm64` is false. */
export async function packIpxe(
  outDir: string,
  opts: { arm64?: boolean } = {},
): Promise<{ version: string; files: string[]; arm64?: { version: string; suite?: string } }> {
  const work = await Deno.makeTempDir({ prefix: "netroot-ipxe-" });
  try {
    const { root, version } = await debianIpxe(work);
    await Deno.mkdir(outDir, { recursive: true });
    for (const f of BUNDLED_IPXE_FILES) {
      await Deno.copyFile(inTree(root, `${SYSTEM_IPXE_DIR}/${f}`), join(outDir, f));
    }
    await Deno.copyFile(inTree(root, "/usr/share/doc/ipxe/copyright"), join(outDir, "COPYING"));
    const arm64 = opts.arm64 === false ? undefined : await packArm64Ipxe(outDir);
    const armVersion = arm64?.version;
    await Deno.writeTextFile(
      join(outDir, "SOURCE.txt"),
      [
        `These boot loaders are the Debian package ipxe ${version}, unchanged:`,
        ...BUNDLED_IPXE_FILES.map((f) => `  ${f}  (${SYSTEM_IPXE_DIR}/${f})`),
        ...(arm64
          ? [
            `and ${ARM64_IPXE} is the Debian package ipxe ${armVersion}${
              arm64.suite ? ` (Debian ${arm64.suite})` : ""
            }, unchanged:`,
            `  ${ARM64_IPXE}  (${SYSTEM_IPXE_DIR}/${ARM64_IPXE}; COPYING-arm64 its copyright file)`,
          ]
          : []),
        "Licence: GPL-2.0 with the UBDL exception (COPYING: Debian's copyright file).",
        `Source: the Debian source package ipxe ${version},`,
        `  apt-get source ipxe=${version}`,
        `  https://sources.debian.org/src/ipxe/${version}/`,
        ...(arm64 && armVersion !== version
          ? [
            `and ipxe ${armVersion}: apt-get source ipxe=${armVersion}`,
            `  https://sources.debian.org/src/ipxe/${armVersion}/`,
          ]
          : []),
        "  https://snapshot.debian.org/package/ipxe/",
        "Upstream: https://ipxe.org, https://github.com/ipxe/ipxe",
        "",
      ].join("\n"),
    );
    return {
      version,
      files: arm64 ? [...BUNDLED_IPXE_FILES, ARM64_IPXE] : BUNDLED_IPXE_FILES,
      arm64,
    };
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}
