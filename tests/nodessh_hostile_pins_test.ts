// Host key pins outlive the node they were pinned for. ssh checks a node's host key under its name
// (HostKeyAlias), in one known_hosts file holding every node's pins: the pins of a node that was
// forgotten (or renamed) stayed there under its old name, so the next node given that name was
// also "authenticated" by the old node's image keys. Anyone holding them (root on any node that
// booted that image reads its ssh host private keys) and answering at the new node's address got
// the server's `node run` commands and clean reboots meant for it.
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Context } from "../src/context.ts";
import { setLogSink } from "../src/log.ts";
import type { RunResult } from "../src/noderun.ts";
import { withPowerServer } from "./support/power.ts";
import { addImage } from "./support/images.ts";
import { startSshd } from "./support/sshd.ts";

/** A booted node at `ip` whose image holds `hostKey` and whose sshd listens on `port`. */
async function addNode(
  ctx: Context,
  name: string,
  mac: string,
  ip: string,
  port: number,
  hostKey: string,
) {
  const image = addImage(ctx, `img-${mac.replaceAll(":", "")}`);
  const etc = join(ctx.data.rootfs(image), "etc/ssh");
  Deno.mkdirSync(etc, { recursive: true });
  Deno.writeTextFileSync(join(etc, "ssh_host_ed25519_key.pub"), `${hostKey} root@image\n`);
  ctx.nodes.add(mac, { name });
  ctx.nodes.configure(name, { "boot.probe-port": String(port) });
  ctx.nodes.setIp(mac, ip); // as a lease would (the ip setting refuses loopback)
  await ctx.nodes.deploy([name], `img-${mac.replaceAll(":", "")}`, { reboot: false });
  ctx.nodes.setState(mac, "booted", `port ${port} answered`);
}

Deno.test("a name's host keys are its current node's only: a forgotten node's pins do not authenticate its successor", async () => {
  setLogSink(() => {});
  await withPowerServer(async ({ ctx, call }) => {
    const key = ctx.ssh.key.publicKey();
    // old: the node first named "lab1", its image's host key; fresh: the new lab1's image's key.
    const old = await startSshd(key, { nodeId: "impostor", addresses: ["127.0.0.21"] });
    const fresh = await startSshd(key, { nodeId: "fresh", addresses: ["127.0.0.22"] });
    try {
      await addNode(ctx, "lab1", "02:00:00:00:78:01", "127.0.0.21", old.port, old.hostKey);
      const first = await call("POST", "/nodes/run", { nodes: ["lab1"], command: "echo ok" });
      assert.equal((first.json as unknown as RunResult[])[0].code, 0, JSON.stringify(first.json));

      ctx.nodes.forget("lab1");
      // A new machine takes the name; at its address answers a host holding the old image's key
      // (here: the old node's sshd).
      await addNode(ctx, "lab1", "02:00:00:00:78:02", "127.0.0.21", old.port, fresh.hostKey);
      const r = await call("POST", "/nodes/run", {
        nodes: ["lab1"],
        command: 'echo "ran on $NODE_ID"',
      });
      const [res] = r.json as unknown as RunResult[];
      assert.equal(res.code, null, `the command ran on ${res.stdout.trim() || "?"}`);
      assert.match(res.error!, /Host key verification failed/);
      assert.equal(res.stdout, "");
      const known = Deno.readTextFileSync(ctx.ssh.key.knownHosts);
      assert.equal(known, `lab1 ${fresh.hostKey}\n`, "the name's pins are its current node's");

      // What `node shell` is given for the name: the new node's keys only.
      const s = await call("GET", "/nodes/lab1/ssh");
      assert.deepEqual(s.json.knownHosts, [`lab1 ${fresh.hostKey}`]);
      await ctx.rebooter.close();
    } finally {
      await old.stop();
      await fresh.stop();
    }
  });
});
