// End to end (root, qemu TCG, network namespace, nfs-ganesha, iptables): one virtual node's life
// in network mode, with the Debian kernel, netroot's own DHCP/HTTP/initramfs and ganesha run by
// netroot. Boots are expensive (≈ 30 s each under TCG), so one vnode goes through all of it:
//   1. image v1, kernel.cmdline e2e.reboots=2: boot, write into /etc, / and /persist, reboot by
//      itself; the second boot sees no /etc or / change (RAM overlay gone) but /persist kept; the
//      image tree on the server is byte-for-byte the imported one (its manifest hash = its id).
//   2. `netroot node boot NODE v2` (deploy + qemu restart): the next boot runs v2, same /persist.
//   3. NFS unreachable (TCP 2049 rejected in the namespace) with nfs.timeout=20: the console
//      shows the init's `mount attempt` retries, the FATAL message and the reboot; once NFS is
//      reachable again the node boots v2 to IMAGE-BOOT-OK by itself.
// Every boot's timeline has dhcp → http.script → http.kernel → http.initramfs → init.* →
// init.handover.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { scanTree } from "../../src/images/walk.ts";
import { manifestText } from "../../contract/manifest.ts";
import type { Event } from "../../src/events.ts";
import { buildTestImage } from "../support/testimage.ts";
import { assertInOrder, type Lab, labTest, lastEventId } from "./harness.ts";

/** One TCG boot to the image's init takes ≈ 30 s here; a hung VM fails after this. */
const bootMs = 300_000;

/** The stages of one successful network-mode boot, as the node's timeline records them. */
const bootStages = [
  "dhcp.ack",
  "http.script",
  "http.kernel",
  "http.initramfs",
  "init.start",
  "init.modules",
  "init.network",
  "init.nfs-root",
  "init.overlay",
  "init.persist",
  "init.handover",
];

/**
 * Puts a probe in front of the test image's /sbin/init: it prints what an earlier boot left in
 * /etc, writes into /etc, appends the release to /persist/releases (when /persist is mounted),
 * then execs the test image's init (which does the same with a marker in / and
 * /persist/bootcount, and reboots or powers off as e2e.reboots= says).
 */
async function addEtcProbe(root: string): Promise<void> {
  await Deno.rename(join(root, "sbin/init"), join(root, "sbin/init.testimage"));
  await Deno.writeTextFile(
    join(root, "sbin/init"),
    `#!/bin/sh
mount -t proc proc /proc 2>/dev/null
echo "E2E-PROBE etc-before=$(cat /etc/e2e-probe 2>/dev/null || echo none)"
echo "written at uptime $(cut -d' ' -f1 /proc/uptime)" > /etc/e2e-probe
echo "E2E-PROBE etc-now=$(cat /etc/e2e-probe)"
if grep -q ' /persist ' /proc/mounts; then cut -d' ' -f2 /etc/image-release >> /persist/releases; fi
grep -E ' /run/netroot/lower | /persist ' /proc/mounts | sed 's/^/E2E-MOUNT /'
exec /sbin/init.testimage
`,
    { mode: 0o755 },
  );
  await Deno.chmod(join(root, "sbin/init"), 0o755);
}

/** sha256 of the manifest of the tree as it is now: equal to the image id iff nothing changed
 *  (paths, types, modes, owners, sizes, mtimes, content hashes, xattrs). */
async function treeId(rootfs: string): Promise<string> {
  const { entries } = await scanTree(rootfs);
  return createHash("sha256").update(new TextEncoder().encode(manifestText(entries))).digest(
    "hex",
  );
}

/** The console text of each image boot (split at the probe's first line). */
function imageBoots(text: string): string[] {
  return text.split(/(?=E2E-PROBE etc-before=)/).slice(1);
}

/** "stage 123 ms" for the init.* events after `since`, for the log. */
function stageTimes(events: Event[], since: number): string {
  return events.filter((e) => e.id > since && e.kind.startsWith("init.") && "ms" in e.detail)
    .map((e) => `${e.kind.slice(5)} ${e.detail.ms} ms`).join(", ");
}

async function iptables(lab: Lab, op: "-I" | "-D"): Promise<void> {
  const rule = [
    "INPUT",
    "-p",
    "tcp",
    "--dport",
    "2049",
    "-j",
    "REJECT",
    "--reject-with",
    "tcp-reset",
  ];
  const r = await lab.run(["iptables", op, ...rule]);
  if (r.code !== 0) throw new Error(`iptables ${op} ${rule.join(" ")}: ${r.stderr.trim()}`);
}

labTest(
  "e2e (root, qemu, ganesha, iptables): network-mode lifecycle — RAM root, kept /persist, untouched image, deploy + reboot to v2, NFS outage retries then boots",
  async ({ kernel, imageDir, start }) => {
    const v1 = await buildTestImage(join(imageDir, "v1"), { kernel, release: "v1" });
    const v2 = await buildTestImage(join(imageDir, "v2"), { kernel, release: "v2" });
    await addEtcProbe(v1.dir);
    await addEtcProbe(v2.dir);
    const lab = await start({ nfs: "ganesha" });
    await lab.cli("image", "import", v1.dir, "--name", "v1");
    await lab.cli("image", "import", v2.dir, "--name", "v2");
    const images = JSON.parse((await lab.cli("image", "ls", "--json")).stdout) as {
      name: string;
      id: string;
    }[];
    const id = Object.fromEntries(images.map((i) => [i.name, i.id]));
    assert.ok(id.v1 && id.v2 && id.v1 !== id.v2, JSON.stringify(images));
    const rootfs = (i: string) => join(lab.data, "images", i, "rootfs");
    assert.equal(await treeId(rootfs(id.v1)), id.v1, "the stored tree matches its manifest");

    // ---- 1. v1: two boots (the image reboots itself once), RAM root vs /persist ----
    const vm = await lab.createVnode("life", { image: "v1", ram: "512M" });
    const persist = join(lab.data, "nodes", vm.mac, "persist");
    await lab.cli("node", "config", "life", "kernel.cmdline=e2e.reboots=2");
    // The setting applies from the next iPXE script: reset the boot that started with create.
    let mark = await lastEventId(lab, vm.mac);
    let at = (await lab.console(vm.mac)).length;
    await lab.cli("node", "reboot", "life");
    await lab.waitConsole(vm.mac, /bootcount=1[\s\S]*REBOOTING/, bootMs, { from: at });
    await lab.waitConsole(vm.mac, /bootcount=2[\s\S]*IMAGE-BOOT-OK/, bootMs, { from: at });
    await lab.waitEvent(vm.mac, "vnode.exit", 60_000, mark); // bootcount 2 = e2e.reboots: off
    const boots = imageBoots((await lab.console(vm.mac)).slice(at));
    assert.equal(boots.length, 2, `two image boots on the console:\n${boots.join("\n---\n")}`);
    for (const [i, b] of boots.entries()) {
      assert.match(b, /image init started: netroot-test-image v1/);
      // The first boot wrote /etc/e2e-probe and /boot-marker; the second sees neither.
      assert.match(b, /E2E-PROBE etc-before=none/, `boot ${i + 1}: /etc is fresh`);
      assert.match(b, /E2E-PROBE etc-now=written at uptime/, `boot ${i + 1}: /etc writable`);
      assert.match(b, /previous-boot-marker=none/, `boot ${i + 1}: / is fresh`);
      assert.match(b, new RegExp(`bootcount=${i + 1}\\b`), `boot ${i + 1}: /persist kept`);
      assert.match(b, /overlay \/ overlay/);
      assert.match(b, / \/persist nfs4? /);
      // The image's tree, never changed in place, is cached as such; the node's /persist is not.
      assert.match(b, /E2E-MOUNT \S+ \/run\/netroot\/lower nfs4? ro,\S*nocto/);
      assert.match(b, /E2E-MOUNT \S+ \/persist nfs4? rw,/);
      assert.doesNotMatch(b, /E2E-MOUNT \S+ \/persist \S+ \S*nocto/);
    }
    assert.equal((await Deno.readTextFile(join(persist, "bootcount"))).trim(), "2");
    assert.equal(await Deno.readTextFile(join(persist, "releases")), "v1\nv1\n");
    let events = await lab.events(vm.mac);
    let kinds = events.filter((e) => e.id > mark).map((e) => e.kind);
    lab.log(`v1 timeline: ${kinds.join(" → ")}`);
    assertInOrder(kinds, ["vnode.reset", ...bootStages, ...bootStages, "vnode.exit"]);
    lab.log(`v1 init stages: ${stageTimes(events, mark)}`);
    for (const e of events.filter((e) => e.id > mark && e.kind.startsWith("init."))) {
      assert.equal(e.detail.image, id.v1, `${e.kind} belongs to a v1 boot`);
      assert.equal(typeof e.detail.ms, "number", `${e.kind} carries its duration`);
    }
    // The nodes wrote into /etc and / of a root whose lower layer is the image: on the server
    // the image is the imported one, file for file.
    assert.equal(await treeId(rootfs(id.v1)), id.v1, "v1 unchanged by two boots");
    await assert.rejects(Deno.stat(join(rootfs(id.v1), "etc/e2e-probe")));
    await assert.rejects(Deno.stat(join(rootfs(id.v1), "boot-marker")));

    // ---- 2. deploy v2 with the CLI: the node is pointed at v2 and restarted by qemu ----
    mark = await lastEventId(lab, vm.mac);
    at = (await lab.console(vm.mac)).length;
    const deployed = JSON.parse((await lab.cli("node", "boot", "life", "v2", "--json")).stdout);
    assert.equal(deployed.reboots[0].ok, true, JSON.stringify(deployed));
    assert.equal(deployed.reboots[0].mechanism, "qemu");
    assert.equal(
      await Deno.readLink(join(lab.data, "nodes", vm.mac, "fs")),
      join("..", "..", "images", id.v2, "rootfs"),
    );
    const v2out = await lab.waitConsole(vm.mac, /IMAGE-BOOT-OK/, bootMs, { from: at });
    assert.match(v2out, /image init started: netroot-test-image v2/);
    assert.doesNotMatch(v2out, /netroot-test-image v1/);
    assert.match(v2out, /E2E-PROBE etc-before=none/);
    assert.match(v2out, /bootcount=3\b/);
    await lab.waitEvent(vm.mac, "vnode.exit", 60_000, mark);
    assert.equal(await Deno.readTextFile(join(persist, "releases")), "v1\nv1\nv2\n");
    events = await lab.events(vm.mac);
    kinds = events.filter((e) => e.id > mark).map((e) => e.kind);
    lab.log(`deploy timeline: ${kinds.join(" → ")}`);
    assertInOrder(kinds, ["deploy", "vnode.start", ...bootStages, "vnode.exit"]);
    const script = events.find((e) => e.id > mark && e.kind === "http.script")!;
    assert.equal(script.detail.image, id.v2);
    assert.equal(
      events.find((e) => e.id > mark && e.kind === "init.handover")!.detail.image,
      id.v2,
    );
    lab.log(`v2 init stages: ${stageTimes(events, mark)}`);

    // ---- 3. NFS unreachable: retries, FATAL, reboot; then it boots by itself ----
    await lab.cli("node", "config", "life", "nfs.timeout=20");
    await iptables(lab, "-I");
    let blocked = true;
    try {
      mark = await lastEventId(lab, vm.mac);
      at = (await lab.console(vm.mac)).length;
      await lab.cli("node", "reboot", "life");
      await lab.waitConsole(vm.mac, /mount attempt 2 failed/, bootMs, { from: at });
      const failed = await lab.waitConsole(vm.mac, /rebooting now/, 120_000, { from: at });
      assert.match(failed, /netroot\.timeout=20/);
      assert.match(failed, /FATAL: boot stage "nfs-root" failed/);
      assert.match(failed, /gave up after \d+ attempts/);
      assert.doesNotMatch(failed, /E2E-PROBE/, "no image init ran without its root");
      const attempts = failed.match(/mount attempt \d+ failed[^\n]*/g) ?? [];
      lab.log(`${attempts.length} mount attempts; last: ${attempts.at(-1)}`);
      at += failed.length;
      await iptables(lab, "-D");
      blocked = false;
    } finally {
      if (blocked) await iptables(lab, "-D").catch(() => {});
    }
    // The init's reboot(2) resets the VM: with NFS back it boots like before.
    const back = await lab.waitConsole(vm.mac, /IMAGE-BOOT-OK/, bootMs, { from: at });
    assert.match(back, /image init started: netroot-test-image v2/);
    assert.match(back, /bootcount=4\b/, "the failed boot never reached /persist");
    await lab.waitEvent(vm.mac, "vnode.exit", 60_000, mark);
    events = await lab.events(vm.mac);
    kinds = events.filter((e) => e.id > mark).map((e) => e.kind);
    lab.log(`NFS outage timeline: ${kinds.join(" → ")}`);
    const fatal = events.find((e) => e.id > mark && e.kind === "init.fatal");
    assert.ok(fatal, "the fatal stage is reported");
    assert.match(String(fatal.detail.detail), /^nfs-root: /);
    assertInOrder(kinds, [
      "vnode.start",
      "dhcp.ack",
      "http.script",
      "init.network",
      "init.fatal",
      ...bootStages,
      "vnode.exit",
    ]);
    // No NFS root was mounted in the failed boot: its init.nfs-root comes only after the fatal.
    const fatalAt = kinds.indexOf("init.fatal");
    assert.equal(kinds.slice(0, fatalAt).includes("init.nfs-root"), false);

    // Both images stay as imported after five boots of writes.
    assert.equal(await treeId(rootfs(id.v1)), id.v1);
    assert.equal(await treeId(rootfs(id.v2)), id.v2);
  },
);
