// The node entry bundles without server code and starts without /proc (root: mount namespace).
import assert from "node:assert/strict";

const entry = new URL("../overlay/node_main.ts", import.meta.url).pathname;
const dec = new TextDecoder();

Deno.test("node entry (root, mount ns): bundle has no server imports and starts without /proc", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-entry-" });
  try {
    const js = `${dir}/node.js`;
    const b = await new Deno.Command(Deno.execPath(), {
      args: ["bundle", "--quiet", "--platform", "deno", "-o", js, entry],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(b.success, dec.decode(b.stderr));
    const text = await Deno.readTextFile(js);
    // (a string holding a worker's source may mention node:crypto: only real imports count)
    assert.doesNotMatch(text, /^import .*from "(node:|npm:)|hono/m);
    // What the init itself holds (120.2 kB with the hybrid copy's immutable-flag handling): a
    // bound that server code pulled in (Hono alone is larger) or a runaway dependency passes.
    assert.ok(text.length < 128_000, `bundle is ${text.length} bytes`);

    // As the kernel's /init sees it: /proc not mounted (an empty tmpfs over it), not PID 1 here.
    const o = await new Deno.Command("unshare", {
      args: [
        "--mount",
        "sh",
        "-c",
        `mount -t tmpfs none /proc && "$0" run -A --no-config "$1" init --help && ` +
        `"$0" run -A --no-config "$1" init; echo "rc=$?"`,
        Deno.execPath(),
        js,
      ],
      stdout: "piped",
      stderr: "piped",
      env: { DENO_DIR: `${dir}/deno-dir`, NO_COLOR: "1" },
    }).output();
    const out = dec.decode(o.stdout) + dec.decode(o.stderr);
    assert.match(out, /^usage: netroot init$/m, out);
    assert.match(out, /refusing to run: not PID 1/, out);
    assert.match(out, /^rc=2$/m, out);
    assert.doesNotMatch(out, /panicked/, out);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
