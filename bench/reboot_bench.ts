// `node reboot` of 50 booted nodes, soft first: the server's time to issue all 50 soft requests
// (API call → ssh `reboot` started for each node), target < 1 s, and the time until every node's
// sshd ran `reboot`. The nodes are one real OpenSSH sshd (tests/support/sshd.ts: a child process
// with its own config and host key, stopped at the end) listening on 50 loopback addresses, one
// per node (sshd takes 16 listen addresses at most: 4 sshds, each the host of one image), each
// node pinned to its image's host key; their `reboot` only records the request.
// Peer, measured in the same run: the same 50 `ssh … reboot` started by a shell loop (`&`), as an
// admin script would, and its time until all 50 ran.
//   deno run -A bench/reboot_bench.ts
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { setLogSink } from "../src/log.ts";
import { buildApp, openContext } from "../src/server.ts";
import { sshArgv } from "../src/nodessh.ts";
import { addImage } from "../tests/support/images.ts";
import { startSshd } from "../tests/support/sshd.ts";

const count = 50;
const runs = Number(Deno.env.get("RUNS") ?? 3); // each run starts 200 ssh sessions
const addr = (i: number) => `127.0.1.${i + 1}`;

setLogSink(() => {});
// Two machines on one: the nodes' sshds on the last CPU, the server (and what it starts, the
// peer's shell loop included) on the others; on one CPU, both share it.
const cpuCount = navigator.hardwareConcurrency;
const nodeCpus = String(cpuCount - 1);
if (cpuCount > 1) {
  const out = await new Deno.Command("taskset", {
    args: ["-a", "-p", "-c", `0-${cpuCount - 2}`, String(Deno.pid)],
    stdout: "null",
  }).output();
  if (!out.success) throw new Error("taskset failed: install util-linux");
}
const dir = await Deno.makeTempDir({ prefix: "nr-reboot-bench-" });
const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
const perSshd = 16;
const sshds = await Promise.all(
  Array.from({ length: Math.ceil(count / perSshd) }, (_, g) =>
    startSshd(ctx.ssh.key.publicKey(), {
      addresses: Array.from(
        { length: Math.min(perSshd, count - g * perSshd) },
        (_, i) => addr(g * perSshd + i),
      ),
      maxStartups: 100,
      cpus: nodeCpus,
    })),
);
const sshdOf = (i: number) => sshds[Math.floor(i / perSshd)];
const ranOnNodes = () => sshds.reduce((n, s) => n + s.reboots(), 0);
const server = Deno.serve(
  { hostname: "127.0.0.1", port: 0, onListen: () => {} },
  buildApp(ctx).fetch,
);
const url = `http://127.0.0.1:${server.addr.port}/api/v1`;
/** CPU time (user + system) of this process so far, ms: the server's own cost, whatever the
 *  load of the machine (the ssh processes it starts are not counted). */
function cpuMs(): number {
  const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) * 10; // utime, stime in 1/100 s
}
const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until every one of `count` ssh requests ran on a node or failed; returns the time since
 *  t0 and the failures (under heavy load sshd's banner can miss ssh's ConnectTimeout). */
async function until(ranBefore: number, failed: () => number, t0: number) {
  while (ranOnNodes() - ranBefore + failed() < count) {
    if (performance.now() - t0 > 600_000) {
      throw new Error(`only ${ranOnNodes() - ranBefore}/${count} reboots ran, ${failed()} failed`);
    }
    await sleep(5);
  }
  return { ran: performance.now() - t0, failed: failed() };
}

const softFailures = () =>
  (ctx.db.prepare("SELECT count(*) AS n FROM events WHERE kind = 'reboot.none'").get() as {
    n: number;
  }).n;

try {
  sshds.forEach((s, g) => {
    const image = addImage(ctx, `img${g}`);
    Deno.mkdirSync(join(ctx.data.rootfs(image), "etc/ssh"), { recursive: true });
    Deno.writeTextFileSync(
      join(ctx.data.rootfs(image), "etc/ssh/ssh_host_ed25519_key.pub"),
      s.hostKey,
    );
  });
  const names: string[] = [];
  for (let i = 0; i < count; i++) {
    const mac = `52:54:00:bb:00:${i.toString(16).padStart(2, "0")}`;
    const name = `r${i}`;
    ctx.nodes.add(mac, { name });
    ctx.nodes.configure(name, {
      "boot.probe-port": String(sshdOf(i).port),
      "reboot.soft-timeout": "600", // a loaded machine: let every ssh finish
    });
    ctx.nodes.setIp(mac, addr(i));
    await ctx.nodes.deploy([name], `img${Math.floor(i / perSshd)}`, { reboot: false });
    names.push(name);
  }
  const boot = () => names.forEach((n) => ctx.nodes.setState(ctx.nodes.get(n).mac, "booted", "up"));

  // The server's own part without HTTP: Rebooter.reboot for each node, one after the other.
  const direct = async () => {
    boot();
    const before = ranOnNodes();
    const failedBefore = softFailures();
    const c0 = cpuMs();
    const t0 = performance.now();
    for (const n of names) {
      const r = await ctx.rebooter.reboot(ctx.nodes.get(n), "bench");
      if (r.mechanism !== "ssh") throw new Error(JSON.stringify(r));
    }
    const issued = performance.now() - t0;
    const cpu = cpuMs() - c0;
    const done = await until(before, () => softFailures() - failedBefore, t0);
    names.forEach((n) => ctx.nodes.setState(ctx.nodes.get(n).mac, "off", "bench"));
    await ctx.rebooter.settled();
    return { issued, cpu, ...done };
  };
  // ours: what `node reboot r0,…,r49` does (one POST per node, 16 at a time) — and all at once.
  const ours = async (batch: number) => {
    boot();
    const before = ranOnNodes();
    const failedBefore = softFailures();
    const c0 = cpuMs();
    const t0 = performance.now();
    for (let i = 0; i < names.length; i += batch) {
      const rs = await Promise.all(
        names.slice(i, i + batch).map((n) =>
          fetch(`${url}/nodes/${n}/reboot`, {
            method: "POST",
            headers: { authorization: `Bearer ${ctx.token}` },
            body: JSON.stringify({ cause: "bench" }),
          }).then((r) => r.json())
        ),
      );
      for (const r of rs) if (r.mechanism !== "ssh") throw new Error(JSON.stringify(r));
    }
    const issued = performance.now() - t0;
    const cpu = cpuMs() - c0;
    const done = await until(before, () => softFailures() - failedBefore, t0);
    // The nodes "go down" (a new state): their follow-ups end, nothing probes during the next run.
    names.forEach((n) => ctx.nodes.setState(ctx.nodes.get(n).mac, "off", "bench"));
    await ctx.rebooter.settled();
    return { issued, cpu, ...done };
  };
  const peer = async () => {
    const before = ranOnNodes();
    const args = names.map((n, i) =>
      sshArgv({ name: n, ip: addr(i), port: sshdOf(i).port }, "reboot", {
        identity: ctx.ssh.key.privateKey,
        knownHosts: ctx.ssh.key.knownHosts,
      }).map((a) => `'${a}'`).join(" ")
    );
    const codes = join(dir, "codes");
    Deno.writeTextFileSync(codes, "");
    const script = args.map((a) => `(${a}; echo $? >> ${codes}) >/dev/null 2>&1 &`).join("\n");
    const t0 = performance.now();
    const sh = await new Deno.Command("sh", { args: ["-c", script] }).output(); // returns once all started
    if (!sh.success) throw new Error("the shell loop failed");
    const issued = performance.now() - t0;
    const failed = () =>
      Deno.readTextFileSync(codes).split("\n").filter((c) => c && c !== "0").length;
    return { issued, cpu: 0, ...await until(before, failed, t0) };
  };

  // The floor on this machine now: starting 50 ssh processes at all (`ssh -V`, exits at once).
  const floor = async () => {
    const t0 = performance.now();
    const ps = names.map(() =>
      new Deno.Command("ssh", { args: ["-V"], stdin: "null", stdout: "null", stderr: "null" })
        .spawn()
    );
    const issued = performance.now() - t0;
    await Promise.all(ps.map((p) => p.status));
    return issued;
  };
  const floors: number[] = [];
  const figs: Record<string, { issued: number[]; cpu: number[]; ran: number[]; failed: number[] }> =
    {
      "node reboot (16 requests at a time)": { issued: [], cpu: [], ran: [], failed: [] },
      "all 50 POSTs at once": { issued: [], cpu: [], ran: [], failed: [] },
      "in-process Rebooter.reboot x 50": { issued: [], cpu: [], ran: [], failed: [] },
      "peer: sh loop of 50 ssh &": { issued: [], cpu: [], ran: [], failed: [] },
    };
  for (let r = 0; r < runs; r++) {
    floors.push(await floor());
    for (const [k, f] of Object.entries(figs)) {
      const x = k.startsWith("peer")
        ? await peer()
        : k.startsWith("in-process")
        ? await direct()
        : await ours(k.startsWith("all") ? count : 16);
      f.issued.push(x.issued);
      f.ran.push(x.ran);
      f.failed.push(x.failed);
      f.cpu.push(x.cpu);
    }
  }
  const peerIssued = median(figs["peer: sh loop of 50 ssh &"].issued);
  const peerRan = median(figs["peer: sh loop of 50 ssh &"].ran);
  const load = Deno.readTextFileSync("/proc/loadavg").split(" ")[0];
  console.log(
    `soft reboot of ${count} nodes (real sshd on loopback), median of ${runs}; ` +
      `load average ${load} on ${navigator.hardwareConcurrency} cores:`,
  );
  for (const [k, f] of Object.entries(figs)) {
    const i = median(f.issued), d = median(f.ran);
    console.log(
      `  ${k.padEnd(38)} issued ${i.toFixed(0).padStart(5)} ms (ratio to peer ${
        (i / peerIssued).toFixed(2)
      }, server CPU ${median(f.cpu).toFixed(0)} ms)  all done on the nodes ${
        d.toFixed(0).padStart(5)
      } ms (ratio ${(d / peerRan).toFixed(2)}, ${Math.max(...f.failed)} ssh failed)`,
    );
  }
  const fl = median(floors);
  console.log(
    `  floor: spawning 50 ssh processes (ssh -V) takes ${fl.toFixed(0)} ms here now; issuing ` +
      `through the API costs ${
        (median(figs["node reboot (16 requests at a time)"].issued) / fl).toFixed(2)
      }× ` +
      `that (16 at a time), ${
        (median(figs["all 50 POSTs at once"].issued) / fl).toFixed(2)
      }× (all at once)`,
  );
  // The target is judged on what `node reboot r0,…,r49` does (the CLI sends 16 at a time).
  const cli = median(figs["node reboot (16 requests at a time)"].issued);
  console.log(
    `  target: node reboot issues all soft requests < 1000 ms: ${
      cli < 1000 ? "holds" : "does NOT hold"
    }`,
  );
} finally {
  await ctx.rebooter.close(); // nodes never go down here: no escalation follows
  await server.shutdown();
  for (const s of sshds) await s.stop();
  ctx.db.close();
  await Deno.remove(dir, { recursive: true });
}
