// TFTP server against real clients (tftp-hpa, curl, atftp) and our own client, on loopback with a
// random port: byte-identical files for each blksize/tsize/windowsize, the path policy (traversal,
// symlinks leaving the image, WRQ), retransmission with lost and duplicated ACKs, the UEFI tsize
// probe, many concurrent transfers, and the node timeline through startTftp.
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { join } from "node:path";
import {
  createTftpServer,
  type TftpServer,
  type TransferEvent,
  transfersPerAddress,
} from "../netboot/tftp/server.ts";
import { startTftpService as startTftp } from "../src/boot/services.ts";
import { resolveRequest } from "../netboot/tftp/resolve.ts";
import { TftpError, tftpGet, tftpGetDetailed } from "../netboot/tftp/client.ts";
import { decode, encode } from "../netboot/tftp/packet.ts";
import { TftpClientPool } from "../netboot/tftp/clientpool.ts";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { listEvents } from "../src/events.ts";

const pattern = (n: number, salt = 0) =>
  new Uint8Array(n).map((_, i) => ((i + salt) * 2654435761) >>> 24);

/** A served tree: an iPXE dir and a node image whose /boot has the usual Debian links. */
async function fixture() {
  const dir = await Deno.makeTempDir({ prefix: "nr-tftp-" });
  const ipxe = join(dir, "ipxe"), rootfs = join(dir, "images", "abc", "rootfs");
  await Deno.mkdir(ipxe, { recursive: true });
  await Deno.mkdir(join(rootfs, "boot"), { recursive: true });
  await Deno.mkdir(join(rootfs, "etc"), { recursive: true });
  await Deno.mkdir(join(dir, "node"), { recursive: true });
  const files = {
    undionly: pattern(74_213, 1),
    efi: pattern(1432 * 40, 2), // exact multiple of 1432: ends with an empty DATA block
    kernel: pattern(600_001, 3),
    initrd: pattern(1_200_000, 4),
  };
  await Deno.writeFile(join(ipxe, "undionly.kpxe"), files.undionly);
  await Deno.writeFile(join(dir, "elsewhere.efi"), files.efi);
  await Deno.symlink(join(dir, "elsewhere.efi"), join(ipxe, "ipxe.efi")); // like Debian's link
  await Deno.writeFile(join(rootfs, "boot", "vmlinuz-6.1.0-9-amd64"), files.kernel);
  await Deno.writeFile(join(rootfs, "boot", "initrd.img-6.1.0-9-amd64"), files.initrd);
  await Deno.writeTextFile(join(rootfs, "etc", "shadow"), "root:secret\n");
  await Deno.writeTextFile(join(dir, "outside"), "not yours\n");
  await Deno.symlink("/boot/vmlinuz-6.1.0-9-amd64", join(rootfs, "boot", "vmlinuz")); // absolute
  await Deno.symlink("boot/initrd.img-6.1.0-9-amd64", join(rootfs, "initrd.img")); // root-level
  await Deno.symlink("/etc/shadow", join(rootfs, "boot", "shadow")); // in the image, not in /boot
  await Deno.symlink("../../../../../outside", join(rootfs, "boot", "escape")); // climbs out
  await Deno.symlink(join(dir, "outside"), join(rootfs, "boot", "host")); // absolute, host path
  await Deno.symlink("../images/abc/rootfs", join(dir, "node", "fs")); // the deploy link
  return { dir, ipxe, nodeFs: join(dir, "node", "fs"), files };
}

async function run(cmd: string, args: string[], cwd?: string) {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, text };
}

async function withServer(
  fn: (
    port: number,
    f: Awaited<ReturnType<typeof fixture>>,
    events: TransferEvent[],
    server: TftpServer,
  ) => Promise<void>,
  serverOptions: {
    timeoutMs?: number;
    retries?: number;
    maxTransfers?: number;
    host?: string;
    device?: string;
  } = {},
) {
  const f = await fixture();
  const events: TransferEvent[] = [];
  const server = await createTftpServer({
    port: 0,
    host: "127.0.0.1",
    workers: 2,
    timeoutMs: 300,
    ...serverOptions,
    resolve: (path) => resolveRequest(path, { ipxeDir: f.ipxe, nodeFs: f.nodeFs }),
    onTransfer: (e) => events.push(e),
  });
  try {
    await fn(server.port, f, events, server);
    // The client is done before the server sees its last ACK: give the server a moment.
    for (let i = 0; i < 50 && server.active > 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(server.active, 0, "transfers left running");
  } finally {
    await server.close();
    await Deno.remove(f.dir, { recursive: true });
  }
}

/** Waits for the server's report of a transfer (it lands just after the client's last ACK). */
async function eventFor(events: TransferEvent[], file: string, n = 1): Promise<TransferEvent[]> {
  for (let i = 0; i < 100; i++) {
    const got = events.filter((e) => e.file === file);
    if (got.length >= n) return got;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no transfer event for ${file}: ${JSON.stringify(events)}`);
}

Deno.test("tftp: tftp-hpa, curl and atftp fetch byte-identical files (blksize, tsize, windowsize)", async () => {
  await withServer(async (port, f, events) => {
    const out = join(f.dir, "out");
    const check = async (what: string, want: Uint8Array) =>
      assert.deepEqual(await Deno.readFile(out), want, `${what}: content differs`);

    // tftp-hpa: plain RFC 1350, 512-byte blocks, no options.
    let r = await run("tftp", [
      "127.0.0.1",
      String(port),
      "-m",
      "binary",
      "-c",
      "get",
      "undionly.kpxe",
      out,
    ]);
    assert.doesNotMatch(r.text, /rror/, r.text);
    await check("tftp-hpa undionly.kpxe", f.files.undionly);
    r = await run("tftp", [
      "127.0.0.1",
      String(port),
      "-m",
      "binary",
      "-c",
      "get",
      "boot/vmlinuz",
      out,
    ]);
    await check("tftp-hpa boot/vmlinuz (absolute symlink)", f.files.kernel);

    // curl asks blksize and tsize; 1432 is what iPXE asks.
    for (const blksize of [512, 1432, 8192]) {
      for (
        const [name, want] of [["ipxe.efi", f.files.efi], ["initrd.img", f.files.initrd]] as const
      ) {
        r = await run("curl", [
          "-sS",
          "--tftp-blksize",
          String(blksize),
          `tftp://127.0.0.1:${port}/${name}`,
          "-o",
          out,
        ]);
        assert.equal(r.code, 0, r.text);
        await check(`curl blksize ${blksize} ${name}`, want);
      }
    }
    const curlEfi = (await eventFor(events, "ipxe.efi", 3)).map((
      e,
    ) => [e.outcome, e.blksize, e.size]);
    assert.deepEqual(curlEfi, [["done", 512, 1432 * 40], ["done", 1432, 1432 * 40], [
      "done",
      8192,
      1432 * 40,
    ]]);

    // atftp: RFC 7440 windowsize with tsize.
    for (const [blksize, windowsize] of [[1432, 8], [8192, 16], [512, 64]]) {
      r = await run("atftp", [
        "--option",
        `blksize ${blksize}`,
        "--option",
        `windowsize ${windowsize}`,
        "--option",
        "tsize 0",
        "-g",
        "-r",
        "vmlinuz-6.1.0-9-amd64",
        "-l",
        out,
        "127.0.0.1",
        String(port),
      ]);
      assert.equal(r.code, 0, r.text);
      await check(`atftp blksize ${blksize} windowsize ${windowsize}`, f.files.kernel);
    }
    const windowed = (await eventFor(events, "vmlinuz-6.1.0-9-amd64", 3)).map((
      e,
    ) => [e.outcome, e.windowsize]);
    assert.deepEqual(windowed, [["done", 8], ["done", 16], ["done", 64]]);
  });
});

Deno.test("tftp (root, veth pairs and a namespace): with a boot interface, a request from the server's other networks gets no answer", async () => {
  const tag = Deno.pid % 100000;
  const ns = `nr-tftpdev-${tag}`, boot = `nrtb${tag}`, other = `nrto${tag}`;
  const sh = async (...a: string[]) => {
    const r = await run(a[0], a.slice(1));
    if (r.code) throw new Error(`${a.join(" ")}: ${r.text}`);
  };
  try {
    await sh("ip", "netns", "add", ns);
    for (const [dev, net] of [[boot, "10.94.1"], [other, "10.94.2"]]) {
      await sh("ip", "link", "add", dev, "type", "veth", "peer", "name", `${dev}p`, "netns", ns);
      await sh("ip", "addr", "add", `${net}.1/24`, "dev", dev);
      await sh("ip", "link", "set", dev, "up");
      await sh("ip", "-n", ns, "addr", "add", `${net}.2/24`, "dev", `${dev}p`);
      await sh("ip", "-n", ns, "link", "set", `${dev}p`, "up");
    }
    await withServer(async (port, f) => {
      const out = join(f.dir, "out");
      const get = (server: string) =>
        run("ip", [
          ..."netns exec".split(" "),
          ns,
          ..."timeout 4 tftp".split(" "),
          server,
          String(port),
          ..."-m binary -c get undionly.kpxe".split(" "),
          out,
        ]);
      let r = await get("10.94.1.1");
      assert.equal(r.code, 0, r.text);
      assert.deepEqual(await Deno.readFile(out), f.files.undionly, "the boot network is served");
      await Deno.remove(out);
      // The same server, its address on the other network: the request is never taken.
      r = await get("10.94.2.1");
      assert.notEqual(r.code, 0, `answered from the other network: ${r.text}`);
      assert.equal(await Deno.stat(out).then((s) => s.size, () => 0), 0, "nothing received");
    }, { host: "0.0.0.0", device: boot });
  } finally {
    await run("ip", ["link", "del", boot]);
    await run("ip", ["link", "del", other]);
    await run("ip", ["netns", "del", ns]);
  }
});

Deno.test("tftp: traversal, escaping symlinks, bad names and writes are refused with an error and an event", async () => {
  await withServer(async (port, f, events) => {
    const refused = async (name: string, code: number) => {
      await assert.rejects(
        tftpGet("127.0.0.1", port, name, { timeoutMs: 300 }),
        (e) => e instanceof TftpError && e.code === code,
        `${JSON.stringify(name)} was not refused with code ${code}`,
      );
    };
    for (
      const name of [
        "../outside",
        "boot/../../outside",
        "/../../etc/passwd",
        "boot/shadow",
        "boot/escape",
        "a\\..\\b",
        "boot/\x01x",
        "boot/caf\xe9",
        "etc/shadow",
      ]
    ) {
      await refused(name, 2);
    }
    // boot/host links to a host path: inside the image (chroot semantics) it does not exist.
    for (const name of ["/etc/passwd", "boot/missing", "boot/host", "undionly.kkpxe"]) {
      await refused(name, 1);
    }
    // A real client too, and a write request.
    let r = await run("tftp", [
      "127.0.0.1",
      String(port),
      "-m",
      "binary",
      "-c",
      "get",
      "../../../etc/passwd",
      join(f.dir, "x"),
    ]);
    assert.match(r.text, /Error code 2/);
    await Deno.writeTextFile(join(f.dir, "up"), "data");
    r = await run("tftp", [
      "127.0.0.1",
      String(port),
      "-m",
      "binary",
      "-c",
      "put",
      join(f.dir, "up"),
      "up",
    ]);
    assert.match(r.text, /Error code 2: write requests are refused/);
    await eventFor(events, "up");
    const refusals = events.filter((e) => e.outcome === "refused");
    assert.equal(refusals.length, 15);
    assert.ok(refusals.every((e) => e.reason), "every refusal says why");
    assert.equal(events.filter((e) => e.outcome !== "refused").length, 0);
    // Leading slashes are fine (PXE ROMs send them): /boot/vmlinuz is the image's.
    assert.deepEqual(await tftpGet("127.0.0.1", port, "/boot/vmlinuz"), f.files.kernel);
  });
});

Deno.test("tftp: a hostile image's /boot link chain (40 links, each 4 KB of `d/../`) is refused after a few hundred lookups, not walked at each RRQ", async () => {
  // The name is resolved synchronously on the server's only thread at each RRQ, and UDP proves
  // no sender: any host can ask in a node's name. Walked whole, the chain took 32,000 lstat calls
  // and 250 ms per request (Debian's own links take at most 9 lookups beyond a path's own).
  const dir = await Deno.makeTempDir({ prefix: "nr-tftp-" });
  const lstatSync = Deno.lstatSync;
  let lookups = 0;
  Deno.lstatSync = (path) => {
    lookups++;
    return lstatSync(path);
  };
  try {
    const rootfs = join(dir, "rootfs");
    await Deno.mkdir(join(rootfs, "boot/d"), { recursive: true });
    const detour = "d/../".repeat(798);
    for (let i = 0; i < 40; i++) {
      await Deno.symlink(`${detour}L${i + 1}`, join(rootfs, `boot/L${i}`));
    }
    await Deno.writeFile(join(rootfs, "boot/L40"), new Uint8Array(8));
    await Deno.symlink(rootfs, join(dir, "fs"));
    const r = await resolveRequest("L0", { ipxeDir: join(dir, "ipxe"), nodeFs: join(dir, "fs") });
    assert.ok(lookups < 1000, `${lookups} lookups`);
    assert.ok("error" in r && r.error === 2, JSON.stringify(r));
    // Debian's /vmlinuz -> boot/vmlinuz-<kv> still resolves.
    await Deno.writeFile(join(rootfs, "boot/vmlinuz-6.1.0-57-amd64"), new Uint8Array(8));
    await Deno.symlink("boot/vmlinuz-6.1.0-57-amd64", join(rootfs, "vmlinuz"));
    const ok = await resolveRequest("vmlinuz", {
      ipxeDir: join(dir, "ipxe"),
      nodeFs: join(dir, "fs"),
    });
    assert.deepEqual(ok, { file: join(rootfs, "boot/vmlinuz-6.1.0-57-amd64") });
  } finally {
    Deno.lstatSync = lstatSync;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tftp: lost and duplicated ACKs still deliver the file (stop-and-wait and windowed)", async () => {
  await withServer(async (port, f, events) => {
    for (const windowsize of [1, 4]) {
      let n = 0;
      const got = await tftpGetDetailed("127.0.0.1", port, "boot/vmlinuz-6.1.0-9-amd64", {
        blksize: 1432,
        windowsize,
        // Longer than the server's 300 ms: a dropped ACK must be recovered by the server's
        // retransmission, not raced by the client resending its ACK first.
        timeoutMs: 2000,
        // Drop every 40th ACK but the last (419), send every 3rd twice.
        onAck: (
          block,
        ) => (block < 419 && ++n % 40 === 0 ? "drop" : n % 3 === 0 ? "duplicate" : "send"),
      });
      assert.deepEqual(got.data, f.files.kernel);
      assert.equal(got.options.windowsize, String(windowsize));
    }
    const [a, b] = await eventFor(events, "boot/vmlinuz-6.1.0-9-amd64", 2);
    assert.equal(a.outcome, "done");
    assert.equal(b.outcome, "done");
    assert.ok(a.resent! > 0 && b.resent! > 0, "the server resent after lost ACKs");
    // Duplicated ACKs did not make it send twice per ACK (Sorcerer's Apprentice): resends stay
    // near the number of dropped ACKs (419 ACKs / 40 = 10 drops).
    assert.ok(a.resent! <= 2 * 10 + 2, `stop-and-wait resent ${a.resent}`);
  });
});

Deno.test("tftp: the UEFI tsize probe (OACK then ERROR 8) is an abort, then the real fetch works", async () => {
  await withServer(async (port, f, events) => {
    const sock = dgram.createSocket("udp4");
    try {
      const reply = new Promise<{ msg: Uint8Array; port: number }>((resolve) =>
        sock.once("message", (msg, rinfo) => resolve({ msg, port: rinfo.port }))
      );
      await new Promise<void>((r) => sock.bind(0, "127.0.0.1", r));
      const rrq = { op: "RRQ", filename: "ipxe.efi", mode: "octet" } as const;
      sock.send(encode({ ...rrq, options: { tsize: "0", blksize: "1468" } }), port, "127.0.0.1");
      const { msg, port: tid } = await reply;
      assert.deepEqual(decode(msg), {
        op: "OACK",
        options: { blksize: "1468", tsize: String(f.files.efi.length) },
      });
      sock.send(encode({ op: "ERROR", code: 8, message: "tsize probe" }), tid, "127.0.0.1");
      const [probe] = await eventFor(events, "ipxe.efi");
      assert.equal(probe.outcome, "aborted");
      assert.equal(probe.errorCode, 8);
      assert.equal(probe.bytes, 0);
      assert.deepEqual(
        await tftpGet("127.0.0.1", port, "ipxe.efi", { blksize: 1468 }),
        f.files.efi,
      );
    } finally {
      sock.close();
    }
  });
});

Deno.test("tftp: a resent RRQ (same client port, same bytes) is not a second transfer", async () => {
  await withServer(async (port, f, events) => {
    const sock = dgram.createSocket("udp4");
    try {
      const senders = new Set<number>();
      let first: number | undefined;
      sock.on("message", (msg, rinfo) => {
        senders.add(rinfo.port);
        first ??= rinfo.port;
        const p = decode(msg);
        // ACK only the first transfer's blocks, as a real client does (it stops the other TID).
        if (p.op === "DATA" && rinfo.port === first) {
          sock.send(encode({ op: "ACK", block: p.block }), rinfo.port, "127.0.0.1");
        }
      });
      await new Promise<void>((r) => sock.bind(0, "127.0.0.1", r));
      const rrq = encode({ op: "RRQ", filename: "undionly.kpxe", mode: "octet", options: {} });
      // A client whose first RRQ seemed lost (a loaded machine) sends it again, from its port.
      sock.send(rrq, port, "127.0.0.1");
      sock.send(rrq, port, "127.0.0.1");
      sock.send(rrq, port, "127.0.0.1");
      const [done] = await eventFor(events, "undionly.kpxe");
      assert.equal(done.outcome, "done");
      assert.equal(done.bytes, f.files.undionly.length);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(senders.size, 1, "one transfer ID answered the three copies");
      assert.equal(events.length, 1, JSON.stringify(events));
    } finally {
      sock.close();
    }
  });
});

Deno.test("tftp: 300 concurrent transfers all complete intact", async () => {
  await withServer(async (port, f, events) => {
    const names = ["undionly.kpxe", "ipxe.efi"];
    const wants = [f.files.undionly, f.files.efi];
    const results = await Promise.all(
      Array.from({ length: 300 }, (_, i) =>
        tftpGet("127.0.0.1", port, names[i % 2], {
          blksize: [512, 1432, 1468][i % 3],
          windowsize: i % 4 === 0 ? 8 : undefined,
          timeoutMs: 2000,
        })),
    );
    results.forEach((r, i) => assert.deepEqual(r, wants[i % 2], `transfer ${i}`));
    const done = await eventFor(events, "undionly.kpxe", 150);
    assert.deepEqual(done.filter((e) => e.outcome !== "done"), []);
  }, { timeoutMs: 1000 }); // a loaded test host can stall the clients' event loop for a while
});

Deno.test("tftp: the load generator's worker client pool: 300 concurrent transfers, errors, timeouts", async () => {
  const pool = await TftpClientPool.create(2);
  try {
    await withServer(async (port, f, events) => {
      const names = ["undionly.kpxe", "ipxe.efi"];
      const sizes = [f.files.undionly.length, f.files.efi.length];
      const results = await Promise.all(
        Array.from({ length: 300 }, (_, i) =>
          pool.get({
            host: "127.0.0.1",
            port,
            file: names[i % 2],
            blksize: [512, 1432, 1468][i % 3],
            tsize: i % 2 === 0,
            timeoutMs: 2000,
          })),
      );
      results.forEach((r, i) => assert.equal(r.bytes, sizes[i % 2], `transfer ${i}`));
      const done = await eventFor(events, "undionly.kpxe", 150);
      assert.deepEqual(done.filter((e) => e.outcome !== "done"), []);
      await assert.rejects(
        pool.get({ host: "127.0.0.1", port, file: "nothing-here.efi" }),
        (e) => e instanceof TftpError && e.code === 1,
      );
    });
    // Nobody answers: the RRQ is resent `retries` times, then the transfer fails as a timeout.
    const mute = dgram.createSocket("udp4");
    await new Promise<void>((r) => mute.bind(0, "127.0.0.1", r));
    let rrqs = 0;
    mute.on("message", () => rrqs++);
    try {
      await assert.rejects(
        pool.get({
          host: "127.0.0.1",
          port: mute.address().port,
          file: "x",
          timeoutMs: 50,
          retries: 2,
        }),
        (e) =>
          (e as Error).message === "timeout fetching x" &&
          (e as { retransmits?: number }).retransmits === 2,
      );
      assert.equal(rrqs, 3);
    } finally {
      mute.close();
    }
  } finally {
    await pool.close();
  }
});

Deno.test("tftp: startTftp serves a node its image's /boot and writes the node's timeline", async () => {
  const f = await fixture();
  const config = {
    ...defaultConfig(),
    dataDir: join(f.dir, "data"),
    ipxeDir: f.ipxe,
    tftp: { port: 0 },
  };
  const ctx = await openContext(config);
  const svc = await startTftp(ctx);
  try {
    const mac = "52:54:00:12:34:56";
    ctx.nodes.add(mac);
    ctx.nodes.setIp(mac, "127.0.0.1");
    await Deno.remove(ctx.data.nodeFs(mac)).catch(() => {});
    await Deno.symlink(join(f.dir, "images", "abc", "rootfs"), ctx.data.nodeFs(mac));
    assert.deepEqual(
      await tftpGet("127.0.0.1", svc.port, "vmlinuz", { blksize: 1432 }),
      f.files.kernel,
    );
    await assert.rejects(tftpGet("127.0.0.1", svc.port, "../x"), TftpError);
    // An unknown client gets the iPXE binaries only.
    ctx.nodes.setIp(mac, null);
    assert.deepEqual(await tftpGet("127.0.0.1", svc.port, "undionly.kpxe"), f.files.undionly);
    await assert.rejects(
      tftpGet("127.0.0.1", svc.port, "vmlinuz"),
      (e) => e instanceof TftpError && e.code === 1,
    );
    await new Promise((r) => setTimeout(r, 100));
    // A transfer's event lands when its last ACK arrives, possibly after the next request's.
    const kinds = (evs: { kind: string; detail: Record<string, unknown> }[]) =>
      evs.filter((e) => e.kind.startsWith("tftp.")).map((e) => `${e.kind} ${e.detail.file}`).sort();
    const mine = listEvents(ctx.db, { mac });
    assert.deepEqual(kinds(mine), ["tftp.done vmlinuz", "tftp.refused ../x"]);
    const done = mine.find((e) => e.kind === "tftp.done")!;
    assert.equal(done.detail.bytes, f.files.kernel.length);
    assert.equal(done.detail.blksize, 1432);
    const server = listEvents(ctx.db).filter((e) => e.mac === null);
    assert.deepEqual(kinds(server), ["tftp.done undionly.kpxe", "tftp.refused vmlinuz"]);
  } finally {
    await svc.close();
    await closeContext(ctx);
    await Deno.remove(f.dir, { recursive: true });
  }
});

Deno.test("tftp: a burst of RRQs that never ACK holds no more than maxTransfers (attacker)", async () => {
  await withServer(async (port, _f, events, server) => {
    const sock = dgram.createSocket("udp4");
    try {
      await new Promise<void>((r) => sock.bind(0, "127.0.0.1", r));
      // 200 distinct requests in one burst (each a new transfer: their bytes differ), none ACKed.
      for (let i = 0; i < 200; i++) {
        const rrq = encode({
          op: "RRQ",
          filename: "undionly.kpxe",
          mode: "octet",
          options: { blksize: String(512 + i) },
        });
        sock.send(rrq, port, "127.0.0.1");
      }
      let peak = 0;
      for (let i = 0; i < 40; i++) {
        peak = Math.max(peak, server.active);
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.ok(peak <= 20, `${peak} transfers at once, limit 20`);
      for (let i = 0; i < 200 && server.active > 0; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(server.active, 0, "every unanswered transfer timed out");
      // Every request has its outcome: a refusal ("server busy") or a transfer that timed out.
      for (let i = 0; i < 100 && events.length < 200; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(events.length, 200);
      assert.ok(events.some((e) => e.reason === "server busy, try again"));
    } finally {
      sock.close();
    }
  }, { retries: 1, maxTransfers: 20 });
});

Deno.test("tftp: one address that floods RRQs and never ACKs holds its share only; a node at another address still gets its file (attacker)", async () => {
  const pool = await TftpClientPool.create(1);
  const hostile = dgram.createSocket("udp4");
  try {
    await withServer(async (port, f, events, server) => {
      await new Promise<void>((r) => hostile.bind(0, "127.0.0.2", r));
      // Distinct requests (their bytes differ: none is a resent copy), ten every 20 ms, for as
      // long as the node boots: more than the whole pool, from one address, none ever ACKed.
      let sent = 0, peak = 0;
      const flood = setInterval(() => {
        for (let i = 0; i < 10; i++, sent++) {
          const options = { blksize: String(512 + (sent % 900)), tsize: String(sent) };
          hostile.send(
            encode({ op: "RRQ", filename: "undionly.kpxe", mode: "octet", options }),
            port,
            "127.0.0.1",
          );
        }
        peak = Math.max(peak, server.active);
      }, 20);
      try {
        await new Promise((r) => setTimeout(r, 200)); // the pool is the flood's before the node asks
        const got = await pool.get({
          host: "127.0.0.1",
          port,
          file: "undionly.kpxe",
          tsize: true,
          localAddress: "127.0.0.3",
        });
        assert.equal(got.bytes, f.files.undionly.length);
      } finally {
        clearInterval(flood);
      }
      assert.ok(peak <= transfersPerAddress + 1, `${peak} transfers at once`);
      const refusedShare = events.filter((e) =>
        e.client.address === "127.0.0.2" && /under way from this address/.test(e.reason ?? "")
      );
      assert.ok(refusedShare.length > 0, "the flood got a clear refusal");
      for (let i = 0; i < 100 && server.active > 0; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
    }, { retries: 1, maxTransfers: 20 });
  } finally {
    hostile.close();
    await pool.close();
  }
});

Deno.test("tftp: requests forged from a node's own address, never ACKed, do not keep the node's request out (attacker)", async () => {
  const pool = await TftpClientPool.create(1);
  const forged = Array.from({ length: 3 }, () => dgram.createSocket("udp4"));
  try {
    await withServer(async (port, f, events, server) => {
      // UDP proves no sender: the forger sends from the node's address (here it can bind it; on a
      // link it writes it), from many ports, and never ACKs: the replies go to the node, which has
      // no such transfer. Its requests fill the address's share and keep it full.
      for (const sock of forged) await new Promise<void>((r) => sock.bind(0, "127.0.0.3", r));
      let sent = 0;
      const forge = () => {
        for (let i = 0; i < transfersPerAddress; i++, sent++) {
          const options = { blksize: "1024", tsize: String(sent) };
          forged[sent % forged.length].send(
            encode({ op: "RRQ", filename: "undionly.kpxe", mode: "octet", options }),
            port,
            "127.0.0.1",
          );
        }
      };
      forge();
      const keepFull = setInterval(forge, 100);
      try {
        for (let i = 0; i < 50 && server.active < transfersPerAddress; i++) {
          await new Promise((r) => setTimeout(r, 10));
        }
        assert.equal(server.active, transfersPerAddress, "the forger holds the node's share");
        const got = await pool.get({
          host: "127.0.0.1",
          port,
          file: "undionly.kpxe",
          tsize: true,
          localAddress: "127.0.0.3",
        });
        assert.equal(got.bytes, f.files.undionly.length);
        assert.ok(server.active <= transfersPerAddress, `${server.active} transfers at once`);
      } finally {
        clearInterval(keepFull);
      }
      const replaced = events.filter((e) => /replaced by a newer request/.test(e.reason ?? ""));
      assert.ok(replaced.length > 0, "a forged transfer gave its share to the node's");
      for (let i = 0; i < 100 && server.active > 0; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
    }, { retries: 1 });
  } finally {
    for (const sock of forged) sock.close();
    await pool.close();
  }
});
