// A virtual node's serial console log is bounded while its VM runs, not only at its next start:
// qemu appends whatever the guest writes, and a VM runs for months (root on the node can write
// without end). Before, console.log grew until the data dir's disk was full.
import assert from "node:assert/strict";

Deno.test({
  name: "a running vnode's serial log is rotated past its bound (root, qemu, netns)",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  async fn() {
    const ns = `nr-vcons-${Deno.pid}`;
    const dir = await Deno.makeTempDir({ prefix: "nr-vnode-console-" });
    const ip = (...a: string[]) =>
      new Deno.Command("ip", { args: a, stdout: "null", stderr: "null" }).output();
    assert.ok((await ip("netns", "add", ns)).success);
    try {
      await ip("-n", ns, "link", "set", "lo", "up");
      const out = await new Deno.Command("timeout", {
        args: [
          "240",
          "ip",
          "netns",
          "exec",
          ns,
          Deno.execPath(),
          "run",
          "-A",
          new URL("./vnode_console_bound_child.ts", import.meta.url).pathname,
          dir,
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      console.log(text.trim());
      assert.equal(out.code, 0, text);
      assert.match(text, /serial log bounded while running/);
    } finally {
      await ip("netns", "del", ns);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
