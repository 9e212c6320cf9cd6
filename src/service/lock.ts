// The data dir's lock: `netroot serve` holds it while it runs, `netroot restore` while it replaces
// the state, so neither replaces a database under the other. An flock(2) on <data>/run/serve.lock:
// the kernel drops it when the holder exits, crash included, so a stale file never blocks.
import { join } from "node:path";
import { conflict } from "../errors.ts";

export const lockPath = (dataDir: string) => join(dataDir, "run", "serve.lock");

/** Takes the lock (no waiting) or throws a 409 naming the holder; closing the file releases it. */
export async function lockDataDir(dataDir: string, holder: string): Promise<Deno.FsFile> {
  await Deno.mkdir(join(dataDir, "run"), { recursive: true });
  const path = lockPath(dataDir);
  const f = await Deno.open(path, { read: true, write: true, create: true, mode: 0o644 });
  if (!(await f.tryLock(true))) {
    f.close();
    const who = (await Deno.readTextFile(path).catch(() => "")).trim() || "another netroot process";
    throw conflict(`${dataDir} is in use by ${who}: stop it first (systemctl stop netroot)`);
  }
  await f.truncate(0);
  await f.write(new TextEncoder().encode(`${holder} (pid ${Deno.pid})\n`));
  return f;
}
