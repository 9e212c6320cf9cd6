// One run of a slow async job per key (a download, a bundle): concurrent callers share it, a
// failure is forgotten so that the next caller tries again.

/** `fn(key)` once per key; the returned function is what callers call. */
export function oncePerKey<T>(fn: (key: string) => Promise<T>): (key: string) => Promise<T> {
  const runs = new Map<string, Promise<T>>();
  return (key) => {
    let p = runs.get(key);
    if (!p) {
      p = fn(key).catch((e) => {
        runs.delete(key);
        throw e;
      });
      runs.set(key, p);
    }
    return p;
  };
}
