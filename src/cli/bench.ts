// `netroot bench storm --interface IF --clients N`: a boot storm against a running netroot
// (or any DHCP + TFTP + HTTP boot server) reachable on IF. Needs root (UDP port 68).
import { parseArgs } from "node:util";
import { UserError } from "../errors.ts";
import { humanBytes, keyValues, print } from "./output.ts";

const usage = `usage: netroot bench storm --interface IF [--clients N] [--concurrency C]
                          [--timeout MS] [--first-index I] [--no-tftp] [--no-http] [--json]

Simulates N PXE clients (MACs 02:6e:72:xx:xx:xx), each: DHCP as a BIOS PXE ROM, TFTP of the boot
file, DHCP as iPXE, HTTP of the iPXE script, HTTP of the kernel and initrd it names. Reports the
completion time, failures and bytes/s. Exit status 1 when any client failed. Against netroot,
clients it has not seen before register at most 60 a minute by default (the server's
register-rate option): raise it, or run the storm once to register them, for a storm of new machines.`;

export async function run(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (!sub || sub === "--help" || sub === "-h") {
    console.log(usage);
    return sub ? 0 : 2;
  }
  if (sub !== "storm") throw new UserError(`unknown bench ${sub} (known: storm)`);
  const { values } = parseArgs({
    args: rest,
    options: {
      interface: { type: "string" },
      clients: { type: "string", default: "10" },
      concurrency: { type: "string" },
      timeout: { type: "string", default: "2000" },
      "first-index": { type: "string", default: "0" },
      "no-tftp": { type: "boolean" },
      "no-http": { type: "boolean" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(usage);
    return 0;
  }
  if (!values.interface) throw new UserError("--interface IF is required (the boot network)");
  const num = (name: string, v: string | undefined, min: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) {
      throw new UserError(`--${name} expects an integer ≥ ${min}`);
    }
    return n;
  };
  const clients = num("clients", values.clients, 1);
  if (clients > 65536) throw new UserError("--clients is limited to 65536");
  const { runStorm } = await import("../../netboot/storm.ts");
  const report = await runStorm({
    device: values.interface,
    clients,
    concurrency: values.concurrency ? num("concurrency", values.concurrency, 1) : undefined,
    timeoutMs: num("timeout", values.timeout, 10),
    firstIndex: num("first-index", values["first-index"], 0),
    tftp: !values["no-tftp"],
    http: !values["no-http"],
  });
  print(values.json, report, () =>
    keyValues({
      clients: report.clients,
      ok: report.ok,
      failures: report.failures,
      "completion time": `${report.seconds.toFixed(2)} s`,
      transferred: humanBytes(report.bytes),
      throughput: `${humanBytes(report.bytesPerSecond)}/s`,
      "per client p50/p95/max":
        `${report.perClientMs.p50}/${report.perClientMs.p95}/${report.perClientMs.max} ms`,
      "dhcp exchanges": report.dhcpExchanges,
      errors: Object.keys(report.errors).length ? report.errors : "none",
    }));
  return report.failures ? 1 : 0;
}
