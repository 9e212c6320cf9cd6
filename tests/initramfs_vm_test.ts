// Boots the Debian kernel in qemu (TCG, direct kernel boot, no network traffic leaves qemu) with an
// initramfs from the builder whose program is a probe script: proves the kernel unpacks the
// archive, /init starts deno, and every module in modules.order loads in that order. Slow (≈ 15 s);
// skipped with NETROOT_SKIP_VM=1.
import assert from "node:assert/strict";
import { realpathSync } from "node:fs";
import { join } from "node:path";
import { buildInitramfs } from "../src/initramfs/build.ts";
import { debianKernel } from "./support/kernel.ts";

const PROBE = `
const libc = Deno.dlopen("libc.so.6", {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  syscall: { parameters: ["i64", "i64", "buffer", "i64"], result: "i64" },
  mount: { parameters: ["buffer", "buffer", "buffer", "u64", "buffer"], result: "i32" },
  reboot: { parameters: ["i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
});
const c = (s) => new TextEncoder().encode(s + "\\0");
const errno = () => new Deno.UnsafePointerView(libc.symbols.__errno_location()).getInt32();
console.log("PROBE start pid=" + Deno.pid + " args=" + Deno.args.join(",") +
  " exe=" + Deno.readLinkSync("/proc/self/exe")); // /proc: mounted by the launcher
libc.symbols.mount(c("sysfs"), c("/sys"), c("sysfs"), 0n, null);
const kv = Deno.osRelease();
const order = Deno.readTextFileSync("/netroot/modules.order").split("\\n").filter(Boolean);
let loaded = 0;
for (const rel of order) {
  const fd = libc.symbols.open(c("/lib/modules/" + kv + "/" + rel), 0);
  if (fd < 0) { console.log("PROBE fail " + rel + " open errno=" + errno()); continue; }
  if (libc.symbols.syscall(313n, BigInt(fd), c(""), 0n) === 0n) loaded++;
  else console.log("PROBE fail " + rel + " errno=" + errno());
}
console.log("PROBE modules " + loaded + "/" + order.length);
const fs = Deno.readTextFileSync("/proc/filesystems").split("\\n").map((l) => l.split("\\t")[1]);
console.log("PROBE fs " + ["nfs4", "overlay", "ext4", "vfat"].filter((f) => fs.includes(f)).join(","));
console.log("PROBE net " + [...Deno.readDirSync("/sys/class/net")].map((e) => e.name).sort().join(","));
libc.symbols.reboot(0x4321fedc); // RB_POWER_OFF: qemu exits
`;

Deno.test({
  name:
    "qemu (TCG) boots the Debian kernel with the initramfs; deno runs as /init and loads all modules",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  async fn() {
    const k = await debianKernel();
    const dir = await Deno.makeTempDir({ prefix: "nr-initramfs-vm-" });
    let qemu: Deno.ChildProcess | undefined;
    try {
      const script = join(dir, "probe.js");
      await Deno.writeTextFile(script, PROBE);
      const initrd = join(dir, "initrd");
      const program = {
        kind: "bundle" as const,
        deno: realpathSync(Deno.execPath()),
        script,
        hash: "0".repeat(64),
      };
      const r = await buildInitramfs({ rootfs: k.root, kernelVersion: k.kv, out: initrd, program });
      const log = join(dir, "console.log");
      const t0 = performance.now();
      qemu = new Deno.Command("qemu-system-x86_64", {
        args: [
          ...["-accel", "tcg", "-m", "768", "-smp", "1", "-no-reboot"],
          ...["-kernel", k.vmlinuz, "-initrd", initrd],
          ...["-append", "console=ttyS0 panic=-1 quiet"],
          ...["-display", "none", "-monitor", "none", "-serial", `file:${log}`],
          // A NIC with no backend: the virtio_net driver binds, nothing is sent anywhere.
          ...["-nic", "none", "-device", "virtio-net-pci"],
        ],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      const timeout = setTimeout(() => qemu?.kill("SIGKILL"), 180_000);
      const status = await qemu.status;
      clearTimeout(timeout);
      qemu = undefined;
      const out = await Deno.readTextFile(log);
      const probe = out.split("\n").filter((l) => l.startsWith("PROBE")).map((l) => l.trim());
      console.log(
        `booted ${r.bytes} B initramfs, powered off after ${Math.round(performance.now() - t0)} ms`,
      );
      assert.ok(status.success, `qemu rc ${status.code}\n${out.slice(-3000)}`);
      assert.ok(probe.includes("PROBE start pid=1 args=init exe=/netroot/deno"), out.slice(-3000));
      // Only the CPU-feature variants may fail under TCG's qemu64 CPU (no SSE4.2 / PCLMUL):
      // ENODEV (19). Any other failure (e.g. ENOENT: unknown symbol) means a bad order.
      const fails = probe.filter((l) => l.startsWith("PROBE fail"));
      for (const f of fails) {
        assert.match(f, /^PROBE fail kernel\/arch\/x86\/crypto\/\S+ errno=19$/);
      }
      assert.ok(
        probe.includes(`PROBE modules ${r.modules.length - fails.length}/${r.modules.length}`),
        probe.join("\n"),
      );
      assert.ok(probe.includes("PROBE fs nfs4,overlay,ext4,vfat"), probe.join("\n"));
      assert.ok(probe.includes("PROBE net eth0,lo"), probe.join("\n"));
    } finally {
      if (qemu) {
        qemu.kill("SIGKILL");
        await qemu.status;
      }
      await Deno.remove(dir, { recursive: true });
    }
  },
});
