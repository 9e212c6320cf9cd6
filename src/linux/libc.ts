// Shared FFI plumbing on glibc: C strings, errno, and a checked-call helper. Each module opens the
// symbols it needs with `openLibc` (several handles on libc.so.6 are fine), so the node init does not
// pay for the server's socket bindings and vice versa.

export const enc = new TextEncoder();
const dec = new TextDecoder();

/** NUL-terminated copy of s, to pass as a "buffer" parameter. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(enc.encode(s).length + 1);
  enc.encodeInto(s, b);
  return b;
}

export function openLibc<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
): Deno.DynamicLibrary<S> {
  return Deno.dlopen("libc.so.6", symbols);
}

let base:
  | Deno.DynamicLibrary<{
    __errno_location: { parameters: []; result: "pointer" };
    strerror: { parameters: ["i32"]; result: "pointer" };
  }>
  | undefined;

function baseLib() {
  base ??= openLibc(
    {
      __errno_location: { parameters: [], result: "pointer" },
      strerror: { parameters: ["i32"], result: "pointer" },
    } as const,
  );
  return base;
}

/** errno of the calling thread (valid right after a failed synchronous FFI call). */
export function errno(): number {
  const p = baseLib().symbols.__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

export function strerror(code: number): string {
  const p = baseLib().symbols.strerror(code);
  return p ? Deno.UnsafePointerView.getCString(p) : `errno ${code}`;
}

export class SyscallError extends Error {
  constructor(readonly call: string, readonly errno: number, detail = "") {
    super(`${call}${detail ? ` ${detail}` : ""}: ${strerror(errno)} (errno ${errno})`);
    this.name = "SyscallError";
  }
}

/** Throws SyscallError when a libc call returned -1 (or a negative number). */
export function check<T extends number | bigint>(call: string, rc: T, detail = ""): T {
  if (Number(rc) < 0) throw new SyscallError(call, errno(), detail);
  return rc;
}

export function readCString(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return dec.decode(end < 0 ? buf : buf.subarray(0, end));
}

/** A NULL-terminated array of pointers to C strings (argv/envp); keep the result alive during the call. */
export function cstrArray(
  items: string[],
): { ptrs: BigUint64Array<ArrayBuffer>; keep: Uint8Array[] } {
  const keep = items.map(cstr);
  const ptrs = new BigUint64Array(items.length + 1);
  keep.forEach((b, i) => ptrs[i] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b))));
  return { ptrs, keep };
}
