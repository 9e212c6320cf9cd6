// The shared libraries a dynamic executable needs, found like ld.so does without ld.so.cache:
// DT_NEEDED names searched in the default directories, recursively, plus the PT_INTERP loader.
import { realpathSync } from "node:fs";
import { join } from "node:path";
import { machineName, readElfFile } from "./elf.ts";

export const LIBRARY_DIRS = [
  "/lib/x86_64-linux-gnu",
  "/usr/lib/x86_64-linux-gnu",
  "/lib64",
  "/usr/lib64",
  "/lib",
  "/usr/lib",
];

export interface NeededFile {
  /** The path the loader opens (PT_INTERP, or <search dir>/<soname>). */
  path: string;
  /** The host file behind it (symlinks resolved). */
  real: string;
}

/** Every file the loader opens to start `exe`, interpreter first. Throws naming what is missing. */
export function sharedLibraries(exe: string, dirs = LIBRARY_DIRS): NeededFile[] {
  const top = readElfFile(exe);
  const out: NeededFile[] = [];
  if (!top.interp) return out; // static executable
  out.push({ path: top.interp, real: realpathSync(top.interp) });
  const seen = new Set<string>();
  const queue: { soname: string; by: string }[] = top.needed.map((soname) => ({ soname, by: exe }));
  while (queue.length) {
    const { soname, by } = queue.shift()!;
    if (seen.has(soname)) continue;
    seen.add(soname);
    const found = findLibrary(soname, top.machine, dirs);
    if (!found) {
      throw new Error(
        `shared library ${soname} (needed by ${by}) not found in ${dirs.join(", ")}`,
      );
    }
    if (!out.some((f) => f.path === found.path)) out.push(found);
    for (const n of readElfFile(found.real).needed) queue.push({ soname: n, by: found.path });
  }
  return out;
}

function findLibrary(soname: string, machine: number, dirs: string[]): NeededFile | undefined {
  const candidates = soname.includes("/") ? [soname] : dirs.map((d) => join(d, soname));
  for (const path of candidates) {
    let real: string;
    try {
      real = realpathSync(path);
    } catch {
      continue;
    }
    // Like ld.so, skip a library of another architecture (e.g. an i386 one in /lib).
    const m = readElfFile(real).machine;
    if (m === machine) return { path, real };
    if (soname.includes("/")) {
      throw new Error(`${path} is ${machineName(m)}, expected ${machineName(machine)}`);
    }
  }
  return undefined;
}
