// Needs root and qemu (TCG): real network-boot firmware fetches its boot file from our TFTP server:
// qemu's BIOS PXE ROM (iPXE, virtio-net) gets undionly.kpxe, OVMF (UEFI) gets ipxe.efi. All in a
// private network namespace with a tap device; dnsmasq is only the DHCP stand-in (its TFTP is
// off), pointing the firmware at us.
import assert from "node:assert/strict";
import { join } from "node:path";

const SERVER_IP = "10.79.0.1";

async function sh(cmd: string, ...args: string[]) {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Boots qemu from the network with `bootfile` offered; returns our server's transfer events
 *  up to and including the first completed transfer of `bootfile`. */
async function pxeBoot(NS: string, firmware: string[], bootfile: string, nicOptions = "") {
  const dir = await Deno.makeTempDir({ prefix: "nr-tftp-pxe-" });
  const procs: Deno.ChildProcess[] = [];
  try {
    await sh("ip", "netns", "add", NS);
    await sh("ip", "-n", NS, "link", "set", "lo", "up");
    await sh("ip", "-n", NS, "tuntap", "add", "dev", "tap0", "mode", "tap");
    await sh("ip", "-n", NS, "addr", "add", `${SERVER_IP}/24`, "dev", "tap0");
    await sh("ip", "-n", NS, "link", "set", "tap0", "up");

    // Our server on the real port 69 inside the namespace; one JSON line per transfer.
    const script = join(dir, "tftp.ts");
    const serverUrl = new URL("../netboot/tftp/server.ts", import.meta.url).href;
    const resolveUrl = new URL("../netboot/tftp/resolve.ts", import.meta.url).href;
    await Deno.writeTextFile(
      script,
      `import { createTftpServer } from "${serverUrl}";
         import { resolveRequest } from "${resolveUrl}";
         await createTftpServer({ port: 69,
           resolve: (p) => resolveRequest(p, { ipxeDir: "/usr/lib/ipxe" }),
           onTransfer: (e) => console.log(JSON.stringify(e)) });
         console.log("ready");`,
    );
    const server = new Deno.Command("ip", {
      args: ["netns", "exec", NS, Deno.execPath(), "run", "-A", "--no-config", script],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    procs.push(server);
    const lines: string[] = [];
    const gotLine = (() => {
      let wake = () => {};
      (async () => {
        let buf = "";
        for await (const chunk of server.stdout.pipeThrough(new TextDecoderStream())) {
          buf += chunk;
          const parts = buf.split("\n");
          buf = parts.pop()!;
          lines.push(...parts);
          wake();
        }
      })();
      return (pred: (l: string) => boolean, ms: number) =>
        new Promise<string>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`timeout; saw ${lines}`)), ms);
          const check = () => {
            const hit = lines.find(pred);
            if (hit) {
              clearTimeout(timer);
              resolve(hit);
            } else wake = check;
          };
          check();
        });
    })();
    await gotLine((l) => l === "ready", 15_000);

    procs.push(
      new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          NS,
          "dnsmasq",
          "--keep-in-foreground",
          "--port=0",
          "--conf-file=/dev/null",
          "--interface=tap0",
          "--bind-interfaces",
          "--dhcp-range=10.79.0.100,10.79.0.150,1h",
          `--dhcp-leasefile=${dir}/leases`,
          `--dhcp-boot=${bootfile},,${SERVER_IP}`,
          `--pid-file=${dir}/dnsmasq.pid`,
        ],
        stdout: "null",
        stderr: "null",
      }).spawn(),
    );
    procs.push(
      new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          NS,
          "qemu-system-x86_64",
          "-accel",
          "tcg",
          "-m",
          "256",
          "-display",
          "none",
          "-monitor",
          "none",
          "-serial",
          `file:${dir}/serial.log`,
          "-boot",
          "n",
          "-no-reboot",
          ...firmware,
          "-netdev",
          "tap,id=n0,ifname=tap0,script=no,downscript=no",
          "-device",
          `virtio-net-pci,netdev=n0,mac=52:54:00:79:00:01${nicOptions}`,
        ],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn(),
    );
    const doneLine = (l: string) => l.includes(`"file":"${bootfile}"`) && l.includes('"done"');
    await gotLine(doneLine, 240_000);
    return lines.slice(lines.indexOf("ready") + 1, lines.findIndex(doneLine) + 1)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  } finally {
    for (const p of procs.reverse()) {
      try {
        p.kill("SIGKILL");
      } catch { /* already gone */ }
      await p.status;
    }
    // `ip netns exec` leaves the dnsmasq child running when ip itself is killed.
    const pid = await Deno.readTextFile(join(dir, "dnsmasq.pid")).catch(() => "");
    if (pid.trim()) {
      try {
        Deno.kill(Number(pid), "SIGKILL");
      } catch { /* already gone */ }
    }
    await sh("ip", "netns", "del", NS).catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
}

const skipVm = Deno.env.get("NETROOT_SKIP_VM") === "1";

Deno.test({
  name: "tftp (root, qemu): qemu's BIOS PXE ROM (iPXE) loads undionly.kpxe from our server",
  ignore: skipVm,
  async fn() {
    const events = await pxeBoot(`nr-tftp-b${Deno.pid}`, [], "undionly.kpxe");
    const e = events.at(-1)!;
    assert.equal(e.bytes, (await Deno.stat("/usr/lib/ipxe/undionly.kpxe")).size);
    assert.match((e.client as { address: string }).address, /^10\.79\.0\./);
    console.log(`BIOS PXE: ${e.bytes} bytes in ${e.ms} ms, blksize ${e.blksize}`);
  },
});

Deno.test({
  name: "tftp (root, qemu): OVMF UEFI network boot loads ipxe.efi from our server",
  ignore: skipVm,
  async fn() {
    const events = await pxeBoot(
      `nr-tftp-u${Deno.pid}`,
      ["-bios", "/usr/share/qemu/OVMF.fd"],
      "ipxe.efi",
    );
    const e = events.at(-1)!;
    assert.equal(e.bytes, (await Deno.stat("/usr/lib/ipxe/ipxe.efi")).size);
    // Anything before the fetch may only be a size probe the client aborted, never a failure.
    for (const x of events.slice(0, -1)) assert.equal(x.outcome, "aborted", JSON.stringify(x));
    console.log(
      `UEFI PXE: ${e.bytes} bytes in ${e.ms} ms, blksize ${e.blksize}; before it: ` +
        JSON.stringify(events.slice(0, -1).map((x) => [x.outcome, x.errorCode, x.reason])),
    );
  },
});

Deno.test({
  name: "tftp (root, qemu): OVMF's own PXE client (EDK2, no iPXE ROM) probes tsize, then loads",
  ignore: skipVm,
  async fn() {
    // romfile= leaves the NIC without iPXE: OVMF's VirtioNetDxe + PxeBcDxe do the TFTP, and EDK2
    // asks the size first, then aborts with error 8 and asks again (protocols.md §8).
    const events = await pxeBoot(
      `nr-tftp-e${Deno.pid}`,
      ["-bios", "/usr/share/qemu/OVMF.fd"],
      "ipxe.efi",
      ",romfile=",
    );
    const e = events.at(-1)!;
    assert.equal(e.bytes, (await Deno.stat("/usr/lib/ipxe/ipxe.efi")).size);
    const before = events.slice(0, -1);
    assert.ok(before.length >= 1, "no tsize probe seen");
    for (const x of before) {
      assert.equal(x.outcome, "aborted", JSON.stringify(x));
      assert.equal(x.bytes, 0);
    }
    console.log(
      `EDK2 PXE: ${e.bytes} bytes in ${e.ms} ms, blksize ${e.blksize}; before it: ` +
        JSON.stringify(before.map((x) => [x.outcome, x.errorCode, x.reason])),
    );
  },
});
