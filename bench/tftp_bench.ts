// TFTP throughput on loopback: netroot vs tftpd-hpa (in.tftpd), same client, same files; runs
// alternate between the two servers and the median counts, because this host is shared.
//   curl, blksize 1468 (as UEFI asks), stop-and-wait: 1 MiB and 16 MiB;
//   atftp asking windowsize 8 (RFC 7440; tftpd-hpa does not grant it and runs stop-and-wait);
// then the packet decoder's rate on random/mutated input (the fuzz test, longer).
// Usage: deno run -A bench/tftp_bench.ts [--quick] [--fuzz N]
import dgram from "node:dgram";
import { parseArgs } from "node:util";
import { createTftpServer } from "../netboot/tftp/server.ts";
import { fuzzDecode } from "../tests/tftp_fuzz_test.ts";
import { ratio } from "./ratio.ts";

const { values } = parseArgs({
  options: { fuzz: { type: "string" }, quick: { type: "boolean" } },
});
const q = values.quick ? 2 : 1;
const dir = await Deno.makeTempDir({ prefix: "nr-tftp-bench-" });
await Deno.chmod(dir, 0o755); // in.tftpd drops to an unprivileged user
const files = [
  { name: "f1m", size: 1 << 20, runs: Math.ceil(21 / q) },
  // 16 MiB stop-and-wait is a near-tie on a VM (each side's turnaround is the wake-up of a
  // sleeping vCPU, ≈ 30 µs, for both servers; docs/benchmarks.md): 15 runs in --quick too (≈ 20 s),
  // so that the median moves less from run to run.
  { name: "f16m", size: 16 << 20, runs: 15 },
];
for (const f of files) {
  const content = new Uint8Array(f.size).map((_, i) => (i * 2654435761) >>> 24); // not constant
  await Deno.writeFile(`${dir}/${f.name}`, content, { mode: 0o644 });
}

async function freeUdpPort(): Promise<number> {
  const s = dgram.createSocket("udp4");
  await new Promise<void>((r) => s.bind(0, "127.0.0.1", r));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  const ms = performance.now() - t0;
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);

const server = await createTftpServer({
  port: 0,
  host: "127.0.0.1",
  resolve: (p) => Promise.resolve({ file: `${dir}/${p}` }),
});
const hpaPort = await freeUdpPort();
const hpa = new Deno.Command("in.tftpd", {
  args: ["--listen", "--foreground", "--address", `127.0.0.1:${hpaPort}`, "--secure", dir],
  stdout: "null",
  stderr: "null",
}).spawn();
try {
  await new Promise((r) => setTimeout(r, 300));
  const out = `${dir}/out`;
  /** Same client, same file, alternating between the servers; prints median and best. */
  const compare = async (
    key: string,
    label: string,
    size: number,
    runs: number,
    client: (port: number) => Promise<number>,
  ) => {
    await client(server.port), await client(hpaPort); // warm both (page cache, JIT, file cache)
    const ours: number[] = [], theirs: number[] = [];
    for (let i = 0; i < runs; i++) {
      ours.push(await client(server.port)), theirs.push(await client(hpaPort));
    }
    const a = mbps(size, median(ours)), b = mbps(size, median(theirs));
    const bestA = mbps(size, Math.min(...ours)), bestB = mbps(size, Math.min(...theirs));
    console.log(
      `  ${label}\n    median: netroot ${a.toFixed(1)} MB/s, tftpd-hpa ${b.toFixed(1)} MB/s, ` +
        `ratio ${(a / b).toFixed(2)}x   best: ${bestA.toFixed(1)} vs ${bestB.toFixed(1)} MB/s, ` +
        `ratio ${(bestA / bestB).toFixed(2)}x`,
    );
    ratio(`tftp.${key}`, a / b, 1.0);
  };
  console.log("TFTP loopback throughput, netroot vs tftpd-hpa (alternating runs)");
  for (const f of files) {
    await compare(
      `curl-${f.name}`,
      `curl --tftp-blksize 1468 (stop-and-wait, as UEFI), ${f.name}`,
      f.size,
      f.runs,
      (port) =>
        timed("curl", [
          "-sS",
          "--tftp-blksize",
          "1468",
          `tftp://127.0.0.1:${port}/${f.name}`,
          "-o",
          out,
        ]),
    );
  }
  // A client that asks for RFC 7440 windows (as iPXE-era and our own clients can): tftpd-hpa does
  // not grant windowsize, so it runs stop-and-wait; that difference is the point of the option.
  const big = files[1];
  await compare(
    `atftp-window8-${big.name}`,
    `atftp blksize 1468 windowsize 8, ${big.name}`,
    big.size,
    5,
    (port) =>
      timed("atftp", [
        "--option",
        "blksize 1468",
        "--option",
        "windowsize 8",
        "-g",
        "-r",
        big.name,
        "-l",
        out,
        "127.0.0.1",
        String(port),
      ]),
  );
  const n = Number(values.fuzz ?? (values.quick ? 100_000 : 2_000_000));
  const t0 = performance.now();
  const r = fuzzDecode(n, 42);
  const s = (performance.now() - t0) / 1000;
  console.log(
    `TFTP decoder fuzz: ${n} packets in ${s.toFixed(1)} s (${(n / s / 1e3).toFixed(0)} k/s), ` +
      `${r.decoded} decoded, ${r.rejected} rejected, 0 escaped`,
  );
} finally {
  hpa.kill();
  await hpa.status;
  await server.close();
  await Deno.remove(dir, { recursive: true });
}
