// The README's newcomer path (root, qemu): `netroot demo` boots one virtual node end to end in a
// private namespace, shows its console and timeline, and removes everything it made.
import assert from "node:assert/strict";

Deno.test({
  name: "e2e: `netroot demo` boots a virtual node to the image's init, then cleans up",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  async fn() {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../../main.ts", import.meta.url).pathname, "demo"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(300_000),
    }).spawn();
    const out = await child.output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, text.slice(-3000));
    assert.match(text, /netroot-init: handover to \/sbin\/init/);
    assert.match(text, /IMAGE-BOOT-OK/);
    assert.match(text, /init\.handover/); // the timeline is printed
    assert.match(text, /namespace, server and virtual node removed/);
    // its namespace (named after its PID; other e2e tests may run beside it) is gone
    assert.deepEqual(netns().filter((n) => n.startsWith(`nr-e2e-${child.pid}-`)), []);
  },
});

function netns(): string[] {
  const o = new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped" }).outputSync();
  return new TextDecoder().decode(o.stdout).split("\n").map((l) => l.split(" ")[0]).filter(Boolean);
}
