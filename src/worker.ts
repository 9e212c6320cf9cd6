// Web Workers whose code travels inside the program as source text: a Blob URL made from it, so
// a worker survives `deno bundle` and `deno compile` (no separate module file to locate at run
// time, no import.meta.url pointing into a checkout). Imports nothing: node-side code uses it too.

/**
 * Starts a module worker running `source`: module text, or a self-contained function that is
 * called once in the worker (only its own text is shipped: it may not use anything from the
 * module that defines it; imports go in as `await import("node:…")` inside it).
 */
export function workerFromSource(source: string | (() => unknown)): Worker {
  const text = typeof source === "string" ? source : `(${source.toString()})();`;
  const url = URL.createObjectURL(new Blob([text], { type: "text/javascript" }));
  try {
    return new Worker(url, { type: "module" });
  } finally {
    // The worker has the URL's content once constructed; the URL itself is no longer needed.
    URL.revokeObjectURL(url);
  }
}
