// A test's child script run as root in a network namespace of its own (made and removed here),
// with a temporary directory it gets as its argument: for tests that start qemu, taps and bridges
// (nothing touches the host's network), bounded by `timeout`.
import assert from "node:assert/strict";

/** Runs `child` (a module URL) in a fresh namespace; asserts it exited 0 and printed `done`. */
export async function runChildInNetns(
  child: URL,
  opts: { name: string; timeoutS: number; done: RegExp; quiet?: boolean },
): Promise<void> {
  const ns = `nr-${opts.name}-${Deno.pid}`;
  const dir = await Deno.makeTempDir({ prefix: `nr-${opts.name}-` });
  const ip = (...a: string[]) =>
    new Deno.Command("ip", { args: a, stdout: "null", stderr: "null" }).output();
  assert.ok((await ip("netns", "add", ns)).success);
  try {
    await ip("-n", ns, "link", "set", "lo", "up");
    const out = await new Deno.Command("timeout", {
      args: [
        ...[String(opts.timeoutS), "ip", "netns", "exec", ns, Deno.execPath(), "run", "-A"],
        child.pathname,
        dir,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    if (!opts.quiet) console.log(text.trim());
    assert.equal(out.code, 0, text);
    assert.match(text, opts.done);
  } finally {
    await ip("netns", "del", ns);
    await Deno.remove(dir, { recursive: true });
  }
}
