// The config file as a service uses it (root: network namespaces, port 67): a real `netroot serve`
// process started with --config, a real DHCP client (busybox udhcpc) getting a lease from the
// file's range; the file edited (new range, new HTTP port), SIGHUP; the next client gets an address
// from the new range, and the log and the events name http.port as needing a restart.
// Also --check-config: the effective config, or one line naming the bad key.
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { makeLink, parseEnv, sh, udhcpcScript } from "./dhcp_netns.ts";

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

Deno.test("serve: SIGHUP takes a new DHCP range from the config file and names restart-only keys", async () => {
  const link = await makeLink("hup", "10.83.1");
  const dir = await Deno.makeTempDir({ prefix: "nr-hup-" });
  let child: Deno.ChildProcess | undefined;
  let log = "";
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
    child = new Deno.Command("ip", {
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
        f,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let exited = false;
    const pump = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({ write: (t) => void (log += t) }),
    ).finally(() => exited = true);
    const waitFor = async (re: RegExp) => {
      const deadline = Date.now() + 60_000;
      while (!re.test(log)) {
        if (exited) throw new Error(`serve exited; log:\n${log}`);
        if (Date.now() > deadline) throw new Error(`no ${re} in the log:\n${log}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    await waitFor(/dhcp.*listening|listening.*dhcp/i);
    const hook = await udhcpcScript(dir);
    const lease = async (mac: string) => {
      await sh(["ip", "-n", link.cliNs, "link", "set", link.cliIf, "address", mac]);
      await Deno.remove(join(dir, "bound.env")).catch(() => {});
      await sh(link.inCli(udhcpc(hook, link.cliIf)));
      return parseEnv(await Deno.readTextFile(join(dir, "bound.env")));
    };
    assert.equal((await lease("02:00:00:00:83:01")).ip, "10.83.1.100");

    await Deno.writeTextFile(f, config("10.83.1.150-10.83.1.160", 18081, "2G"));
    child.kill("SIGHUP");
    await waitFor(/config changes need a restart[^\n]*http\.port/);
    assert.match(log, /config reloaded[^\n]*dhcp\.range\.end dhcp\.range\.start nfs\.reserve/);
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
    await pump;
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
    if (child) {
      try {
        child.kill("SIGKILL");
      } catch { /* already exited */ }
      await child.status;
    }
    await link.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
