// The qemu power driver on a real virtual node (root, qemu, a private network namespace): on,
// off, cycle and status start and stop the vnode's qemu; `node reboot` keeps the QMP reset.
import assert from "node:assert/strict";

Deno.test({
  name: "qemu power driver: a vnode's qemu switched on, off, cycled (root, qemu, netns)",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  async fn() {
    const ns = `nr-power-${Deno.pid}`;
    const dir = await Deno.makeTempDir({ prefix: "nr-power-qemu-" });
    const ip = (...a: string[]) =>
      new Deno.Command("ip", { args: a, stdout: "null", stderr: "null" }).output();
    assert.ok((await ip("netns", "add", ns)).success);
    try {
      await ip("-n", ns, "link", "set", "lo", "up");
      const out = await new Deno.Command("timeout", {
        args: [
          ...["120", "ip", "netns", "exec", ns, Deno.execPath(), "run", "-A"],
          new URL("./power_qemu_child.ts", import.meta.url).pathname,
          dir,
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, text);
      assert.match(text, /qemu driver ok/);
    } finally {
      await ip("netns", "del", ns);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
