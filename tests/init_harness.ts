// Privileged harness for tests/init_switch_test.ts and bench/init_bench.ts (not a test itself).
// Run as `unshare --mount --pid --fork --net --uts deno run -A tests/init_harness.ts <config.json>`: it
// is then PID 1 of a fresh PID namespace, in a private mount namespace and an empty network
// namespace. It builds a fake initramfs (a tmpfs with the real layout), a veth NIC with the MAC
// of the command line and a report server, chroots into the fake initramfs and runs the real
// `boot()` sequence; only the root source differs: bind mounts of local dirs instead of NFS.
// Output lines: `HARNESS …`, `REPORT <json>`, netroot-init console lines, then whatever the
// image's /sbin/init prints. Exit code 42: the fatal path called the injected reboot.
import { boot, productionDeps } from "../overlay/init.ts";
import { bindSource } from "../overlay/rootsource.ts";
import { chdir, chroot } from "../src/linux/exec.ts";
import { mount, MS_BIND, MS_PRIVATE, MS_REC } from "../src/linux/mount.ts";
import { uname } from "../src/linux/sysinfo.ts";

export interface HarnessConfig {
  /** A scratch dir; the fake initramfs is mounted at <work>/initrd. */
  work: string;
  /** The image tree (lower layer) and the node's persist dir, on the host. */
  lower: string;
  persist: string;
  cmdline: string;
  mac: string;
  reportPort: number;
  /** Extra modules.order lines (files created as non-ELF junk so the real finit_module fails). */
  junkModules?: string[];
}

const cfg: HarnessConfig = JSON.parse(Deno.readTextFileSync(Deno.args[0]));
console.log(`HARNESS pid=${Deno.pid}`);
mount(null, "/", null, MS_REC | MS_PRIVATE);

// A veth pair: nr0 is the node's NIC (found by MAC), nr1 is up so nr0 gets carrier once up.
for (
  const args of [
    ["link", "add", "nr0", "address", cfg.mac, "type", "veth", "peer", "name", "nr1"],
    ["link", "set", "nr1", "up"],
  ]
) {
  const ip = await new Deno.Command("ip", { args }).output();
  if (!ip.success) throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(ip.stderr)}`);
}

const server = Deno.serve(
  { hostname: "0.0.0.0", port: cfg.reportPort, onListen() {} },
  async (req) => {
    if (req.method === "POST" && new URL(req.url).pathname === "/boot/report") {
      // One line per report: a batch's identity goes with each of its reports.
      const body = await req.json();
      const { reports, ...ident } = body;
      for (const r of Array.isArray(reports) ? reports : [body]) {
        console.log(`REPORT ${JSON.stringify({ ...ident, ...r })}`);
      }
      return new Response(null, { status: 204 });
    }
    return new Response("not found", { status: 404 });
  },
);
void server;

// The fake initramfs: a tmpfs laid out like the real one (docs/architecture.md).
const initrd = `${cfg.work}/initrd`;
Deno.mkdirSync(initrd, { recursive: true });
mount("initrd", initrd, "tmpfs", 0, "mode=0755");
const kv = uname().release;
for (
  const d of ["netroot", `lib/modules/${kv}/kernel`, "newroot", "proc", "sys", "dev", "run", "tmp"]
) {
  Deno.mkdirSync(`${initrd}/${d}`, { recursive: true });
}
Deno.writeFileSync(`${initrd}/netroot/deno`, new Uint8Array(4 << 20).fill(0x7f)); // stands for the 95 MB binary
Deno.writeTextFileSync(`${initrd}/init`, "#!/bin/false\n");
const junk = cfg.junkModules ?? [];
for (const m of junk) {
  Deno.writeTextFileSync(`${initrd}/lib/modules/${kv}/${m}`, "not an ELF module\n");
}
Deno.writeTextFileSync(`${initrd}/netroot/modules.order`, junk.map((m) => `${m}\n`).join(""));
// The "NFS server": the host dirs, reachable from inside the chroot.
for (const [name, dir] of [["lower", cfg.lower], ["persist", cfg.persist]]) {
  Deno.mkdirSync(`${initrd}/srv/${name}`, { recursive: true });
  try {
    mount(dir, `${initrd}/srv/${name}`, null, MS_BIND);
  } catch {
    // missing on purpose (fatal-path scenario): leave the empty dir unmounted
    Deno.removeSync(`${initrd}/srv/${name}`);
  }
}
chroot(initrd);
chdir("/");

await boot({
  ...productionDeps(),
  readCmdline: () => cfg.cmdline,
  rootSource: () => bindSource("/srv/lower"),
  persistSource: () => bindSource("/srv/persist"),
  network: { appearMs: 2000, carrierMs: 2000 },
  rebootDelayS: 1,
  reboot: () => {
    console.log("HARNESS reboot called");
    Deno.exit(42);
  },
});
console.log("HARNESS boot returned");
Deno.exit(43);
