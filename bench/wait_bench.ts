// `netroot node wait` on 500 nodes: what waiting costs (target < 1 % of one core while waiting).
// A real server (API over HTTP, SQLite registry) and the real CLI as a child process. Two phases:
//   quiet: nothing changes for `--seconds`: the server's and the CLI's CPU while waiting;
//   booting: the 500 nodes go booting → booted, evenly over `--seconds` (a room booting), once
//     with a `node wait` on all of them and once without (alternated A B A B): the server's CPU
//     with the waiter over without it — the waiter's own cost — and the CLI's.
//   deno run -A bench/wait_bench.ts [--quick] [--seconds S] [--rounds R]
import process from "node:process";
import { parseArgs } from "node:util";
import { defaultConfig } from "../src/config.ts";
import { setLogSink } from "../src/log.ts";
import { buildApp, openContext } from "../src/server.ts";
import { netrootCommand } from "../src/lab/self.ts";
import { addImage } from "../tests/support/images.ts";
import { quick, ratio } from "./ratio.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: { quick: { type: "boolean" }, seconds: { type: "string" }, rounds: { type: "string" } },
});
const count = 500;
const seconds = Number(a.seconds ?? (quick ? 5 : 20));
const rounds = Number(a.rounds ?? (quick ? 1 : 3));

/** CPU time (user + system) so far, ms: this process (the server), or a child by its PID. */
function cpuMs(pid: number | "self"): number {
  if (pid === "self") {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  }
  const f = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];

setLogSink(() => {});
const dir = await Deno.makeTempDir({ prefix: "nr-wait-bench-" });
const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
const server = Deno.serve(
  { hostname: "127.0.0.1", port: 0, onListen: () => {} },
  buildApp(ctx).fetch,
);
try {
  addImage(ctx, "img");
  const names: string[] = [];
  for (let i = 0; i < count; i++) {
    const name = `w${i}`;
    ctx.nodes.add(
      `52:54:00:cc:${(i >> 8).toString(16).padStart(2, "0")}:${
        (i & 255).toString(16).padStart(2, "0")
      }`,
      { name },
    );
    names.push(name);
  }
  await ctx.nodes.deploy(names, "img", { reboot: false });
  const macs = names.map((n) => ctx.nodes.get(n).mac);
  const setAll = (state: "booting" | "off") =>
    macs.forEach((m) => ctx.nodes.setState(m, state, "bench"));

  // Waiters present: each GET /wait listens for "state" changes while it holds the request.
  let listening = 0;
  const listen = ctx.changes.addEventListener.bind(ctx.changes);
  ctx.changes.addEventListener = (type, l, o) => {
    if (type === "state") listening++;
    listen(type, l, o);
  };
  const unlisten = ctx.changes.removeEventListener.bind(ctx.changes);
  ctx.changes.removeEventListener = (type, l, o) => {
    if (type === "state") listening--;
    unlisten(type, l, o);
  };
  /** Until the CLI's request is held by the server (its start-up is not waiting). */
  const held = async () => {
    while (listening < 1) await sleep(20);
  };

  /** Starts `node wait` on all 500; resolves with its exit code and its total CPU (bash's
   *  `times` once it exits: nothing samples it meanwhile — sampling would cost the server). */
  const startWait = () => {
    const child = new Deno.Command("bash", {
      args: [
        "-c",
        '"$@"; rc=$?; times >&2; exit $rc',
        "bash",
        ...netrootCommand(),
        "node",
        "wait",
        names.join(","),
        "--timeout",
        "600",
      ],
      env: {
        NETROOT_SERVER: `http://127.0.0.1:${server.addr.port}`,
        NETROOT_TOKEN: ctx.token,
        NO_COLOR: "1",
      },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const cliPid = () =>
      Number(Deno.readTextFileSync(`/proc/${child.pid}/task/${child.pid}/children`).trim());
    return {
      cpu: () => cpuMs(cliPid()),
      done: child.output().then((o) => {
        const stderr = new TextDecoder().decode(o.stderr);
        // `times`: the shell's own user/sys, then its children's (the CLI): "0m0.120s 0m0.030s".
        const m = /(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/.exec(stderr.trim());
        const cpu = m
          ? (Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4])) * 1000
          : NaN;
        return { code: o.code, cpu, stderr };
      }),
    };
  };

  // Quiet: nothing changes, without a waiter then with one: the server's background work (its
  // monitors) is in both; the difference is the waiter's.
  setAll("booting");
  let s0 = cpuMs("self");
  await sleep(seconds * 1000);
  const quietBase = cpuMs("self") - s0;
  const w = startWait();
  await held();
  s0 = cpuMs("self");
  const c0 = w.cpu();
  await sleep(seconds * 1000);
  const quietServer = Math.max(0, cpuMs("self") - s0 - quietBase), quietCli = w.cpu() - c0;
  // Booting, with the waiter already there: it must return 0 once the last one is booted.
  const boot = async () => {
    const t0 = performance.now(), c = cpuMs("self");
    for (let i = 0; i < count; i++) {
      ctx.nodes.setState(macs[i], "booted", "bench");
      const due = t0 + ((i + 1) / count) * seconds * 1000;
      if (due - performance.now() >= 1) await sleep(due - performance.now());
    }
    return cpuMs("self") - c;
  };
  const withWaiter: number[] = [], without: number[] = [], cliCpu: number[] = [];
  let waiter = w;
  for (let r = 0; r < rounds; r++) {
    if (r > 0) {
      setAll("booting");
      waiter = startWait();
      await held();
    }
    const cliBefore = waiter.cpu();
    withWaiter.push(await boot());
    const res = await waiter.done;
    if (res.code !== 0) throw new Error(`node wait exited ${res.code}: ${res.stderr}`);
    cliCpu.push(res.cpu - cliBefore);
    setAll("booting");
    without.push(await boot());
  }
  // The answer itself (500 nodes' states as JSON, once they are there) is not waiting: measured
  // alone, a GET /wait whose nodes are all booted (answered at once), from curl.
  const answers: number[] = [];
  for (let i = 0; i < 5; i++) {
    const c0 = cpuMs("self");
    const out = await new Deno.Command("curl", {
      args: [
        "-sf",
        "-o",
        "/dev/null",
        "-H",
        `authorization: Bearer ${ctx.token}`,
        `http://127.0.0.1:${server.addr.port}/api/v1/wait?nodes=${names.join(",")}`,
      ],
    }).output();
    if (!out.success) throw new Error("GET /wait failed");
    answers.push(cpuMs("self") - c0);
  }
  const answer = median(answers);
  const pct = (ms: number) => (100 * ms) / (seconds * 1000);
  const extra = Math.max(0, median(withWaiter) - median(without) - answer);
  const ms = (x: number) => x.toFixed(0);
  console.log(`node wait on ${count} nodes, ${seconds} s phases, median of ${rounds}:`);
  console.log(
    `  quiet: the server's extra CPU with the waiter ${ms(quietServer)} ms ` +
      `(${pct(quietServer).toFixed(2)} % of a core; ${ms(quietBase)} ms without), ` +
      `CLI ${ms(quietCli)} ms (${pct(quietCli).toFixed(2)} %)`,
  );
  console.log(
    `  ${count} nodes booting: server ${ms(median(withWaiter))} ms CPU with the waiter, ` +
      `${ms(median(without))} ms without, its answer ${ms(answer)} ms → waiting costs ${
        ms(extra)
      } ms ` +
      `(${pct(extra).toFixed(2)} % of a core); CLI ${ms(median(cliCpu))} ms ` +
      `(${pct(median(cliCpu)).toFixed(2)} %)`,
  );
  const worst = Math.max(pct(quietServer + quietCli), pct(extra + median(cliCpu)));
  console.log(
    `  target: < 1 % of one core while waiting: ${worst < 1 ? "holds" : "does NOT hold"}`,
  );
  // Higher is better: 1 % over the worst phase's share (≥ 1: under the target).
  ratio("wait.500-nodes-vs-1pct", 1 / Math.max(worst, 0.01), 1.0);
} finally {
  await ctx.rebooter.close();
  await server.shutdown();
  ctx.db.close();
  await Deno.remove(dir, { recursive: true });
}
