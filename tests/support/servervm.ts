// A netroot SERVER in a qemu VM (TCG) whose kernel has nfsd: the Debian test kernel (kernel.ts),
// a busybox initramfs that loads virtio, 9p, ext4 and nfsd, and the host's root shared read-only
// over 9p for everything else (glibc, rpcbind/rpcinfo, sqlite3, iPXE, the pinned deno), plus
// Debian's exportfs/rpc.mountd/rpc.nfsd (knfsd.ts) — the packages are never installed on the host.
// netroot runs as the one-file bundle (`deno bundle`, no npm cache needed) built by the test.
//
// Networks: eth0 is the boot network, a qemu `dgram` link over host loopback UDP that only the
// node VM (nodeNetdev()) shares; eth1 is qemu user networking with no way out (restrict=on) whose
// only use is two host-loopback forwards: netroot's HTTP API and a busybox httpd CGI that runs
// shell scripts (`sh()`: how the test plays the admin on the server VM).
//
// The VM plays a Debian system with nfs-kernel-server: at boot its init mounts /proc/fs/nfsd,
// starts rpc.mountd and rpc.nfsd (and rpcbind for NFSv3) and runs `exportfs -r` on /etc/exports,
// which holds an admin's own line (/srv/admin) that netroot must leave alone. `nfs-system stop|
// start 3|4` (in the VM) stops or starts that service as `systemctl` would.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { DebianKernel } from "./kernel.ts";
import { knfsdTools } from "./knfsd.ts";
import { moduleClosure } from "./modules.ts";
import { staticBusybox } from "../../src/lab/tinyimage.ts";
import { workCacheDir } from "./kernel.ts";

export const bootNet = { server: "10.78.0.1", prefix: 24, range: "10.78.0.100-10.78.0.150" };
export const dataDir = "/srv/netroot";
export const adminExport = "/srv/admin";
/** The admin's own line in the server VM's /etc/exports (netroot must never touch it). */
export const adminLine = `${adminExport} 10.78.0.0/24(ro,sync,no_subtree_check,fsid=77)`;

const checkout = fileURLToPath(new URL("../../", import.meta.url));
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A free TCP (or UDP) port on host loopback. */
function freePort(udp = false): number {
  if (udp) {
    const s = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
    const port = (s.addr as Deno.NetAddr).port;
    s.close();
    return port;
  }
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  const o = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  if (!o.success) throw new Error(`${cmd} ${args.join(" ")}: ${dec.decode(o.stderr)}`);
  return dec.decode(o.stdout);
}

/** DENO_DIR for the host's runs of the bundle (`work` is the test's scratch dir): the server VM
 *  starts with a copy of it. */
export const hostDenoDir = (work: string) => join(work, "deno-dir");

/** netroot as one file (plus the node-only init bundle beside it, which serve puts in the
 *  initramfs): what a release ships, and what loads fast over 9p under TCG. */
export async function bundleNetroot(dir: string): Promise<string> {
  const js = join(dir, "netroot.js");
  const deno = Deno.execPath();
  await run(deno, ["bundle", "--quiet", "--platform", "deno", "-o", js, "main.ts"], checkout);
  await run(deno, [
    ...["bundle", "--quiet", "--platform", "deno"],
    ...["-o", join(dir, "netroot-init.js"), "overlay/node_main.ts"],
  ], checkout);
  return js;
}

const initScript = (o: {
  mods: string[];
  binds: string[];
  serveCmd: string;
}) =>
  `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/usr/sbin:/usr/bin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
for m in ${o.mods.join(" ")}; do insmod /mods/$m || echo "INSMOD-FAIL $m"; done
mkdir -p /tmp /run; mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run
mkdir -p /run/rpcbind /var/lib/nfs/v4recovery
ln -s /proc/self/mounts /etc/mtab # as on Debian: ganesha's FSAL VFS finds file systems there
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /host || echo "9P-FAIL"
for d in ${o.binds.join(" ")}; do mkdir -p $d && mount --bind /host$d $d; done
mkdir -p ${dataDir} ${adminExport}
mount -t ext4 /dev/vda ${dataDir} || echo "DISK-MOUNT-FAIL"
mount -t tmpfs -o size=1m tmpfs ${adminExport}; echo admin > ${adminExport}/README
ip link set lo up; ip link set eth0 up; ip link set eth1 up
ip addr add ${bootNet.server}/${bootNet.prefix} dev eth0; ip addr add 10.0.2.15/24 dev eth1
mount -t nfsd nfsd /proc/fs/nfsd
v=4; for a in $(cat /proc/cmdline); do case $a in nr.nfsv=*) v=\${a#*=};; esac; done
nfs-system start $v
httpd -p 9000 -h /www
echo "SERVER-VM-READY"
# PID 1 reaps: daemons (rpcbind, rpc.mountd, netroot) are reparented here when they fork or their
# parent exits. A "sleep" here reaped nothing, so a killed rpcbind stayed a zombie that "pidof"
# still listed, and "nfs-system start 3" took it for a running rpcbind and started none.
# (ash's "wait" waits with waitpid(-1): it reaps every child, its jobs and orphans alike.)
while :; do sleep 2 & wait; done
`;

/** The "system service" (what nfs-kernel-server's units do), version 3 or 4. */
const nfsSystem = `#!/bin/sh
# running NAME: a live (not zombie) process runs NAME.
running() { for p in $(pidof $1); do alive $p && return 0; done; return 1; }
case "$1" in
stop)
  rpc.nfsd 0; exportfs -f
  for p in $(pidof rpc.mountd) $(pidof rpcbind); do kill $p; done
  for i in $(seq 50); do running rpc.mountd || running rpcbind || break; sleep 0.2; done;;
start)
  echo 10 > /proc/fs/nfsd/nfsv4gracetime; echo 10 > /proc/fs/nfsd/nfsv4leasetime
  if [ "$2" = 3 ]; then
    # As Debian's rpcbind.service: -w (warm start: registrations saved in /run/rpcbind on
    # SIGTERM come back). rpcbind forks before its socket answers: rpc.nfsd registering too
    # early is refused, so wait for it.
    running rpcbind || rpcbind -w
    for i in $(seq 50); do rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && break; sleep 0.2; done
    rpc.mountd -N 2
    rpc.nfsd --no-udp 8
  else
    rpc.mountd -N 2 -N 3
    rpc.nfsd -N 3 --no-udp 8
  fi
  exportfs -r;;
esac
`;

/** The shell over HTTP: the POST body runs as a script; its output ends with `RC=<status>`. */
const cgi = `#!/bin/sh
echo "Content-Type: text/plain"; echo
head -c "$CONTENT_LENGTH" > /tmp/cgi.$$
sh /tmp/cgi.$$ 2>&1 </dev/null; echo "RC=$?"; rm -f /tmp/cgi.$$
`;

export interface ServerVm {
  /** http://127.0.0.1:PORT: netroot's API (its `--http 0.0.0.0:8080`), forwarded. */
  readonly apiUrl: string;
  /** Runs a shell script in the server VM; resolves with its output (throws on a non-zero
   *  status unless `check: false`). */
  sh(script: string, opts?: { check?: boolean; timeoutMs?: number }): Promise<string>;
  /** Starts `netroot serve` (the bundle) with the boot-network flags and `args` (`--nfs kernel`
   *  unless they hold another --nfs), in the
   *  background; its output goes to /run/serve.log, its PID to /run/serve.pid. */
  serveCommand(args: string[]): string;
  /** The qemu -netdev/-device pair a node VM joins the boot network with. */
  nodeNetdev(mac: string): string[];
  serial(): string;
  close(): Promise<void>;
}

export async function startServerVm(o: {
  kernel: DebianKernel;
  /** Scratch dir (the bundle, the initramfs, logs); also visible in the VM at the same path. */
  work: string;
  /** netroot.js (bundleNetroot). */
  bundle: string;
  /** Raw ext4 disk mounted at /srv/netroot. */
  dataDisk: string;
  nfsVersion?: 3 | 4;
}): Promise<ServerVm> {
  const { kernel: k, work } = o;
  const tools = await knfsdTools();
  const stage = join(work, "server-initramfs");
  const modDir = join(k.root, "lib/modules", k.kv);
  const mods = moduleClosure(modDir, [
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "9pnet_virtio",
    "9p",
    "crc32c_generic",
    "ext4",
    "nfsd",
  ]);
  for (const d of ["bin", "sbin", "dev", "proc", "sys", "mods", "host", "www/cgi-bin", "var/lib"]) {
    mkdirSync(join(stage, d), { recursive: true });
  }
  mkdirSync(join(stage, "etc/exports.d"), { recursive: true });
  for (const m of mods) {
    await Deno.copyFile(join(modDir, m), join(stage, "mods", m.split("/").pop()!));
  }
  await Deno.copyFile(await staticBusybox(workCacheDir), join(stage, "bin/busybox"));
  for (const p of tools.programs) {
    await Deno.copyFile(p, join(stage, "sbin", p.split("/").pop()!));
  }
  // The host's /usr (merged-/usr layout: /lib, /lib64 are links into it) through 9p.
  for (const [l, t] of [["usr", "host/usr"], ["lib", "usr/lib"], ["lib64", "usr/lib64"]]) {
    Deno.symlinkSync(t, join(stage, l));
  }
  const etc = ["passwd", "group", "netconfig", "protocols", "services", "hosts", "nsswitch.conf"];
  for (const f of etc) {
    if (existsSync(`/etc/${f}`)) await Deno.copyFile(`/etc/${f}`, join(stage, "etc", f));
  }
  writeFileSync(join(stage, "etc/exports"), `# the admin's own exports\n${adminLine}\n`);
  writeFileSync(join(stage, "bin/nfs-system"), nfsSystem, { mode: 0o755 });
  writeFileSync(join(stage, "www/cgi-bin/sh"), cgi, { mode: 0o755 });
  // `alive PID`: runs and is no zombie (a zombie waits for PID 1 to reap it).
  writeFileSync(
    join(stage, "bin/alive"),
    `#!/bin/sh\n[ -r /proc/$1/stat ] && [ "$(cut -d' ' -f3 /proc/$1/stat)" != Z ]\n`,
    { mode: 0o755 },
  );
  // The same paths as on the host: deno, the bundle and the test's image dirs (`image import`
  // reads its PATH on the server).
  const binds = [...new Set([dirname(Deno.execPath()), work])];
  const deno = Deno.execPath();
  const serveCmd = `${deno} run -A --no-config ${o.bundle} serve --data ${dataDir}`;
  writeFileSync(
    join(stage, "init"),
    initScript({ mods: mods.map((m) => m.split("/").pop()!), binds, serveCmd }),
    {
      mode: 0o755,
    },
  );
  const initrd = join(work, "server-initrd.gz");
  await run("sh", [
    "-c",
    `mknod -m 600 dev/console c 5 1 && find . | cpio -o -H newc --quiet | gzip -1 > ${initrd}`,
  ], stage);

  const apiPort = freePort(), shPort = freePort();
  const serverUdp = freePort(true), nodeUdp = freePort(true);
  const serial = join(work, "server-serial.log");
  const qemu = new Deno.Command("qemu-system-x86_64", {
    args: [
      ...["-accel", "tcg", "-m", "1536", "-smp", "2", "-display", "none", "-monitor", "none"],
      ...["-serial", `file:${serial}`, "-no-reboot"],
      ...["-kernel", k.vmlinuz, "-initrd", initrd],
      ...["-append", `console=ttyS0 panic=-1 quiet nr.nfsv=${o.nfsVersion ?? 4}`],
      ...["-drive", `file=${o.dataDisk},if=virtio,format=raw`],
      ...["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"],
      ...[
        "-netdev",
        `dgram,id=boot,local.type=inet,local.host=127.0.0.1,local.port=${serverUdp},` +
        `remote.type=inet,remote.host=127.0.0.1,remote.port=${nodeUdp}`,
      ],
      ...["-device", "virtio-net-pci,netdev=boot,mac=52:54:00:78:00:01,romfile="],
      ...[
        "-netdev",
        `user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:${apiPort}-:8080,` +
        `hostfwd=tcp:127.0.0.1:${shPort}-:9000`,
      ],
      ...["-device", "virtio-net-pci,netdev=mgmt,mac=52:54:00:78:00:02,romfile="],
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const log = () => existsSync(serial) ? readFileSync(serial, "utf8") : "";
  const vm: ServerVm = {
    apiUrl: `http://127.0.0.1:${apiPort}`,
    async sh(script, opts = {}) {
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), opts.timeoutMs ?? 120_000);
      try {
        const res = await fetch(`http://127.0.0.1:${shPort}/cgi-bin/sh`, {
          method: "POST",
          body: script,
          signal: ctl.signal,
        });
        const text = await res.text();
        const m = /RC=(\d+)\n?$/.exec(text);
        if (!m) throw new Error(`server VM shell: no status (HTTP ${res.status}): ${text}`);
        const out = text.slice(0, m.index);
        if (opts.check !== false && m[1] !== "0") {
          throw new Error(`server VM: \`${script.trim()}\` failed (${m[1]}): ${out}`);
        }
        return out;
      } finally {
        clearTimeout(timer);
      }
    },
    serveCommand(args) {
      const serve = [
        serveCmd,
        ...["--interface", "eth0", "--dhcp-range", bootNet.range, "--http", "0.0.0.0:8080"],
        ...(args.includes("--nfs") ? args : ["--nfs", "kernel", ...args]),
      ].join(" ");
      // The host's runs of the bundle (hostDenoDir) left V8's code cache for it: copied, the first
      // start does not compile the bundle again under TCG.
      return `[ -d /tmp/deno ] || cp -a ${hostDenoDir(work)} /tmp/deno 2>/dev/null; ` +
        `cd /tmp && HOME=/tmp DENO_DIR=/tmp/deno NO_COLOR=1 NETROOT_LOG=debug ` +
        `setsid ${serve} >>/run/serve.log 2>&1 </dev/null & echo $! > /run/serve.pid`;
    },
    nodeNetdev(mac) {
      return [
        "-netdev",
        `dgram,id=boot,local.type=inet,local.host=127.0.0.1,local.port=${nodeUdp},` +
        `remote.type=inet,remote.host=127.0.0.1,remote.port=${serverUdp}`,
        "-device",
        `virtio-net-pci,netdev=boot,mac=${mac}`,
      ];
    },
    serial: log,
    async close() {
      try {
        qemu.kill("SIGKILL");
      } catch { /* exited */ }
      await qemu.status;
    },
  };
  const exited = qemu.status.then(() => true);
  for (let i = 0; !log().includes("SERVER-VM-READY"); i++) {
    if (i > 600 || await Promise.race([exited, sleep(500).then(() => false)])) {
      await vm.close();
      throw new Error(`server VM did not come up; serial log ends:\n${log().slice(-3000)}`);
    }
  }
  if (/INSMOD-FAIL|9P-FAIL|DISK-MOUNT-FAIL/.test(log())) {
    await vm.close();
    throw new Error(`server VM init failed:\n${log().slice(-3000)}`);
  }
  return vm;
}
