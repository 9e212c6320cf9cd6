// End to end on UEFI (root, qemu TCG, OVMF from the Debian package `ovmf`, nfs-ganesha): the whole
// chain from the firmware's own network stack to the image's /sbin/init, with no iPXE option ROM
// on the NIC (as on a UEFI PC):
//   full DHCP:  OVMF PXE → TFTP ipxe.efi → iPXE script → kernel + netroot initramfs → hybrid mode
//               OVMF HTTP boot (no TFTP at all: option 60 HTTPClient, option 67 the URL of
//               ipxe.efi) → iPXE script → network mode
//   proxy DHCP (strategy port4011) beside the lab's dnsmasq: OVMF PXE → … → network mode, and
//               OVMF HTTP boot → … → network mode
// Two labs, four boots, the two of a lab at once (about 1.5 min under TCG).
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Event } from "../../src/events.ts";
import { OVMF_CODE } from "../../src/vnode/qemu.ts";
import { buildTestImage } from "../support/testimage.ts";
import { assertInOrder, type Lab, labTest } from "./harness.ts";

/** Boots a new vnode until its image's init has run and powered off; its timeline and console. */
async function bootToImage(
  lab: Lab,
  name: string,
  opts: { firmware: string; disks?: string[] },
): Promise<{ mac: string; events: Event[]; kinds: string[]; out: string }> {
  const t0 = performance.now();
  const vm = await lab.createVnode(name, { image: "test", ram: "512M", ...opts });
  const out = await lab.waitConsole(vm.mac, /IMAGE-BOOT-OK/, 420_000);
  await lab.waitEvent(vm.mac, "vnode.exit", 60_000);
  const all = await lab.events(vm.mac);
  // A firmware whose network boot gave up (OVMF falls through to its shell, seen on a loaded CI
  // machine) fetched no script: the watchdog resets the node (boot.timeout, 180 s) as it would a
  // PC in a lab. The checks below look at the boot that reached the image.
  const reset = all.findLastIndex((e) => e.kind === "vnode.reset");
  const events = reset < 0 ? all : all.slice(reset);
  const kinds = events.map((e) => e.kind);
  if (reset >= 0) {
    const cause = all.find((e) => e.kind === "reboot")?.detail.cause;
    lab.log(
      `${name}: reset by the watchdog (${cause}); first try: ${
        all.slice(0, reset).map((e) => e.kind).join(" → ")
      }`,
    );
  }
  lab.log(
    `${name} (${opts.firmware}) booted its image in ${
      ((performance.now() - t0) / 1000).toFixed(0)
    } s: ${kinds.join(" → ")}`,
  );
  assert.match(out, /image init started: netroot-test-image v1/);
  return { mac: vm.mac, events, kinds, out };
}

const dhcp = (events: Event[]) =>
  events.filter((e) => e.kind.startsWith("dhcp.")).map((e) => `${e.kind}:${e.detail.firmware}`);

const noOvmf = !existsSync(OVMF_CODE);

labTest(
  "e2e: UEFI full DHCP — OVMF PXE → TFTP ipxe.efi → hybrid mode, and OVMF HTTP boot → network mode",
  async ({ kernel, imageDir, start }) => {
    if (noOvmf) throw new Error(`${OVMF_CODE} missing: install the Debian package ovmf`);
    const image = await buildTestImage(join(imageDir, "rootfs"), { kernel, release: "v1" });
    const lab = await start({ nfs: "ganesha" });
    await lab.cli("image", "import", image.dir, "--name", "test");
    const [pxe, http] = await Promise.all([
      bootToImage(lab, "uefi-pxe", { firmware: "uefi", disks: ["256M[template=hybrid-volatile]"] }),
      bootToImage(lab, "uefi-http", { firmware: "uefi-http" }),
    ]);

    // PXE: the firmware (arch 7) gets ipxe.efi by TFTP, iPXE gets the script; hybrid mode.
    assert.deepEqual(dhcp(pxe.events).slice(0, 4), [
      "dhcp.offer:uefi64",
      "dhcp.ack:uefi64",
      "dhcp.offer:ipxe",
      "dhcp.ack:ipxe",
    ]);
    assert.equal(pxe.events.find((e) => e.kind === "tftp.done")?.detail.file, "ipxe.efi");
    assertInOrder(pxe.kinds, [
      "tftp.done",
      "http.script",
      "http.kernel",
      "http.initramfs",
      "init.start",
      "init.hybrid-ready",
      "init.handover",
      "vnode.exit",
    ]);
    assert.match(pxe.out, /hybrid mode \(volatile\)/);

    // HTTP boot: vendor class HTTPClient, ipxe.efi by URL, never a TFTP packet; network mode.
    assert.deepEqual(dhcp(http.events).slice(0, 2), [
      "dhcp.offer:uefi-http",
      "dhcp.ack:uefi-http",
    ]);
    assert.ok(!http.kinds.some((k) => k.startsWith("tftp.")), http.kinds.join(" "));
    assert.equal(http.events.find((e) => e.kind === "http.ipxe")?.detail.file, "ipxe.efi");
    assertInOrder(http.kinds, [
      "http.ipxe",
      "dhcp.ack",
      "http.script",
      "http.kernel",
      "http.initramfs",
      "init.nfs-root",
      "init.overlay",
      "init.handover",
      "vnode.exit",
    ]);
    assert.match(http.out, /overlay \/ overlay/);
  },
);

labTest(
  "e2e: UEFI proxy DHCP (port 4011) beside dnsmasq — OVMF PXE and OVMF HTTP boot → network mode",
  async ({ kernel, imageDir, start }) => {
    if (noOvmf) throw new Error(`${OVMF_CODE} missing: install the Debian package ovmf`);
    const image = await buildTestImage(join(imageDir, "rootfs"), { kernel, release: "v1" });
    // port4011, the strategy with more steps (dhcp_uefi_vm_test proves option43 up to the script):
    // a bare proxy offer, then the PXE client's request on port 4011 names the file.
    const lab = await start({
      nfs: "ganesha",
      dhcp: "proxy",
      serveArgs: ["--proxy-strategy", "port4011"],
    });
    await lab.cli("image", "import", image.dir, "--name", "test");
    const [pxe, http] = await Promise.all([
      bootToImage(lab, "uefi-proxy", { firmware: "uefi" }),
      bootToImage(lab, "http-proxy", { firmware: "uefi-http" }),
    ]);
    assert.deepEqual(dhcp(pxe.events).slice(0, 3), [
      "dhcp.proxy-offer:uefi64",
      "dhcp.pxe-ack:uefi64",
      "dhcp.proxy-offer:ipxe",
    ]);
    assert.equal(pxe.events.find((e) => e.kind === "dhcp.proxy-offer")?.detail.bootfile, null);
    assert.equal(pxe.events.find((e) => e.kind === "dhcp.pxe-ack")?.detail.bootfile, "ipxe.efi");
    assert.ok(!pxe.kinds.includes("dhcp.ack"), "the lab's dnsmasq gives the addresses");
    // The TFTP transfer is not on the node's timeline: in proxy mode nothing ties the client's
    // address to the node before its script fetch (ARP evidence); the server log names it.
    await lab.waitServerLog(/tftp sent file=ipxe\.efi client=10\.77\.0\.1\d\d/);
    assertInOrder(pxe.kinds, [
      "http.script",
      "http.kernel",
      "http.initramfs",
      "init.nfs-root",
      "init.overlay",
      "init.persist",
      "init.handover",
      "vnode.exit",
    ]);
    const leases = await Deno.readTextFile(join(lab.dir, "dnsmasq.leases"));
    assert.match(leases, new RegExp(`${pxe.mac} 10\\.77\\.0\\.1\\d\\d`));
    assert.equal(
      (await Deno.readTextFile(join(lab.data, "nodes", pxe.mac, "persist", "bootcount"))).trim(),
      "1",
      "the node's /persist is exported to the address dnsmasq gave it",
    );

    // HTTP boot takes the URL from netroot's port 67 proxy offer (vendor class HTTPClient, no
    // address) whatever the strategy.
    assert.deepEqual(dhcp(http.events).slice(0, 1), ["dhcp.proxy-offer:uefi-http"]);
    assert.ok(!http.kinds.some((k) => k.startsWith("tftp.")), http.kinds.join(" "));
    assertInOrder(http.kinds, [
      "http.script",
      "http.kernel",
      "http.initramfs",
      "init.nfs-root",
      "init.handover",
      "vnode.exit",
    ]);
    assert.match(leases, new RegExp(`${http.mac} 10\\.77\\.0\\.1\\d\\d`));
  },
);
