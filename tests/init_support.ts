// Shared by tests/init_switch_test.ts and bench/init_bench.ts: a scratch image tree and a runner
// for tests/init_harness.ts in fresh mount + PID + network + UTS namespaces (root needed).
import type { HarnessConfig } from "./init_harness.ts";

const harness = new URL("./init_harness.ts", import.meta.url).pathname;
const BUSYBOX = "/bin/busybox"; // static (busybox-static); the image's init is a shell script

const INIT_SCRIPT = `#!/bin/sh
echo "INIT pid=$$"
echo "INIT exe=$(readlink /proc/1/exe)"
while read -r line; do echo "INIT mount $line"; done < /proc/self/mountinfo
echo hello > /written-by-init && echo "INIT wrote=$(cat /written-by-init)"
echo from-node > /persist/mark && echo "INIT persist=ok"
[ -c /dev/null ] && echo "INIT devnull=ok"
[ -d /run/netroot/lower/sbin ] && echo "INIT lower-visible=ok"
[ -f /run/netroot/upper/written-by-init ] && echo "INIT upper-visible=ok"
touch /run/netroot/upper/x 2>/dev/null || echo "INIT upper-readonly=ok"
[ -e /netroot ] || echo "INIT no-initramfs-leftovers=ok"
echo "INIT addr=$(ip -4 -o addr show nr0)"
echo "INIT route=$(ip route show default)"
echo "INIT hostname=$(hostname)"
echo "INIT deno-env=$(env | grep -c '^DENO_')"
`;

export interface Scratch {
  dir: string;
  lower: string;
  persist: string;
}

/** A lower tree with a static busybox and a marker-printing /sbin/init; an empty persist dir. */
export async function makeScratch(initScript = INIT_SCRIPT): Promise<Scratch> {
  const dir = await Deno.makeTempDir({ prefix: "nr-init-" });
  const lower = `${dir}/lower`;
  const persist = `${dir}/persist`;
  for (const d of ["bin", "sbin", "dev", "proc", "sys", "run", "etc"]) {
    await Deno.mkdir(`${lower}/${d}`, { recursive: true });
  }
  await Deno.mkdir(persist);
  await Deno.copyFile(BUSYBOX, `${lower}/bin/busybox`);
  for (const a of ["sh", "cat", "readlink", "ip", "env", "grep", "hostname"]) {
    await Deno.symlink("busybox", `${lower}/bin/${a}`);
  }
  await Deno.writeTextFile(`${lower}/etc/image-file`, "from the image\n");
  await Deno.writeTextFile(`${lower}/sbin/init.real`, initScript, { mode: 0o755 });
  // An absolute symlink, as in Debian (/sbin/init -> /lib/systemd/systemd): resolved in the new root.
  await Deno.symlink("/sbin/init.real", `${lower}/sbin/init`);
  return { dir, lower, persist };
}

export function cmdline(port: number, extra = ""): string {
  return [
    "console=ttyS0",
    "ip=10.99.0.2:10.99.0.1:10.99.0.1:255.255.255.0:node1::off",
    "netroot.mac=52:54:00:aa:bb:cc",
    `netroot.url=http://127.0.0.1:${port}`,
    "netroot.root=10.99.0.1:/netroot/images/abc",
    "netroot.persist=10.99.0.1:/netroot/persist/525400aabbcc",
    "netroot.token=t0k3n",
    "netroot.image=abc",
    "netroot.mode=network",
    "netroot.timeout=10", // the least the contract allows: the missing-root case gives up after 10 s
    "netroot.tmpfs=64m",
    extra,
  ].join(" ");
}

export interface HarnessRun {
  code: number;
  out: string;
  lines: string[];
  /** performance.now() when each stdout line arrived (same index as `lines` for stdout lines). */
  times: number[];
  reports: Record<string, unknown>[];
  /** spawn → exit, ms */
  wallMs: number;
}

/**
 * Runs `argv` in fresh mount + PID + network + UTS namespaces (`--kill-child`: if we kill unshare, the
 * namespace's PID 1 goes too), timestamping each stdout line as it arrives. stderr is appended.
 */
export async function runInNamespaces(
  argv: string[],
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<HarnessRun> {
  const t0 = performance.now();
  const child = new Deno.Command("unshare", {
    args: ["--mount", "--pid", "--fork", "--net", "--uts", "--kill-child", "--", ...argv],
    stdout: "piped",
    stderr: "piped",
    // A bare environment, as the kernel gives init (the host's CA/proxy variables stay out).
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin", ...env },
  }).spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  }, timeoutMs);
  try {
    const lines: string[] = [];
    const times: number[] = [];
    const errText = new Response(child.stderr).text();
    let buf = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      const now = performance.now();
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        lines.push(buf.slice(0, nl));
        times.push(now);
        buf = buf.slice(nl + 1);
      }
    }
    if (buf) {
      lines.push(buf);
      times.push(performance.now());
    }
    const { code } = await child.status;
    const wallMs = performance.now() - t0;
    const err = await errText;
    const all = err ? [...lines, ...err.split("\n")] : lines;
    const reports = lines.filter((l) => l.startsWith("REPORT ")).map((l) => JSON.parse(l.slice(7)));
    return { code, out: all.join("\n"), lines: all, times, reports, wallMs };
  } finally {
    clearTimeout(timer);
  }
}

export async function runHarness(
  s: Scratch,
  cfg: Partial<HarnessConfig> = {},
): Promise<HarnessRun> {
  const full: HarnessConfig = {
    work: s.dir,
    lower: s.lower,
    persist: s.persist,
    cmdline: cmdline(8099),
    mac: "52:54:00:aa:bb:cc",
    reportPort: 8099,
    ...cfg,
  };
  const cfgPath = `${s.dir}/harness.json`;
  await Deno.writeTextFile(cfgPath, JSON.stringify(full));
  return await runInNamespaces(
    [Deno.execPath(), "run", "-A", "--no-config", harness, cfgPath],
    { NO_COLOR: "1", DENO_DIR: `${s.dir}/deno-dir` },
  );
}
