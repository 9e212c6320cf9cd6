// Which qemu accelerator virtual nodes use. /dev/kvm existing proves little: on some hosts
// (nested "kvm-pvm" here) qemu starts under KVM but a Linux guest hangs in its decompressor at
// 100 % CPU (and `-cpu host` aborts qemu on an MSR write). So "auto" boots a real Linux kernel under KVM with no root filesystem and expects it
// to reach its "Kernel panic" (≈ 1 s with working KVM); anything else means TCG, which always works.
import { join } from "node:path";
import { logger } from "../log.ts";
import { qemuBinary } from "./qemu.ts";

const log = logger("vnode");

export type Accel = "kvm" | "tcg";
export interface AccelChoice {
  accel: Accel;
  reason: string;
}

/** Hard cap for the KVM probe boot; a working KVM panics within a few seconds. */
const probeTimeoutMs = 20_000;

function kvmOpenable(): string | undefined {
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
    return undefined;
  } catch (e) {
    return `/dev/kvm unusable (${(e as Error).message})`;
  }
}

/** Boots `kernel` with `accel`; true when it reached its panic (no root fs) in time. */
export async function kernelBoots(
  kernel: string,
  accel: Accel,
  timeoutMs = probeTimeoutMs,
): Promise<boolean> {
  const dir = await Deno.makeTempDir({ prefix: "netroot-kvm-probe-" });
  const serial = join(dir, "serial.log");
  try {
    const child = new Deno.Command(qemuBinary, {
      args: [
        "-accel",
        accel,
        ...(accel === "kvm" ? ["-cpu", "host"] : []),
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "256",
        "-no-reboot",
        "-kernel",
        kernel,
        "-append",
        "console=ttyS0 panic=-1 root=/dev/netroot-probe-none",
        "-serial",
        `file:${serial}`,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    await child.status;
    clearTimeout(timer);
    const out = await Deno.readTextFile(serial).catch(() => "");
    return !timedOut && /Kernel panic/.test(out);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Memoized per process (concurrent vnode starts share one probe) and, when a kernel verified
 *  the answer, per data dir (keyed by host kernel release and qemu binary) so later server starts
 *  skip the probe. */
let memo: Promise<AccelChoice & { unverified?: boolean }> | undefined;

export function chooseAccel(
  wanted: "auto" | Accel,
  opts: { kernels: string[]; cacheFile?: string },
): Promise<AccelChoice> {
  if (wanted !== "auto") return Promise.resolve({ accel: wanted, reason: "configured" });
  const p = memo ?? probe(opts);
  memo = p;
  // An unverified answer (no kernel yet) is not kept: the next start probes again.
  p.then((c) => {
    if (c.unverified && memo === p) memo = undefined;
  }, () => {
    if (memo === p) memo = undefined;
  });
  return p.then(({ accel, reason }) => ({ accel, reason }));
}

async function probe(
  opts: { kernels: string[]; cacheFile?: string },
): Promise<AccelChoice & { unverified?: boolean }> {
  const key = `${Deno.osRelease()} ${await qemuIdentity()}`;
  if (opts.cacheFile) {
    try {
      const c = JSON.parse(await Deno.readTextFile(opts.cacheFile));
      if (c.key === key && (c.accel === "kvm" || c.accel === "tcg")) {
        return { accel: c.accel, reason: `${c.reason} (cached)` };
      }
    } catch { /* no cache yet */ }
  }
  const unusable = kvmOpenable();
  if (unusable) return { accel: "tcg", reason: unusable };
  const kernel = opts.kernels.find((k) => {
    try {
      return Deno.statSync(k).isFile;
    } catch {
      return false;
    }
  });
  if (!kernel) {
    return {
      accel: "tcg",
      reason: "no Linux kernel available to verify KVM with",
      unverified: true,
    };
  }
  const t0 = performance.now();
  const ok = await kernelBoots(kernel, "kvm");
  const ms = Math.round(performance.now() - t0);
  const choice: AccelChoice = ok
    ? { accel: "kvm", reason: `KVM booted ${kernel} in ${ms} ms` }
    : { accel: "tcg", reason: `a Linux guest does not boot under KVM here (probe ${ms} ms)` };
  log.info("accelerator probed", { ...choice });
  if (opts.cacheFile) {
    await Deno.writeTextFile(opts.cacheFile, JSON.stringify({ key, ...choice }) + "\n").catch(
      () => {},
    );
  }
  return choice;
}

async function qemuIdentity(): Promise<string> {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin").split(":")) {
    try {
      const st = await Deno.stat(join(dir, qemuBinary));
      return `${join(dir, qemuBinary)}@${st.mtime?.getTime()}`;
    } catch { /* next */ }
  }
  return "none";
}

/** For tests: forget the per-process answer. */
export function resetAccelMemo(): void {
  memo = undefined;
}
