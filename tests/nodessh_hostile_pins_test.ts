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

Deno.test("an image's /etc/ssh of 5,000 host key files is not read (its node has no ssh), and no image pins more than 8 keys", async () => {
  setLogSink(() => {});
  await withPowerServer(async ({ ctx, call, url }) => {
    const key = (i: number) =>
      `ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI${String(i).padStart(43, "A")} x\n`;
    const withKeys = (name: string, files: number, distinct: boolean) => {
      const image = addImage(ctx, name);
      const etc = join(ctx.data.rootfs(image), "etc/ssh");
      Deno.mkdirSync(etc, { recursive: true });
      const first = join(etc, "ssh_host_0_key.pub");
      Deno.writeTextFileSync(first, key(0));
      for (let i = 1; i < files; i++) {
        const file = join(etc, `ssh_host_${i}_key.pub`);
        if (distinct) Deno.writeTextFileSync(file, key(i));
        else Deno.linkSync(first, file); // names cost the image nothing
      }
    };
    withKeys("img-flood", 5000, false);
    withKeys("img-many", 20, true);
    for (const [i, name] of ["flood", "many"].entries()) {
      const mac = `02:00:00:00:79:0${i}`;
      ctx.nodes.add(mac, { name });
      ctx.nodes.setIp(mac, `10.9.9.${i + 1}`);
      await ctx.nodes.deploy([name], `img-${name}`, { reboot: false });
    }
    // Anyone on the boot network asks for the flood node's ssh target (a read: no token).
    const res = await fetch(`${url}/api/v1/nodes/flood/ssh`);
    const body = await res.json();
    assert.equal(res.status, 409, `pinned ${body.knownHosts?.length} keys`);
    assert.match(body.error, /no ssh host keys/);
    const many = await call("GET", "/nodes/many/ssh");
    assert.equal((many.json.knownHosts as string[]).length, 8);
    const known = Deno.readTextFileSync(ctx.ssh.key.knownHosts).trim().split("\n");
    assert.deepEqual(known, many.json.knownHosts);
  });
});

Deno.test("a host key longer than ssh takes (16 KiB of base64 in an image) is not pinned: every node of the image would carry it", async () => {
  setLogSink(() => {});
  await withPowerServer(async ({ ctx, call }) => {
    const image = addImage(ctx, "img-long");
    const etc = join(ctx.data.rootfs(image), "etc/ssh");
    Deno.mkdirSync(etc, { recursive: true });
    const rsa16k = `ssh-rsa ${"A".repeat(2764)}`; // as long as OpenSSH's largest (16,384 bits)
    const keys = {
      ed25519: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKMHj83yeeLODUf1pJRROOeTQa4EijiNoC8FKOc0/Scb",
      rsa: rsa16k,
      long1: `ssh-rsa ${"B".repeat(16_000)}`,
      long2: `ssh-ed25519 ${"C".repeat(2765)}`,
    };
    for (const [name, key] of Object.entries(keys)) {
      Deno.writeTextFileSync(join(etc, `ssh_host_${name}_key.pub`), `${key} root@image\n`);
    }
    ctx.nodes.add("02:00:00:00:7a:01", { name: "long" });
    ctx.nodes.setIp("02:00:00:00:7a:01", "10.9.9.9");
    await ctx.nodes.deploy(["long"], "img-long", { reboot: false });
    const r = await call("GET", "/nodes/long/ssh");
    assert.deepEqual(r.json.knownHosts, [`long ${keys.ed25519}`, `long ${rsa16k}`]);
    assert.ok(Deno.statSync(ctx.ssh.key.knownHosts).size < 3000);
  });
});
