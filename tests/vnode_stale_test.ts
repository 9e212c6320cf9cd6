// A qemu left running by a server that died (kill -9) holds its tap, its disks and its memory;
// the next server ends it when it starts the VM. Removing the vnode first (that server has no boot
// bridge, so it started nothing) left it running for good, on disk files deleted under it.
// A VM's QMP socket, under a data dir too deep for a unix socket's path, went to /tmp, where
// another local user could take its name first.
import { runChildInNetns } from "./support/netnschild.ts";

Deno.test({
  name: "a vnode removed after a server crash takes its stale qemu with it (root, qemu, netns)",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  fn: () =>
    runChildInNetns(new URL("./vnode_stale_child.ts", import.meta.url), {
      name: "vstale",
      timeoutS: 240,
      done: /stale qemu ended with its vnode/,
    }),
});

Deno.test({
  name:
    "a deep data dir's vnode starts whatever another local user put in /tmp (root, qemu, netns)",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  fn: () =>
    runChildInNetns(new URL("./vnode_qmp_child.ts", import.meta.url), {
      name: "vqmp",
      timeoutS: 120,
      done: /starts whatever other users put in \/tmp/,
    }),
});

Deno.test({
  name:
    "a relative data dir's vnode starts: qemu, run in its VM's directory, gets every path whole (root, qemu, netns)",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  fn: () =>
    runChildInNetns(new URL("./vnode_relative_child.ts", import.meta.url), {
      name: "vrel",
      timeoutS: 120,
      done: /a relative data dir's vnode starts/,
    }),
});
