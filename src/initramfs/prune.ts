// Bounds the initramfs cache: each program version (every code change when running from source)
// would otherwise add ≈ 40 MB per image forever, and each Deno version an arm64 runtime of ≈ 100
// MB (runtime.ts).
import { join } from "node:path";

/** Removes all but the `keep` newest (by mtime) files or directories of `dir` whose names
 *  `match`. */
export async function keepNewest(
  dir: string,
  match: (name: string) => boolean,
  keep: number,
): Promise<string[]> {
  const files: { path: string; mtime: number }[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!(e.isFile || e.isDirectory) || !match(e.name)) continue;
    const path = join(dir, e.name);
    const st = await Deno.stat(path).catch(() => undefined);
    if (st) files.push({ path, mtime: st.mtime?.getTime() ?? 0 });
  }
  files.sort((a, b) => b.mtime - a.mtime);
  const removed: string[] = [];
  for (const f of files.slice(keep)) {
    // A node still downloading an old file keeps its open descriptor; unlink is safe.
    await Deno.remove(f.path, { recursive: true }).then(() => removed.push(f.path), () => {});
  }
  return removed;
}

/** Removes the temp files and directories (`.NAME.PID.tmp`) of processes that are gone: a build
 *  or a runtime fetch killed midway (the fetch's, an unpacked package of ≈ 100 MB). */
export async function sweepTempFiles(dir: string): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    const m = /^\..*\.(\d+)\.tmp$/.exec(e.name);
    if (!m || Number(m[1]) === Deno.pid) continue;
    try {
      await Deno.stat(`/proc/${m[1]}`);
    } catch {
      await Deno.remove(join(dir, e.name), { recursive: true }).catch(() => {});
    }
  }
}
