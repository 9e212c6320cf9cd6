// reboot(2), sync(2), uname(2) and CLOCK_BOOTTIME through FFI.
import { check, enc, openLibc, readCString } from "./libc.ts";

const LINUX_REBOOT_CMD_RESTART = 0x01234567;
const CLOCK_BOOTTIME = 7;

let lib:
  | Deno.DynamicLibrary<{
    reboot: { parameters: ["i32"]; result: "i32" };
    sync: { parameters: []; result: "void" };
    uname: { parameters: ["buffer"]; result: "i32" };
    clock_gettime: { parameters: ["i32", "buffer"]; result: "i32" };
    sethostname: { parameters: ["buffer", "u64"]; result: "i32" };
  }>
  | undefined;

function libc() {
  lib ??= openLibc(
    {
      reboot: { parameters: ["i32"], result: "i32" },
      sync: { parameters: [], result: "void" },
      uname: { parameters: ["buffer"], result: "i32" },
      clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
      sethostname: { parameters: ["buffer", "u64"], result: "i32" },
    } as const,
  );
  return lib;
}

/** sync + reboot(RB_AUTOBOOT). Returns only by throwing (EPERM without CAP_SYS_BOOT). */
export function reboot(): never {
  const c = libc().symbols;
  c.sync();
  check("reboot", c.reboot(LINUX_REBOOT_CMD_RESTART));
  throw new Error("reboot(2) returned");
}

export interface Uname {
  sysname: string;
  nodename: string;
  release: string;
  version: string;
  machine: string;
}

export function uname(): Uname {
  const buf = new Uint8Array(65 * 6); // struct utsname: six char[65]
  check("uname", libc().symbols.uname(buf));
  const f = (i: number) => readCString(buf.subarray(65 * i, 65 * (i + 1)));
  return { sysname: f(0), nodename: f(1), release: f(2), version: f(3), machine: f(4) };
}

/** Milliseconds since the kernel booted (CLOCK_BOOTTIME, counts suspend). */
export function uptimeMs(): number {
  const ts = new BigInt64Array(2);
  check("clock_gettime", libc().symbols.clock_gettime(CLOCK_BOOTTIME, ts));
  return Number(ts[0]) * 1000 + Number(ts[1]) / 1e6;
}

/** sethostname(2) (of this UTS namespace). */
export function setHostname(name: string): void {
  const b = enc.encode(name);
  check("sethostname", libc().symbols.sethostname(b, BigInt(b.length)), name);
}
