// Finds the kernel and initrd of an image from its manifest (pure: no file system), following the
// image's own symlinks (/vmlinuz -> boot/vmlinuz-6.1.0-13-amd64, /lib -> usr/lib).
import type { ManifestEntry } from "../../contract/manifest.ts";

export interface KernelInfo {
  kernel: string | null;
  initrd: string | null;
  kernelVersion: string | null;
  /** The modules directory of that kernel (netroot's initramfs takes its NFS/network drivers there). */
  modules: string | null;
  bootable: boolean;
  reason: string | null;
}

/** Resolves a path inside the image through its symlinks; undefined if it leads nowhere. */
export function resolveIn(
  byPath: Map<string, ManifestEntry>,
  path: string,
): ManifestEntry | undefined {
  let hops = 0;
  let parts = path.split("/").filter((p) => p);
  let cur: string[] = [];
  while (parts.length) {
    const name = parts.shift()!;
    if (name === ".") continue;
    if (name === "..") {
      cur.pop();
      continue;
    }
    const p = "/" + [...cur, name].join("/");
    const e = byPath.get(p);
    if (!e) return undefined;
    if (e.type === "symlink") {
      if (++hops > 40) return undefined;
      const t = e.target!;
      parts = [...t.split("/").filter((x) => x), ...parts];
      if (t.startsWith("/")) cur = [];
      continue;
    }
    if (e.type === "hardlink") {
      // A hardlink's content is its first entry's.
      const first = byPath.get(e.target!);
      if (!first) return undefined;
      if (parts.length === 0) return { ...first, path: p };
    }
    cur.push(name);
    if (parts.length === 0) return e;
    if (e.type !== "dir") return undefined;
  }
  return byPath.get("/");
}

/** Orders kernel version strings numerically where they are numbers ("6.10" > "6.9"). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/(\d+)/), pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    if (pa[i] === pb[i]) continue;
    const na = Number(pa[i]), nb = Number(pb[i]);
    if (i % 2 === 1 && !isNaN(na) && !isNaN(nb)) return na - nb;
    return pa[i] < pb[i] ? -1 : 1;
  }
  return pa.length - pb.length;
}

const isFile = (e: ManifestEntry | undefined) => e?.type === "file" || e?.type === "hardlink";

export function detectKernel(entries: Iterable<ManifestEntry>): KernelInfo {
  const byPath = new Map<string, ManifestEntry>();
  for (const e of entries) byPath.set(e.path, e);
  const modulesDir = (kv: string) => {
    for (const d of ["/lib/modules/", "/usr/lib/modules/"]) {
      const e = resolveIn(byPath, d + kv);
      if (e?.type === "dir") return e.path; // the real path (/lib may link to usr/lib)
    }
    return null;
  };
  const moduleVersions = () => {
    const out = new Set<string>();
    for (const d of ["/lib/modules", "/usr/lib/modules"]) {
      const dir = resolveIn(byPath, d);
      if (dir?.type !== "dir") continue;
      for (const e of byPath.values()) {
        const rest = e.path.startsWith(dir.path + "/") ? e.path.slice(dir.path.length + 1) : "";
        if (rest && !rest.includes("/") && e.type === "dir") out.add(rest);
      }
    }
    return [...out];
  };
  const notBootable = (reason: string, partial: Partial<KernelInfo> = {}): KernelInfo => ({
    kernel: null,
    initrd: null,
    kernelVersion: null,
    modules: null,
    ...partial,
    bootable: false,
    reason,
  });

  // 1. The distribution's own pointer: /vmlinuz or /boot/vmlinuz (Debian/Ubuntu symlinks).
  let kernel: string | null = null;
  let kv: string | null = null;
  for (const link of ["/vmlinuz", "/boot/vmlinuz"]) {
    const e = byPath.get(link);
    if (!e) continue;
    const target = resolveIn(byPath, link);
    if (!isFile(target)) {
      return notBootable(`${link} points to ${e.target ?? "?"}, which is not a file in the image`);
    }
    kernel = e.type === "symlink" ? realPath(byPath, link) : link;
    break;
  }
  // 2. Versioned kernels in /boot, newest first; 3. Fedora-style /lib/modules/<kv>/vmlinuz.
  if (!kernel) {
    const versioned = [...byPath.values()]
      .filter((e) => /^\/boot\/vmlinuz-[^/]+$/.test(e.path) && isFile(e))
      .map((e) => e.path.slice("/boot/vmlinuz-".length))
      .filter((v) => !v.endsWith(".old"))
      .sort(compareVersions);
    const newest = versioned.at(-1);
    if (newest) kernel = `/boot/vmlinuz-${newest}`;
  }
  if (!kernel) {
    for (const v of moduleVersions().sort(compareVersions).reverse()) {
      const p = `${modulesDir(v)}/vmlinuz`;
      if (isFile(resolveIn(byPath, p))) {
        kernel = realPath(byPath, p);
        kv = v;
        break;
      }
    }
  }
  if (!kernel) {
    return notBootable(
      "no kernel found (looked for /vmlinuz, /boot/vmlinuz, /boot/vmlinuz-*, /lib/modules/*/vmlinuz)",
    );
  }
  const m = /\/vmlinuz-([^/]+)$/.exec(kernel);
  if (!kv && m) kv = m[1];
  if (!kv) {
    const vs = moduleVersions();
    if (vs.length === 1) kv = vs[0];
    else {
      return notBootable(
        `cannot tell the version of kernel ${kernel}: ${
          vs.length ? `several module directories (${vs.join(", ")})` : "no /lib/modules/<version>"
        }`,
        { kernel },
      );
    }
  }
  const initrd = [
    "/initrd.img",
    "/boot/initrd.img",
    `/boot/initrd.img-${kv}`,
    `/boot/initramfs-${kv}.img`,
    `/boot/initrd-${kv}`,
    `/boot/initrd-${kv}.img`,
  ].filter((p) => isFile(resolveIn(byPath, p))).map((p) => realPath(byPath, p))
    // the generic links may point at another kernel's initrd; prefer one naming this version
    .sort((a, b) => Number(b.includes(kv!)) - Number(a.includes(kv!)))[0] ?? null;
  const modules = modulesDir(kv);
  if (!modules) {
    return notBootable(
      `kernel ${kernel} has no modules directory /lib/modules/${kv} (netroot's initramfs loads the network and NFS drivers from there)`,
      { kernel, initrd, kernelVersion: kv },
    );
  }
  return { kernel, initrd, kernelVersion: kv, modules, bootable: true, reason: null };
}

/** The real path a symlink chain ends at (for display and for serving the file). */
function realPath(byPath: Map<string, ManifestEntry>, path: string): string {
  return resolveIn(byPath, path)?.path ?? path;
}
