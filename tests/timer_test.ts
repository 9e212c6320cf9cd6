// src/timer.ts: the node program's timers, and the premise they rest on (Deno's first setTimeout
// loads Node's timers polyfill; AbortSignal.timeout does not). Each case runs in a fresh deno
// process: what is loaded is per process. No root needed.
import assert from "node:assert/strict";
import { after, sleep } from "../src/timer.ts";

const timerUrl = new URL("../src/timer.ts", import.meta.url).href;

/** Runs `code` (a module) in a fresh deno with V8's function-events log; returns its output and
 *  the scripts V8 compiled. */
async function fresh(code: string): Promise<{ out: string; ms: number; scripts: string[] }> {
  const dir = await Deno.makeTempDir({ prefix: "nr-timer-" });
  try {
    const log = `${dir}/v8.log`;
    await Deno.writeTextFile(`${dir}/main.ts`, code);
    const t = performance.now();
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--no-config",
        `--v8-flags=--log-function-events,--logfile=${log},--no-logfile-per-isolate`,
        `${dir}/main.ts`,
      ],
      env: { NO_COLOR: "1" },
    }).output();
    const ms = performance.now() - t;
    const out = new TextDecoder().decode(r.stdout);
    assert.ok(r.success, new TextDecoder().decode(r.stderr));
    const scripts = (await Deno.readTextFile(log)).split("\n")
      .filter((l) => l.startsWith("script-details,")).map((l) => l.split(",")[2]);
    return { out, ms, scripts };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("premise: Deno's first setTimeout loads node:timers, after() does not", async () => {
  const set = await fresh(`setTimeout(() => console.log("fired"), 1);`);
  assert.equal(set.out, "fired\n");
  assert.ok(
    set.scripts.includes("node:timers"),
    `setTimeout no longer loads node:timers:
${set.scripts.join(" ")}
(then src/timer.ts has no reason to be: delete it and use setTimeout)`,
  );
  const ours = await fresh(`import { sleep } from "${timerUrl}";
await sleep(1);
console.log("slept");`);
  assert.equal(ours.out, "slept\n");
  assert.ok(!ours.scripts.includes("node:timers"), ours.scripts.join(" "));
});

Deno.test("sleep keeps the process alive; a cancelled after() lets it end", async () => {
  const alive = await fresh(`import { sleep } from "${timerUrl}";
await sleep(400);
console.log("woke");`);
  assert.equal(alive.out, "woke\n");
  assert.ok(alive.ms >= 400, `${alive.ms}`);
  const cancelled = await fresh(`import { after } from "${timerUrl}";
const cancel = after(30_000, () => console.log("fired"));
cancel();
console.log("cancelled");`);
  assert.equal(cancelled.out, "cancelled\n");
  assert.ok(cancelled.ms < 20_000, `${cancelled.ms}`);
});

Deno.test("after: fires once, in order of due time; cancel before and after firing", async () => {
  const seen: string[] = [];
  after(60, () => seen.push("b"));
  after(10, () => seen.push("a"));
  const cancel = after(30, () => seen.push("cancelled"));
  cancel();
  await sleep(120);
  assert.deepEqual(seen, ["a", "b"]);
  const late = after(0, () => seen.push("c"));
  await sleep(20);
  late(); // after firing: nothing to undo, no error
  assert.deepEqual(seen, ["a", "b", "c"]);
  // A negative delay is due at once, as setTimeout's.
  const t = performance.now();
  await sleep(-5);
  assert.ok(performance.now() - t < 1000);
});
