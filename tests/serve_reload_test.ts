// The config file as a service uses it (root: network namespaces, port 67): a real `netroot serve`
// process started with --config, a real DHCP client (busybox udhcpc) getting a lease from the
// file's range; the file edited (new range, new HTTP port), SIGHUP; the next client gets an address
// from the new range, and the log and the events name http.port as needing a restart.
// Also --check-config: the effective config, or one line naming the bad key.
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { type Link, makeLink, parseEnv, sh, udhcpcScript } from "./dhcp_netns.ts";

const mainTs = new URL("../main.ts", import.meta.url).pathname;

async function netroot(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", mainTs, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: o.code, out: d.decode(o.stdout), err: d.decode(o.stderr) };
}

Deno.test("serve --check-config: prints the effective config, or one line naming the bad key", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-checkcfg-" });
  try {
    const f = join(dir, "config.json");
    await Deno.writeTextFile(
      f,
      JSON.stringify({
        dhcp: { range: "10.9.0.100-10.9.0.200", leaseSeconds: 600 },
        logFormat: "json",
        http: { port: 9001 },
      }),
    );
    const ok = await netroot(["serve", "--check-config", "--config", f, "--lease-time", "900"]);
    assert.equal(ok.code, 0, ok.err);
    const cfg = JSON.parse(ok.out);
    assert.deepEqual(cfg.dhcp.range, { start: "10.9.0.100", end: "10.9.0.200" });
    assert.equal(cfg.dhcp.mode, "full");
    assert.equal(cfg.dhcp.leaseSeconds, 900); // the flag over the file
    assert.equal(cfg.logFormat, "json");
    assert.equal(cfg.http.port, 9001);
    for (
      const [file, key] of [
        [{ dhcp: { leaseSeconds: 5 } }, /config key dhcp\.leaseSeconds: --lease-time expects/],
        [{ dhcp: { rnage: "x" } }, /config key dhcp\.rnage is unknown/],
        [{ tftp: { port: "69" } }, /config key tftp\.port: --tftp-port expects a port/],
        [{ nfs: { version: 5 } }, /config key nfs\.version: --nfs-version must be one of 3, 4/],
      ] as const
    ) {
      await Deno.writeTextFile(f, JSON.stringify(file));
      const bad = await netroot(["serve", "--check-config", "--config", f]);
      assert.equal(bad.code, 1);
      assert.equal(bad.out, "");
      assert.equal(bad.err.trim().split("\n").length, 1, bad.err);
      assert.match(bad.err, key);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const udhcpc = (hook: string, iface: string) => [
  "/bin/busybox",
  "udhcpc",
  "-i",
  iface,
  "-n",
  "-q",
  "-f",
  "-t",
  "4",
  "-T",
  "2",
  "-s",
  hook,
];

/** `netroot serve --config FILE` in the link's server namespace, its log collected. */
function serveIn(link: Link, configFile: string) {
  const child = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      link.srvNs,
      Deno.execPath(),
      "run",
      "-A",
      mainTs,
      "serve",
      "--config",
      configFile,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const served = { child, log: "", exited: false, pump: Promise.resolve(), waitFor };
  served.pump = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (t) => void (served.log += t) }),
  ).finally(() => served.exited = true);
  async function waitFor(re: RegExp) {
    const deadline = Date.now() + 60_000;
    while (!re.test(served.log)) {
      if (served.exited) throw new Error(`serve exited; log:\n${served.log}`);
      if (Date.now() > deadline) throw new Error(`no ${re} in the log:\n${served.log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return served;
}

/** Stops a serve child that a failed test left running (by its PID). */
async function kill(child: Deno.ChildProcess | undefined) {
  if (!child) return;
  try {
    child.kill("SIGKILL");
  } catch { /* already exited */ }
  await child.status;
}

/** A lease for `mac` on the link's client side (busybox udhcpc), from its bound.env. */
async function leaseFor(link: Link, dir: string, mac: string) {
  await sh(["ip", "-n", link.cliNs, "link", "set", link.cliIf, "address", mac]);
  await Deno.remove(join(dir, "bound.env")).catch(() => {});
  await sh(link.inCli(udhcpc(await udhcpcScript(dir), link.cliIf)));
  return parseEnv(await Deno.readTextFile(join(dir, "bound.env")));
}

Deno.test("serve: SIGHUP takes a new DHCP range from the config file and names restart-only keys", async () => {
  const link = await makeLink("hup", "10.83.1");
  const dir = await Deno.makeTempDir({ prefix: "nr-hup-" });
  let child: Deno.ChildProcess | undefined;
  try {
    const f = join(dir, "config.json");
    const config = (range: string, port: number, reserve?: string) =>
      JSON.stringify({
        dataDir: join(dir, "data"),
        interface: link.srvIf,
        http: { port },
        dhcp: { mode: "full", range, leaseSeconds: 600 },
        ...(reserve ? { nfs: { reserve } } : {}),
        ra: false,
        events: { maxAgeDays: 30 },
      });
    await Deno.writeTextFile(f, config("10.83.1.100-10.83.1.110", 18080));
    const served = serveIn(link, f);
    child = served.child;
    const waitFor = served.waitFor;
    await waitFor(/dhcp.*listening|listening.*dhcp/i);
    const lease = (mac: string) => leaseFor(link, dir, mac);
    assert.equal((await lease("02:00:00:00:83:01")).ip, "10.83.1.100");

    await Deno.writeTextFile(f, config("10.83.1.150-10.83.1.160", 18081, "2G"));
    child.kill("SIGHUP");
    await waitFor(/config changes need a restart[^\n]*http\.port/);
    assert.match(
      served.log,
      /config reloaded[^\n]*dhcp\.range\.end dhcp\.range\.start nfs\.reserve/,
    );
    await waitFor(/(dhcp.*listening|listening.*dhcp)[\s\S]*(dhcp.*listening|listening.*dhcp)/i);
    const second = await lease("02:00:00:00:83:02");
    assert.equal(second.ip, "10.83.1.150");
    assert.equal(second.lease, "600");

    // A broken file keeps the running config (and says so).
    await Deno.writeTextFile(f, "{ not json");
    child.kill("SIGHUP");
    await waitFor(/config reload failed/);

    child.kill("SIGTERM");
    assert.equal((await child.status).code, 0);
    await served.pump;
    child = undefined;
    const db = new DatabaseSync(join(dir, "data", "netroot.db"), { readOnly: true });
    try {
      const rows = db.prepare(
        "SELECT kind, detail FROM events WHERE kind LIKE 'server.reload%' ORDER BY id",
      ).all() as { kind: string; detail: string }[];
      assert.deepEqual(rows.map((r) => r.kind), ["server.reload", "server.reload-failed"]);
      assert.deepEqual(JSON.parse(rows[0].detail).restart, ["http.port"]);
    } finally {
      db.close();
    }
  } finally {
    await kill(child);
    await link.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("serve: a SIGHUP whose DHCP service cannot start keeps the running one serving", async () => {
  // The admin turns a full-DHCP server into a proxy while another PXE tool holds UDP 4011 on the
  // boot network. Before, the reload closed the running DHCP service, failed to open the new one
  // and logged that the running config stays: no node got an address until a restart.
  const link = await makeLink("hupfail", "10.83.2");
  const dir = await Deno.makeTempDir({ prefix: "nr-hupfail-" });
  let child: Deno.ChildProcess | undefined, holder: Deno.ChildProcess | undefined;
  try {
    const f = join(dir, "config.json");
    const config = (dhcp: Record<string, unknown>) =>
      JSON.stringify({
        dataDir: join(dir, "data"),
        interface: link.srvIf,
        http: { port: 18082 },
        dhcp: { leaseSeconds: 600, ...dhcp },
        ra: false,
      });
    await Deno.writeTextFile(f, config({ mode: "full", range: "10.83.2.100-10.83.2.110" }));
    const served = serveIn(link, f);
    child = served.child;
    await served.waitFor(/dhcp.*listening|listening.*dhcp/i);
    assert.equal((await leaseFor(link, dir, "02:00:00:00:83:11")).ip, "10.83.2.100");

    holder = new Deno.Command("ip", {
      args: ["netns", "exec", link.srvNs, "socat", "-u", "UDP4-RECV:4011,reuseaddr=0", "-"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    await waitForPort(link, 4011);
    await Deno.writeTextFile(f, config({ mode: "proxy" }));
    child.kill("SIGHUP");
    await served.waitFor(/config reload failed[^\n]*cannot open DHCP sockets/);
    // The full service still answers, from its range.
    assert.equal((await leaseFor(link, dir, "02:00:00:00:83:12")).ip, "10.83.2.101");

    child.kill("SIGTERM");
    assert.equal((await child.status).code, 0);
    await served.pump;
    child = undefined;
  } finally {
    await kill(child);
    await kill(holder);
    await link.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

/** Waits until something in the server namespace listens on UDP `port`. */
async function waitForPort(link: Link, port: number) {
  for (let i = 0; i < 100; i++) {
    if ((await sh(link.inSrv(["ss", "-Hlun", `sport = :${port}`]))).trim()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on UDP ${port}`);
}
