// A qemu left running by a server that died (kill -9) holds its tap, its disks and its memory;
// the next server ends it when it starts the VM. Removing the vnode first (that server has no boot
// bridge, so it started nothing) left it running for good, on disk files deleted under it.
import assert from "node:assert/strict";

Deno.test({
  name: "a vnode removed after a server crash takes its stale qemu with it (root, qemu, netns)",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  async fn() {
    const ns = `nr-vstale-${Deno.pid}`;
    const dir = await Deno.makeTempDir({ prefix: "nr-vnode-stale-" });
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
          new URL("./vnode_stale_child.ts", import.meta.url).pathname,
          dir,
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      console.log(text.trim());
      assert.equal(out.code, 0, text);
      assert.match(text, /stale qemu ended with its vnode/);
    } finally {
      await ip("netns", "del", ns);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
