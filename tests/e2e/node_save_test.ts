// End to end (root, qemu TCG, network namespace, nfs-ganesha): `node save` of a live node on the
// stock Debian image (tests/support/minbase.ts minbaseSshImage: systemd, openssh-server, GNU tar).
// One virtual node in network mode boots it; through `node run` it writes a file, deletes an image
// file and replaces a directory's contents (overlay whiteout, opaque directory); `node save`
// fetches its RAM upper over ssh (nothing given by hand) into a new image; the node is deployed to
// that image and rebooted; `node run` then shows the new file, and the deleted ones gone.
import assert from "node:assert/strict";
import { minbaseSshImage } from "../support/minbase.ts";
import { labTest, lastEventId, waitBooted } from "./harness.ts";

const bootMs = 1_500_000; // systemd under TCG on a shared machine

labTest("node save: a live network node's changes, deletions included, boot as a new image", async (
  { kernel, start },
) => {
  const t0 = performance.now();
  const image = await minbaseSshImage(kernel);
  const lab = await start({ nfs: "ganesha" });
  await lab.cli("image", "import", image, "--name", "stock");
  const vm = await lab.createVnode("sv-net", { image: "stock", ram: "1024M" });
  await waitBooted(lab, "sv-net", bootMs);
  lab.log(`booted ${((performance.now() - t0) / 1000).toFixed(0)} s after start`);

  const word = crypto.randomUUID();
  await lab.cli(
    "node",
    "run",
    "sv-net",
    "--",
    `echo ${word} > /root/saved && rm /etc/issue && rm -r /etc/skel && mkdir /etc/skel && ` +
      "echo only > /etc/skel/only",
  );
  const before = await lab.cli("node", "save", "sv-net", "saved", { check: false });
  assert.equal(before.code, 0, `${before.stdout}${before.stderr}`);
  lab.log(`node save: ${before.stdout.trim()}`);
  const hist = JSON.parse((await lab.cli("image", "history", "saved", "--json")).stdout);
  assert.equal(hist.at(-1).madeBy, "save", JSON.stringify(hist));

  const mark = await lastEventId(lab, vm.mac);
  await lab.cli("node", "boot", "sv-net", "saved");
  await lab.waitEvent(vm.mac, "init.handover", bootMs, mark);
  await waitBooted(lab, "sv-net", bootMs);
  const after = await lab.cli(
    "node",
    "run",
    "sv-net",
    "--",
    "cat /root/saved; test -e /etc/issue || echo issue-gone; ls -A /etc/skel",
  );
  assert.deepEqual(after.stdout.trim().split("\n"), [
    `sv-net | ${word}`,
    "sv-net | issue-gone",
    "sv-net | only",
  ]);
  lab.log(`node save e2e: ${((performance.now() - t0) / 1000).toFixed(0)} s`);
});
