// The qemu power driver on a real virtual node (root, qemu, a private network namespace): on,
// off, cycle and status start and stop the vnode's qemu; `node reboot` keeps the QMP reset.
import { runChildInNetns } from "./support/netnschild.ts";

Deno.test({
  name: "qemu power driver: a vnode's qemu switched on, off, cycled (root, qemu, netns)",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  fn: () =>
    runChildInNetns(new URL("./power_qemu_child.ts", import.meta.url), {
      name: "power",
      timeoutS: 120,
      done: /qemu driver ok/,
      quiet: true,
    }),
});
