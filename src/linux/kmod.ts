// finit_module(2) through FFI: load a kernel module file without insmod/modprobe.
import { check, cstr, errno, openLibc, SyscallError } from "./libc.ts";

/** The syscall's number on the node's machine: x86_64's table, or the generic one of aarch64
 *  (asm-generic/unistd.h). The other calls here go through libc, which knows its own. */
const SYS_finit_module = Deno.build.arch === "aarch64" ? 273n : 313n;
const O_RDONLY = 0;
const O_CLOEXEC = 0o2000000;
/** Ask the kernel to decompress (.ko.xz/.ko.zst/.ko.gz); Linux ≥ 6.4, EINVAL before. */
export const MODULE_INIT_COMPRESSED_FILE = 4;
export const EEXIST = 17;
const EINVAL = 22;

let lib:
  | Deno.DynamicLibrary<{
    open: { parameters: ["buffer", "i32"]; result: "i32" };
    close: { parameters: ["i32"]; result: "i32" };
    syscall: { parameters: ["i64", "i64", "buffer", "i64"]; result: "i64" };
  }>
  | undefined;

function libc() {
  lib ??= openLibc(
    {
      open: { parameters: ["buffer", "i32"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      syscall: { parameters: ["i64", "i64", "buffer", "i64"], result: "i64" },
    } as const,
  );
  return lib;
}

export const isCompressedModule = (path: string) => /\.ko\.(xz|zst|gz)$/.test(path);

/**
 * Loads one module file. Returns "loaded", or "present" when the kernel already has it (EEXIST:
 * loaded before or built in). Any other failure throws a SyscallError (e.g. ENODEV for
 * crc32c-intel without SSE4.2, ENOENT for unknown symbols, EINVAL for a compressed file on a kernel
 * older than 6.4).
 */
export function loadModuleFile(path: string, params = ""): "loaded" | "present" {
  const { symbols: c } = libc();
  const fd = check("open", c.open(cstr(path), O_RDONLY | O_CLOEXEC), path);
  try {
    const flags = isCompressedModule(path) ? MODULE_INIT_COMPRESSED_FILE : 0;
    const rc = c.syscall(SYS_finit_module, BigInt(fd), cstr(params), BigInt(flags));
    if (rc < 0n) {
      const code = errno();
      if (code === EEXIST) return "present";
      throw new SyscallError(
        "finit_module",
        code,
        flags && code === EINVAL
          ? `${path} (kernels before 6.4 cannot decompress modules: ship them uncompressed)`
          : path,
      );
    }
    return "loaded";
  } finally {
    c.close(fd);
  }
}
