// execve(2), chroot(2), chdir(2) through FFI, and the switch_root sequence. Deno has no exec():
// the node init must *replace* itself (same PID) with the image's init, never spawn it.
import { check, cstr, cstrArray, openLibc } from "./libc.ts";
import { mount, MS_MOVE } from "./mount.ts";

let lib:
  | Deno.DynamicLibrary<{
    execve: { parameters: ["buffer", "buffer", "buffer"]; result: "i32" };
    chroot: { parameters: ["buffer"]; result: "i32" };
    chdir: { parameters: ["buffer"]; result: "i32" };
  }>
  | undefined;

function libc() {
  lib ??= openLibc(
    {
      execve: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
      chroot: { parameters: ["buffer"], result: "i32" },
      chdir: { parameters: ["buffer"], result: "i32" },
    } as const,
  );
  return lib;
}

export function chdir(path: string): void {
  check("chdir", libc().symbols.chdir(cstr(path)), path);
}

export function chroot(path: string): void {
  check("chroot", libc().symbols.chroot(cstr(path)), path);
}

/** Replaces this process image. Returns only by throwing (the execve error). */
export function execve(path: string, argv: string[], env: Record<string, string>): never {
  const a = cstrArray(argv);
  const e = cstrArray(Object.entries(env).map(([k, v]) => `${k}=${v}`));
  const rc = libc().symbols.execve(cstr(path), a.ptrs, e.ptrs);
  // Keep the C strings alive until the call is over (the pointer arrays only hold addresses).
  void a.keep, e.keep;
  check("execve", rc, path);
  throw new Error(`execve ${path} returned ${rc}`);
}

/**
 * switch_root: make `newRoot` the root of this process, as util-linux/busybox do on an initramfs
 * (rootfs cannot be pivot_root'ed): chdir into it, move its mount over "/", chroot("."). The caller
 * has already moved /dev, /proc, /sys, /run into it and freed the old root's contents.
 */
export function switchRoot(newRoot: string): void {
  chdir(newRoot);
  mount(".", "/", null, MS_MOVE);
  chroot(".");
  chdir("/");
}

/**
 * Deletes everything under `dir` that lives on the same filesystem as `dir`, without crossing into
 * other mounts (they are left in place, contents untouched). Used on the initramfs rootfs right
 * before switch_root, otherwise its ~100 MB (deno included) stay pinned in RAM. Deleting the
 * running deno binary is fine: its pages stay until execve drops them. Returns bytes freed.
 */
export function removeSameDevice(dir: string, dev = Deno.lstatSync(dir).dev): number {
  let freed = 0;
  for (const e of Deno.readDirSync(dir)) {
    const p = `${dir === "/" ? "" : dir}/${e.name}`;
    let st: Deno.FileInfo;
    try {
      st = Deno.lstatSync(p);
    } catch {
      continue;
    }
    if (st.dev !== dev) continue; // a mount point: not ours to delete
    if (st.isDirectory) {
      freed += removeSameDevice(p, dev);
      try {
        Deno.removeSync(p);
      } catch {
        // not empty: holds a mount point somewhere below; keep it
      }
    } else {
      freed += st.size;
      Deno.removeSync(p);
    }
  }
  return freed;
}
