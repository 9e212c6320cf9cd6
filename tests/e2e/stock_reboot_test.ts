// End to end (root, qemu TCG, network namespace, nfs-ganesha) on a stock Debian image: bookworm
// minbase with systemd and openssh-server from debootstrap, nothing of netroot installed in it
// (tests/support/minbase.ts minbaseSshImage). Two virtual nodes boot it, one in network mode, one
// in persistent hybrid mode:
//   - `node wait` returns once both are booted (their sshd answers);
//   - `node run` returns each node's output, over ssh with the key netroot init put into the
//     image's /root/.ssh/authorized_keys, the node's host key pinned from the image;
//   - the persistent hybrid node writes a file and `node reboot` follows within 2 s: the reboot is
//     a clean one (ssh `reboot`, systemd shuts down: no QMP reset), and the file is there after it,
//     and in the overlay upper netroot init shows read-only at /run/netroot/upper (node save).
import assert from "node:assert/strict";
import { minbaseSshImage } from "../support/minbase.ts";
import { labTest, lastEventId, waitBooted } from "./harness.ts";

const bootMs = 1_500_000; // systemd under TCG on a shared machine, a hybrid copy first

labTest("stock image: node wait, node run, a clean reboot keeps a file just written", async (
  { kernel, start },
) => {
  const image = await minbaseSshImage(kernel);
  const lab = await start({ nfs: "ganesha" });
  await lab.cli("image", "import", image, "--name", "stock");
  lab.log("stock image imported");
  const net = await lab.createVnode("st-net", { image: "stock", ram: "1024M" });
  const hyb = await lab.createVnode("st-hyb", {
    image: "stock",
    ram: "1024M",
    disks: ["1G[template=hybrid-persistent]"],
  });
  await waitBooted(lab, "st-net,st-hyb", bootMs);

  // node run: each node's output, prefixed by its name; the key is netroot's marked line.
  const run = await lab.cli(
    "node",
    "run",
    "st-net,st-hyb",
    "--",
    'echo "uid=$(id -u) keys=$(grep -c netroot-server /root/.ssh/authorized_keys)"',
  );
  assert.deepEqual(run.stdout.trim().split("\n").sort(), [
    "st-hyb | uid=0 keys=1",
    "st-net | uid=0 keys=1",
  ]);
  // (Seen once: ssh exit 255 without a word right after the first run; logged, tried again.)
  let hybrid = await lab.cli("node", "run", "st-hyb", "--", "cat /proc/cmdline", { check: false });
  if (hybrid.code !== 0) {
    lab.log(`node run failed once: ${hybrid.stdout}${hybrid.stderr}`);
    hybrid = await lab.cli("node", "run", "st-hyb", "--", "cat /proc/cmdline");
  }
  assert.match(hybrid.stdout, /^st-hyb \| .*netroot\.ssh=ssh-ed25519:/m);
  // The init ran the hybrid copy with early writeback; Debian's systemd gets the kernel's setting.
  assert.match(
    await lab.console(hyb.mac),
    /background writeback from 16 MiB of dirty data \(was 10 % of memory\)/,
  );
  const wb = await lab.cli(
    "node",
    "run",
    "st-hyb",
    "--",
    "echo wb=$(cat /proc/sys/vm/dirty_background_bytes)/$(cat /proc/sys/vm/dirty_background_ratio)",
  );
  assert.equal(wb.stdout.trim(), "st-hyb | wb=0/10");

  // The persistent hybrid node writes a file (no sync) and is rebooted right after.
  const word = crypto.randomUUID();
  await lab.cli("node", "run", "st-hyb", "--", `echo ${word} > /root/keep`);
  const wrote = performance.now();
  const mark = await lastEventId(lab, hyb.mac);
  const reboot = await lab.cli("node", "reboot", "st-hyb", "--cause", "e2e clean reboot");
  const within = performance.now() - wrote;
  lab.log(`node reboot ${within.toFixed(0)} ms after the write: ${reboot.stdout.trim()}`);
  assert.ok(within < 2000, `node reboot came ${within} ms after the write`);
  assert.match(reboot.stdout, /st-hyb: clean reboot requested \(ssh\)/);
  const down = await lab.waitEvent(hyb.mac, "reboot", 300_000, mark);
  assert.equal(down.detail.mechanism, "ssh", JSON.stringify(down.detail));
  await lab.waitEvent(hyb.mac, "init.handover", bootMs, mark);
  await waitBooted(lab, "st-hyb", bootMs);
  // …in the disk's upper too, which netroot init shows read-only where node save reads it
  const after = await lab.cli(
    "node",
    "run",
    "st-hyb",
    "--",
    "cat /root/keep /run/netroot/upper/root/keep; touch /run/netroot/upper/x || echo read-only",
  );
  assert.deepEqual(after.stdout.trim().split("\n"), [
    `st-hyb | ${word}`,
    `st-hyb | ${word}`,
    "st-hyb | read-only",
  ]);
  const since = (await lab.events(hyb.mac)).filter((e) => e.id > mark).map((e) => e.kind);
  assert.ok(!since.includes("vnode.reset"), `no hard reset: ${since.join(" ")}`);
  assert.equal(
    (await lab.events(net.mac)).filter((e) => e.kind === "reboot").length,
    0,
    "the other node was left alone",
  );
});
