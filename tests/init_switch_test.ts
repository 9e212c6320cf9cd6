// Privileged (root; unshare, mount and network namespaces): the real node-init sequence on this
// host, with a local directory as the lower layer instead of NFS (the host kernel has no NFS
// client). See tests/init_harness.ts.
import assert from "node:assert/strict";
import { cmdline, type HarnessRun, makeScratch, runHarness } from "./init_support.ts";

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
    // node save reads the upper there: the node's own writes, read-only.
    assert.equal(marker(r, "upper-visible"), "ok", ctx);
    assert.equal(marker(r, "upper-readonly"), "ok", ctx);
    assert.equal(marker(r, "no-initramfs-leftovers"), "ok", ctx);
    assert.match(marker(r, "addr") ?? "", /inet 10\.99\.0\.2\/24/, ctx);
    assert.match(marker(r, "route") ?? "", /default via 10\.99\.0\.1 dev nr0/, ctx);
    assert.equal(marker(r, "deno-env"), "0", ctx);
    assert.equal(marker(r, "hostname"), "node1", ctx); // from ip=, in the test's own UTS namespace
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

Deno.test("init (root, namespaces): /persist failing is loud but not fatal", async () => {
  const s = await makeScratch();
  try {
    const r = await runHarness(s, { persist: `${s.dir}/no-such-persist` });
    const ctx = `\n--- output ---\n${r.out}`;
    assert.equal(r.code, 0, ctx); // booted anyway
    assert.equal(marker(r, "pid"), "1", ctx);
    assert.ok(
      r.lines.some((l) =>
        l.includes("WARNING: /persist was not mounted; files written there stay in RAM")
      ),
      ctx,
    );
    const p = r.reports.find((x) => x.stage === "persist");
    assert.equal(p?.ok, false, ctx);
    assert.match(String(p?.detail), /^\/persist is NOT mounted: mount .*No such file or directory/);
    assert.equal(r.reports.at(-1)?.stage, "handover", ctx);
  } finally {
    await Deno.remove(s.dir, { recursive: true });
  }
});

Deno.test("init (root, namespaces): a hostname too long for Linux in ip= is a warning, not a fatal boot", async () => {
  const s = await makeScratch();
  try {
    // The node's kernel.cmdline setting is appended last, and its ip= wins: a 100-byte hostname
    // made sethostname(2) fail with EINVAL in the network stage, a fatal boot at every boot.
    const long = "h".repeat(100);
    const r = await runHarness(s, {
      cmdline: cmdline(8099, `ip=10.99.0.2:10.99.0.1:10.99.0.1:255.255.255.0:${long}::off`),
    });
    const ctx = `\n--- output ---\n${r.out}`;
    assert.equal(r.code, 0, ctx);
    assert.ok(
      r.lines.some((l) => l.includes(`warning: ip=: hostname ${long.slice(0, 16)}`)),
      ctx,
    );
    assert.equal(marker(r, "pid"), "1", ctx);
  } finally {
    await Deno.remove(s.dir, { recursive: true });
  }
});

Deno.test("init (root, namespaces): a gateway off the node's subnet in ip= is a warning, not a fatal boot", async () => {
  const s = await makeScratch();
  try {
    // A dhcp.router off the boot network (or a node's kernel.cmdline with its own ip=): the
    // default route is refused (ENETUNREACH), which failed the network stage at every boot,
    // while the server the node needs is on its link.
    const r = await runHarness(s, {
      cmdline: cmdline(8099, "ip=10.99.0.2:10.99.0.1:10.1.2.3:255.255.255.0:node1::off"),
    });
    const ctx = `\n--- output ---\n${r.out}`;
    assert.equal(r.code, 0, ctx);
    assert.ok(r.lines.some((l) => l.includes("warning: no default route via 10.1.2.3")), ctx);
    assert.equal(marker(r, "pid"), "1", ctx);
  } finally {
    await Deno.remove(s.dir, { recursive: true });
  }
});
