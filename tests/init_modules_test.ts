import assert from "node:assert/strict";
import { loadModules, moduleName, parseModulesOrder, summarize } from "../overlay/modules.ts";
import { isCompressedModule } from "../src/linux/kmod.ts";

Deno.test("modules.order: order kept, blanks/comments skipped, duplicates keep their first place", () => {
  const text = `# from modprobe --show-depends
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko

kernel/drivers/net/virtio_net.ko.xz
  kernel/drivers/virtio/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko.zst
`;
  assert.deepEqual(parseModulesOrder(text), [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/net/virtio_net.ko.xz",
    "kernel/fs/overlayfs/overlay.ko.zst",
  ]);
  assert.throws(() => parseModulesOrder("/lib/modules/x/a.ko"), /relative to \/lib\/modules/);
  assert.throws(() => parseModulesOrder("kernel/../../etc/passwd"), /relative/);
});

Deno.test("module loader: loads in order, keeps going past failures, counts already-present", () => {
  const calls: string[] = [];
  const r = loadModules(
    "/lib/modules/6.1.0-56-amd64",
    ["kernel/a.ko", "kernel/arch/x86/crypto/crc32c-intel.ko", "kernel/b.ko.xz", "kernel/c.ko"],
    (path) => {
      calls.push(path);
      if (path.includes("crc32c-intel")) throw new Error("finit_module: No such device (errno 19)");
      return path.endsWith("c.ko") ? "present" : "loaded";
    },
  );
  assert.deepEqual(calls, [
    "/lib/modules/6.1.0-56-amd64/kernel/a.ko",
    "/lib/modules/6.1.0-56-amd64/kernel/arch/x86/crypto/crc32c-intel.ko",
    "/lib/modules/6.1.0-56-amd64/kernel/b.ko.xz",
    "/lib/modules/6.1.0-56-amd64/kernel/c.ko",
  ]);
  assert.deepEqual(r.loaded, ["kernel/a.ko", "kernel/b.ko.xz"]);
  assert.deepEqual(r.present, ["kernel/c.ko"]);
  assert.deepEqual(r.failed, [{
    path: "kernel/arch/x86/crypto/crc32c-intel.ko",
    error: "finit_module: No such device (errno 19)",
  }]);
  assert.equal(summarize(r), "2 loaded, 1 already present, 1 failed (crc32c-intel)");
});

Deno.test("module names and the in-kernel decompression flag", () => {
  assert.equal(moduleName("kernel/fs/nfs/nfsv4.ko.xz"), "nfsv4");
  assert.equal(moduleName("kernel/fs/nfs/nfs.ko"), "nfs");
  assert.ok(isCompressedModule("a/b.ko.xz") && isCompressedModule("a/b.ko.zst"));
  assert.ok(!isCompressedModule("a/b.ko") && !isCompressedModule("a/b.xz.ko"));
});
