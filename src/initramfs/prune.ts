// Bounds the initramfs cache: each program version (every code change when running from source)
// would otherwise add ≈ 40 MB per image forever.
import { join } from "node:path";

/** Removes all but the `keep` newest (by mtime) files of `dir` whose names `match`. */
export async function keepNewest(
  dir: string,
  match: (name: string) => boolean,
  keep: number,
): Promise<string[]> {
  const files: { path: string; mtime: number }[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!e.isFile || !match(e.name)) continue;
    const path = join(dir, e.name);
    const st = await Deno.stat(path).catch(() => undefined);
    if (st) files.push({ path, mtime: st.mtime?.getTime() ?? 0 });
  }
  files.sort((a, b) => b.mtime - a.mtime);
  const removed: string[] = [];
  for (const f of files.slice(keep)) {
    // A node still downloading an old file keeps its open descriptor; unlink is safe.
    await Deno.remove(f.path).then(() => removed.push(f.path), () => {});
  }
  return removed;
}
