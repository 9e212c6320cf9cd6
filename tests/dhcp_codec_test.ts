// The DHCP codec and classifier against real captured packets (tests/fixtures/dhcp/README.md).
import assert from "node:assert/strict";
import { decode, DhcpDecodeError, encode } from "../netboot/dhcp4/packet.ts";
import { classify } from "../netboot/dhcp4/classify.ts";
import {
  decodeSubOptions,
  MessageType,
  Opt,
  readIp,
  readText,
  readU16,
  RPI_PXE_MENU,
} from "../netboot/dhcp4/options.ts";

const dir = new URL("./fixtures/dhcp/", import.meta.url);
const fixture = (name: string) => Deno.readFileSync(new URL(name, dir));
const env = { nodeUrl: "http://10.77.0.1:8080" };

Deno.test("decodes iPXE's DISCOVER as captured from QEMU's ROM", () => {
  const p = decode(fixture("ipxe-bios-virtio-discover.bin"));
  assert.equal(p.op, 1);
  assert.equal(p.options.get(Opt.messageType)?.[0], MessageType.Discover);
  assert.deepEqual([...p.chaddr.subarray(0, 6)], [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
  // Option 77 is raw "iPXE" (no RFC 3004 length prefix): kept byte for byte.
  assert.deepEqual([...p.options.get(Opt.userClass)!], [0x69, 0x50, 0x58, 0x45]);
  assert.equal(readText(p.options.get(Opt.vendorClass)), "PXEClient:Arch:00000:UNDI:002001");
  assert.equal(readU16(p.options.get(Opt.clientArch)), 0);
  assert.equal(readU16(p.options.get(Opt.maxMessageSize)), 1472);
  const sub = decodeSubOptions(p.options.get(Opt.ipxe)!);
  assert.deepEqual([...sub.get(177)!], [1, 0x1a, 0xf4, 0x10, 0x00]); // virtio-net bus id
  const c = classify(p, env);
  assert.equal(c.firmware, "ipxe");
  assert.equal(c.bootfile, "http://10.77.0.1:8080/boot/52:54:00:12:34:56.ipxe");
});

Deno.test("iPXE's REQUEST carries server id and requested address", () => {
  const p = decode(fixture("ipxe-bios-virtio-request.bin"));
  assert.equal(p.options.get(Opt.messageType)?.[0], MessageType.Request);
  assert.equal(readIp(p.options.get(Opt.serverId)), "10.98.0.1");
  assert.equal(readIp(p.options.get(Opt.requestedIp)), "10.98.0.111");
});

Deno.test("classifies udhcpc emulating PXE ROMs and plain Linux DHCP", () => {
  const bios = classify(decode(fixture("udhcpc-pxe-bios-discover.bin")), env);
  assert.equal(bios.firmware, "bios");
  assert.equal(bios.bootfile, "undionly.kpxe");
  assert.equal(bios.netboot, true);
  const uc = classify(decode(fixture("udhcpc-ipxe-uc-discover.bin")), env);
  assert.equal(uc.firmware, "ipxe");
  const plain = classify(decode(fixture("udhcpc-discover.bin")), env);
  assert.equal(plain.firmware, "linux");
  assert.equal(plain.bootfile, undefined);
  const dhclient = classify(decode(fixture("dhclient-discover.bin")), env);
  assert.equal(dhclient.firmware, "linux");
  assert.equal(decode(fixture("dhclient-release.bin")).options.get(53)?.[0], MessageType.Release);
});

Deno.test("classifies firmware by option 93, 60 and the Raspberry Pi OUI", () => {
  const base = decode(fixture("udhcpc-pxe-bios-discover.bin"));
  const withOpts = (mac: number[], entries: [number, Uint8Array][]) => {
    const p = structuredClone(base);
    p.chaddr.set(mac);
    for (const [k, v] of entries) p.options.set(k, v);
    return classify(p, env);
  };
  const mac = [2, 0, 0, 0, 0, 1];
  const arch = (n: number) => new Uint8Array([0, n]);
  const vc = (s: string) => new TextEncoder().encode(s);
  assert.equal(withOpts(mac, [[93, arch(6)]]).firmware, "uefi32");
  assert.equal(withOpts(mac, [[93, arch(7)]]).bootfile, "ipxe.efi");
  assert.equal(withOpts(mac, [[93, arch(9)]]).firmware, "uefi64");
  assert.equal(withOpts(mac, [[93, arch(10)]]).firmware, "arm32");
  assert.equal(withOpts(mac, [[93, arch(11)]]).firmware, "arm64");
  assert.equal(withOpts(mac, [[93, arch(11)]]).bootfile, "ipxe-arm64.efi");
  const http = withOpts(mac, [[93, arch(16)], [60, vc("HTTPClient:Arch:00016")]]);
  assert.equal(http.firmware, "uefi-http");
  assert.equal(http.bootfile, "http://10.77.0.1:8080/boot/ipxe/ipxe.efi");
  const pi = withOpts([0xdc, 0xa6, 0x32, 1, 2, 3], [[93, arch(0)]]);
  assert.equal(pi.firmware, "rpi"); // the Pi 5 says arch 0: the OUI wins
  assert.equal(pi.bootfile, undefined);
  assert.ok(new TextDecoder().decode(RPI_PXE_MENU).includes("Raspberry Pi Boot"));
  // 175 alone (no 77) still means iPXE.
  assert.equal(withOpts(mac, [[175, new Uint8Array([19, 1, 1])]]).firmware, "ipxe");
});

Deno.test("encode(decode(x)) keeps every field and option of real packets", () => {
  for (const e of Deno.readDirSync(dir)) {
    if (!e.name.endsWith(".bin")) continue;
    const a = decode(fixture(e.name));
    const b = decode(encode(a));
    assert.deepEqual(b, a, e.name);
  }
});

Deno.test("decodes dnsmasq's replies (OFFER/ACK with boot file and 175.176)", () => {
  const ack = decode(fixture("dnsmasq-ipxe-ack.bin"));
  assert.equal(ack.op, 2);
  assert.equal(ack.yiaddr, "10.98.0.111");
  assert.equal(readText(ack.options.get(Opt.bootfile)), "http://10.98.0.1/x.ipxe");
  assert.deepEqual([...decodeSubOptions(ack.options.get(175)!).get(176)!], [1]);
});

Deno.test("encode splits long options (RFC 3396) and respects a maximum size", () => {
  const p = decode(fixture("udhcpc-discover.bin"));
  p.options.set(17, new Uint8Array(600).fill(0x41));
  const bytes = encode(p);
  assert.equal(decode(bytes).options.get(17)!.length, 600);
  const capped = encode(p, 576);
  assert.ok(capped.length <= 576);
  assert.equal(decode(capped).options.has(17), false);
  assert.equal(decode(capped).options.get(53)?.[0], 1);
});

Deno.test("malformed packets are rejected with DhcpDecodeError", () => {
  const good = fixture("ipxe-bios-virtio-discover.bin");
  assert.throws(() => decode(good.subarray(0, 239)), DhcpDecodeError);
  const noCookie = good.slice();
  noCookie[236] = 0;
  assert.throws(() => decode(noCookie), /magic cookie/);
  const badOp = good.slice();
  badOp[0] = 7;
  assert.throws(() => decode(badOp), /bad op/);
  // an option whose length runs past the end
  const trunc = new Uint8Array([...good.subarray(0, 240), 53, 1, 1, 60, 200, 1, 2]);
  assert.throws(() => decode(trunc), /runs past the end/);
  const overload = new Uint8Array([...good.subarray(0, 240), 52, 1, 1, 255]);
  overload.fill(0x42, 108, 236); // file field claimed to hold options, but garbage
  assert.throws(() => decode(overload), DhcpDecodeError);
});

Deno.test("a missing iPXE binary is reported at start, naming the Debian package", async () => {
  const { checkIpxeFiles } = await import("../netboot/dhcp4/server.ts");
  const { setLogSink } = await import("../src/log.ts");
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  try {
    const dir = await Deno.makeTempDir();
    await Deno.writeFile(`${dir}/undionly.kpxe`, new Uint8Array(1));
    assert.deepEqual(checkIpxeFiles(dir), ["ipxe.efi"]);
    assert.match(lines.join("\n"), /WARN dhcp .*ipxe\.efi.*Debian package 'ipxe'/);
    assert.deepEqual(checkIpxeFiles("/usr/lib/ipxe"), []);
    await Deno.remove(dir, { recursive: true });
  } finally {
    setLogSink((l) => console.error(l));
  }
});
