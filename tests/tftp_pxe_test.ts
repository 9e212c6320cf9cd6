// Needs root and qemu (TCG): a real PXE ROM (qemu's iPXE, virtio-net) fetches undionly.kpxe from
// our TFTP server. Everything lives in a private network namespace with a tap device; dnsmasq is
// only the DHCP stand-in (its TFTP is off), pointing the ROM at us.
import assert from "node:assert/strict";
import { join } from "node:path";

const NS = `nr-tftp-${Deno.pid}`;
const SERVER_IP = "10.79.0.1";

async function sh(cmd: string, ...args: string[]) {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

Deno.test({
  name: "tftp (root, qemu): qemu's PXE ROM loads undionly.kpxe from our server",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  async fn() {
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
            `--dhcp-boot=undionly.kpxe,,${SERVER_IP}`,
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
            "-netdev",
            "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:79:00:01",
          ],
          stdin: "null",
          stdout: "null",
          stderr: "null",
        }).spawn(),
      );
      const line = await gotLine((l) => l.includes('"file":"undionly.kpxe"'), 90_000);
      const e = JSON.parse(line);
      const size = (await Deno.stat("/usr/lib/ipxe/undionly.kpxe")).size;
      assert.equal(e.outcome, "done", line);
      assert.equal(e.bytes, size);
      assert.equal(e.client.address.startsWith("10.79.0."), true);
      console.log(`PXE ROM: ${e.bytes} bytes in ${e.ms} ms, blksize ${e.blksize}`);
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
  },
});
