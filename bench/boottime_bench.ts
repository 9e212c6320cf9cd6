// Boot time against Debian's own NFS root (issue 16): the same debootstrap image (Debian bookworm
// minbase + systemd + udev, tests/support/minbase.ts), the same Debian kernel, the same qemu
// settings (a vnode's, src/vnode/qemu.ts, with the kernel and initramfs given directly instead of
// PXE) and the same NFS server (nfs-ganesha serving NFSv3 with rpcbind, in a network namespace of
// the bench's own), booted alternately A B A B…:
//   A  netroot's initramfs (built from the current checkout for that image and kernel);
//   B  Debian initramfs-tools with boot=nfs: the initrd `mkinitramfs` makes for that kernel in
//      the image itself (initramfs-tools installed in an overlay over the image tree, its defaults:
//      MODULES=most, zstd), cached as .work/boottime/initrd.img-<kv>-initramfs-tools.
// Measured from the serial console's kernel timestamps: kernel start → "Run /init as init process"
// (the kernel unpacking the initramfs) → the image's systemd starting (its first "systemd[1]:"
// line); the VM is stopped there. Reported as netroot / initramfs-tools (lower is better), per round
// and min/median/max; RATIO lines are the inverse (initramfs-tools / netroot, higher is better).
// Root, qemu, nfs-ganesha, rpcbind, iproute2; ≈ 1 min per round under TCG (no KVM).
//   deno run -A bench/boottime_bench.ts [--rounds N] [--keep] [--cpus N]
import { join } from "node:path";
import { parseArgs } from "node:util";
import { renderCmdline } from "../contract/cmdline.ts";
import { buildInitramfs, type Compression, initramfsCompression } from "../src/initramfs/build.ts";
import { currentProgram } from "../src/initramfs/bundle.ts";
import { qemuArgs, qemuBinary } from "../src/vnode/qemu.ts";
import { type DebianKernel, debianKernel } from "../tests/support/kernel.ts";
import { initramfsToolsInitrd, run } from "../tests/support/initramfs_tools.ts";
import { minbaseImage } from "../tests/support/minbase.ts";
import { quick, ratio } from "./ratio.ts";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    rounds: { type: "string" },
    keep: { type: "boolean" },
    quick: { type: "boolean" },
    compression: { type: "string" },
    cpus: { type: "string" },
  },
});
const rounds = Number(opt.rounds ?? (quick ? 2 : 5));
/** vCPUs of both VMs (a vnode's default is 1; lab PCs and Raspberry Pis have 2–8 cores). */
const CPUS = Number(opt.cpus ?? 1);
const NS = `nrboot${Deno.pid}`;
const TAP = "nrbt0";
const SERVER = "10.79.0.1";
const NODE = "10.79.0.10";
const MAC = "52:54:00:b0:07:01";
const RAM = "1024M";
const BOOT_TIMEOUT_MS = 300_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const ganeshaConf = (image: string, persist: string, dir: string) =>
  `NFS_CORE_PARAM { Bind_addr = ${SERVER}; Protocols = 3; NFS_Port = 2049; Enable_NLM = false;
  Enable_RQUOTA = false; }
EXPORT_DEFAULTS { SecType = sys; Transports = TCP, UDP; Protocols = 3; Access_Type = None; }
EXPORT { Export_Id = 1; Path = "${image}"; Pseudo = "/image"; Filesystem_Id = 1.1;
  Access_Type = RO; Squash = No_Root_Squash; CLIENT { Clients = ${NODE}; Access_Type = RO; }
  FSAL { Name = VFS; } }
EXPORT { Export_Id = 2; Path = "${persist}"; Pseudo = "/persist"; Filesystem_Id = 2.2;
  Access_Type = RW; Squash = No_Root_Squash; CLIENT { Clients = ${NODE}; Access_Type = RW; }
  FSAL { Name = VFS; } }
NFSv4 { RecoveryRoot = "${dir}/recovery"; }
LOG { Default_Log_Level = EVENT; }
`;

/** rpcbind and ganesha in the namespace, in a mount namespace of their own whose /run is a tmpfs:
 *  rpcbind's socket (/run/rpcbind.sock) stays away from the host's. */
const serverScript = (dir: string) =>
  `set -e
mount -t tmpfs -o mode=0755 nrboot-run /run
mkdir -p /run/rpcbind /run/ganesha
rpcbind -f &
r=$!
trap 'kill $r $g 2>/dev/null; wait' TERM INT
for i in $(seq 50); do rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && break; sleep 0.1; done
ganesha.nfsd -F -L ${dir}/ganesha.log -f ${dir}/ganesha.conf -p /run/ganesha/pid -N NIV_EVENT &
g=$!
wait
`;

/** Answers the netroot init's stage reports (POST /boot/report) as the server would: 200. */
const receiverScript = `Deno.serve({ hostname: "${SERVER}", port: 8080, onListen() {} },
  async (r) => { await r.arrayBuffer(); return new Response("ok"); });`;

interface Boot {
  runInit: number;
  systemd: number;
}

/** Boots once with `initrd` and `append`; returns the console's kernel timestamps (s). */
async function boot(
  dir: string,
  name: string,
  kernel: DebianKernel,
  initrd: string,
  append: string,
) {
  const consoleLog = join(dir, `${name}.console`);
  await Deno.remove(consoleLog).catch(() => {});
  const args = [
    ...qemuArgs({
      name: `boottime-${name}`,
      mac: MAC,
      ram: RAM,
      cpus: CPUS,
      accel: "tcg",
      tap: TAP,
      disks: [],
      consoleLog,
      qmpSocket: join(dir, "qmp.sock"),
      pidFile: join(dir, "qemu.pid"),
    }),
    "-kernel",
    kernel.vmlinuz,
    "-initrd",
    initrd,
    "-append",
    append,
  ];
  // `ip netns exec` execs qemu: the child's PID is qemu's.
  const child = new Deno.Command("ip", {
    args: ["netns", "exec", NS, qemuBinary, ...args],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const t0 = performance.now();
  let text = "";
  try {
    for (;;) {
      text = await Deno.readTextFile(consoleLog).catch(() => "");
      const runInit = /\[\s*([\d.]+)\] Run \/init as init process/.exec(text)?.[1];
      const systemd = /\[\s*([\d.]+)\] systemd\[1\]: /.exec(text)?.[1];
      if (runInit && systemd) {
        return { runInit: Number(runInit), systemd: Number(systemd), console: text };
      }
      if (performance.now() - t0 > BOOT_TIMEOUT_MS) throw new Error("timed out");
      const exited = await Promise.race([
        child.status.then(() => true),
        sleep(250).then(() => false),
      ]);
      if (exited) throw new Error("qemu exited");
    }
  } catch (e) {
    throw new Error(
      `${name}: no "Run /init" and "systemd[1]:" on the console (${(e as Error).message}); ` +
        `console tail:\n${text.split("\n").slice(-25).join("\n")}`,
    );
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.output();
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const mmm = (xs: number[], d = 2) =>
  `${Math.min(...xs).toFixed(d)} / ${median(xs).toFixed(d)} / ${Math.max(...xs).toFixed(d)}`;

function report(a: Boot[], b: Boot[]) {
  const overall = a.map((x, i) => x.systemd / b[i].systemd);
  const initPhase = a.map((x, i) => (x.systemd - x.runInit) / (b[i].systemd - b[i].runInit));
  const kernelPhase = a.map((x, i) => x.runInit / b[i].runInit);
  console.log(`\nboottime_bench: ${rounds} rounds A B, kernel timestamps (s), min / median / max`);
  console.log(`${"".padEnd(35)}${"netroot".padEnd(26)}initramfs-tools`);
  const row = (label: string, f: (x: Boot) => number) =>
    console.log(`  ${label.padEnd(33)}${mmm(a.map(f)).padEnd(26)}${mmm(b.map(f))}`);
  row("kernel start → Run /init", (x) => x.runInit);
  row("Run /init → systemd[1]", (x) => x.systemd - x.runInit);
  row("kernel start → systemd[1]", (x) => x.systemd);
  console.log(`  netroot / initramfs-tools (per round, min / median / max):`);
  console.log(`    overall (kernel start → systemd)  ${mmm(overall)}   target ≤ 0.6`);
  console.log(`    init phase (Run /init → systemd)  ${mmm(initPhase)}   target ≤ 0.8`);
  console.log(`    kernel phase (→ Run /init)        ${mmm(kernelPhase)}`);
  // Floors: regression guards on this loaded 2-core machine (0.9: one round's noise), not the
  // targets (docs/benchmarks.md): ≥ 1.67 overall and ≥ 1.25 in the init phase.
  ratio("boottime.overall-vs-initramfs-tools", 1 / median(overall), 0.9);
  ratio("boottime.init-vs-initramfs-tools", 1 / median(initPhase), 1.0);
}

if (Deno.uid() !== 0) {
  console.log("boottime_bench: needs root (network namespace, qemu tap, NFS server): skipped");
  Deno.exit(0);
}
const kernel = await debianKernel();
const image = await Deno.realPath(await minbaseImage(kernel));
const itools = await initramfsToolsInitrd(kernel, image);
const dir = await Deno.makeTempDir({ prefix: "nr-bench-boottime-" });
const persist = join(dir, "persist");
await Deno.mkdir(persist);
const children: Deno.ChildProcess[] = [];
let ok = false;
try {
  const t = performance.now();
  const netroot = join(dir, "netroot.cpio");
  const built = await buildInitramfs({
    rootfs: image,
    kernelVersion: kernel.kv,
    out: netroot,
    program: await currentProgram(join(dir, "program")),
    // As for an installed kernel (its /boot/config-<kv>): the cached image has no kernel config.
    compression: (opt.compression as Compression | undefined) ??
      initramfsCompression(kernel.root, kernel.kv),
  });
  const size = async (p: string) => (await Deno.stat(p)).size / 1e6;
  console.log(
    `boottime_bench: kernel ${kernel.kv}, image ${image}\n` +
      `  netroot initramfs ${built.bytes / 1e6 | 0} MB (${built.modules.length} modules, ` +
      `${built.compression}, built in ${((performance.now() - t) / 1000).toFixed(1)} s); ` +
      `initramfs-tools initrd ${(await size(itools)).toFixed(1)} MB`,
  );

  await run("ip", ["netns", "add", NS]);
  const inNs = (...a: string[]) => run("ip", ["netns", "exec", NS, ...a]);
  await inNs("ip", "link", "set", "lo", "up");
  await inNs("ip", "tuntap", "add", "dev", TAP, "mode", "tap");
  await inNs("ip", "addr", "add", `${SERVER}/24`, "dev", TAP);
  await inNs("ip", "link", "set", TAP, "up");
  await Deno.writeTextFile(join(dir, "ganesha.conf"), ganeshaConf(image, persist, dir));
  await Deno.mkdir(join(dir, "recovery"));
  const spawnInNs = (args: string[]) => {
    const c = new Deno.Command("ip", {
      args: ["netns", "exec", NS, ...args],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    children.push(c);
  };
  spawnInNs(["unshare", "-m", "--propagation", "private", "sh", "-c", serverScript(dir)]);
  spawnInNs([Deno.execPath(), "eval", receiverScript]);
  const deadline = Date.now() + 30_000;
  while (
    !(await Deno.readTextFile(join(dir, "ganesha.log")).catch(() => "")).includes(
      "NFS SERVER INITIALIZED",
    )
  ) {
    if (Date.now() > deadline) {
      throw new Error(`ganesha not ready:\n${await Deno.readTextFile(join(dir, "ganesha.log"))}`);
    }
    await sleep(200);
  }

  const consoles = ["ttyS0,115200"];
  const ip = `ip=${NODE}:${SERVER}::255.255.255.0:boottime::off`;
  const appendB = [
    "console=ttyS0,115200",
    "root=/dev/nfs",
    "boot=nfs",
    `nfsroot=${SERVER}:${image},tcp,vers=3`,
    ip,
    "ro",
  ].join(" ");
  const appendA = () =>
    renderCmdline({
      mac: MAC,
      hostname: "boottime",
      nodeIp: NODE,
      serverIp: SERVER,
      netmask: "255.255.255.0",
      url: `http://${SERVER}:8080`,
      root: `${SERVER}:${image}`,
      persist: `${SERVER}:${persist}`,
      nfs: "3",
      imageId: "boottime",
      token: crypto.randomUUID().replaceAll("-", ""),
      consoles,
    });

  const a: Boot[] = [];
  const b: Boot[] = [];
  for (let i = 0; i < rounds; i++) {
    const ra = await boot(dir, `A${i}`, kernel, netroot, appendA());
    a.push(ra);
    const rb = await boot(dir, `B${i}`, kernel, itools, appendB);
    b.push(rb);
    const m = /netroot-init: modules: (.*)/.exec(ra.console)?.[1] ?? "?";
    console.log(
      `  round ${i + 1}: netroot Run /init ${ra.runInit.toFixed(2)} s, systemd ${
        ra.systemd.toFixed(2)
      } s (modules: ${m.trim()}) | initramfs-tools Run /init ${rb.runInit.toFixed(2)} s, ` +
        `systemd ${rb.systemd.toFixed(2)} s`,
    );
  }
  if (rounds === 0) {
    console.log("boottime_bench: --rounds 0: initrds built, NFS server up; no boot");
  } else report(a, b);
  ok = true;
} finally {
  for (const c of children) {
    try {
      c.kill("SIGTERM");
    } catch { /* exited */ }
  }
  await Promise.all(children.map((c) => c.status));
  await run("ip", ["netns", "del", NS], { quiet: true });
  if (opt.keep || !ok) console.log(`kept ${dir}`);
  else await Deno.remove(dir, { recursive: true }).catch(() => {});
}
