// The shared libraries a dynamic executable needs, found like ld.so does without ld.so.cache:
// DT_NEEDED names searched in the default directories, recursively, plus the PT_INTERP loader.
// On the host's own file system (an x86-64 node runs the server's libraries), or inside an image
// tree as chroot would see it (an aarch64 node's runtime takes the libraries of its arm64 image:
// the x86-64 server has none).
import { realpathSync } from "node:fs";
import { join } from "node:path";
import { resolveInRoot } from "../../contract/rootpath.ts";
import { EM_AARCH64, machineName, readElfFile } from "./elf.ts";

export const LIBRARY_DIRS = [
  "/lib/x86_64-linux-gnu",
  "/usr/lib/x86_64-linux-gnu",
  "/lib64",
  "/usr/lib64",
  "/lib",
  "/usr/lib",
];
/** Debian's multiarch directories first, as its arm64 ld.so searches them. */
export const LIBRARY_DIRS_AARCH64 = [
  "/lib/aarch64-linux-gnu",
  "/usr/lib/aarch64-linux-gnu",
  "/lib64",
  "/usr/lib64",
  "/lib",
  "/usr/lib",
];

export function libraryDirs(machine: number): string[] {
  return machine === EM_AARCH64 ? LIBRARY_DIRS_AARCH64 : LIBRARY_DIRS;
}

export interface NeededFile {
  /** The path the loader opens (PT_INTERP, or <search dir>/<soname>). */
  path: string;
  /** The file behind it (symlinks resolved), as a path of the root searched. */
  real: string;
  /** Where that file is on this host (`real` itself when searching the host). */
  host: string;
}

/** A path as seen from `root` (undefined: the host): its resolved path and host file, or
 *  undefined when it does not exist. */
type Resolver = (path: string) => { real: string; host: string } | undefined;

function resolver(root?: string): Resolver {
  if (!root) {
    return (path) => {
      try {
        const real = realpathSync(path);
        return { real, host: real };
      } catch {
        return undefined;
      }
    };
  }
  const base = root.replace(/\/+$/, "");
  return (path) => {
    const r = resolveInRoot(base, path);
    if (r.missing) return undefined;
    try {
      if (!Deno.statSync(r.host).isFile) return undefined;
    } catch {
      return undefined;
    }
    return { real: r.host.slice(base.length) || "/", host: r.host };
  };
}

/** The most libraries one program may need: the node's Deno needs 6. An image's libraries each
 *  naming 256 others (65,536 links to one file) were all walked, 28.5 s of the server's only
 *  thread, and in time growing with the square of their number. */
export const MAX_LIBRARIES = 64;

/**
 * Every file the loader opens to start `exe`, interpreter first, found on the host or, with
 * `root`, inside that tree (symlinks resolved within it). Throws naming what is missing, or when
 * it needs more than MAX_LIBRARIES.
 */
export function sharedLibraries(
  exe: string,
  dirs = LIBRARY_DIRS,
  root?: string,
): NeededFile[] {
  const top = readElfFile(exe);
  const out: NeededFile[] = [];
  if (!top.interp) return out; // static executable
  const resolve = resolver(root);
  const where = root ? ` in ${root}` : "";
  const interp = resolve(top.interp);
  if (!interp) throw new Error(`the loader ${top.interp} (of ${exe}) not found${where}`);
  out.push({ path: top.interp, ...interp });
  const paths = new Set([top.interp]);
  // Each soname queued once: a queue of every name every library lists held them by the million.
  const seen = new Set<string>();
  const queue: { soname: string; by: string }[] = [];
  const enqueue = (needed: string[], by: string) => {
    for (const soname of needed) {
      if (!seen.has(soname)) queue.push({ soname, by });
      seen.add(soname);
    }
  };
  enqueue(top.needed, exe);
  for (let i = 0; i < queue.length; i++) {
    const { soname, by } = queue[i];
    const found = findLibrary(soname, top.machine, dirs, resolve);
    if (!found) {
      throw new Error(
        `shared library ${soname} (needed by ${by}) not found in ${dirs.join(", ")}${where}`,
      );
    }
    if (paths.has(found.path)) continue;
    paths.add(found.path);
    if (out.push(found) > MAX_LIBRARIES) {
      throw new Error(`${exe} needs more than ${MAX_LIBRARIES} shared libraries${where}`);
    }
    enqueue(readElfFile(found.host).needed, found.path);
  }
  return out;
}

function findLibrary(
  soname: string,
  machine: number,
  dirs: string[],
  resolve: Resolver,
): NeededFile | undefined {
  const candidates = soname.includes("/") ? [soname] : dirs.map((d) => join(d, soname));
  for (const path of candidates) {
    const f = resolve(path);
    if (!f) continue;
    // Like ld.so, skip a library of another architecture (e.g. an i386 one in /lib).
    const m = readElfFile(f.host).machine;
    if (m === machine) return { path, ...f };
    if (soname.includes("/")) {
      throw new Error(`${path} is ${machineName(m)}, expected ${machineName(machine)}`);
    }
  }
  return undefined;
}
