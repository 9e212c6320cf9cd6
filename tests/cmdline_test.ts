import assert from "node:assert/strict";
import { CmdlineError, parseCmdline, parseIpParam, splitCmdline } from "../contract/cmdline.ts";
import { ipv4Bytes, netmaskPrefix } from "../contract/ipv4.ts";

/** The CmdlineError `text` raises (fails the test if it parses). */
function problemsOf(text: string): string[] {
  try {
    parseCmdline(text);
  } catch (e) {
    assert.ok(e instanceof CmdlineError, String(e));
    return e.problems;
  }
  assert.fail(`parsed without error: ${text}`);
}

const full = [
  "BOOT_IMAGE=vmlinuz console=ttyS0 quiet",
  "ip=10.77.0.5:10.77.0.1:10.77.0.254:255.255.255.0:node-a::off",
  "netroot.mac=52-54-00-AA-BB-CC",
  "netroot.server=10.77.0.1",
  "netroot.url=http://10.77.0.1:8080/",
  "netroot.root=10.77.0.1:/netroot/images/abc123",
  "netroot.persist=10.77.0.1:/netroot/persist/525400aabbcc",
  "netroot.nfs=3",
  "netroot.image=abc123",
  "netroot.token=tok",
  "netroot.mode=network",
  "netroot.timeout=30",
  "netroot.tmpfs=2g",
  "init=/lib/systemd/systemd",
].join(" ");

Deno.test("cmdline: the full contract of docs/architecture.md", () => {
  const p = parseCmdline(full);
  assert.equal(p.mac, "52:54:00:aa:bb:cc");
  assert.deepEqual(p.ip, {
    address: "10.77.0.5",
    server: "10.77.0.1",
    gateway: "10.77.0.254",
    netmask: "255.255.255.0",
    prefix: 24,
    hostname: "node-a",
  });
  assert.equal(p.url, "http://10.77.0.1:8080"); // trailing slash dropped: url + /boot/report
  assert.deepEqual(p.root, { host: "10.77.0.1", path: "/netroot/images/abc123" });
  assert.deepEqual(p.persist, { host: "10.77.0.1", path: "/netroot/persist/525400aabbcc" });
  assert.equal(p.nfsVersion, "3");
  assert.equal(p.image, "abc123");
  assert.equal(p.token, "tok");
  assert.equal(p.mode, "network");
  assert.equal(p.timeoutS, 30);
  assert.equal(p.tmpfsSize, "2g");
  assert.equal(p.init, "/lib/systemd/systemd");
  assert.deepEqual(p.initArgs, []);
  assert.deepEqual(p.warnings, []);
});

Deno.test("cmdline: defaults (nfs 4.2, auto, 180 s, 50%, /sbin/init) and no gateway", () => {
  const p = parseCmdline(
    "ip=10.0.0.2::0.0.0.0:255.255.0.0:::off netroot.mac=52:54:00:00:00:01 " +
      "netroot.root=10.0.0.1:/img\n",
  );
  assert.equal(p.nfsVersion, "4.2");
  assert.equal(p.mode, "auto");
  assert.equal(p.timeoutS, 180);
  assert.equal(p.tmpfsSize, "50%");
  assert.equal(p.init, "/sbin/init");
  assert.equal(p.ip.gateway, undefined);
  assert.equal(p.ip.prefix, 16);
  assert.equal(p.persist, undefined);
  assert.equal(p.url, undefined);
});

Deno.test("cmdline: quotes, last value wins, args after -- go to init, unknown netroot keys warn", () => {
  assert.deepEqual(splitCmdline(`a="b c"  d "e f=g" h=""`), ["a=b c", "d", "e f=g", "h="]);
  const p = parseCmdline(
    `${full} netroot.timeout=45 netroot.colour=blue -- single "x y" netroot.mode=bogus`,
  );
  assert.equal(p.timeoutS, 45);
  assert.deepEqual(p.initArgs, ["single", "x y", "netroot.mode=bogus"]);
  assert.equal(p.mode, "network"); // words after -- belong to init
  assert.deepEqual(p.warnings, ["unknown netroot.colour ignored"]);
});

Deno.test("cmdline: every problem is reported at once, with the offending value", () => {
  const problems = problemsOf(
    "ip=dhcp netroot.mac=52:54:00:zz:00:01 netroot.root=nfs-server:/img netroot.nfs=5 " +
      "netroot.mode=hybrid netroot.timeout=0 netroot.tmpfs=150% netroot.url=ftp://x init=sbin/init " +
      "netroot.persist=10.0.0.1",
  );
  const text = problems.join("\n");
  for (
    const needle of [
      "ip=dhcp: need the static form",
      "netroot.mac=52:54:00:zz:00:01 is not a MAC address",
      "netroot.root=nfs-server:/img: the server must be an IPv4 address",
      "netroot.persist=10.0.0.1: expected <server-ip>:/export/path",
      "netroot.nfs=5",
      "netroot.mode=hybrid",
      "netroot.timeout=0",
      "netroot.tmpfs=150%",
      "netroot.url=ftp://x",
      "init=sbin/init: must be an absolute path",
    ]
  ) assert.ok(text.includes(needle), `missing "${needle}" in:\n${text}`);
  assert.equal(problems.length, 10);
});

Deno.test("cmdline: missing keys are named", () => {
  assert.deepEqual(problemsOf("console=ttyS0"), [
    "netroot.mac= is missing",
    "ip= is missing",
    "netroot.root= is missing",
  ]);
});

Deno.test("cmdline: ip= fields and netmasks", () => {
  assert.equal(netmaskPrefix("255.255.255.0"), 24);
  assert.equal(netmaskPrefix("255.255.255.255"), 32);
  assert.equal(netmaskPrefix("0.0.0.0"), 0);
  assert.equal(netmaskPrefix("255.0.255.0"), -1);
  assert.equal(netmaskPrefix("255.255.255.256"), -1);
  // The one text → bytes conversion (DHCP packets and options, socket addresses on both sides).
  assert.deepEqual(ipv4Bytes("10.0.0.254"), new Uint8Array([10, 0, 0, 254]));
  for (const bad of ["10.0.0.256", "10.0.0", "10.0.0.1.2", "a.b.c.d", "1e1.0.0.1", ""]) {
    assert.throws(() => ipv4Bytes(bad), RangeError, bad);
  }
  const problems: string[] = [];
  assert.equal(parseIpParam("10.0.0.300::::", problems), undefined);
  assert.equal(parseIpParam("10.0.0.3:x:::", problems), undefined);
  assert.equal(parseIpParam("10.0.0.3::::", problems), undefined);
  assert.deepEqual(problems, [
    "ip=: node address 10.0.0.300 is not an IPv4 address",
    "ip=: server x is not an IPv4 address",
    "ip=: netmask (empty) is not valid",
  ]);
});
