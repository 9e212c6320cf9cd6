// Privileged (root; unshare, mount and network namespaces): the real node-init sequence on this
// host, with a local directory as the lower layer instead of NFS (the host kernel has no NFS
// client). See tests/init_harness.ts.
import assert from "node:assert/strict";
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
[ -e /netroot ] || echo "INIT no-initramfs-leftovers=ok"
echo "INIT addr=$(ip -4 -o addr show nr0)"
echo "INIT route=$(ip route show default)"
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
  for (const a of ["sh", "cat", "readlink", "ip", "env", "grep"]) {
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
    "netroot.timeout=1",
    "netroot.tmpfs=64m",
    extra,
  ].join(" ");
}

export interface HarnessRun {
  code: number;
  out: string;
  lines: string[];
  reports: Record<string, unknown>[];
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
  const cmd = new Deno.Command("unshare", {
    args: [
      "--mount",
      "--pid",
      "--fork",
      "--net",
      "--",
      Deno.execPath(),
      "run",
      "-A",
      "--no-config",
      harness,
      cfgPath,
    ],
    stdout: "piped",
    stderr: "piped",
    // A bare environment, as the kernel gives init (the host's CA/proxy variables stay out).
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin",
      NO_COLOR: "1",
      DENO_DIR: `${s.dir}/deno-dir`,
    },
  });
  const child = cmd.spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  }, 60_000);
  try {
    const o = await child.output();
    const out = new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr);
    const lines = out.split("\n");
    const reports = lines.filter((l) => l.startsWith("REPORT ")).map((l) => JSON.parse(l.slice(7)));
    return { code: o.code, out, lines, reports };
  } finally {
    clearTimeout(timer);
  }
}

const marker = (r: HarnessRun, key: string) =>
  r.lines.find((l) => l.startsWith(`INIT ${key}=`))?.slice(`INIT ${key}=`.length);

Deno.test("init (root, namespaces): overlay + persist + switch_root + execve keeps PID 1", async () => {
  const s = await makeScratch();
  try {
    const before = await Deno.readTextFile(`${s.lower}/etc/image-file`);
    const r = await runHarness(s, { junkModules: ["kernel/junk.ko", "kernel/missing-dep.ko"] });
    const ctx = `\n--- output ---\n${r.out}`;
    assert.equal(r.code, 0, ctx); // the image's init exited 0; 42 would be the fatal path
    assert.ok(r.lines.includes("HARNESS pid=1"), ctx);
    // execve, not spawn: the image's init has Deno's PID, and PID 1 is now busybox.
    assert.equal(marker(r, "pid"), "1", ctx);
    assert.equal(marker(r, "exe"), "/bin/busybox", ctx);
    // "/" is the overlay, with the lower and upper we built.
    const rootMount = r.lines.filter((l) => l.startsWith("INIT mount ")).map((l) => l.split(" "))
      .filter((f) => f[6] === "/").at(-1);
    assert.ok(rootMount, ctx);
    const fstype = rootMount[rootMount.indexOf("-") + 1];
    assert.equal(fstype, "overlay", ctx);
    assert.match(
      rootMount.join(" "),
      /lowerdir=\/run\/netroot\/lower,upperdir=\/run\/netroot\/rw\/upper/,
      ctx,
    );
    assert.ok(r.lines.some((l) => /^INIT mount .* \/persist .*/.test(l)), ctx);
    assert.equal(marker(r, "wrote"), "hello", ctx);
    assert.equal(marker(r, "persist"), "ok", ctx);
    assert.equal(marker(r, "devnull"), "ok", ctx);
    assert.equal(marker(r, "lower-visible"), "ok", ctx);
    assert.equal(marker(r, "no-initramfs-leftovers"), "ok", ctx);
    assert.match(marker(r, "addr") ?? "", /inet 10\.99\.0\.2\/24/, ctx);
    assert.match(marker(r, "route") ?? "", /default via 10\.99\.0\.1 dev nr0/, ctx);
    assert.equal(marker(r, "deno-env"), "0", ctx);
    // The lower layer is untouched; /persist reached the host.
    assert.equal(await Deno.readTextFile(`${s.lower}/etc/image-file`), before);
    await assert.rejects(Deno.stat(`${s.lower}/written-by-init`));
    assert.equal(await Deno.readTextFile(`${s.persist}/mark`), "from-node\n");
    // Modules that fail do not stop the boot, and are named.
    assert.ok(
      r.lines.some((l) =>
        l.startsWith("netroot-init: modules: 0 loaded, 2 failed (junk, missing-dep)")
      ),
      ctx,
    );
    // Console: the grep-able handover line, stage timings.
    assert.ok(r.lines.some((l) => l.startsWith("netroot-init: handover to /sbin/init (")), ctx);
    assert.ok(r.lines.some((l) => /^netroot-init: overlay: .*\(\d+ ms\)$/.test(l)), ctx);
    // Reports, in order, with the identity of the boot.
    assert.deepEqual(r.reports.map((x) => x.stage), [
      "start",
      "modules",
      "network",
      "nfs-root",
      "overlay",
      "persist",
      "handover",
    ], ctx);
    for (const x of r.reports) {
      assert.equal(x.token, "t0k3n");
      assert.equal(x.mac, "52:54:00:aa:bb:cc");
      assert.equal(x.ok, true, JSON.stringify(x));
      assert.equal(typeof x.ms, "number");
    }
  } finally {
    await Deno.remove(s.dir, { recursive: true });
  }
});

Deno.test("init (root, namespaces): a missing root is fatal: message, fatal report, reboot", async () => {
  const s = await makeScratch();
  try {
    const r = await runHarness(s, { lower: `${s.dir}/no-such-image` });
    const ctx = `\n--- output ---\n${r.out}`;
    assert.equal(r.code, 42, ctx);
    assert.ok(r.lines.some((l) => l.includes('FATAL: boot stage "nfs-root" failed')), ctx);
    assert.ok(
      r.lines.some((l) => l.includes("check: the server exports 10.99.0.1:/netroot/images/abc")),
      ctx,
    );
    assert.ok(
      r.lines.some((l) => /attempt 1 failed: mount .*No such file or directory/.test(l)),
      ctx,
    );
    assert.ok(r.lines.some((l) => l.includes("gave up after")), ctx);
    assert.ok(r.lines.includes("netroot-init: rebooting in 1…"), ctx);
    assert.ok(r.lines.includes("HARNESS reboot called"), ctx);
    const fatal = r.reports.find((x) => x.stage === "fatal");
    assert.ok(fatal, ctx);
    assert.equal(fatal.ok, false);
    assert.match(String(fatal.detail), /^nfs-root: /);
  } finally {
    await Deno.remove(s.dir, { recursive: true });
  }
});

Deno.test("init (root, namespaces): a bad command line is fatal with every problem listed", async () => {
  const s = await makeScratch();
  try {
    const r = await runHarness(s, {
      cmdline: "console=ttyS0 ip=dhcp netroot.mac=zz netroot.timeout=soon",
    });
    const ctx = `\n--- output ---\n${r.out}`;
    assert.equal(r.code, 42, ctx);
    assert.ok(r.lines.some((l) => l.includes('FATAL: boot stage "cmdline" failed')), ctx);
    for (
      const p of [
        "netroot.mac=zz is not a MAC address",
        "ip=dhcp",
        "netroot.root= is missing",
        "netroot.timeout=soon",
      ]
    ) {
      assert.ok(r.lines.some((l) => l.includes(p)), `${p}${ctx}`);
    }
    assert.deepEqual(r.reports, [], ctx); // no network: nothing could be reported
  } finally {
    await Deno.remove(s.dir, { recursive: true });
  }
});

Deno.test("init (root, namespaces): missing init in the image is fatal before anything is freed", async () => {
  const s = await makeScratch();
  try {
    const r = await runHarness(s, { cmdline: cmdline(8099, "init=/sbin/nothere") });
    const ctx = `\n--- output ---\n${r.out}`;
    assert.equal(r.code, 42, ctx);
    assert.ok(r.lines.some((l) => l.includes("/sbin/nothere is missing or not executable")), ctx);
    assert.ok(!r.lines.some((l) => l.includes("freed")), ctx);
    assert.equal(r.reports.at(-1)?.stage, "fatal", ctx);
  } finally {
    await Deno.remove(s.dir, { recursive: true });
  }
});
