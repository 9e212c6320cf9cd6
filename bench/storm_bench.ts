// A boot storm of 1,000 machines never seen before, against a real `netroot serve`: each client
// does DHCP as a BIOS PXE ROM, TFTP of undionly.kpxe, DHCP as iPXE, HTTP of its script, then HTTP
// of the kernel and the netroot initramfs (netboot/storm.ts, `netroot bench storm`). The peer is
// the link: the clients sit behind a veth whose server→client direction is shaped to `--rate`
// (tc htb), so the best possible wall time is bytes / rate. Figures: the storm's wall time over
// that limit (target ≤ 1.2×), failures (target 0), and the server's RSS sampled during the storm
// (target ≤ 256 MB). Needs root (namespaces, tc) and the Debian kernel of the tests' cache.
//   deno run -A bench/storm_bench.ts [--quick] [--clients N] [--rate 1gbit]
import { parseArgs } from "node:util";
import { join } from "node:path";
import { startLab } from "../src/lab/lab.ts";
import { netrootCommand } from "../src/lab/self.ts";
import { debianKernel } from "../tests/support/kernel.ts";
import { buildTestImage } from "../tests/support/testimage.ts";
import { quick, ratio } from "./ratio.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean" },
    clients: { type: "string" },
    rate: { type: "string", default: "1gbit" },
    "dhcp-only": { type: "boolean" },
  },
});
const clients = Number(a.clients ?? (quick ? 100 : 1000));
const rateBits = (() => {
  const m = /^(\d+)(k|m|g)bit$/.exec(a.rate!);
  if (!m) throw new Error("--rate: like 1gbit, 500mbit");
  return Number(m[1]) * { k: 1e3, m: 1e6, g: 1e9 }[m[2] as "k" | "m" | "g"];
})();

async function sh(...cmd: string[]): Promise<string> {
  const out = await new Deno.Command(cmd[0], { args: cmd.slice(1), stderr: "piped" }).output();
  const dec = new TextDecoder();
  if (!out.success) throw new Error(`${cmd.join(" ")}: ${dec.decode(out.stderr).trim()}`);
  return dec.decode(out.stdout);
}

/** Resident and peak resident memory of a process, MiB. */
function memory(pid: number): { rss: number; hwm: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0);
  return { rss: kib("VmRSS") / 1024, hwm: kib("VmHWM") / 1024 };
}

const kernel = await debianKernel();
const imageDir = await Deno.makeTempDir({ prefix: "nr-storm-image-" });
const cliNs = `nr-storm-${Deno.pid}`;
// A /21: 1,000 machines and more (10.77.0.0–10.77.7.255; the load generator at .2).
const lab = await startLab({
  network: { prefixLen: 21, dhcpRange: "10.77.0.100-10.77.7.250" },
  serveArgs: ["--register-rate", "100000", "--register-max", "5000"],
});
try {
  await buildTestImage(join(imageDir, "img"), { kernel });
  await lab.cli("image", "import", join(imageDir, "img"), "--name", "default");
  await sh("ip", "netns", "add", cliNs);
  await sh("ip", "-n", lab.ns, "link", "add", "storm0", "type", "veth", "peer", "name", "sc");
  await sh("ip", "-n", lab.ns, "link", "set", "sc", "netns", cliNs);
  await sh("ip", "-n", lab.ns, "link", "set", "storm0", "master", "netroot0", "up");
  // The server→clients direction is the link under test (what a storm saturates), shaped to the
  // rate by htb. A lab server's NIC queues with fq_codel (systemd's net.core.default_qdisc): each
  // flow its own queue, so the small UDP exchanges (DHCP, TFTP) do not wait behind the bulk HTTP
  // downloads. This kernel has no fq_codel; the same effect here: UDP in a class served first, TCP
  // in another, both up to the full rate (with one FIFO, 789 of 1,000 TFTP transfers timed out).
  // Loss-based TCP congestion control, as on a Debian server (cubic; a namespace here may only
  // pick reno or bbr): with this host's bbr, a few of the 1,000 connections behind the shaped
  // link had their bandwidth estimate collapse to ~1 kbit/s and stalled for minutes.
  await sh(
    ..."ip netns exec".split(" "),
    lab.ns,
    ..."sysctl -qw net.ipv4.tcp_congestion_control=reno".split(" "),
  );
  const tc = (...args: string[]) => sh("ip", "netns", "exec", lab.ns, "tc", ...args);
  await tc(..."qdisc add dev storm0 root handle 1: htb default 20 r2q 1000".split(" "));
  await tc(..."class add dev storm0 parent 1: classid 1:1 htb rate".split(" "), a.rate!);
  for (const [id, prio] of [["1:10", "0"], ["1:20", "1"]]) {
    const share = String(Math.round(rateBits / 1e6 / 2)) + "mbit";
    await tc(
      ..."class add dev storm0 parent 1:1 classid".split(" "),
      id,
      ..."htb rate".split(" "),
      share,
      "ceil",
      a.rate!,
      "prio",
      prio,
    );
  }
  await tc(
    ..."filter add dev storm0 parent 1: protocol ip prio 1 u32 match ip protocol 17 0xff flowid 1:10"
      .split(" "),
  );
  await sh("ip", "-n", cliNs, "addr", "add", "10.77.0.2/21", "dev", "sc");
  await sh("ip", "-n", cliNs, "link", "set", "sc", "up");
  await sh("ip", "-n", cliNs, "link", "set", "lo", "up");

  const storm = async (n: number, first: number) => {
    const out = await new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        cliNs,
        ...netrootCommand(),
        "bench",
        "storm",
        "--interface",
        "sc",
        "--clients",
        String(n),
        "--first-index",
        String(first),
        "--timeout",
        "4000",
        "--json",
        ...(a["dhcp-only"] ? ["--no-tftp", "--no-http"] : []),
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    if (!text.trim()) throw new Error(new TextDecoder().decode(out.stderr));
    return JSON.parse(text) as {
      ok: number;
      failures: number;
      errors: Record<string, number>;
      seconds: number;
      bytes: number;
      perClientMs: { p50: number; p95: number; max: number };
    };
  };
  // Warm-up: 10 machines (the server builds and caches the image's boot files once).
  const warm = await storm(10, 0);
  if (warm.failures) throw new Error(`warm-up failed: ${JSON.stringify(warm.errors)}`);
  const pid = lab.serverPid!;
  const before = memory(pid);
  let peak = before.rss;
  const sampler = setInterval(() => {
    try {
      peak = Math.max(peak, memory(pid).rss);
    } catch { /* exited: the storm's result says why */ }
  }, 100);
  const r = await storm(clients, 1000).finally(() => clearInterval(sampler));
  const after = memory(pid);
  const limit = r.bytes * 8 / rateBits;
  console.log(
    `boot storm of ${clients} new machines (DHCP ×2, TFTP ${"undionly.kpxe"}, HTTP script + ` +
      `kernel + initramfs), link ${a.rate} server→clients:`,
  );
  console.log(
    `  ${r.ok} booted, ${r.failures} failed${r.failures ? ` ${JSON.stringify(r.errors)}` : ""}; ${
      (r.bytes / 2 ** 30).toFixed(2)
    } GiB in ${r.seconds.toFixed(1)} s; the link's limit ` +
      `${limit.toFixed(1)} s → ${(r.seconds / limit).toFixed(2)}× the limit (target ≤ 1.2×)`,
  );
  console.log(
    `  per client p50/p95/max ${r.perClientMs.p50}/${r.perClientMs.p95}/${r.perClientMs.max} ms`,
  );
  console.log(
    `  server RSS: ${before.rss.toFixed(0)} MiB before, peak ${peak.toFixed(0)} MiB sampled ` +
      `(VmHWM ${after.hwm.toFixed(0)} MiB), ${after.rss.toFixed(0)} MiB after (target ≤ 256 MB)`,
  );
  if (r.failures) throw new Error(`${r.failures} clients failed`);
  // Higher is better: 1.2× the link's limit over the wall time (≥ 1: within 1.2× of the limit);
  // 256 MiB over the peak RSS (≥ 1: under the target).
  ratio("storm.wall-vs-1.2x-link", (1.2 * limit) / r.seconds, 1.0);
  ratio("storm.rss-vs-256mib", 256 / peak, 1.0);
} finally {
  await new Deno.Command("ip", { args: ["netns", "del", cliNs], stderr: "null" }).output();
  await lab.close();
  await Deno.remove(imageDir, { recursive: true });
}
