// A virtual node's serial console log is bounded while its VM runs, not only at its next start:
// qemu appends whatever the guest writes, and a VM runs for months (root on the node can write
// without end). Before, console.log grew until the data dir's disk was full.
import { runChildInNetns } from "./support/netnschild.ts";

Deno.test({
  name: "a running vnode's serial log is rotated past its bound (root, qemu, netns)",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  fn: () =>
    runChildInNetns(new URL("./vnode_console_bound_child.ts", import.meta.url), {
      name: "vcons",
      timeoutS: 240,
      done: /serial log bounded while running/,
    }),
});
