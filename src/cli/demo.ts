// `netroot demo`: one virtual node booting end to end, in a private network namespace, then
// everything cleaned up. It runs in the lab (src/lab/), from a checkout or an installed bundle,
// as root, with qemu, iproute2 and the Debian packages of tools/apt-packages.txt.
import { join } from "node:path";
import { parseArgs } from "node:util";
import { UserError } from "../errors.ts";
import { defaultCacheDir } from "../lab/cache.ts";
import { debianKernel } from "../lab/kernel.ts";
import { type Lab, startLab } from "../lab/lab.ts";
import { buildTinyImage } from "../lab/tinyimage.ts";

const usage = `usage: netroot demo [--stand-in] [--keep] [--timeout SECONDS]

Builds a tiny test OS image (static busybox + the Debian kernel, downloaded once into the cache:
$NETROOT_CACHE, else $XDG_CACHE_HOME/netroot, else /var/cache/netroot),
creates a network namespace, starts \`netroot serve --bridge netroot0 --address 10.77.0.1/24
--nfs ganesha\` in it, imports the image, creates one virtual node and shows its serial console
while it PXE-boots: SeaBIOS → iPXE → netroot's DHCP → iPXE script, kernel and netroot's initramfs
over HTTP → the netroot init mounts the image over NFS with a RAM overlay → the image's own
/sbin/init prints IMAGE-BOOT-OK and powers off. Then it prints the node's timeline and removes
everything. Needs root, qemu-system-x86, ipxe-qemu, nfs-ganesha(-vfs).
  --stand-in   boot the image's own tiny initramfs instead (no NFS: it prints KERNEL-STARTED)
  --keep       keep the lab directory (server log, data dir) afterwards
  --timeout S  give up after S seconds (default 300)`;

// deno-lint-ignore no-control-regex
const ansi = /\x1b(\[[0-9;?]*[a-zA-Z]|c)/g;

export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      keep: { type: "boolean" },
      "stand-in": { type: "boolean" },
      timeout: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(usage);
    return 0;
  }
  const timeoutMs = Number(values.timeout ?? 300) * 1000;
  if (!(timeoutMs > 0)) throw new UserError("--timeout expects seconds");
  if (Deno.uid() !== 0) {
    throw new UserError("the demo needs root (network namespace, bridge, taps)");
  }
  const standIn = values["stand-in"] ?? false;
  const cacheDir = defaultCacheDir();
  console.log(
    `netroot demo: fetching the Debian kernel and busybox-static (cached in ${cacheDir})…`,
  );
  const kernel = await debianKernel(cacheDir);
  const imageDir = await Deno.makeTempDir({ prefix: "netroot-demo-image-" });
  let lab: Lab | undefined;
  let ok = false;
  try {
    const image = await buildTinyImage(join(imageDir, "rootfs"), {
      kernel,
      cacheDir,
      release: "demo",
      initrd: standIn,
    });
    lab = await startLab({ nfs: standIn ? "off" : "ganesha" });
    await lab.cli("image", "import", image.dir, "--name", "demo");
    lab.log(`image "demo" imported (kernel ${image.kv})`);
    const vm = await lab.createVnode("demo1", { image: "demo", ram: "384M" });
    if (standIn) {
      // The image's own small initramfs: it prints KERNEL-STARTED and powers off.
      await lab.cli("node", "config", "demo1", "initramfs=image");
      await lab.cli("node", "reboot", "demo1");
    }
    lab.log("--- serial console of demo1 ---");
    let shown = 0;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = await lab.console(vm.mac);
      if (text.length > shown) {
        await Deno.stdout.write(new TextEncoder().encode(text.slice(shown).replace(ansi, "")));
        shown = text.length;
      }
      if (/(KERNEL-STARTED|IMAGE-BOOT-OK)[\s\S]*reboot: Power down/.test(text)) break;
      if (Date.now() > deadline) throw new UserError(`no boot within ${timeoutMs / 1000} s`);
      await new Promise((r) => setTimeout(r, 300));
    }
    lab.log("--- timeline of demo1 (GET /api/v1/nodes/demo1/events) ---");
    for (const e of await lab.events(vm.mac)) {
      console.log(`  ${e.ts}  ${e.kind.padEnd(16)} ${JSON.stringify(e.detail).slice(0, 100)}`);
    }
    ok = true;
  } finally {
    await lab?.close({ keep: values.keep || !ok });
    await Deno.remove(imageDir, { recursive: true }).catch(() => {});
  }
  console.log("netroot demo: done; namespace, server and virtual node removed.");
  return 0;
}
