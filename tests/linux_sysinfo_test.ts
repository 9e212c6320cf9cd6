import assert from "node:assert/strict";
import { uname, uptimeMs } from "../src/linux/sysinfo.ts";
import { loadModuleFile } from "../src/linux/kmod.ts";
import { SyscallError } from "../src/linux/libc.ts";

Deno.test("uname and CLOCK_BOOTTIME through FFI agree with the kernel's own files", () => {
  const u = uname();
  assert.equal(u.sysname, "Linux");
  assert.equal(u.release, Deno.osRelease());
  assert.equal(u.machine, "x86_64");
  const procUptime = Number(Deno.readTextFileSync("/proc/uptime").split(" ")[0]) * 1000;
  assert.ok(Math.abs(uptimeMs() - procUptime) < 1000, `${uptimeMs()} vs ${procUptime}`);
});

Deno.test("finit_module: a missing file and a non-module fail with the call and path named", async () => {
  assert.throws(() => loadModuleFile("/nonexistent/x.ko"), (e) => {
    assert.ok(e instanceof SyscallError);
    assert.equal(e.call, "open");
    assert.equal(e.errno, 2);
    assert.match(e.message, /\/nonexistent\/x\.ko/);
    return true;
  });
  const f = await Deno.makeTempFile({ suffix: ".ko" });
  try {
    await Deno.writeTextFile(f, "not an ELF module\n");
    // Reaches the kernel: ENOEXEC on a modular kernel, ENOSYS on one built without modules (this
    // host), EPERM without CAP_SYS_MODULE. EBADF/EFAULT would mean broken FFI arguments.
    assert.throws(() => loadModuleFile(f), (e) => {
      assert.ok(e instanceof SyscallError);
      assert.equal(e.call, "finit_module");
      assert.ok([8, 38, 1].includes(e.errno), e.message);
      return true;
    });
  } finally {
    await Deno.remove(f);
  }
});
