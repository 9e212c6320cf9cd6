// `netroot serve` and signals: a SIGTERM during start-up or while serving closes the services and
// exits 0 (not killed half-way with children left behind). Real process, loopback port 0.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const mainTs = fileURLToPath(new URL("../main.ts", import.meta.url));

/** Runs serve, sends SIGTERM once `trigger` shows up on stderr; returns exit status and log. */
async function serveUntil(trigger: RegExp): Promise<{ status: Deno.CommandStatus; log: string }> {
  const data = await Deno.makeTempDir({ prefix: "nr-serve-signal-" });
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", mainTs, "serve", "--data", data, "--http", "127.0.0.1:0"],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  let sent = false;
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  try {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      log += chunk;
      if (!sent && trigger.test(log)) {
        child.kill("SIGTERM");
        sent = true;
      }
    }
    return { status: await child.status, log };
  } finally {
    clearTimeout(timer);
    await Deno.remove(data, { recursive: true });
  }
}

Deno.test("serve: SIGTERM while serving closes the services and exits 0", async () => {
  const { status, log } = await serveUntil(/http listening/);
  assert.equal(status.signal, null, log);
  assert.equal(status.code, 0, log);
  assert.match(log, /INFO serve stopped/);
});

Deno.test("serve: SIGTERM during start-up is not fatal: start finishes, then a clean stop", async () => {
  const { status, log } = await serveUntil(/INFO serve starting/);
  assert.equal(status.signal, null, `killed by the signal during start-up:\n${log}`);
  assert.equal(status.code, 0, log);
  assert.match(log, /INFO serve stopped/);
});
