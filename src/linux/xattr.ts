// Extended attributes through libc (Deno has no xattr API). The l* variants: never follow symlinks,
// since a symlink's own attributes (e.g. security.selinux) are what an image carries.
import { check, cstr, errno, openLibc, SyscallError } from "./libc.ts";

const ENODATA = 61, ENOTSUP = 95, ERANGE = 34;

let lib:
  | Deno.DynamicLibrary<{
    llistxattr: { parameters: ["buffer", "buffer", "usize"]; result: "isize" };
    lgetxattr: { parameters: ["buffer", "buffer", "buffer", "usize"]; result: "isize" };
    lsetxattr: { parameters: ["buffer", "buffer", "buffer", "usize", "i32"]; result: "i32" };
    lremovexattr: { parameters: ["buffer", "buffer"]; result: "i32" };
  }>
  | undefined;

function libc() {
  lib ??= openLibc(
    {
      llistxattr: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
      lgetxattr: { parameters: ["buffer", "buffer", "buffer", "usize"], result: "isize" },
      lsetxattr: { parameters: ["buffer", "buffer", "buffer", "usize", "i32"], result: "i32" },
      lremovexattr: { parameters: ["buffer", "buffer"], result: "i32" },
    } as const,
  );
  return lib;
}

// One scratch buffer for the common case (a few short attributes); grown on ERANGE.
let scratch = new Uint8Array(4096);
const dec = new TextDecoder();

/** All extended attributes of path (not following a final symlink), name → raw value. */
export function listXattrs(path: string): Map<string, Uint8Array> | undefined {
  const p = cstr(path);
  const sym = libc().symbols;
  let n: number;
  for (;;) {
    n = Number(sym.llistxattr(p, scratch, BigInt(scratch.length)));
    if (n >= 0) break;
    const e = errno();
    if (e === ENOTSUP) return undefined;
    if (e !== ERANGE) throw new SyscallError("llistxattr", e, path);
    scratch = new Uint8Array(scratch.length * 4);
  }
  if (n === 0) return undefined;
  const names = dec.decode(scratch.subarray(0, n)).split("\0").filter((s) => s);
  const out = new Map<string, Uint8Array>();
  for (const name of names) {
    const nm = cstr(name);
    for (;;) {
      const len = Number(sym.lgetxattr(p, nm, scratch, BigInt(scratch.length)));
      if (len >= 0) {
        out.set(name, scratch.slice(0, len));
        break;
      }
      const e = errno();
      if (e === ENODATA) break; // removed between list and get
      if (e !== ERANGE) throw new SyscallError("lgetxattr", e, `${path} ${name}`);
      scratch = new Uint8Array(scratch.length * 4);
    }
  }
  return out.size ? out : undefined;
}

/** Sets one attribute (used by tests and by the node-side copy). */
export function setXattr(path: string, name: string, value: Uint8Array): void {
  check(
    "lsetxattr",
    libc().symbols.lsetxattr(
      cstr(path),
      cstr(name),
      value as Uint8Array<ArrayBuffer>,
      BigInt(value.length),
      0,
    ),
    `${path} ${name}`,
  );
}

/** Removes one attribute (not following a final symlink); absent already is fine. */
export function removeXattr(path: string, name: string): void {
  if (libc().symbols.lremovexattr(cstr(path), cstr(name)) === 0) return;
  const e = errno();
  if (e !== ENODATA) throw new SyscallError("lremovexattr", e, `${path} ${name}`);
}
