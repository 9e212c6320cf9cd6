// Which file a TFTP filename names, and why not. Two roots: the iPXE binaries (fixed names in the
// iPXE dir) and, for a known node, `/boot` of the node's current image. Image symlinks are resolved
// as if the image root were `/` (Debian's /vmlinuz -> boot/vmlinuz-…, or absolute links), and a
// file that ends up outside the image's /boot is refused.
import { resolveInRoot } from "../../contract/rootpath.ts";
import { lstat, realpath } from "node:fs/promises";
import { join } from "node:path";
import { ErrorCode } from "./packet.ts";
import type { PiBootFile } from "../booter.ts";

export type Resolution =
  | { file: string }
  | { data: Uint8Array }
  | { error: number; message: string };

/** The iPXE builds a PXE ROM or UEFI firmware may be told to fetch. */
export const IPXE_NAMES = new Set([
  "undionly.kpxe",
  "undionly.kkpxe",
  "ipxe.pxe",
  "ipxe.efi",
  "snponly.efi",
  "snp.efi",
  "ipxe-arm64.efi",
]);

const refuse = (message: string): Resolution => ({ error: ErrorCode.accessViolation, message });
const notFound = (message = "file not found"): Resolution => ({
  error: ErrorCode.fileNotFound,
  message,
});

/**
 * Normalizes a requested filename into path components relative to a served root, or says why it
 * is refused. Leading slashes are dropped (PXE ROMs often send "/pxelinux.0"); `.` and empty
 * components vanish; `..`, backslashes and anything but printable ASCII are refused.
 */
export function cleanFilename(name: string): { parts: string[] } | { refused: string } {
  if (name.length === 0) return { refused: "empty filename" };
  if (name.length > 1024) return { refused: "filename longer than 1024 characters" };
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) return { refused: "filename is not printable ASCII" };
  }
  if (name.includes("\\")) return { refused: "backslash in filename" };
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) return { refused: "'..' in filename" };
  if (parts.length === 0) return { refused: "filename names a directory" };
  return { parts };
}

/** `parts` inside `root` as chroot would see them (contract/rootpath.ts); a `..` climbing above the
 *  root is refused, and only an existing regular file is served. */
async function servedFileInRoot(root: string, parts: string[]): Promise<Resolution> {
  let r;
  try {
    r = resolveInRoot(root, parts.join("/"));
  } catch {
    return refuse("too many symlinks");
  }
  if (r.escaped) return refuse("symlink escapes the served root");
  if (r.missing) return notFound();
  try {
    if (!(await lstat(r.host)).isFile()) return notFound("not a regular file");
  } catch {
    return notFound();
  }
  return { file: r.host };
}

export interface NodeBootRoot {
  /** Node's deploy link (nodes/<mac>/fs), pointing at its image rootfs. */
  fs: string;
}

/** An iPXE binary by exact name; symlinks in the iPXE dir are the operator's (Debian links
 *  ipxe.efi to /boot/ipxe.efi), so they are followed wherever they point. A name missing there
 *  is looked for in `fallbackDir` (the release bundle's loaders: the aarch64 one that a system
 *  package without it lacks). */
export async function resolveIpxe(
  ipxeDir: string,
  parts: string[],
  fallbackDir?: string,
): Promise<Resolution | null> {
  if (parts.length !== 1 || !IPXE_NAMES.has(parts[0])) return null;
  const file = await ipxeFile(ipxeDir, parts[0], fallbackDir);
  return file ? { file } : notFound(`${parts[0]} is not installed in ${ipxeDir}`);
}

/** The host path of iPXE binary `name`: in `ipxeDir`, else in `fallbackDir`; undefined if in
 *  neither (TFTP and HTTP boot share this). */
export async function ipxeFile(
  ipxeDir: string,
  name: string,
  fallbackDir?: string,
): Promise<string | undefined> {
  for (const dir of fallbackDir ? [ipxeDir, fallbackDir] : [ipxeDir]) {
    try {
      const file = await realpath(join(dir, name));
      if ((await lstat(file)).isFile()) return file;
    } catch { /* next */ }
  }
  return undefined;
}

/** `boot/X` or `X` -> the image's /boot/X (or a root-level link such as /vmlinuz into /boot). */
export async function resolveNodeBoot(fsLink: string, parts: string[]): Promise<Resolution> {
  let root: string;
  try {
    root = await realpath(fsLink);
  } catch {
    return notFound("node has no deployed image");
  }
  // A Pi image keeps its firmware in /boot/firmware (Debian, Raspberry Pi OS since bookworm).
  const candidates = parts[0] === "boot"
    ? [parts]
    : [["boot", "firmware", ...parts], ["boot", ...parts], parts];
  let last: Resolution = notFound();
  for (const c of candidates) {
    const r = await servedFileInRoot(root, c);
    if ("file" in r) {
      const inBoot = join(root, "boot") + "/";
      return r.file.startsWith(inBoot) ? r : refuse("file lies outside the image's /boot");
    }
    if ("error" in r && r.error === ErrorCode.accessViolation) return r;
    last = r;
  }
  return last;
}

/** The files a Raspberry Pi reads that netroot renders per node instead of taking them from the
 *  image: the firmware's config.txt and cmdline.txt, and the kernel and initramfs config.txt names
 *  (src/boot/booter.ts piFile). */
export const PI_RENDERED: readonly string[] = [
  "config.txt",
  "cmdline.txt",
  "netroot-kernel",
  "netroot-initramfs",
] satisfies PiBootFile[];

/** A Pi 4/5 EEPROM (TFTP_PREFIX=0, the default) and the 3B+ bootcode.bin ask for `<serial>/file`,
 *  the serial as 8 hex digits. The serial is a name only: the node is the one behind the client
 *  address, so a made-up or another board's serial still gets this node's files. */
export function dropSerialDir(parts: string[]): string[] {
  return parts.length > 1 && /^[0-9a-f]{8}$/i.test(parts[0]) ? parts.slice(1) : parts;
}

export interface PolicyInput {
  ipxeDir: string;
  /** Where an iPXE binary missing from ipxeDir is looked for (the release bundle's). */
  ipxeFallbackDir?: string;
  /** The deploy link of the node behind the client address, if the client is a known node. */
  nodeFs?: string;
  /** The root the node's fetch of `file` is read from (a Pi's boot's version), instead of
   *  `nodeFs`. */
  nodeRoot?(file: string): string;
  /** The node's rendered Pi boot files (config.txt, cmdline.txt, kernel, initramfs). */
  piFile?(name: PiBootFile): Promise<Resolution>;
}

/** The whole policy: iPXE binaries for everyone, then for known nodes the rendered Pi files and
 *  the node's image /boot (a Pi's serial directory dropped). */
export async function resolveRequest(name: string, p: PolicyInput): Promise<Resolution> {
  const clean = cleanFilename(name);
  if ("refused" in clean) return refuse(clean.refused);
  const ipxe = await resolveIpxe(p.ipxeDir, clean.parts, p.ipxeFallbackDir);
  if (ipxe) return ipxe;
  if (!p.nodeFs) return notFound("unknown client: only iPXE binaries are served");
  const parts = dropSerialDir(clean.parts);
  if (p.piFile && parts.length === 1 && PI_RENDERED.includes(parts[0])) {
    return p.piFile(parts[0] as PiBootFile);
  }
  return resolveNodeBoot(p.nodeRoot?.(parts.join("/")) ?? p.nodeFs, parts);
}
