// Raspberry Pi network boot, replayed: the DHCP DISCOVER each model sends (3B+, 4, 5) through the
// real responder, then the TFTP names each model's firmware asks for, over real TFTP on loopback
// against a real data dir and database. Fixtures and their sources: tests/fixtures/rpi/.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { closeContext, openContext } from "../src/server.ts";
import { contextBooter } from "../src/boot/booter.ts";
import { startTftpService } from "../src/boot/services.ts";
import { renderPiConfig } from "../src/boot/plan.ts";
import { PiBootVersions } from "../src/boot/piboot.ts";
import { setLogLevel } from "../src/log.ts";
import { listEvents } from "../src/events.ts";
import { DhcpResponder } from "../netboot/dhcp4/server.ts";
import { classify } from "../netboot/dhcp4/classify.ts";
import { BOOTREQUEST, decode, type DhcpPacket, encode } from "../netboot/dhcp4/packet.ts";
import { MessageType, Opt, readText } from "../netboot/dhcp4/options.ts";
import { TftpError, tftpGet } from "../netboot/tftp/client.ts";
const macToBytes = (mac: string) => new Uint8Array(mac.split(":").map((x) => parseInt(x, 16)));
import {
  DISCOVERS,
  DNSMASQ_OPTION_43,
  type PiDiscover,
  TFTP_SEQUENCES,
} from "./fixtures/rpi/requests.ts";

setLogLevel("error");

function packet(d: PiDiscover, type = MessageType.Discover, requested?: string): DhcpPacket {
  const options = new Map(d.options.map(([c, v]) => [c, new Uint8Array(v)]));
  options.set(Opt.messageType, new Uint8Array([type]));
  if (requested) {
    options.set(Opt.requestedIp, new Uint8Array(requested.split(".").map(Number)));
    options.set(Opt.serverId, new Uint8Array([10, 85, 0, 1]));
  }
  const chaddr = new Uint8Array(16);
  chaddr.set(macToBytes(d.mac));
  return {
    op: BOOTREQUEST,
    htype: 1,
    hlen: 6,
    hops: 0,
    xid: 0x26f30339,
    secs: 0,
    flags: 0,
    ciaddr: "0.0.0.0",
    yiaddr: "0.0.0.0",
    siaddr: "0.0.0.0",
    giaddr: "0.0.0.0",
    chaddr,
    sname: "",
    file: "",
    options,
  };
}

async function withContext(fn: (ctx: Context, dir: string) => Promise<void> | void) {
  const dir = await Deno.makeTempDir({ prefix: "nr-rpi-" });
  const ctx = await openContext({
    ...defaultConfig(),
    dataDir: join(dir, "data"),
    tftp: { port: 0 },
  });
  try {
    await fn(ctx, dir);
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

function responder(ctx: Context, mode: "full" | "proxy") {
  return new DhcpResponder({
    mode,
    serverIp: "10.85.0.1",
    netmask: "255.255.255.0",
    range: mode === "full" ? { start: "10.85.0.10", end: "10.85.0.19" } : undefined,
    leaseSeconds: 3600,
    proxyStrategy: "port4011",
    registerUnknown: true,
    nodeUrl: "http://10.85.0.1:8080",
  }, contextBooter(ctx));
}

/** What the Pi ROM needs in an OFFER/ACK, and nothing PC-like. */
function assertPiAnswer(p: DhcpPacket, what: string) {
  assert.equal(readText(p.options.get(Opt.vendorClass)), "PXEClient", what);
  assert.deepEqual([...p.options.get(Opt.vendorSpecific)!], DNSMASQ_OPTION_43, what);
  assert.equal(readText(p.options.get(Opt.tftpServer)), "10.85.0.1", what);
  assert.equal(p.siaddr, "10.85.0.1", what);
  assert.equal(p.file, "", what);
  assert.equal(p.options.get(Opt.bootfile), undefined, what);
}

Deno.test("rpi: each model's DISCOVER is classified by OUI + PXE class, with its model and serial", () => {
  for (const d of DISCOVERS) {
    const c = classify(packet(d), {});
    assert.equal(c.firmware, "rpi", d.model);
    assert.equal(c.bootfile, undefined, d.model);
    assert.deepEqual(c.rpi, { model: d.model === "3B+" ? "3" : d.model, serial: d.serial });
  }
  // Every OUI the issue lists is a Pi; the same PXE class from another OUI is a PC BIOS.
  for (
    const oui of [
      "b8:27:eb",
      "dc:a6:32",
      "e4:5f:01",
      "d8:3a:dd",
      "28:cd:c1",
      "2c:cf:67",
      "88:a2:9e",
    ]
  ) {
    const p = packet({ ...DISCOVERS[0], mac: `${oui}:01:02:03` });
    assert.equal(classify(p, {}).firmware, "rpi", oui);
  }
  const pc = classify(packet({ ...DISCOVERS[1], mac: "52:54:00:01:02:03" }), {});
  assert.equal(pc.firmware, "bios");
  assert.equal(pc.bootfile, "undionly.kpxe");
  // A Pi running an OS (no PXE vendor class) gets a plain lease.
  const os = packet(DISCOVERS[1]);
  for (const o of [Opt.vendorClass, Opt.clientArch, Opt.clientNdi, Opt.clientUuid]) {
    os.options.delete(o);
  }
  assert.equal(classify(os, {}).firmware, "linux");
  // A short or odd option 97 gives no serial (and breaks nothing).
  const odd = packet(DISCOVERS[1]);
  odd.options.set(Opt.clientUuid, new Uint8Array([0, 1, 2]));
  assert.deepEqual(classify(odd, {}).rpi, {});
});

Deno.test("rpi: full DHCP answers each model's DISCOVER and REQUEST with dnsmasq's option 43, 66 and siaddr", async () => {
  await withContext((ctx) => {
    const r = responder(ctx, "full");
    for (const d of DISCOVERS) {
      const offer = r.handle(encode(packet(d)), {
        port: 67,
        from: { address: "0.0.0.0", port: 68 },
      });
      assert.ok(offer, d.model);
      const o = decode(offer.bytes);
      assert.equal(o.options.get(Opt.messageType)?.[0], MessageType.Offer);
      assertPiAnswer(o, `${d.model} offer`);
      const req = packet(d, MessageType.Request, o.yiaddr);
      const ack = decode(
        r.handle(encode(req), { port: 67, from: { address: "0.0.0.0", port: 68 } })!.bytes,
      );
      assert.equal(ack.options.get(Opt.messageType)?.[0], MessageType.Ack);
      assert.equal(ack.yiaddr, o.yiaddr);
      assertPiAnswer(ack, `${d.model} ack`);
      // The lease is MAC-bound evidence: TFTP from that address is this node.
      assert.equal(ctx.nodes.byIp(o.yiaddr)?.mac, d.mac);
      const ackEvent = listEvents(ctx.db, { mac: d.mac }).find((e) => e.kind === "dhcp.ack")!;
      assert.deepEqual(ackEvent.detail.rpi, {
        model: d.model === "3B+" ? "3" : d.model,
        serial: d.serial,
      });
    }
  });
});

Deno.test("rpi: proxy DHCP answers the Pi on port 67 even with the port4011 strategy", async () => {
  await withContext((ctx) => {
    const r = responder(ctx, "proxy");
    for (const d of DISCOVERS) {
      const reply = r.handle(encode(packet(d)), {
        port: 67,
        from: { address: "0.0.0.0", port: 68 },
      });
      const p = decode(reply!.bytes);
      assert.equal(p.yiaddr, "0.0.0.0");
      assertPiAnswer(p, d.model);
    }
  });
});

// ---- TFTP ---------------------------------------------------------------------------------

/** A Pi image the way the image store lays it out (Debian raspi-firmware: /boot/firmware), with
 *  the row inserted directly. */
function addPiImage(ctx: Context, name: string, files: Record<string, string>): string {
  const id = createHash("sha256").update(name).digest("hex");
  const root = ctx.data.rootfs(id);
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(root, path, ".."), { recursive: true });
    if (content.startsWith("->")) symlinkSync(content.slice(2), join(root, path));
    else writeFileSync(join(root, path), content);
  }
  writeFileSync(ctx.data.manifest(id), name);
  ctx.db.prepare(
    `INSERT INTO images (id, name, created_at, size, files, kernel, initrd, kernel_version, bootable)
     VALUES (?, ?, ?, 0, 0, '/vmlinuz', '/initrd.img', '6.12.0-arm64', 1)`,
  ).run(id, name, new Date().toISOString());
  return id;
}

function addNode(ctx: Context, mac: string, name: string, imageId: string) {
  ctx.db.prepare("INSERT INTO nodes (mac, name, image_id, created_at) VALUES (?, ?, ?, ?)")
    .run(mac, name, imageId, new Date().toISOString());
  mkdirSync(ctx.data.node(mac), { recursive: true });
  symlinkSync(`../../images/${imageId}/rootfs`, ctx.data.nodeFs(mac));
  // The image's own initrd: the netroot initramfs build is covered elsewhere.
  ctx.db.prepare("INSERT INTO node_settings (mac, key, value) VALUES (?, 'initramfs', 'image')")
    .run(mac);
}

const FIRMWARE = [
  "bootcode.bin",
  "start.elf",
  "fixup.dat",
  "start4.elf",
  "fixup4.dat",
  "bcm2710-rpi-3-b-plus.dtb",
  "bcm2711-rpi-4-b.dtb",
  "bcm2712-rpi-5-b.dtb",
  "overlays/overlay_map.dtb",
];

const text = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("rpi: TFTP replay of each model's requests gets the image's firmware and the node's rendered files", async () => {
  await withContext(async (ctx) => {
    const files: Record<string, string> = {
      "boot/vmlinuz-6.12.0-arm64": "KERNEL arm64",
      "boot/initrd.img-6.12.0-arm64": "INITRD arm64",
      "vmlinuz": "->boot/vmlinuz-6.12.0-arm64",
      "initrd.img": "->/boot/initrd.img-6.12.0-arm64",
      // The image's own config.txt and cmdline.txt are never served: netroot renders them.
      "boot/firmware/config.txt": "kernel=vmlinuz-image",
      "boot/firmware/cmdline.txt": "root=/dev/mmcblk0p2",
      "etc/shadow": "root:secret",
      "boot/firmware/shadow": "->/etc/shadow",
    };
    for (const f of FIRMWARE) files[`boot/firmware/${f}`] = `firmware ${f}`;
    const image = addPiImage(ctx, "rpi-trixie", files);
    ctx.nodeUrl = "http://127.0.0.1:8080";
    const svc = await startTftpService(ctx);
    try {
      for (const d of DISCOVERS) {
        const name = `pi-${d.model.toLowerCase().replace("+", "p")}`;
        addNode(ctx, d.mac, name, image);
        ctx.nodes.setIp(d.mac, "127.0.0.1"); // the address its lease bound (one at a time here)
        const { steps } = TFTP_SEQUENCES[d.model];
        for (const step of steps) {
          const path = step.name.replace("S/", `${d.serial}/`);
          const what = `${d.model} ${path}`;
          if (step.expect === "missing") {
            await assert.rejects(
              tftpGet("127.0.0.1", svc.port, path, { blksize: 1024, timeoutMs: 2000 }),
              (e) => e instanceof TftpError && e.code === 1,
              what,
            );
            continue;
          }
          const got = text(
            await tftpGet("127.0.0.1", svc.port, path, { blksize: 1024, timeoutMs: 2000 }),
          );
          const base = path.split("/").slice(path.startsWith(d.serial) ? 1 : 0).join("/");
          if (step.expect === "image") assert.equal(got, `firmware ${base}`, what);
          else if (base === "config.txt") {
            assert.equal(
              got,
              renderPiConfig({ nodeName: name, image: { id: image, name: "rpi-trixie" } }),
            );
            assert.match(got, /^kernel=netroot-kernel$/m);
            assert.match(got, /^initramfs netroot-initramfs followkernel$/m);
          } else if (base === "cmdline.txt") {
            // The iPXE nodes' command line: the node's MAC, image, token, NFS root.
            assert.match(got, new RegExp(`netroot\\.mac=${d.mac}`), what);
            assert.match(got, new RegExp(`netroot\\.image=${image}`), what);
            assert.match(got, /netroot\.token=\S+/, what);
            assert.ok(got.endsWith("\n") && !got.slice(0, -1).includes("\n"), "one line");
          } else if (base === "netroot-kernel") assert.equal(got, "KERNEL arm64", what);
          else if (base === "netroot-initramfs") assert.equal(got, "INITRD arm64", what);
          else assert.fail(`unexpected rendered ${base}`);
        }
        // The Pi 4 EEPROM retries without the prefix (TFTP_PREFIX fallback, rpi-eeprom#74).
        assert.equal(
          text(await tftpGet("127.0.0.1", svc.port, "start4.elf")),
          "firmware start4.elf",
        );
        ctx.nodes.setIp(d.mac, null);
      }
    } finally {
      await svc.close();
    }
  });
});

Deno.test("rpi: hostile TFTP names: traversal, another node's serial, made-up dirs, unknown clients", async () => {
  await withContext(async (ctx) => {
    const files: Record<string, string> = {
      "boot/vmlinuz-6.12.0-arm64": "KERNEL",
      "boot/initrd.img-6.12.0-arm64": "INITRD",
      "vmlinuz": "->boot/vmlinuz-6.12.0-arm64",
      "initrd.img": "->boot/initrd.img-6.12.0-arm64",
      "boot/firmware/start4.elf": "firmware start4.elf",
      "etc/shadow": "root:secret",
      "boot/firmware/shadow": "->/etc/shadow",
    };
    const image = addPiImage(ctx, "rpi", files);
    ctx.nodeUrl = "http://127.0.0.1:8080";
    const [a, b] = [DISCOVERS[1], { ...DISCOVERS[2] }];
    addNode(ctx, a.mac, "pi-a", image);
    addNode(ctx, b.mac, "pi-b", image);
    ctx.nodes.setIp(a.mac, "127.0.0.1");
    ctx.nodes.setIp(b.mac, "10.85.0.12");
    const svc = await startTftpService(ctx);
    const get = (name: string) => tftpGet("127.0.0.1", svc.port, name, { timeoutMs: 2000 });
    const refused = (name: string, code: number) =>
      assert.rejects(get(name), (e) => e instanceof TftpError && e.code === code, name);
    try {
      // B's serial from A's address: A's own command line (the serial is a name, not an identity).
      const asB = text(await get(`${b.serial}/cmdline.txt`));
      assert.match(asB, new RegExp(`netroot\\.mac=${a.mac}`));
      assert.doesNotMatch(asB, new RegExp(b.mac));
      await refused(`${a.serial}/../../../etc/shadow`, 2);
      await refused(`${a.serial}/../cmdline.txt`, 2);
      await refused(`${a.serial}/shadow`, 2); // a link out of /boot
      await refused(`${a.serial}\\start4.elf`, 2);
      await refused(`${a.serial}/${a.serial}/start4.elf`, 1); // one serial dir only
      await refused("zzzzzzzz/start4.elf", 1);
      await refused(`${a.serial}0/start4.elf`, 1);
      // Nothing is rendered for an address that is no node's (no boot is opened for it).
      ctx.nodes.setIp(a.mac, null);
      await refused(`${a.serial}/cmdline.txt`, 1);
      await refused(`${a.serial}/start4.elf`, 1);
      const boots = ctx.db.prepare("SELECT mac FROM boots").all() as { mac: string }[];
      assert.deepEqual(boots.map((r) => r.mac), [a.mac]);
    } finally {
      await svc.close();
    }
  });
});

Deno.test("rpi: a blind flood of forged cmdline.txt requests opens one boot: the Pi's token stays good", async () => {
  await withContext(async (ctx) => {
    const image = addPiImage(ctx, "rpi", {
      "boot/vmlinuz-6.12.0-arm64": "KERNEL",
      "boot/initrd.img-6.12.0-arm64": "INITRD",
      "vmlinuz": "->boot/vmlinuz-6.12.0-arm64",
      "initrd.img": "->boot/initrd.img-6.12.0-arm64",
    });
    ctx.nodeUrl = "http://127.0.0.1:8080";
    const pi = DISCOVERS[1];
    addNode(ctx, pi.mac, "pi", image);
    ctx.nodes.setIp(pi.mac, "127.0.0.1");
    const svc = await startTftpService(ctx);
    const cmdline = async () =>
      /netroot\.token=(\S+)/.exec(
        text(await tftpGet("127.0.0.1", svc.port, `${pi.serial}/cmdline.txt`, { timeoutMs: 2000 })),
      )![1];
    const tokens = () =>
      (ctx.db.prepare("SELECT token FROM boots WHERE mac = ? ORDER BY rowid").all(pi.mac) as {
        token: string;
      }[]).map((r) => r.token);
    try {
      const own = await cmdline(); // the Pi's firmware
      // A neighbour sends 60 requests from the Pi's address: UDP, so it never sees the answers,
      // which go to the Pi. Each one used to open a boot: 50 pushed the Pi's out, its token with
      // it, and the Pi's init's reports were refused.
      for (let i = 0; i < 60; i++) assert.equal(await cmdline(), own);
      assert.deepEqual(tokens(), [own]);
      const booter = contextBooter(ctx);
      assert.deepEqual(booter.acceptReport(pi.mac, own, "127.0.0.1"), { imageId: image });
      // Once the Pi is heard from, its next boot is a new one.
      booter.reported(pi.mac, own, "handover");
      const next = await cmdline();
      assert.notEqual(next, own);
      assert.equal(await cmdline(), next);
      // A boot never heard from is handed out for a minute only: then the Pi boots anew.
      ctx.db.prepare("UPDATE boots SET started_at = ? WHERE token = ?")
        .run(new Date(Date.now() - 61_000).toISOString(), next);
      const later = await cmdline();
      assert.ok(later !== next && later !== own);
      assert.deepEqual(tokens(), [own, next, later]);
    } finally {
      await svc.close();
    }
  });
});

Deno.test("rpi: a deploy landing between the Pi's cmdline.txt and its kernel fetch: kernel and initramfs of the version its command line names", async () => {
  await withContext(async (ctx) => {
    ctx.images.autoPrune = false;
    const pi = (kernel: string) => ({
      "boot/vmlinuz-6.12.0-arm64": `KERNEL ${kernel}`,
      "boot/initrd.img-6.12.0-arm64": `INITRD ${kernel}`,
      "vmlinuz": "->boot/vmlinuz-6.12.0-arm64",
      "initrd.img": "->boot/initrd.img-6.12.0-arm64",
    });
    const [a, b] = [addPiImage(ctx, "rpi-a", pi("a")), addPiImage(ctx, "rpi-b", pi("b"))];
    ctx.nodeUrl = "http://127.0.0.1:8080";
    const d = DISCOVERS[1];
    addNode(ctx, d.mac, "pi", a);
    ctx.nodes.setIp(d.mac, "127.0.0.1");
    const svc = await startTftpService(ctx);
    const get = async (name: string) =>
      text(await tftpGet("127.0.0.1", svc.port, `${d.serial}/${name}`, { timeoutMs: 2000 }));
    try {
      const cmdline = await get("cmdline.txt"); // the firmware: its boot is opened on a
      assert.match(cmdline, new RegExp(`netroot\\.image=${a}`));
      // An admin's deploy (or a commit the node follows) lands now, before the kernel's fetch.
      await ctx.nodes.deploy(["pi"], b, { reboot: false });
      assert.equal(
        await get("netroot-kernel"),
        "KERNEL a",
        "the kernel of the version the command line and NFS root name",
      );
      assert.equal(await get("netroot-initramfs"), "INITRD a");
      // Its next boot is all b.
      const booter = contextBooter(ctx);
      const token = /netroot\.token=(\S+)/.exec(cmdline)![1];
      booter.reported(d.mac, token, "handover");
      assert.match(await get("cmdline.txt"), new RegExp(`netroot\\.image=${b}`));
      assert.equal(await get("netroot-kernel"), "KERNEL b");
      assert.equal(await get("netroot-initramfs"), "INITRD b");
    } finally {
      await svc.close();
    }
  });
});

Deno.test("rpi: a deploy landing after the Pi's first fetch: every file of that boot from the first version, the next boot all the new one; a forged fetch holds it back at most a minute", async () => {
  await withContext(async (ctx) => {
    ctx.images.autoPrune = false;
    const version = (v: string) => {
      const files: Record<string, string> = {
        "boot/vmlinuz-6.12.0-arm64": `KERNEL ${v}`,
        "boot/initrd.img-6.12.0-arm64": `INITRD ${v}`,
        "vmlinuz": "->boot/vmlinuz-6.12.0-arm64",
        "initrd.img": "->boot/initrd.img-6.12.0-arm64",
      };
      for (const f of FIRMWARE) files[`boot/firmware/${f}`] = `firmware ${f} ${v}`;
      return files;
    };
    const ids = {
      a: addPiImage(ctx, "rpi-a", version("a")),
      b: addPiImage(ctx, "rpi-b", version("b")),
    };
    ctx.nodeUrl = "http://127.0.0.1:8080";
    let now = performance.now();
    const svc = await startTftpService(ctx, contextBooter(ctx, new PiBootVersions(() => now)));
    const get = (path: string) =>
      tftpGet("127.0.0.1", svc.port, path, { blksize: 1024, timeoutMs: 2000 }).then(text);
    /** One boot of model `d` as its firmware fetches it; `between` runs after its first fetch.
     *  Each file must be of version `v`. */
    const boot = async (d: PiDiscover, name: string, v: "a" | "b", between = async () => {}) => {
      const { steps } = TFTP_SEQUENCES[d.model];
      for (const [i, step] of steps.entries()) {
        const path = step.name.replace("S/", `${d.serial}/`);
        const base = path.split("/").slice(path.startsWith(d.serial) ? 1 : 0).join("/");
        const what = `${d.model} ${path} (fetch ${i + 1})`;
        if (step.expect === "missing") {
          await assert.rejects(get(path), (e) => e instanceof TftpError && e.code === 1, what);
        } else {
          const got = await get(path);
          if (step.expect === "image") assert.equal(got, `firmware ${base} ${v}`, what);
          else if (base === "config.txt") {
            assert.equal(
              got,
              renderPiConfig({ nodeName: name, image: { id: ids[v], name: `rpi-${v}` } }),
              what,
            );
          } else if (base === "cmdline.txt") {
            assert.match(got, new RegExp(`netroot\\.image=${ids[v]} `), what);
          } else if (base === "netroot-kernel") assert.equal(got, `KERNEL ${v}`, what);
          else if (base === "netroot-initramfs") assert.equal(got, `INITRD ${v}`, what);
          else assert.fail(`unexpected rendered ${base}`);
        }
        if (i === 0) await between();
      }
    };
    try {
      for (const d of DISCOVERS) {
        const name = `pi-${d.model.toLowerCase().replace("+", "p")}`;
        addNode(ctx, d.mac, name, ids.a);
        ctx.nodes.setIp(d.mac, "127.0.0.1"); // the address its lease bound (one at a time here)
        // A deploy (or a commit the node follows) lands after the firmware's first fetch: that
        // boot is a's from its first file to its initramfs (a Pi 4's start4.elf of a with b's
        // config.txt and device tree, a 3B+'s bootcode.bin and start.elf of a with b's kernel).
        await boot(d, name, "a", async () => {
          await ctx.nodes.deploy([name], ids.b, { reboot: false });
        });
        // The firmware starting over after cmdline.txt is the next boot (nothing reported: the
        // image's own initrd does not report): all b.
        await boot(d, name, "b");
        ctx.nodes.setIp(d.mac, null);
      }
      // The bound: a fetch forged with the Pi's address (UDP: anyone on the boot network) fixes
      // its boot's version for a minute from that fetch, and more fetches do not lengthen it.
      const d = DISCOVERS[1];
      ctx.nodes.setIp(d.mac, "127.0.0.1");
      const t0 = now;
      assert.equal(await get(`${d.serial}/start4.elf`), "firmware start4.elf b"); // forged
      await ctx.nodes.deploy(["pi-4"], ids.a, { reboot: false });
      now = t0 + 30_000;
      assert.equal(await get(`${d.serial}/start4.elf`), "firmware start4.elf b"); // forged again
      now = t0 + 59_999;
      assert.equal(await get(`${d.serial}/bcm2711-rpi-4-b.dtb`), "firmware bcm2711-rpi-4-b.dtb b");
      now = t0 + 60_000; // the Pi boots a minute after the forged fetch: the deploy's version
      await boot(d, "pi-4", "a");
    } finally {
      await svc.close();
    }
  });
});
