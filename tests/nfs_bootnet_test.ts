// The boot network (NFS export subnet, kernel command line netmask) is the one of the server
// address, also when the boot interface holds other addresses first. Needs root: a private network
// namespace whose loopback gets two addresses, and bootNetwork() evaluated inside it.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const nfsTs = fileURLToPath(new URL("../src/nfs.ts", import.meta.url));

async function ip(...args: string[]): Promise<void> {
  const out = await new Deno.Command("ip", { args, stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

Deno.test("bootNetwork (root, netns): the server address's subnet, not the interface's first", async () => {
  const ns = `nr-bootnet-${Deno.pid}`;
  await ip("netns", "add", ns);
  try {
    await ip("-n", ns, "addr", "add", "10.61.0.1/24", "dev", "lo");
    await ip("-n", ns, "addr", "add", "10.62.0.1/16", "dev", "lo");
    await ip("-n", ns, "link", "set", "lo", "up");
    const code = `
      import { bootNetwork } from ${JSON.stringify(nfsTs)};
      const at = (serverIp) => bootNetwork({ config: { interface: "lo", serverIp } });
      console.log(JSON.stringify([at("10.62.0.1"), at("10.61.0.1"), at(undefined)]));`;
    const out = await new Deno.Command("ip", {
      args: ["netns", "exec", ns, Deno.execPath(), "eval", "--no-config", code],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const [second, first, none] = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.deepEqual(second, { address: "10.62.0.1", netmask: "255.255.0.0" });
    assert.deepEqual(first, { address: "10.61.0.1", netmask: "255.255.255.0" });
    assert.equal(none.address.startsWith("10.6") || none.address === "127.0.0.1", true);
  } finally {
    await ip("netns", "del", ns).catch(() => {});
  }
});
