// The accelerator choice: "auto" trusts KVM only after a real Linux kernel booted under it.
// Needs qemu and the Debian test kernel (downloaded once by tests/support/kernel.ts).
import assert from "node:assert/strict";
import { chooseAccel, kernelBoots, resetAccelMemo } from "../src/vnode/accel.ts";
import { debianKernel } from "./support/kernel.ts";

Deno.test("configured accelerators are used as is; no kernel means TCG, not remembered", async () => {
  resetAccelMemo();
  assert.deepEqual(await chooseAccel("kvm", { kernels: [] }), {
    accel: "kvm",
    reason: "configured",
  });
  assert.deepEqual(await chooseAccel("tcg", { kernels: [] }), {
    accel: "tcg",
    reason: "configured",
  });
  const c = await chooseAccel("auto", { kernels: ["/nonexistent/vmlinuz"] });
  assert.equal(c.accel, "tcg");
  assert.match(c.reason, /no Linux kernel|\/dev\/kvm unusable/);
});

Deno.test({
  name: "KVM probe boots a real kernel to its panic; the answer is cached per host (qemu)",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  async fn() {
    const k = await debianKernel();
    // Positive control: under TCG the probe kernel reaches its panic, so a false answer under
    // KVM means KVM, not the probe, is broken.
    const t0 = performance.now();
    assert.equal(await kernelBoots(k.vmlinuz, "tcg", 60_000), true);
    console.log(`TCG probe boot: ${Math.round(performance.now() - t0)} ms`);
    // A kernel that is not one: no panic, so false (fast: qemu refuses it).
    const bogus = await Deno.makeTempFile();
    await Deno.writeTextFile(bogus, "not a kernel");
    assert.equal(await kernelBoots(bogus, "tcg", 10_000), false);

    const dir = await Deno.makeTempDir({ prefix: "nr-vnode-accel-" });
    try {
      resetAccelMemo();
      const cacheFile = `${dir}/accel.json`;
      const first = await chooseAccel("auto", { kernels: [k.vmlinuz], cacheFile });
      console.log(`auto: ${JSON.stringify(first)}`);
      assert.ok(first.accel === "kvm" || first.accel === "tcg");
      // On this kind of host (/dev/kvm present, Linux guests hang) the answer must be TCG.
      if (Deno.env.get("NETROOT_EXPECT_ACCEL")) {
        assert.equal(first.accel, Deno.env.get("NETROOT_EXPECT_ACCEL"));
      }
      const cached = JSON.parse(await Deno.readTextFile(cacheFile).catch(() => "{}"));
      if (!/\/dev\/kvm unusable/.test(first.reason)) assert.equal(cached.accel, first.accel);
      resetAccelMemo();
      const again = await chooseAccel("auto", { kernels: [k.vmlinuz], cacheFile });
      assert.equal(again.accel, first.accel);
      if (cached.accel) assert.match(again.reason, /cached/);
    } finally {
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(bogus);
    }
  },
});
