// The README's newcomer path (root, qemu), in the form an installed netroot has: `deno task bundle`
// (its own command lines, writing into a scratch dir instead of dist/), then `netroot.js demo`
// run from there, away from any checkout. It boots one virtual node end to end in a private
// namespace, shows its console and timeline, and removes everything it made.
import assert from "node:assert/strict";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";

const checkout = fileURLToPath(new URL("../../", import.meta.url));

Deno.test({
  name:
    "e2e: `netroot.js demo` from the bundle boots a virtual node to the image's init, cleans up",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nr-demo-bundle-" });
    try {
      const deno = JSON.parse(await Deno.readTextFile(`${checkout}/deno.json`));
      const bundle = await new Deno.Command("sh", {
        args: ["-c", deno.tasks.bundle.replaceAll("dist/", `${dir}/`)],
        cwd: checkout,
        env: { PATH: `${dirname(Deno.execPath())}:${Deno.env.get("PATH")}` },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(bundle.success, new TextDecoder().decode(bundle.stderr));
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--no-config", `${dir}/netroot.js`, "demo"],
        cwd: dir,
        // The checkout's download cache (CI keeps its kernel there); a fresh deno cache: the
        // bundle needs nothing from the checkout's.
        env: { NETROOT_CACHE: `${checkout}/.work`, DENO_DIR: `${dir}/deno-dir` },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(300_000),
      }).spawn();
      const out = await child.output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, text.slice(-3000));
      assert.match(text, /cached in \S*\/\.work/);
      assert.match(text, /netroot-init: handover to \/sbin\/init/);
      assert.match(text, /IMAGE-BOOT-OK/);
      assert.match(text, /init\.handover/); // the timeline is printed
      assert.match(text, /namespace, server and virtual node removed/);
      // its namespace (named after its PID; other e2e tests may run beside it) is gone
      assert.deepEqual(netns().filter((n) => n.startsWith(`nr-lab-${child.pid}-`)), []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

function netns(): string[] {
  const o = new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped" }).outputSync();
  return new TextDecoder().decode(o.stdout).split("\n").map((l) => l.split(" ")[0]).filter(Boolean);
}
