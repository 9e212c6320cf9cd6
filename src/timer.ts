// Timers for the node program, without setTimeout: in Deno 2.9 the first setTimeout or setInterval
// of a process loads Node's timers polyfill (node:timers and the ~20 modules it imports; 8–17 ms
// natively, ≈ 0.25 s of the init under qemu TCG: docs/benchmarks.md), while AbortSignal.timeout
// runs on the web timers Deno has loaded at start. Dependency-free: node-side code uses it.
// tests/timer_test.ts checks both halves of that, tests/node_imports_test.ts that the node
// program calls no setTimeout.

/**
 * Calls `fn` once after `ms`; returns the cancel. The timer keeps the process alive while it has
 * its listener (Deno refs an AbortSignal.timeout only then): cancelling lets the process end.
 */
export function after(ms: number, fn: () => void): () => void {
  const signal = AbortSignal.timeout(Math.max(0, ms));
  const onAbort = () => fn();
  signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => {
    after(ms, resolve);
  });
}
