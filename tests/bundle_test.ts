// The release path proven here: `deno bundle` of main.ts is one JS file that runs the server with
// only the deno binary (no config, no import map, empty DENO_DIR).
import assert from "node:assert/strict";

Deno.test("the server bundle (deno bundle main.ts) serves the API from one file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-bundle-" });
  let child: Deno.ChildProcess | undefined;
  try {
    const js = `${dir}/netroot.js`;
    const b = await new Deno.Command(Deno.execPath(), {
      args: [
        "bundle",
        "--quiet",
        "--platform",
        "deno",
        "-o",
        js,
        new URL("../main.ts", import.meta.url).pathname,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(b.success, new TextDecoder().decode(b.stderr));
    assert.doesNotMatch(await Deno.readTextFile(js), /^import .*from "(npm:|jsr:|https?:)/m);
    child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--no-config",
        js,
        "serve",
        "--data",
        `${dir}/data`,
        "--http",
        "127.0.0.1:0",
      ],
      env: { DENO_DIR: `${dir}/deno-dir`, NO_COLOR: "1" },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    // The log line `http listening … port=N` tells the port the kernel gave.
    let log = "";
    const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let port: string | undefined;
    while (!port) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`server exited:\n${log}`);
      log += value;
      port = /http listening .*port=(\d+)/.exec(log)?.[1];
    }
    const health = await (await fetch(`http://127.0.0.1:${port}/api/v1/health`)).json();
    assert.equal(health.ok, true);
    child.kill("SIGTERM");
    assert.equal((await child.status).code, 0);
    await reader.cancel();
  } finally {
    try {
      child?.kill("SIGKILL");
    } catch { /* exited */ }
    await Deno.remove(dir, { recursive: true });
  }
});
