// DHCP DISCOVER→OFFER→REQUEST→ACK per second: netroot vs dnsmasq, same load generator
// (netboot/storm.ts DhcpClientPort, broadcast flag set so both servers broadcast their replies).
// Both servers run at once, each behind its own veth pair between two network namespaces, and the
// load alternates between them round by round (A B A B…): load from elsewhere hits both alike.
// Each round: fresh MACs (netroot registers each as a node), then the same MACs again (existing
// reservations/leases). Needs root. Then the DHCP decoder fuzz with --fuzz packets.
//   deno run -A bench/dhcp_bench.ts [--quick] [--clients N] [--rounds R] [--window W] [--fuzz N]
import { parseArgs } from "node:util";
import { DhcpClientPort, macFor } from "../netboot/storm.ts";
import { ratio } from "./ratio.ts";

const self = new URL(import.meta.url).pathname;
const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean" },
    clients: { type: "string" },
    rounds: { type: "string" },
    offset: { type: "string", default: "0" },
    window: { type: "string", default: "32" },
    role: { type: "string" },
    device: { type: "string" },
    data: { type: "string" },
    fuzz: { type: "string" },
  },
});
const clients = Number(a.clients ?? (a.quick ? 500 : 2000)), window = Number(a.window);
const rounds = Number(a.rounds ?? (a.quick ? 3 : 5));

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
      const i = Number(a.offset) + next++;
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
  // Orchestrator: namespace pairs A (netroot) and B (dnsmasq), same addresses in each.
  const id = Deno.pid;
  const ns = (side: string, end: string) => `nr-dhcpb-${side}${end}-${id}`;
  const dir = await Deno.makeTempDir({ prefix: "nr-dhcpb-" });
  const inNs = (n: string, c: string[]) => ["ip", "netns", "exec", n, ...c];
  const load = async (side: "a" | "b", label: string, round: number) => {
    const out = await sh(inNs(ns(side, "c"), [
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
      "--offset",
      String(round * clients),
      "--window",
      String(window),
    ]));
    const r = JSON.parse(out.trim().split("\n").at(-1)!);
    const rate = r.done / r.seconds;
    console.log(
      `  ${label.padEnd(30)} ${r.done}/${clients} ok, ${r.failed} failed, ${
        r.seconds.toFixed(2)
      } s, ${rate.toFixed(0)} leases/s (${r.retransmits} retransmits)`,
    );
    return rate;
  };
  let child: Deno.ChildProcess | undefined;
  let dnsmasqPid = 0;
  try {
    for (const side of ["a", "b"]) {
      const srv = ns(side, "s"), cli = ns(side, "c");
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
    }
    console.log(
      `DHCP lease exchanges (DISCOVER→ACK), ${clients} clients per run, ${window} in flight, ` +
        `${rounds} alternated rounds`,
    );

    child = new Deno.Command("ip", {
      args: inNs(ns("a", "s"), [
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
    await sh(inNs(ns("b", "s"), ["dnsmasq", "-C", `${dir}/dnsmasq.conf`]));
    dnsmasqPid = Number(await Deno.readTextFile(`${dir}/dnsmasq.pid`));

    // A warm-up round for each (its own MACs, not counted): JIT, SQLite statement caches.
    console.log("warm-up");
    await load("a", "netroot, warm-up", rounds);
    await load("b", "dnsmasq, warm-up", rounds);
    const newRatios: number[] = [], knownRatios: number[] = [];
    for (let r = 0; r < rounds; r++) {
      console.log(`round ${r + 1}`);
      const n1 = await load("a", "netroot, new MACs (register)", r);
      const d1 = await load("b", "dnsmasq, new MACs", r);
      const n2 = await load("a", "netroot, known MACs", r);
      const d2 = await load("b", "dnsmasq, known MACs", r);
      newRatios.push(n1 / d1), knownRatios.push(n2 / d2);
    }
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
    const span = (xs: number[]) =>
      `median ${median(xs).toFixed(2)}× (min ${Math.min(...xs).toFixed(2)}, max ${
        Math.max(...xs).toFixed(2)
      })`;
    console.log(`ratio netroot/dnsmasq, new MACs:   ${span(newRatios)}`);
    console.log(`ratio netroot/dnsmasq, known MACs: ${span(knownRatios)}`);
    // The floor guards against regressions (the target, 1.2×, is what the full run shows).
    ratio("dhcp.new-macs", median(newRatios), 1.0);

    // The decoder fuzz, 10× the test suite's default run.
    const fuzz = await new Deno.Command(Deno.execPath(), {
      args: ["test", "-A", new URL("../tests/dhcp_fuzz_test.ts", import.meta.url).pathname],
      env: { NETROOT_FUZZ_N: a.fuzz ?? (a.quick ? "100000" : "1000000") },
      stderr: "null",
    }).output();
    const line = new TextDecoder().decode(fuzz.stdout).split("\n").find((l) =>
      l.startsWith("fuzz:")
    );
    console.log(
      `${line ?? "fuzz: no result"}: ${fuzz.success ? "no exception escaped" : "FAILED"}`,
    );
    if (!fuzz.success) Deno.exit(1);
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
    for (const side of ["a", "b"]) {
      for (const end of ["s", "c"]) await sh(["ip", "netns", "del", ns(side, end)], false);
    }
    await Deno.remove(dir, { recursive: true });
  }
}
