// Giving freed heap memory back to the kernel. glibc keeps what a program frees in its heap for
// later allocations and returns it only from the heap's top; a burst of large, short-lived
// allocations (an initramfs build: zstd's compression context and 1 MiB read buffers; a boot file
// read into the cache) leaves tens of MB resident after it is over, under whatever was allocated
// after it. malloc_trim(0) releases every free page of every arena (madvise), which is what the
// server calls after such a burst: the server's RSS during a boot storm is one of its targets
// (docs/benchmarks.md "Boot storm").
import { openLibc } from "./libc.ts";

let lib:
  | Deno.DynamicLibrary<{ malloc_trim: { parameters: ["usize"]; result: "i32" } }>
  | null
  | undefined;

/** Returns the heap's free pages to the kernel (glibc malloc_trim); false when not possible (no
 *  FFI permission, not glibc), which changes nothing but memory. */
export function releaseFreeMemory(): boolean {
  if (lib === undefined) {
    try {
      lib = openLibc({ malloc_trim: { parameters: ["usize"], result: "i32" } } as const);
    } catch {
      lib = null;
    }
  }
  if (!lib) return false;
  lib.symbols.malloc_trim(0n);
  return true;
}
