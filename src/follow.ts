// What the system holds on the registry's behalf (NFS exports, pinned neighbour entries) kept in
// line with it: applied again 200 ms after the last change of nodes or images, and every
// `recheckMs` for what changes without an event (a lease's address). One application at a time,
// and at most one waiting.
import type { Context } from "./context.ts";

export function followRegistry(
  ctx: Pick<Context, "changes">,
  apply: () => Promise<void>,
  o: { recheckMs?: number; failed: (e: Error) => void },
): { stop(): Promise<void>; changed(): void } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running = Promise.resolve();
  // At most one application waits behind the one under way: it reads the registry when it starts,
  // so it applies every change made before then. One queued per tick and change, a hung one (a
  // wedged ganesha, exportfs) queued 360 an hour, all run back to back once it came back.
  let waiting = false;
  const run = () => {
    if (waiting) return running;
    waiting = true;
    running = running.then(() => {
      waiting = false;
      return apply();
    }).catch((e) => o.failed(e as Error));
    return running;
  };
  const onChange = () => {
    clearTimeout(timer);
    timer = setTimeout(run, 200);
  };
  ctx.changes.addEventListener("nodes", onChange);
  ctx.changes.addEventListener("images", onChange);
  const interval = setInterval(run, o.recheckMs ?? 10_000);
  return {
    /** Something else changed what to apply (applied as a registry change is). */
    changed: onChange,
    stop: async () => {
      ctx.changes.removeEventListener("nodes", onChange);
      ctx.changes.removeEventListener("images", onChange);
      clearTimeout(timer);
      clearInterval(interval);
      await running;
    },
  };
}
