// DHCP DISCOVER→OFFER→REQUEST→ACK per second: netroot vs dnsmasq, same load generator
// (netboot/storm.ts DhcpClientPort, broadcast flag set so both servers broadcast their replies),
// same veth pair between two network namespaces. Two passes each: new MACs (netroot registers
// each as a node), then the same MACs again (existing reservations/leases). Needs root.
// Then the DHCP decoder fuzz with --fuzz packets (default 1,000,000).
//   deno run -A bench/dhcp_bench.ts [--clients N] [--window W] [--fuzz N]
import { parseArgs } from "node:util";
import { DhcpClientPort, macFor } from "../netboot/storm.ts";

const self = new URL(import.meta.url).pathname;
const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    clients: { type: "string", default: "2000" },
    window: { type: "string", default: "32" },
    role: { type: "string" },
    device: { type: "string" },
    data: { type: "string" },
    fuzz: { type: "string", default: "1000000" },
  },
});
const clients = Number(a.clients), window = Number(a.window);

async function sh(cmd: string[], ok = true): Promise<string> {
  const out = await new Deno.Command(cmd[0], { args: cmd.slice(1), stderr: "piped" }).output();
  const t = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (ok && !out.success) throw new Error(`${cmd.join(" ")}: ${t}`);
  return t;
}

if (a.role === "load") {
  // Load generator (client namespace): `window` clients in flight, each a full lease exchange.
  const port = DhcpClientPort.open(a.device!);
  let next = 0, done = 0, failed = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: window }, async () => {
    while (next < clients) {
      const i = next++;
      try {
        await port.lease({ mac: macFor(i, [0x02, 0xbe, 0x4e]), kind: "linux" }, 1000);
        done++;
      } catch {
        failed++;
      }
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  await port.close();
  console.log(JSON.stringify({ done, failed, seconds, retransmits: port.retransmits }));
  Deno.exit(0);
}

if (a.role === "netroot") {
  // netroot's DHCP service alone, with the real context (SQLite, node registry).
  const { defaultConfig } = await import("../src/config.ts");
  const { openContext } = await import("../src/server.ts");
  const { startDhcpService: startDhcp } = await import("../src/boot/services.ts");
  const { setLogLevel } = await import("../src/log.ts");
  setLogLevel("warn");
  const config = {
    ...defaultConfig(),
    dataDir: a.data!,
    interface: a.device!,
    serverIp: "10.88.0.1",
  };
  config.dhcp = {
    ...config.dhcp,
    mode: "full",
    range: { start: "10.88.1.0", end: "10.88.255.250" },
    leaseSeconds: 3600,
    // The first pass measures what a registration costs, not the limit on how many a minute.
    registerRate: 1_000_000,
    registerMax: 10_000_000,
  };
  const ctx = await openContext(config);
  ctx.nodeUrl = "http://10.88.0.1:8080";
  const svc = await startDhcp(ctx);
  console.log("READY");
  Deno.addSignalListener("SIGTERM", async () => {
    await svc.close();
    ctx.db.close();
    Deno.exit(0);
  });
} else {
  // Orchestrator.
  const id = Deno.pid;
  const srv = `nr-dhcpb-s-${id}`, cli = `nr-dhcpb-c-${id}`;
  const dir = await Deno.makeTempDir({ prefix: "nr-dhcpb-" });
  const inSrv = (c: string[]) => ["ip", "netns", "exec", srv, ...c];
  const inCli = (c: string[]) => ["ip", "netns", "exec", cli, ...c];
  const load = async (label: string) => {
    const out = await sh(inCli([
      Deno.execPath(),
      "run",
      "-A",
      self,
      "--role",
      "load",
      "--device",
      "veth-cli",
      "--clients",
      String(clients),
      "--window",
      String(window),
    ]));
    const r = JSON.parse(out.trim().split("\n").at(-1)!);
    const rate = r.done / r.seconds;
    console.log(
      `${label.padEnd(30)} ${r.done}/${clients} ok, ${r.failed} failed, ${
        r.seconds.toFixed(2)
      } s, ` +
        `${rate.toFixed(0)} leases/s (${r.retransmits} retransmits)`,
    );
    return rate;
  };
  let child: Deno.ChildProcess | undefined;
  let dnsmasqPid = 0;
  try {
    await sh(["ip", "netns", "add", srv]);
    await sh(["ip", "netns", "add", cli]);
    await sh([
      "ip",
      "-n",
      srv,
      "link",
      "add",
      "veth-srv",
      "type",
      "veth",
      "peer",
      "name",
      "veth-cli",
    ]);
    await sh(["ip", "-n", srv, "link", "set", "veth-cli", "netns", cli]);
    await sh(["ip", "-n", srv, "addr", "add", "10.88.0.1/16", "dev", "veth-srv"]);
    await sh(["ip", "-n", srv, "link", "set", "veth-srv", "up"]);
    await sh(["ip", "-n", cli, "link", "set", "veth-cli", "up"]);
    console.log(`DHCP lease exchanges (DISCOVER→ACK), ${clients} clients, ${window} in flight`);

    child = new Deno.Command("ip", {
      args: inSrv([
        Deno.execPath(),
        "run",
        "-A",
        self,
        "--role",
        "netroot",
        "--device",
        "veth-srv",
        "--data",
        `${dir}/netroot`,
      ]).slice(1),
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    for (let buf = ""; !buf.includes("READY");) {
      const { value, done } = await reader.read();
      if (done) throw new Error("netroot DHCP did not start");
      buf += value;
    }
    reader.releaseLock();
    const n1 = await load("netroot, new MACs (register)");
    const n2 = await load("netroot, known MACs");
    child.kill("SIGTERM");
    await child.status;
    child = undefined;

    await Deno.writeTextFile(
      `${dir}/dnsmasq.conf`,
      [
        "port=0",
        "user=root",
        "interface=veth-srv",
        "bind-interfaces",
        "dhcp-range=10.88.1.0,10.88.255.250,255.255.0.0,1h",
        `dhcp-leasefile=${dir}/dnsmasq.leases`,
        `pid-file=${dir}/dnsmasq.pid`,
        "no-ping",
        "dhcp-authoritative",
        "dhcp-lease-max=100000",
        "quiet-dhcp", // netroot runs with log level warn: neither logs each lease
      ].join("\n") + "\n",
    );
    await sh(inSrv(["dnsmasq", "-C", `${dir}/dnsmasq.conf`]));
    dnsmasqPid = Number(await Deno.readTextFile(`${dir}/dnsmasq.pid`));
    const d1 = await load("dnsmasq, new MACs");
    const d2 = await load("dnsmasq, known MACs");
    console.log(
      `ratio netroot/dnsmasq: new MACs ${(n1 / d1).toFixed(2)}×, known MACs ${
        (n2 / d2).toFixed(2)
      }×`,
    );

    // The decoder fuzz, 10× the test suite's default run.
    const fuzz = await new Deno.Command(Deno.execPath(), {
      args: ["test", "-A", new URL("../tests/dhcp_fuzz_test.ts", import.meta.url).pathname],
      env: { NETROOT_FUZZ_N: String(a.fuzz) },
      stderr: "null",
    }).output();
    const line = new TextDecoder().decode(fuzz.stdout).split("\n").find((l) =>
      l.startsWith("fuzz:")
    );
    console.log(
      `${line ?? "fuzz: no result"}: ${fuzz.success ? "no exception escaped" : "FAILED"}`,
    );
  } finally {
    if (child) {
      child.kill("SIGTERM");
      await child.status;
    }
    if (dnsmasqPid) {
      try {
        Deno.kill(dnsmasqPid, "SIGTERM");
      } catch { /* gone */ }
    }
    await sh(["ip", "netns", "del", srv], false);
    await sh(["ip", "netns", "del", cli], false);
    await Deno.remove(dir, { recursive: true });
  }
}
