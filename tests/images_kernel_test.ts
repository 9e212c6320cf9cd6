import assert from "node:assert/strict";
import type { ManifestEntry } from "../contract/manifest.ts";
import { compareVersions, detectKernel } from "../src/images/kernel.ts";

const b = { mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0 };
const dir = (path: string): ManifestEntry => ({ path, type: "dir", ...b });
const file = (path: string): ManifestEntry => ({
  path,
  type: "file",
  ...b,
  sha256: "0".repeat(64),
});
const link = (path: string, target: string): ManifestEntry => ({
  path,
  type: "symlink",
  ...b,
  target,
});
const tree = (
  ...extra: ManifestEntry[]
) => [dir("/"), dir("/boot"), dir("/usr"), dir("/usr/lib"), ...extra];

Deno.test("Debian layout: /vmlinuz link wins over the newest /boot kernel, initrd of that version", () => {
  const k = detectKernel(tree(
    file("/boot/vmlinuz-6.1.0-13-amd64"),
    file("/boot/vmlinuz-6.1.0-9-amd64"),
    file("/boot/initrd.img-6.1.0-9-amd64"),
    file("/boot/initrd.img-6.1.0-13-amd64"),
    link("/vmlinuz", "boot/vmlinuz-6.1.0-9-amd64"),
    link("/initrd.img", "boot/initrd.img-6.1.0-9-amd64"),
    dir("/lib"),
    dir("/lib/modules"),
    dir("/lib/modules/6.1.0-9-amd64"),
  ));
  assert.deepEqual(k, {
    kernel: "/boot/vmlinuz-6.1.0-9-amd64",
    initrd: "/boot/initrd.img-6.1.0-9-amd64",
    kernelVersion: "6.1.0-9-amd64",
    modules: "/lib/modules/6.1.0-9-amd64",
    bootable: true,
    reason: null,
  });
});

Deno.test("without links the newest versioned kernel is taken (numeric order); usrmerge /lib link", () => {
  const k = detectKernel(tree(
    file("/boot/vmlinuz-6.9.0"),
    file("/boot/vmlinuz-6.10.0"),
    file("/boot/vmlinuz-7.0.0.old"),
    link("/lib", "usr/lib"),
    dir("/usr/lib/modules"),
    dir("/usr/lib/modules/6.10.0"),
  ));
  assert.equal(k.kernel, "/boot/vmlinuz-6.10.0");
  assert.equal(k.kernelVersion, "6.10.0");
  assert.equal(k.modules, "/usr/lib/modules/6.10.0");
  assert.equal(k.initrd, null);
  assert.equal(k.bootable, true);
  assert.ok(compareVersions("6.10.0", "6.9.0") > 0);
});

Deno.test("Fedora layout: /usr/lib/modules/<kv>/vmlinuz and /boot/initramfs-<kv>.img", () => {
  const k = detectKernel(tree(
    dir("/usr/lib/modules"),
    dir("/usr/lib/modules/6.5.6-300.fc39.x86_64"),
    file("/usr/lib/modules/6.5.6-300.fc39.x86_64/vmlinuz"),
    file("/boot/initramfs-6.5.6-300.fc39.x86_64.img"),
  ));
  assert.equal(k.kernel, "/usr/lib/modules/6.5.6-300.fc39.x86_64/vmlinuz");
  assert.equal(k.kernelVersion, "6.5.6-300.fc39.x86_64");
  assert.equal(k.initrd, "/boot/initramfs-6.5.6-300.fc39.x86_64.img");
  assert.equal(k.bootable, true);
});

Deno.test("not bootable, with the reason: no kernel, dangling /vmlinuz, no modules, unknown version", () => {
  assert.match(detectKernel(tree(file("/etc/passwd"))).reason!, /no kernel found/);
  const dangling = detectKernel(tree(link("/vmlinuz", "boot/vmlinuz-gone")));
  assert.equal(dangling.bootable, false);
  assert.match(dangling.reason!, /\/vmlinuz points to boot\/vmlinuz-gone/);
  const noMods = detectKernel(tree(file("/boot/vmlinuz-6.1.0")));
  assert.equal(noMods.bootable, false);
  assert.equal(noMods.kernel, "/boot/vmlinuz-6.1.0");
  assert.match(noMods.reason!, /no modules directory \/lib\/modules\/6.1.0/);
  const unversioned = detectKernel(tree(
    file("/boot/vmlinuz"),
    dir("/lib"),
    dir("/lib/modules"),
    dir("/lib/modules/a"),
    dir("/lib/modules/b"),
  ));
  assert.equal(unversioned.bootable, false);
  assert.match(unversioned.reason!, /several module directories \(a, b\)/);
  const single = detectKernel(
    tree(file("/boot/vmlinuz"), dir("/lib"), dir("/lib/modules"), dir("/lib/modules/5.10.0")),
  );
  assert.equal(single.kernelVersion, "5.10.0");
  assert.equal(single.bootable, true);
});
