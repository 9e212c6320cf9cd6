// Node init, network mode, on this host (root; mount + PID + network + UTS namespaces): time from
// init start to just before execve of the image's init, without module loading and with a local
// bind mount standing in for NFS (the real figure in qemu comes from the e2e harness).
// Peer: the same sequence as a busybox shell script (e2e-recipe.md §9 style: mount, ip,
// switch_root), run the same way. Both are timed from their first console line to the first line
// of the image's /sbin/init, as the lines arrive on the pipe.
//   deno run -A bench/init_bench.ts [runs]
import { makeScratch, runHarness, runInNamespaces, type Scratch } from "../tests/init_support.ts";

const runs = Number(Deno.args[0] ?? 15);
const INIT = `#!/bin/sh\necho "INIT pid=$$"\n`;

const STAGE1 = (s: Scratch) =>
  `set -e
mount --make-rprivate /
/usr/sbin/ip link add nr0 address 52:54:00:aa:bb:cc type veth peer name nr1
/usr/sbin/ip link set nr1 up
I=${s.dir}/bbinitrd
mkdir -p $I
mount -t tmpfs -o mode=0755 initrd $I
mkdir -p $I/bin $I/proc $I/sys $I/dev $I/run $I/newroot $I/srv/lower $I/srv/persist
cp /bin/busybox $I/bin/busybox
echo "#!/bin/false" > $I/init
for a in sh mount ip mkdir switch_root; do ln -s busybox $I/bin/$a; done
mount --bind ${s.lower} $I/srv/lower
mount --bind ${s.persist} $I/srv/persist
cp ${s.dir}/stage2.sh $I/stage2.sh
exec chroot $I /bin/sh /stage2.sh
`;

// What netroot init does in network mode, minus the reports and the initramfs freeing.
const STAGE2 = `set -e
export PATH=/bin
echo "BB start"
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs -o mode=0755 run /run
ip link set lo up; ip addr add 10.99.0.2/24 dev nr0; ip link set nr0 up
ip route add default via 10.99.0.1
mkdir -p /run/netroot/lower /run/netroot/rw /newroot
mount --bind /srv/lower /run/netroot/lower; mount -o remount,bind,ro /run/netroot/lower
mount -t tmpfs -o size=64m,mode=0755 rw /run/netroot/rw
mkdir /run/netroot/rw/upper /run/netroot/rw/work
mount -t overlay overlay -o lowerdir=/run/netroot/lower,upperdir=/run/netroot/rw/upper,workdir=/run/netroot/rw/work /newroot
mkdir -p /newroot/persist; mount --bind /srv/persist /newroot/persist
for d in run dev sys proc; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /sbin/init
`;

function between(r: { lines: string[]; times: number[] }, from: string, to: string): number {
  const a = r.lines.findIndex((l) => l.startsWith(from));
  const b = r.lines.findIndex((l) => l.startsWith(to));
  if (a < 0 || b < 0 || b >= r.times.length) {
    throw new Error(`markers ${from} / ${to} not found in:\n${r.lines.join("\n")}`);
  }
  return r.times[b] - r.times[a];
}

/** "handover to /sbin/init (28 ms since init start)" → 28 */
function internalMs(lines: string[]): number {
  const m = lines.map((l) => /handover to \S+ \(([\d.]+) (ms|s) since init start\)/.exec(l))
    .find(Boolean);
  if (!m) throw new Error(`no handover line in:\n${lines.join("\n")}`);
  return Number(m[1]) * (m[2] === "s" ? 1000 : 1);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const f = (x: number) => x.toFixed(1).padStart(7);

const s = await makeScratch(INIT);
const deno = { internal: [] as number[], toInit: [] as number[], wall: [] as number[] };
const bb = { toInit: [] as number[], wall: [] as number[] };
try {
  await Deno.writeTextFile(`${s.dir}/stage1.sh`, STAGE1(s));
  await Deno.writeTextFile(`${s.dir}/stage2.sh`, STAGE2);
  for (let i = 0; i < runs; i++) {
    const d = await runHarness(s);
    if (d.code !== 0) throw new Error(`netroot init run failed (rc ${d.code}):\n${d.out}`);
    deno.internal.push(internalMs(d.lines));
    deno.toInit.push(between(d, "netroot-init: starting", "INIT pid="));
    deno.wall.push(d.wallMs);
    await Deno.remove(s.persist, { recursive: true });
    await Deno.mkdir(s.persist);

    const b = await runInNamespaces(["/bin/busybox", "sh", `${s.dir}/stage1.sh`], {});
    if (b.code !== 0) throw new Error(`busybox peer failed (rc ${b.code}):\n${b.out}`);
    bb.toInit.push(between(b, "BB start", "INIT pid="));
    bb.wall.push(b.wallMs);
  }
} finally {
  await Deno.remove(s.dir, { recursive: true });
}

console.log(`init_bench: ${runs} runs each, medians (ms), this host, bind mount instead of NFS`);
console.log(
  `  netroot init  start → before execve (its own clock)      ${f(median(deno.internal))}`,
);
console.log(
  `  netroot init  first console line → image init's first line ${f(median(deno.toInit))}`,
);
console.log(`  busybox sh    first console line → image init's first line ${f(median(bb.toInit))}`);
console.log(
  `  ratio netroot/busybox (same span)                        ${
    (median(deno.toInit) / median(bb.toInit)).toFixed(2).padStart(7)
  }x`,
);
console.log(
  `  whole run, unshare spawn → exit: netroot ${f(median(deno.wall))}, busybox ${
    f(median(bb.wall))
  }` +
    ` (ratio ${
      (median(deno.wall) / median(bb.wall)).toFixed(2)
    }x; netroot includes Deno startup and its report server)`,
);
