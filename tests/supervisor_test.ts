// The process supervisor (ganesha.nfsd and qemu run under it), with real processes: stop is
// SIGTERM then SIGKILL after the grace; an exit nobody asked for is reported, a stop is not; a
// start waits for readiness and tells an early exit from a slow start; a copy left by a dead
// server is stopped only when its pid file and command line say it is ours; a crash is followed
// by a restart, a stop by none.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { StartFailure, startProcess, stopStale, Supervisor } from "../src/supervisor.ts";

const alive = (pid: number) => existsSync(`/proc/${pid}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("stop: SIGTERM first; a process ignoring it is killed after the grace", async () => {
  const polite = startProcess({ argv: ["sleep", "30"], stopGraceMs: 5000 });
  let t0 = performance.now();
  let st = await polite.stop();
  assert.equal(st.signal, "SIGTERM");
  assert.ok(performance.now() - t0 < 2000);
  assert.ok(polite.stopping);

  // An ignored signal stays ignored across exec: sleep itself ignores SIGTERM.
  const stubborn = startProcess({
    argv: ["sh", "-c", "trap '' TERM; exec sleep 30"],
    stopGraceMs: 300,
  });
  await sleep(100); // let the trap be set before the signal
  t0 = performance.now();
  st = await stubborn.stop();
  const ms = performance.now() - t0;
  assert.equal(st.signal, "SIGKILL");
  assert.ok(ms >= 250 && ms < 3000, `killed after the grace, not before (${ms} ms)`);
  assert.ok(!alive(stubborn.pid));
});

Deno.test("exit watching: an unrequested exit is reported with its status, a stop is not", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-sup-" });
  try {
    const log = join(dir, "err.log");
    await Deno.writeTextFile(log, "before\n");
    const crash = startProcess({
      argv: ["sh", "-c", "echo oops >&2; exit 3"],
      stderrFile: log,
      stopGraceMs: 1000,
    });
    const seen = Promise.withResolvers<Deno.CommandStatus>();
    crash.onExit(seen.resolve);
    assert.equal((await seen.promise).code, 3);
    await sleep(50); // the stderr copy finishes after the exit
    assert.equal(await Deno.readTextFile(log), "before\noops\n", "stderr appended to its log");

    const stopped = startProcess({ argv: ["sleep", "30"], stopGraceMs: 1000 });
    let reported = false;
    stopped.onExit(() => reported = true);
    await stopped.stop();
    await sleep(20);
    assert.equal(reported, false);
    assert.equal(stopped.signal("SIGTERM"), false, "a gone process cannot be signalled");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("waitReady: ready, early exit and a slow start are told apart", async () => {
  const p = startProcess({ argv: ["sleep", "30"], stopGraceMs: 1000 });
  let n = 0;
  await p.waitReady(() => ++n >= 3, 5000, 10);
  assert.equal(n, 3);
  const e = await p.waitReady(
    () => {
      throw new Error("no socket yet");
    },
    100,
    10,
  ).catch((e) => e);
  assert.ok(e instanceof StartFailure && !e.exit);
  assert.match((e.cause as Error).message, /no socket yet/);
  assert.ok(alive(p.pid), "a slow start is left running for the caller to decide");
  await p.stop();

  const early = startProcess({ argv: ["sh", "-c", "exit 7"], stopGraceMs: 1000 });
  const f = await early.waitReady(() => false, 5000, 10).catch((e) => e);
  assert.ok(f instanceof StartFailure);
  assert.equal(f.exit?.code, 7);
});

Deno.test("stopStale: only the process the pid file names and `owns` accepts is stopped", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-sup-" });
  const pidFile = join(dir, "x.pid");
  const marker = join(dir, "marker");
  // The marker is in the command line (as ganesha's config or qemu's QMP socket are).
  await Deno.writeTextFile(marker, "");
  const ours = new Deno.Command("tail", { args: ["-f", marker] }).spawn();
  const other = new Deno.Command("sleep", { args: ["31"] }).spawn();
  try {
    await sleep(100);
    const owns = (argv: string[]) => argv.some((a) => a.includes(marker));
    // Not ours (a PID reused by some other program): untouched, the stale pid file goes.
    await Deno.writeTextFile(pidFile, `${other.pid}\n`);
    assert.equal(await stopStale(pidFile, owns, 1000), undefined);
    assert.ok(alive(other.pid));
    assert.ok(!existsSync(pidFile));

    await Deno.writeTextFile(pidFile, `${ours.pid}\n`);
    const found: number[] = [];
    assert.equal(await stopStale(pidFile, owns, 1000, (pid) => found.push(pid)), ours.pid);
    assert.deepEqual(found, [ours.pid]);
    assert.equal((await ours.status).signal, "SIGTERM");
    assert.ok(!existsSync(pidFile));
    // No pid file, garbage or PID 1: nothing happens.
    assert.equal(await stopStale(pidFile, () => true, 1000), undefined);
    await Deno.writeTextFile(pidFile, "1\n");
    assert.equal(await stopStale(pidFile, () => true, 1000), undefined);
  } finally {
    for (const c of [ours, other]) {
      try {
        c.kill("SIGKILL");
      } catch { /* gone */ }
      await c.status;
    }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Supervisor: a crash is restarted with backoff; stop ends it and restarts nothing", async () => {
  const exits: [number, number][] = [];
  const starts: number[] = [];
  const sup = new Supervisor({
    // The first two runs crash at once after they are ready; the third keeps running.
    spawn: () =>
      startProcess({
        argv: ["sh", "-c", starts.length < 2 ? "sleep 0.2; exit 9" : "exec sleep 30"],
        stopGraceMs: 1000,
      }),
    ready: async (p) => {
      await p.waitReady(() => true, 1000, 10);
      starts.push(p.pid);
    },
    onExit: (s, inMs) => exits.push([s.code, inMs]),
    onRestartFailed: (e) => assert.fail(e),
  }, { firstMs: 50, maxMs: 80 });
  await sup.start();
  for (let i = 0; i < 100 && starts.length < 3; i++) await sleep(50);
  assert.equal(starts.length, 3);
  // Each crash came after a successful start, which resets the backoff.
  assert.deepEqual(exits, [[9, 50], [9, 50]]);
  const last = sup.process!;
  assert.equal(last.pid, starts[2]);
  await sup.stop();
  assert.ok(!alive(last.pid));
  await sleep(200);
  assert.equal(starts.length, 3, "no restart after stop");
  assert.equal(exits.length, 2);
});

Deno.test("Supervisor: a start that never gets ready is stopped and fails", async () => {
  let pid = 0;
  const sup = new Supervisor({
    spawn: () => {
      const p = startProcess({ argv: ["sleep", "30"], stopGraceMs: 1000 });
      pid = p.pid;
      return p;
    },
    ready: (p) => p.waitReady(() => false, 100, 10),
    onExit: () => assert.fail("not a crash"),
    onRestartFailed: () => {},
  });
  await assert.rejects(sup.start(), StartFailure);
  assert.ok(!alive(pid));
  assert.equal(sup.process, undefined);
});

Deno.test("a child's stderr log is bounded: a chatty child fills its file and one older, no more", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-sup-log-" });
  try {
    const log = join(dir, "qemu.log");
    // Older runs' lines, then a run that writes 3 MiB to stderr (a guest that makes qemu warn
    // in a loop), in chunks of every size.
    await Deno.writeTextFile(log, "an earlier run\n");
    const p = startProcess({
      argv: [
        "sh",
        "-c",
        "yes 'warning: something the guest did' | head -c 3145728 >&2; echo last >&2",
      ],
      stderrFile: log,
      stopGraceMs: 1000,
    });
    await p.exited;
    await sleep(100); // the last chunk's write
    const size = (f: string) => Deno.statSync(f).size;
    // (before: one file of 3 MiB and growing with every run, for ever)
    assert.ok(size(log) <= 1 << 20, `qemu.log: ${size(log)} bytes`);
    assert.ok(size(`${log}.1`) <= 1 << 20, `qemu.log.1: ${size(`${log}.1`)} bytes`);
    assert.ok(Deno.readTextFileSync(log).endsWith("last\n"), "the newest lines are kept");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
