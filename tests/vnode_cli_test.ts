// `netroot vnode …` argument checks happen before any request (the server address is unused).
import assert from "node:assert/strict";

const main = new URL("../main.ts", import.meta.url).pathname;

async function netroot(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, ...args],
    // A port nobody listens on: reaching the server would say "cannot reach".
    env: { NETROOT_SERVER: "http://127.0.0.1:9", NETROOT_TOKEN: "x", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("vnode CLI: bad input fails with a clear message before contacting the server", async () => {
  const cases: [string[], RegExp][] = [
    [["vnode", "create", "vm1", "--disk", "8X"], /bad disk size 8X/],
    [["vnode", "create", "vm1", "--disk", "8G[template=zfs]"], /unknown disk template zfs/],
    [["vnode", "create", "vm1", "--ram", "lots"], /bad RAM size lots/],
    [["vnode", "create", "vm1", "--cpus", "0"], /bad CPU count 0/],
    [["vnode", "create"], /usage: netroot vnode create NAME/],
    [["vnode", "frobnicate"], /unknown vnode command frobnicate/],
  ];
  for (const [args, re] of cases) {
    const r = await netroot(...args);
    assert.equal(r.code, 1, args.join(" "));
    assert.match(r.stderr, re);
    assert.doesNotMatch(r.stderr, /cannot reach/);
  }
  // Valid input does go to the server (and says so when it is not there).
  const r = await netroot("vnode", "create", "vm1", "--disk", "8G[template=hybrid-boot-v]");
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cannot reach the netroot server/);
  const help = await netroot("vnode", "--help");
  assert.equal(help.code, 0);
  assert.match(help.stdout, /hybrid-boot-v/);
});
